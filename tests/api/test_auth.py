"""Token enforcement on every route of the application (README: Authentication)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lms.auth import audit
from lms.auth.permissions import PUBLIC, Permission, access_for
from lms.auth.registry import Registry

MODEL = "google/gemma-3-270m"


def require_auth(home: Path, on: bool = True) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[auth]\nrequired = {'true' if on else 'false'}\n")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def app_routes(client: TestClient) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    found = set()
    for route in client.server.app.router.routes():  # type: ignore[union-attr]
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        found.add((route.method, route.resource.canonical))
    return sorted(found)


#: /v1/messages and count_tokens answer in Anthropic's envelope, whose error types stand for
#: our codes.
ANTHROPIC_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def refusal_code(pattern: str, status: int, body: dict[str, Any], code: str) -> str:
    """The code of a refusal, read from the envelope of the route's API family."""
    if pattern.startswith("/v1/messages"):
        assert body["type"] == "error"
        return code if body["error"]["type"] == ANTHROPIC_TYPES[status] else body["error"]["type"]
    return str(body["error"]["code"])


def url_of(pattern: str) -> str:
    return pattern.replace("{job_id}", "job-1")


@pytest.fixture
def tokens(lms_home: Path) -> dict[str, str]:
    """Tokens in every state a request can present."""
    registry = Registry()
    past = Registry(clock=lambda: datetime.now(UTC) - timedelta(days=10))
    made = {
        "all": registry.create("everything", permissions=set(Permission))[1],
        "inference": registry.create("inference-only")[1],
        "models": registry.create("models-only", permissions={Permission.MODELS})[1],
        "expired": past.create("expired", expires_at=datetime.now(UTC) - timedelta(days=1))[1],
        "revoked": registry.create("revoked")[1],
    }
    registry.remove("revoked")
    made["unknown"] = "sk-lm-Zz9Zz9Zz:" + "A1" * 10
    made["malformed"] = "lm-studio"
    require_auth(lms_home)
    return made


async def test_every_route_is_in_the_permission_table(client: TestClient) -> None:  # type: ignore[type-arg]
    routes = app_routes(client)
    assert ("POST", "/v1/completions") in routes
    for method, pattern in routes:
        access_for(method, pattern)  # KeyError = a route that could skip the check


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        (None, 401, "missing_api_key"),
        ("malformed", 401, "invalid_api_key"),
        ("unknown", 401, "invalid_api_key"),
        ("revoked", 401, "invalid_api_key"),
        ("expired", 401, "expired_api_key"),
    ],
)
async def test_every_protected_route_refuses_bad_tokens(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
    kind: str | None,
    status: int,
    code: str,
) -> None:
    checked = 0
    for method, pattern in app_routes(client):
        if access_for(method, pattern) == PUBLIC:
            continue
        headers = bearer(tokens[kind]) if kind else {}
        response = await client.request(method, url_of(pattern), json={}, headers=headers)
        body = await response.json()
        assert response.status == status, (method, pattern, body)
        assert refusal_code(pattern, status, body, code) == code
        if kind:
            assert tokens[kind].split(":")[-1] not in body["error"]["message"]
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 4


