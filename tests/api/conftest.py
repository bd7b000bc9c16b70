"""The TCP API application under aiohttp's test client.

``manager`` (and ``client`` on it) serves the real default model to tests marked ``model`` and a
scripted :class:`~fakes.FakeEngine` to every other test (plumbing: shapes, errors, auth); such a
test scripts replies with the ``fake_model`` fixture (a :class:`~fakes.FakeLoader`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import llama_cpp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeLoader

from lms.api.app import build_api_app
from lms.api.state import Listener
from lms.config import ConfigWatcher
from lms.inference.catalog import ModelFile
from lms.inference.embedder import Embedder
from lms.inference.engine import Engine, LoadOptions
from lms.inference.manager import ModelManager, load_backend
from lms.inference.promptcache import PromptCache


@pytest.fixture
def lms_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    for var in ("LMS_SERVER_PORT", "LMS_MODELS_JIT", "LMS_MODELS_TTL"):
        monkeypatch.delenv(var, raising=False)
    # Outputs compared across requests must not hang on the machine's timing: speculation is
    # off here (its cost plan is measured), and proven in tests/inference/test_speculative.py.
    monkeypatch.setenv("LMS_MODELS_SPECULATIVE", "false")
    return tmp_path


class KeptEngine(Engine):
    """A real engine that outlives its instance: unloading an idle one forgets its KV cells and
    prompt cache and hands it back to :class:`KeptEngines` for the next test's load."""

    in_use = False

    def close(self) -> None:
        if self.outstanding or self.active or self.queued or self._closed:
            super().close()  # busy: unload for real, as a test of unloading expects
        else:
            llama_cpp.llama_memory_clear(self._ctx.memory, True)  # the worker is idle
            self._cache = PromptCache(self.options.parallel)
            self.observer = None
        self.in_use = False

    def release(self) -> None:
        super().close()


class KeptEngines:
    """A loader that loads the real default model once per load options for the whole session
    (a load costs about a second, more on a busy machine) and never gives one engine to two
    instances at once. Embedding instances are loaded as usual."""

    def __init__(self) -> None:
        self.engines: list[KeptEngine] = []

    def __call__(
        self,
        model: ModelFile,
        options: LoadOptions,
        embedding: bool,
        progress: Callable[[float], None] | None = None,
    ) -> Engine | Embedder:
        if embedding:
            return load_backend(model, options, embedding, progress)
        for engine in self.engines:
            if (
                not engine.in_use
                and not engine._closed
                and (engine.path, engine.options) == (model.path, options)
            ):
                engine.in_use = True
                if progress is not None:
                    progress(1.0)
                return engine
        engine = KeptEngine.load(model.path, options, progress)
        assert isinstance(engine, KeptEngine)
        engine.in_use = True
        self.engines.append(engine)
        return engine


@pytest.fixture(scope="session")
def kept_engines() -> Iterator[KeptEngines]:
    kept = KeptEngines()
    yield kept
    for engine in kept.engines:
        engine.release()


@pytest.fixture
def fake_model() -> FakeLoader:
    """What the fake engines of a plumbing test's ``manager`` answer (``fake_model.say(...)``)."""
    return FakeLoader()


@pytest.fixture
async def manager(
    request: pytest.FixtureRequest, lms_home: Path, fake_model: FakeLoader
) -> AsyncIterator[ModelManager]:
    # Speculation off, as for the daemons (see lms_home): outputs of two requests are compared.
    config = ConfigWatcher({"models.speculative": False})
    if request.node.get_closest_marker("model") is not None:
        models_dir: Path = request.getfixturevalue("default_models_dir")
        loader = load_backend
        if request.node.get_closest_marker("fresh_load") is None:
            loader = request.getfixturevalue("kept_engines")
        models = ModelManager(config.current, models_dir=lambda: models_dir, loader=loader)
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
