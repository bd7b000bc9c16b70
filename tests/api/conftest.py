"""The TCP API application under aiohttp's test client, with the real default model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lms.api.app import build_api_app
from lms.api.state import Listener
from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager


@pytest.fixture
def lms_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    for var in ("LMS_SERVER_PORT", "LMS_MODELS_JIT", "LMS_MODELS_TTL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
async def manager(lms_home: Path, default_models_dir: Path) -> AsyncIterator[ModelManager]:
    config = ConfigWatcher({})
    models = ModelManager(config.current, models_dir=lambda: default_models_dir)
    yield models
    await models.close()


@pytest.fixture
async def client(manager: ModelManager) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = build_api_app(manager, ConfigWatcher({}), Listener("127.0.0.1", 0))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
