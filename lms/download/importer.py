"""``lms import``: bring a local GGUF file into the models folder (daemon side).

The file is checked as a GGUF model (``catalog.read_metadata``) before anything is written, and
it lands at ``<models>/<publisher>/<name>/<file>.gguf`` (default publisher ``local``, default name
the file's stem) in one atomic step that never replaces an existing file. Its key is LM Studio's
rule applied to ``<name>`` (``tiny-Q8_0.gguf`` → ``tiny``), or ``publisher/name`` when either was
given (a manifest, :func:`lms.download.layout.declare_key`):

* ``copy`` (the default): copied to a hidden temp file beside the target, fsynced, checked
  again, then linked into place;
* ``move``: hard-linked into place and the original unlinked when both are on one file system,
  else copied as above and the original removed only once the copy is in place;
* ``symlink``: a symbolic link to the file's real path (the file stays where it is).

On any failure nothing is left behind but what the user had.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Literal

from lms import storage
from lms.download import layout
from lms.errors import InvalidParameterError, NotFoundError
from lms.inference import catalog

ImportMode = Literal["copy", "move", "symlink"]
MODES: tuple[ImportMode, ...] = ("copy", "move", "symlink")


def import_file(
    source: Path,
    models_dir: Path,
    *,
    mode: ImportMode = "copy",
    publisher: str | None = None,
    name: str | None = None,
) -> Path:
    """Import ``source`` (an absolute path) and return where it now is in the models folder.

    Raises InvalidParameterError (a relative path, not a regular ``.gguf`` file, bad names),
    NotFoundError (no such file), ModelLoadError (not a readable GGUF model) and ConflictError
    (the target exists). Blocking: call it off the event loop.
    """
    if mode not in MODES:
        raise InvalidParameterError(f"'mode' must be one of {', '.join(MODES)}", param="mode")
    if not source.is_absolute():
        raise InvalidParameterError(f"'path' must be absolute: {source}", param="path")
    try:
        st = source.stat()
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {source}") from None
    except OSError as exc:
        raise InvalidParameterError(f"cannot read {source}: {exc.strerror}", param="path") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidParameterError(f"{source} is not a regular file", param="path")
    if not source.name.lower().endswith(".gguf"):
        raise InvalidParameterError(
            f"{source} does not end in .gguf: only GGUF model files can be imported",
            param="path",
        )
    if mode == "move" and source.is_symlink():
        raise InvalidParameterError(
            f"{source} is a symbolic link: import it with --copy or --symlink", param="path"
        )
    catalog.read_metadata(source)  # ModelLoadError, naming the file, for a corrupt one
    placement = layout.placement_for_file(source, publisher=publisher, name=name)
    target = placement.target(models_dir)
    if os.path.lexists(target):
        raise layout.exists_error(target)
    created = layout.make_dirs(target)
    try:
        if mode == "symlink":
            _symlink(source.resolve(), target)
        elif mode == "move":
            _move(source, target)
        else:
            _copy_into_place(source, target)
    except BaseException:
        layout.remove_empty_dirs(created)
        raise
    layout.declare_key(placement, target)
    return target


def _symlink(source: Path, target: Path) -> None:
    try:
        os.symlink(source, target)  # atomic, and never replaces an existing name
    except FileExistsError:
        raise layout.exists_error(target) from None
    layout.fsync_dir(target.parent)


def _move(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise layout.exists_error(target) from None
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        _copy_into_place(source, target)  # another file system: copy, then remove
    else:
        layout.fsync_dir(target.parent)
    source.unlink()


def _copy_into_place(source: Path, target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        with storage.guard_full(target):
            shutil.copyfile(source, tmp)  # copy_file_range / sendfile where the kernel has them
            with tmp.open("rb+") as out:
                os.fchmod(out.fileno(), 0o644)
                os.fsync(out.fileno())
        catalog.read_metadata(tmp)  # the source may have changed while it was copied
        layout.place(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
