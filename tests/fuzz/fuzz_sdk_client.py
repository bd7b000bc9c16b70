"""Sending fuzz frames over a real SDK socket (aiohttp's WebSocket client) and judging the
answers: every frame that needs an answer gets one — its call's ``rpcResult``/``rpcError``, its
channel's ``channelClose``/``channelError``, a ``communicationWarning``, or a close with an error
code — never silence; error objects are objects; the socket still answers a ``keepAlive``."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from fuzz_daemon import Daemon
from fuzz_properties import LIVENESS_SECONDS
from fuzz_sdk_frames import SILENT_TYPES

from lms import payload
from lms.errors import LmsError

#: Close codes that say "your frame was wrong" (RFC 6455 §7.4.1): policy, data, size, protocol.
ERROR_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009})
#: A prediction that streams more fragments than this is cancelled (the answer must still come).
CANCEL_AFTER_FRAGMENTS = 64


@dataclass
class Expect:
    """What a frame must get: ``kind`` is ``call``, ``channel``, ``ack``, ``warning`` or
    ``none``; ``lenient`` when the frame is outside the documented bounds (then any error
    answer, a warning or a close with an error code will do)."""

    kind: str
    ident: Any = None
    lenient: bool = False


def expectation(data: bytes, binary: bool) -> Expect:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        binary = True  # not UTF-8: _send sends it as a binary frame
    if binary:
        return Expect("warning")
    try:
        value = payload.loads(text)
        lenient = False
    except (LmsError, ValueError):  # ValueError: see the report about >4300-digit integers
        lenient = True
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return Expect("warning", lenient=True)
    if not isinstance(value, dict):
        return Expect("warning", lenient=lenient)
    kind = value.get("type")
    if kind == "rpcCall" or kind == "channelCreate":
        key = "callId" if kind == "rpcCall" else "channelId"
        ident = value.get(key)
        if isinstance(ident, int) and not isinstance(ident, bool):
            return Expect("call" if kind == "rpcCall" else "channel", ident, lenient)
        return Expect("warning", lenient=lenient)
    if kind == "keepAlive":
        return Expect("ack", lenient=lenient)
    if isinstance(kind, str) and kind in SILENT_TYPES:
        return Expect("none", lenient=lenient)
    return Expect("warning", lenient=lenient)


@dataclass
class Outcome:
    label: str
    problem: str | None = None
    closed: bool = False
    #: Which frame of the case this is the outcome of.
    frame: str = ""


def _error_object_problem(reply: dict[str, Any]) -> str | None:
    error = reply.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("title"), str):
        return f"{reply.get('type')} without an error object: {str(reply)[:200]}"
    return None


async def _answer(ws: aiohttp.ClientWebSocketResponse, expect: Expect) -> Outcome:
    """Read until the frame's answer; the outcome says what came (and what is wrong)."""
    deadline = time.monotonic() + LIVENESS_SECONDS
    fragments = 0
    cancelled = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Outcome("no answer", f"no answer within {LIVENESS_SECONDS:.0f} s")
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            return Outcome("no answer", f"no answer within {LIVENESS_SECONDS:.0f} s")
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            code = ws.close_code
            if expect.lenient and code in ERROR_CLOSE_CODES:
                return Outcome(f"closed {code}", closed=True)
            return Outcome(
                f"closed {code}", f"socket closed ({code}) without an error answer", closed=True
            )
        if message.type != WSMsgType.TEXT:
            return Outcome("binary reply", f"a {message.type.name} frame from the server")
        reply = json.loads(message.data)
        if not isinstance(reply, dict) or not isinstance(reply.get("type"), str):
            return Outcome("bad reply", f"a frame that is not a typed object: {message.data[:200]}")
        kind = reply["type"]
        if kind in ("rpcError", "channelError"):
            problem = _error_object_problem(reply)
            if problem:
                return Outcome(kind, problem)
            if expect.lenient:
                # A frame too deep (or too odd) for this oracle to decode: the server still
                # reads the call or channel it opens from its top level and fails that.
                return Outcome(kind)
        if kind == "communicationWarning":
            if expect.kind == "warning" or expect.lenient:
                return Outcome("warning")
            continue  # e.g. the unknown-endpoint warning before its rpcError
        if expect.kind == "ack" and kind == "keepAliveAck":
            return Outcome("keepAliveAck")
        if (
            expect.kind == "call"
            and reply.get("callId") == expect.ident
            and kind in ("rpcResult", "rpcError")
        ):
            return Outcome(kind)
        if expect.kind == "channel" and reply.get("channelId") == expect.ident:
            if kind in ("channelClose", "channelError"):
                return Outcome(kind)
            if kind == "channelSend":
                fragments += 1
                if fragments > CANCEL_AFTER_FRAGMENTS and not cancelled:
                    cancelled = True
                    cancel = {"type": "channelSend", "channelId": expect.ident,
                              "message": {"type": "cancel"}}  # fmt: skip
                    await ws.send_str(json.dumps(cancel))
                continue
        # anything else (a late answer of an earlier frame): keep reading


