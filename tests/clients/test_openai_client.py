"""The official `openai` Python client against lms, with the real default model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="lm-studio", max_retries=0) as c:
        yield c


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_completion(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert result.choices[0].text.strip()
    assert result.usage is not None and result.usage.completion_tokens == 8


def test_completion_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    plain = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0
    )
    assert text == plain.choices[0].text
    assert len(chunks) >= 5


def test_chat(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    message = result.choices[0].message
    assert message.role == "assistant"
    assert message.content
    assert result.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nobody/nothing", prompt="x", max_tokens=1)
    assert MODEL in str(info.value)


def test_bad_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, top_p=7)
    assert "top_p" in str(info.value)


def test_auth_errors_and_success(server: Server, auth_on: Path) -> None:
    from lms.auth.permissions import Permission
    from lms.auth.registry import Registry

    os.environ["LMS_HOME"], previous = str(auth_on), os.environ.get("LMS_HOME")
    try:
        registry = Registry()
        _, good = registry.create("openai-good")
        _, listing_only = registry.create("openai-models", permissions={Permission.MODELS})
    finally:
        if previous is None:
            del os.environ["LMS_HOME"]
        else:
            os.environ["LMS_HOME"] = previous

    def make(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)

    with make("lm-studio") as dummy, pytest.raises(openai.AuthenticationError):
        dummy.models.list()
    with make("sk-lm-AAAAAAAA:BBBBBBBBBBBBBBBBBBBB") as unknown:
        with pytest.raises(openai.AuthenticationError) as info:
            unknown.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert info.value.code == "invalid_api_key"
    with make(listing_only) as weak:
        assert [m.id for m in weak.models.list()] == [MODEL]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            weak.completions.create(model=MODEL, prompt="x", max_tokens=1)
        assert "inference" in str(denied.value)
    with make(good) as ok:
        result = ok.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
        assert result.choices


def test_a_repeated_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Name three rivers in Europe, please."}]
    cold = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, temperature=0
    )
    warm = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, temperature=0
    )
    assert cold.usage is not None and warm.usage is not None
    assert warm.usage.prompt_tokens_details is not None
    assert warm.usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens - 1
    assert warm.choices[0].message.content == cold.choices[0].message.content


def test_cached_prompts_are_never_shared_between_tokens(server: Server, auth_on: Path) -> None:
    from lms.auth.registry import Registry

    os.environ["LMS_HOME"], previous = str(auth_on), os.environ.get("LMS_HOME")
    try:
        registry = Registry()
        _, first = registry.create("cache-first")
        _, second = registry.create("cache-second")
    finally:
        if previous is None:
            del os.environ["LMS_HOME"]
        else:
            os.environ["LMS_HOME"] = previous
    prompt = "A token of one client must not warm the cache of another:"

    def cached(key: str) -> int:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
            usage = c.completions.create(model=MODEL, prompt=prompt, max_tokens=2).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens_details.cached_tokens or 0

    assert cached(first) == 0
    assert cached(first) > 0  # the same token reuses its own prefix
    assert cached(second) == 0  # a timing oracle for the first token's prompts otherwise
