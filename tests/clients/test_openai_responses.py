"""The official `openai` client's Responses API against lms (real model)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="lm-studio", max_retries=0) as c:
        yield c


def test_create_and_continue(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="My name is Ada.", instructions="Be brief.", max_output_tokens=8
    )
    assert first.id.startswith("resp_")
    assert first.output_text
    assert first.usage is not None and first.usage.output_tokens <= 8
    second = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "My name?"}]}],
        previous_response_id=first.id,
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens


def test_stream(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input="Say hello", max_output_tokens=6, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_unknown_previous_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_" + "0" * 48)
    assert info.value.code == "previous_response_not_found"
