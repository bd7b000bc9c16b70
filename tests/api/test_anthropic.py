"""POST /v1/messages (Anthropic-compatible) on the real default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"

Client = TestClient  # type: ignore[type-arg]
ASK = [{"role": "user", "content": "Write a short story about a dog."}]


async def create(client: Client, **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 16, "messages": ASK, "temperature": 0, **fields}
    response = await client.post("/v1/messages", json=body)
    payload: dict[str, Any] = await response.json()
    assert response.status == 200, payload
    return payload


def events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of an SSE body; checks each data's type names its event."""
    found = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        found.append((lines["event"], data))
    return found


@pytest.mark.model
async def test_message_shape(client: Client) -> None:
    message = await create(client, max_tokens=5)
    assert message["id"].startswith("msg_") and len(message["id"]) > 10
    assert (message["type"], message["role"], message["model"]) == ("message", "assistant", MODEL)
    [block] = message["content"]
    assert block["type"] == "text" and block["text"]
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None
    assert message["usage"]["output_tokens"] == 5
    assert message["usage"]["input_tokens"] > len(ASK[0]["content"].split())


async def test_stream_events_match_the_plain_answer(client: Client) -> None:
    plain = await create(client)
    body = {"model": MODEL, "max_tokens": 16, "messages": ASK, "temperature": 0, "stream": True}
    response = await client.post("/v1/messages", json=body)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    found = events(await response.text())
    names = [name for name, _ in found]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = found[0][1]["message"]
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    assert start["content"] == [] and start["stop_reason"] is None
    text = "".join(d["delta"]["text"] for n, d in found if n == "content_block_delta")
    assert all(d["delta"]["type"] == "text_delta" for n, d in found if n == "content_block_delta")
    assert text == plain["content"][0]["text"]
    delta = found[-2][1]
    assert delta["delta"] == {"stop_reason": plain["stop_reason"], "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == plain["usage"]["output_tokens"]


@pytest.mark.model
async def test_stop_sequence(client: Client) -> None:
    text = (await create(client, max_tokens=24))["content"][0]["text"]
    words = [w for w in text.split() if len(w) > 2]
    assert len(words) > 3, text
    stop = words[2]
    cut = text[: text.find(stop)]
    message = await create(client, max_tokens=24, stop_sequences=["#never#", stop])
    assert message["content"][0]["text"] == cut
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == stop
    assert 1 <= message["usage"]["output_tokens"] < 24
    streamed = await client.post(
        "/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 24,
            "messages": ASK,
            "temperature": 0,
            "stop_sequences": [stop],
            "stream": True,
        },
    )
    found = events(await streamed.text())
    assert "".join(d["delta"]["text"] for n, d in found if n == "content_block_delta") == cut
    assert found[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}


async def test_system_blocks_and_prefill(client: Client) -> None:
    as_string = await create(client, system="You are terse.")
    as_blocks = await create(client, system=[{"type": "text", "text": "You are terse."}])
    assert as_string["content"] == as_blocks["content"]
    assert as_string["usage"]["input_tokens"] > (await create(client))["usage"]["input_tokens"]
    blocks = await create(
        client,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Write a short story"},
                    {"type": "text", "text": "about a dog."},
                ],
            }
        ],
    )
    assert blocks["content"][0]["text"]
    prefill = await create(client, messages=[*ASK, {"role": "assistant", "content": "Once upon"}])
    plain = await create(client, messages=ASK)
    assert prefill["usage"]["input_tokens"] > plain["usage"]["input_tokens"]
    assert not prefill["content"][0]["text"].startswith("Once upon")  # only the continuation


TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"system": [{"type": "document"}]}, "system[0].type"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"tools": {"name": "f"}}, "tools"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tools": [{"name": "f g", "input_schema": {"type": "object"}}]}, "tools[0].name"),
        ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, "tools[0].input_schema"),
        ({"tools": [TOOL, TOOL]}, "tools[1].name"),
        ({"tools": [TOOL], "tool_choice": "any"}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": 1}},
            "tool_choice.disable_parallel_tool_use",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                    },
                ]
            },
            "messages[1].content[0].input",
        ),
    ],
)
async def test_bad_request_names_the_field(
    client: Client, change: dict[str, Any], field: str
) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": ASK, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = await client.post("/v1/messages", json=body)
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert field in payload["error"]["message"]


async def test_unknown_model_is_404_in_anthropic_envelope(client: Client) -> None:
    response = await client.post(
        "/v1/messages", json={"model": "nobody/nothing", "max_tokens": 4, "messages": ASK}
    )
    body = await response.json()
    assert response.status == 404
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert MODEL in body["error"]["message"]


async def test_x_api_key_and_bearer(client: Client, lms_home: Path) -> None:
    from lms.auth.registry import Registry

    _, token = Registry().create("anthropic")
    config = lms_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[auth]\nrequired = true\n")
    body = {"model": MODEL, "max_tokens": 2, "messages": ASK}
    missing = await client.post("/v1/messages", json=body)
    assert missing.status == 401
    assert (await missing.json())["error"]["type"] == "authentication_error"
    bad = await client.post("/v1/messages", json=body, headers={"x-api-key": "sk-lm-AAAAAAAA:x"})
    assert bad.status == 401
    for headers in ({"x-api-key": token}, {"Authorization": f"Bearer {token}"}):
        response = await client.post("/v1/messages", json=body, headers=headers)
        assert response.status == 200, await response.text()
    # x-api-key is Anthropic's header: other routes take Bearer only
    other = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers={"x-api-key": token}
    )
    assert other.status == 401
