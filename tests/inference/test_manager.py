"""Instances: JIT loading, keep-last-JIT, idle TTL, explicit loads, identifiers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lms import config, limits, modelkeys
from lms.errors import (
    ConflictError,
    InstanceNotFoundError,
    InvalidParameterError,
    InvalidRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
)
from lms.inference import catalog
from lms.inference.manager import ModelManager

pytestmark = pytest.mark.model


@pytest.fixture
def models_dir(tmp_path: Path, default_model_path: Path) -> Path:
    """Two model keys backed by the same GGUF file (symlinks; read-only use), each declared by a
    manifest (docs/MODELS.md) as the bundled model's is."""
    root = tmp_path / "models"
    for key in ("google/gemma-3-270m", "other/gemma-copy"):
        folder = root / key
        folder.mkdir(parents=True)
        (folder / default_model_path.name).symlink_to(default_model_path)
        modelkeys.write_manifest(folder, key)
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


async def test_queue_length_setting_reaches_the_engine(manager: ModelManager) -> None:
    config.set_value("models.queue_length", "3")
    instance = await manager.acquire("google/gemma-3-270m")
    assert instance.engine.options.queue_length == 3


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


@pytest.mark.parametrize("ttl", [0, -1, limits.MAX_TTL_SECONDS + 1, 10**400, True])
async def test_ttl_out_of_bounds_is_refused_on_every_path(manager: ModelManager, ttl: int) -> None:
    with pytest.raises(InvalidParameterError) as jit:
        await manager.acquire("google/gemma-3-270m", ttl=ttl)
    assert jit.value.param == "ttl"
    with pytest.raises(InvalidParameterError) as explicit:
        await manager.load("google/gemma-3-270m", ttl=ttl)
    assert explicit.value.param == "ttl"
    assert manager.instances() == []


async def test_the_longest_ttl_is_accepted(manager: ModelManager) -> None:
    instance = await manager.acquire("google/gemma-3-270m", ttl=limits.MAX_TTL_SECONDS)
    assert instance.ttl == limits.MAX_TTL_SECONDS
    assert instance.ttl_left(now=instance.last_used_at) == limits.MAX_TTL_SECONDS


