"""The models folder: which files are models and the key each one gets. One rule, for all.

The daemon's catalog (:mod:`lms.inference.catalog`), ``lms ls`` with the daemon down and shell
completion all key models with :func:`scan`, so a key never depends on whether the daemon runs.
The rule is LM Studio's (docs/MODELS.md; the name rules themselves are in :mod:`lms.modelkeys`),
so an LM Studio models folder (``models.dir``) gives the keys LM Studio shows.

Which files: every ``*.gguf`` file under the models folder, except hidden entries (a file or
folder whose name starts with ``.``, as our own temp files do), partial downloads (``.part``,
``.tmp``, ``.partial``, ``.download``, ``.crdownload``), multimodal projectors named
``mmproj*``, and the parts after the first of a split GGUF (``-00002-of-00003.gguf``...): a split
model is its first part (what llama.cpp loads), its size the sum of its parts; one with a part
missing is left out (and reported). Anything else (LM Studio's JSON and YAML, ``.DS_Store``) is
not looked at.

Keys:

- ``<models>/<publisher>/<repository>/<file>.gguf``: :func:`lms.modelkeys.folder_key` of the
  repository folder (``hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF`` gives
  ``llama-3.2-1b-instruct``); files deeper in that folder belong to the same model. A manifest
  ``lms-model.json`` in the repository folder declares the key instead (the bundled default
  model's is ``google/gemma-3-270m``);
- a file one level deep, ``<models>/<publisher>/<file>.gguf``, or at the top, ``<models>/<file>
  .gguf`` (publisher ``local``): the same rule applied to the file's stem (without its split
  suffix);
- an embedding model (the header's ``type``, as the catalog computes it) gets ``text-embedding-``
  before a key that comes from a name (never before a manifest's);
- when models of different publishers get one key, each becomes ``<publisher>/<key>``, whatever
  the order they are found in.

When several files share a key, each gets ``key@<variant>``. The variant is the part of the file
stem after the stems' common prefix, cut back to a ``-`` or ``.`` boundary, lower-cased:
``gemma-3-270m-Q4_K_M.gguf`` and ``gemma-3-270m-Q8_0.gguf`` in one folder are ``@q4_k_m`` and
``@q8_0``. When that leaves any variant empty, or two variants equal, every file of the group
gets its whole lower-cased stem instead. Should two files still end with the same key, the first
found keeps it (a folder's own files, by name, before its subfolders') and the other is skipped
(and reported in :attr:`FolderScan.skipped`).

The embedding prefix needs one fact from the GGUF header, and completion runs on every TAB. The
daemon's catalog passes the type it reads anyway (its in-process header cache); ``lms ls`` with
the daemon down reads every header anyway. Completion (the default of :func:`scan`) uses
:class:`lms.modeltypes.TypeCache`: ``model-types.json`` in the data folder, one ``[size,
mtime_ns, type]`` per path, so a TAB costs a ``stat`` per model file plus one small JSON read,
and a header is parsed (a memory map, ~0.04 s for a 262k-token vocabulary) only for a file that
is new or changed since. Measured on 20 models: 0.77 s for the first TAB, 0.06-0.14 s after, as
before this rule (docs/MODELS.md).

:func:`model_entry` turns a keyed file and its header facts into the ``lms ls --json`` /
control-socket document, so the daemon and the CLI with the daemon down print the same thing.
Standard library and base modules only: the CLI and completion import this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lms import modelkeys, modeltypes

if TYPE_CHECKING:
    from lms.ggufheader import HeaderFacts
    from lms.protocol import ModelEntry

#: The publisher of a GGUF lying directly in the models folder (and of an import without one).
LOCAL_PUBLISHER = "local"
#: Suffixes of files still being written (ours are hidden as well).
PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".download", ".crdownload")
_BOUNDARIES = "-."

#: What a scan asks of a model file: its type (``"llm"`` or ``"embedding"``), None if unknown.
TypeOf = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class ModelPath:
    """A model file and its key (``[publisher/]name[@variant]``); ``parts`` are all the files of
    a split GGUF (``path`` is the first), or just ``path``."""

    key: str
    publisher: str
    name: str
    path: Path
    parts: tuple[Path, ...] = ()
    relative: str = ""  # ``path`` relative to the models folder, with ``/``

    @property
    def variant(self) -> str | None:
        """The part of the key after ``@``, when a folder holds several files."""
        return self.key.partition("@")[2] or None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the model: its split parts, or its one file."""
        return self.parts or (self.path,)

    def size_bytes(self) -> int:
        """The sum of the sizes of :attr:`files` (OSError when one cannot be read)."""
        return sum(part.stat().st_size for part in self.files)


