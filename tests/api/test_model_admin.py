"""POST /api/v1/models/load and /unload on the real default model (reference §2.7-2.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lms.auth.permissions import Permission
from lms.auth.registry import Registry

MODEL = "google/gemma-3-270m"


async def loaded_ids(client: TestClient) -> list[str]:  # type: ignore[type-arg]
    models = (await (await client.get("/api/v1/models")).json())["models"]
    return [i["id"] for m in models for i in m["loaded_instances"]]


@pytest.mark.model
async def test_load_then_unload(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/api/v1/models/load",
        json={"model": MODEL, "context_length": 1024, "echo_load_config": True},
    )
    body = await response.json()
    assert response.status == 200, body
    assert body["type"] == "llm"
    assert body["instance_id"] == MODEL
    assert body["status"] == "loaded"
    assert 0 < body["load_time_seconds"] < 120
    assert body["load_config"]["context_length"] == 1024
    assert isinstance(body["load_config"]["flash_attention"], bool)
    assert body["load_config"]["eval_batch_size"] > 0
    assert await loaded_ids(client) == [MODEL]

    # A second load is a second instance; ttl and identifier are lms's extensions.
    second = await client.post(
        "/api/v1/models/load", json={"model": "gemma-3-270m", "identifier": "g2", "ttl": 600}
    )
    second_body = await second.json()
    assert second.status == 200, second_body
    assert second_body["instance_id"] == "g2"
    assert "load_config" not in second_body  # only with echo_load_config
    assert sorted(await loaded_ids(client)) == sorted([MODEL, "g2"])

    for instance_id in (MODEL, "g2"):
        unloaded = await client.post("/api/v1/models/unload", json={"instance_id": instance_id})
        assert unloaded.status == 200
        assert await unloaded.json() == {"instance_id": instance_id}
    assert await loaded_ids(client) == []

    again = await client.post("/api/v1/models/unload", json={"instance_id": "g2"})
    assert again.status == 404
    error = (await again.json())["error"]
    assert error["code"] == "instance_not_found"
    assert error["param"] == "instance_id"


@pytest.mark.parametrize(
    ("route", "body", "status", "param"),
    [
        ("load", {}, 400, "model"),
        ("load", {"model": 7}, 400, "model"),
        ("load", {"model": MODEL, "context_length": "big"}, 400, "context_length"),
        ("load", {"model": MODEL, "context_length": 4}, 400, "context_length"),
        ("load", {"model": MODEL, "ttl": 0}, 400, "ttl"),
        ("load", {"model": MODEL, "echo_load_config": "yes"}, 400, "echo_load_config"),
        ("load", {"model": MODEL, "flash_attention": 1}, 400, "flash_attention"),
        ("load", {"model": MODEL, "identifier": " "}, 400, "identifier"),
        ("load", {"model": "nobody/nothing"}, 404, "model"),
        ("unload", {}, 400, "instance_id"),
        ("unload", {"instance_id": ["x"]}, 400, "instance_id"),
        ("unload", {"instance_id": "not-loaded"}, 404, "instance_id"),
    ],
)
async def test_bad_input_names_the_field(
    client: TestClient,  # type: ignore[type-arg]
    route: str,
    body: dict[str, Any],
    status: int,
    param: str,
) -> None:
    response = await client.post(f"/api/v1/models/{route}", json=body)
    error = (await response.json())["error"]
    assert response.status == status, error
    assert error["param"] == param
    assert await loaded_ids(client) == []


async def test_load_checks_the_token_allowlist(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> None:
    registry = Registry()
    _, elsewhere = registry.create("elsewhere", permissions={Permission.MODELS}, models=["x/*"])
    _, inference = registry.create("inference-only")
    config = lms_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[auth]\nrequired = true\n")

    refused = await client.post(
        "/api/v1/models/load",
        json={"model": MODEL},
        headers={"Authorization": f"Bearer {elsewhere}"},
    )
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "model_not_allowed"
    lacking = await client.post(
        "/api/v1/models/load",
        json={"model": MODEL},
        headers={"Authorization": f"Bearer {inference}"},
    )
    assert lacking.status == 403
    assert "models" in (await lacking.json())["error"]["message"]
    config.write_text("[auth]\nrequired = false\n")
    assert await loaded_ids(client) == []
