"""Draft models (docs/API.md, Draft models): a request's ``draft_model`` resolved like a model to
load among the token's allowed models and attached once per instance; a load's default draft
model; the errors. Plumbing with fake engines (tests/fakes.py: an attach only records the file)
over a models folder of tiny GGUF files; the real model as its own draft is at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeEngine, FakeLoader, Reply, write_gguf

from lms import modelkeys
from lms.api.app import build_api_app
from lms.api.state import Listener
from lms.auth import audit
from lms.auth.permissions import Permission
from lms.auth.registry import Registry
from lms.config import ConfigWatcher
from lms.inference import defaultmodel
from lms.inference.generation import DraftStats
from lms.inference.manager import ModelManager

MODEL = "google/gemma-3-270m"
DRAFT = "someone/draft-model"
ASK = {"input": "hi", "max_output_tokens": 2}

Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """The default model's stand-in, a possible draft, one with another vocabulary (the fake
    engine refuses it as a real one would) and an embedding model."""
    root = tmp_path / "models"
    main = defaultmodel.default_model_path(root)
    write_gguf(main, tensor_bytes=4096, name="gemma-3-270m", context_length=8192)
    defaultmodel.ensure_manifest(main.parent)
    models = [("draft-model", "llama"), ("other-vocab", "llama"), ("text-embedding-tiny", "bert")]
    for name, arch in models:
        folder = root / "someone" / name
        write_gguf(folder / f"{name}.gguf", tensor_bytes=8192, arch=arch)
        modelkeys.write_manifest(folder, f"someone/{name}")
    return root


@pytest.fixture
async def drafts_manager(
    lms_home: Path, models_dir: Path, fake_model: FakeLoader
) -> AsyncIterator[ModelManager]:
    manager = ModelManager(
        ConfigWatcher({}).current, models_dir=lambda: models_dir, loader=fake_model
    )
    yield manager
    await manager.close()


@pytest.fixture
async def api(drafts_manager: ModelManager) -> AsyncIterator[Client]:
    app = build_api_app(drafts_manager, ConfigWatcher({}), Listener("127.0.0.1", 0))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def engine_of(fake_model: FakeLoader) -> FakeEngine:
    assert len(fake_model.engines) == 1, fake_model.engines
    return fake_model.engines[0]


async def chat(client: Client, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    body = {"model": MODEL, **ASK, **fields}
    response = await client.post("/api/v1/chat", json=body, headers=headers)
    return response.status, await response.json()


def require_auth(home: Path) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[auth]\nrequired = true\n")


def refused_reasons() -> list[str]:
    return [e["reason"] for e in audit.read() if e.get("event") == "request_refused"]


# --- a request's draft_model ---------------------------------------------------------------------


async def test_a_draft_named_any_way_is_attached_once_under_its_key(
    api: Client, fake_model: FakeLoader, drafts_manager: ModelManager, models_dir: Path
) -> None:
    # Two requests at once, then one naming it by another form of its key: one attach.
    answers = await asyncio.gather(
        chat(api, draft_model="draft-model"), chat(api, draft_model=DRAFT)
    )
    assert [status for status, _ in answers] == [200, 200], answers
    status, body = await chat(api, draft_model="SOMEONE/draft-model")
    assert status == 200, body
    engine = engine_of(fake_model)
    assert engine.attached == [(DRAFT, models_dir / "someone/draft-model/draft-model.gguf")]
    assert [p.draft_model for p in fake_model.script.params] == [DRAFT] * 3
    # Its file counts towards the instance's size; listings name it.
    (instance,) = drafts_manager.instances()
    entry = instance.entry()
    draft_size = (models_dir / "someone/draft-model/draft-model.gguf").stat().st_size
    assert entry["size_bytes"] == instance.model.size_bytes + draft_size
    assert entry.get("draft_models") == [DRAFT] and entry.get("draft_model") is None


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
async def test_every_route_resolves_the_draft(
    api: Client, fake_model: FakeLoader, route: str
) -> None:
    bodies = {
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
        "/v1/completions": {"prompt": "hi"},
        "/v1/responses": {"input": "hi"},
    }
    body = {"model": MODEL, "max_tokens": 2, **bodies[route], "draft_model": "draft-model"}
    response = await api.post(route, json=body)
    assert response.status == 200, await response.text()
    assert [p.draft_model for p in fake_model.script.params] == [DRAFT]


async def test_an_unknown_draft_is_a_404_naming_draft_model(
    api: Client, fake_model: FakeLoader
) -> None:
    status, body = await chat(api, draft_model="nobody/nothing")
    assert status == 404, body
    error = body["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "draft_model")
    assert "draft model" in error["message"] and "nobody/nothing" in error["message"]
    assert fake_model.script.params == []


async def test_a_hidden_draft_answers_like_a_missing_one_and_is_audited(
    api: Client, fake_model: FakeLoader, lms_home: Path
) -> None:
    require_auth(lms_home)
    _, token = Registry().create("google-only", models=["google/*"])
    headers = {"Authorization": f"Bearer {token}"}
    status, hidden = await chat(api, headers, draft_model=DRAFT)
    missing_status, missing = await chat(api, headers, draft_model="nobody/nothing")
    assert (status, missing_status) == (404, 404), (hidden, missing)
    assert hidden["error"]["param"] == missing["error"]["param"] == "draft_model"
    assert hidden["error"]["message"] == missing["error"]["message"].replace(
        "nobody/nothing", DRAFT
    )
    assert DRAFT not in missing["error"]["message"]  # only what the token may use is listed
    assert refused_reasons() == ["model_not_allowed"]  # the hidden one only
    assert fake_model.script.params == []
    assert engine_of(fake_model).attached == []


async def test_an_embedding_model_is_no_draft(api: Client, fake_model: FakeLoader) -> None:
    status, body = await chat(api, draft_model="someone/text-embedding-tiny")
    assert status == 400, body
    assert body["error"]["param"] == "draft_model"
    assert "embedding model" in body["error"]["message"]
    assert fake_model.script.params == []


async def test_a_draft_with_another_vocabulary_is_a_400(
    api: Client, fake_model: FakeLoader
) -> None:
    status, body = await chat(api, draft_model="someone/other-vocab")
    assert status == 400, body
    assert body["error"]["param"] == "draft_model"
    assert fake_model.script.params == []
    # Nothing half-attached: the next request with a good draft still works.
    status, body = await chat(api, draft_model=DRAFT)
    assert status == 200, body


# --- a load's default draft model ----------------------------------------------------------------


async def load(client: Client, **fields: Any) -> tuple[int, Any]:
    body = {"model": MODEL, "echo_load_config": True, **fields}
    response = await client.post("/api/v1/models/load", json=body)
    return response.status, await response.json()


async def test_a_loads_default_draft_serves_requests_without_their_own(
    api: Client, fake_model: FakeLoader, drafts_manager: ModelManager
) -> None:
    status, body = await load(api, draft_model="draft-model")
    assert status == 200, body
    assert body["load_config"]["draft_model"] == DRAFT
    assert [key for key, _ in engine_of(fake_model).attached] == [DRAFT]
    (instance,) = drafts_manager.instances()
    assert instance.entry().get("draft_model") == DRAFT
    assert (await chat(api))[0] == 200
    assert (await chat(api, speculative=False))[0] == 200
    assert (await chat(api, draft_model=MODEL))[0] == 200  # its own wins
    used = [(p.speculative, p.draft_model) for p in fake_model.script.params]
    assert used == [(True, DRAFT), (False, None), (True, MODEL)]


async def test_a_default_draft_hidden_from_a_token_is_not_used_for_it(
    api: Client, fake_model: FakeLoader, lms_home: Path
) -> None:
    status, body = await load(api, draft_model="draft-model")  # loaded by the owner
    assert status == 200, body
    require_auth(lms_home)
    registry = Registry()
    _, narrow = registry.create("google-only", models=["google/*"], permissions=set(Permission))
    _, wide = registry.create("everything", permissions=set(Permission))
    assert (await chat(api, {"Authorization": f"Bearer {narrow}"}))[0] == 200
    assert (await chat(api, {"Authorization": f"Bearer {wide}"}))[0] == 200
    used = [(p.speculative, p.draft_model) for p in fake_model.script.params]
    assert used == [(True, None), (True, DRAFT)]  # its key never reaches the narrow token


@pytest.mark.parametrize(
    ("draft", "status", "code"),
    [
        ("nobody/nothing", 404, "model_not_found"),
        ("someone/other-vocab", 400, "invalid_parameter"),
        ("someone/text-embedding-tiny", 400, "invalid_parameter"),
        ("", 400, "invalid_parameter"),
        (7, 400, "invalid_parameter"),
    ],
)
async def test_a_load_with_a_bad_draft_fails_and_leaves_nothing_loaded(
    api: Client,
    drafts_manager: ModelManager,
    draft: Any,
    status: int,
    code: str,
) -> None:
    answer_status, body = await load(api, draft_model=draft)
    assert answer_status == status, body
    assert (body["error"]["code"], body["error"]["param"]) == (code, "draft_model")
    assert drafts_manager.instances() == []


async def test_a_load_with_a_hidden_draft_is_refused_like_a_missing_one(
    api: Client, drafts_manager: ModelManager, lms_home: Path
) -> None:
    require_auth(lms_home)
    _, token = Registry().create("google-loader", models=["google/*"], permissions=set(Permission))
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": MODEL, "draft_model": DRAFT}
    response = await api.post("/api/v1/models/load", json=body, headers=headers)
    answer = await response.json()
    assert response.status == 404, answer
    assert answer["error"]["param"] == "draft_model"
    assert refused_reasons() == ["model_not_allowed"]
    assert drafts_manager.instances() == []


async def test_an_embedding_load_takes_no_draft(drafts_manager: ModelManager) -> None:
    from lms.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError) as caught:
        await drafts_manager.load(MODEL, embedding=True, draft_model=DRAFT)
    assert caught.value.param == "draft_model"
    assert drafts_manager.instances() == []


async def test_the_control_load_sets_the_default_draft(
    drafts_manager: ModelManager, fake_model: FakeLoader
) -> None:
    instance = await drafts_manager.load(MODEL, draft_model="draft-model")
    assert instance.draft_model == DRAFT
    assert instance.load_config()["draft_model"] == DRAFT
    assert engine_of(fake_model).attached[0][0] == DRAFT


# --- the real model as its own draft (nothing smaller shares its vocabulary) ---------------------


@pytest.mark.model
@pytest.mark.fresh_load  # the draft stays attached to its engine: not one later tests reuse
async def test_the_real_model_drafts_for_itself(client: Client) -> None:
    body = {
        "model": MODEL,
        "input": "Count from one to twenty in words: one, two, three, four,",
        "max_output_tokens": 32,
        "temperature": 0,
        "draft_model": "gemma-3-270m",  # resolved to its key, as any model name
    }
    response = await client.post("/api/v1/chat", json=body)
    answer = await response.json()
    assert response.status == 200, answer
    stats = answer["stats"]
    assert stats["draft_model"] == MODEL
    total = stats["total_draft_tokens_count"]
    assert total > 0, stats
    parts = ("accepted", "rejected", "ignored")
    assert sum(stats[f"{part}_draft_tokens_count"] for part in parts) == total, stats
    assert answer["output"][0]["content"]


async def test_a_chat_with_integrations_reports_draft_counts(
    api: Client, fake_model: FakeLoader, lms_home: Path
) -> None:
    servers = Path(__file__).parents[1] / "mcp_servers"
    config = lms_home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.toml").write_text("[auth]\nrequired = true\n[mcp]\nallow_mcp_json = true\n")
    entry = {"command": sys.executable, "args": [str(servers / "tiktoken_stdio.py")]}
    (config / "mcp.json").write_text(json.dumps({"mcpServers": {"tiktoken": entry}}))
    _, token = Registry().create("mcp", permissions={Permission.INFERENCE, Permission.MCP})
    stats = DraftStats(DRAFT, total=7, accepted=4, rejected=1, ignored=2)
    fake_model.say(Reply(("The", " answer."), draft=stats))
    status, body = await chat(
        api,
        {"Authorization": f"Bearer {token}"},
        integrations=[{"type": "plugin", "id": "mcp/tiktoken"}],
        tool_choice="auto",
        draft_model=DRAFT,
    )
    assert status == 200, body
    assert [p.draft_model for p in fake_model.script.params] == [DRAFT]
    assert {k: v for k, v in body["stats"].items() if "draft" in k} == {
        "draft_model": DRAFT,
        "total_draft_tokens_count": 7,
        "accepted_draft_tokens_count": 4,
        "rejected_draft_tokens_count": 1,
        "ignored_draft_tokens_count": 2,
    }
