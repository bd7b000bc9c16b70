"""Instance identifiers and model queries on every surface (docs/IDENTIFIERS.md): the native load
route, OpenAI, Anthropic and the SDK socket, over LM Studio's folder layout.

Fake engines serve (naming and resolution are plumbing); the models folder holds small real GGUF
files, so keys are the catalog's own, read from it and never written here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fakes
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeLoader

from lms.api.app import build_api_app
from lms.api.state import MANAGER, Listener
from lms.auth import audit
from lms.auth.permissions import Permission
from lms.auth.registry import Registry
from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager

from .sdkwire import Client, channel_frames, connect, frame, packet, require_auth

GEMMA = "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
LLAMA = "hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF/llama-3.2-1b-instruct-q8_0.gguf"
NOMIC = "nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.Q4_K_M.gguf"
PREFIX = "HUGGING-QUANTS/llama-3.2-1b-instruct"  # LLAMA's path, another case, cut short


def write_gguf(path: Path, arch: str) -> None:
    fakes.write_gguf(path, arch=arch, tensor_bytes=128)


def lmstudio_folder(root: Path) -> Path:
    for relative, arch in ((GEMMA, "llama"), (LLAMA, "llama"), (NOMIC, "bert")):
        write_gguf(root / relative, arch)
    return root


@pytest.fixture
def fake_models_dir(tmp_path: Path) -> Path:
    """This module's models folder (the ``manager`` fixture serves it with fake engines)."""
    return lmstudio_folder(tmp_path / "models")


async def key_of(client: Client, relative: str) -> str:
    """The key the catalog gives the file at ``relative`` (the key ``GET /api/v1/models`` lists)."""
    manager = client.app[MANAGER]
    path = manager._models_dir() / relative
    key = next(m.key for m in await manager.models() if m.path == path)
    listed = (await (await client.get("/api/v1/models")).json())["models"]
    assert key in [m["key"] for m in listed]
    return key


async def native_load(client: Client, headers: dict[str, str] | None = None, **body: Any) -> Any:
    response = await client.post("/api/v1/models/load", json=body, headers=headers)
    return response.status, await response.json()


async def test_native_load_names_key_then_key_2_and_refuses_a_taken_identifier(
    client: Client,
) -> None:
    key = await key_of(client, LLAMA)
    first = await native_load(client, model=key, context_length=256)
    second = await native_load(client, model=key, context_length=256)
    assert (first[0], second[0]) == (200, 200), (first, second)
    assert (first[1]["instance_id"], second[1]["instance_id"]) == (key, f"{key}:2")
    for taken in (key, f"{key}:2"):
        status, body = await native_load(client, model=key, identifier=taken)
        assert status == 409, body
        error = body["error"]
        assert error["code"] == "conflict" and "already exists" in error["message"]
        assert taken in error["message"]
    listed = (await (await client.get("/api/v1/models")).json())["models"]
    ids = [i["id"] for m in listed if m["key"] == key for i in m["loaded_instances"]]
    assert sorted(ids) == [key, f"{key}:2"]


async def test_native_load_by_a_path_prefix_in_any_case(client: Client) -> None:
    key = await key_of(client, LLAMA)
    status, body = await native_load(client, model=PREFIX, context_length=256)
    assert status == 200, body
    assert body["instance_id"] == key
    # A name without a "/" is no path prefix: not found, naming the field.
    status, body = await native_load(client, model="hugging")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"


