"""The SDK WebSocket seen from a raw client, for the protocol and bounds tests: connecting with
an auth packet, reading frames, one RPC call, a ``predict`` channel request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"
GUEST = {"authVersion": 1, "clientIdentifier": "guest:abc", "clientPasskey": "def"}
Client = TestClient  # type: ignore[type-arg]
Socket = aiohttp.ClientWebSocketResponse


def packet(token: str) -> dict[str, Any]:
    """The auth packet the SDK derives from a token (``sk-lm-<id>:<secret>``)."""
    identifier, secret = token.removeprefix("sk-lm-").split(":")
    return {"authVersion": 1, "clientIdentifier": identifier, "clientPasskey": secret}


def require_auth(home: Path) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[auth]\nrequired = true\n")


async def frame(ws: Socket, timeout: float = 240.0) -> dict[str, Any]:
    """The next frame, which must be a JSON object in a text frame. The timeout is a liveness
    bound only (a frame may wait for a model load on a busy machine), never a speed check."""
    message = await ws.receive(timeout=timeout)
    assert message.type == WSMsgType.TEXT, message
    data = json.loads(message.data)
    assert isinstance(data, dict)
    return data


async def connect(client: Client, path: str = "/llm", auth: dict[str, Any] = GUEST) -> Socket:
    ws = await client.ws_connect(path)
    await ws.send_json(auth)
    assert await frame(ws) == {"success": True}
    return ws


async def call(ws: Socket, endpoint: str, parameter: Any = None, call_id: int = 1) -> Any:
    message: dict[str, Any] = {"type": "rpcCall", "endpoint": endpoint, "callId": call_id}
    if parameter is not None:
        message["parameter"] = parameter
    await ws.send_json(message)
    reply = await frame(ws)
    assert reply["callId"] == call_id
    return reply


async def channel_frames(ws: Socket, channel_id: int) -> AsyncIterator[dict[str, Any]]:
    """Frames of one channel until its channelClose or channelError (included)."""
    while True:
        data = await frame(ws)
        assert data.get("channelId") == channel_id, data
        yield data
        if data["type"] in ("channelClose", "channelError"):
            return


def predict_request(channel_id: int, text: str, max_tokens: int) -> dict[str, Any]:
    """A greedy ``predict`` of ``max_tokens`` tokens for one user message."""
    fields = [
        {
            "key": "llm.prediction.maxPredictedTokens",
            "value": {"checked": True, "value": max_tokens},
        },
        {"key": "llm.prediction.temperature", "value": 0.0},
    ]
    return {
        "type": "channelCreate",
        "endpoint": "predict",
        "channelId": channel_id,
        "creationParameter": {
            "modelSpecifier": {"type": "query", "query": {"identifier": MODEL}},
            "history": {
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]
            },
            "predictionConfigStack": {
                "layers": [{"layerName": "apiOverride", "config": {"fields": fields}}]
            },
        },
    }
