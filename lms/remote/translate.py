"""Requests of the translating API families (``/v1/messages``, ``/v1/responses``,
``/api/v1/chat``, the SDK, ``lms chat``) as an upstream's chat completions, and its streamed
answer as a :class:`~lms.inference.generation.Generation`.

The families build a chat (OpenAI-style messages and tools) and sampling parameters for every
model; for a remote one, :func:`chat_body` sends them upstream as they are, and :func:`pump`
turns the upstream's ``chat.completion.chunk``s back into text. Tool calls the upstream returns
as structured ``tool_calls`` become text in the one format lms's own tool-call parser reads
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, :mod:`lms.inference.tool_calls`),
so each family turns them into its own shape exactly as it does for a local model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lms.errors import LmsError, UpstreamError
from lms.inference.generation import Generation, GenerationResult
from lms.inference.sampling import SamplingParams
from lms.inference.tools import Tool
from lms.remote.models import RemoteModel, unsupported
from lms.remote.upstream import decode

if TYPE_CHECKING:
    from lms.remote.upstream import Stream

_FINISH: dict[str, Any] = {"stop": "stop", "tool_calls": "stop", "length": "length"}


def _sampling(model: RemoteModel, params: SamplingParams) -> dict[str, Any]:
    if params.grammar is not None:
        raise unsupported("A grammar (a forced tool call, a response format)", model.key)
    if params.draft_model is not None:
        raise unsupported("A draft model", model.key, param="draft_model")
    body: dict[str, Any] = {
        "model": model.model.upstream_id,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    return body


def chat_body(
    model: RemoteModel,
    messages: list[dict[str, Any]],
    tools: Sequence[Tool],
    params: SamplingParams,
) -> dict[str, Any]:
    """The upstream ``/v1/chat/completions`` body (always streamed, usage asked for)."""
    body = _sampling(model, params)
    body["messages"] = messages
    if tools:
        body["tools"] = [tool.openai() for tool in tools]
    return body


def completion_body(model: RemoteModel, text: str, params: SamplingParams) -> dict[str, Any]:
    """The upstream ``/v1/completions`` body for a raw-text prompt."""
    body = _sampling(model, params)
    body["prompt"] = text
    return body


@dataclass
class _Calls:
    """Tool calls assembled from streamed ``tool_calls`` fragments (joined by ``index``)."""

    names: dict[int, str] = field(default_factory=dict)
    arguments: dict[int, list[str]] = field(default_factory=dict)

    def feed(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            return
        for fragment in fragments[:64]:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", 0)
            function = fragment.get("function")
            if not isinstance(index, int) or not isinstance(function, dict):
                continue
            if isinstance(function.get("name"), str):
                self.names[index] = self.names.get(index, "") + function["name"]
            if isinstance(function.get("arguments"), str):
                self.arguments.setdefault(index, []).append(function["arguments"])

    def text(self) -> str:
        """The calls in the text form lms's tool-call parser reads."""
        out = []
        for index in sorted(self.names):
            raw = "".join(self.arguments.get(index, [])) or "{}"
            try:
                arguments = json.loads(raw)
            except ValueError:
                arguments = raw
            call = {"name": self.names[index], "arguments": arguments}
            out.append(f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>")
        return "\n".join(out)


async def pump(stream: Stream, generation: Generation, started: float) -> None:
    """Feed ``generation`` from the upstream's stream until it ends, is cut (the generation
    ends with the error) or the caller cancels (the exchange is closed)."""
    loop = asyncio.get_running_loop()
    first: float | None = None
    finish: Any = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    calls = _Calls()
    error: LmsError | None = None
    try:
        async for data in stream.events():
            chunk = await decode(data, "event")
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict):
                raise UpstreamError("the remote engine reported an error during the stream")
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                prompt_tokens = _count(usage.get("prompt_tokens"))
                completion_tokens = _count(usage.get("completion_tokens"))
            choices = chunk.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue
            choice = choices[0]
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(delta, dict):
                calls.feed(delta.get("tool_calls"))
            if isinstance(piece, str) and piece:
                if first is None:
                    first = loop.time()
                generation.put(piece)
            if isinstance(choice.get("finish_reason"), str):
                finish = _FINISH.get(choice["finish_reason"], "stop")
    except LmsError as exc:
        error, finish = exc, "error"
    except asyncio.CancelledError:  # the caller cancelled: the generation still gets its end
        finish = "cancelled"
    finally:
        stream.finish()
    if calls.names and finish != "cancelled":
        generation.put(("\n" if generation.output_text else "") + calls.text())
    end = loop.time()
    known = prompt_tokens is not None and completion_tokens is not None
    generation.set_canceller(lambda: None)  # the result settles it: nothing left to cancel
    generation.put(
        GenerationResult(
            finish_reason=finish,
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens or 0,
            time_to_first_token=(first or end) - started,
            generation_seconds=end - (first or end),
            error=error,
            usage_known=known,
        )
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
