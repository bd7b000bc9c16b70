"""Atomic rewrites and locks for state files (SPEC §2).

Every rewrite goes to a temp file in the same directory, is fsynced and renamed over the target,
under an exclusive ``flock`` on a separate ``<file>.lock`` (never on the file itself: the rename
replaces its inode).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lms import paths


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the lock guarding ``path`` (exclusive unless ``shared``)."""
    lock = paths.lock_file_for(path)
    paths.ensure_dir(lock.parent)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the caller holds ``locked(path)``."""
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
