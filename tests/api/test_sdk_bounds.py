"""SDK socket error paths: every bad frame is answered with an error for the call or channel it
opens (the SDK raises it), bad auth packets are refused and counted like HTTP refusals, and a
socket's frames and open calls are bounded (docs/LIMITS.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType

from lms.api.sdk import wire
from lms.api.state import AUTH
from lms.auth import audit

from .sdkwire import GUEST, MODEL, Client, connect, frame, predict_request, require_auth


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def counted(route: str) -> int:
    return sum(
        int(e["count"])
        for e in audit.read()
        if e["event"] == "request_refused" and e["route"] == route
    )


BAD_PACKETS = {
    "too deep for the decoder": '{"authVersion": 1, "x": ' + deep(5000) + "}",
    "too deep for the bounds": '{"authVersion": 1, "x": ' + deep(70) + "}",
    "a lone surrogate": '{"authVersion":1,"clientIdentifier":"\\ud800","clientPasskey":"x"}',
    "NaN": '{"authVersion":1,"clientIdentifier":"a","clientPasskey":"b","n":NaN}',
}
WORDS = {
    "too deep for the decoder": "nested deeper than 64",
    "too deep for the bounds": "nested deeper than 64",
    "a lone surrogate": "clientIdentifier",
    "NaN": "'n' must be a finite number",
}


@pytest.mark.parametrize("kind", sorted(BAD_PACKETS))
async def test_a_bad_auth_packet_is_answered_and_counted(
    client: Client, lms_home: Path, kind: str
) -> None:
    require_auth(lms_home)
    ws = await client.ws_connect("/system")
    await ws.send_str(BAD_PACKETS[kind])
    reply = await frame(ws)
    assert reply["success"] is False
    assert WORDS[kind] in reply["error"], reply
    assert (await ws.receive(timeout=30)).type == WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    client.app[AUTH].refusals.flush()
    assert counted("/system:auth") == 1


async def test_refused_sdk_packets_are_counted_like_http_refusals(
    client: Client, lms_home: Path
) -> None:
    require_auth(lms_home)
    for n in range(30):  # guests and random tokens: two keys, every refusal counted
        ws = await client.ws_connect("/llm")
        ident = "Zz9Zz9Z" + "abcdefghijklmnopqrstuvwxyzABCD"[n]
        auth = {"authVersion": 1, "clientIdentifier": ident, "clientPasskey": "A1" * 10}
        await ws.send_json(auth if n % 2 else GUEST)
        assert (await frame(ws))["success"] is False
        await ws.close()
    client.app[AUTH].refusals.flush()
    entries = [e for e in audit.read() if e["event"] == "request_refused"]
    assert sum(int(e["count"]) for e in entries) == 30
    assert {(e["token_id"], e["reason"]) for e in entries} == {
        ("unknown", "invalid_api_key"),
        ("none", "missing_api_key"),
    }


async def test_bad_frames_fail_the_call_or_channel_they_open(client: Client) -> None:
    ws = await connect(client)
    call = '{"type":"rpcCall","endpoint":"listLoaded","callId":%d,"parameter":%s}'
    await ws.send_str(call % (7, deep(5000)))  # too deep to decode at all
    reply = await frame(ws)
    assert reply["type"] == "rpcError" and reply["callId"] == 7
    assert reply["error"]["errorData"]["code"] == "invalid_json"
    await ws.send_str(call % (8, deep(65)))
    reply = await frame(ws)
    assert reply["callId"] == 8 and "64 levels" in reply["error"]["title"]
    await ws.send_str(call % (9, '{"a":"\\udc00"}'))
    reply = await frame(ws)
    assert reply["callId"] == 9
    assert reply["error"]["errorData"] == {"code": "invalid_parameter", "param": "parameter.a"}
    load = {
        "type": "channelCreate",
        "endpoint": "loadModel",
        "channelId": 0,
        "creationParameter": {"modelKey": MODEL, "ttlMs": float("nan")},
    }
    await ws.send_str(json.dumps(load))  # NaN, as Python's json writes it
    reply = await frame(ws)
    assert reply["type"] == "channelError" and reply["channelId"] == 0
    assert reply["error"]["errorData"] == {
        "code": "invalid_parameter",
        "param": "creationParameter.ttlMs",
    }
    await ws.send_str("[1, 2]")  # opens nothing: a warning
    assert (await frame(ws))["type"] == "communicationWarning"
    await ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 10})
    assert (await frame(ws))["type"] == "rpcResult"  # the socket serves on
    await ws.close()


async def test_a_frame_over_the_bound_is_answered(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", 4096)
    ws = await connect(client)
    big = {"type": "rpcCall", "endpoint": "listLoaded", "callId": 3, "parameter": "x" * 5000}
    await ws.send_json(big)
    reply = await frame(ws)
    assert reply["type"] == "rpcError" and reply["callId"] == 3
    assert reply["error"]["errorData"]["code"] == "payload_too_large"
    await ws.close()


@pytest.mark.model
async def test_open_calls_are_bounded_and_channel_0_can_be_cancelled(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_OPEN", 1)
    ws = await connect(client)
    await ws.send_json(predict_request(0, "Write a long story about a dragon.", 2000))
    busy = cancelled = False
    while True:
        data = await frame(ws)
        if data.get("callId") == 5:
            assert data["type"] == "rpcError"
            assert data["error"]["errorData"]["code"] == "server_busy"
            busy = True
            await ws.send_json(
                {"type": "channelSend", "channelId": 0, "message": {"type": "cancel"}}
            )
            continue
        assert data["channelId"] == 0, data
        if data["type"] == "channelClose":
            break
        packet = data["message"]["type"]
        if packet == "fragment" and not busy and not cancelled:
            cancelled = True  # ask once: one call more than the bound
            await ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 5})
        if packet == "success":
            assert data["message"]["stats"]["stopReason"] == "userStopped"
    assert busy
    await ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 6})
    assert (await frame(ws))["type"] == "rpcResult"  # the channel's slot is free again
    await ws.close()


async def test_a_client_that_stops_reading_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame the client never takes ends the socket after the write bound (the prediction it
    belongs to then sees the client gone), instead of holding its slot for ever."""
    from aiohttp import web

    from lms.api import sse
    from lms.api.sdk.session import Session

    monkeypatch.setattr(sse, "WRITE_TIMEOUT", 0.05)

    class StalledSocket:
        closed = False

        async def send_str(self, data: str) -> None:
            await asyncio.Event().wait()  # the client's window never opens

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    transport = Transport()
    session = Session(
        web.Application(),
        "llm",
        StalledSocket(),  # type: ignore[arg-type]
        {},
        None,
        transport,  # type: ignore[arg-type]
    )
    with pytest.raises(ConnectionResetError):
        await session.send({"type": "keepAliveAck"})
    assert transport.aborted