@pytest.mark.parametrize(
    "identifier",
    ["", "\ud800", "a\x00b", "a\nb", "tab\there", "\u202eevil", "x" * 129, " lead", "trail "],
)
async def test_bad_identifiers_are_refused(manager: ModelManager, identifier: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        await manager.load("google/gemma-3-270m", identifier=identifier)
    assert info.value.param == "identifier"
    assert manager.instances() == []


async def test_printable_identifiers_up_to_128_characters_load(manager: ModelManager) -> None:
    longest = "é" * 127 + "x"
    instance = await manager.load("google/gemma-3-270m", identifier=longest, context_length=256)
    assert instance.identifier == longest
    spaced = await manager.load("google/gemma-3-270m", identifier="my model", context_length=256)
    assert [i.identifier for i in manager.instances()] == sorted([longest, spaced.identifier])


async def test_context_length_ceiling_and_permission(manager: ModelManager) -> None:
    with pytest.raises(InvalidParameterError) as huge:
        await manager.acquire("google/gemma-3-270m", context_length=1_000_000_000)
    assert huge.value.param == "context_length"
    assert "32768" in huge.value.message
    config.set_value("models.max_context_length", "2048")
    with pytest.raises(InvalidParameterError) as over:
        await manager.load(
            "google/gemma-3-270m", context_length=4096, context_param="contextLength"
        )
    assert over.value.param == "contextLength"
    config.set_value("models.max_context_length", "32768")
    with pytest.raises(PermissionDeniedError) as narrow:
        await manager.acquire("google/gemma-3-270m", context_length=8192, may_widen_context=False)
    assert narrow.value.param == "context_length"
    assert "models permission" in narrow.value.message
    assert manager.instances() == []
    instance = await manager.acquire(
        "google/gemma-3-270m", context_length=4096, may_widen_context=False
    )
    assert instance.context_length == 4096


async def test_reaper_pass_survives_an_absurd_ttl(manager: ModelManager) -> None:
    broken = await manager.load("google/gemma-3-270m", identifier="broken", context_length=256)
    broken.ttl = 10**401  # cannot come through a load; the reaper must still not raise
    await manager.load("google/gemma-3-270m", identifier="short", context_length=256, ttl=1)
    assert await manager.reap_idle(now=time.time() + 10) == ["short"]
    assert [i.identifier for i in manager.instances()] == ["broken"]


async def test_names_resolve_among_allowed_models_only(
    manager: ModelManager, models_dir: Path, default_model_path: Path
) -> None:
    third = models_dir / "third" / "gemma-3-270m"
    third.mkdir(parents=True)
    (third / default_model_path.name).symlink_to(default_model_path)
    modelkeys.write_manifest(third, "third/gemma-3-270m")  # two keys of the same name

    def google_only(key: str) -> bool:
        return key.startswith("google/")

    with pytest.raises(ModelNotFoundError, match="ambiguous"):
        await manager.resolve("gemma-3-270m")
    assert (await manager.resolve("gemma-3-270m", google_only)).key == "google/gemma-3-270m"
    with pytest.raises(ModelNotFoundError) as hidden:
        await manager.resolve("other/gemma-copy", google_only)
    with pytest.raises(ModelNotFoundError) as missing:
        await manager.resolve("other/nothing", google_only)
    assert hidden.value.message == missing.value.message.replace(
        "other/nothing", "other/gemma-copy"
    )
    assert "third/" not in hidden.value.message and "other/" not in str(hidden.value.data)
    await manager.acquire("other/gemma-copy")
    with pytest.raises(ModelNotFoundError):
        await manager.acquire("other/gemma-copy", allowed=google_only)


def _count_scans(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """Record every read of the models folder (the real discover still runs)."""
    calls: list[Path | None] = []
    real = catalog.discover

    def counted(models_dir: Path | None = None) -> list[catalog.ModelFile]:
        calls.append(models_dir)
        return real(models_dir)

    monkeypatch.setattr(catalog, "discover", counted)
    return calls


async def test_a_jit_load_reads_the_models_folder_once(
    manager: ModelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = _count_scans(monkeypatch)
    instance = await manager.acquire("gemma-3-270m", allowed=lambda key: key.startswith("google/"))
    assert instance.identifier == "google/gemma-3-270m"
    assert len(scans) == 1
    # What the API does: choose first (allowlist, audit), then acquire what was chosen.
    scans.clear()
    await manager.unload_all()
    chosen = await manager.choose("google/gemma-3-270m")
    assert (chosen.key, chosen.instance) == ("google/gemma-3-270m", None)
    assert chosen.model is not None
    loaded = await manager.acquire("google/gemma-3-270m", chosen=chosen)
    assert len(scans) == 1
    # A loaded instance named by its identifier needs no catalog at all.
    scans.clear()
    again = await manager.choose(loaded.identifier)
    assert again.instance is loaded and again.model is None
    assert await manager.acquire(loaded.identifier, chosen=again) is loaded
    assert scans == []


async def test_choose_decides_the_kind(manager: ModelManager) -> None:
    embedder = await manager.load("google/gemma-3-270m", embedding=True, context_length=256)
    assert embedder.identifier == "google/gemma-3-270m:embedding"
    # The identifier of an instance of the other kind is refused, naming the field.
    with pytest.raises(InvalidRequestError, match="embedding mode") as refused:
        await manager.choose(embedder.identifier, kind="llm")
    assert refused.value.param == "model"
    # To an embedding request, <key>:embedding is that instance; the key means the model.
    assert (await manager.choose(embedder.identifier, kind="embedding")).instance is embedder
    by_key = await manager.choose("google/gemma-3-270m", kind="embedding")
    assert by_key.instance is embedder
    # An llm request for the key finds no llm instance: the model, to load.
    for_chat = await manager.choose("google/gemma-3-270m", kind="llm")
    assert for_chat.instance is None and for_chat.model is not None


async def test_a_hidden_name_is_reported_as_missing_and_heard(manager: ModelManager) -> None:
    heard: list[str] = []
    with pytest.raises(ModelNotFoundError) as hidden:
        await manager.choose(
            "other/gemma-copy",
            allowed=lambda key: key.startswith("google/"),
            hidden=lambda: heard.append("hidden"),
        )
    assert heard == ["hidden"]
    assert hidden.value.data == {"available_models": ["google/gemma-3-270m"]}
    with pytest.raises(ModelNotFoundError):
        await manager.choose(
            "other/nothing",
            allowed=lambda key: key.startswith("google/"),
            hidden=lambda: heard.append("missing"),
        )
    assert heard == ["hidden"]
