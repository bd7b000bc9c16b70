"""Models of an LM Studio models folder, used by LM Studio's keys through the official clients
(docs/MODELS.md, docs/IDENTIFIERS.md): a real embedding model (the tiny BERT of
``make_bert_gguf``) at nomic's path is ``text-embedding-nomic-embed-text-v1.5``, and the default
model linked at Llama 3.2 1B's path is ``llama-3.2-1b-instruct``. The `lmstudio` SDK loads and
finds them by key or path prefix, instances are named by the key, and the `openai` client uses
the same keys. ``models.dir`` is switched on the running daemon and unset at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lmstudio
import numpy as np
import openai
import pytest
from conftest import Server
from typer.testing import CliRunner

from lms.cli import app

pytestmark = pytest.mark.model

EMBEDDING_KEY = "text-embedding-nomic-embed-text-v1.5"
LLM_KEY = "llama-3.2-1b-instruct"
HIDDEN = 64  # the tiny BERT's embedding length
CONFIG = {"contextLength": 256}


@pytest.fixture
def folder(
    server: Server,
    tmp_path: Path,
    default_model_path: Path,
    make_bert_gguf: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """An LM Studio models folder, set as the daemon's ``models.dir`` (unset afterwards)."""
    root = tmp_path / "lmstudio" / "models"
    nomic = root / "nomic-ai" / "nomic-embed-text-v1.5-GGUF" / "nomic-embed-text-v1.5.Q4_K_M.gguf"
    make_bert_gguf(nomic, hidden=HIDDEN, name="nomic-embed-text-v1.5")
    llama = root / "hugging-quants" / "Llama-3.2-1B-Instruct-Q8_0-GGUF"
    llama.mkdir(parents=True)
    (llama / "llama-3.2-1b-instruct-q8_0.gguf").symlink_to(default_model_path)
    monkeypatch.setenv("LMS_HOME", str(server.home))
    monkeypatch.delenv("LMS_MODELS_DIR", raising=False)
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    runner = CliRunner()
    set_it = runner.invoke(app, ["config", "set", "models.dir", str(root)])
    assert set_it.exit_code == 0, set_it.stderr
    try:
        yield root
    finally:
        unset = runner.invoke(app, ["config", "unset", "models.dir"])
        assert unset.exit_code == 0, unset.stderr


@pytest.fixture
def client(server: Server, folder: Path) -> Iterator[lmstudio.Client]:
    with lmstudio.Client(api_host="localhost:" + server.url.rsplit(":", 1)[1]) as sdk:
        yield sdk


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="lm-studio", max_retries=0) as c:
        yield c


def _loaded(client: lmstudio.Client) -> list[tuple[str, str]]:
    """(identifier, model key) of every loaded instance, LLMs and embedding models."""
    models = [*client.llm.list_loaded(), *client.embedding.list_loaded()]
    return sorted((m.identifier, m.get_info().model_key) for m in models)


def _unload_all_of(client: lmstudio.Client, key: str) -> None:
    for model in [*client.llm.list_loaded(), *client.embedding.list_loaded()]:
        if model.get_info().model_key == key:
            model.unload()


def test_embedding_model_by_lmstudio_key(client: lmstudio.Client, oai: openai.OpenAI) -> None:
    downloaded = {m.model_key: m for m in client.embedding.list_downloaded()}
    assert set(downloaded) == {EMBEDDING_KEY}
    assert downloaded[EMBEDDING_KEY].path == (
        "nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.Q4_K_M.gguf"
    )
    _unload_all_of(client, EMBEDDING_KEY)
    try:
        model = client.embedding.model(EMBEDDING_KEY, config=CONFIG)  # loaded on demand
        assert model.identifier == EMBEDDING_KEY  # the key itself: no ":embedding" suffix
        assert (EMBEDDING_KEY, EMBEDDING_KEY) in _loaded(client)
        vector = np.array(model.embed("hello world"))
        assert vector.shape == (HIDDEN,)
        assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
        both = [np.array(v) for v in model.embed(["hello world", "the cat sat on the mat"])]
        assert np.allclose(both[0], vector, atol=1e-5) and float(both[0] @ both[1]) < 0.999

        # A prefix of the model's path finds the same instance; nothing new is loaded.
        same = client.embedding.model("nomic-ai/nomic-embed-text-v1.5")
        assert same.identifier == EMBEDDING_KEY
        assert [i for i, k in _loaded(client) if k == EMBEDDING_KEY] == [EMBEDDING_KEY]

        answer = oai.embeddings.create(model=EMBEDDING_KEY, input=["hello world", "good day"])
        assert answer.model == EMBEDDING_KEY and [d.index for d in answer.data] == [0, 1]
        first = np.array(answer.data[0].embedding)
        assert first.shape == (HIDDEN,) and np.allclose(first, vector, atol=1e-5)
    finally:
        _unload_all_of(client, EMBEDDING_KEY)
    assert [i for i, k in _loaded(client) if k == EMBEDDING_KEY] == []


def test_llm_by_lmstudio_key(client: lmstudio.Client, oai: openai.OpenAI) -> None:
    assert LLM_KEY in {m.model_key for m in client.llm.list_downloaded()}
    _unload_all_of(client, LLM_KEY)
    try:
        first = client.llm.load_new_instance(LLM_KEY, config=CONFIG)
        second = client.llm.load_new_instance(LLM_KEY, config=CONFIG)
        assert (first.identifier, second.identifier) == (LLM_KEY, f"{LLM_KEY}:2")
        with pytest.raises(lmstudio.LMStudioServerError, match="already exists"):
            client.llm.load_new_instance(LLM_KEY, f"{LLM_KEY}:2", config=CONFIG)
        assert client.llm.model("hugging-quants/llama-3.2-1b-instruct").identifier == LLM_KEY
        assert [i for i, k in _loaded(client) if k == LLM_KEY] == [LLM_KEY, f"{LLM_KEY}:2"]

        reply = oai.chat.completions.create(
            model=LLM_KEY,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.model == LLM_KEY
        assert reply.choices[0].message.content
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
    finally:
        _unload_all_of(client, LLM_KEY)
    assert [i for i, k in _loaded(client) if k == LLM_KEY] == []
