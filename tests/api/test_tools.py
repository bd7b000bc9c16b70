"""Tool calls on /v1/chat/completions with the real default model (not trained for tools)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def request(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 120, **fields}


async def sse_events(response: Any) -> list[Any]:
    events: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def check_call(call: dict[str, Any], names: set[str]) -> tuple[str, dict[str, Any]]:
    """A well-formed OpenAI tool call of one of ``names``, arguments valid for its schema."""
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    name = call["function"]["name"]
    assert name in names
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, SCHEMAS[name])
    return name, arguments


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0}, {"temperature": 0.8, "seed": 3}, {"temperature": 1.4, "seed": 9}],
)
async def test_required_returns_a_valid_call(
    client: TestClient,  # type: ignore[type-arg]
    sampling: dict[str, Any],
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=request(tool_choice="required", **sampling)
    )
    assert response.status == 200
    choice = (await response.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    assert len(message["tool_calls"]) == 1
    check_call(message["tool_calls"][0], set(SCHEMAS))


async def test_required_streams_tool_call_deltas(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/chat/completions",
        json=request(tool_choice="required", stream=True, temperature=0.7, seed=5),
    )
    assert response.status == 200
    events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert all("content" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    first, fragments = deltas[0], deltas[1:]
    assert first["index"] == 0 and first["type"] == "function"
    assert first["id"].startswith("call_")
    assert first["function"]["arguments"] == ""
    assert len(fragments) > 2  # arguments arrive piece by piece, not in one block
    assert all(d["index"] == 0 and set(d) == {"index", "function"} for d in fragments)
    call = {**first, "function": {**first["function"]}}
    call["function"]["arguments"] = "".join(d["function"]["arguments"] for d in fragments)
    check_call(call, set(SCHEMAS))


async def test_a_named_tool_is_forced(client: TestClient) -> None:  # type: ignore[type-arg]
    # The question is about weather; the request forces the time tool anyway.
    forced = {"type": "function", "function": {"name": "get_time"}}
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 1}):
        response = await client.post(
            "/v1/chat/completions", json=request(tool_choice=forced, **sampling)
        )
        body = await response.json()
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        (call,) = body["choices"][0]["message"]["tool_calls"]
        assert check_call(call, {"get_time"})[0] == "get_time"


CALL_SHAPED = {
    "type": "json_schema",
    "json_schema": {
        "name": "call",
        "schema": {
            "type": "object",
            "properties": {
                "name": {"const": "get_time"},
                "arguments": SCHEMAS["get_time"],
            },
            "required": ["name", "arguments"],
        },
    },
}


async def test_none_never_returns_tool_calls(client: TestClient) -> None:  # type: ignore[type-arg]
    # The response format makes the output a call-shaped JSON object: under "none" it stays
    # content, under "auto" the same text is a call.
    none = await client.post(
        "/v1/chat/completions",
        json=request(tool_choice="none", response_format=CALL_SHAPED, temperature=0),
    )
    choice = (await none.json())["choices"][0]
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert json.loads(choice["message"]["content"])["name"] == "get_time"
    auto = await client.post(
        "/v1/chat/completions",
        json=request(tool_choice="auto", response_format=CALL_SHAPED, temperature=0),
    )
    choice = (await auto.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    check_call(choice["message"]["tool_calls"][0], {"get_time"})


async def test_none_streamed_is_plain_content(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/chat/completions",
        json=request(tool_choice="none", response_format=CALL_SHAPED, temperature=0, stream=True),
    )
    chunks = (await sse_events(response))[:-1]
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert json.loads(text)["name"] == "get_time"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_conversation_with_tool_results_renders(client: TestClient) -> None:  # type: ignore[type-arg]
    call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 24 degrees"},
    ]
    short = await client.post("/v1/chat/completions", json=request(max_tokens=1))
    response = await client.post(
        "/v1/chat/completions", json=request(messages=history, max_tokens=1)
    )
    assert response.status == 200, await response.text()
    added = (await response.json())["usage"]["prompt_tokens"]
    assert added > (await short.json())["usage"]["prompt_tokens"] + 20  # call and result are in
    # And another forced round works on top of it.
    response = await client.post(
        "/v1/chat/completions",
        json=request(messages=history, tool_choice="required", temperature=0),
    )
    (call_back,) = (await response.json())["choices"][0]["message"]["tool_calls"]
    check_call(call_back, set(SCHEMAS))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [WEATHER, {"type": "code_interpreter"}]}, "tools[1].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_stock"}}},
            "tool_choice.function.name",
        ),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"type": "?"}}},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
    ],
)
async def test_bad_tool_fields_are_400_naming_the_field(
    client: TestClient,  # type: ignore[type-arg]
    fields: dict[str, Any],
    param: str,
) -> None:
    response = await client.post("/v1/chat/completions", json=request(**fields))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param
    assert param in error["message"]


async def test_a_call_cut_by_max_tokens_says_length(client: TestClient) -> None:  # type: ignore[type-arg]
    fields = request(tool_choice="required", temperature=0, max_tokens=6)
    plain = (await (await client.post("/v1/chat/completions", json=fields)).json())["choices"][0]
    assert plain["finish_reason"] == "length"
    assert "tool_calls" not in plain["message"]  # unparsable: the raw text stays content
    assert plain["message"]["content"].startswith("{")
    response = await client.post("/v1/chat/completions", json={**fields, "stream": True})
    chunks = (await sse_events(response))[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
