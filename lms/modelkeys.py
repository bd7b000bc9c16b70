"""LM Studio's model key rule, as pure functions on names (docs/MODELS.md has the rule and its
sources): the repository folder's name lower-cased, a trailing ``-GGUF`` dropped, then a trailing
quantization token dropped; ``text-embedding-`` before the key of an embedding model.

Also the two other name rules of the models folder: split GGUFs (``name-00001-of-00003.gguf``,
llama.cpp's ``%s-%05d-of-%05d.gguf``) and lms's own manifest, ``lms-model.json`` beside a model,
whose ``model`` field names the key outright (as ``model:`` does in LM Studio's model.yaml).
Standard library only: :mod:`lms.modelfolder` (and so the CLI and completion) imports it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "EMBEDDING_PREFIX",
    "MANIFEST_NAME",
    "folder_key",
    "is_valid_key",
    "read_manifest",
    "split_part",
    "write_manifest",
]

#: What LM Studio puts before the key of an embedding model.
EMBEDDING_PREFIX = "text-embedding-"
#: lms's manifest beside a model: JSON ``{"model": "<key>"}``. LM Studio lists ``.gguf`` files
#: only and keeps its own metadata elsewhere (``model.yaml``, ``manifest.json`` under its hub
#: folder), so it ignores this name.
MANIFEST_NAME = "lms-model.json"
#: The largest manifest read (a manifest is one short field).
MAX_MANIFEST_BYTES = 4096
_GGUF_SUFFIX = "-gguf"
# A trailing quantization token after a -, _ or . separator: llama.cpp quant types (q8_0,
# q4_k_m, iq4_xs, q4_k), float types (f16, bf16, f32, fp16), MLX-style bit widths (8bit, 4bit).
_QUANT_SUFFIX = re.compile(r"[-_.](?:i?q\d\w*|b?f16|f32|fp16|fp32|mxfp4\w*|\d+bit)$")
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})$", re.IGNORECASE)
_KEY_PART = r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}"
_KEY = re.compile(rf"^{_KEY_PART}(?:/{_KEY_PART})?$")


def folder_key(repository: str, *, embedding: bool = False) -> str:
    """The key LM Studio gives a model in the repository folder ``repository``.

    >>> folder_key("Llama-3.2-1B-Instruct-Q8_0-GGUF")
    'llama-3.2-1b-instruct'
    >>> folder_key("nomic-embed-text-v1.5-GGUF", embedding=True)
    'text-embedding-nomic-embed-text-v1.5'
    """
    key = repository.lower()
    key = key.removesuffix(_GGUF_SUFFIX) or key
    found = _QUANT_SUFFIX.search(key)
    if found is not None and found.start() > 0:
        key = key[: found.start()]
    return EMBEDDING_PREFIX + key if embedding else key


def split_part(stem: str) -> tuple[str, int, int] | None:
    """``(stem, part, count)`` when ``stem`` (a file name without ``.gguf``) is one part of a
    split GGUF, ``name-00002-of-00003``; None otherwise (also for a part number out of range)."""
    found = _SPLIT.match(stem)
    if found is None:
        return None
    part, count = int(found["part"]), int(found["count"])
    if not 1 <= part <= count:
        return None
    return found["stem"], part, count


def is_valid_key(key: str) -> bool:
    """A key a manifest may declare: ``name`` or ``publisher/name`` made of ``A-Z a-z 0-9 . _ -
    +`` (no ``@``, which starts a variant, no ``:``, which numbers an instance)."""
    return bool(_KEY.match(key)) and ".." not in key.split("/")


def read_manifest(folder: Path) -> str | None:
    """The key declared by ``folder``'s manifest; None when it has none.

    Raises ValueError, saying what is wrong, for a manifest that is unreadable, too large, not
    JSON or whose ``model`` is not a valid key.
    """
    path = folder / MANIFEST_NAME
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path} is not JSON") from None
    key = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(key, str) or not is_valid_key(key):
        raise ValueError(f'{path}: "model" must be a key like publisher/name')
    return key


def write_manifest(folder: Path, key: str) -> Path:
    """Write ``folder``'s manifest declaring ``key`` (atomically, replacing an old one)."""
    if not is_valid_key(key):
        raise ValueError(f"{key!r} is not a valid model key")
    path = folder / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o644)
            out.write(json.dumps({"model": key}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
