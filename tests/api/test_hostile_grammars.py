"""Hostile schemas on every route that builds a grammar: a 400 naming the field, before any
model is loaded; and the Responses API's ``text.format`` really constrains the output (the real
default model). Crash-safety against a real daemon process: tests/clients/test_grammar_daemon.py.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"
HUGE_STRING = {"type": "string", "maxLength": 30_000}
HUGE_ARRAY = {"type": "array", "items": {"type": "integer"}, "maxItems": 30_000}


def deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def tool(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"p": prop}, "required": ["p"]}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
OPENAI_CASES = [
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": HUGE_STRING},
            },
        },
        "response_format.json_schema.schema",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [tool("f", HUGE_STRING)], "tool_choice": "required"},
        "tools[0].function.parameters",
    ),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [tool("f", {"type": "string"}), tool("g", HUGE_ARRAY)],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tools[1].function.parameters",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [tool("f", deep(20))]},  # only shown: still walked within bounds
        "tools[0].function.parameters",
    ),
    (
        "/v1/responses",
        {
            "model": MODEL,
            "input": "Hi",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": HUGE_STRING}},
        },
        "text.format.schema",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), OPENAI_CASES)
async def test_openai_routes_refuse_hostile_schemas_naming_the_field(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    body: dict[str, Any],
    param: str,
) -> None:
    response = await client.post(path, json=body)
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["param"] == param and param in payload["error"]["message"]


def anthropic(tools: list[dict[str, Any]], choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": tools,
        "tool_choice": choice,
    }


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            anthropic(
                [
                    {
                        "name": "f",
                        "input_schema": {"type": "object", "properties": {"p": HUGE_ARRAY}},
                    }
                ],
                {"type": "any"},
            ),
            "tools[0].input_schema",
        ),
        (
            anthropic(
                [
                    {"name": "f", "input_schema": {"type": "object"}},
                    {
                        "name": "g",
                        "input_schema": {"type": "object", "properties": {"p": HUGE_STRING}},
                    },
                ],
                {"type": "tool", "name": "g"},
            ),
            "tools[1].input_schema",
        ),
    ],
)
async def test_messages_refuse_hostile_schemas_naming_the_field(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await client.post(path, json=body)
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["type"] == "invalid_request_error"
    assert f"'{field}'" in payload["error"]["message"]


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "mood": {"type": "string", "enum": ["happy", "sad", "calm"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True])
async def test_responses_text_format_constrains_the_output(
    client: TestClient,  # type: ignore[type-arg]
    stream: bool,
) -> None:
    body = {
        "model": MODEL,
        "input": "Describe a person.",
        "max_output_tokens": 200,
        "temperature": 0.8,
        "seed": 3,
        "stream": stream,
        "store": False,
        "text": {"format": {"type": "json_schema", "name": "person", "schema": PERSON}},
    }
    response = await client.post("/v1/responses", json=body)
    assert response.status == 200
    if stream:
        final: dict[str, Any] = {}
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("type") == "response.completed":
                    final = event["response"]
    else:
        final = await response.json()
    assert final["status"] == "completed", final
    assert final["text"]["format"]["name"] == "person"
    text = final["output"][0]["content"][0]["text"]
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.model
async def test_responses_json_object_format(client: TestClient) -> None:  # type: ignore[type-arg]
    body = {
        "model": MODEL,
        "input": "Describe a cat.",
        "max_output_tokens": 200,
        "temperature": 0,
        "store": False,
        "text": {"format": {"type": "json_object"}},
    }
    response = await client.post("/v1/responses", json=body)
    final = await response.json()
    assert final["status"] == "completed", final
    assert isinstance(json.loads(final["output"][0]["content"][0]["text"]), dict)
