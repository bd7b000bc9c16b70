"""POST /api/v1/chat: shapes, events, stateful chats and errors on the scripted FakeEngine; what
the model says on the real default model (the tests marked `model`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lms.auth.registry import Registry

MODEL = "google/gemma-3-270m"


async def chat(client: TestClient, **payload: Any) -> Any:  # type: ignore[type-arg]
    body = {"model": MODEL, "max_output_tokens": 6, "temperature": 0, **payload}
    return await client.post("/api/v1/chat", json=body)


async def events_of(response: Any) -> list[tuple[str, dict[str, Any]]]:
    text = await response.text()
    found = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        found.append((lines["event"], data))
    return found


@pytest.mark.model
@pytest.mark.fresh_load  # asserts the first request's load time
async def test_response_shape(client: TestClient) -> None:  # type: ignore[type-arg]
    first = await (await chat(client, input="What is the capital of France?")).json()
    assert first["model_instance_id"] == MODEL
    assert first["output"][0]["type"] == "message" and first["output"][0]["content"]
    assert re.fullmatch(r"resp_[0-9a-f]{48}", first["response_id"])
    stats = first["stats"]
    assert stats["total_output_tokens"] == 6
    assert stats["input_tokens"] > 5
    assert stats["model_load_time_seconds"] > 0  # this request loaded the model
    second = await (await chat(client, input="Hi")).json()
    assert "model_load_time_seconds" not in second["stats"]


@pytest.mark.model
async def test_stream_event_order(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await chat(client, input=[{"type": "text", "content": "Say hi"}], stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await events_of(response)
    kinds = [k for k, _ in events]
    assert kinds[0] == "chat.start" and kinds[-1] == "chat.end"
    assert kinds[1] == "model_load.start"
    assert kinds.index("model_load.end") < kinds.index("prompt_processing.start")
    assert kinds.index("prompt_processing.end") < kinds.index("message.start")
    assert kinds.index("message.end") == len(kinds) - 2
    deltas = "".join(d["content"] for k, d in events if k == "message.delta")
    result = events[-1][1]["result"]
    assert result["output"][0]["content"] == deltas
    assert result["stats"]["total_output_tokens"] == 6
    progress = [d["progress"] for k, d in events if k == "model_load.progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 1.0


async def test_previous_response_continues_and_branches(client: TestClient) -> None:  # type: ignore[type-arg]
    first = await (await chat(client, input="My name is Ada.", system_prompt="Be brief.")).json()
    second = await (
        await chat(client, input="What is my name?", previous_response_id=first["response_id"])
    ).json()
    assert second["response_id"] != first["response_id"]
    # The whole first exchange is in the prompt of the second.
    assert second["stats"]["input_tokens"] > first["stats"]["input_tokens"] + 5
    branch = await (
        await chat(client, input="Something else", previous_response_id=first["response_id"])
    ).json()
    assert branch["stats"]["input_tokens"] < second["stats"]["input_tokens"] + 5


async def test_store_false(client: TestClient) -> None:  # type: ignore[type-arg]
    body = await (await chat(client, input="Hello", store=False)).json()
    assert "response_id" not in body


async def test_unknown_previous_response(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await chat(client, input="x", previous_response_id="resp_" + "ab" * 24)
    assert response.status == 404
    body = await response.json()
    assert body["error"]["code"] == "previous_response_not_found"
    assert body["error"]["param"] == "previous_response_id"


async def test_other_tokens_chat_is_not_found(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> None:
    registry = Registry()
    _, alice = registry.create("alice")
    _, bob = registry.create("bob")
    (lms_home / "config" / "config.toml").write_text("[auth]\nrequired = true\n")
    response = await client.post(
        "/api/v1/chat",
        json={"model": MODEL, "input": "private", "max_output_tokens": 2},
        headers={"Authorization": f"Bearer {alice}"},
    )
    first = await response.json()
    stolen = await client.post(
        "/api/v1/chat",
        json={"model": MODEL, "input": "x", "previous_response_id": first["response_id"]},
        headers={"Authorization": f"Bearer {bob}"},
    )
    assert stolen.status == 404
    assert (await stolen.json())["error"]["code"] == "previous_response_not_found"


async def test_error_mid_stream_still_ends(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await chat(client, input="word " * 5000, stream=True)
    assert response.status == 200
    events = await events_of(response)
    kinds = [k for k, _ in events]
    assert kinds[0] == "chat.start" and kinds[-1] == "chat.end"
    error = next(d for k, d in events if k == "error")
    assert error["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"input": "x", "model": None}, 400, "model"),
        ({}, 400, "input"),
        ({"input": ""}, 400, "input"),
        ({"input": [{"type": "image", "data_url": "data:image/png;base64,AA=="}]}, 400, "input.0"),
        ({"input": [{"type": "video", "content": "x"}]}, 400, "input.0.type"),
        ({"input": [{"type": "text", "text": "x"}]}, 400, "input.0.content"),
        ({"input": "x", "reasoning": "high"}, 400, "reasoning"),
        ({"input": "x", "previous_response_id": "chat_1"}, 400, "previous_response_id"),
        ({"input": "x", "integrations": ["mcp/x"]}, 403, "integrations[0]"),  # auth is off
        ({"input": "x", "max_output_tokens": "many"}, 400, "max_output_tokens"),
    ],
)
async def test_bad_input(
    client: TestClient,  # type: ignore[type-arg]
    payload: dict[str, Any],
    status: int,
    param: str,
) -> None:
    body = {"model": MODEL, **payload}
    if body["model"] is None:
        del body["model"]
    response = await client.post("/api/v1/chat", json=body)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["param"] == param
    assert (await client.get("/health")).status == 200


async def test_message_alias_accepted(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await chat(client, input=[{"type": "message", "content": "Hello"}])
    assert response.status == 200
