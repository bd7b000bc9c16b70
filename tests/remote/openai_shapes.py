"""What the fake upstream (fake_upstream.py) sends: OpenAI's reply shapes, errors and faults."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

UsageMode = Literal["openai", "always", "never"]

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
ALL_PATHS = INFERENCE_PATHS | {"/v1/models", "/health"}

# What a 5xx body leaks: an internal address, a host name, a file path and a Python traceback. A
# gate must show none of these to its client (nor log them where a client can read them).
LEAK_MARKERS = (
    "10.20.30.40:8080",
    "db.internal.example",
    "/srv/upstream/engine.py",
    "Traceback (most recent call last)",
)
LEAKY_TEXT = (
    "upstream engine crashed talking to http://10.20.30.40:8080/slot/0"
    " (db.internal.example:5432)\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/upstream/engine.py", line 42, in generate\n'
    "    raise RuntimeError(slot)\n"
    "RuntimeError: slot 0 is gone\n"
)

CLIENT_ERRORS = {  # OpenAI's envelope for the 4xx a test asks for
    400: ("invalid_request_error", "messages", "context_length_exceeded"),
    401: ("invalid_request_error", None, "invalid_api_key"),
    403: ("invalid_request_error", None, "permission_denied"),
    404: ("invalid_request_error", "model", "model_not_found"),
    413: ("invalid_request_error", None, "request_too_large"),
    422: ("invalid_request_error", None, "invalid_value"),
    429: ("requests", None, "rate_limit_exceeded"),
}


class Fault(enum.StrEnum):
    ERROR = "error"  # answer `status`: a 5xx leaks LEAKY_TEXT, a 4xx is OpenAI's envelope
    HANG_BEFORE_HEADERS = "hang_before_headers"  # read the request, then never answer
    HANG_MID_STREAM = "hang_mid_stream"  # headers and `after_chunks` chunks, then nothing
    CUT_MID_STREAM = "cut_mid_stream"  # headers and `after_chunks` chunks, then close the socket
    HUGE_LINE = "huge_line"  # a stream chunk (one line) of `size` bytes, then the rest as usual
    HUGE_BODY = "huge_body"  # a non-streaming reply of `size` bytes (a valid completion)
    REDIRECT = "redirect"  # 302 to `location` (default: /redirected/... on this fake)
    DROP = "drop"  # read the request, close the connection without a byte of answer (what a
    # client meets when the server's keep-alive time ends as its request goes out)


@dataclass
class FaultPlan:
    fault: Fault
    status: int
    paths: frozenset[str]
    times: int | None
    location: str | None
    size: int
    after_chunks: int
    body_format: Literal["json", "text"]


def openai_error(status: int, message: str, *, param: str | None = None) -> web.Response:
    kind, default_param, code = CLIENT_ERRORS.get(status, ("invalid_request_error", None, None))
    error = {"message": message, "type": kind, "param": param or default_param, "code": code}
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response({"error": error}, status=status, headers=headers)


def vector(text: str, size: int = 8) -> list[float]:
    """A deterministic unit-free vector for ``text``: equal inputs, equal vectors."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 6) for b in digest[:size]]


def _usage(body: dict[str, Any], pieces: list[str], chat: bool) -> dict[str, int]:
    prompt = len(json.dumps(body.get("messages" if chat else "prompt")).split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(pieces),
        "total_tokens": prompt + len(pieces),
    }


def _pieces(text: str) -> list[str]:
    """``text`` in word-sized pieces (a "token" each), spaces kept: they join back to it."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


def completion(
    body: dict[str, Any], text: str, *, chat: bool, usage: UsageMode, ident: str
) -> dict[str, Any]:
    """A non-streaming chat completion or (``chat`` false) text completion answering ``text``."""
    if chat:
        message = {"role": "assistant", "content": text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
    reply: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": 1700000000,
        "model": body.get("model"),
        "choices": [choice],
    }
    if usage != "never":
        reply["usage"] = _usage(body, _pieces(text), chat)
    return reply


def stream_chunks(
    body: dict[str, Any],
    text: str,
    *,
    chat: bool,
    usage: UsageMode,
    ident: str,
    huge: int | None = None,
    at: int = 0,
) -> list[dict[str, Any]]:
    """The ``data:`` documents of a stream answering ``text`` (``[DONE]`` not included): one
    per piece, a finishing one, then OpenAI's usage chunk when ``stream_options.include_usage``
    asks for it (``usage="openai"``). ``huge``: a chunk of that many bytes inserted at ``at``."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head: dict[str, Any] = {"id": ident, "object": kind, "created": 1700000000}
    head["model"] = body.get("model")

    def chunk(piece: str | None, finish: str | None = None) -> dict[str, Any]:
        if chat:
            delta = {} if piece is None else {"content": piece}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish}
        return {**head, "choices": [choice]}

    pieces = _pieces(text)
    chunks = [chunk(p) for p in pieces]
    if chat:
        chunks[0]["choices"][0]["delta"]["role"] = "assistant"
    if huge is not None:
        chunks.insert(min(at, len(chunks)), chunk("x" * huge))
    last = chunk(None, "stop")
    if usage == "always":
        last["usage"] = _usage(body, pieces, chat)
    chunks.append(last)
    options = body.get("stream_options")
    if usage != "never" and isinstance(options, dict) and options.get("include_usage"):
        chunks.append({**head, "choices": [], "usage": _usage(body, pieces, chat)})
    return chunks
