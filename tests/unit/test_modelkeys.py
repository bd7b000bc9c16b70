"""LM Studio's model key rule (lms.modelkeys, lms.modelfolder.scan): every observed pair of
docs/MODELS.md, variants, collisions, split GGUFs, files LM Studio keeps beside models, and the
manifest that declares a key."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lms import modelkeys
from lms.inference import catalog
from lms.modelfolder import read_entries, scan
from lms.modelkeys import folder_key, split_part


def _touch(path: Path, data: bytes = b"GGUF") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _keys(root: Path, embeddings: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(key, path under root) of a scan where files under ``embeddings`` folders are embedding
    models (the header is another test's subject)."""

    def type_of(path: Path) -> str:
        rel = path.relative_to(root).as_posix()
        return "embedding" if rel.startswith(embeddings) else "llm"

    return [(m.key, m.path.relative_to(root).as_posix()) for m in scan(root, type_of).models]


# LM Studio's observed (path under models/, key) pairs; True marks an embedding model.
LMSTUDIO_ROWS = [
    (
        "hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF/llama-3.2-1b-instruct-q8_0.gguf",
        False,
        "llama-3.2-1b-instruct",
    ),
    (
        "lmstudio-community/Qwen2.5-7B-Instruct-1M-GGUF/Qwen2.5-7B-Instruct-1M-Q4_K_M.gguf",
        False,
        "qwen2.5-7b-instruct-1m",
    ),
    ("ZiangWu/MobileVLM_V2-1.7B-GGUF/ggml-model-q4_k.gguf", False, "mobilevlm_v2-1.7b"),
    (
        "nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.Q4_K_M.gguf",
        True,
        "text-embedding-nomic-embed-text-v1.5",
    ),
    (
        "gaianet/Nomic-embed-text-v1.5-Embedding-GGUF/nomic-embed-text-v1.5.f16.gguf",
        True,
        "text-embedding-nomic-embed-text-v1.5-embedding",
    ),
    (
        "mradermacher/Llama3.3-8B-Thinking-Reasoning-i1-GGUF/x.i1-Q4_K_S.gguf",
        False,
        "llama3.3-8b-thinking-reasoning-i1",
    ),
]


@pytest.mark.parametrize(("relative", "embedding", "key"), LMSTUDIO_ROWS)
def test_every_observed_lmstudio_key(
    tmp_path: Path, relative: str, embedding: bool, key: str
) -> None:
    _touch(tmp_path / relative)
    embeddings = (relative.split("/")[0],) if embedding else ()
    assert _keys(tmp_path, embeddings) == [(key, relative)]


def test_all_observed_rows_in_one_folder_keep_their_keys(tmp_path: Path) -> None:
    for relative, _, _ in LMSTUDIO_ROWS:
        _touch(tmp_path / relative)
    embeddings = tuple(r.split("/")[0] for r, e, _ in LMSTUDIO_ROWS if e)
    assert sorted(_keys(tmp_path, embeddings)) == sorted((k, r) for r, _, k in LMSTUDIO_ROWS)


@pytest.mark.parametrize(
    ("repository", "key"),
    [
        ("Qwen3.5-9B-MLX-8bit", "qwen3.5-9b-mlx"),
        ("Qwen2.5-72B-Instruct-bf16", "qwen2.5-72b-instruct"),
        ("Model-F16-GGUF", "model"),
        ("model-IQ4_XS-GGUF", "model"),
        ("Phi-3.5-mini-instruct_Uncensored-GGUF", "phi-3.5-mini-instruct_uncensored"),
        ("GGUF", "gguf"),  # nothing left without the suffix: kept
        ("q8_0", "q8_0"),
    ],
)
def test_folder_key(repository: str, key: str) -> None:
    assert folder_key(repository) == key


@pytest.mark.parametrize(
    ("stem", "parsed"),
    [
        ("big-00001-of-00003", ("big", 1, 3)),
        ("Big-Q4_K_M-00003-of-00003", ("Big-Q4_K_M", 3, 3)),
        ("big-00004-of-00003", None),
        ("big-00000-of-00003", None),
        ("big-1-of-3", None),
        ("big", None),
    ],
)
def test_split_part(stem: str, parsed: tuple[str, int, int] | None) -> None:
    assert split_part(stem) == parsed


def test_quantizations_in_one_repository_are_variants(tmp_path: Path) -> None:
    repo = tmp_path / "lmstudio-community" / "Qwen2.5-7B-Instruct-1M-GGUF"
    _touch(repo / "Qwen2.5-7B-Instruct-1M-Q4_K_M.gguf")
    _touch(repo / "Qwen2.5-7B-Instruct-1M-Q8_0.gguf")
    assert [key for key, _ in _keys(tmp_path)] == [
        "qwen2.5-7b-instruct-1m@q4_k_m",
        "qwen2.5-7b-instruct-1m@q8_0",
    ]


