"""Atomic rewrites and locks for state files (README: Where state lives).

Every rewrite goes to a temp file in the same directory, is fsynced and renamed over the target,
under an exclusive ``flock`` on a separate ``<file>.lock`` (never on the file itself: the rename
replaces its inode).

A full disk is reported in one place, :func:`guard_full`: every writer of the data and config
directories (this module, the chat store, the usage and audit files, downloads) wraps its writes
in it, and ENOSPC, EDQUOT or SQLite's "database or disk is full" become a
:class:`~lms.errors.StorageFullError`. Its message is generic (the HTTP envelopes render only the
message); the path is in its hint and ``data["path"]``, which the CLI shows and the public APIs
never render. Because every rewrite goes to a temp file first, a write refused for lack of space
leaves the old file whole: nothing stored is lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lms import paths
from lms.errors import StorageFullError

#: What the kernel says when a write finds no space: the disk is full, or the user's quota is.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: SQLite's primary result code SQLITE_FULL (``sqlite3`` is not imported here: the CLI's start-up
#: would pay for it).
_SQLITE_FULL = 13
STORAGE_FULL_MESSAGE = "no space left on the disk: nothing was stored"


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full: an OSError or a sqlite3 error."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if type(exc).__module__ == "sqlite3":
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
            return True
        return "database or disk is full" in str(exc)
    return False


def full_error(path: Path, *, needed: int | None = None) -> StorageFullError:
    """The StorageFullError for a write to ``path`` (the path only in the hint and the data);
    ``needed``: the bytes a write found missing before it started."""
    hint = f"free some space on the disk holding {path}, then try again"
    if needed is not None:
        hint = f"{needed} bytes are needed in {path}: free some space, then try again"
    return StorageFullError(STORAGE_FULL_MESSAGE, hint=hint, data={"path": str(path)})


@contextlib.contextmanager
def guard_full(path: Path) -> Iterator[None]:
    """Turn "no space left" while writing ``path`` into a StorageFullError naming it."""
    try:
        yield
    except Exception as exc:
        if is_full(exc):
            raise full_error(path) from exc
        raise


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the lock guarding ``path`` (exclusive unless ``shared``)."""
    lock = paths.lock_file_for(path)
    with guard_full(path):
        paths.ensure_dir(lock.parent)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the caller holds ``locked(path)``.

    On a full disk: StorageFullError, and ``path`` is untouched.
    """
    with guard_full(path):
        _write_atomic(path, data, mode)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    paths.ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_signature(path: Path) -> tuple[int, int, int, int] | None:
    """(inode, size, mtime_ns, ctime_ns) of ``path``, or None when it does not exist.

    Inodes alone are reused after atomic renames; together with size and both times a change is
    not missed (the registry adds its generation counter on top).
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
