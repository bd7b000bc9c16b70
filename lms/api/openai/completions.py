"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions.

Generation goes through :mod:`lms.pipeline` and streams through :mod:`lms.api.sse`; this module
only reads OpenAI's request fields and writes OpenAI's shapes. ``n`` > 1, ``logprobs``,
``top_logprobs`` > 0 and ``best_of`` > 1 are refused (400), not silently ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lms import pipeline, protocol
from lms.api import bodies, instances
from lms.api.chat_plan import ChatPlan, delta
from lms.api.openai import remote
from lms.api.security import model_filter, record_generation
from lms.api.sse import EventStream
from lms.api.state import CONFIG, MANAGER, REMOTES
from lms.errors import InvalidParameterError, LmsError
from lms.inference.engine import GenerationResult
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
    data += [
        {"id": m.key, "object": "model", "owned_by": m.model.owned_by, "remote": m.model.remote}
        for m in request.app[REMOTES].models()
        if allowed(m.key)
    ]
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


def refuse_unsupported(body: Mapping[str, Any], *, completions: bool = False) -> None:
    """Refuse what lms cannot do rather than ignore it: several choices (``n``, ``best_of``)
    and log probabilities. The values that ask for nothing (``n: 1``, ``logprobs: false``,
    ``top_logprobs: 0``) are accepted, as common clients send them."""
    n = bodies.get(body, "n", int)
    if n is not None and n != 1:
        raise InvalidParameterError(
            "'n' must be 1: lms generates one choice per request (send several requests)",
            param="n",
        )
    if completions:
        best_of = bodies.get(body, "best_of", int)
        if best_of is not None and best_of != 1:
            raise InvalidParameterError(
                "'best_of' must be 1: lms generates one choice per request", param="best_of"
            )
    logprobs = body.get("logprobs")
    if logprobs is not None and logprobs is not False:
        raise InvalidParameterError(
            "'logprobs' is not supported: lms does not return log probabilities"
            " (leave it out or send false)",
            param="logprobs",
        )
    refuse_top_logprobs(body)


def refuse_top_logprobs(body: Mapping[str, Any]) -> None:
    """``top_logprobs`` above 0 is refused (chat completions and responses)."""
    top = body.get("top_logprobs")
    if top is not None and top != 0:
        raise InvalidParameterError(
            "'top_logprobs' is not supported: lms does not return log probabilities"
            " (leave it out or send 0)",
            param="top_logprobs",
        )


def _error_event(events: EventStream) -> Any:
    async def send(err: LmsError) -> None:
        await events.send(protocol.api_error_body(err))
        await events.send("[DONE]")

    return send


@routes.post(protocol.API_OPENAI_CHAT)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    found = instances.remote(request, bodies.require(body, "model", str))
    if found is not None:
        return await remote.forward(request, found, body, protocol.API_OPENAI_CHAT)
    messages = _messages(body)
    refuse_unsupported(body)
    params = bodies.sampling(body, max_token_fields=("max_completion_tokens", "max_tokens"))
    plan = await asyncio.to_thread(ChatPlan.read, body)  # grammars: CPU work
    stream = bodies.get(body, "stream", bool, False)
    include_usage = _include_usage(body)
    instance = await _instance(request, body)
    run = await pipeline.start(
        instance,
        pipeline.ChatPrompt(messages, plan.offered),
        dataclasses.replace(params, grammar=plan.grammar),
        record=functools.partial(record_generation, request),
        drafts=instances.drafts(request),
    )
    meta = {
        "id": _id("chatcmpl-"),
        "created": int(time.time()),
        "model": instance.model.key,
        "system_fingerprint": instance.identifier,
    }
    if not stream:
        async with run:
            text = await run.text()
        result = run.result
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

    events = await EventStream.open(request)
    output = plan.stream()
    async with events.guard(_error_event(events)), run:
        await events.send(chunk({"role": "assistant", "content": ""}, None))
        async for piece in run.stream():
            for event in output.feed(piece):
                await events.send(chunk(delta(event), None))
        result = run.result
        assert result is not None
        for event in output.finish():
            await events.send(chunk(delta(event), None))
        finish = _FINISH[result.finish_reason]
        if output.calls and finish == "stop":  # a call cut by max_tokens stays "length"
            finish = "tool_calls"
        await events.send(chunk({}, finish))
        if include_usage:
            usage_chunk = {**meta, "object": "chat.completion.chunk", "choices": []}
            await events.send({**usage_chunk, "usage": _usage(result)})
        await events.send("[DONE]")
    return events.response


@routes.post(protocol.API_OPENAI_COMPLETIONS)
async def completions(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    found = instances.remote(request, bodies.require(body, "model", str))
    if found is not None:
        return await remote.forward(request, found, body, protocol.API_OPENAI_COMPLETIONS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidParameterError("'prompt' must be a string", param="prompt")
    refuse_unsupported(body, completions=True)
    params = bodies.sampling(body, max_token_fields=("max_tokens",))
    if params.max_tokens is None and "max_tokens" not in body:
        params = dataclasses.replace(params, max_tokens=16)  # OpenAI's documented default
    stream = bodies.get(body, "stream", bool, False)
    include_usage = _include_usage(body)
    instance = await _instance(request, body)
    run = await pipeline.start(
        instance,
        pipeline.TextPrompt(prompt),
        params,
        record=functools.partial(record_generation, request),
        drafts=instances.drafts(request),
    )
    meta = {"id": _id("cmpl-"), "created": int(time.time()), "model": instance.model.key}
    if not stream:
        async with run:
            text = await run.text()
        result = run.result
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

    events = await EventStream.open(request)
    async with events.guard(_error_event(events)), run:
        async for piece in run.stream():
            await events.send(chunk(piece, None))
        result = run.result
        assert result is not None
        await events.send(chunk("", _FINISH[result.finish_reason]))
        if include_usage:
            usage_chunk = {**meta, "object": "text_completion", "choices": []}
            await events.send({**usage_chunk, "usage": _usage(result)})
        await events.send("[DONE]")
    return events.response
