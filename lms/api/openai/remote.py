"""OpenAI-compatible requests for remote models, passed through to the remote engine.

``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` naming a remote model
(``NAME/<upstream id>``) are sent upstream as the client wrote them, with three changes: the
``model`` becomes the upstream's id, lms's own fields (``ttl``) are dropped, and a stream asks for
``usage`` (lms counts it against the token; the client sees the usage chunk only if it asked).
Answers come back with ``model`` set to the key the client used. The gate has checked the token,
its permission and its allowlist before this runs; none of the client's headers goes upstream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lms import protocol
from lms.api import bodies
from lms.api.security import record_generation
from lms.api.sse import EventStream
from lms.errors import LmsError, UpstreamError
from lms.remote.engine import RemoteEngine
from lms.remote.models import RemoteModel
from lms.remote.upstream import INLINE_JSON_BYTES, decode, encode

#: Fields lms reads itself and never sends upstream.
_OWN_FIELDS = ("ttl",)


def _engine(model: RemoteModel) -> RemoteEngine:
    engine = model.backend
    assert isinstance(engine, RemoteEngine)
    return engine


def _counts(usage: Any, *, embeddings: bool = False) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt = usage.get("prompt_tokens")
    completion = 0 if embeddings else usage.get("completion_tokens")
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)
    ):
        return None, None
    return prompt, completion


def _upstream_body(model: RemoteModel, body: Mapping[str, Any]) -> dict[str, Any]:
    upstream = {key: value for key, value in body.items() if key not in _OWN_FIELDS}
    upstream["model"] = model.model.upstream_id
    return upstream


async def forward(
    request: web.Request, model: RemoteModel, body: Mapping[str, Any], path: str
) -> web.StreamResponse:
    """Send ``body`` to ``path`` of ``model``'s engine and pass the answer on."""
    stream = bodies.get(body, "stream", bool, False)
    engine = _engine(model)
    upstream = _upstream_body(model, body)
    embeddings = path == protocol.API_OPENAI_EMBEDDINGS
    large = (request.content_length or 0) > INLINE_JSON_BYTES
    if not stream:
        doc = await engine.post_json(path, await encode(upstream, large=large), model.key)
        if "model" in doc:
            doc["model"] = model.key
        record_generation(request, *_counts(doc.get("usage"), embeddings=embeddings))
        return web.Response(
            body=await encode(doc, large=large or embeddings), content_type="application/json"
        )
    options = bodies.get(body, "stream_options", dict, {})
    assert options is not None
    include_usage = bool(bodies.get(options, "include_usage", bool, False))
    upstream["stream_options"] = {**options, "include_usage": True}
    answer = await engine.post_stream(path, await encode(upstream, large=large), model.key)
    counts: tuple[int | None, int | None] = (None, None)
    rename = _Rename(model.model.upstream_id, model.key)
    try:
        events = await EventStream.open(request)
        async with events.guard(_error_event(events)):
            async for data in answer.events():
                fast = rename.plain(data)
                if fast is not None:  # most chunks: text, model renamed, nothing to look at
                    await events.send(fast)
                    continue
                chunk = await _chunk(data)
                if chunk is None:
                    continue
                if "usage" in chunk and isinstance(chunk["usage"], dict):
                    counts = _counts(chunk["usage"])
                if not include_usage:
                    if chunk.get("choices") == [] and "usage" in chunk:
                        continue  # the usage chunk lms asked for on the client's behalf
                    chunk.pop("usage", None)
                if "model" in chunk:
                    chunk["model"] = model.key
                await events.send(chunk)
            await events.send("[DONE]")
    finally:
        answer.finish()
        record_generation(request, *counts)
    return events.response


class _Rename:
    """The cheap path of a streamed chunk: ``"model": "<upstream id>"`` becomes the client's
    key in the bytes as they came, without decoding and encoding the chunk. Only for a chunk
    that is plainly one JSON object holding neither ``usage`` nor ``error`` (those are read in
    full) nor a carriage return (which an SSE client would read as a line break); anything else
    takes the full path."""

    def __init__(self, upstream_id: str, key: str) -> None:
        quoted = json.dumps(upstream_id).encode()
        self._pattern = re.compile(rb'"model"\s*:\s*' + re.escape(quoted))
        self._replacement = b'"model":' + json.dumps(key).encode()

    def plain(self, data: bytes) -> str | None:
        if not (data.startswith(b"{") and data.endswith(b"}")):
            return None
        if b'"usage"' in data or b'"error"' in data or b"\r" in data:
            return None
        renamed, found = self._pattern.subn(lambda _: self._replacement, data, count=1)
        if found != 1:
            return None
        try:
            return renamed.decode("utf-8")
        except UnicodeDecodeError:
            return None


async def _chunk(data: bytes) -> dict[str, Any] | None:
    chunk = await decode(data, "event")
    if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
        raise UpstreamError("the remote engine reported an error during the stream")
    return chunk if isinstance(chunk, dict) else None


def _error_event(events: EventStream) -> Any:
    async def send(err: LmsError) -> None:
        await events.send(protocol.api_error_body(err))
        await events.send("[DONE]")

    return send
