"""The official `lmstudio` Python SDK (1.6.0b1) against lms, with the real default model.

The SDK does not probe port 1234 (or any port lms uses) by itself: every client here is built
with ``api_host="localhost:PORT"``, as the README tells SDK users.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lmstudio
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


def host_of(server: Server) -> str:
    return "localhost:" + server.url.rsplit(":", 1)[1]


@pytest.fixture
def client(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[lmstudio.Client]:
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    with lmstudio.Client(api_host=host_of(server)) as sdk:
        yield sdk


def make_tokens(home: Path, **permissions: set[str]) -> dict[str, str]:
    """Tokens named after the keys, created in the server's registry."""
    from lms.auth.permissions import Permission
    from lms.auth.registry import Registry

    os.environ["LMS_HOME"], previous = str(home), os.environ.get("LMS_HOME")
    try:
        registry = Registry()
        return {
            name: registry.create(f"sdk-{name}", permissions={Permission(p) for p in perms})[1]
            for name, perms in permissions.items()
        }
    finally:
        if previous is None:
            del os.environ["LMS_HOME"]
        else:
            os.environ["LMS_HOME"] = previous


def remove_token(home: Path, name: str) -> None:
    from lms.auth.registry import Registry

    os.environ["LMS_HOME"], previous = str(home), os.environ.get("LMS_HOME")
    try:
        Registry().remove(f"sdk-{name}")
    finally:
        if previous is None:
            del os.environ["LMS_HOME"]
        else:
            os.environ["LMS_HOME"] = previous


def test_list_models(client: lmstudio.Client) -> None:
    downloaded = client.list_downloaded_models()
    assert [(m.model_key, m.type) for m in downloaded] == [(MODEL, "llm")]
    assert [m.model_key for m in client.llm.list_downloaded()] == [MODEL]
    assert client.embedding.list_downloaded() == []


def test_model_handles_info_and_tokenize(client: lmstudio.Client) -> None:
    model = client.llm.model(MODEL)
    assert model.identifier == MODEL
    assert client.llm.model().identifier == MODEL  # no key: the first loaded model
    assert MODEL in [m.identifier for m in client.llm.list_loaded()]
    info = model.get_info()
    assert info.model_key == MODEL and info.path.startswith("google/gemma-3-270m/")
    assert model.get_context_length() == 4096
    assert model.get_load_config().context_length == 4096
    tokens = model.tokenize("Hello world")
    assert isinstance(tokens, list) and len(tokens) == model.count_tokens("Hello world") >= 2
    assert model.tokenize(["a", "b c"]) == [model.tokenize("a"), model.tokenize("b c")]


def test_respond(client: lmstudio.Client) -> None:
    model = client.llm.model(MODEL)
    progress: list[float] = []
    result = model.respond(
        "What is the capital of France?",
        config={"maxTokens": 8, "temperature": 0},
        on_prompt_processing_progress=progress.append,
    )
    assert result.content
    assert result.stats.predicted_tokens_count == 8
    assert result.stats.stop_reason == "maxPredictedTokensReached"
    assert result.model_info.model_key == MODEL
    assert result.prediction_config.max_tokens == 8
    assert progress[0] == 0.0 and progress[-1] == 1.0


def test_respond_stream_matches_respond(client: lmstudio.Client) -> None:
    model = client.llm.model(MODEL)
    config = {"maxTokens": 12, "temperature": 0}
    stream = model.respond_stream("Name three colors.", config=config)
    pieces = [fragment.content for fragment in stream]
    streamed = stream.result()
    assert len(pieces) >= 3 and all(pieces)
    assert "".join(pieces) == streamed.content
    assert model.respond("Name three colors.", config=config).content == streamed.content


