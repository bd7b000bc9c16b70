"""Every route that loads a model just in time bounds its ``ttl`` the same way (docs/LIMITS.md):
the check lives in ``instances.acquire`` and the manager, so no route has its own copy."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"

ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    ("/v1/completions", {"prompt": "x"}),
    ("/v1/embeddings", {"input": "x"}),
    ("/v1/responses", {"input": "x"}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
    ("/api/v1/chat", {"input": "x"}),
]


@pytest.mark.parametrize(("path", "body"), ROUTES)
@pytest.mark.parametrize("ttl", [0, -1, 30 * 86400 + 1, 2**62])
async def test_every_jit_route_refuses_an_out_of_bounds_ttl(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    body: dict[str, Any],
    ttl: int,
) -> None:
    response = await client.post(path, json={"model": MODEL, "ttl": ttl, **body})
    answer = await response.json()
    assert response.status == 400, answer
    error = answer["error"]
    if path == "/v1/messages":  # Anthropic's envelope: a type and a message
        assert error["type"] == "invalid_request_error"
        assert "'ttl'" in error["message"]
    else:
        assert (error["code"], error["param"]) == ("invalid_parameter", "ttl")
    models = (await (await client.get("/api/v1/models")).json())["models"]
    assert [m["loaded_instances"] for m in models] == [[]]
