"""FakeUpstream: a scripted OpenAI-compatible server on a real loopback port, for plumbing tests.

It speaks just enough OpenAI for a gate to forward to it, and misbehaves on demand:

* ``GET /v1/models`` lists ``fake.models`` (assign a new list between calls to rename models);
* ``GET /health`` answers ``{"status": "ok"}``, or 503 while ``fake.healthy`` is false (no key
  needed, as llama-server's);
* ``POST /v1/chat/completions``, ``/v1/completions`` (streaming SSE ``data: {...}`` chunks ending
  with ``data: [DONE]``, or one JSON body) and ``/v1/embeddings``. The reply is ``fake.reply``,
  else ``"echo: "`` + the last user message (or the prompt). A model not in ``fake.models`` gets
  OpenAI's 404 ``model_not_found`` unless ``strict_models`` is false;
* ``usage``: ``"openai"`` (the default) puts it on every non-streaming reply and, on a stream,
  only as a last ``choices: []`` chunk when ``stream_options.include_usage`` is true, as OpenAI
  does; ``"always"`` also puts it on every stream's finishing chunk; ``"never"`` omits it;
* with ``key`` set, every ``/v1`` route wants ``Authorization: Bearer <key>`` (else 401 with
  OpenAI's ``invalid_api_key`` envelope); ``key_file`` is a 0600 file holding it, for the gate.

Every request is recorded in ``fake.received`` (method, path, headers, body, parsed JSON) before
anything else happens, so a test sees even the requests the fake then hangs on. ``fake.fail(...)``
switches on a :class:`Fault` for the inference routes (or the ``paths`` given), for every
following request or only the next ``times`` ones; ``fake.heal()`` switches it off. A client that
goes away while the fake hangs is recorded in ``fake.disconnects`` (its path);
``fake.in_flight`` and ``fake.max_in_flight`` count the requests being answered at once.

Use it ``async with FakeUpstream() as fake:`` in async tests, or ``with
FakeUpstream().in_thread() as fake:`` from sync tests whose gate runs in another process: the
server then has its own thread and event loop (set its attributes from the test as usual).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from .gateconfig import write_key_file
from .openai_shapes import (
    ALL_PATHS,
    INFERENCE_PATHS,
    LEAK_MARKERS,
    LEAKY_TEXT,
    Fault,
    FaultPlan,
    completion,
    openai_error,
    stream_chunks,
    vector,
)

# The shapes moved to openai_shapes.py; tests import them from here as before.
__all__ = [
    "ALL_PATHS",
    "INFERENCE_PATHS",
    "LEAKY_TEXT",
    "LEAK_MARKERS",
    "FakeUpstream",
    "Fault",
    "FaultPlan",
    "Received",
    "fake_upstream",
]


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]  # case-insensitive: received.headers["authorization"]
    body: bytes
    json: Any  # the parsed body, or None when there was none or it was not JSON
    peer: Any = None  # the gate's (host, port): one connection per distinct peer


@dataclass
class FakeUpstream:
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    reply: str | None = None
    key: str | None = None
    usage: Literal["openai", "always", "never"] = "openai"
    strict_models: bool = True
    healthy: bool = True
    #: Seconds between a stream's ``[DONE]`` and the end of its body (``math.inf``: until the
    #: fake closes).
    linger: float = 0.0
    #: Serve HTTPS with this context (``base_url`` is then ``https://``).
    ssl_context: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    key_file: Path | None = None
    in_flight: int = 0  # requests being answered now
    max_in_flight: int = 0  # the most at once so far
    _plan: FaultPlan | None = field(default=None, init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _port: int | None = field(default=None, init=False, repr=False)
    _release: asyncio.Event | None = field(default=None, init=False, repr=False)
    _key_dir: Path | None = field(default=None, init=False, repr=False)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeUpstream:
        self._release = asyncio.Event()
        if self.key is not None:
            self._key_dir = Path(tempfile.mkdtemp(prefix="lmsfake"))
            self.key_file = write_key_file(self._key_dir / "upstream.key", self.key)
        app = web.Application(client_max_size=64 << 20, middlewares=[self._count])
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_route("*", "/redirected/{tail:.*}", self._redirected)
        # A client that goes away cancels its handler: that is how hangs see disconnects.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._release is not None:
            self._release.set()  # hanging handlers return
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._key_dir is not None:
            shutil.rmtree(self._key_dir, ignore_errors=True)
            self._key_dir = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[FakeUpstream]:
        """Serve from a thread of its own with its own event loop, for sync tests."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-upstream", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=60)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout=60)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=60)
                loop.close()

    # --- what tests read and set -----------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._port is not None, "the fake upstream is not started"
        return self._port

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def fail(
        self,
        fault: Fault,
        *,
        status: int = 502,
        paths: frozenset[str] | set[str] = INFERENCE_PATHS,
        times: int | None = None,
        location: str | None = None,
        size: int = 10 << 20,
        after_chunks: int = 1,
        body_format: Literal["json", "text"] = "json",
    ) -> None:
        """Misbehave on ``paths`` from the next request on (only ``times`` times if given)."""
        self._plan = FaultPlan(
            fault, status, frozenset(paths), times, location, size, after_chunks, body_format
        )

    def heal(self) -> None:
        self._plan = None

    def paths_seen(self) -> list[str]:
        return [r.path for r in self.received]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 60) -> list[Received]:
        """Poll (from a thread other than the fake's) until ``count`` requests (to ``path``)
        have arrived; returns them. Fails after ``timeout`` seconds, a generous deadline."""
        deadline = time.monotonic() + timeout
        while True:
            seen = [r for r in list(self.received) if path is None or r.path == path]
            if len(seen) >= count:
                return seen
            assert time.monotonic() < deadline, f"{len(seen)} of {count} requests arrived"
            time.sleep(0.02)

    # --- handlers ------------------------------------------------------------------------------

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def _record(self, request: web.Request) -> Received:
        raw = await request.read()
        parsed: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Received(
            request.method, request.path, request.query_string, CIMultiDict(request.headers),
            raw, parsed, peer,
        )  # fmt: skip
        self.received.append(seen)
        return seen

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.key is None or not request.path.startswith("/v1/"):
            return None
        if request.headers.get("Authorization") == f"Bearer {self.key}":
            return None
        return openai_error(401, "Incorrect API key provided.")

    def _plan_for(self, path: str) -> FaultPlan | None:
        plan = self._plan
        if plan is None or path not in plan.paths:
            return None
        if plan.times is not None:
            plan.times -= 1
            if plan.times <= 0:
                self._plan = None
        return plan

    async def _hang(self, request: web.Request) -> None:
        assert self._release is not None
        try:
            await self._release.wait()
        except asyncio.CancelledError:
            self.disconnects.append(request.path)
            raise

    async def _early_fault(
        self, request: web.Request, plan: FaultPlan | None
    ) -> web.Response | None:
        """The faults that replace the whole answer."""
        if plan is None:
            return None
        if plan.fault is Fault.HANG_BEFORE_HEADERS:
            await self._hang(request)
            raise web.HTTPServiceUnavailable()  # only once the fake closes
        if plan.fault is Fault.DROP:
            assert request.transport is not None
            request.transport.close()
            raise web.HTTPServiceUnavailable()  # never written: the connection is gone
        if plan.fault is Fault.REDIRECT:
            location = plan.location or f"{self.base_url}/redirected{request.path_qs}"
            return web.Response(status=302, headers={"Location": location})
        if plan.fault is Fault.ERROR:
            if plan.status >= 500:
                if plan.body_format == "text":
                    return web.Response(status=plan.status, text=LEAKY_TEXT)
                body = {"error": {"code": plan.status, "message": LEAKY_TEXT, "type": "server"}}
                return web.json_response(body, status=plan.status)
            return openai_error(plan.status, f"scripted {plan.status} from the fake upstream")
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (refused := self._refusal(request)) is not None:
            return refused
        plan = self._plan_for(request.path)
        if (early := await self._early_fault(request, plan)) is not None:
            return early
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
            for m in self.models
        ]
        return await self._json(request, {"object": "list", "data": data}, plan)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        plan = self._plan_for(request.path)
        if (early := await self._early_fault(request, plan)) is not None:
            return early
        if not self.healthy:
            error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            return web.json_response({"error": error}, status=503)
        return web.json_response({"status": "ok"})

    async def _redirected(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response({"redirected": True})

    async def _inference(
        self, request: web.Request
    ) -> tuple[dict[str, Any], FaultPlan | None, web.Response | None]:
        """Record, authenticate, check the body and the model: (body, plan, refusal or None)."""
        seen = await self._record(request)
        if (refused := self._refusal(request)) is not None:
            return {}, None, refused
        plan = self._plan_for(request.path)
        if (early := await self._early_fault(request, plan)) is not None:
            return {}, plan, early
        body = seen.json
        if not isinstance(body, dict):
            return {}, plan, openai_error(400, "the body must be a JSON object", param="body")
        model = body.get("model")
        if self.strict_models and model not in self.models:
            return {}, plan, openai_error(404, f"The model `{model}` does not exist.")
        return body, plan, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, plan, refused = await self._inference(request)
        if refused is not None:
            return refused
        messages = body.get("messages")
        last = ""
        if isinstance(messages, list):
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1].get("content"), str):
                last = users[-1]["content"]
        text = self.reply if self.reply is not None else f"echo: {last}"
        return await self._generate(request, body, plan, text, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, plan, refused = await self._inference(request)
        if refused is not None:
            return refused
        prompt = body.get("prompt")
        text = self.reply if self.reply is not None else f"echo: {prompt}"
        return await self._generate(request, body, plan, text, chat=False)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, plan, refused = await self._inference(request)
        if refused is not None:
            return refused
        given = body.get("input")
        inputs = given if isinstance(given, list) else [given]
        data = [
            {"object": "embedding", "index": i, "embedding": vector(json.dumps(item))}
            for i, item in enumerate(inputs)
        ]
        tokens = sum(len(str(item).split()) for item in inputs)
        reply: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        if self.usage != "never":
            reply["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self._json(request, reply, plan)

    # --- replies ---------------------------------------------------------------------------------

    async def _json(
        self, request: web.Request, doc: Any, plan: FaultPlan | None
    ) -> web.StreamResponse:
        """One JSON body, or the body-level faults (huge, hang or cut half-way)."""
        raw = json.dumps(doc).encode()
        if plan is None or plan.fault not in (Fault.HANG_MID_STREAM, Fault.CUT_MID_STREAM):
            return web.Response(body=raw, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(raw)
        await response.prepare(request)
        await response.write(raw[: len(raw) // 2])
        if plan.fault is Fault.HANG_MID_STREAM:
            await self._hang(request)
        else:
            assert request.transport is not None
            request.transport.close()
        return response

    async def _generate(
        self,
        request: web.Request,
        body: dict[str, Any],
        plan: FaultPlan | None,
        text: str,
        chat: bool,
    ) -> web.StreamResponse:
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{len(self.received)}"
        if not body.get("stream"):
            if plan is not None and plan.fault in (Fault.HUGE_BODY, Fault.HUGE_LINE):
                text = "x" * plan.size
            reply = completion(body, text, chat=chat, usage=self.usage, ident=ident)
            return await self._json(request, reply, plan)
        huge = plan.size if plan is not None and plan.fault is Fault.HUGE_LINE else None
        at = plan.after_chunks if plan is not None else 0
        chunks = stream_chunks(
            body, text, chat=chat, usage=self.usage, ident=ident, huge=huge, at=at
        )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for i, doc in enumerate(chunks):
            if plan is not None and i == plan.after_chunks:
                if plan.fault is Fault.HANG_MID_STREAM:
                    await self._hang(request)
                    return response
                if plan.fault is Fault.CUT_MID_STREAM:
                    assert request.transport is not None
                    request.transport.close()  # no [DONE], no end of the chunked body
                    return response
            await response.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        if self.linger == math.inf:
            assert self._release is not None
            await self._release.wait()  # the end of the body comes when the fake closes
        elif self.linger:
            await asyncio.sleep(self.linger)  # the end of the chunked body comes later
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def fake_upstream(**settings: Any) -> AsyncIterator[FakeUpstream]:
    """``async with fake_upstream(key="k") as fake:`` — a started FakeUpstream, closed after."""
    async with FakeUpstream(**settings) as fake:
        yield fake