def auth_packet_of(token: str) -> dict[str, Any]:
    identifier, secret = token.removeprefix("sk-lm-").split(":")
    return {"authVersion": 1, "clientIdentifier": identifier, "clientPasskey": secret}


async def _connect(
    session: aiohttp.ClientSession, daemon: Daemon, namespace: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(
        f"{daemon.url}/{namespace}", max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=10)
    )
    return ws


async def _frames_case(
    daemon: Daemon, namespace: str, frames: list[tuple[bytes, str, bool]]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=LIVENESS_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ws = await _connect(session, daemon, namespace)
        try:
            await ws.send_str(json.dumps(auth_packet_of(daemon.token)))
            hello = await ws.receive(timeout=LIVENESS_SECONDS)
            if hello.type != WSMsgType.TEXT or json.loads(hello.data) != {"success": True}:
                return [Outcome("auth refused", f"the valid auth packet got {hello!r}")]
            for index, (data, _, binary) in enumerate(frames):
                expect = expectation(data, binary)
                await _send(ws, data, binary)
                # A frame the protocol lets pass in silence is answered by nothing: the
                # keepAlive below shows that the socket read it and still serves.
                outcome = Outcome("silent") if expect.kind == "none" else await _answer(ws, expect)
                if outcome.problem is None and not outcome.closed and expect.kind != "ack":
                    await ws.send_str('{"type":"keepAlive"}')
                    after = await _answer(ws, Expect("ack"))
                    if after.problem:
                        outcome = Outcome(outcome.label, f"then no keepAliveAck: {after.problem}")
                outcome.frame = f"frame {index + 1} of {len(frames)}"
                outcomes.append(outcome)
                if outcome.closed or outcome.problem:
                    break
        finally:
            await ws.close()
    return outcomes


async def _send(ws: aiohttp.ClientWebSocketResponse, data: bytes, binary: bool) -> None:
    if binary:
        await ws.send_bytes(data)
        return
    try:
        await ws.send_str(data.decode("utf-8"))
    except UnicodeDecodeError:
        await ws.send_bytes(data)


def frames_case(
    daemon: Daemon, namespace: str, frames: list[tuple[bytes, str, bool]]
) -> list[Outcome]:
    return asyncio.run(_frames_case(daemon, namespace, frames))


async def _auth_case(daemon: Daemon, namespace: str, data: bytes, binary: bool) -> Outcome:
    """A hostile auth packet gets exactly one reply — success (then the socket serves) or
    ``{"success": false, "error": "..."}`` then a close — never silence."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=LIVENESS_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ws = await _connect(session, daemon, namespace)
        try:
            await _send(ws, data, binary)
            try:
                message = await ws.receive(timeout=LIVENESS_SECONDS)
            except TimeoutError:
                return Outcome("no answer", f"no auth reply within {LIVENESS_SECONDS:.0f} s")
            if message.type != WSMsgType.TEXT:
                return Outcome(f"closed {ws.close_code}", "closed without an auth reply")
            reply = json.loads(message.data)
            if reply == {"success": True}:
                await ws.send_str('{"type":"keepAlive"}')
                after = await _answer(ws, Expect("ack"))
                return Outcome("accepted", after.problem)
            if (
                isinstance(reply, dict)
                and reply.get("success") is False
                and isinstance(reply.get("error"), str)
                and reply["error"]
            ):
                closing = await ws.receive(timeout=LIVENESS_SECONDS)
                if closing.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return Outcome("refused", f"refused but not closed: {closing!r}")
                return Outcome("refused")
            return Outcome("bad reply", f"an auth reply of the wrong shape: {message.data[:200]}")
        finally:
            await ws.close()


def auth_case(daemon: Daemon, namespace: str, data: bytes, binary: bool) -> Outcome:
    return asyncio.run(_auth_case(daemon, namespace, data, binary))


async def _socket_serves(daemon: Daemon) -> str | None:
    """None when a fresh ``/system`` socket authenticates and answers ``version``."""
    try:
        outcomes = await _frames_case(
            daemon, "system", [(b'{"type":"rpcCall","endpoint":"version","callId":1}', "", False)]
        )
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        return f"no fresh SDK socket: {exc!r}"
    if [o.label for o in outcomes] != ["rpcResult"] or outcomes[0].problem:
        return f"a fresh SDK socket answered {outcomes!r}"
    return None


def socket_serves(daemon: Daemon) -> str | None:
    return asyncio.run(_socket_serves(daemon))
