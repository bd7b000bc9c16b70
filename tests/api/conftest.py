"""The TCP API application under aiohttp's test client.

``manager`` (and ``client`` on it) serves the real default model to tests marked ``model`` and a
scripted :class:`~fakes.FakeEngine` to every other test (plumbing: shapes, errors, auth); such a
test scripts replies with the ``fake_model`` fixture (a :class:`~fakes.FakeLoader`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeLoader

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
def fake_model() -> FakeLoader:
    """What the fake engines of a plumbing test's ``manager`` answer (``fake_model.say(...)``)."""
    return FakeLoader()


@pytest.fixture
async def manager(
    request: pytest.FixtureRequest, lms_home: Path, fake_model: FakeLoader
) -> AsyncIterator[ModelManager]:
    config = ConfigWatcher({})
    if request.node.get_closest_marker("model") is not None:
        models_dir: Path = request.getfixturevalue("default_models_dir")
        models = ModelManager(config.current, models_dir=lambda: models_dir)
    else:
        fake_dir: Path = request.getfixturevalue("fake_models_dir")
        models = ModelManager(config.current, models_dir=lambda: fake_dir, loader=fake_model)
    yield models
    await models.close()


@pytest.fixture
async def client(manager: ModelManager) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = build_api_app(manager, ConfigWatcher({}), Listener("127.0.0.1", 0))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