def test_complete_is_a_raw_completion(client: lmstudio.Client, server: Server) -> None:
    model = client.llm.model(MODEL)
    prompt = "The capital of France is"
    result = model.complete(prompt, config={"maxTokens": 8, "temperature": 0})
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0})
    request = urllib.request.Request(
        f"{server.url}/v1/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        openai_text = json.loads(response.read())["choices"][0]["text"]
    assert result.content == openai_text  # no chat template around the prompt
    assert result.stats.prompt_tokens_count == 6


def test_cancel(client: lmstudio.Client) -> None:
    model = client.llm.model(MODEL)
    stream = model.complete_stream("Once upon a time", config={"maxTokens": 2000})
    for received, _ in enumerate(stream, start=1):
        if received == 3:
            stream.cancel()
    result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert result.stats.predicted_tokens_count is not None
    assert result.stats.predicted_tokens_count < 200


def test_load_and_unload(client: lmstudio.Client) -> None:
    progress: list[float] = []
    try:
        second = client.llm.load_new_instance(
            MODEL, "sdk-second", config={"contextLength": 1024}, on_load_progress=progress.append
        )
        assert second.identifier == "sdk-second"
        assert second.get_context_length() == 1024
        assert progress and progress[-1] == 1.0
        assert "sdk-second" in [m.identifier for m in client.llm.list_loaded()]
        with pytest.raises(lmstudio.LMStudioServerError, match="already exists"):
            client.llm.load_new_instance(MODEL, "sdk-second")
        second.unload()
        assert "sdk-second" not in [m.identifier for m in client.llm.list_loaded()]
        with pytest.raises(lmstudio.LMStudioModelNotFoundError):
            client.llm.unload("sdk-second")
    finally:
        if "sdk-second" in [m.identifier for m in client.llm.list_loaded()]:
            client.llm.unload("sdk-second")


def test_embed(client: lmstudio.Client) -> None:
    embedder = client.embedding.model(MODEL)
    try:
        assert embedder.identifier == f"{MODEL}:embedding"
        vector = embedder.embed("hello world")
        assert len(vector) == 640
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
        pair = embedder.embed(["hello world", "something else"])
        assert pair[0] == pytest.approx(vector, abs=1e-5) and pair[1] != pair[0]
        assert embedder.count_tokens("hello world") >= 2
        loaded = [m.identifier for m in client.embedding.list_loaded()]
        assert loaded == [f"{MODEL}:embedding"]
    finally:
        embedder.unload()
    assert client.embedding.list_loaded() == []


def test_unknown_model(client: lmstudio.Client) -> None:
    with pytest.raises(lmstudio.LMStudioModelNotFoundError, match="nobody/nothing"):
        client.llm.model("nobody/nothing")


def test_async_client_opens_every_namespace(server: Server) -> None:
    async def run() -> list[str]:
        async with lmstudio.AsyncClient(api_host=host_of(server)) as sdk:
            handle = await sdk.llm.model(MODEL)
            result = await handle.respond("Hi", config={"maxTokens": 2})
            assert result.stats.predicted_tokens_count is not None
            return [m.model_key for m in await sdk.system.list_downloaded_models()]

    assert asyncio.run(run()) == [MODEL]


def test_bad_frames_raise_in_the_sdk(client: lmstudio.Client, server: Server) -> None:
    """A value no bounded decoder accepts fails that one call with an error the SDK raises,
    naming the field; the socket serves on."""
    with pytest.raises(lmstudio.LMStudioServerError, match="ttlMs"):
        client.llm.load_new_instance(MODEL, "sdk-nan", ttl=math.nan)  # type: ignore[arg-type]
    nested: dict[str, object] = {"type": "string"}
    for _ in range(70):
        nested = {"type": "object", "properties": {"a": nested}}
    model = client.llm.model(MODEL)
    with pytest.raises(lmstudio.LMStudioServerError, match="nested deeper than 64"):
        model.respond("Hi", response_format=nested, config={"maxTokens": 2})
    assert "sdk-nan" not in [m.identifier for m in client.llm.list_loaded()]
    with urllib.request.urlopen(server.url + "/v1/models") as response:
        assert response.status == 200  # the daemon is well


# --- with authentication on -----------------------------------------------------------------


def test_auth_refusals(server: Server, auth_on: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    host = host_of(server)
    guest = lmstudio.Client(api_host=host)
    with guest, pytest.raises(lmstudio.LMStudioServerError, match="requires an API token"):
        guest.llm.list_loaded()
    unknown = "sk-lm-Zz9Zz9Zz:" + "A1" * 10
    with lmstudio.Client(api_host=host, api_token=unknown) as stranger:
        with pytest.raises(lmstudio.LMStudioServerError, match="Authentication failed") as info:
            stranger.list_downloaded_models()
        assert "A1A1" not in str(info.value)


def test_token_permissions_and_revocation(
    server: Server, auth_on: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    tokens = make_tokens(auth_on, user={"inference"}, doomed={"inference"})
    host = host_of(server)
    with lmstudio.Client(api_host=host, api_token=tokens["user"]) as user:
        model = user.llm.model(MODEL)
        assert model.respond("Hi", config={"maxTokens": 2}).content is not None
        with pytest.raises(lmstudio.LMStudioServerError, match="'models' permission"):
            user.llm.load_new_instance(MODEL, "sdk-forbidden")
        assert "sdk-forbidden" not in [m.identifier for m in user.llm.list_loaded()]
    monkeypatch.setenv("LMSTUDIO_API_TOKEN", tokens["doomed"])  # the SDK's own variable
    with lmstudio.Client(api_host=host) as doomed:
        assert [m.model_key for m in doomed.list_downloaded_models()] == [MODEL]
        remove_token(auth_on, "doomed")
        with pytest.raises(lmstudio.LMStudioServerError, match="invalid_api_key"):
            doomed.list_downloaded_models()  # same socket, next call
