"""One SDK WebSocket: upgrade, auth packet, then multiplexed RPC calls and channels.

Rules the official Python SDK depends on (docs/API.md, SDK rules), and how this
module keeps them:

* exactly one auth reply, a string ``error`` on failure, then the close (rule 1);
* text frames only, one JSON object each (rule 3);
* nothing top-level except ``communicationWarning`` and answers (rule 4): every other frame
  carries the ``callId``/``channelId`` it answers; ``keepAliveAck`` only answers a ``keepAlive``;
* error objects, never strings (rule 5);
* per channel: packets, one terminal packet, then ``channelClose`` (rule 7) — or a
  ``channelError`` instead of the terminal packet;
* the socket is read all the time: each call runs in its own task, so several requests are in
  flight at once, ``cancel`` arrives while generating, and pings are answered (rules 8, 9);
* ids are this socket's own (rule 9);
* an unknown endpoint gets LM Studio's ``communicationWarning`` **and** an error for that call,
  so no caller hangs (README: APIs; stricter than LM Studio, which sends only the warning);
* a frame that cannot be served (not JSON, out of the bounds of :mod:`lms.payload`, larger than
  :data:`wire.MAX_FRAME_BYTES`, one call or channel more than :data:`wire.MAX_OPEN`) gets an
  error for the call or channel it opens (``rpcError`` / ``channelError``, which the SDK
  raises), read from its top-level members even when it cannot be decoded whole; a frame that
  opens nothing gets a ``communicationWarning``. Every bound is listed in ``docs/LIMITS.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from lms.api import sse
from lms.api.sdk import wire
from lms.api.sdk.auth import AUTH_TIMEOUT, Client, SocketAuth, packet_reply, read_packet
from lms.api.sdk.calls import Call, Channel, ChannelEndpoint, Endpoint, RpcEndpoint
from lms.api.state import AUTH, CONFIG
from lms.auth.permissions import Access, sdk_access_for
from lms.errors import (
    AuthError,
    InternalError,
    InvalidRequestError,
    LmsError,
    NotFoundError,
    ServerBusyError,
)
from lms.inference.generation import cache_scope

log = logging.getLogger("lms.sdk")


def _int_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Session:
    """The server side of one SDK socket of namespace ``namespace``."""

    def __init__(
        self,
        app: web.Application,
        namespace: str,
        ws: web.WebSocketResponse,
        endpoints: dict[tuple[str, str], Endpoint],
        peer: str | None = None,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.app = app
        self.namespace = namespace
        self.ws = ws
        self.peer = peer
        self._transport = transport
        self._endpoints = endpoints
        self._auth: SocketAuth | None = None
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._channels: dict[int, Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; ConnectionResetError once the socket is gone, or once the client has
        taken no data for :data:`lms.api.sse.WRITE_TIMEOUT` seconds (a reader that stalls is cut,
        as on the HTTP streams, so its prediction is cancelled and its slot freed)."""
        if self.ws.closed:
            raise ConnectionResetError("the SDK socket is closed")
        try:
            async with asyncio.timeout(sse.WRITE_TIMEOUT):
                await self.ws.send_str(wire.dumps(frame))
        except TimeoutError:
            log.warning(
                "cut the SDK socket /%s: the client accepted no data for %g seconds",
                self.namespace,
                sse.WRITE_TIMEOUT,
            )
            if self._transport is not None:
                self._transport.abort()
            raise ConnectionResetError("the SDK client stopped reading") from None

    async def run(self) -> None:
        """Authenticate, then serve until the client closes the socket."""
        client = await self._authenticate()
        if client is None:
            return
        self._auth = SocketAuth(self.app, self.namespace, client, self.peer)
        try:
            async for message in self.ws:
                if message.type == WSMsgType.TEXT:
                    await self._dispatch(message.data)
                elif message.type == WSMsgType.BINARY:
                    await self._warn("Received a binary frame; only JSON text frames are used")
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- authentication -----------------------------------------------------------------------

    async def _authenticate(self) -> Client | None:
        try:
            message = await self.ws.receive(timeout=AUTH_TIMEOUT)
        except TimeoutError:
            await self._refuse(
                InvalidRequestError(
                    f"no authentication packet within {AUTH_TIMEOUT:g} seconds of connecting"
                )
            )
            return None
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        try:
            if message.type != WSMsgType.TEXT:
                raise InvalidRequestError("the authentication packet must be a JSON text frame")
            client = read_packet(message.data)
            SocketAuth(self.app, self.namespace, client, self.peer).admit()
        except LmsError as err:
            await self._refuse(err)
            return None
        await self.send(packet_reply(None))
        return client

    async def _refuse(self, err: LmsError) -> None:
        if not isinstance(err, AuthError) and self._auth_required():
            # AuthErrors were counted by the gate; a malformed or missing packet is too.
            SocketAuth(self.app, self.namespace, Client(None, ""), self.peer).refused("auth", err)
        with contextlib.suppress(ConnectionError):
            await self.send(packet_reply(err))
        await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication failed")

    def _auth_required(self) -> bool:
        try:
            return self.app[CONFIG].current().auth_required
        except LmsError:
            return True

    # --- dispatch -------------------------------------------------------------------------------

    async def _dispatch(self, text: str) -> None:
        try:
            if len(text) > wire.THREAD_DECODE_CHARS:
                frame = await asyncio.to_thread(wire.decode, text)
            else:
                frame = wire.decode(text)
        except wire.BadFrame as bad:
            await self._answer_bad_frame(bad)
            return
        kind = frame.get("type")
        if kind == "rpcCall":
            await self._open_call(frame)
        elif kind == "channelCreate":
            await self._open_channel(frame)
        elif kind == "channelSend":
            self._channel_message(frame)
        elif kind == "keepAlive":
            await self.send({"type": "keepAliveAck"})
        elif kind in ("signalSubscribe", "writableSignalSubscribe"):
            await self._refuse_signal(frame)
        elif kind in (
            "channelAck",
            "signalUnsubscribe",
            "writableSignalUnsubscribe",
            "writableSignalUpdate",
        ):
            pass  # nothing of ours acknowledges or subscribes
        elif kind == "communicationWarning":
            log.warning("SDK client warning on /%s: %s", self.namespace, frame.get("warning"))
        else:
            await self._warn(f"Received a message of unknown type {kind!r}")

    async def _answer_bad_frame(self, bad: wire.BadFrame) -> None:
        """Fail the call or channel a bad frame opens, else warn."""
        kind = bad.head.get("type")
        error = wire.error_object(bad.error)
        call_id = _int_id(bad.head.get("callId"))
        channel_id = _int_id(bad.head.get("channelId"))
        subscribe_id = _int_id(bad.head.get("subscribeId"))
        if kind == "rpcCall" and call_id is not None and call_id not in self._calls:
            await self.send(wire.rpc_error(call_id, error))
        elif (
            kind == "channelCreate" and channel_id is not None and channel_id not in self._channels
        ):
            await self.send(wire.channel_error(channel_id, error))
        elif kind in ("signalSubscribe", "writableSignalSubscribe") and subscribe_id is not None:
            await self.send({"type": "signalError", "subscribeId": subscribe_id, "error": error})
        else:
            await self._warn(f"Received a message that cannot be read: {bad.error.message}")

    def _is_full(self) -> bool:
        return len(self._calls) + len(self._channels) >= wire.MAX_OPEN

    def _full(self) -> LmsError:
        return ServerBusyError(
            f"this socket already has {wire.MAX_OPEN} calls and channels open;"
            " wait for one to end before starting another"
        )

    async def _warn(self, text: str, kind: str = "invalidMessage") -> None:
        await self.send(wire.warning(text, kind))

    def _lookup(self, endpoint: Any, kind: type[Endpoint]) -> tuple[Endpoint, Access] | None:
        if not isinstance(endpoint, str):
            return None
        served = self._endpoints.get((self.namespace, endpoint))
        if not isinstance(served, kind):
            return None
        try:
            return served, sdk_access_for(self.namespace, endpoint)
        except KeyError:  # served but not in the permission table: never reachable
            log.error("SDK endpoint %s.%s is missing from SDK_ACCESS", self.namespace, endpoint)
            return None

    def _unknown(self, kind: str, endpoint: Any) -> LmsError:
        return NotFoundError(
            f"unknown {kind} endpoint {endpoint!r} on /{self.namespace}: lms does not serve it",
            hint="lms serves the LM Studio SDK's everyday calls; see the README",
        )

    async def _open_call(self, frame: dict[str, Any]) -> None:
        call_id = _int_id(frame.get("callId"))
        endpoint = frame.get("endpoint")
        if call_id is None:
            await self._warn("Received rpcCall without an integer callId")
            return
        if call_id in self._calls:
            await self._warn(f"Received rpcCall with callId {call_id} already in use")
            return
        found = self._lookup(endpoint, RpcEndpoint)
        if found is None:
            await self._warn(
                f"Received rpcCall for unknown endpoint, endpoint = {endpoint}",
                "rpcEndpointUnknown",
            )
            error = wire.error_object(self._unknown("rpc", endpoint))
            await self.send(wire.rpc_error(call_id, error))
            return
        served, access = found
        assert isinstance(endpoint, str) and isinstance(served, RpcEndpoint)
        if self._is_full():
            await self.send(wire.rpc_error(call_id, wire.error_object(self._full())))
            return
        task = self._spawn(self._run_call(call_id, endpoint, access, served, frame))
        self._calls[call_id] = task
        task.add_done_callback(lambda _: self._calls.pop(call_id, None))

    async def _open_channel(self, frame: dict[str, Any]) -> None:
        channel_id = _int_id(frame.get("channelId"))
        endpoint = frame.get("endpoint")
        if channel_id is None:
            await self._warn("Received channelCreate without an integer channelId")
            return
        if channel_id in self._channels:
            await self._warn(f"Received channelCreate with channelId {channel_id} already in use")
            return
        found = self._lookup(endpoint, ChannelEndpoint)
        if found is None:
            await self._warn(
                f"Received channelCreate for unknown endpoint, endpoint = {endpoint}",
                "channelEndpointUnknown",
            )
            error = wire.error_object(self._unknown("channel", endpoint))
            await self.send(wire.channel_error(channel_id, error))
            return
        served, access = found
        assert isinstance(endpoint, str) and isinstance(served, ChannelEndpoint)
        if self._is_full():
            await self.send(wire.channel_error(channel_id, wire.error_object(self._full())))
            return
        assert self._auth is not None
        channel = Channel(self._auth, endpoint, None, channel_id=channel_id, sender=self.send)
        self._channels[channel_id] = channel
        task = self._spawn(self._run_channel(channel, access, served, frame))
        task.add_done_callback(lambda _: self._channels.pop(channel_id, None))

    def _channel_message(self, frame: dict[str, Any]) -> None:
        channel_id = _int_id(frame.get("channelId"))
        channel = None if channel_id is None else self._channels.get(channel_id)
        message = frame.get("message")
        if channel is None:
            return  # a cancel racing the channel's end
        if isinstance(message, dict) and message.get("type") == "cancel":
            channel.cancel()

    async def _refuse_signal(self, frame: dict[str, Any]) -> None:
        await self._warn("lms has no signal endpoints", "signalEndpointUnknown")
        subscribe_id = _int_id(frame.get("subscribeId"))
        if subscribe_id is not None:
            error = wire.error_object(self._unknown("signal", frame.get("endpoint")))
            await self.send({"type": "signalError", "subscribeId": subscribe_id, "error": error})

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- running calls --------------------------------------------------------------------------

    async def _run_call(
        self,
        call_id: int,
        endpoint: str,
        access: Access,
        served: RpcEndpoint,
        frame: dict[str, Any],
    ) -> None:
        assert self._auth is not None
        try:
            record = self._auth.authorize(endpoint, access)
            cache_scope.set(record.id if record is not None else None)  # this call's task only
            call = Call(self._auth, endpoint, record)
            result = await served.handler(call, frame.get("parameter"))
            reply = wire.rpc_result(call_id, result)
        except LmsError as err:
            reply = wire.rpc_error(call_id, wire.error_object(err))
        except (ConnectionError, asyncio.CancelledError):
            return
        except Exception:
            log.exception("SDK call %s.%s failed", self.namespace, endpoint)
            reply = wire.rpc_error(call_id, wire.error_object(_internal()))
        with contextlib.suppress(ConnectionError):
            await self.send(reply)

    async def _run_channel(
        self, channel: Channel, access: Access, served: ChannelEndpoint, frame: dict[str, Any]
    ) -> None:
        error: LmsError | None = None
        try:
            channel.record = channel.auth.authorize(channel.endpoint, access)
            cache_scope.set(channel.record.id if channel.record is not None else None)
            await served.handler(channel, frame.get("creationParameter"))
            if not channel.ended:
                raise InternalError(f"{channel.endpoint} ended without a result")
        except LmsError as err:
            error = err
        except (ConnectionError, asyncio.CancelledError):
            return
        except Exception:
            log.exception("SDK channel %s.%s failed", self.namespace, channel.endpoint)
            error = _internal()
        if error is not None and channel.ended:
            log.warning("SDK channel %s failed after its result: %s", channel.endpoint, error)
            error = None
        reply = (
            wire.channel_close(channel.channel_id)
            if error is None
            else wire.channel_error(channel.channel_id, wire.error_object(error))
        )
        with contextlib.suppress(ConnectionError):
            await self.send(reply)


