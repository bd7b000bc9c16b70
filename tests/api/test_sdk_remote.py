"""Remote engines' models on the SDK sockets (docs/API.md, SDK endpoints):
listed as downloaded and as loaded, ``getOrLoad`` answering ``alreadyLoaded``, ``predict``
streaming the upstream's answer, what only a local engine does refused with
``remote_unsupported``, and the token's allowlist applied as to local models.

The upstream is :class:`FakeUpstream`, an in-process OpenAI-compatible server (plumbing: what is
tested is how the SDK frames reach it and how its stream comes back); its answer depends on the
request, so a reply that did not come from it cannot pass.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lmstudio._sdk_models import LlmInfo, LlmInstanceInfo, LlmPredictionStats

from lms.api.app import build_api_app
from lms.api.state import AUTH, REMOTES, Listener
from lms.auth import audit
from lms.auth.permissions import Permission
from lms.auth.registry import Registry
from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager

from .sdkwire import MODEL, Client, call, channel_frames, connect, frame, packet

CONTEXT = 4096  # what the fake says of m1's context (m2 says nothing)


class FakeUpstream:
    """An OpenAI-compatible server listing ``m1`` and ``m2``: a chat is answered with
    ``"you said: <last user message>"`` (or, when tools are offered, a call of the first one with
    ``{"a": 1, "b": 2}`` in two fragments), a completion with ``"<prompt> and so on"``, streamed
    in pieces of 4 characters with usage at the end (unless ``report_usage`` is turned off); every
    request body is kept in ``received``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.port = 0
        self.report_usage = True
        #: When set, a stream stops after its first piece until this is set.
        self.hold: asyncio.Event | None = None
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completion)

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": "m1", "object": "model", "context_length": CONTEXT},
            {"id": "m2", "object": "model"},
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(("chat", body))
        if body.get("tools"):
            return await self._call(request, body["tools"][0]["function"]["name"])
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return await self._stream(request, f"you said: {user}", len(body["messages"]), "delta")

    async def _call(self, request: web.Request, name: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        fragments = [
            {"index": 0, "id": "call_1", "function": {"name": name, "arguments": '{"a": 1'}},
            {"index": 0, "function": {"arguments": ', "b": 2}'}},
        ]
        for fragment in fragments:
            delta = {"tool_calls": [fragment]}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            await response.write(_event({"id": "x", "choices": [choice]}))
        end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        await response.write(_event({"id": "x", "choices": [end]}))
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(("completion", body))
        return await self._stream(request, f"{body['prompt']} and so on", 1, "text")

    async def _stream(
        self, request: web.Request, text: str, prompt_tokens: int, shape: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        for piece in pieces:
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            choice.update({"delta": {"content": piece}} if shape == "delta" else {"text": piece})
            await response.write(_event({"id": "x", "choices": [choice]}))
            if self.hold is not None:
                await self.hold.wait()
        end: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        end.update({"delta": {}} if shape == "delta" else {"text": ""})
        await response.write(_event({"id": "x", "choices": [end]}))
        if self.report_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)}
            await response.write(_event({"id": "x", "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        return response


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    server = TestServer(fake.app)
    await server.start_server()
    assert server.port is not None
    fake.port = server.port
    yield fake
    await server.close()


def write_config(home: Path, port: int, *, auth: bool = False) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f'[remotes.up]\nurls = ["http://127.0.0.1:{port}"]\n'
    path.write_text(text + ("[auth]\nrequired = true\n" if auth else ""))


async def serve(manager: ModelManager) -> AsyncIterator[Client]:
    app = build_api_app(manager, ConfigWatcher({}), Listener("127.0.0.1", 0))
    async with TestClient(TestServer(app)) as test_client:
        # A liveness bound only: the first poll of the fake answers at once.
        await asyncio.wait_for(app[REMOTES].engines["up"].polled.wait(), 120)
        assert app[REMOTES].find("up/m1") is not None
        yield test_client


@pytest.fixture
async def client(
    manager: ModelManager, lms_home: Path, upstream: FakeUpstream
) -> AsyncIterator[Client]:
    write_config(lms_home, upstream.port)
    async for test_client in serve(manager):
        yield test_client


@pytest.fixture
def tokens(lms_home: Path, upstream: FakeUpstream) -> dict[str, str]:
    registry = Registry()
    made = {
        "all": registry.create("sdk-all", permissions={Permission.INFERENCE, Permission.MODELS})[1],
        "m1": registry.create("sdk-m1", models=["up/m1"])[1],
        "local": registry.create(
            "sdk-local", permissions={Permission.INFERENCE, Permission.MODELS}, models=["google/*"]
        )[1],
    }
    write_config(lms_home, upstream.port, auth=True)
    return made


@pytest.fixture
async def auth_client(manager: ModelManager, tokens: dict[str, str]) -> AsyncIterator[Client]:
    async for test_client in serve(manager):
        yield test_client


def query(name: str) -> dict[str, Any]:
    return {"type": "query", "query": {"identifier": name}}


def predict_frame(
    channel_id: int, specifier: dict[str, Any], text: str, *fields: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "channelCreate",
        "endpoint": "predict",
        "channelId": channel_id,
        "creationParameter": {
            "modelSpecifier": specifier,
            "history": {
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]
            },
            "predictionConfigStack": {
                "layers": [{"layerName": "apiOverride", "config": {"fields": list(fields)}}]
            },
        },
    }


async def predict(ws: Any, request: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text of a predict's fragments, and every frame of its channel."""
    await ws.send_json(request)
    frames = [f async for f in channel_frames(ws, request["channelId"])]
    text = "".join(
        f["message"]["fragment"]["content"]
        for f in frames
        if f["type"] == "channelSend" and f["message"]["type"] == "fragment"
    )
    return text, frames


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] in ("rpcError", "channelError"), reply
    code = reply["error"]["errorData"]["code"]
    assert isinstance(code, str)
    return code


# --- listings ------------------------------------------------------------------------------------


async def test_remote_models_are_listed_as_downloaded_in_the_sdk_schema(client: Client) -> None:
    ws = await connect(client, "/system")
    models = (await call(ws, "listDownloadedModels"))["result"]
    assert [m["modelKey"] for m in models] == [MODEL, "up/m1", "up/m2"]
    m1, m2 = models[1], models[2]
    assert m1["path"] == "up/m1" and m1["remote"] == "up"
    assert m1["displayName"] == "m1 (remote up)"
    assert (m1["maxContextLength"], m1["sizeBytes"]) == (CONTEXT, 0)
    assert m2["maxContextLength"] > 0  # the upstream did not say: the default
    for record in (m1, m2):
        parsed = LlmInfo._from_any_api_dict(record)  # the SDK's own schema accepts it
        assert parsed.model_key == record["modelKey"]
    await ws.close()


async def test_remote_models_are_loaded_on_llm_and_not_on_embedding(client: Client) -> None:
    ws = await connect(client, "/llm")
    loaded = (await call(ws, "listLoaded"))["result"]
    assert [i["identifier"] for i in loaded] == ["up/m1", "up/m2"]
    assert loaded[0]["instanceReference"] == "remote:up/m1"
    assert loaded[0]["contextLength"] == CONTEXT
    LlmInstanceInfo._from_any_api_dict(loaded[0])
    info = (await call(ws, "getModelInfo", {"specifier": query("UP/M1")}, call_id=2))["result"]
    assert info == loaded[0]
    config = (await call(ws, "getLoadConfig", {"specifier": query("up/m1")}, call_id=3))["result"]
    assert config == {"fields": [{"key": "llm.load.contextLength", "value": CONTEXT}]}
    first = (await call(ws, "getModelInfo", {"specifier": {"type": "query"}}, call_id=4))["result"]
    assert first["identifier"] == "up/m1"  # nothing local is loaded: the first remote model
    await ws.close()
    ws = await connect(client, "/embedding")
    assert (await call(ws, "listLoaded"))["result"] == []
    reply = await call(ws, "getModelInfo", {"specifier": query("up/m1")})
    assert error_code(reply) == "remote_unsupported"
    assert "/v1/embeddings" in reply["error"]["suggestion"]
    await ws.close()


async def test_a_name_under_a_remote_never_falls_back(client: Client) -> None:
    ws = await connect(client, "/llm")
    reply = await call(ws, "getModelInfo", {"specifier": query("up/nope")})
    assert error_code(reply) == "model_not_found"
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "getOrLoad",
            "channelId": 1,
            "creationParameter": {"identifier": "up/nope"},
        }
    )
    answer = await frame(ws)
    assert error_code(answer) == "model_not_found"
    display = answer["error"]["displayData"]
    assert display["code"] == "generic.pathNotFound"
    assert display["availablePathsSample"] == ["up/m1", "up/m2"]
    await ws.close()


