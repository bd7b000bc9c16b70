"""The SDK WebSocket protocol on the wire (docs/API.md, SDK rules):
auth packet timing and refusals, no unsolicited frames, error objects, per-socket ids, unknown
endpoints, terminal packet before close, cancel, and calls served while a generation runs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from lms.api.sdk import records
from lms.api.sdk import session as sdk_session
from lms.api.state import AUTH
from lms.auth import audit
from lms.auth.permissions import Permission
from lms.auth.registry import Registry
from lms.inference.manager import ModelManager

from .sdkwire import (
    GUEST,
    MODEL,
    Client,
    call,
    channel_frames,
    connect,
    frame,
    packet,
    predict_request,
    require_auth,
)


@pytest.fixture
def tokens(lms_home: Path) -> dict[str, str]:
    registry = Registry()
    past = Registry(clock=lambda: datetime.now(UTC) - timedelta(days=10))
    made = {
        "inference": registry.create("sdk-inference")[1],
        "models": registry.create("sdk-models", permissions={Permission.MODELS})[1],
        "other": registry.create("sdk-other", models=["someone/*"])[1],
        "expired": past.create("sdk-expired", expires_at=datetime.now(UTC) - timedelta(days=1))[1],
        "revoked": registry.create("sdk-revoked")[1],
    }
    registry.remove("sdk-revoked")
    made["unknown"] = "sk-lm-Zz9Zz9Zz:" + "A1" * 10
    require_auth(lms_home)
    return made


# --- the auth packet ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/llm", "/embedding", "/system", "/files", "/repository"])
async def test_every_namespace_upgrades_and_accepts_a_guest_with_auth_off(
    client: Client, path: str
) -> None:
    ws = await connect(client, path)
    await ws.close()


async def test_auth_packet_must_come_in_time(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdk_session, "AUTH_TIMEOUT", 0.2)
    ws = await client.ws_connect("/llm")
    reply = await frame(ws)  # the refusal comes first, then the close
    assert reply["success"] is False
    assert "no authentication packet within" in reply["error"]
    closing = await ws.receive(timeout=60)
    assert closing.type == WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


@pytest.mark.parametrize(
    "first",
    [
        "not json",
        json.dumps({"authVersion": 2, "clientIdentifier": "a", "clientPasskey": "b"}),
        json.dumps({"authVersion": 1, "clientIdentifier": "a"}),
        json.dumps({"authVersion": 1, "clientIdentifier": "a", "clientPasskey": "x" * 300}),
        json.dumps({"type": "rpcCall", "endpoint": "listLoaded", "callId": 1}),
    ],
)
async def test_first_frame_must_be_the_auth_packet(client: Client, first: str) -> None:
    ws = await client.ws_connect("/llm")
    await ws.send_str(first)
    reply = await frame(ws)
    assert reply["success"] is False
    assert isinstance(reply["error"], str) and reply["error"]
    assert (await ws.receive(timeout=60)).type == WSMsgType.CLOSE


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (None, "requires an API token"),
        ("malformed", "malformed"),
        ("unknown", "not valid"),
        ("revoked", "not valid"),
        ("expired", "expired"),
    ],
)
async def test_auth_on_refuses_bad_packets(
    client: Client, tokens: dict[str, str], kind: str | None, words: str
) -> None:
    if kind is None:
        auth = GUEST
    elif kind == "malformed":
        auth = {"authVersion": 1, "clientIdentifier": "abcDEF78", "clientPasskey": "short"}
    else:
        auth = packet(tokens[kind])
    ws = await client.ws_connect("/system")
    await ws.send_json(auth)
    reply = await frame(ws)
    assert reply["success"] is False
    assert words in reply["error"]
    assert auth["clientPasskey"] not in reply["error"]
    assert (await ws.receive(timeout=60)).type == WSMsgType.CLOSE
    refused = [e for e in audit.read() if e.get("event") == "request_refused"]
    assert refused and refused[-1]["route"] == "/system:auth"


async def test_auth_on_accepts_a_valid_token(client: Client, tokens: dict[str, str]) -> None:
    ws = await connect(client, "/system", packet(tokens["models"]))
    reply = await call(ws, "listDownloadedModels")
    assert [m["modelKey"] for m in reply["result"]] == [MODEL]
    await ws.close()


async def test_foreign_origin_refused_on_upgrade(client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/llm", headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403


async def test_plain_get_of_a_socket_path_is_a_clear_400(client: Client) -> None:
    response = await client.get("/llm")
    assert response.status == 400
    assert "WebSocket" in (await response.json())["error"]["message"]


# --- per-call checks -----------------------------------------------------------------------------


async def test_revoked_while_open_refuses_the_next_call(
    client: Client, tokens: dict[str, str]
) -> None:
    registry = Registry()
    _, token = registry.create("sdk-short-lived")
    ws = await connect(client, "/llm", packet(token))
    assert (await call(ws, "listLoaded", call_id=1))["result"] == []
    registry.remove("sdk-short-lived")
    reply = await call(ws, "listLoaded", call_id=2)
    assert reply["type"] == "rpcError"
    assert reply["error"]["errorData"]["code"] == "invalid_api_key"
    await ws.close()


async def test_permissions_per_endpoint(client: Client, tokens: dict[str, str]) -> None:
    ws = await connect(client, "/llm", packet(tokens["inference"]))
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "loadModel",
            "channelId": 1,
            "creationParameter": {"modelKey": MODEL, "loadConfigStack": {"layers": []}},
        }
    )
    refused = await frame(ws)
    assert refused["type"] == "channelError" and refused["channelId"] == 1
    assert refused["error"]["errorData"]["code"] == "insufficient_permissions"
    assert "'models'" in refused["error"]["title"]
    await ws.close()
    weak = await connect(client, "/llm", packet(tokens["models"]))
    await weak.send_json(predict_request(1, "hi", 1))
    refused = await frame(weak)
    assert refused["type"] == "channelError"
    assert "'inference'" in refused["error"]["title"]
    await weak.close()


async def test_allowlist_filters_listings_and_refuses_models(
    client: Client, tokens: dict[str, str]
) -> None:
    system = await connect(client, "/system", packet(tokens["other"]))
    assert (await call(system, "listDownloadedModels"))["result"] == []
    await system.close()
    ws = await connect(client, "/llm", packet(tokens["other"]))
    await ws.send_json(
        {"type": "channelCreate", "endpoint": "getOrLoad", "channelId": 4,
         "creationParameter": {"identifier": MODEL}}
    )  # fmt: skip
    hidden = await frame(ws)
    await ws.send_json(
        {"type": "channelCreate", "endpoint": "getOrLoad", "channelId": 5,
         "creationParameter": {"identifier": "nobody/nothing"}}
    )  # fmt: skip
    missing = await frame(ws)
    assert missing["error"]["displayData"]["code"] == "generic.pathNotFound"
    assert MODEL not in json.dumps(missing)  # only what this token may use is listed
    # A model outside the allowlist answers exactly like a missing one.
    assert hidden["type"] == "channelError"
    hidden.pop("channelId"), missing.pop("channelId")
    assert json.dumps(hidden) == json.dumps(missing).replace("nobody/nothing", MODEL)
    # Only the audit log hears that a hidden model was named (the missing one is not a refusal).
    assert refused_in_audit() == [("/llm:getOrLoad", "model_not_allowed")]
    await ws.close()


def refused_in_audit() -> list[tuple[str, str]]:
    return [(e["route"], e["reason"]) for e in audit.read() if e.get("event") == "request_refused"]


async def test_loaded_instances_outside_the_allowlist_are_invisible(
    client: Client, tokens: dict[str, str], manager: ModelManager
) -> None:
    secret = await manager.load(MODEL, identifier="secret", context_length=256)
    ws = await connect(client, "/llm", packet(tokens["other"]))
    assert (await call(ws, "listLoaded"))["result"] == []
    replies = []
    for call_id, name in enumerate(["secret", "nothing"], start=1):
        spec = {"specifier": {"type": "query", "query": {"identifier": name}}}
        info = await call(ws, "getModelInfo", spec, call_id=call_id)
        unload = await call(ws, "unloadModel", {"identifier": name}, call_id=10 + call_id)
        replies.append((info["error"], unload["error"]))
    (info_hidden, unload_hidden), (info_missing, unload_missing) = replies
    assert info_hidden["errorData"]["code"] == "model_not_found"
    assert json.dumps(info_hidden) == json.dumps(info_missing).replace("nothing", "secret")
    assert json.dumps(unload_hidden) == json.dumps(unload_missing).replace("nothing", "secret")
    reference = {"specifier": {"type": "instanceReference", "instanceReference": "x"}}
    reference["specifier"]["instanceReference"] = records.instance_reference(secret)
    by_reference = await call(ws, "getModelInfo", reference, call_id=21)
    assert by_reference["error"]["errorData"]["code"] == "instance_not_found"
    assert [i.identifier for i in manager.instances()] == ["secret"]
    # Only the hidden instance's lookups are refusals (twice, counted in one line), beside the
    # unloads this token may not make at all.
    assert sorted(refused_in_audit()) == [
        ("/llm:getModelInfo", "model_not_allowed"),
        ("/llm:unloadModel", "insufficient_permissions"),
    ]
    client.app[AUTH].refusals.flush()  # the repeat is counted at the end of its window
    counts = [e.get("count", 1) for e in audit.read() if e.get("route") == "/llm:getModelInfo"]
    assert sum(counts) == 2
    await ws.close()


def load_frame(channel_id: int, endpoint: str, **extra: Any) -> str:
    """A channelCreate as text: ``extra`` values are written as given, so ``NaN`` can be sent."""
    fields = "".join(f', "{name}": {value}' for name, value in extra.items())
    key = "modelKey" if endpoint == "loadModel" else "identifier"
    return (
        f'{{"type": "channelCreate", "endpoint": "{endpoint}", "channelId": {channel_id},'
        f' "creationParameter": {{"{key}": "{MODEL}"{fields}}}}}'
    )


@pytest.mark.parametrize(
    ("endpoint", "name", "value"),
    [
        ("loadModel", "ttlMs", "NaN"),
        ("loadModel", "ttlMs", "Infinity"),
        ("loadModel", "ttlMs", "-Infinity"),
        ("loadModel", "ttlMs", "1e300"),
        ("loadModel", "ttlMs", str(30 * 86400 * 1000 + 1)),
        ("loadModel", "ttlMs", "0"),
        ("loadModel", "ttlMs", str(10**401)),
        ("getOrLoad", "loadTtlMs", "NaN"),
        ("getOrLoad", "loadTtlMs", "1e300"),
        ("loadModel", "identifier", '"\\ud800"'),
        ("loadModel", "identifier", '"a\\u0000b"'),
        ("loadModel", "identifier", '"tab\\there"'),
        ("loadModel", "identifier", '"' + "x" * 129 + '"'),
        ("loadModel", "identifier", '""'),
    ],
)
async def test_bad_load_parameters_get_a_clear_error(
    client: Client, manager: ModelManager, endpoint: str, name: str, value: str
) -> None:
    ws = await connect(client, "/llm")
    await ws.send_str(load_frame(3, endpoint, **{name: value}))
    refused = await frame(ws)
    assert refused["type"] == "channelError" and refused["channelId"] == 3, refused
    # Values no JSON decoder should pass on (NaN, Infinity, 1e400, integers past 64 bits, lone
    # surrogates) are refused while the frame is decoded, naming their place in the frame.
    param = refused["error"]["errorData"]["param"]
    assert refused["error"]["errorData"]["code"] == "invalid_parameter"
    assert param in (name, f"creationParameter.{name}"), refused
    assert manager.instances() == []
    assert (await call(ws, "listLoaded"))["result"] == []  # the socket still answers
    await ws.close()


async def test_context_length_of_an_sdk_load_is_bounded(
    client: Client, tokens: dict[str, str], manager: ModelManager
) -> None:
    ws = await connect(client, "/llm", packet(tokens["inference"]))
    refusals = []
    for channel_id, length in enumerate([8192, 1_000_000_000], start=1):
        fields = [{"key": "llm.load.contextLength", "value": length}]
        stack = {"layers": [{"layerName": "apiOverride", "config": {"fields": fields}}]}
        await ws.send_json(
            {"type": "channelCreate", "endpoint": "getOrLoad", "channelId": channel_id,
             "creationParameter": {"identifier": MODEL, "loadConfigStack": stack}}
        )  # fmt: skip
        refusals.append((await frame(ws))["error"]["errorData"])
    assert refusals == [
        {"code": "insufficient_permissions", "param": "contextLength"},
        {"code": "invalid_parameter", "param": "contextLength"},
    ]
    assert manager.instances() == []
    refused = [
        (e["route"], e["reason"]) for e in audit.read() if e.get("event") == "request_refused"
    ]
    assert refused == [("/llm:getOrLoad", "insufficient_permissions")]
    await ws.close()


# --- framing, ids, unknown endpoints -------------------------------------------------------------


async def test_unknown_endpoints_get_a_warning_and_an_error(client: Client) -> None:
    ws = await connect(client, "/llm")
    await ws.send_json({"type": "rpcCall", "endpoint": "noSuchThing", "callId": 7})
    warning = await frame(ws)
    assert warning["type"] == "communicationWarning"
    assert "noSuchThing" in warning["warning"]
    error = await frame(ws)
    assert error["type"] == "rpcError" and error["callId"] == 7
    assert isinstance(error["error"], dict) and "noSuchThing" in error["error"]["title"]
    # an endpoint of another namespace is unknown here; a channel endpoint is not an rpc
    await ws.send_json({"type": "channelCreate", "endpoint": "embedString", "channelId": 3})
    assert (await frame(ws))["type"] == "communicationWarning"
    error = await frame(ws)
    assert error["type"] == "channelError" and error["channelId"] == 3
    await ws.send_json({"type": "rpcCall", "endpoint": "predict", "callId": 8})
    assert (await frame(ws))["type"] == "communicationWarning"
    assert (await frame(ws))["callId"] == 8
    await ws.close()


async def test_no_unsolicited_frames(client: Client) -> None:
    """Junk gets a warning (never a frame the SDK cannot route); keepAlive gets its ack only
    when asked; every other frame answers an id."""
    ws = await connect(client, "/system")
    await ws.send_str("{not json")
    await ws.send_json({"type": "mystery", "x": 1})
    await ws.send_bytes(b"\x00\x01")
    await ws.send_json({"type": "channelSend", "channelId": 99, "message": {"type": "cancel"}})
    await ws.send_json({"type": "keepAlive"})
    await ws.send_json({"type": "rpcCall", "endpoint": "version", "callId": 1})
    seen = [await frame(ws) for _ in range(5)]
    assert [f["type"] for f in seen[:3]] == ["communicationWarning"] * 3
    assert seen[3] == {"type": "keepAliveAck"}
    assert seen[4]["type"] == "rpcResult" and seen[4]["result"]["version"]
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.3)  # nothing else arrives on its own
    await ws.close()


async def test_errors_are_objects(client: Client) -> None:
    ws = await connect(client, "/llm")
    reply = await call(ws, "unloadModel", {"identifier": "nope"})
    assert reply["type"] == "rpcError"
    error = reply["error"]
    assert isinstance(error, dict) and error["title"]
    assert error["displayData"]["code"] == "generic.noModelMatchingQuery"
    assert error["errorData"]["code"] == "model_not_found"
    bad = await call(ws, "tokenize", {"specifier": "nope"}, call_id=2)
    assert bad["error"]["errorData"] == {"code": "invalid_parameter", "param": "specifier"}
    await ws.close()


async def test_ids_are_per_socket_and_calls_interleave(client: Client) -> None:
    first, second = await connect(client, "/system"), await connect(client, "/system")
    for ws in (first, second):
        for call_id in (5, 2, 9):
            await ws.send_json({"type": "rpcCall", "endpoint": "version", "callId": call_id})
    for ws in (first, second):
        answered = {(await frame(ws))["callId"] for _ in range(3)}
        assert answered == {5, 2, 9}
    await first.close()
    await second.close()


async def test_files_upload(client: Client) -> None:
    ws = await connect(client, "/files")
    reply = await call(ws, "uploadFileBase64", {"name": "a.txt", "contentBase64": "aGVsbG8="})
    result = reply["result"]
    assert result["fileType"] == "text/plain" and result["sizeBytes"] == 5
    assert result["identifier"]
    png = await call(
        ws, "uploadFileBase64", {"name": "x.png", "contentBase64": "iVBORw0KGgo="}, call_id=2
    )
    assert png["result"]["fileType"] == "image"
    bad = await call(ws, "uploadFileBase64", {"name": "b", "contentBase64": "@@"}, call_id=3)
    assert bad["error"]["errorData"]["param"] == "contentBase64"
    await ws.close()


async def test_repository_answers_an_error_not_silence(client: Client) -> None:
    ws = await connect(client, "/repository")
    reply = await call(ws, "searchModels", {"searchTerm": "x"})
    assert reply["type"] == "rpcError"
    assert "lms get URL" in reply["error"]["suggestion"]
    await ws.close()


# --- with the real model -------------------------------------------------------------------


async def test_predict_streams_then_terminal_packet_then_close(client: Client) -> None:
    ws = await connect(client)
    await ws.send_json(predict_request(3, "The capital of France is", 6))
    frames = [f async for f in channel_frames(ws, 3)]
    kinds = [f["type"] if f["type"] != "channelSend" else f["message"]["type"] for f in frames]
    assert kinds[-2:] == ["success", "channelClose"]
    assert kinds.count("success") == 1
    assert "promptProcessingProgress" in kinds
    fragments = [m["fragment"] for m in (f.get("message", {}) for f in frames) if "fragment" in m]
    assert fragments and all(f["content"] and f["reasoningType"] == "none" for f in fragments)
    success = frames[-2]["message"]
    assert success["stats"]["stopReason"] == "maxPredictedTokensReached"
    assert success["stats"]["predictedTokensCount"] == 6
    assert success["modelInfo"]["identifier"] == MODEL
    await ws.close()


@pytest.mark.model
async def test_cancel_ends_in_success_and_other_calls_are_served_meanwhile(
    client: Client,
) -> None:
    ws = await client.ws_connect("/llm", autoping=False)
    await ws.send_json(GUEST)
    assert await frame(ws) == {"success": True}
    await ws.send_json(predict_request(1, "Write a long story about a dragon.", 2000))
    fragments = 0
    pong = listed = stopped = reused = False
    while True:
        message = await ws.receive(timeout=60)
        if message.type == WSMsgType.PONG:
            pong = True
            continue
        assert message.type == WSMsgType.TEXT
        data = json.loads(message.data)
        if data.get("callId") == 2:
            listed = data["type"] == "rpcResult" and data["result"][0]["identifier"] == MODEL
            continue
        if data["type"] == "communicationWarning":
            reused = "already in use" in data["warning"]
            continue
        assert data["channelId"] == 1
        if data["type"] == "channelClose":
            break
        packet_type = data["message"]["type"]
        if packet_type == "fragment":
            fragments += 1
            if fragments == 1:  # a pong, a listing and a refused id reuse while generating
                await ws.ping()
                await ws.send_json({"type": "rpcCall", "endpoint": "listLoaded", "callId": 2})
                await ws.send_json(predict_request(1, "again", 1))
            if fragments == 5:
                await ws.send_json(
                    {"type": "channelSend", "channelId": 1, "message": {"type": "cancel"}}
                )
        if packet_type == "success":
            assert data["message"]["stats"]["stopReason"] == "userStopped"
            assert data["message"]["stats"]["predictedTokensCount"] < 100
            stopped = True
    assert stopped and pong and listed and reused
    await ws.close()


@pytest.mark.model
async def test_complete_mode_uses_the_raw_prompt(client: Client) -> None:
    ws = await connect(client)
    template = await call(
        ws,
        "applyPromptTemplate",
        {
            "specifier": {"type": "query", "query": {"identifier": MODEL}},
            "history": {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            },
            "predictionConfigStack": {"layers": []},
            "opts": {"omitBosToken": True},
        },
    )
    assert template["result"]["formatted"].startswith("<start_of_turn>user\nhi")
    raw = predict_request(1, "The capital of France is", 3)
    layer = {
        "layerName": "completeModeFormatting",
        "config": {"fields": [{"key": "llm.prediction.promptTemplate", "value": {
            "type": "jinja", "stopStrings": [], "jinjaPromptTemplate": {
                "template": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
                "bosToken": "", "eosToken": ""}}}]},
    }  # fmt: skip
    raw["creationParameter"]["predictionConfigStack"]["layers"].append(layer)
    await ws.send_json(raw)
    frames = [f async for f in channel_frames(ws, 1)]
    success = frames[-2]["message"]
    # "<bos>The capital of France is" is 6 tokens; the chat template would add a dozen more
    assert success["stats"]["promptTokensCount"] == 6
    await ws.close()


def test_every_served_endpoint_is_in_the_permission_table() -> None:
    from lms.api.sdk import ENDPOINTS
    from lms.auth.permissions import SDK_ACCESS

    assert set(ENDPOINTS) == set(SDK_ACCESS)


@pytest.mark.model
async def test_tool_calls_become_tool_call_events(client: Client) -> None:
    """A model's call of an offered tool ends the prediction with tool-call events (``act()``);
    a grammar makes this small base model write one."""
    ws = await connect(client)
    request = predict_request(2, "What is 1 + 2?", 40)
    call_text = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    tool = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            },
        },
    }
    fields = request["creationParameter"]["predictionConfigStack"]["layers"][0]["config"]["fields"]
    fields += [
        {"key": "llm.prediction.tools", "value": {"type": "toolArray", "tools": [tool]}},
        {
            "key": "llm.prediction.structured",
            "value": {"type": "gbnf", "gbnfGrammar": f"root ::= {json.dumps(call_text)}"},
        },
    ]
    await ws.send_json(request)
    messages = [f["message"] for f in [f async for f in channel_frames(ws, 2)][:-1]]
    kinds = [m["type"] for m in messages]
    assert "fragment" not in kinds  # the call is not shown as text
    assert kinds[-3:] == ["toolCallGenerationStart", "toolCallGenerationEnd", "success"]
    request_sent = messages[-2]["toolCallRequest"]
    assert request_sent["name"] == "add" and request_sent["arguments"] == {"a": 1, "b": 2}
    assert request_sent["id"] == messages[-3]["toolCallId"]
    assert messages[-1]["stats"]["stopReason"] == "toolCalls"
    await ws.close()
