"""POST /api/v1/models/load and /unload on the real default model (docs/API.md, Model load and
unload)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lms.api.state import MANAGER
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
        ("load", {"model": MODEL, "identifier": ""}, 400, "identifier"),
        ("load", {"model": MODEL, "identifier": "\ud800"}, 400, "identifier"),
        ("load", {"model": MODEL, "identifier": "a\u0007b"}, 400, "identifier"),
        ("load", {"model": MODEL, "identifier": "line\nbreak"}, 400, "identifier"),
        ("load", {"model": MODEL, "identifier": "x" * 129}, 400, "identifier"),
        ("load", {"model": MODEL, "ttl": -5}, 400, "ttl"),
        ("load", {"model": MODEL, "ttl": 30 * 86400 + 1}, 400, "ttl"),
        ("load", {"model": MODEL, "ttl": 2**62}, 400, "ttl"),
        ("load", {"model": MODEL, "ttl": 1.5}, 400, "ttl"),
        ("load", {"model": MODEL, "context_length": 1_000_000_000}, 400, "context_length"),
        ("load", {"model": MODEL, "parallel": 17}, 400, "parallel"),
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

    async def load_as_elsewhere(model: str) -> tuple[int, dict[str, Any]]:
        response = await client.post(
            "/api/v1/models/load",
            json={"model": model},
            headers={"Authorization": f"Bearer {elsewhere}"},
        )
        return response.status, (await response.json())["error"]

    # A model outside the allowlist answers exactly like a missing one, and names no other.
    status, hidden = await load_as_elsewhere(MODEL)
    missing_status, missing = await load_as_elsewhere("nobody/nothing")
    assert (status, missing_status) == (404, 404)
    assert hidden["code"] == missing["code"] == "model_not_found"
    assert hidden["message"] == missing["message"].replace("nobody/nothing", MODEL)
    assert hidden.keys() == missing.keys()
    status, by_name = await load_as_elsewhere("gemma-3-270m")
    assert status == 404 and "google/" not in by_name["message"]
    lacking = await client.post(
        "/api/v1/models/load",
        json={"model": MODEL},
        headers={"Authorization": f"Bearer {inference}"},
    )
    assert lacking.status == 403
    assert "models" in (await lacking.json())["error"]["message"]
    config.write_text("[auth]\nrequired = false\n")
    assert await loaded_ids(client) == []


@pytest.fixture
async def elsewhere(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> AsyncIterator[dict[str, str]]:
    """An instance "secret" loaded, then auth on: the headers of a token limited to ``x/*``
    (with the models permission), which may not see it. Auth is off again afterwards."""
    loaded = await client.post(
        "/api/v1/models/load", json={"model": MODEL, "identifier": "secret", "context_length": 256}
    )
    assert loaded.status == 200, await loaded.json()
    _, token = Registry().create("elsewhere", permissions={Permission.MODELS}, models=["x/*"])
    config = lms_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[auth]\nrequired = true\n")
    yield {"Authorization": f"Bearer {token}"}
    config.write_text("[auth]\nrequired = false\n")


async def test_a_limited_token_names_instances_inside_its_allowlist(
    client: TestClient,  # type: ignore[type-arg]
    elsewhere: dict[str, str],
) -> None:
    # "That name is taken" must not tell a token of an instance it may not see: a token limited
    # to some models names its instances with names its allowlist matches.
    errors = {}
    for identifier in ("secret", "free"):
        response = await client.post(
            "/api/v1/models/load",
            json={"model": "x/thing", "identifier": identifier},
            headers=elsewhere,
        )
        assert response.status == 400
        errors[identifier] = (await response.json())["error"]
    assert errors["secret"]["param"] == "identifier"
    assert errors["secret"]["message"] == errors["free"]["message"].replace("free", "secret")
    inside = await client.post(
        "/api/v1/models/load",
        json={"model": "x/thing", "identifier": "x/mine"},
        headers=elsewhere,
    )
    assert inside.status == 404  # the identifier passes; x/thing does not exist
    assert [i.identifier for i in client.app[MANAGER].instances()] == ["secret"]


@pytest.mark.model
async def test_unload_hides_instances_outside_the_allowlist(
    client: TestClient,  # type: ignore[type-arg]
    elsewhere: dict[str, str],
) -> None:
    headers = elsewhere

    async def unload_as_elsewhere(instance_id: str) -> tuple[int, dict[str, Any]]:
        response = await client.post(
            "/api/v1/models/unload", json={"instance_id": instance_id}, headers=headers
        )
        return response.status, (await response.json())["error"]

    status, hidden = await unload_as_elsewhere("secret")
    missing_status, missing = await unload_as_elsewhere("nothing")
    assert (status, missing_status) == (404, 404)
    assert hidden["code"] == missing["code"] == "instance_not_found"
    assert hidden["message"] == missing["message"].replace("nothing", "secret")
    assert "(loaded: none)" in hidden["message"]
    assert [i.identifier for i in client.app[MANAGER].instances()] == ["secret"]
