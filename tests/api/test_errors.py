"""Every bad input gets its envelope and status, and the server keeps serving afterwards."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

JSON = {"Content-Type": "application/json"}
MODEL = "google/gemma-3-270m"


async def assert_error(
    client: TestClient,  # type: ignore[type-arg]
    method: str,
    path: str,
    status: int,
    code: str,
    **kwargs: Any,
) -> dict[str, Any]:
    response = await client.request(method, path, **kwargs)
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    # ...and the server still serves.
    health = await client.get("/health")
    assert health.status == 200
    return body  # type: ignore[no-any-return]


async def test_invalid_json(client: TestClient) -> None:  # type: ignore[type-arg]
    body = await assert_error(
        client, "POST", "/v1/completions", 400, "invalid_json", data=b"{bad", headers=JSON
    )
    assert "JSON" in body["error"]["message"]


async def test_body_not_an_object(client: TestClient) -> None:  # type: ignore[type-arg]
    await assert_error(
        client, "POST", "/v1/chat/completions", 400, "invalid_json", data=b"[1]", headers=JSON
    )


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/completions", {"prompt": "x"}, "model"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 2}, "top_p"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [1]}, "stop"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, "messages[0]"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
    ],
)
async def test_wrong_field_names_the_field(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    payload: dict[str, Any],
    param: str,
) -> None:
    response = await client.post(path, json=payload)
    assert response.status == 400
    body = await response.json()
    assert body["error"]["param"] == param
    assert param.split("[")[0] in body["error"]["message"]
    assert (await client.get("/health")).status == 200


async def test_unknown_model_lists_models(client: TestClient) -> None:  # type: ignore[type-arg]
    body = await assert_error(
        client,
        "POST",
        "/v1/completions",
        404,
        "model_not_found",
        json={"model": "nobody/nothing", "prompt": "x"},
    )
    assert MODEL in body["error"]["message"]


async def test_unknown_route(client: TestClient) -> None:  # type: ignore[type-arg]
    await assert_error(client, "GET", "/v1/nothing-here", 404, "route_not_found")


async def test_wrong_method(client: TestClient) -> None:  # type: ignore[type-arg]
    await assert_error(client, "DELETE", "/v1/models", 405, "method_not_allowed")


async def test_oversize_body(client: TestClient) -> None:  # type: ignore[type-arg]
    big = b'{"prompt": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    await assert_error(
        client,
        "POST",
        "/v1/completions",
        413,
        "payload_too_large",
        data=io.BytesIO(big),
        headers=JSON,
    )


async def test_oversize_chunked_body(client: TestClient) -> None:  # type: ignore[type-arg]
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(34):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    await assert_error(
        client, "POST", "/v1/completions", 413, "payload_too_large", data=chunks(), headers=JSON
    )


async def test_prompt_larger_than_context(client: TestClient) -> None:  # type: ignore[type-arg]
    body = await assert_error(
        client,
        "POST",
        "/v1/completions",
        400,
        "context_length_exceeded",
        json={"model": MODEL, "prompt": "word " * 5000, "max_tokens": 4},
    )
    assert "context" in body["error"]["message"]


async def test_internal_error_is_generic(
    client: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lms.inference.manager import ModelManager

    async def explode(self: ModelManager) -> list[Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ModelManager, "models", explode)
    body = await assert_error(client, "GET", "/v1/models", 500, "internal_error")
    assert "secret internals" not in body["error"]["message"]
    assert "secret internals" in caplog.text  # the traceback goes to the log


async def test_broken_config_fails_closed(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Any,
) -> None:
    config = lms_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[auth]\nrequired = 'maybe'\n")
    response = await client.get("/v1/models")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "configuration_broken"
    config.write_text("[auth]\nrequired = false\n")
    assert (await client.get("/v1/models")).status == 200
