"""response_format on /v1/chat/completions with the real default model: the content is JSON
valid against the schema, every time."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model

# Strings and arrays are bounded: a 270M base model left free may repeat "0000…" or list items
# until max_tokens cuts the JSON short (the grammar cannot finish it for the model).
TEXT = {"type": "string", "maxLength": 24}
SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": TEXT,
            "age": {"type": "integer"},
            "mood": {"type": "string", "enum": ["happy", "sad", "calm"]},
            "hobbies": {"type": "array", "items": TEXT, "minItems": 1, "maxItems": 3},
        },
        "required": ["name", "age", "mood", "hobbies"],
    },
    "account": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "email": TEXT,
                    "address": {
                        "type": "object",
                        "properties": {"city": TEXT, "zip": TEXT},
                        "required": ["city", "zip"],
                    },
                },
                "required": ["id", "email", "address"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
    },
    "order": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "maxLength": 12},
                        "qty": {"type": "integer"},
                    },
                    "required": ["sku", "qty"],
                },
                "minItems": 1,
                "maxItems": 2,
            },
            "total": {"type": "number"},
            "note": {"anyOf": [TEXT, {"type": "null"}]},
        },
        "required": ["items", "total", "note"],
    },
    "ticket": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "level": {"enum": [1, 2, 3]},
            "urgent": {"type": "boolean"},
            "title": TEXT,
        },
        "required": ["code", "level", "urgent"],
    },
}
SAMPLINGS = [
    {"temperature": 0},
    {"temperature": 0.7, "seed": 11},
    {"temperature": 1.2, "seed": 5},
]


def ask(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Give me a {name} as JSON."}],
        "max_tokens": 300,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": SCHEMAS[name]},
        },
        **fields,
    }


@pytest.mark.parametrize("name", list(SCHEMAS))
async def test_content_validates_against_the_schema_every_time(
    client: TestClient,  # type: ignore[type-arg]
    name: str,
) -> None:
    outputs = set()
    for sampling in SAMPLINGS:
        response = await client.post("/v1/chat/completions", json=ask(name, **sampling))
        assert response.status == 200
        choice = (await response.json())["choices"][0]
        content = choice["message"]["content"]
        assert choice["finish_reason"] == "stop", content
        jsonschema.validate(json.loads(content), SCHEMAS[name])
        outputs.add(content)
    assert len(outputs) > 1  # the samplings really differ: not one lucky text checked thrice


async def test_streamed_content_validates(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/chat/completions", json=ask("person", stream=True, temperature=0.9, seed=2)
    )
    text = ""
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
    jsonschema.validate(json.loads(text), SCHEMAS["person"])


async def test_json_object_and_text(client: TestClient) -> None:  # type: ignore[type-arg]
    base = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe a cat."}],
        "max_tokens": 200,
        "temperature": 0,
    }
    response = await client.post(
        "/v1/chat/completions", json={**base, "response_format": {"type": "json_object"}}
    )
    choice = (await response.json())["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)
    plain = await client.post(
        "/v1/chat/completions",
        json={**base, "max_tokens": 12, "response_format": {"type": "text"}},
    )
    free = await client.post("/v1/chat/completions", json={**base, "max_tokens": 12})
    text = (await plain.json())["choices"][0]["message"]["content"]
    assert text == (await free.json())["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ("json", "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}, "strict": 1}},
            "response_format.json_schema.strict",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"$ref": "https://example.com/s"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
async def test_bad_response_format_is_a_400_naming_the_field(
    client: TestClient,  # type: ignore[type-arg]
    response_format: Any,
    param: str,
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": response_format,
        },
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param and param in error["message"]