@pytest.mark.parametrize("first", ["bartowski", "unsloth"])
def test_two_publishers_with_one_key_both_get_their_publisher(tmp_path: Path, first: str) -> None:
    # Which folder exists first (or sorts first) does not matter.
    second = "unsloth" if first == "bartowski" else "bartowski"
    for publisher in (first, second):
        _touch(tmp_path / publisher / "Qwen3-4B-GGUF" / "Qwen3-4B-Q4_K_M.gguf")
    _touch(tmp_path / "other" / "Alone-GGUF" / "alone.gguf")
    assert [key for key, _ in _keys(tmp_path)] == [
        "alone",
        "bartowski/qwen3-4b",
        "unsloth/qwen3-4b",
    ]


def test_one_publisher_two_repositories_with_one_key_are_variants(tmp_path: Path) -> None:
    _touch(tmp_path / "pub" / "Model-GGUF" / "model-Q4_K_M.gguf")
    _touch(tmp_path / "pub" / "Model-Q8_0-GGUF" / "model-Q8_0.gguf")
    assert [key for key, _ in _keys(tmp_path)] == ["model@q4_k_m", "model@q8_0"]


def test_a_split_model_is_one_model_its_first_part_its_size_the_sum(
    tmp_path: Path, make_gguf: Callable[..., bytes]
) -> None:
    repo = tmp_path / "openai" / "gpt-oss-120b-GGUF"
    sizes = [
        len(make_gguf(repo / f"gpt-oss-120b-MXFP4-0000{n}-of-00003.gguf", tensor_bytes=64 * n))
        for n in (1, 2, 3)
    ]
    found = scan(tmp_path, lambda path: "llm")
    [model] = found.models
    assert model.key == "gpt-oss-120b"
    assert model.path.name == "gpt-oss-120b-MXFP4-00001-of-00003.gguf"
    assert model.size_bytes() == sum(sizes)
    assert found.skipped == []
    [listed] = catalog.discover(tmp_path)
    assert (listed.key, listed.path, listed.size_bytes) == (model.key, model.path, sum(sizes))
    [entry] = read_entries(tmp_path)
    assert (entry["key"], entry["size_bytes"]) == (model.key, sum(sizes))


def test_a_split_model_with_a_part_missing_is_left_out_and_reported(tmp_path: Path) -> None:
    repo = tmp_path / "pub" / "Big-GGUF"
    _touch(repo / "big-00001-of-00003.gguf")
    _touch(repo / "big-00003-of-00003.gguf")
    _touch(repo / "other.gguf")
    found = scan(tmp_path, lambda path: "llm")
    assert [m.key for m in found.models] == ["big"]  # other.gguf, alone in its repository
    assert found.models[0].path == repo / "other.gguf"
    assert len(found.skipped) == 1
    assert "part(s) 2 of 3 are missing" in found.skipped[0]


def test_files_lmstudio_keeps_beside_models_are_ignored_silently(tmp_path: Path) -> None:
    repo = tmp_path / "ZiangWu" / "MobileVLM_V2-1.7B-GGUF"
    _touch(repo / "ggml-model-q4_k.gguf")
    _touch(repo / "mmproj-model-f16.gguf")
    _touch(repo / "ggml-model-q8_0.gguf.part")
    _touch(repo / "model.yaml", b"model: x/y\n")
    _touch(repo / "manifest.json", b"{}")
    _touch(repo / ".DS_Store", b"\0")
    _touch(tmp_path / ".internal" / "model-index-cache.json", b"{}")
    _touch(tmp_path / ".DS_Store", b"\0")
    found = scan(tmp_path, lambda path: "llm")
    assert [(m.key, m.path.name) for m in found.models] == [
        ("mobilevlm_v2-1.7b", "ggml-model-q4_k.gguf")
    ]
    assert found.skipped == []


def test_a_manifest_wins_over_the_folder_rule(tmp_path: Path) -> None:
    repo = tmp_path / "google" / "gemma-3-270m"
    _touch(repo / "gemma-3-270m-q4_k_m.gguf")
    assert _keys(tmp_path) == [("gemma-3-270m", "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf")]
    modelkeys.write_manifest(repo, "google/gemma-3-270m")
    assert json.loads((repo / "lms-model.json").read_text()) == {"model": "google/gemma-3-270m"}
    # Never prefixed, even for an embedding model; several files are its variants.
    assert _keys(tmp_path, ("google",)) == [
        ("google/gemma-3-270m", "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
    ]
    _touch(repo / "gemma-3-270m-q8_0.gguf")
    assert [key for key, _ in _keys(tmp_path)] == [
        "google/gemma-3-270m@q4_k_m",
        "google/gemma-3-270m@q8_0",
    ]


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"model": 3}', b'{"model": "a/b@c"}', b'{"model": "a/b/c"}', b"[]"],
)
def test_a_broken_manifest_is_reported_and_the_folder_rule_applies(
    tmp_path: Path, content: bytes
) -> None:
    repo = tmp_path / "pub" / "Tiny-GGUF"
    _touch(repo / "tiny.gguf")
    _touch(repo / "lms-model.json", content)
    found = scan(tmp_path, lambda path: "llm")
    assert [m.key for m in found.models] == ["tiny"]
    assert len(found.skipped) == 1
    assert "lms-model.json" in found.skipped[0]


