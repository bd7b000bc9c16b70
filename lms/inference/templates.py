"""Chat templates: turn a list of chat messages into the prompt text a model was trained on.

The GGUF's own Jinja template (``tokenizer.chat_template``) is used when the file has one, in a
sandbox like Hugging Face's. Without one (the default gemma GGUF has none) a fallback is chosen
by architecture: Gemma's turn format for the gemma family, ChatML for everything else.

BOS: the rendered text never starts with the BOS token. The engine adds it when tokenizing
(llama-cpp-python: ``Llama.tokenize(text.encode(), add_bos=True, special=True)``; ``special``
makes markers such as ``<start_of_turn>`` parse as single tokens). A GGUF template that emits
``{{ bos_token }}`` first has that leading BOS removed, as llama.cpp's server does, so there is
exactly one rule for every model.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Literal, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lms.errors import InvalidRequestError
from lms.inference.catalog import ModelFile
from lms.inference.tools import result_text, tools_prompt, written_calls

logger = logging.getLogger(__name__)

GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3", "gemma3n", "gemma-embedding"})
# Turn-end markers of common template families: when a GGUF template emits one, generation stops
# there even if the model's EOS token is another one.
_TURN_END_MARKERS = (
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "</s>",
)
_SYSTEM_ROLES = frozenset({"system", "developer"})

TemplateKind = Literal["gguf", "gemma", "chatml"]


class TemplateRaisedError(Exception):
    """Raised by a chat template's ``raise_exception(...)``: the messages are not acceptable."""


class ChatFormatter:
    """Renders chat messages into a prompt for one model.

    ``kind`` says which format is used: ``gguf`` (the file's Jinja template), ``gemma`` or
    ``chatml`` (fallbacks). ``stop_strings`` are the texts that end a model turn in that format.
    """

    def __init__(self, model: ModelFile) -> None:
        self.model_key = model.key
        self.bos_token = model.bos_token or ""
        self.eos_token = model.eos_token or ""
        self._template: jinja2.Template | None = None
        fallback: TemplateKind = "gemma" if model.architecture in GEMMA_ARCHITECTURES else "chatml"
        if model.chat_template:
            try:
                self._template = _environment().from_string(model.chat_template)
            except jinja2.TemplateError as exc:
                logger.warning(
                    "chat template of %s does not compile (%s); using the %s format",
                    model.key,
                    exc,
                    fallback,
                )
        self.kind: TemplateKind = "gguf" if self._template is not None else fallback
        self.stop_strings: list[str] = self._stop_strings(model.chat_template)

    def _stop_strings(self, source: str | None) -> list[str]:
        if self.kind == "gemma":
            return ["<end_of_turn>"]
        if self.kind == "chatml":
            return ["<|im_end|>"]
        assert source is not None
        stops = [marker for marker in _TURN_END_MARKERS if marker in source]
        if self.eos_token and self.eos_token not in stops:
            stops.append(self.eos_token)
        return stops

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text for ``messages`` (without BOS: the engine adds it when tokenizing).

        Message content may be a string, None, or a list of ``{"type": "text", "text": ...}``
        parts (joined with newlines). Raises InvalidRequestError for malformed messages,
        non-text content, or messages the model's template refuses.
        """
        normalized = normalize_messages(messages)
        if self._template is not None:
            text = self._render_jinja(self._template, normalized, add_generation_prompt, tools)
            if self.bos_token and text.startswith(self.bos_token):
                text = text[len(self.bos_token) :]
            return text
        if self.kind == "gemma":
            return render_gemma(
                normalized, add_generation_prompt=add_generation_prompt, tools=tools
            )
        return render_chatml(normalized, add_generation_prompt=add_generation_prompt, tools=tools)

    def _render_jinja(
        self,
        template: jinja2.Template,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        variables: dict[str, Any] = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools is not None:
            variables["tools"] = tools
        try:
            return template.render(variables)
        except TemplateRaisedError as exc:
            raise InvalidRequestError(
                f"the chat template of {self.model_key} refused the messages: {exc}",
                param="messages",
            ) from exc
        except Exception as exc:  # a template can fail in any way; never let a traceback out
            raise InvalidRequestError(
                f"the chat template of {self.model_key} failed on these messages: "
                f"{type(exc).__name__}: {exc}",
                param="messages",
            ) from exc


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    # Hugging Face's tojson: no HTML escaping (Jinja's would turn "<" into "\u003c").
    env.filters["tojson"] = _tojson
    return env


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaisedError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``messages`` with a ``role`` string and text content (parts flattened).

    Raises InvalidRequestError naming the message and the problem.
    """
    if not isinstance(messages, list):
        raise InvalidRequestError("messages must be a list", param="messages")
    normalized: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages[{index}] must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(
                f"messages[{index}].role must be a non-empty string", param="messages"
            )
        copy = dict(message)
        copy["content"] = flatten_content(message.get("content"), f"messages[{index}].content")
        normalized.append(copy)
    return normalized


def flatten_content(content: Any, where: str = "content") -> str:
    """The text of a message's content: a string, None (empty), or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"{where} must be a string or a list of content parts", param="messages"
        )
    texts: list[str] = []
    for index, part in enumerate(content):
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type != "text":
            kind = f"of type {part_type!r}" if isinstance(part_type, str) else "without a type"
            raise InvalidRequestError(
                f"{where}[{index}] is a content part {kind}; only text parts are supported",
                param="messages",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequestError(f"{where}[{index}].text must be a string", param="messages")
        texts.append(text)
    return "\n".join(texts)


def render_gemma(
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Gemma's turn format (no BOS), for normalized messages.

    As Gemma's own template does, system text is folded into the next user turn (separated by a
    blank line) and content is trimmed; an assistant turn is a ``model`` turn. Gemma has no tool
    role: tool results become user turns and tool calls are written as JSON in the model turn.
    Consecutive turns of one role are kept apart rather than refused.
    """
    out: list[str] = []
    pending: list[str] = [tools_prompt(tools)] if tools else []

    def turn(role: str, text: str) -> None:
        out.append(f"<start_of_turn>{role}\n{text.strip()}<end_of_turn>\n")

    def user_turn(text: str) -> None:
        turn("user", "\n\n".join([*(p.strip() for p in pending), text.strip()]))
        pending.clear()

    for message in messages:
        role = message["role"]
        if role in _SYSTEM_ROLES:
            pending.append(str(message["content"]))
        elif role == "assistant":
            if pending:
                user_turn("")
            turn("model", written_calls(message))
        elif role == "tool":
            user_turn(result_text(message))
        else:
            user_turn(str(message["content"]))
    if pending:
        user_turn("")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def render_chatml(
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """ChatML (``<|im_start|>role\\n...<|im_end|>``) for normalized messages.

    Tool definitions are appended to the first system message (or form one); tool calls are
    written as JSON in the assistant turn and tool results keep the ``tool`` role.
    """
    out: list[str] = []
    tools_text = tools_prompt(tools or [])
    for index, message in enumerate(messages):
        role = "system" if message["role"] == "developer" else message["role"]
        content = written_calls(message) if role == "assistant" else str(message["content"])
        if tools_text and index == 0 and role == "system":
            content, tools_text = f"{content}\n\n{tools_text}".strip(), ""
        out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if tools_text:
        out.insert(0, f"<|im_start|>system\n{tools_text}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)
