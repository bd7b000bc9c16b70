"""The embedding engine on the real default model (``model``); embedding instances (identifiers,
kinds, keep-last-JIT) on a ModelManager whose loader builds FakeEmbedders (tests/fakes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEmbedder, FakeLoader

from lms import config
from lms.errors import (
    ContextOverflowError,
    InvalidParameterError,
    InvalidRequestError,
    ModelNotFoundError,
)
from lms.inference.embedder import Embedder
from lms.inference.engine import LoadOptions
from lms.inference.manager import ModelManager

MODEL = "google/gemma-3-270m"


@pytest.fixture(scope="module")
def embedder(default_model_path: Path) -> Embedder:
    loaded = Embedder.load(default_model_path, LoadOptions(context_length=512))
    yield loaded  # type: ignore[misc]
    loaded.close()


@pytest.mark.model
async def test_unit_vectors_and_counts(embedder: Embedder) -> None:
    result = await embedder.embed(["one two three", "four"])
    assert [v.shape for v in result.vectors] == [(embedder.n_embd,)] * 2
    assert [float(np.linalg.norm(v)) for v in result.vectors] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert result.token_counts == [
        embedder.count_tokens("one two three"),
        embedder.count_tokens("four"),
    ]
    assert result.total_tokens == sum(result.token_counts)


@pytest.mark.model
async def test_concurrent_calls_are_merged_and_match_single_calls(embedder: Embedder) -> None:
    texts = [f"sentence number {i} about topic {i * 7}" for i in range(12)]
    together = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    for text, result in zip(texts, together, strict=True):
        alone = await embedder.embed([text])
        assert float(result.vectors[0] @ alone.vectors[0]) > 0.999  # see the API tests
    assert embedder.queued == 0 and embedder.active == 0 and embedder.status == "idle"


@pytest.mark.model
async def test_more_inputs_than_one_batch_holds(embedder: Embedder) -> None:
    # 40 inputs of ~30 tokens: more sequences (32) and more tokens (512) than one batch takes
    texts = [f"{i} " + "lorem ipsum dolor sit amet " * 5 for i in range(40)]
    result = await embedder.embed(texts)
    assert len(result.vectors) == 40
    last = await embedder.embed([texts[-1]])
    assert float(result.vectors[-1] @ last.vectors[0]) > 0.999
    assert (await embedder.embed(texts)).vectors[-1].tolist() == result.vectors[-1].tolist()


@pytest.mark.model
async def test_long_input_spans_several_decodes(embedder: Embedder) -> None:
    text = "word " * 450  # > 256 tokens: two llama_decode calls for one sequence
    result = await embedder.embed([text, "short"])
    assert result.token_counts[0] > 256
    again = await embedder.embed([text])
    assert float(result.vectors[0] @ again.vectors[0]) > 0.999


@pytest.mark.model
async def test_bad_inputs(embedder: Embedder) -> None:
    with pytest.raises(ContextOverflowError, match=r"input\[1\]"):
        await embedder.embed(["fine", "word " * 600])
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        await embedder.embed([[2, embedder.n_vocab]])
    with pytest.raises(InvalidParameterError, match="empty"):
        await embedder.embed([""])
    with pytest.raises(InvalidParameterError, match=r"'input\[1\]' holds a lone surrogate"):
        await embedder.embed(["fine", "\ud800"])
    assert len((await embedder.embed(["still serving"])).vectors) == 1


@pytest.fixture
async def manager(
    tmp_path: Path, fake_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ModelManager]:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    models = ModelManager(
        lambda: config.load(), models_dir=lambda: fake_models_dir, loader=FakeLoader()
    )
    yield models
    await models.close()


async def test_identifiers_and_kinds(manager: ModelManager) -> None:
    chat = await manager.load(MODEL)
    first = await manager.load(MODEL, embedding=True, context_length=256)
    second = await manager.load(MODEL, embedding=True, context_length=256)
    assert (chat.identifier, chat.type) == (MODEL, "llm")
    assert (first.identifier, first.type) == (f"{MODEL}:embedding", "embedding")
    assert isinstance(first.backend, FakeEmbedder) and first.backend is not second.backend
    assert second.identifier == f"{MODEL}:embedding:2"
    assert first.load_config() == {"context_length": 256}
    assert set(chat.load_config()) == {
        "context_length",
        "eval_batch_size",
        "parallel",
        "flash_attention",
    }
    with pytest.raises(InvalidRequestError, match="embedding mode"):
        first.engine  # noqa: B018
    with pytest.raises(InvalidRequestError):
        chat.embedder  # noqa: B018
    # a model key finds the instance of the kind asked for; a foreign identifier is refused
    assert await manager.acquire(MODEL, kind="embedding") is first
    assert await manager.acquire(MODEL) is chat
    with pytest.raises(InvalidRequestError, match="loaded in embedding mode"):
        await manager.acquire(first.identifier)


async def test_keep_last_jit_is_per_kind(manager: ModelManager) -> None:
    await manager.acquire(MODEL, kind="embedding")
    await manager.acquire(MODEL)
    assert [(i.identifier, i.type, i.jit) for i in manager.instances()] == [
        (MODEL, "llm", True),
        (f"{MODEL}:embedding", "embedding", True),
    ]


async def test_jit_off_names_the_embedding_flag(manager: ModelManager) -> None:
    config.set_value("models.jit", "off")
    with pytest.raises(ModelNotFoundError) as info:
        await manager.acquire(MODEL, kind="embedding")
    assert info.value.hint == f"load it first: lms load {MODEL} --embedding"