def test_write_manifest_refuses_an_invalid_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid model key"):
        modelkeys.write_manifest(tmp_path, "a/b@q8_0")
    assert list(tmp_path.iterdir()) == []


def test_the_catalog_keys_an_lmstudio_layout(
    tmp_path: Path, make_gguf: Callable[..., bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # Embedding or not comes from the header: bert is an encoder; a pooling type is not needed.
    make_gguf(tmp_path / "nomic-ai" / "nomic-embed-text-v1.5-GGUF" / "n.Q4_K_M.gguf", arch="bert")
    make_gguf(tmp_path / "hugging-quants" / "Llama-3.2-1B-Instruct-Q8_0-GGUF" / "l.gguf")
    with caplog.at_level(logging.WARNING, logger="lms.inference.catalog"):
        models = catalog.discover(tmp_path)
    assert [(m.key, m.type, m.publisher) for m in models] == [
        ("llama-3.2-1b-instruct", "llm", "hugging-quants"),
        ("text-embedding-nomic-embed-text-v1.5", "embedding", "nomic-ai"),
    ]
    assert [e["key"] for e in read_entries(tmp_path)] == [m.key for m in models]
    assert caplog.text == ""


def test_a_token_glob_matches_the_key_the_path_or_the_former_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_gguf: Callable[..., bytes]
) -> None:
    from lms.auth.registry import Registry

    monkeypatch.setenv("LMS_HOME", str(tmp_path / "home"))
    models = tmp_path / "models"
    make_gguf(models / "google" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf", tensor_bytes=64)
    modelkeys.write_manifest(models / "google" / "gemma-3-270m", "google/gemma-3-270m")
    make_gguf(models / "google" / "Gemma-2-2B-it-GGUF" / "gemma-2-2b-it-Q8_0.gguf", tensor_bytes=64)
    make_gguf(models / "hugging-quants" / "Llama-3.2-1B-Instruct-Q8_0-GGUF" / "l.gguf")
    make_gguf(models / "local" / "Tiny-F32" / "Tiny-F32.gguf", tensor_bytes=64)
    found = {m.key: m for m in catalog.discover(models)}
    assert set(found) == {"google/gemma-3-270m", "gemma-2-2b-it", "llama-3.2-1b-instruct", "tiny"}
    assert (
        found["gemma-2-2b-it"].relative_path == "google/Gemma-2-2B-it-GGUF/gemma-2-2b-it-Q8_0.gguf"
    )
    registry = Registry()
    google, _ = registry.create("google", models=["google/*"])
    local, _ = registry.create("local", models=["local/*"])
    old_exact, _ = registry.create("old", models=["hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF"])
    new_exact, _ = registry.create("new", models=["llama-3.2-1b-instruct"])
    assert google.allowed_models(sorted(found)) == ["gemma-2-2b-it", "google/gemma-3-270m"]
    assert local.allowed_models(sorted(found)) == ["tiny"]
    # A glob naming the key lms gave before LM Studio's rule keeps matching the same model: no
    # existing token narrows.
    assert old_exact.allowed_models(sorted(found)) == ["llama-3.2-1b-instruct"]
    old_local, _ = registry.create("old-local", models=["local/Tiny-F32"])
    assert old_local.allowed_models(sorted(found)) == ["tiny"]
    assert new_exact.allowed_models(sorted(found)) == ["llama-3.2-1b-instruct"]
    assert not google.allows_model("no-such-model")
    # A token stored before LM Studio's keys (no key_rule) matches exactly what it matched
    # then, the former keys: it neither loses a model nor gains one.
    before = [
        (["*instruct*"], []),  # would match the new key llama-3.2-1b-instruct
        (["*.gguf"], []),  # would match every path
        (["hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF"], ["llama-3.2-1b-instruct"]),
        (["google/*"], ["gemma-2-2b-it", "google/gemma-3-270m"]),
        (["local/*"], ["tiny"]),
    ]
    for n, (globs, matched) in enumerate(before):
        made, _ = registry.create(f"before-{n}", models=globs)
        stored = dataclasses.replace(made, key_rule=1)
        assert stored.allowed_models(sorted(found)) == matched, globs
    assert registry.create("now", models=["*instruct*"])[0].allowed_models(sorted(found)) == [
        "llama-3.2-1b-instruct"
    ]