async def test_every_route_refuses_a_token_without_its_permission(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    checked = 0
    for method, pattern in app_routes(client):
        access = access_for(method, pattern)
        if not isinstance(access, Permission):
            continue
        lacking = tokens["models"] if access == Permission.INFERENCE else tokens["inference"]
        response = await client.request(method, url_of(pattern), json={}, headers=bearer(lacking))
        body = await response.json()
        assert response.status == 403, (method, pattern, body)
        code = refusal_code(pattern, 403, body, "insufficient_permissions")
        assert code == "insufficient_permissions"
        assert access.value in body["error"]["message"]
        checked += 1
    assert checked >= 2


async def test_public_routes_need_no_token(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    assert (await client.get("/health")).status == 200
    greeting = await client.get("/lmstudio-greeting")
    assert (await greeting.json()) == {"lmstudio": True}


async def test_listing_with_any_valid_token(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    response = await client.get("/v1/models", headers=bearer(tokens["models"]))
    assert response.status == 200
    assert [m["id"] for m in (await response.json())["data"]] == [MODEL]


async def test_allowlist_filters_and_refuses(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
    tokens: dict[str, str],
) -> None:
    _, other = Registry().create("other-models", models=["someone/*"])
    listed = await (await client.get("/v1/models", headers=bearer(other))).json()
    assert listed["data"] == []
    native = await (await client.get("/api/v1/models", headers=bearer(other))).json()
    assert native["models"] == []
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=bearer(other)
    )
    missing = await client.post(
        "/v1/completions", json={"model": "nobody/nothing", "prompt": "x"}, headers=bearer(other)
    )
    # A model outside the allowlist answers exactly like a missing one.
    assert (response.status, missing.status) == (404, 404)
    hidden, absent = (await response.json())["error"], (await missing.json())["error"]
    assert hidden["code"] == absent["code"] == "model_not_found"
    assert hidden["message"] == absent["message"].replace("nobody/nothing", MODEL)
    assert MODEL not in absent["message"]  # only what it may use
    by_name = await client.post(
        "/v1/completions", json={"model": "gemma-3-270m", "prompt": "x"}, headers=bearer(other)
    )
    assert by_name.status == 404
    assert "google/" not in (await by_name.json())["error"]["message"]
    # The owner still sees, in the audit log only, that the token asked for a hidden model.
    reasons = [e["reason"] for e in audit.read() if e.get("event") == "request_refused"]
    assert reasons == ["model_not_allowed"]  # one line per token, route and reason per interval


async def test_valid_token_is_served(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    response = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 2},
        headers=bearer(tokens["inference"]),
    )
    assert response.status == 200, await response.text()


async def test_changes_take_effect_on_the_next_request(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    registry = Registry()
    _, token = registry.create("short-lived", permissions={Permission.MODELS})
    assert (await client.get("/v1/models", headers=bearer(token))).status == 200
    # Two edits in a row with no request between them, then a removal.
    registry.edit("short-lived", name="renamed")
    registry.edit("renamed", rpm=100)
    assert (await client.get("/v1/models", headers=bearer(token))).status == 200
    registry.remove("renamed")
    assert (await client.get("/v1/models", headers=bearer(token))).status == 401
    # Rotation without grace: the old secret stops at once, the new one works.
    _, old = registry.create("rotating")
    _, new = registry.rotate("rotating")
    assert (await client.get("/v1/models", headers=bearer(old))).status == 401
    assert (await client.get("/v1/models", headers=bearer(new))).status == 200


async def test_rate_limit(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    _, token = Registry().create("slow", rpm=2)
    for _ in range(2):
        assert (await client.get("/v1/models", headers=bearer(token))).status == 200
    response = await client.get("/v1/models", headers=bearer(token))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["code"] == "rate_limited"


async def test_refusals_are_audited_without_secrets(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    await client.get("/v1/models", headers=bearer(tokens["unknown"]))
    await client.get("/v1/models")
    entries = [e for e in audit.read() if e.get("event") == "request_refused"]
    assert {e["reason"] for e in entries} >= {"invalid_api_key", "missing_api_key"}
    assert all(e["route"] == "/v1/models" for e in entries)
    text = (Path(audit.paths.audit_log())).read_text()
    for token in tokens.values():
        assert token not in text


async def test_auth_off_ignores_dummy_keys(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
) -> None:
    require_auth(lms_home, on=False)
    for headers in ({}, bearer("lm-studio"), {"Authorization": "Basic Zm9vOmJhcg=="}):
        assert (await client.get("/v1/models", headers=headers)).status == 200


async def test_broken_registry_fails_closed(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
    tokens: dict[str, str],
) -> None:
    (lms_home / "config" / "tokens.toml").write_text("this is [ not toml")
    response = await client.get("/v1/models", headers=bearer(tokens["all"]))
    assert response.status == 503
    body: dict[str, Any] = await response.json()
    assert body["error"]["code"] == "configuration_broken"
    assert (await client.get("/health")).status == 200


@pytest.mark.parametrize(
    ("token", "context_length", "status", "code"),
    [
        ("inference", 1_000_000_000, 400, "invalid_parameter"),  # over models.max_context_length
        ("all", 1_000_000_000, 400, "invalid_parameter"),
        ("inference", 8192, 403, "insufficient_permissions"),  # over models.context_length
        ("inference", 4, 400, "invalid_parameter"),
    ],
)
async def test_context_length_of_a_jit_load_is_bounded(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
    token: str,
    context_length: int,
    status: int,
    code: str,
) -> None:
    response = await client.post(
        "/api/v1/chat",
        json={"model": MODEL, "input": "x", "context_length": context_length},
        headers=bearer(tokens[token]),
    )
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["param"]) == (status, code, "context_length")
    listed = await (await client.get("/api/v1/models", headers=bearer(tokens["all"]))).json()
    assert [m["loaded_instances"] for m in listed["models"]] == [[]]


@pytest.mark.model
async def test_a_models_token_may_widen_the_context_of_a_jit_load(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    response = await client.post(
        "/api/v1/chat",
        json={"model": MODEL, "input": "x", "context_length": 8192, "max_output_tokens": 1},
        headers=bearer(tokens["all"]),
    )
    assert response.status == 200, await response.text()
    listed = await (await client.get("/api/v1/models", headers=bearer(tokens["all"]))).json()
    assert [i["config"]["context_length"] for i in listed["models"][0]["loaded_instances"]] == [
        8192
    ]


async def test_a_flood_of_random_tokens_and_paths_is_counted_within_a_bounded_file(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    """Every refusal counted (the sum of ``count`` is the number refused), in a few lines that
    random tokens, paths and queries cannot multiply."""
    import random
    import string

    from lms.api.state import AUTH
    from lms.auth import refusals

    rng = random.Random(13)
    gate = client.server.app[AUTH]  # type: ignore[union-attr]
    gate.refusals = refusals.RefusalRecorder(window=3600)  # one window however slow the run
    gate.tarpit_after = 10**9  # answered at once: this test counts, it does not time

    def junk(n: int) -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=n))

    sent = 0
    for n in range(1500):
        kind = n % 4
        headers = (
            {} if kind == 0 else bearer(f"sk-lm-{junk(8)}:{junk(20)}" if kind < 3 else junk(30))
        )
        if n % 3 == 0:
            path = f"/api/v1/models/download/status/{junk(12)}?{junk(6)}={junk(40)}"
        elif n % 3 == 1:
            path = f"/v1/models?{junk(6)}={junk(40)}"
        else:
            path = f"/v1/chat/completions?{junk(10)}"
        method = "POST" if path.startswith("/v1/chat") else "GET"
        response = await client.request(method, path, headers=headers, json={})
        assert response.status == 401, (path, response.status)
        sent += 1
    gate.refusals.flush()
    entries = [e for e in audit.read() if e["event"] == "request_refused"]
    assert sum(int(e["count"]) for e in entries) == sent
    assert {e["route"] for e in entries} == {
        "/api/v1/models/download/status/{job_id}",
        "/v1/models",
        "/v1/chat/completions",
    }
    # the first and the repeats of 6 keys: 3 routes x (missing_api_key | invalid_api_key)
    assert len(entries) == 2 * 6
    size = sum(p.stat().st_size for p in refusals.rotated(refusals.log_path()) if p.exists())
    assert size < 10_000
    assert "sk-lm-" not in refusals.log_path().read_text()
