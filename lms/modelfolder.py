"""The models folder: which files are models and the key each one gets. One rule, for all.

The daemon's catalog (:mod:`lms.inference.catalog`), ``lms ls`` with the daemon down and shell
completion all key models with :func:`scan`, so a key never depends on whether the daemon runs.
Keys come from file and folder names only (never from a GGUF header), so completion, which runs
on every TAB, reads no header.

Which files: every ``*.gguf`` file under the models folder, except hidden entries (a file or
folder whose name starts with ``.``, as our own temp files do), partial downloads (``.part``,
``.tmp``, ``.partial``, ``.download``, ``.crdownload``) and multimodal projectors named
``mmproj*``, which are not models on their own.

Keys (README: Where state lives; Model keys):

- ``<models>/<publisher>/<name>/<file>.gguf`` is ``publisher/name``; files deeper in that folder
  belong to the same model;
- a file one level deep, ``<models>/<publisher>/<file>.gguf``, is ``<publisher>/<file stem>``;
- a file at the top, ``<models>/<file>.gguf``, is ``local/<file stem>``.

When several files share a key, each gets ``key@<variant>``. The variant is the part of the file
stem after the stems' common prefix, cut back to a ``-`` or ``.`` boundary, lower-cased:
``gemma-3-270m-Q4_K_M.gguf`` and ``gemma-3-270m-Q8_0.gguf`` in one folder are ``@q4_k_m`` and
``@q8_0``. When that leaves any variant empty, or two variants equal, every file of the group
gets its whole lower-cased stem instead. Should two files still end with the same key, the first
found keeps it (a folder's own files, by name, before its subfolders') and the other is skipped
(and reported in :attr:`FolderScan.skipped`).

Before this rule the daemon named variants by the quantization read from each header and the
CLI by file stem; for the usual ``<name>-<QUANT>.gguf`` files the daemon's keys are unchanged.
Files the daemon cannot use (an unreadable header, a projector not named ``mmproj*``) still take
part in naming their folder's variants; the catalog then leaves them out.

:func:`model_entry` turns a keyed file and its header facts into the ``lms ls --json`` /
control-socket document, so the daemon and the CLI with the daemon down print the same thing.
Standard library and base modules only: the CLI and completion import this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lms import paths

if TYPE_CHECKING:
    from lms.ggufheader import HeaderFacts
    from lms.protocol import ModelEntry

#: The publisher of a GGUF lying directly in the models folder (and of an import without one).
LOCAL_PUBLISHER = "local"
#: Suffixes of files still being written (ours are hidden as well).
PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".download", ".crdownload")
_BOUNDARIES = "-."


@dataclass(frozen=True)
class ModelPath:
    """A model file and its key (``publisher/name[@variant]``), from names only."""

    key: str
    publisher: str
    name: str
    path: Path

    @property
    def variant(self) -> str | None:
        """The part of the key after ``@``, when a folder holds several files."""
        return self.key.partition("@")[2] or None


@dataclass
class FolderScan:
    """The keyed model files of a models folder, sorted by key, and what was left out.

    ``skipped`` holds one line per file left out for a key already taken, and per folder that
    could not be listed (anything but a missing one): the daemon logs them, completion stays
    silent.
    """

    models: list[ModelPath] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def scan(root: Path | None = None) -> FolderScan:
    """Every model file under ``root`` (default: the models folder) with its key.

    Names only: no file is opened. See the module docstring for the rule.
    """
    root = Path(root) if root is not None else paths.models_dir()
    result = FolderScan()
    groups: dict[str, list[Path]] = {}
    for file in _model_files(root, result.skipped):
        groups.setdefault(_base_key(file.relative_to(root).parts), []).append(file)
    taken: dict[str, ModelPath] = {}
    for base, files in groups.items():
        variants = variant_names([f.stem for f in files]) if len(files) > 1 else [""]
        publisher, _, name = base.partition("/")
        for file, variant in zip(files, variants, strict=True):
            key = f"{base}@{variant}" if variant else base
            if key in taken:
                result.skipped.append(
                    f"skipping model file {file}: key {key} is already taken by {taken[key].path}"
                )
                continue
            taken[key] = ModelPath(key=key, publisher=publisher, name=name, path=file)
    result.models = [taken[key] for key in sorted(taken)]
    return result


def variant_names(stems: list[str]) -> list[str]:
    """The ``@variant`` of each of several file stems sharing a key (see the module docstring).

    >>> variant_names(["gemma-3-270m-Q4_K_M", "gemma-3-270m-Q8_0"])
    ['q4_k_m', 'q8_0']
    >>> variant_names(["model", "model-q8"])
    ['model', 'model-q8']
    """
    lowered = [stem.lower() for stem in stems]
    shortest = min(lowered, key=len)
    same = next(
        (i for i, c in enumerate(shortest) if any(s[i] != c for s in lowered)), len(shortest)
    )
    cut = max(shortest.rfind(c, 0, same) for c in _BOUNDARIES) + 1  # 0: no boundary in common
    variants = [stem[cut:] for stem in lowered]
    if all(variants) and len(set(variants)) == len(variants):
        return variants
    return lowered


def model_entry(
    model: ModelPath,
    size_bytes: int,
    facts: HeaderFacts,
    loaded_instances: list[str] | None = None,
) -> ModelEntry:
    """The listing of one model (``lms ls --json``, the control socket's ``models``)."""
    return {
        "key": model.key,
        "type": facts.type,
        "publisher": model.publisher,
        "display_name": facts.general_name or model.name,
        "architecture": facts.architecture,
        "params_string": facts.params_string,
        "quantization": facts.quantization,
        "bits_per_weight": facts.bits_per_weight,
        "size_bytes": size_bytes,
        "path": str(model.path),
        "format": "gguf",
        "max_context_length": facts.max_context_length,
        "trained_for_tool_use": facts.trained_for_tool_use,
        "vision": facts.vision,
        "loaded_instances": list(loaded_instances or []),
    }


def read_entries(root: Path | None = None, problems: list[str] | None = None) -> list[ModelEntry]:
    """What the daemon lists for ``root`` with nothing loaded, read here (``lms ls`` with the
    daemon down): one header read per file. Files the daemon skips (unreadable, a projector) are
    left out the same way; ``problems`` gets one line per file that could not be read, and per
    key taken twice, as the daemon's log would."""
    from lms.errors import ModelLoadError
    from lms.ggufheader import parse_header

    found = scan(root)
    said = problems if problems is not None else []
    said.extend(found.skipped)
    entries: list[ModelEntry] = []
    for model in found.models:
        try:
            size = model.path.stat().st_size
            facts = parse_header(model.path, size)
        except OSError as exc:
            said.append(f"not listed: cannot read model file {model.path}: {exc.strerror}")
            continue
        except ModelLoadError as exc:
            said.append(f"not listed: {exc.message}")
            continue
        if facts.architecture != "clip":
            entries.append(model_entry(model, size, facts))
    return entries


def _base_key(parts: tuple[str, ...]) -> str:
    if len(parts) == 1:
        return f"{LOCAL_PUBLISHER}/{Path(parts[0]).stem}"
    if len(parts) == 2:
        return f"{parts[0]}/{Path(parts[1]).stem}"
    return f"{parts[0]}/{parts[1]}"


def _model_files(root: Path, problems: list[str]) -> list[Path]:
    def note(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):
            problems.append(f"cannot list {exc.filename}: {exc.strerror}")

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=note):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            lowered = filename.lower()
            if filename.startswith(".") or lowered.endswith(PARTIAL_SUFFIXES):
                continue
            if lowered.endswith(".gguf") and not lowered.startswith("mmproj"):
                found.append(Path(dirpath) / filename)
    return found
