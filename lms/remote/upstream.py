"""Talking to one remote engine's replicas: choosing one, sending, reading within bounds.

Every exchange with an upstream is bounded (docs/LIMITS.md): connecting (``connect_timeout``),
silence before the headers and between two reads (``idle_timeout``), the whole request
(``timeout``), a non-streamed body (:data:`MAX_BODY_BYTES`), one line of a stream
(:data:`MAX_LINE_BYTES`), and the requests in flight on one replica (``max_concurrent``). Redirects
are never followed (a 3xx is an error), the environment's proxies are never used, nothing is
decompressed (``Accept-Encoding: identity``), and no header of the client's request is forwarded:
the upstream sees the gate's own key (from the remote's key file) or none.

What an upstream says in an error is sanitised before a client sees it (:func:`sanitise`): no
addresses, paths, credentials or tracebacks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from lms import payload
from lms.download.outbound import refusal_reason
from lms.errors import (
    LmsError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    ServerBusyError,
    UpstreamError,
)
from lms.redaction import escape_controls, redact

#: The largest non-streamed answer (a chat completion, a batch of embeddings) read from an
#: upstream; one line of a stream; an error body (only its message is kept).
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
#: After ``[DONE]``, what is read of the rest of a stream's body so its connection can be kept
#: (the end of the chunked body follows at once from a well-behaved upstream); past either
#: bound the connection is closed instead, which costs the next request a new connection.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0
#: Consecutive 5xx answers after which the passive check takes a replica out (a connection
#: error takes it out at once); the active check brings it back.
FAILURES_TO_REMOVE = 3
#: Longest message of an upstream error passed on to a client.
MAX_MESSAGE_CHARS = 500


@dataclass(eq=False)
class Replica:
    """One URL of a remote engine: how many requests it has in flight, whether it is up."""

    url: str
    in_flight: int = 0
    healthy: bool = True
    #: Why it was taken out (shown in ``lms remote list``; no secret, one line).
    error: str | None = None
    failures: int = 0
    picked: int = 0

    def failed(self, reason: str, *, at_once: bool) -> None:
        """Passive health check: a connection error takes the replica out at once, a 5xx after
        :data:`FAILURES_TO_REMOVE` in a row."""
        self.failures += 1
        if at_once or self.failures >= FAILURES_TO_REMOVE:
            self.healthy = False
            self.error = reason

    def succeeded(self) -> None:
        self.failures = 0

    def public_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "error": self.error,
        }


@dataclass
class Pool:
    """The replicas of one engine, chosen by fewest requests in flight."""

    replicas: list[Replica]
    max_concurrent: int
    _turn: int = field(default=0)

    def pick(self, exclude: set[Replica]) -> Replica:
        """The healthy replica with the fewest requests in flight (ties in turn), not in
        ``exclude`` and below ``max_concurrent``. When none is healthy, the others are tried
        all the same (the active check may not have seen them recover). Raises
        RemoteUnavailableError when none is left, ServerBusyError when all are full."""
        candidates = [r for r in self.replicas if r not in exclude]
        if not candidates:
            raise RemoteUnavailableError(
                "no replica of the remote engine could take the request",
                headers={"Retry-After": "5"},
            )
        healthy = [r for r in candidates if r.healthy] or candidates
        free = [r for r in healthy if r.in_flight < self.max_concurrent]
        if not free:
            raise ServerBusyError(
                "the remote engine is serving as many requests as it may; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._turn += 1
        n = len(self.replicas)
        return min(free, key=lambda r: (r.in_flight, (self.replicas.index(r) - self._turn) % n))


class SafeResolver(AbstractResolver):
    """The system's resolver, minus addresses no server lives at (unspecified, multicast).

    An operator-added upstream may be private or loopback (that is the point of adding it);
    the gate never connects anywhere a client names.
    """

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [
            result
            for result in found
            if refusal_reason(ipaddress.ip_address(result["host"]), allow_private=True) is None
        ]
        if not kept:
            raise OSError(f"{host} resolves to no address a server can use")
        return kept

    async def close(self) -> None:
        await self._inner.close()


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]*", re.I)
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_IPV6 = re.compile(r"\[?\b(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}\b\]?(?::\d+)?", re.I)
_HOSTPORT = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*:\d{2,5}\b", re.I)
_PATH = re.compile(r"(?:(?<=\s)|^)(?:/[\w.@+-]+){2,}/?")
_TRACE = re.compile(r"traceback \(most recent call last\)|\bFile \"|\n\s+at \S", re.I)


def sanitise(message: str, *, secrets: tuple[str, ...] = ()) -> str:
    """An upstream's error message as a client may see it: no traceback (the message becomes a
    generic one), no URL, address, host:port or file path, no secret, one line, bounded."""
    if _TRACE.search(message):
        return "the remote engine failed (details in its own log)"
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    message = _URL.sub("<url>", message)
    message = _IPV4.sub("<address>", message)
    message = _IPV6.sub(
        lambda m: "<address>" if m.group(0).count(":") >= 2 else m.group(0), message
    )
    message = _HOSTPORT.sub("<address>", message)
    message = _PATH.sub("<path>", message)
    message = escape_controls(redact(message)).strip()
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return message or "the remote engine refused the request"


def _ipv6(match: re.Match[str]) -> str:
    return "<address>" if match.group(0).count(":") >= 2 else match.group(0)


def error_message(raw: bytes) -> str:
    """The message of an upstream's error body (OpenAI ``error.message``, ``message``,
    ``detail``, or the text itself)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return text


