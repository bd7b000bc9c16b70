"""The GGUF header reader: what a model file says about itself, without reading its weights.

The catalog (:mod:`lms.inference.catalog`) calls :func:`parse_header` on each GGUF file it finds
and caches the result; nothing here knows where a file sits in the models folder.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lms.errors import ModelLoadError

__all__ = [
    "EMBEDDING_ARCHITECTURES",
    "GgufHeader",
    "HeaderFacts",
    "format_params",
    "is_tool_template",
    "parse_header",
]

# Architectures llama.cpp runs as encoders only: they produce embeddings, never text.
EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert"}
    | {"modern-bert", "t5encoder"}
)
# Markers of a template that handles tools: the `tools` variable plus tool calls or the tool role.
_TOOLS_VARIABLE = re.compile(r"\btools\b")
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_TOOL_HANDLING = re.compile(r"tool_call|['\"](?:tool|ipython)['\"]")
# GGUF value types (gguf.GGUFValueType) and their struct codes.
_SCALAR_CODES = {
    **{0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"},
    **{10: "Q", 11: "q", 12: "d"},
}
_STRING, _ARRAY = 8, 9
_HEADER_BYTES = 24  # magic, version, tensor count, metadata count


@dataclass(frozen=True)
class HeaderFacts:
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


def is_tool_template(template: str | None) -> bool:
    """Whether a chat template handles tools (see :class:`ModelFile`)."""
    if not template:
        return False
    code = _JINJA_COMMENT.sub("", template)
    return bool(_TOOLS_VARIABLE.search(code) and _TOOL_HANDLING.search(code))


def parse_header(path: Path, size: int) -> HeaderFacts:
    try:
        with path.open("rb") as file:
            if size < _HEADER_BYTES:
                raise ValueError("the file is empty" if size == 0 else "the file is too short")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = GgufHeader(buf)
                return _facts_from(header)
    except (OSError, ValueError, KeyError, IndexError, OverflowError, struct.error) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, struct.error):
            detail = "it ends inside its header"
        raise ModelLoadError(
            f"{path} is not a readable GGUF model ({detail or type(exc).__name__})",
            hint="the file may be truncated or corrupt: download or import it again",
        ) from exc


class GgufHeader:
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


def _facts_from(header: GgufHeader) -> HeaderFacts:
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
    return HeaderFacts(
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