# --- getOrLoad and predict ---------------------------------------------------------------------


async def test_get_or_load_answers_already_loaded(client: Client, manager: ModelManager) -> None:
    ws = await connect(client, "/llm")
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "getOrLoad",
            "channelId": 1,
            "creationParameter": {"identifier": "up/m1", "loadTtlMs": 60_000},
        }
    )
    frames = [f async for f in channel_frames(ws, 1)]
    assert [f["type"] for f in frames] == ["channelSend", "channelClose"]
    message = frames[0]["message"]
    assert message["type"] == "alreadyLoaded"
    assert message["info"]["identifier"] == "up/m1"
    assert manager.instances() == []  # nothing was loaded here
    await ws.close()


async def test_predict_streams_the_upstreams_answer(client: Client, upstream: FakeUpstream) -> None:
    ws = await connect(client, "/llm")
    limit = {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": 50}}
    text, frames = await predict(ws, predict_frame(1, query("up/m1"), "hello there", limit))
    assert text == "you said: hello there"
    kind, body = upstream.received[-1]
    assert kind == "chat" and body["model"] == "m1" and body["max_tokens"] == 50
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    success = frames[-2]["message"]
    assert success["type"] == "success" and frames[-1]["type"] == "channelClose"
    stats = success["stats"]
    assert stats["stopReason"] == "eosFound"
    assert (stats["promptTokensCount"], stats["predictedTokensCount"]) == (1, 6)
    LlmPredictionStats._from_any_api_dict(stats)
    assert success["modelInfo"]["identifier"] == "up/m1"
    # The handle the SDK keeps names the model by its instance reference.
    reference = {"type": "instanceReference", "instanceReference": "remote:up/m2"}
    text, _ = await predict(ws, predict_frame(2, reference, "again"))
    assert text == "you said: again"
    assert upstream.received[-1][1]["model"] == "m2"
    await ws.close()


async def test_stats_without_the_upstreams_usage_have_no_counts(
    client: Client, upstream: FakeUpstream
) -> None:
    upstream.report_usage = False
    ws = await connect(client, "/llm")
    limit = {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": 50}}
    text, frames = await predict(ws, predict_frame(1, query("up/m1"), "no usage", limit))
    assert text == "you said: no usage"
    stats = frames[-2]["message"]["stats"]
    assert set(stats) == {"stopReason", "timeToFirstTokenSec"}
    assert stats["stopReason"] == "eosFound"
    assert LlmPredictionStats._from_any_api_dict(stats).predicted_tokens_count is None
    await ws.close()


async def test_a_cancelled_remote_prediction_ends_with_user_stopped(
    client: Client, upstream: FakeUpstream
) -> None:
    upstream.hold = asyncio.Event()
    try:
        ws = await connect(client, "/llm")
        await ws.send_json(predict_frame(1, query("up/m1"), "wait for it"))
        while (sent := await frame(ws))["message"]["type"] != "fragment":
            pass
        await ws.send_json({"type": "channelSend", "channelId": 1, "message": {"type": "cancel"}})
        frames = [sent] + [f async for f in channel_frames(ws, 1)]
        assert frames[-1]["type"] == "channelClose"
        success = frames[-2]["message"]
        assert success["type"] == "success"
        assert success["stats"]["stopReason"] == "userStopped"
        await ws.close()
    finally:
        upstream.hold.set()


async def test_get_or_load_refuses_a_context_length_for_a_remote_model(client: Client) -> None:
    ws = await connect(client, "/llm")
    field = {"key": "llm.load.contextLength", "value": 2048}
    stack = {"layers": [{"layerName": "apiOverride", "config": {"fields": [field]}}]}
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "getOrLoad",
            "channelId": 1,
            "creationParameter": {"identifier": "up/m1", "loadConfigStack": stack},
        }
    )
    reply = await frame(ws)
    assert error_code(reply) == "remote_unsupported"
    assert reply["error"]["errorData"]["param"] == "contextLength"
    await ws.close()


