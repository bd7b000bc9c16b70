"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lms import protocol
from lms.api import bodies, instances
from lms.api.chat_completions import ChatPlan, delta
from lms.api.security import model_filter, record_generation
from lms.api.state import CONFIG, MANAGER
from lms.errors import InvalidParameterError
from lms.inference.engine import Generation, GenerationResult
from lms.inference.manager import Instance

routes = web.RouteTableDef()

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _usage(result: GenerationResult | None) -> dict[str, Any]:
    prompt = result.prompt_tokens if result else 0
    completion = result.completion_tokens if result else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens if result else 0},
    }


def _sse(data: Mapping[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


@routes.get(protocol.API_OPENAI_MODELS)
async def list_models(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    jit = request.app[CONFIG].current().models_jit
    ids: list[str] = [m.key for m in await manager.models() if allowed(m.key)] if jit else []
    ids += [
        i.identifier
        for i in manager.instances()
        if i.identifier not in ids and allowed(i.model.key)
    ]
    data = [{"id": i, "object": "model", "owned_by": "organization_owner"} for i in ids]
    return web.json_response({"object": "list", "data": data})


async def _instance(request: web.Request, body: Mapping[str, Any]) -> Instance:
    model = bodies.require(body, "model", str)
    return await instances.acquire(request, model, ttl=bodies.get(body, "ttl", int))


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = bodies.get(body, "stream_options", dict, {})
    assert options is not None
    return bool(bodies.get(options, "include_usage", bool, False))


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = bodies.require(body, "messages", list)
    if not messages:
        raise InvalidParameterError("'messages' must not be empty", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidParameterError(
                f"'messages[{i}]' must be an object with a 'role'", param=f"messages[{i}]"
            )
        if message["role"] not in ("system", "developer", "user", "assistant", "tool"):
            raise InvalidParameterError(
                f"'messages[{i}].role' {message['role']!r} is not a known role",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidParameterError(
                f"'messages[{i}].content' must be a string or a list of parts",
                param=f"messages[{i}].content",
            )
    return messages


@routes.post(protocol.API_OPENAI_CHAT)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    messages = _messages(body)
    params = bodies.sampling(body, max_token_fields=("max_completion_tokens", "max_tokens"))
    plan = await asyncio.to_thread(ChatPlan.read, body)  # grammars: CPU work
    stream = bodies.get(body, "stream", bool, False)
    include_usage = _include_usage(body)
    instance = await _instance(request, body)
    tokens, template_stops = plan.prompt(instance, messages)
    params = _replace(_with_stops(params, template_stops), grammar=plan.grammar)
    generation = instance.engine.submit(tokens, params)
    meta = {
        "id": _id("chatcmpl-"),
        "created": int(time.time()),
        "model": instance.model.key,
        "system_fingerprint": instance.identifier,
    }
    if not stream:
        async with _cancel_on_exit(request, generation):
            text = await generation.text()
        result = generation.result
        message, finish = plan.message(text, _FINISH[result.finish_reason] if result else "stop")
        return web.json_response(
            {
                **meta,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "logprobs": None, "finish_reason": finish, "message": message}
                ],
                "usage": _usage(result),
            }
        )

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if include_usage else {}
        return {**meta, "object": "chat.completion.chunk", "choices": [choice], **extra}

    response = await open_sse(request)
    output = plan.stream()
    async with _cancel_on_exit(request, generation):
        await response.write(_sse(chunk({"role": "assistant", "content": ""}, None)))
        async for piece in _stream_or_error(generation, response):
            for event in output.feed(piece):
                await response.write(_sse(chunk(delta(event), None)))
        result = generation.result
        if result is not None and result.error is None:
            for event in output.finish():
                await response.write(_sse(chunk(delta(event), None)))
            finish = _FINISH[result.finish_reason]
            if output.calls and finish == "stop":  # a call cut by max_tokens stays "length"
                finish = "tool_calls"
            await response.write(_sse(chunk({}, finish)))
            if include_usage:
                usage_chunk = {**meta, "object": "chat.completion.chunk", "choices": []}
                await response.write(_sse({**usage_chunk, "usage": _usage(result)}))
        await response.write(_sse("[DONE]"))
    return response


@routes.post(protocol.API_OPENAI_COMPLETIONS)
async def completions(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidParameterError("'prompt' must be a string", param="prompt")
    params = bodies.sampling(body, max_token_fields=("max_tokens",))
    if params.max_tokens is None and "max_tokens" not in body:
        params = _replace(params, max_tokens=16)  # OpenAI's documented default
    stream = bodies.get(body, "stream", bool, False)
    include_usage = _include_usage(body)
    instance = await _instance(request, body)
    generation = instance.engine.submit(instance.engine.tokenize(prompt), params)
    meta = {"id": _id("cmpl-"), "created": int(time.time()), "model": instance.model.key}
    if not stream:
        async with _cancel_on_exit(request, generation):
            text = await generation.text()
        result = generation.result
        return web.json_response(
            {
                **meta,
                "object": "text_completion",
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": _FINISH[result.finish_reason] if result else "stop",
                    }
                ],
                "usage": _usage(result),
            }
        )

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if include_usage else {}
        return {**meta, "object": "text_completion", "choices": [choice], **extra}

    response = await open_sse(request)
    async with _cancel_on_exit(request, generation):
        async for piece in _stream_or_error(generation, response):
            await response.write(_sse(chunk(piece, None)))
        result = generation.result
        if result is not None and result.error is None:
            await response.write(_sse(chunk("", _FINISH[result.finish_reason])))
            if include_usage:
                usage_chunk = {**meta, "object": "text_completion", "choices": []}
                await response.write(_sse({**usage_chunk, "usage": _usage(result)}))
        await response.write(_sse("[DONE]"))
    return response


def _replace(params: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(params, **changes)


def _with_stops(params: Any, extra: tuple[str, ...]) -> Any:
    return _replace(params, stop=tuple(dict.fromkeys((*params.stop, *extra))))


class _cancel_on_exit:
    """Cancel the generation when the handler leaves early (client gone, error, cancel), and
    count what it used against the request's token."""

    def __init__(self, request: web.Request, generation: Generation) -> None:
        self.request = request
        self.generation = generation

    async def __aenter__(self) -> Generation:
        return self.generation

    async def __aexit__(self, *exc: object) -> None:
        self.generation.cancel()
        result = self.generation.result
        completion = result.completion_tokens if result else 0
        record_generation(self.request, len(self.generation.prompt_tokens), completion)


async def _stream_or_error(generation: Generation, response: web.StreamResponse) -> Any:
    """Stream the text; an error after the headers went out becomes an SSE error event."""
    from lms.errors import LmsError

    try:
        async for piece in generation.stream():
            yield piece
    except LmsError as err:
        await response.write(_sse(protocol.api_error_body(err)))
