"""The schemas and grammars that used to kill the daemon (SIGSEGV in llama.cpp's recursive
grammar parser), sent to a real daemon process over real sockets: each is a 400 naming the field,
and the same daemon answers a generation after every one of them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import lmstudio
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def assert_still_serving(server: Server) -> None:
    status, body = post(
        f"{server.url}/v1/completions",
        {"model": MODEL, "prompt": "One, two,", "max_tokens": 2, "temperature": 0},
    )
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 2


def string_of(length: float) -> dict[str, Any]:
    return {"type": "string", "maxLength": length}


def in_object(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"p": prop}, "required": ["p"]}


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
CASES = [
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": string_of(length)},
            },
        },
        "response_format.json_schema.schema",
    )
    for length in (30_000, 1e8, 1e9)
] + [
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": in_object(string_of(30_000))},
                }
            ],
            "tool_choice": "required",
        },
        "tools[0].function.parameters",
    ),
    (
        "/v1/messages",
        {
            **CHAT,
            "tools": [
                {"name": "f", "input_schema": in_object({"type": "array", "maxItems": 30_000})}
            ],
            "tool_choice": {"type": "any"},
        },
        "tools[0].input_schema",
    ),
    (
        "/v1/responses",
        {
            "model": MODEL,
            "input": "Hi",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": string_of(30_000)}},
        },
        "text.format.schema",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), CASES)
def test_hostile_schema_is_a_400_and_the_daemon_lives(
    server: Server, path: str, body: dict[str, Any], field: str
) -> None:
    status, payload = post(server.url + path, body)
    assert status == 400, payload
    assert field in payload["error"]["message"]
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("response_format", "field"),
    [
        (
            {"type": "gbnf", "gbnfGrammar": "root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000},
            "structured.gbnfGrammar",
        ),
        ({"type": "gbnf", "gbnfGrammar": 'root ::= "a" ('}, "structured.gbnfGrammar"),
        ({"type": "json", "jsonSchema": string_of(30_000)}, "structured.jsonSchema"),
    ],
)
def test_sdk_structured_prediction_is_bounded_and_the_daemon_lives(
    server: Server, response_format: dict[str, Any], field: str
) -> None:
    host = "localhost:" + server.url.rsplit(":", 1)[1]
    with lmstudio.Client(api_host=host) as sdk:
        model = sdk.llm.model(MODEL)
        with pytest.raises(lmstudio.LMStudioError, match=field.replace(".", r"\.")):
            model.respond("Hi", response_format=response_format, config={"maxTokens": 4})
        good = model.respond(
            "Hi",
            response_format={"type": "gbnf", "gbnfGrammar": 'root ::= "yes" | "no"'},
            config={"maxTokens": 4},
        )
        assert good.content in ("yes", "no")
    assert_still_serving(server)