async def test_a_remote_models_tool_call_becomes_tool_call_events(
    client: Client, upstream: FakeUpstream
) -> None:
    parameters = {"type": "object", "properties": {"a": {"type": "integer"}}}
    tool = {"type": "function", "function": {"name": "add", "parameters": parameters}}
    tools = {"key": "llm.prediction.tools", "value": {"type": "toolArray", "tools": [tool]}}
    ws = await connect(client, "/llm")
    text, frames = await predict(ws, predict_frame(1, query("up/m1"), "What is 1 + 2?", tools))
    assert text == ""  # the call is not shown as text
    messages = [f["message"] for f in frames[:-1]]
    kinds = [m["type"] for m in messages]
    assert kinds[-3:] == ["toolCallGenerationStart", "toolCallGenerationEnd", "success"]
    sent = messages[-2]["toolCallRequest"]
    assert sent["name"] == "add" and sent["arguments"] == {"a": 1, "b": 2}
    assert messages[-1]["stats"]["stopReason"] == "toolCalls"
    offered = upstream.received[-1][1]["tools"]  # sent upstream natively, as OpenAI tools
    assert [t["function"]["name"] for t in offered] == ["add"]
    assert offered[0]["function"]["parameters"] == parameters
    await ws.close()


async def test_complete_sends_raw_text_to_the_upstreams_completions(
    client: Client, upstream: FakeUpstream
) -> None:
    ws = await connect(client, "/llm")
    request = predict_frame(1, query("up/m1"), "Once upon a time")
    request["creationParameter"]["predictionConfigStack"]["layers"].append(
        {
            "layerName": "completeModeFormatting",
            "config": {"fields": [{"key": "llm.prediction.promptTemplate", "value": {}}]},
        }
    )
    text, _ = await predict(ws, request)
    assert text == "Once upon a time and so on"
    kind, body = upstream.received[-1]
    assert kind == "completion" and body["prompt"] == "Once upon a time"
    await ws.close()


