"""POST /v1/embeddings: shapes, errors, auth, instances, cancellation and the queue bound on a
FakeEmbedder (tests/fakes.py: the real routes, manager and embedder loop, fake vectors); the
vectors themselves, their encodings and token arrays on the real default model (``model``)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from fakes import GroupGate

from lms.api.openai.embeddings import MAX_INPUTS
from lms.inference.embedder import Embedder
from lms.inference.generation import LoadOptions
from lms.inference.manager import ModelManager
from lms.inference.worker import RETRY_AFTER_SECONDS

MODEL = "google/gemma-3-270m"
EMBEDDING_ID = f"{MODEL}:embedding"
GEMMA_3_270M_WIDTH = 640  # gemma-3-270m's hidden size (embedding_length in its GGUF)
DEADLINE = 120.0  # seconds: generous, only ever reached when something is broken

Client = TestClient  # type: ignore[type-arg]


async def embed(client: Client, inputs: Any, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": inputs, **extra})
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


def vectors(body: dict[str, Any]) -> list[np.ndarray[Any, np.dtype[np.float64]]]:
    return [np.array(d["embedding"], dtype=np.float64) for d in body["data"]]


async def test_response_shape(client: Client, manager: ModelManager) -> None:
    body = await embed(client, "The quick brown fox")
    assert body["object"] == "list"
    assert body["model"] == MODEL
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    instance = manager.find_instance(EMBEDDING_ID)
    assert instance is not None and instance.type == "embedding"
    assert len(item["embedding"]) == instance.embedder.n_embd
    assert all(isinstance(x, float) for x in item["embedding"])
    tokens = instance.embedder.count_tokens("The quick brown fox")
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


@pytest.mark.model
async def test_vectors_are_unit_length_and_deterministic(client: Client) -> None:
    texts = [
        "A cat sleeps on the sofa.",
        "Stock markets fell sharply today.",
        "A cat sleeps on the sofa.",
    ]
    body = await embed(client, texts)
    first, other, again = vectors(body)
    [alone] = vectors(await embed(client, texts[0]))
    repeated = await embed(client, texts)
    assert [d["embedding"] for d in repeated["data"]] == [d["embedding"] for d in body["data"]]
    assert first.shape == (GEMMA_3_270M_WIDTH,)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert float(first @ first) == pytest.approx(1.0, abs=1e-5)  # cosine with itself
    # the same text elsewhere in a batch, or alone: llama.cpp's CPU kernels round a little
    # differently with the batch's shape, so "the same" means a cosine of 0.999 or more
    assert float(first @ again) > 0.999 and float(first @ alone) > 0.999
    assert float(first @ other) < 0.995  # different texts, different vectors
    assert not np.allclose(first, other, atol=1e-2)


async def test_list_input_keeps_order(client: Client) -> None:
    texts = ["alpha beta", "a completely different sentence", "third one, longer than the others"]
    forward = await embed(client, texts)
    backward = await embed(client, texts[::-1])
    assert [d["index"] for d in forward["data"]] == [0, 1, 2]
    # the fake's vectors depend on the input alone: each input keeps exactly its own
    assert [v.tolist() for v in vectors(forward)] == [v.tolist() for v in vectors(backward)[::-1]]
    assert len({tuple(v.tolist()) for v in vectors(forward)}) == 3
    total = forward["usage"]["prompt_tokens"]
    singles = [(await embed(client, t))["usage"]["prompt_tokens"] for t in texts]
    assert total == sum(singles)


@pytest.mark.model
async def test_base64_encoding_matches_floats(client: Client) -> None:
    floats = vectors(await embed(client, "hello world"))[0]
    body = await embed(client, "hello world", encoding_format="base64")
    raw = base64.b64decode(body["data"][0]["embedding"])
    decoded = np.frombuffer(raw, dtype="<f4")
    assert decoded.shape == floats.shape
    assert np.allclose(decoded, floats, atol=1e-6)


@pytest.mark.model
async def test_token_arrays(client: Client, manager: ModelManager) -> None:
    text = vectors(await embed(client, "hello world"))[0]
    instance = manager.find_instance(EMBEDDING_ID)
    assert instance is not None
    tokens = list(instance.embedder._tokenize("hello world"))
    one = await embed(client, tokens)
    two = await embed(client, [tokens, tokens])
    assert len(one["data"]) == 1 and len(two["data"]) == 2
    assert float(vectors(one)[0] @ text) > 0.999999  # same tokens, same batch shape
    assert one["usage"]["prompt_tokens"] == len(tokens)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "input"),
        ({"input": "x"}, "model"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": [""]}, "input"),
        ({"model": MODEL, "input": ["ok", 3.5]}, "input"),
        ({"model": MODEL, "input": [[1, 2], "x", {"a": 1}]}, "input"),
        ({"model": MODEL, "input": [[1, 10**9]]}, "input"),
        ({"model": MODEL, "input": 42}, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "binary"}, "encoding_format"),
        ({"model": MODEL, "input": "x", "dimensions": 7}, "dimensions"),
    ],
)
async def test_bad_input_names_the_field(client: Client, body: dict[str, Any], param: str) -> None:
    response = await client.post("/v1/embeddings", json=body)
    payload = await response.json()
    assert response.status == 400, payload
    assert payload["error"]["param"] == param
    assert param in payload["error"]["message"]


async def test_unknown_model_is_404_in_openai_envelope(client: Client) -> None:
    response = await client.post("/v1/embeddings", json={"model": "nobody/nothing", "input": "x"})
    body = await response.json()
    assert response.status == 404
    assert body["error"]["code"] == "model_not_found"
    assert MODEL in body["error"]["message"]


async def test_input_longer_than_context_is_400(client: Client, manager: ModelManager) -> None:
    small = await manager.load(MODEL, embedding=True, context_length=32, identifier="tiny")
    assert small.type == "embedding" and small.context_length == 32
    response = await client.post(
        "/v1/embeddings", json={"model": "tiny", "input": ["short", "word " * 100]}
    )
    body = await response.json()
    assert response.status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert "input[1]" in body["error"]["message"] and "32" in body["error"]["message"]
    ok = await client.post("/v1/embeddings", json={"model": "tiny", "input": "short"})
    assert ok.status == 200  # the instance keeps serving


async def test_embedding_and_chat_instances_coexist(client: Client, manager: ModelManager) -> None:
    await embed(client, "first")
    chat = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 2}
    )
    assert chat.status == 200
    await embed(client, "again")  # keep-last-JIT is per kind: neither unloads the other
    kinds = {i.identifier: i.type for i in manager.instances()}
    assert kinds == {MODEL: "llm", EMBEDDING_ID: "embedding"}
    entry = manager.find_instance(EMBEDDING_ID).entry()  # type: ignore[union-attr]
    assert entry["type"] == "embedding" and entry["parallel"] is None
    assert entry["status"] == "idle" and entry["jit"] is True
    refused = await client.post(
        "/v1/completions", json={"model": EMBEDDING_ID, "prompt": "Hello", "max_tokens": 2}
    )
    body = await refused.json()
    assert refused.status == 400 and "embedding mode" in body["error"]["message"]
    listed = await client.get("/v1/models")
    assert EMBEDDING_ID in [m["id"] for m in (await listed.json())["data"]]


async def test_identifier_of_unloaded_embedding_instance_reloads(
    client: Client, manager: ModelManager
) -> None:
    await embed(client, "x")
    await manager.unload(EMBEDDING_ID)
    response = await client.post("/v1/embeddings", json={"model": EMBEDDING_ID, "input": "x"})
    assert response.status == 200
    assert manager.find_instance(EMBEDDING_ID) is not None


async def test_native_models_lists_embedding_instance(
    client: Client, manager: ModelManager
) -> None:
    await embed(client, "x")
    response = await client.get("/api/v1/models")
    assert response.status == 200
    [model] = (await response.json())["models"]
    instance = manager.find_instance(EMBEDDING_ID)
    # the default context, held to the GGUF's own (256 in the fake models folder's file)
    assert instance is not None and instance.embedder.n_ctx == 256
    assert {"id": EMBEDDING_ID, "config": {"context_length": 256}} in model["loaded_instances"]


async def test_auth_refusals(client: Client, lms_home: Path) -> None:
    from lms.auth.permissions import Permission
    from lms.auth.registry import Registry

    registry = Registry()
    _, good = registry.create("embedder")
    _, other = registry.create("other-models", models=["other/*"])
    _, listing = registry.create("lister", permissions={Permission.MODELS})
    config = lms_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[auth]\nrequired = true\n")

    async def status(token: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await client.post(
            "/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=headers
        )
        body = await response.json()
        return response.status, body.get("error", {}).get("code", "")

    assert await status(None) == (401, "missing_api_key")
    assert await status(listing) == (403, "insufficient_permissions")
    assert await status(other) == (404, "model_not_found")  # outside the allowlist: missing
    assert (await status(good))[0] == 200


async def poll(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def gated_embedder(
    client: Client, manager: ModelManager, monkeypatch: pytest.MonkeyPatch
) -> tuple[Embedder, GroupGate]:
    await embed(client, "load it")
    instance = manager.find_instance(EMBEDDING_ID)
    assert instance is not None
    gate = GroupGate(instance.embedder)
    monkeypatch.setattr(instance.embedder, "_embed_group", gate)
    return instance.embedder, gate


async def test_a_disconnected_client_stops_its_batch(
    client: Client, manager: ModelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder, gate = await gated_embedder(client, manager, monkeypatch)
    batch = [f"{i} " + "lorem ipsum dolor sit amet " * 4 for i in range(MAX_INPUTS)]
    request = asyncio.create_task(
        client.post("/v1/embeddings", json={"model": MODEL, "input": batch})
    )
    await gate.wait_entered()
    request.cancel()  # the client goes away: its connection closes
    await asyncio.wait([request])
    await poll(lambda: embedder.outstanding == 0)  # the server cancelled the handler
    gate.gate.set()
    assert len((await embed(client, "after"))["data"]) == 1
    assert len(gate.sizes) == 2 and gate.sizes[1] == 1  # one group of the batch, no more


async def test_a_full_queue_is_503_with_retry_after(
    client: Client, manager: ModelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder, gate = await gated_embedder(client, manager, monkeypatch)
    queue_length = LoadOptions().queue_length
    held = [
        asyncio.create_task(client.post("/v1/embeddings", json={"model": MODEL, "input": f"{i}"}))
        for i in range(1 + queue_length)
    ]
    await gate.wait_entered()
    await poll(lambda: embedder.outstanding == 1 + queue_length)
    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": "one too many"})
    body = await response.json()
    assert response.status == 503, body
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert body["error"]["code"] == "server_busy"
    gate.gate.set()
    for response in await asyncio.gather(*held):
        assert response.status == 200
    assert embedder.outstanding == 0
    assert len((await embed(client, "drained"))["data"]) == 1