async def test_openai_and_anthropic_find_a_model_by_path_prefix(
    client: Client, fake_model: FakeLoader
) -> None:
    key = await key_of(client, LLAMA)
    fake_model.say("one", "two", "three")
    chat = await client.post(
        "/v1/chat/completions",
        json={"model": PREFIX, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert chat.status == 200, await chat.json()
    loaded = client.app[MANAGER].instances()
    assert [i.identifier for i in loaded] == [key]  # loaded just in time, named by its key
    completion = await client.post(
        "/v1/completions", json={"model": PREFIX.lower(), "prompt": "x", "max_tokens": 4}
    )
    assert completion.status == 200, await completion.json()
    message = await client.post(
        "/v1/messages",
        json={
            "model": PREFIX,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert message.status == 200, await message.json()
    native = await client.post("/api/v1/chat", json={"model": PREFIX, "input": "hi"})
    assert native.status == 200, await native.json()
    assert [i.identifier for i in client.app[MANAGER].instances()] == [key]  # the same instance
    # An unknown path is a 404 naming the field, on each surface.
    missing = await client.post(
        "/v1/chat/completions",
        json={"model": "nobody/x", "messages": [{"role": "user", "content": "hi"}]},
    )
    error = (await missing.json())["error"]
    assert missing.status == 404 and error["code"] == "model_not_found"
    assert error["param"] == "model"


async def test_hidden_models_answer_like_missing_ones_and_are_audited(
    client: Client, lms_home: Path
) -> None:
    gemma = await key_of(client, GEMMA)
    _, token = Registry().create(
        "gemma-only", permissions={Permission.MODELS, Permission.INFERENCE}, models=[gemma]
    )
    require_auth(lms_home)
    headers = {"Authorization": f"Bearer {token}"}
    answers = {}
    for name in (PREFIX, "nobody/nothing"):
        status, body = await native_load(client, headers, model=name)
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        answers[name] = (status, body["error"], chat.status, (await chat.json())["error"])
    hidden, missing = answers[PREFIX], answers["nobody/nothing"]
    assert hidden[0] == missing[0] == 404 and hidden[2] == missing[2] == 404
    for at in (1, 3):
        assert hidden[at]["message"] == missing[at]["message"].replace("nobody/nothing", PREFIX)
        assert "hugging" not in missing[at]["message"].lower()
    refused = [e for e in audit.read() if e.get("event") == "request_refused"]
    assert {e["reason"] for e in refused} == {"model_not_allowed"}
    assert len({e["route"] for e in refused}) == 2  # the load and the chat, not the missing ones
    assert client.app[MANAGER].instances() == []


# --- the SDK socket -----------------------------------------------------------------------------


async def sdk_load(ws: Any, channel_id: int, **parameter: Any) -> dict[str, Any]:
    """A ``loadModel`` channel; its last frame (``channelClose`` or ``channelError``) as the
    ``success`` packet's info or the error."""
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "loadModel",
            "channelId": channel_id,
            "creationParameter": parameter,
        }
    )
    frames = [f async for f in channel_frames(ws, channel_id)]
    if frames[-1]["type"] == "channelError":
        return {"error": frames[-1]["error"]}
    success = next(f["message"] for f in frames if f.get("message", {}).get("type") == "success")
    return dict(success["info"])


async def sdk_get_or_load(ws: Any, channel_id: int, name: str) -> dict[str, Any]:
    await ws.send_json(
        {
            "type": "channelCreate",
            "endpoint": "getOrLoad",
            "channelId": channel_id,
            "creationParameter": {"identifier": name},
        }
    )
    frames = [f async for f in channel_frames(ws, channel_id)]
    if frames[-1]["type"] == "channelError":
        return {"error": frames[-1]["error"]}
    last = [f["message"] for f in frames if f["type"] == "channelSend"][-1]
    return dict(last)


async def test_sdk_load_model_twice_and_by_path_prefix(client: Client) -> None:
    key = await key_of(client, LLAMA)
    ws = await connect(client, "/llm")
    first = await sdk_load(ws, 1, modelKey=key)
    second = await sdk_load(ws, 2, modelKey=PREFIX)
    assert (first["identifier"], second["identifier"]) == (key, f"{key}:2")
    assert first["modelKey"] == second["modelKey"] == key
    taken = await sdk_load(ws, 3, modelKey=key, identifier=f"{key}:2")
    assert "already exists" in taken["error"]["title"]
    # getOrLoad and model specifiers resolve the same way: the first instance answers.
    got = await sdk_get_or_load(ws, 4, PREFIX.lower())
    assert got["type"] == "alreadyLoaded" and got["info"]["identifier"] == key
    for query in ({"identifier": PREFIX}, {"path": "hugging-quants/LLAMA"}):
        spec = {"specifier": {"type": "query", "query": query}}
        await ws.send_json(
            {"type": "rpcCall", "endpoint": "getModelInfo", "callId": 9, "parameter": spec}
        )
        reply = await frame(ws)
        assert reply["result"]["identifier"] == key, reply
    missing = await sdk_get_or_load(ws, 5, "nobody/nothing")
    assert missing["error"]["displayData"]["code"] == "generic.pathNotFound"
    await ws.close()


async def test_sdk_hidden_path_prefix_is_missing_and_audited(
    client: Client, lms_home: Path
) -> None:
    gemma = await key_of(client, GEMMA)
    _, token = Registry().create(
        "gemma-only-sdk", permissions={Permission.MODELS, Permission.INFERENCE}, models=[gemma]
    )
    require_auth(lms_home)
    ws = await connect(client, "/llm", packet(token))
    hidden = await sdk_get_or_load(ws, 1, PREFIX)
    missing = await sdk_get_or_load(ws, 2, "nobody/nothing")
    assert hidden["error"]["displayData"]["code"] == "generic.pathNotFound"
    assert hidden["error"]["title"] == missing["error"]["title"].replace("nobody/nothing", PREFIX)
    assert hidden["error"]["displayData"]["availablePathsSample"] == [gemma]
    refused = [e for e in audit.read() if e.get("event") == "request_refused"]
    assert [(e["route"], e["reason"]) for e in refused] == [("/llm:getOrLoad", "model_not_allowed")]
    await ws.close()


# --- an embedding model: real embedders of the default model ------------------------------------


@pytest.fixture
async def embedding_client(lms_home: Path, tmp_path: Path) -> AsyncIterator[Client]:
    """The app over an LM Studio layout; fake engines and embedders serve the instances (names
    are the subject)."""
    root = lmstudio_folder(tmp_path / "lmstudio")
    config = ConfigWatcher({})
    manager = ModelManager(config.current, models_dir=lambda: root, loader=FakeLoader())
    app = build_api_app(manager, config, Listener("127.0.0.1", 0))
    try:
        async with TestClient(TestServer(app)) as test_client:
            yield test_client
    finally:
        await manager.close()


async def test_an_embedding_model_instance_is_named_by_its_key(embedding_client: Client) -> None:
    key = await key_of(embedding_client, NOMIC)
    status, body = await native_load(embedding_client, model=key, context_length=64)
    assert status == 200, body
    assert (body["type"], body["instance_id"]) == ("embedding", key)
    ws = await connect(embedding_client, "/embedding")
    second = await sdk_load(ws, 1, modelKey="nomic-ai/NOMIC-embed")
    assert second.get("identifier") == f"{key}:2", second
    await ws.close()
    embedded = await embedding_client.post(
        "/v1/embeddings", json={"model": "nomic-ai/nomic-embed-text", "input": "hello"}
    )
    assert embedded.status == 200, await embedded.json()
    assert (await embedded.json())["model"] in (key, f"{key}:2")
    # An embedding model serves no chat, named by key or path.
    chat = await embedding_client.post(
        "/v1/chat/completions",
        json={"model": "nomic-ai/nomic", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status == 400 and (await chat.json())["error"]["param"] == "model"