@pytest.mark.parametrize(
    ("field", "param"),
    [
        (
            {
                "key": "llm.prediction.structured",
                "value": {"type": "json", "jsonSchema": {"type": "object"}},
            },
            None,
        ),
        ({"key": "llm.prediction.speculativeDecoding.draftModel", "value": MODEL}, "draft_model"),
    ],
)
async def test_what_a_remote_cannot_honour_is_refused_before_the_upstream(
    client: Client, upstream: FakeUpstream, field: dict[str, Any], param: str | None
) -> None:
    ws = await connect(client, "/llm")
    await ws.send_json(predict_frame(1, query("up/m1"), "hi", field))
    reply = await frame(ws)
    assert error_code(reply) == "remote_unsupported"
    assert reply["error"]["errorData"].get("param") == param
    assert "up/m1" in reply["error"]["title"]
    assert upstream.received == []
    await ws.close()


# --- what only a local engine does -------------------------------------------------------------


async def test_load_unload_tokenize_and_templates_are_remote_unsupported(
    client: Client, upstream: FakeUpstream
) -> None:
    ws = await connect(client, "/llm")
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "loadModel",
            "channelId": 1,
            "creationParameter": {"modelKey": "up/m1"},
        }
    )
    reply = await frame(ws)
    assert error_code(reply) == "remote_unsupported"
    assert reply["error"]["errorData"]["param"] == "modelKey"
    assert "Loading is not available for the remote model 'up/m1'" in reply["error"]["title"]
    history = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("unloadModel", {"identifier": "up/m1"}),
        ("tokenize", {"specifier": query("up/m1"), "inputString": "hi"}),
        ("countTokens", {"specifier": query("up/m1"), "inputString": "hi"}),
        ("applyPromptTemplate", {"specifier": query("up/m1"), "history": history}),
    ]
    for call_id, (endpoint, parameter) in enumerate(calls, start=1):
        reply = await call(ws, endpoint, parameter, call_id=call_id)
        assert error_code(reply) == "remote_unsupported", endpoint
    assert upstream.received == []
    await ws.close()
    ws = await connect(client, "/embedding")
    reply = await call(ws, "embedString", {"modelSpecifier": query("up/m1"), "inputString": "x"})
    assert error_code(reply) == "remote_unsupported"
    await ws.close()


