"""Chat formatting: GGUF Jinja templates, the Gemma and ChatML fallbacks, content checks."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from lms.errors import InvalidRequestError
from lms.inference.catalog import ModelFile, read_metadata
from lms.inference.templates import ChatFormatter, flatten_content

CHATML_JINJA = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def model(
    architecture: str | None = "llama",
    chat_template: str | None = None,
    bos: str | None = "<s>",
    eos: str | None = "</s>",
) -> ModelFile:
    return ModelFile(
        key="acme/test",
        publisher="acme",
        name="test",
        path=Path("/m/test.gguf"),
        size_bytes=1,
        display_name="test",
        architecture=architecture,
        params_string=None,
        quantization=None,
        bits_per_weight=None,
        max_context_length=None,
        chat_template=chat_template,
        trained_for_tool_use=False,
        vision=False,
        bos_token=bos,
        eos_token=eos,
        type="llm",
    )


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi "},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Capital of France?"},
]


# --- Gemma fallback ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3", "gemma3n"])
def test_gemma_family_falls_back_to_gemma_turns(arch: str) -> None:
    formatter = ChatFormatter(model(arch, bos="<bos>", eos="<eos>"))
    assert formatter.kind == "gemma"
    assert formatter.stop_strings == ["<end_of_turn>"]
    assert formatter.render(CHAT) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_generation_prompt_and_without_bos() -> None:
    formatter = ChatFormatter(model("gemma3", bos="<bos>"))
    text = formatter.render([{"role": "user", "content": "x"}], add_generation_prompt=False)
    assert text == "<start_of_turn>user\nx<end_of_turn>\n"
    assert "<bos>" not in text


def test_gemma_system_only_becomes_a_user_turn() -> None:
    text = ChatFormatter(model("gemma3")).render([{"role": "system", "content": "Rules."}])
    assert text == "<start_of_turn>user\nRules.<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_tools_calls_and_results() -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "1+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
        },
        {"role": "tool", "name": "add", "content": "3"},
    ]
    text = ChatFormatter(model("gemma3")).render(messages, tools=tools)
    first_turn = text.split("<end_of_turn>")[0]
    assert '"name": "add"' in first_turn and first_turn.endswith("1+2?")
    assert (
        '<start_of_turn>model\n{"name": "add", "arguments": {"a": 1, "b": 2}}<end_of_turn>' in text
    )
    assert "<start_of_turn>user\nResult of add:\n3<end_of_turn>\n" in text
    assert text.endswith("<start_of_turn>model\n")


# --- ChatML fallback ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", None])
def test_other_architectures_fall_back_to_chatml(arch: str | None) -> None:
    formatter = ChatFormatter(model(arch))
    assert formatter.kind == "chatml"
    assert formatter.stop_strings == ["<|im_end|>"]
    assert formatter.render(CHAT) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi <|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_tools_join_the_system_prompt_or_make_one() -> None:
    tools = [{"type": "function", "function": {"name": "now"}}]
    formatter = ChatFormatter(model("llama"))
    with_system = formatter.render(CHAT[:2], tools=tools)
    assert with_system.startswith("<|im_start|>system\nBe brief.\n\nYou can call these tools")
    without = formatter.render([{"role": "user", "content": "time?"}], tools=tools)
    assert without.startswith("<|im_start|>system\nYou can call these tools")
    assert without.count("<|im_start|>system") == 1


# --- content -----------------------------------------------------------------------------------


def test_text_parts_are_flattened() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    text = ChatFormatter(model("llama")).render([{"role": "user", "content": parts}])
    assert "<|im_start|>user\none\ntwo<|im_end|>" in text
    assert flatten_content(None) == ""


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ([{"type": "image_url", "image_url": {"url": "data:"}}], "of type 'image_url'"),
        ([{"text": "no type"}], "without a type"),
        ([{"type": "text", "text": 5}], "text must be a string"),
        ({"text": "a dict"}, "must be a string or a list"),
        (42, "must be a string or a list"),
    ],
)
def test_bad_content_is_an_invalid_request(content: Any, needle: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content") as info:
        ChatFormatter(model("gemma3")).render([{"role": "user", "content": content}])
    assert needle in str(info.value)
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([{"content": "x"}], "messages[0].role"),
        (["just text"], "messages[0] must be an object"),
        ("not a list", "messages must be a list"),
    ],
)
def test_bad_messages_are_invalid_requests(messages: Any, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ChatFormatter(model("llama")).render(messages)
    assert needle in str(info.value)


def test_render_does_not_modify_the_callers_messages() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    ChatFormatter(model("llama", CHATML_JINJA)).render(messages)
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "x"}]}]


# --- GGUF Jinja templates ----------------------------------------------------------------------


def test_gguf_template_is_used_and_its_leading_bos_dropped() -> None:
    formatter = ChatFormatter(model("llama", CHATML_JINJA, bos="<s>", eos="<|im_end|>"))
    assert formatter.kind == "gguf"
    text = formatter.render([{"role": "user", "content": "hey"}])
    assert text == "<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"
    assert formatter.stop_strings == ["<|im_end|>"]


def test_gguf_template_stop_strings_include_markers_and_eos() -> None:
    template = "{% for m in messages %}<start_of_turn>{{ m.content }}<end_of_turn>{% endfor %}"
    formatter = ChatFormatter(model("gemma3", template, eos="<eos>"))
    assert formatter.stop_strings == ["<end_of_turn>", "<eos>"]


def test_gguf_template_sees_variables_tools_and_helpers() -> None:
    template = (
        "{{ eos_token }}|{{ add_generation_prompt }}|{{ tools | tojson }}|"
        "{{ strftime_now('%Y') }}|{% for m in messages %}{% if loop.index > 1 %}{% break %}"
        "{% endif %}{{ m.content }}{% endfor %}"
    )
    formatter = ChatFormatter(model("llama", template, eos="</s>"))
    tools = [{"name": "f", "description": "a < b"}]
    text = formatter.render(CHAT, add_generation_prompt=False, tools=tools)
    eos, flag, tools_json, year, content = text.split("|")
    assert (eos, flag) == ("</s>", "False")
    assert tools_json == '[{"name": "f", "description": "a < b"}]'  # no HTML escaping
    assert year.isdigit() and len(year) == 4
    assert content == "Be brief."


def test_template_without_tools_argument_sees_no_tools() -> None:
    template = "{% if tools is defined %}tools{% else %}none{% endif %}"
    assert ChatFormatter(model("llama", template)).render([]) == "none"


def test_template_raise_exception_is_an_invalid_request() -> None:
    template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(InvalidRequestError, match="roles must alternate") as info:
        ChatFormatter(model("llama", template)).render(CHAT)
    assert "acme/test" in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages[7].content.upper() }}",  # undefined
        "{{ messages[0].content + 1 }}",  # type error
        "{{ messages.append(1) }}",  # the sandbox refuses mutation
        "{{ ''.__class__.__mro__ }}",  # the sandbox refuses internals
    ],
)
def test_template_failures_are_invalid_requests(template: str) -> None:
    with pytest.raises(InvalidRequestError, match="chat template of acme/test"):
        ChatFormatter(model("llama", template)).render(CHAT)


def test_a_template_that_does_not_compile_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lms.inference.templates"):
        formatter = ChatFormatter(model("gemma3", "{% for m in messages %}"))
    assert formatter.kind == "gemma"
    assert "does not compile" in caplog.text
    assert formatter.render([{"role": "user", "content": "x"}]).startswith("<start_of_turn>user")


# --- the real default model --------------------------------------------------------------------


@pytest.mark.model
def test_default_model_prompt_tokenizes_with_one_bos(default_model_path: Path) -> None:
    from llama_cpp import Llama

    gemma = read_metadata(default_model_path, key="google/gemma-3-270m")
    formatter = ChatFormatter(gemma)
    assert formatter.kind == "gemma"
    text = formatter.render([{"role": "user", "content": "Hi"}])
    llm = Llama(model_path=str(default_model_path), vocab_only=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
    bos = llm.token_bos()
    assert tokens[0] == bos and tokens.count(bos) == 1
    start_of_turn = llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)
    assert len(start_of_turn) == 1  # the marker is one special token, not text
    assert tokens.count(start_of_turn[0]) == 2
    end = llm.tokenize(formatter.stop_strings[0].encode(), add_bos=False, special=True)
    assert len(end) == 1


def test_formatter_is_built_from_metadata_fields() -> None:
    base = model("gemma3")
    templated = dataclasses.replace(base, chat_template=CHATML_JINJA)
    assert ChatFormatter(base).kind == "gemma"
    assert ChatFormatter(templated).kind == "gguf"
