"""The GGUF header reader: what a model file says about itself, without reading its weights.

The daemon's catalog (:mod:`lms.inference.catalog`) calls :func:`parse_header` on each GGUF file
it finds and caches the result; nothing here knows where a file sits in the models folder. It is
standard library only (the format's few tables are below), so the CLI can read a header with the
daemon down at the cost of a memory map: the ``gguf`` package would pull in numpy, which alone
costs more than the CLI's start-up budget. The tests cross-check it against ``gguf``'s reader.
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
# The format's tables, as llama.cpp's ggml.h and llama.h number them.
GGUF_MAGIC = 0x46554747  # b"GGUF", little-endian
GGUF_DEFAULT_ALIGNMENT = 32
POOLING_NONE = 0
#: ggml tensor type → (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    **{0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20)},
    **{6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40)},
    **{10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144)},
    **{13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292)},
    **{16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98)},
    **{19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110)},
    **{22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2)},
    **{26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56)},
    **{30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66)},
    **{39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18)},
}
#: ``general.file_type`` → the quantization it names (llama_ftype without its MOSTLY_ prefix).
FILE_TYPES: dict[int, str] = {
    **{0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1"},
    **{10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M"},
    **{16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S"},
    **{22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M"},
    **{28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0"},
    **{37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0"},
}
# GGUF value types and their struct codes.
_SCALAR_CODES = {
    **{0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"},
    **{10: "Q", 11: "q", 12: "d"},
}
_STRING, _ARRAY = 8, 9
_HEADER_BYTES = 24  # magic, version, tensor count, metadata count


@dataclass(frozen=True, kw_only=True)
class HeaderFacts:
    """What the GGUF header says, independent of where the file sits in the catalog (the
    catalog's :class:`~lms.inference.catalog.ModelFile` is these facts plus its place)."""

    general_name: str | None = None
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

    Not the ``gguf`` package's ``GGUFReader``: besides numpy, it builds a numpy view per
    vocabulary entry: 13-16 s for the default model's 262k-token vocabulary, against ~0.1 s
    here. Arrays are skipped (only the token list's offsets are
    kept, to name the BOS/EOS tokens) and every length is checked against the file size.
    """

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.size, self.pos = buf, len(buf), 0
        magic, version = struct.unpack_from("<II", buf, 0)
        if magic != GGUF_MAGIC:
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
        alignment = self.kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-self.pos // alignment) * alignment
        self.n_params = self.n_bytes = end = 0
        self.bytes_by_type: dict[str, int] = {}
        for raw_type, elements, offset in tensors:
            if raw_type not in GGML_TYPES:
                raise ValueError(f"a tensor has the unknown type {raw_type}")
            type_name, block, type_size = GGML_TYPES[raw_type]
            n_bytes = elements * type_size // block
            self.n_params += elements
            self.n_bytes += n_bytes
            self.bytes_by_type[type_name] = self.bytes_by_type.get(type_name, 0) + n_bytes
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
        isinstance(pooling, int) and pooling != POOLING_NONE
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
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
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