@dataclass
class FolderScan:
    """The keyed model files of a models folder, sorted by key, and what was left out.

    ``skipped`` holds one line per file left out for a key already taken, per split model with a
    part missing, per broken manifest, and per folder that could not be listed (anything but a
    missing one): the daemon logs them, completion stays silent.
    """

    models: list[ModelPath] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Unit:
    """One model before keying: its file(s) and where its name comes from."""

    path: Path
    parts: tuple[Path, ...]
    publisher: str
    source: str  # the repository folder's name, or the file's stem
    stem: str  # for variant names (a split model's stem without its part suffix)
    manifest: str | None
    base: str = ""


def scan(root: Path | None = None, type_of: TypeOf | None = None) -> FolderScan:
    """Every model file under ``root`` (default: the models folder) with its key.

    ``type_of`` tells which files are embedding models (default:
    :class:`lms.modeltypes.TypeCache` in the data folder); it is asked only about files whose key
    comes from a name. See the module docstring for the rule.
    """
    if root is None:
        from lms import config

        root = config.current_models_dir()
    root = Path(root)
    result = FolderScan()
    cache = modeltypes.TypeCache.default() if type_of is None else None
    units = _units(root, _model_files(root, result.skipped), result.skipped)
    for unit in units:
        if unit.manifest is not None:
            unit.base = unit.manifest
            continue
        kind = (cache or type_of or _unknown)(unit.path)
        unit.base = modelkeys.folder_key(unit.source, embedding=kind == "embedding")
    if cache is not None:
        cache.save()
    _prefix_collisions(units)
    groups: dict[str, list[_Unit]] = {}
    for unit in units:
        groups.setdefault(unit.base, []).append(unit)
    taken: dict[str, ModelPath] = {}
    for base, members in groups.items():
        variants = variant_names([u.stem for u in members]) if len(members) > 1 else [""]
        name = base.rpartition("/")[2]
        for unit, variant in zip(members, variants, strict=True):
            key = f"{base}@{variant}" if variant else base
            if key in taken:
                result.skipped.append(
                    f"skipping model file {unit.path}: key {key} is already taken by "
                    f"{taken[key].path}"
                )
                continue
            parts = unit.parts if len(unit.parts) > 1 else ()
            relative = unit.path.relative_to(root).as_posix()
            taken[key] = ModelPath(key, unit.publisher, name, unit.path, parts, relative)
    result.models = [taken[key] for key in sorted(taken)]
    return result


def _unknown(path: Path) -> str | None:
    return None


# The daemon's last catalog, key → path relative to the models folder: a token's ``--model``
# glob matches either (lms.auth.record). Replaced whole at each discovery, never mutated.
_relative_paths: dict[str, str] = {}


def remember_relative_paths(models: list[ModelPath]) -> None:
    """Record the keys and relative paths of the catalog just read (see
    :func:`relative_path_of`)."""
    global _relative_paths
    _relative_paths = {model.key: model.relative for model in models}


def former_key(relative: str) -> str:
    """The key lms gave the model at ``relative`` (its path under the models folder) before it
    took LM Studio's rule: ``<publisher>/<folder>`` for ``<publisher>/<folder>/.../<file>``,
    ``<publisher>/<stem>`` one level deep, ``local/<stem>`` at the top. Token allowlists still
    match it, so no token written before the change sees fewer models (README: Model keys)."""
    parts = relative.split("/")
    stem = parts[-1].removesuffix(".gguf")
    if len(parts) >= 3:
        return f"{parts[0]}/{parts[1]}"
    if len(parts) == 2:
        return f"{parts[0]}/{stem}"
    return f"{LOCAL_PUBLISHER}/{stem}"


