"""The official `anthropic` Python client against lms, with the real default model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
ASK = [{"role": "user", "content": "Write a short story about a dog."}]
# This client version has no sampling arguments; the API still takes them (and lms's default
# samples at random): send temperature 0 as an extra field so answers can be compared.
GREEDY = {"temperature": 0}
pytestmark = pytest.mark.model


@pytest.fixture
def client(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="lm-studio", max_retries=0) as c:
        yield c


def test_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=6, messages=ASK, extra_body=GREEDY, system="You tell stories."
    )
    assert message.id.startswith("msg_")
    assert message.role == "assistant" and message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 8


def test_stream_matches_create(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model=MODEL, max_tokens=12, messages=ASK, extra_body=GREEDY)
    with client.messages.stream(model=MODEL, max_tokens=12, messages=ASK, extra_body=GREEDY) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) >= 3
    assert "".join(pieces) == final.content[0].text == plain.content[0].text
    assert final.stop_reason == plain.stop_reason
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_stop_sequence(client: anthropic.Anthropic) -> None:
    text = client.messages.create(model=MODEL, max_tokens=24, messages=ASK, extra_body=GREEDY)
    words = [w for w in text.content[0].text.split() if len(w) > 2]
    assert len(words) > 3
    stopped = client.messages.create(
        model=MODEL, max_tokens=24, messages=ASK, extra_body=GREEDY, stop_sequences=[words[2]]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == words[2]
    assert words[2] not in stopped.content[0].text


def test_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nobody/nothing", max_tokens=4, messages=ASK)
    assert MODEL in str(missing.value)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model=MODEL,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        }
                    ],
                }
            ],
        )
    assert "messages[0].content[0].type" in str(bad.value)


def test_auth(server: Server, auth_on: Path) -> None:
    from lms.auth.registry import Registry

    os.environ["LMS_HOME"], previous = str(auth_on), os.environ.get("LMS_HOME")
    try:
        _, token = Registry().create("anthropic-client")
    finally:
        if previous is None:
            del os.environ["LMS_HOME"]
        else:
            os.environ["LMS_HOME"] = previous
    ok = [
        anthropic.Anthropic(base_url=server.url, api_key=token, max_retries=0),  # x-api-key
        anthropic.Anthropic(base_url=server.url, auth_token=token, max_retries=0),  # Bearer
    ]
    for client in ok:
        with client:
            reply = client.messages.create(model=MODEL, max_tokens=2, messages=ASK)
            assert reply.content[0].type == "text"
    for key in ("lm-studio", "sk-lm-AAAAAAAA:BBBBBBBBBBBBBBBBBBBB"):
        with anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0) as bad:
            with pytest.raises(anthropic.AuthenticationError) as info:
                bad.messages.create(model=MODEL, max_tokens=2, messages=ASK)
            assert info.value.status_code == 401
            assert key not in str(info.value)


WEATHER: Any = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
}
TIME: Any = {
    "name": "get_time",
    "description": "The local time in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def test_a_forced_tool_call_is_a_tool_use_block(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert isinstance(call.input, dict) and isinstance(call.input["city"], str)


def test_any_tool_streamed_is_assembled_by_the_client(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds  # the SDK's event for input_json_delta fragments
    assert final.stop_reason == "tool_use"
    [call] = [block for block in final.content if block.type == "tool_use"]
    assert call.name in ("get_weather", "get_time") and isinstance(call.input, dict)


def test_a_tool_result_goes_back_and_the_model_answers(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    )
    [call] = [block for block in first.content if block.type == "tool_use"]
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, light rain"}
    conversation: Any = [
        *ASK_WEATHER,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [result]},
    ]
    answer = client.messages.create(
        model=MODEL,
        max_tokens=12,
        messages=conversation,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in answer.content] == ["text"]
    assert answer.content[0].type == "text" and answer.content[0].text
    # The whole conversation, call and result included, was read: more than the question alone.
    alone = client.messages.create(model=MODEL, max_tokens=1, messages=ASK_WEATHER)
    assert answer.usage.input_tokens > alone.usage.input_tokens + 10


def test_server_tools_are_refused_by_name(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=ASK_WEATHER,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    assert "tools[0].type" in str(info.value)


def test_count_tokens_is_the_input_of_the_same_message(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=ASK, system="You tell stories.")
    created = client.messages.create(
        model=MODEL, max_tokens=1, messages=ASK, system="You tell stories.", extra_body=GREEDY
    )
    assert counted.input_tokens == created.usage.input_tokens
    with_tools = client.messages.count_tokens(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER])
    alone = client.messages.count_tokens(model=MODEL, messages=ASK_WEATHER)
    assert with_tools.input_tokens > alone.input_tokens  # the offered tool is in the prompt


def test_count_tokens_refuses_bad_input_by_name(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.count_tokens(model=MODEL, messages=[])
    assert "messages" in str(info.value)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nobody/nothing", messages=ASK)
