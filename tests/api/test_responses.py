"""POST /v1/responses: shapes and bad input (the openai client tests cover the happy paths)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

MODEL = "google/gemma-3-270m"


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"input": "x"}, 400, "model"),
        ({"model": MODEL}, 400, "input"),
        ({"model": MODEL, "input": []}, 400, "input"),
        ({"model": MODEL, "input": [{"role": "wizard", "content": "x"}]}, 400, "input[0].role"),
        ({"model": MODEL, "input": [{"type": "function_call_output"}]}, 400, "input[0].type"),
        (
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            400,
            "input[0].content[0].type",
        ),
        ({"model": MODEL, "input": "x", "text": {}}, 400, "text.format"),
        (
            {"model": MODEL, "input": "x", "previous_response_id": "nope"},
            400,
            "previous_response_id",
        ),
        ({"model": MODEL, "input": "x", "tools": [{"type": "function"}]}, 501, "tools"),
    ],
)
async def test_bad_input(
    client: TestClient,  # type: ignore[type-arg]
    payload: dict[str, Any],
    status: int,
    param: str,
) -> None:
    response = await client.post("/v1/responses", json=payload)
    assert response.status == status
    assert (await response.json())["error"]["param"] == param


@pytest.mark.model
async def test_incomplete_when_limit_reached(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": "Count to one hundred:",
            "max_output_tokens": 3,
            "temperature": 0,
            "store": False,
        },
    )
    body = await response.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 3