def relative_path_of(key: str) -> str | None:
    """The path, relative to the models folder, of the model ``key`` named at the last discovery
    in this process (None when it named none)."""
    return _relative_paths.get(key)


def _units(root: Path, files: list[Path], problems: list[str]) -> list[_Unit]:
    """The models among ``files``: split parts joined, each with its publisher and source."""
    splits: dict[tuple[Path, str, int], dict[int, Path]] = {}
    singles: list[tuple[Path, tuple[Path, ...], str]] = []
    for file in files:
        stem = file.name[: -len(".gguf")]
        split = modelkeys.split_part(stem)
        if split is None:
            singles.append((file, (file,), stem))
            continue
        splits.setdefault((file.parent, split[0], split[2]), {})[split[1]] = file
    for (folder, stem, count), found in splits.items():
        missing = [n for n in range(1, count + 1) if n not in found]
        if missing:
            problems.append(
                f"skipping split model {folder / stem}: part(s) "
                f"{', '.join(str(n) for n in missing)} of {count} are missing"
            )
            continue
        parts = tuple(found[n] for n in range(1, count + 1))
        singles.append((parts[0], parts, stem))
    singles.sort(key=lambda single: _walk_order(root, single[0]))
    manifests: dict[Path, str | None] = {}
    units: list[_Unit] = []
    for path, parts, stem in singles:
        rel = path.relative_to(root).parts
        manifest = None
        if len(rel) >= 3:
            publisher, source = rel[0], rel[1]
            folder = root / rel[0] / rel[1]
            if folder not in manifests:
                try:
                    manifests[folder] = modelkeys.read_manifest(folder)
                except ValueError as exc:
                    problems.append(f"ignoring a manifest: {exc}")
                    manifests[folder] = None
            manifest = manifests[folder]
        elif len(rel) == 2:
            publisher, source = rel[0], stem
        else:
            publisher, source = LOCAL_PUBLISHER, stem
        units.append(_Unit(path, parts, publisher, source, stem, manifest))
    return units


def _walk_order(root: Path, path: Path) -> tuple[tuple[int, str], ...]:
    # A folder's own files (by name) before its subfolders', as the walk finds them.
    rel = path.relative_to(root).parts
    return (*((1, part) for part in rel[:-1]), (0, rel[-1]))


def _prefix_collisions(units: list[_Unit]) -> None:
    """Models of different publishers (or a name and a manifest) sharing a key: each
    name-keyed one becomes ``<publisher>/<key>``."""
    owners: dict[str, set[str | None]] = {}
    for unit in units:
        owners.setdefault(unit.base, set()).add(None if unit.manifest else unit.publisher)
    for unit in units:
        if unit.manifest is None and len(owners[unit.base]) > 1:
            unit.base = f"{unit.publisher}/{unit.base}"


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
        "relative_path": model.relative,
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

    said = problems if problems is not None else []
    read: dict[Path, HeaderFacts | str] = {}

    def facts_of(path: Path) -> HeaderFacts | str:
        if path not in read:
            try:
                read[path] = parse_header(path, path.stat().st_size)
            except OSError as exc:
                read[path] = f"not listed: cannot read model file {path}: {exc.strerror}"
            except ModelLoadError as exc:
                read[path] = f"not listed: {exc.message}"
        return read[path]

    def type_of(path: Path) -> str | None:
        facts = facts_of(path)
        return None if isinstance(facts, str) else facts.type

    found = scan(root, type_of=type_of)
    said.extend(found.skipped)
    entries: list[ModelEntry] = []
    for model in found.models:
        facts = facts_of(model.path)
        if isinstance(facts, str):
            said.append(facts)
            continue
        try:
            size = model.size_bytes()
        except OSError as exc:
            said.append(f"not listed: cannot read model file {model.path}: {exc.strerror}")
            continue
        if facts.architecture != "clip":
            entries.append(model_entry(model, size, facts))
    return entries


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
