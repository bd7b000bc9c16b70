"""Concurrent streamed requests through one instance's parallel slots, over HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from aiohttp.test_utils import TestClient

from lms.inference.manager import ModelManager
from lms.inference.worker import RETRY_AFTER_SECONDS

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model
DEADLINE = 120.0  # seconds: generous, only ever reached when something is broken


async def stream_completion(client: TestClient, prompt: str) -> tuple[str, int]:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    text, usage = [], 0
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        if chunk["choices"]:
            text.append(chunk["choices"][0]["text"])
    return "".join(text), usage


async def test_eight_concurrent_streams(client: TestClient) -> None:  # type: ignore[type-arg]
    prompts = [f"Fact number {i}:" for i in range(8)]
    results = await asyncio.gather(*(stream_completion(client, p) for p in prompts))
    for text, usage in results:
        assert text and 1 <= usage <= 16
    ps = await (await client.get("/api/v1/models")).json()
    config = ps["models"][0]["loaded_instances"][0]["config"]
    assert config["parallel"] == 4


async def test_a_full_queue_is_503_with_retry_after(
    client: TestClient,  # type: ignore[type-arg]
    manager: ModelManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slots plus ``queue_length`` requests are held (the worker waits at a gate before its
    first step); the next one is refused at once, and the held ones are served after."""
    await stream_completion(client, "Load it:")
    instance = manager.find_instance(MODEL)
    assert instance is not None
    engine = instance.engine
    step, entered, gate = engine._step, threading.Event(), threading.Event()

    def gated_step() -> None:
        entered.set()
        gate.wait(DEADLINE)
        step()

    monkeypatch.setattr(engine, "_step", gated_step)
    capacity = engine.options.parallel + engine.options.queue_length
    body = {"model": MODEL, "prompt": "Count:", "max_tokens": 2, "temperature": 0}
    held = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(capacity)]
    assert await asyncio.to_thread(entered.wait, DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while engine.outstanding < capacity:
        assert time.monotonic() < deadline, "the requests were not all queued in time"
        await asyncio.sleep(0.01)
    response = await client.post("/v1/completions", json=body)
    refused = await response.json()
    assert response.status == 503, refused
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert refused["error"]["code"] == "server_busy"
    gate.set()
    for done in await asyncio.gather(*held):
        assert done.status == 200
    assert engine.outstanding == 0
