"""Concurrent streamed requests through one instance's parallel slots, over HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


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
