"""The tiny BERT of ``make_bert_gguf`` (tests/conftest.py) is a real embedding model: the catalog
reads it as one, and llama.cpp loads and runs it through :func:`load_backend` (milliseconds)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lms.errors import ModelLoadError
from lms.inference.catalog import read_metadata
from lms.inference.embedder import Embedder
from lms.inference.generation import LoadOptions
from lms.inference.manager import load_backend

HIDDEN = 48


@pytest.fixture(scope="module")
def bert_path(
    tmp_path_factory: pytest.TempPathFactory, make_bert_gguf: Callable[..., bytes]
) -> Path:
    path = tmp_path_factory.mktemp("bert") / "tiny-bert.gguf"
    make_bert_gguf(path, hidden=HIDDEN)
    return path


@pytest.fixture(scope="module")
def embedder(bert_path: Path) -> Iterator[Embedder]:
    model = read_metadata(bert_path, key="test/tiny-bert")
    backend = load_backend(model, LoadOptions(context_length=256), True)
    assert isinstance(backend, Embedder)
    yield backend
    backend.close()


def test_the_file_is_an_embedding_model_and_the_same_every_time(
    bert_path: Path, tmp_path: Path, make_bert_gguf: Callable[..., bytes]
) -> None:
    model = read_metadata(bert_path, key="test/tiny-bert")
    assert (model.architecture, model.type) == ("bert", "embedding")
    assert make_bert_gguf(tmp_path / "again.gguf", hidden=HIDDEN) == bert_path.read_bytes()
    other = make_bert_gguf(tmp_path / "other.gguf", hidden=HIDDEN, seed=1)
    assert other != bert_path.read_bytes()


async def test_unit_vectors_of_the_hidden_size(embedder: Embedder) -> None:
    assert embedder.n_embd == HIDDEN
    result = await embedder.embed(["hello world", "the cat sat on the mat."])
    assert [v.shape for v in result.vectors] == [(HIDDEN,)] * 2
    assert [float(np.linalg.norm(v)) for v in result.vectors] == pytest.approx([1.0, 1.0], abs=1e-5)
    # [CLS] hello world [SEP]: the WordPiece vocabulary knows both words
    assert result.token_counts[0] == embedder.count_tokens("hello world") == 4


async def test_deterministic_and_different_for_different_texts(embedder: Embedder) -> None:
    texts = ["hello world", "the cat", "one two three four", "Hello, World!"]
    first = await embedder.embed(texts)
    again = await embedder.embed(texts)
    assert [v.tolist() for v in first.vectors] == [v.tolist() for v in again.vectors]
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            assert float(first.vectors[i] @ first.vectors[j]) < 0.999, (texts[i], texts[j])
    alone = await embedder.embed([texts[2]])
    assert float(alone.vectors[0] @ first.vectors[2]) > 0.999


def test_a_file_llama_cpp_aborts_on_is_refused_and_the_process_lives(
    make_bert_gguf: Callable[..., bytes], tmp_path: Path
) -> None:
    # llama.cpp calls abort() on a vocabulary holding a token twice: read in this process, that
    # would end the test run (as it would end the daemon). The probe reads it in a child first.
    path = tmp_path / "twice" / "twice.gguf"
    make_bert_gguf(path, duplicate_token=True)
    with pytest.raises(ModelLoadError, match="aborted reading it"):
        load_backend(read_metadata(path), LoadOptions(context_length=64), embedding=True)
    good = tmp_path / "good" / "good.gguf"
    make_bert_gguf(good)
    load_backend(read_metadata(good), LoadOptions(context_length=64), embedding=True).close()