def status_error(status: int, raw: bytes, key: str, secrets: tuple[str, ...]) -> LmsError:
    """The error a client gets for an upstream's non-2xx answer to a request for ``key``."""
    message = sanitise(error_message(raw), secrets=secrets)
    if 300 <= status < 400:
        return UpstreamError("the remote engine answered with a redirect, which lms never follows")
    if status in (401, 403):
        return UpstreamError(
            "the remote engine refused the gate's credential (check the remote's key file)"
        )
    if status == 404:
        return ModelNotFoundError(
            f"the remote engine does not know the model {key!r}: {message}", param="model"
        )
    if status == 413:
        return PayloadTooLargeError(f"the remote engine refused the request's size: {message}")
    if status == 429:
        return ServerBusyError(
            f"the remote engine is busy: {message}", headers={"Retry-After": "1"}
        )
    if 400 <= status < 500:
        return RemoteRejectedError(f"the remote engine refused the request: {message}")
    return UpstreamError(f"the remote engine failed (HTTP {status}): {message}")


def connection_error(exc: BaseException) -> str:
    """What went wrong connecting or reading, without an address (logs and ``lms remote
    list``)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError):
        return "TLS verification failed (the upstream's certificate; see ca_file)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return sanitise(f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer broke off"
    return sanitise(type(exc).__name__)


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refused past ``limit`` bytes (the connection is then dropped)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            response.close()
            raise UpstreamError(f"the remote engine's answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


#: JSON larger than this is encoded or decoded on a worker thread, never the event loop.
INLINE_JSON_BYTES = 64 * 1024


def decode_json(raw: bytes, what: str = "answer") -> Any:
    """An upstream's JSON, decoded within lms's bounds (depth, numbers)."""
    try:
        return payload.loads(raw, what=f"the remote engine's {what}")
    except LmsError:
        raise UpstreamError(f"the remote engine's {what} is not valid JSON") from None


async def decode(raw: bytes, what: str = "answer") -> Any:
    """:func:`decode_json`, off the event loop when ``raw`` is large."""
    if len(raw) > INLINE_JSON_BYTES:
        return await asyncio.to_thread(decode_json, raw, what)
    return decode_json(raw, what)


async def encode(doc: Any, *, large: bool) -> bytes:
    """``doc`` as JSON bytes, off the event loop when the caller knows it may be ``large``."""
    if large:
        return await asyncio.to_thread(_dumps, doc)
    return _dumps(doc)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent event stream, one line at most
    :data:`MAX_LINE_BYTES`; ends at ``[DONE]`` (raises UpstreamError when the stream ends
    without it: a cut stream must never look like a finished one)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end].rstrip(b"\r"), buffer[end + 1 :]
            if not line.startswith(b"data:"):
                continue  # comments, event names, keep-alives
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield data
        if len(buffer) > MAX_LINE_BYTES:
            response.close()
            raise UpstreamError(f"the remote engine sent a line longer than {MAX_LINE_BYTES} bytes")
    raise UpstreamError("the remote engine ended the stream before it was complete")


def timed_out(exc: BaseException) -> LmsError:
    return RemoteTimeoutError(f"the remote engine did not answer in time ({connection_error(exc)})")


def now() -> float:
    return time.monotonic()


#: Errors of one exchange that mean "this replica failed; another may not".
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)


class Exchange:
    """A request in flight on one replica: counted until closed (exactly once)."""

    def __init__(self, replica: Replica, response: aiohttp.ClientResponse) -> None:
        self.replica = replica
        self.response = response
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.response.close()
            self.replica.in_flight -= 1


class Stream:
    """A streamed answer whose first event has arrived (so no retry is possible after it)."""

    def __init__(
        self, exchange: Exchange, events: AsyncIterator[bytes], first: bytes | None
    ) -> None:
        self.exchange = exchange
        self._events = events
        self._first = first
        self._ended = first is None  # [DONE] seen

    async def events(self) -> AsyncIterator[bytes]:
        """The ``data:`` payloads; raises UpstreamError if the stream is cut."""
        try:
            if self._first is None:
                return
            yield self._first
            async for data in self._events:
                yield data
            self._ended = True
        except TimeoutError as exc:
            self.exchange.replica.failed(connection_error(exc), at_once=False)
            raise timed_out(exc) from None
        except CONNECTION_ERRORS as exc:
            self.exchange.replica.failed(connection_error(exc), at_once=True)
            raise UpstreamError(
                f"the remote engine's stream broke off ({connection_error(exc)})"
            ) from None

    def close(self) -> None:
        self.exchange.close()

    def finish(self) -> None:
        """Close; a stream that ended at ``[DONE]`` hands its connection to a background task
        that reads the end of its body (within :data:`DRAIN_BYTES` and :data:`DRAIN_SECONDS`)
        and so returns it to the pool for the next request instead of closing it. The caller
        does not wait for that: its client's answer and its next request on a kept-alive
        connection never wait for an upstream slow to end its body. Upstreams on uvicorn or
        aiohttp (vLLM, SGLang, lms) keep the connection; llama-server closes its side after
        every streamed answer (its HTTP library does, whatever the ``Keep-Alive`` header says),
        so there each stream costs a connection either way."""
        if not self._ended or self.exchange.response.closed:
            self.close()
            return
        task = asyncio.get_running_loop().create_task(self._drain())
        _DRAINS.add(task)  # referenced until done; cancelled with the loop's other tasks
        task.add_done_callback(_DRAINS.discard)

    async def _drain(self) -> None:
        content = self.exchange.response.content
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                read = 0
                while read <= DRAIN_BYTES and not content.at_eof():
                    chunk = await content.readany()
                    if not chunk:
                        break
                    read += len(chunk)
        except (TimeoutError, *CONNECTION_ERRORS):
            pass
        finally:
            self.close()


#: The drains of :meth:`Stream.finish` in progress.
_DRAINS: set[asyncio.Task[None]] = set()
