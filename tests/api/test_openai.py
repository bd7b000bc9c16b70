"""/v1/completions and /v1/chat/completions: plumbing on the scripted FakeEngine, what the model
says on the real default model (the tests marked `model`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"


async def sse_events(response: Any) -> list[Any]:
    events: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.model
async def test_completion(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "The capital of France is",
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["text"].strip()
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["prompt_tokens"] == 6
    assert body["usage"]["total_tokens"] == 14


@pytest.mark.model
async def test_completion_stream_matches_non_stream(client: TestClient) -> None:  # type: ignore[type-arg]
    payload = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    plain = await (await client.post("/v1/completions", json=payload)).json()
    response = await client.post(
        "/v1/completions",
        json={**payload, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == plain["choices"][0]["text"]
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert len(events) > 5  # token by token, not one lump


@pytest.mark.model
async def test_stop_string(client: TestClient) -> None:  # type: ignore[type-arg]
    payload = {
        "model": MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 30,
        "temperature": 0,
    }
    full = (await (await client.post("/v1/completions", json=payload)).json())["choices"][0]
    word = full["text"].split()[2]
    stopped = await (await client.post("/v1/completions", json={**payload, "stop": [word]})).json()
    choice = stopped["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert word not in choice["text"]
    assert full["text"].startswith(choice["text"])


@pytest.mark.model
async def test_seed_makes_sampling_repeatable(client: TestClient) -> None:  # type: ignore[type-arg]
    payload = {
        "model": MODEL,
        "prompt": "My favourite food is",
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 42,
    }
    a = (await (await client.post("/v1/completions", json=payload)).json())["choices"][0]["text"]
    b = (await (await client.post("/v1/completions", json=payload)).json())["choices"][0]["text"]
    assert a == b


async def test_chat_completion(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            "max_tokens": 16,
            "temperature": 0,
        },
    )
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"]  # the Gemma fallback template makes the model answer
    assert "<end_of_turn>" not in message["content"]
    assert body["usage"]["completion_tokens"] >= 1


async def test_chat_stream_with_usage(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count to five."}],
            "max_tokens": 10,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = await sse_events(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] >= 1
    finish = events[-3]["choices"][0]["finish_reason"]
    assert finish in ("stop", "length")
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-3])
    assert content


@pytest.mark.model
async def test_models_lists_default_model(client: TestClient) -> None:  # type: ignore[type-arg]
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    native = await (await client.get("/api/v1/models")).json()
    entry = native["models"][0]
    assert entry["key"] == MODEL
    assert entry["type"] == "llm"
    assert entry["architecture"] == "gemma3"
    assert entry["quantization"]["name"] == "Q4_K_M"
    assert entry["format"] == "gguf"


@pytest.mark.model
async def test_jit_load_shows_instance(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 1})
    native = await (await client.get("/api/v1/models")).json()
    instances = native["models"][0]["loaded_instances"]
    assert [i["id"] for i in instances] == [MODEL]
    assert instances[0]["config"]["context_length"] == 4096


@pytest.mark.model
async def test_cache_prompt_false_decodes_the_whole_prompt(client: TestClient) -> None:  # type: ignore[type-arg]
    payload = {"model": MODEL, "prompt": "A list of rivers: the Nile,", "max_tokens": 4}
    payload["temperature"] = 0
    first = await (await client.post("/v1/completions", json=payload)).json()
    warm = await (await client.post("/v1/completions", json=payload)).json()
    cold = await client.post("/v1/completions", json={**payload, "cache_prompt": False})
    cold_body = await cold.json()
    prompt_tokens = first["usage"]["prompt_tokens"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt_tokens - 1
    assert cold_body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert cold_body["choices"][0]["text"] == first["choices"][0]["text"]  # same batch shapes


async def test_cache_prompt_must_be_a_boolean(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "cache_prompt": "no"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"]["param"] == "cache_prompt"
