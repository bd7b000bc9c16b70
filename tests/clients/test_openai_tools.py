"""Tool calls and response_format through the official `openai` client, with the real model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import jsonschema
import openai
import pytest
from conftest import Server
from pydantic import BaseModel, Field

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK: Any = [{"role": "user", "content": "What is the weather in Rome?"}]


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="lm-studio", max_retries=0) as c:
        yield c


def test_required_tool_call(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_streamed_tool_call_accumulates(client: openai.OpenAI) -> None:
    # The client's own stream helper joins the deltas by index and reports argument fragments.
    with client.chat.completions.stream(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0.8,
        seed=4,
    ) as stream:
        fragments = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(fragments) > 2
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS["get_weather"])


def test_tool_choice_none(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=24
    )
    assert result.choices[0].message.tool_calls is None
    assert result.choices[0].finish_reason in ("stop", "length")


class Address(BaseModel):
    city: Annotated[str, Field(max_length=20)]
    country: Annotated[str, Field(max_length=20)]


class Person(BaseModel):
    name: Annotated[str, Field(max_length=20)]
    age: int
    mood: Literal["happy", "sad"]
    languages: Annotated[list[Annotated[str, Field(max_length=12)]], Field(max_length=3)]
    home: Address


def test_parse_into_a_pydantic_model(client: openai.OpenAI) -> None:
    # parse() sends a strict json_schema (with $defs for Address) and validates the reply.
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0, "seed": 8}):
        result = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Invent a person."}],
            response_format=Person,
            max_tokens=300,
            **sampling,  # type: ignore[arg-type]
        )
        message = result.choices[0].message
        assert isinstance(message.parsed, Person)
        assert isinstance(message.parsed.home, Address)
        assert message.content is not None
        assert Person.model_validate_json(message.content) == message.parsed


class GetTime(BaseModel):
    zone: Annotated[str, Field(max_length=30)]


def test_pydantic_function_tool(client: openai.OpenAI) -> None:
    result = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[openai.pydantic_function_tool(GetTime)],
        tool_choice="required",
        temperature=0,
    )
    calls = result.choices[0].message.tool_calls
    assert calls is not None
    assert isinstance(calls[0].function.parsed_arguments, GetTime)
