"""Instances: JIT loading, keep-last-JIT, idle TTL, explicit loads, identifiers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lms import config
from lms.errors import ConflictError, InstanceNotFoundError, ModelNotFoundError
from lms.inference.manager import ModelManager

pytestmark = pytest.mark.model


@pytest.fixture
def models_dir(tmp_path: Path, default_model_path: Path) -> Path:
    """Two model keys backed by the same GGUF file (symlinks; read-only use)."""
    root = tmp_path / "models"
    for key in ("google/gemma-3-270m", "other/gemma-copy"):
        folder = root / key
        folder.mkdir(parents=True)
        (folder / default_model_path.name).symlink_to(default_model_path)
    return root


@pytest.fixture
async def manager(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ModelManager]:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    models = ModelManager(lambda: config.load(), models_dir=lambda: models_dir)
    yield models
    await models.close()


async def test_jit_load_and_reuse(manager: ModelManager) -> None:
    first = await manager.acquire("google/gemma-3-270m")
    again = await manager.acquire("gemma-3-270m")  # resolution by name reuses the instance
    assert first is again
    assert first.jit and first.ttl == 3600
    assert [i.identifier for i in manager.instances()] == ["google/gemma-3-270m"]


async def test_keep_last_jit_unloads_previous(manager: ModelManager) -> None:
    await manager.acquire("google/gemma-3-270m")
    await manager.acquire("other/gemma-copy")
    assert [i.identifier for i in manager.instances()] == ["other/gemma-copy"]


async def test_keep_last_off_keeps_both(manager: ModelManager) -> None:
    config.set_value("models.jit_keep_last", "off")
    await manager.acquire("google/gemma-3-270m")
    await manager.acquire("other/gemma-copy")
    assert len(manager.instances()) == 2


async def test_jit_off_refuses_unloaded(manager: ModelManager) -> None:
    config.set_value("models.jit", "off")
    with pytest.raises(ModelNotFoundError, match="just-in-time loading is off") as info:
        await manager.acquire("google/gemma-3-270m")
    assert "lms load" in (info.value.hint or "")


async def test_explicit_loads_get_distinct_identifiers(manager: ModelManager) -> None:
    a = await manager.load("google/gemma-3-270m", context_length=256)
    b = await manager.load("google/gemma-3-270m")
    assert (a.identifier, b.identifier) == ("google/gemma-3-270m", "google/gemma-3-270m:2")
    assert a.engine.n_ctx_per_seq == 256 and b.engine.n_ctx_per_seq == 4096
    assert not a.jit and a.ttl is None
    with pytest.raises(ConflictError):
        await manager.load("google/gemma-3-270m", identifier="google/gemma-3-270m")
    await manager.unload("google/gemma-3-270m:2")
    with pytest.raises(InstanceNotFoundError):
        await manager.unload("google/gemma-3-270m:2")


async def test_idle_ttl_unloads(manager: ModelManager) -> None:
    instance = await manager.load("google/gemma-3-270m", ttl=60)
    assert await manager.reap_idle(now=time.time() + 30) == []
    left = instance.ttl_left(now=time.time() + 30)
    assert left is not None and 29 <= left <= 31
    assert await manager.reap_idle(now=time.time() + 61) == ["google/gemma-3-270m"]
    assert manager.instances() == []


async def test_unknown_model(manager: ModelManager) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await manager.acquire("nobody/nothing")
    assert "google/gemma-3-270m" in info.value.message
