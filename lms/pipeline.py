"""One generation, done the same way for every API family and the MCP tool loop.

A prompt (a chat, a chat the answer continues, or plain text) goes in; :func:`start` renders
and tokenizes it in a worker thread (a 30 MB prompt must not freeze the event loop: the
tokenizer reads only the model's vocabulary, which llama.cpp lets other threads use while the
engine's worker decodes) and compiles its grammar against the vocabulary there too, adds the
template's stop strings to the request's once, and submits
it. The :class:`Run` it returns yields the generation's events; leaving its ``async with``
cancels the generation (client gone, error, early exit) and records its usage exactly once,
with the recorder the caller passed (an API token, an SDK client, nobody).

The API families only translate their wire formats; no family renders, submits or counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lms.inference.drafts import Drafts, with_draft
from lms.inference.generation import Generation, GenerationResult, PromptProgress
from lms.inference.manager import Instance
from lms.inference.sampling import SamplingParams
from lms.inference.tools import Tool
from lms.remote.models import RemoteModel, unsupported

#: Counts a finished generation: (prompt tokens, completion tokens), both None when unknown (a
#: remote engine that reported no usage).
Recorder = Callable[[int | None, int | None], None]


def no_record(prompt_tokens: int | None, completion_tokens: int | None) -> None:
    """The recorder of a generation whose usage the caller counts itself."""


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered with the model's template, the offered ``tools`` in it.

    ``prefill`` is text the answer continues (the last assistant message of an Anthropic
    request): it follows the rendered chat as it is.
    """

    messages: list[dict[str, Any]]
    tools: Sequence[Tool] = ()
    prefill: str | None = None


@dataclass(frozen=True)
class TextPrompt:
    """Raw text, tokenized as it is (``/v1/completions``, the SDK's raw prompts)."""

    text: str


Prompt = ChatPrompt | TextPrompt


def render(instance: Instance, prompt: Prompt) -> tuple[list[int], tuple[str, ...]]:
    """Prompt tokens and the template's stop strings (blocking: call it off the event loop)."""
    if isinstance(prompt, TextPrompt):
        return instance.engine.tokenize(prompt.text), ()
    if prompt.prefill is not None:
        text = instance.chat_text(prompt.messages, prompt.tools) + prompt.prefill
        return instance.engine.tokenize(text), tuple(instance.formatter.stop_strings)
    return instance.chat_prompt(prompt.messages, prompt.tools)


def prepare(
    instance: Instance, prompt: Prompt, params: SamplingParams
) -> tuple[list[int], SamplingParams]:
    """Prompt tokens and ``params`` with the template's stops, the grammar compiled against the
    model's vocabulary (blocking: call it off the event loop)."""
    tokens, template_stops = render(instance, prompt)
    if params.grammar is not None:
        instance.engine.check_grammar(params.grammar)
    return tokens, with_stops(params, template_stops)


async def tokens_of(instance: Instance | RemoteModel, prompt: Prompt) -> list[int]:
    """The prompt's tokens, counted in a worker thread (Anthropic's ``count_tokens``)."""
    if isinstance(instance, RemoteModel):
        raise unsupported("Counting tokens", instance.key)
    tokens, _ = await asyncio.to_thread(render, instance, prompt)
    return tokens


def with_stops(params: SamplingParams, extra: Sequence[str]) -> SamplingParams:
    """``params`` with ``extra`` stop strings after the request's own (no duplicates)."""
    return dataclasses.replace(params, stop=tuple(dict.fromkeys((*params.stop, *extra))))


async def start(
    instance: Instance | RemoteModel,
    prompt: Prompt,
    params: SamplingParams,
    *,
    record: Recorder,
    drafts: Drafts | None = None,
) -> Run:
    """Render ``prompt`` and compile its grammar off the event loop, merge the template's stops,
    submit.

    A ``draft_model`` in ``params`` is resolved among the models ``drafts`` lets the caller use
    and attached to the instance first (once; :mod:`lms.inference.drafts`: 404 when not found,
    400 for another vocabulary; without ``drafts`` it is refused); without one, the instance's
    default draft model applies while speculation is on.

    Use the result as ``async with``: the generation is cancelled and counted on the way out.
    Errors of the submission (an empty prompt, a context overflow, a bad grammar, a full queue)
    propagate before anything ran; nothing is recorded for them.

    A remote model (:class:`RemoteModel`) gets the chat (or text) as it is, sent to its engine's
    chat completions (:mod:`lms.remote.translate`); its errors before the first streamed event
    propagate here too.
    """
    if isinstance(instance, RemoteModel):
        if isinstance(prompt, TextPrompt):
            generation = await instance.generate(None, prompt.text, (), params)
        elif prompt.prefill is not None:
            raise unsupported("Continuing a prefilled answer", instance.key)
        else:
            generation = await instance.generate(prompt.messages, None, prompt.tools, params)
        return Run(generation, record)
    params = await with_draft(instance, params, drafts)
    tokens, submitted = await asyncio.to_thread(prepare, instance, prompt, params)
    return Run(instance.engine.submit(tokens, submitted, grammar_checked=True), record)


class Run:
    """One submitted generation: its events, its outcome, cancelled and counted on exit."""

    def __init__(self, generation: Generation, record: Recorder) -> None:
        self.generation = generation
        self._record = record
        self._recorded = False

    @property
    def prompt_tokens(self) -> int:
        result = self.generation.result
        if result is not None and not self.generation.prompt_tokens:  # a remote engine's
            return result.prompt_tokens
        return len(self.generation.prompt_tokens)

    @property
    def params(self) -> SamplingParams:
        """What was submitted (the template's stops merged in)."""
        return self.generation.params

    @property
    def result(self) -> GenerationResult | None:
        """Counts and timings, once the generation has ended."""
        return self.generation.result

    @property
    def completion_tokens(self) -> int:
        result = self.generation.result
        return result.completion_tokens if result is not None else 0

    def events(self) -> AsyncIterator[str | PromptProgress]:
        """Prompt progress and text; raises the generation's error (LmsError) at the end."""
        return self.generation.events()

    def stream(self) -> AsyncIterator[str]:
        """Text as it comes; raises the generation's error at the end."""
        return self.generation.stream()

    async def text(self) -> str:
        """The whole text (non-streaming use)."""
        return await self.generation.text()

    def cancel(self) -> None:
        self.generation.cancel()

    def close(self) -> None:
        """Cancel the generation (a no-op once it ended) and record its usage, once."""
        self.generation.cancel()
        if not self._recorded:
            self._recorded = True
            result = self.generation.result
            if result is not None and not result.usage_known:
                self._record(None, None)
            else:
                self._record(self.prompt_tokens, self.completion_tokens)

    async def __aenter__(self) -> Run:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
