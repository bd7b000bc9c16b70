"""Where a downloaded or imported GGUF goes in the models folder, and how it gets there.

A model file lives at ``<models>/<publisher>/<name>/<file>.gguf``, in the ``models.dir`` folder.
Its key is LM Studio's (docs/MODELS.md: ``<name>`` lower-cased without ``-GGUF`` and a
quantization suffix, as LM Studio keys the same download), unless the user named the model with
``--publisher``/``--name``: then the folder gets a manifest (:func:`declare_key`) so the key is
``publisher/name``, what they asked for.
Until it is complete and checked, a file is written under a hidden name in the same folder
(``.<file>.part`` for a download, ``.<file>.<random>.tmp`` for an import), which discovery never
lists; it is then linked into place without ever replacing an existing file.

Names for a download URL (explicit ``publisher`` / ``name`` fields win):

* a Hugging Face-style path ``/<owner>/<repo>/resolve/<revision>/[dirs/]<file>.gguf`` (on any
  host: mirrors use the same layout) gives ``<owner>/<repo>``;
* any other URL gives ``<host>/<file stem>`` (``https://example.com/x/tiny-Q8_0.gguf`` →
  ``example.com/tiny-Q8_0``).

The file name is the URL's last path segment and must end in ``.gguf``. Characters outside
``A-Z a-z 0-9 . _ - + @`` in names taken from a URL become ``_``; explicit names must already be
made of them, and no name may start with a dot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from lms import modelkeys, storage
from lms.errors import ConflictError, InvalidParameterError
from lms.modelfolder import LOCAL_PUBLISHER

_PART = re.compile(r"^[A-Za-z0-9_+@-][A-Za-z0-9._+@-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@-]")


def check_part(value: str, param: str) -> str:
    """An explicit publisher, name or file name, refused (400 naming ``param``) unless safe."""
    if not _PART.match(value):
        raise InvalidParameterError(
            f"'{param}' must be 1-128 characters of A-Z a-z 0-9 . _ - + @, not starting with a"
            f" dot (got {value[:60]!r})",
            param=param,
        )
    return value


def clean_part(value: str) -> str:
    """A name part taken from a URL, made safe: unsafe characters become ``_``."""
    cleaned = _UNSAFE.sub("_", value).lstrip(".")[:128]
    return cleaned or "_"


@dataclass(frozen=True)
class Placement:
    """Where a model file goes: ``<models>/<publisher>/<name>/<file_name>``."""

    publisher: str
    name: str
    file_name: str
    #: The user gave ``publisher`` or ``name``: the key is ``publisher/name`` (a manifest).
    declared: bool = False

    @property
    def key(self) -> str:
        """The key the model will get: ``publisher/name`` when :attr:`declared`, else LM Studio's
        rule on ``name`` (as for a text model: the catalog, which reads the header, has the last
        word once the file is in place)."""
        if self.declared:
            return f"{self.publisher}/{self.name}"
        return modelkeys.folder_key(self.name)

    def target(self, models_dir: Path) -> Path:
        return models_dir / self.publisher / self.name / self.file_name


def placement_for_url(url: URL, *, publisher: str | None, name: str | None) -> Placement:
    """The placement of a download of ``url`` (see the module docstring for the rule)."""
    file_name = clean_part(url.name) if url.name else ""
    if not file_name.lower().endswith(".gguf") or len(file_name) <= len(".gguf"):
        raise InvalidParameterError(
            f"the URL must point at a .gguf file (its path ends in {url.name or '/'!r})",
            hint="give the URL of the file itself, e.g. https://huggingface.co/OWNER/REPO"
            "/resolve/main/FILE.gguf",
            param="url",
        )
    segments = [s for s in url.parts if s != "/"]
    if len(segments) >= 5 and segments[2] == "resolve":
        derived_publisher, derived_name = segments[0], segments[1]
    else:
        derived_publisher, derived_name = url.host or "_", file_name[: -len(".gguf")]
    if publisher:
        derived_publisher = check_part(publisher, "publisher")
    if name:
        derived_name = check_part(name, "name")
    return Placement(
        clean_part(derived_publisher),
        clean_part(derived_name),
        file_name,
        declared=bool(publisher or name),
    )


def placement_for_file(source: Path, *, publisher: str | None, name: str | None) -> Placement:
    """The placement of an imported file: ``local/<stem>`` unless told otherwise."""
    return Placement(
        publisher=check_part(publisher, "publisher") if publisher else LOCAL_PUBLISHER,
        name=check_part(name, "name") if name else clean_part(source.stem),
        file_name=clean_part(source.name),
        declared=bool(publisher or name),
    )


def declare_key(placement: Placement, target: Path) -> None:
    """Write the manifest that keys ``target``'s folder ``placement.key`` when the user named
    the model and the folder declares no key yet (an existing manifest is left as it is; a key
    a manifest cannot hold, e.g. with ``@``, is left to the folder rule)."""
    if not placement.declared or not modelkeys.is_valid_key(placement.key):
        return
    try:
        if modelkeys.read_manifest(target.parent) is not None:
            return
    except ValueError:
        return  # a broken manifest is the user's: lms ls reports it
    with storage.guard_full(target.parent):
        modelkeys.write_manifest(target.parent, placement.key)


def partial_path(target: Path) -> Path:
    """The hidden file a download of ``target`` is written to (kept for resuming)."""
    return target.with_name(f".{target.name}.part")


def partial_meta_path(target: Path) -> Path:
    """What the partial file was downloaded from (URL, validators), to resume safely."""
    return target.with_name(f".{target.name}.part.json")


def make_dirs(target: Path) -> list[Path]:
    """Create ``target``'s folder; returns the folders that did not exist (deepest last)."""
    created: list[Path] = []
    for folder in reversed([target.parent, *list(target.parent.parents)]):
        if not folder.exists():
            created.append(folder)
    with storage.guard_full(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_dirs(created: list[Path]) -> None:
    """Remove folders :func:`make_dirs` created, if they are still empty."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def place(source: Path, target: Path) -> None:
    """Move the complete file ``source`` to ``target`` (same folder) atomically, never replacing
    an existing ``target``: hard link then unlink (a rename would overwrite). Raises
    ConflictError when ``target`` exists."""
    try:
        with storage.guard_full(target):
            os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise exists_error(target) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this file system: rename, after a check (a tiny race remains).
        if os.path.lexists(target):
            raise exists_error(target) from None
        os.rename(source, target)
    else:
        os.unlink(source)
    fsync_dir(target.parent)


def exists_error(target: Path) -> ConflictError:
    return ConflictError(
        f"{target} already exists; nothing was replaced",
        hint="choose another --name, or remove that file first",
    )


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