def _internal() -> LmsError:
    return InternalError("internal error; see the daemon log")


async def serve(
    request: web.Request, endpoints: dict[tuple[str, str], Endpoint]
) -> web.StreamResponse:
    """The handler of ``GET /<namespace>``: upgrade and serve one SDK socket."""
    namespace = request.path.lstrip("/")
    ws = web.WebSocketResponse(max_msg_size=wire.MAX_READ_BYTES, compress=False, autoping=True)
    if not ws.can_prepare(request).ok:
        raise InvalidRequestError(
            f"/{namespace} is an LM Studio SDK WebSocket endpoint: connect with the lmstudio SDK"
            " (or another WebSocket client)"
        )
    await ws.prepare(request)
    sockets = request.app[SOCKETS]
    sockets.open.add(ws)
    try:
        with contextlib.suppress(ConnectionError):  # the client left
            session = Session(
                request.app, namespace, ws, endpoints, request.remote, request.transport
            )
            await session.run()
    finally:
        sockets.open.discard(ws)
        await ws.close()
    return ws


class OpenSockets:
    """The SDK sockets of an app, closed when it shuts down."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()


SOCKETS = web.AppKey("sdk_sockets", OpenSockets)


async def close_all(app: web.Application) -> None:
    """``on_shutdown``: close every open SDK socket (their calls are cancelled), then write the
    refusals counted in the last window (the API app's, HTTP and SDK alike), so none is lost."""
    for ws in list(app[SOCKETS].open):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
    app[AUTH].refusals.flush()