# --- the token's allowlist ---------------------------------------------------------------------


def hidden_in_audit() -> list[str]:
    return [
        e["route"]
        for e in audit.read()
        if e.get("event") == "request_refused" and e.get("reason") == "model_not_allowed"
    ]


async def test_remote_models_outside_the_allowlist_are_invisible(
    auth_client: Client, tokens: dict[str, str], upstream: FakeUpstream
) -> None:
    ws = await connect(auth_client, "/system", packet(tokens["m1"]))
    listed = (await call(ws, "listDownloadedModels"))["result"]
    assert [m["modelKey"] for m in listed] == ["up/m1"]
    await ws.close()
    ws = await connect(auth_client, "/system", packet(tokens["local"]))
    assert [m["modelKey"] for m in (await call(ws, "listDownloadedModels"))["result"]] == [MODEL]
    await ws.close()

    ws = await connect(auth_client, "/llm", packet(tokens["m1"]))
    assert [i["identifier"] for i in (await call(ws, "listLoaded"))["result"]] == ["up/m1"]
    missing = await call(ws, "getModelInfo", {"specifier": query("up/nope")}, call_id=2)
    hidden = await call(ws, "getModelInfo", {"specifier": query("up/m2")}, call_id=3)
    # Exactly like a missing one: same code, same lists (of what the token may use only).
    assert error_code(hidden) == error_code(missing) == "model_not_found"
    assert hidden["error"]["displayData"]["loadedModelsSample"] == ["up/m1"]
    assert (
        hidden["error"]["displayData"]["loadedModelsSample"]
        == missing["error"]["displayData"]["loadedModelsSample"]
    )
    await ws.send_json(predict_frame(4, query("up/m2"), "hi"))
    refused = await frame(ws)
    assert error_code(refused) == "model_not_found"
    assert refused["error"]["displayData"]["availablePathsSample"] == ["up/m1"]
    reference = {"type": "instanceReference", "instanceReference": "remote:up/m2"}
    await ws.send_json(predict_frame(5, reference, "hi"))
    assert error_code(await frame(ws)) == "instance_not_found"
    text, _ = await predict(ws, predict_frame(6, query("up/m1"), "allowed"))
    assert text == "you said: allowed"
    assert [body["model"] for _, body in upstream.received] == ["m1"]
    await ws.close()
    auth_client.app[AUTH].refusals.flush()
    assert hidden_in_audit().count("/llm:getModelInfo") == 1
    assert "/llm:predict" in hidden_in_audit()


async def test_a_token_without_remote_models_cannot_load_or_unload_them_either(
    auth_client: Client, tokens: dict[str, str]
) -> None:
    ws = await connect(auth_client, "/llm", packet(tokens["local"]))
    reply = await call(ws, "unloadModel", {"identifier": "up/m1"})
    assert error_code(reply) == "model_not_found"  # answered as a missing model
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "getOrLoad",
            "channelId": 1,
            "creationParameter": {"identifier": "up/m1"},
        }
    )
    answer = await frame(ws)
    assert error_code(answer) == "model_not_found"
    assert answer["error"]["displayData"]["availablePathsSample"] == []
    await ws.close()
    ws = await connect(auth_client, "/llm", packet(tokens["all"]))
    reply = await call(ws, "unloadModel", {"identifier": "up/m1"})
    assert error_code(reply) == "remote_unsupported"
    await ws.close()
