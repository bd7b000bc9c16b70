"""One remote engine (a ``[remotes.NAME]`` table): its replicas, its models, its requests.

:class:`RemoteEngine` keeps an HTTP session to its replicas, checks them (the active health check
and the model poll, every ``health_interval`` seconds) and sends requests: the replica with the
fewest in flight, another one when a replica fails before anything has been passed on to the
client (connection refused or reset, a 5xx, a stream that broke before its first event), never
after. See :mod:`lms.remote.upstream` for the bounds of each exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from lms import __version__
from lms.errors import LmsError, RemoteUnavailableError, UpstreamError
from lms.inference.generation import Generation
from lms.inference.sampling import SamplingParams
from lms.inference.tools import Tool
from lms.remote import translate
from lms.remote.listing import MAX_MODEL_LIST_BYTES, parse_models
from lms.remote.models import RemoteModel
from lms.remote.upstream import (
    CONNECTION_ERRORS,
    MAX_BODY_BYTES,
    MAX_ERROR_BYTES,
    Exchange,
    Pool,
    Replica,
    SafeResolver,
    Stream,
    connection_error,
    decode,
    encode,
    read_bounded,
    sse_events,
    status_error,
    timed_out,
)
from lms.remoteconfig import KeyFileError, RemoteSpec, key_signature, read_key

log = logging.getLogger("lms.remote")


class RemoteEngine:
    """The gate's side of one remote engine. Build it, :meth:`start` it, :meth:`close` it."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.pool = Pool([Replica(url) for url in spec.urls], spec.max_concurrent)
        self.models: dict[str, RemoteModel] = {}  # lower-case key -> model
        #: Why requests fail at once (a key file that cannot be used), or None.
        self.error: str | None = None
        #: Why the engine's models are hidden (its name is a local publisher folder), or None.
        self.clash: str | None = None
        self.polled = asyncio.Event()
        self._key: str | None = None
        self._key_signature: object = "unread"
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the session and start checking the replicas (on the event loop)."""
        ssl_context: ssl.SSLContext | bool = True
        if self.spec.ca_file:
            ssl_context = ssl.create_default_context(
                cafile=str(Path(self.spec.ca_file).expanduser())
            )
        connector = aiohttp.TCPConnector(
            limit=0,  # bounded per replica by max_concurrent
            ssl=ssl_context,
            resolver=SafeResolver(),
            # Below the 5 s after which llama-server and uvicorn close an idle connection.
            keepalive_timeout=4,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=self.spec.timeout,
                connect=self.spec.connect_timeout,
                sock_read=self.spec.idle_timeout,
            ),
            headers={"User-Agent": f"lms/{__version__}", "Accept-Encoding": "identity"},
        )
        self._task = asyncio.create_task(self._watch(), name=f"remote {self.spec.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RemoteUnavailableError("the remote engine is not started")
        return self._session

    # --- the upstream's credential -----------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._current_key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _current_key(self) -> str | None:
        """The key file's key, re-read when the file changes; RemoteUnavailableError while it
        cannot be used (the client never learns the file's path or problem)."""
        if not self.spec.key_file:
            return None
        signature = key_signature(self.spec.key_file)
        if signature != self._key_signature:
            self._key_signature = signature
            try:
                self._key, self.error = read_key(self.spec.key_file), None
            except KeyFileError as exc:
                self._key, self.error = None, str(exc)
                log.warning("remote %s: %s", self.spec.name, exc)
        if self._key is None:
            raise RemoteUnavailableError(
                f"the remote engine {self.spec.name!r} cannot be used: its key file is not"
                " usable (see: lms remote list)"
            )
        return self._key

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._key,) if self._key else ()

    # --- checks and model polling ------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a check must never end the watch
                log.exception("remote %s: health check failed", self.spec.name)
            self.polled.set()
            await asyncio.sleep(self.spec.health_interval)

    async def check(self) -> None:
        """The active health check of every replica, then the model list of a healthy one."""
        try:
            headers = self._headers()
        except RemoteUnavailableError:
            return
        timeout = aiohttp.ClientTimeout(
            total=self.spec.connect_timeout + min(self.spec.idle_timeout, 30)
        )
        listing: bytes | None = None
        for replica in self.pool.replicas:
            try:
                async with self.session.get(
                    replica.url + self.spec.health_path,
                    headers=headers,
                    allow_redirects=False,
                    timeout=timeout,
                ) as response:
                    body = await read_bounded(response, MAX_MODEL_LIST_BYTES)
                    ok = 200 <= response.status < 300
                    reason = None if ok else f"health check answered HTTP {response.status}"
            except (LmsError, TimeoutError, *CONNECTION_ERRORS) as exc:
                ok, body = False, b""
                reason = f"health check failed: {connection_error(exc)}"
            if ok and not replica.healthy:
                log.info("remote %s: replica %d is back", self.spec.name, self._index(replica))
            if not ok and replica.healthy:
                log.warning(
                    "remote %s: replica %d out: %s", self.spec.name, self._index(replica), reason
                )
            replica.healthy, replica.error = ok, reason
            if ok:
                replica.failures = 0
                if listing is None and self.spec.health_path == "/v1/models":
                    listing = body
        if listing is None:
            listing = await self._fetch_models(headers, timeout)
        if listing is not None:
            await self._set_models(listing)

    def _index(self, replica: Replica) -> int:
        return self.pool.replicas.index(replica) + 1

    async def _fetch_models(
        self, headers: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> bytes | None:
        for replica in self.pool.replicas:
            if not replica.healthy:
                continue
            try:
                async with self.session.get(
                    replica.url + "/v1/models",
                    headers=headers,
                    allow_redirects=False,
                    timeout=timeout,
                ) as response:
                    if response.status == 200:
                        return await read_bounded(response, MAX_MODEL_LIST_BYTES)
            except (LmsError, TimeoutError, *CONNECTION_ERRORS):
                continue
        return None  # keep the last list: requests then get 503, not 404

    async def _set_models(self, raw: bytes) -> None:
        try:
            models = await asyncio.to_thread(parse_models, raw, self.spec, self)
        except ValueError as exc:
            log.warning("remote %s: %s", self.spec.name, exc)
            return
        if set(models) != set(self.models):
            log.info("remote %s: %d model(s)", self.spec.name, len(models))
        self.models = models

    # --- requests ----------------------------------------------------------------------------

    async def post_json(self, path: str, data: bytes, key: str) -> dict[str, Any]:
        """A non-streamed request (``data``: its JSON body): the upstream's JSON object (another
        replica is tried while one fails: nothing has reached the client yet)."""
        exchange = await self._open(path, data, key)
        try:
            raw = await read_bounded(exchange.response, MAX_BODY_BYTES)
        except TimeoutError as exc:
            raise timed_out(exc) from None
        finally:
            exchange.close()
        doc = await decode(raw)
        if not isinstance(doc, dict):
            raise UpstreamError("the remote engine's answer is not a JSON object")
        return doc

    async def post_stream(self, path: str, data: bytes, key: str) -> Stream:
        """A streamed request (``data``: its JSON body) whose first event has arrived; until
        then a failing replica is replaced by another."""
        tried: set[Replica] = set()
        while True:
            exchange = await self._open(path, data, key, tried)
            events = sse_events(exchange.response).__aiter__()
            try:
                first: bytes | None = await events.__anext__()
            except StopAsyncIteration:
                first = None
            except TimeoutError as exc:
                exchange.close()
                raise timed_out(exc) from None
            except (UpstreamError, *CONNECTION_ERRORS) as exc:
                exchange.close()
                reason = str(exc) if isinstance(exc, LmsError) else connection_error(exc)
                exchange.replica.failed(reason, at_once=True)
                log.warning(
                    "remote %s: stream failed before its first event: %s", self.spec.name, reason
                )
                continue
            return Stream(exchange, events, first)

    async def _open(
        self, path: str, data: bytes, key: str, tried: set[Replica] | None = None
    ) -> Exchange:
        """Headers of a 2xx answer from the first replica that gives one."""
        tried = set() if tried is None else tried
        headers = self._headers()
        last: LmsError | None = None
        while True:
            try:
                replica = self.pool.pick(tried)
            except RemoteUnavailableError:
                if last is not None:
                    raise last from None
                raise
            tried.add(replica)
            replica.in_flight += 1
            replica.picked += 1
            try:
                response = await self._post(replica.url + path, data, headers)
            except TimeoutError as exc:
                replica.in_flight -= 1
                replica.failed(connection_error(exc), at_once=False)
                raise timed_out(exc) from None
            except CONNECTION_ERRORS as exc:
                replica.in_flight -= 1
                reason = connection_error(exc)
                replica.failed(reason, at_once=True)
                log.warning(
                    "remote %s: replica %d failed: %s", self.spec.name, self._index(replica), reason
                )
                last = RemoteUnavailableError(
                    f"the remote engine could not be reached ({reason})",
                    headers={"Retry-After": "5"},
                )
                continue
            exchange = Exchange(replica, response)
            if 200 <= response.status < 300:
                replica.succeeded()
                return exchange
            try:
                raw = await read_bounded(response, MAX_ERROR_BYTES)
            except (LmsError, TimeoutError, *CONNECTION_ERRORS):
                raw = b""
            finally:
                exchange.close()
            error = status_error(response.status, raw, key, self.secrets)
            if response.status < 500:
                raise error
            replica.failed(f"answered HTTP {response.status}", at_once=False)
            last = error

    async def _post(self, url: str, data: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST, once more when the connection closes before any answer.

        An upstream closes an idle connection when its keep-alive time ends (llama-server and
        uvicorn after 5 s); a request sent on it at that moment meets a closed connection
        before any answer. That says nothing about the replica: the request is sent again, once
        (aiohttp then connects anew: a closed connection never returns to its pool). Which
        connection it was is not known here, so a new connection closed at once gets the same
        second try; a second close is the replica's failure (the caller's). Nothing has reached
        the client either way."""
        post = functools.partial(
            self.session.post, url, data=data, headers=headers, allow_redirects=False
        )
        try:
            return await post()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise  # connecting failed: not a stale connection
            return await post()

    # --- generation for the API families that translate --------------------------------------

    async def generate(
        self,
        model: RemoteModel,
        messages: list[dict[str, Any]] | None,
        text: str | None,
        tools: Sequence[Tool],
        params: SamplingParams,
    ) -> Generation:
        loop = asyncio.get_running_loop()
        if messages is not None:
            path, body = "/v1/chat/completions", translate.chat_body(model, messages, tools, params)
        else:
            path, body = "/v1/completions", translate.completion_body(model, text or "", params)
        generation = Generation(loop, [], params)
        started = asyncio.get_running_loop().time()
        # A chat may be megabytes (a long history): encoded on a worker thread.
        stream = await self.post_stream(path, await encode(body, large=True), model.key)
        task = asyncio.create_task(translate.pump(stream, generation, started))
        generation.set_canceller(lambda: _cancel(task))
        return generation

    # --- status --------------------------------------------------------------------------------

    def public_dict(self) -> dict[str, Any]:
        """What ``lms remote list`` shows of the running engine."""
        return {
            "name": self.spec.name,
            "models": sorted(model.key for model in self.models.values()),
            "error": self.clash or self.error,
            "replicas": [replica.public_dict() for replica in self.pool.replicas],
        }


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
