"""Instance identifiers and query resolution (docs/IDENTIFIERS.md) on the manager.

The models folder is LM Studio's layout, with small real GGUF files (the catalog reads their
headers; keys are whatever the catalog gives, read from it, never written here). Instances are
scripted fake engines (naming is plumbing), except where an embedding instance must exist: those
are real embedders of the default model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import fakes
import pytest
from fakes import FakeLoader

from lms import config
from lms.errors import ConflictError, InvalidRequestError, ModelNotFoundError
from lms.inference import catalog, choosing
from lms.inference.catalog import ModelFile
from lms.inference.embedder import Embedder
from lms.inference.engine import Engine
from lms.inference.manager import ModelManager

GEMMA = "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
LLAMA = "hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF/llama-3.2-1b-instruct-q8_0.gguf"
NOMIC = "nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.Q4_K_M.gguf"


def write_gguf(path: Path, arch: str) -> None:
    fakes.write_gguf(path, arch=arch, tensor_bytes=128)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_gguf(root / GEMMA, "llama")
    write_gguf(root / LLAMA, "llama")
    write_gguf(root / NOMIC, "bert")  # an encoder: an embedding model
    return root


def make_manager(models_dir: Path, loader: Callable[..., Engine | Embedder]) -> ModelManager:
    return ModelManager(lambda: config.load(), models_dir=lambda: models_dir, loader=loader)


@pytest.fixture
async def manager(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ModelManager]:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    models = make_manager(models_dir, FakeLoader())
    yield models
    await models.close()


async def key_of(manager: ModelManager, relative: str) -> str:
    """The key the catalog gives the file at ``relative`` (whatever the key rule is)."""
    root = manager._models_dir()
    return next(m.key for m in await manager.models() if m.path == root / relative)


def ids(manager: ModelManager) -> set[str]:
    return {i.identifier for i in manager.instances()}


async def test_instances_are_the_key_then_key_n_with_the_smallest_free_n(
    manager: ModelManager,
) -> None:
    key = await key_of(manager, LLAMA)
    loaded = [(await manager.load(key, context_length=256)).identifier for _ in range(3)]
    assert loaded == [key, f"{key}:2", f"{key}:3"]
    await manager.unload(f"{key}:2")
    assert (await manager.load(key, context_length=256)).identifier == f"{key}:2"
    await manager.unload(key)
    assert (await manager.load(key, context_length=256)).identifier == key
    # Another model's numbering is its own.
    gemma = await key_of(manager, GEMMA)
    assert (await manager.load(gemma, context_length=256)).identifier == gemma
    assert ids(manager) == {key, f"{key}:2", f"{key}:3", gemma}


async def test_an_identifier_in_use_is_refused_with_already_exists(manager: ModelManager) -> None:
    key = await key_of(manager, LLAMA)
    await manager.load(key, identifier="mine", context_length=256)
    with pytest.raises(ConflictError, match="already exists") as refused:
        await manager.load(key, identifier="mine", context_length=256)
    assert (refused.value.status, refused.value.code) == (409, "conflict")
    # The default name of the first instance is taken too, by a load that named it so.
    await manager.load(key, context_length=256)
    with pytest.raises(ConflictError, match="already exists"):
        await manager.load(key, identifier=key, context_length=256)
    assert ids(manager) == {"mine", key}


async def test_a_path_prefix_finds_the_model_case_insensitively(manager: ModelManager) -> None:
    key = await key_of(manager, LLAMA)
    for query in ("hugging-quants/llama-3.2-1b-instruct", "HUGGING-QUANTS/Llama-3.2-1B-i"):
        chosen = await manager.choose(query)
        assert (chosen.key, chosen.instance) == (key, None)  # downloaded: to load
        assert (await manager.resolve(query)).key == key
    instance = await manager.load("hugging-quants/llama-3.2-1b-instruct", context_length=256)
    assert instance.identifier == key
    chosen = await manager.choose("Hugging-Quants/LLAMA-3.2")
    assert chosen.instance is instance  # loaded: that instance serves it
    assert await manager.acquire("hugging-quants/llama", chosen=chosen) is instance


async def test_a_name_without_a_slash_is_no_path_prefix(manager: ModelManager) -> None:
    for query in ("hugging", "hugging-quants"):
        with pytest.raises(ModelNotFoundError) as missing:
            await manager.choose(query)
        assert missing.value.param == "model" and missing.value.status == 404
        assert await key_of(manager, LLAMA) in missing.value.data["available_models"]


async def test_an_identifier_comes_before_a_key(manager: ModelManager) -> None:
    llama, gemma = await key_of(manager, LLAMA), await key_of(manager, GEMMA)
    impostor = await manager.load(gemma, identifier=llama, context_length=256)
    assert (await manager.choose(llama)).instance is impostor
    # To a load, an identifier means that instance's model.
    assert (await manager.resolve(llama)).key == gemma
    assert (await manager.load(llama, context_length=256)).identifier == gemma


def test_a_key_comes_before_a_path_prefix(models_dir: Path) -> None:
    base = catalog.read_metadata(models_dir / GEMMA)
    mine = dataclasses.replace(base, key="b/model", path=models_dir / "b/model/f.gguf")
    other = dataclasses.replace(base, key="a/other", path=models_dir / "B/Model-extra/f.gguf")
    every = [other, mine]

    def find(text: str, path_only: bool = False) -> ModelFile:
        query = choosing.Query(text, path_only=path_only)
        return choosing.downloaded([], every, query, models_dir, None, None)

    assert find("b/model").key == "b/model"  # the key, though "a/other"'s path starts so too
    assert find("B/MODEL-").key == "a/other"  # no key: the path prefix
    # An empty name names nothing, not even a key without a publisher.
    bare = dataclasses.replace(base, key="bare", path=models_dir / "bare.gguf")
    with pytest.raises(ModelNotFoundError):
        choosing.downloaded([], [bare], choosing.Query(""), models_dir, None, None)
    # The SDK's query.path is a path only: the first path in key order.
    assert find("b/model", path_only=True).key == "a/other"
    assert find("b/model/", path_only=True).key == "b/model"


@pytest.mark.parametrize(
    ("query", "kind", "meant"),
    [
        ("a/b:embedding", "embedding", "a/b"),
        ("a/b:embedding:2", "embedding", "a/b"),
        ("a/b:embedding:12", "embedding", "a/b"),
        ("a/b:embedding", "llm", "a/b:embedding"),
        ("a/b:2", "embedding", "a/b:2"),
        ("a/b:embedding:x", "embedding", "a/b:embedding:x"),
        (":embedding", "embedding", ":embedding"),
    ],
)
def test_model_query(query: str, kind: choosing.InstanceType, meant: str) -> None:
    assert choosing.model_query(query, kind) == meant


async def test_an_embedding_identifier_still_finds_its_model_after_an_unload(
    manager: ModelManager,
) -> None:
    gemma = await key_of(manager, GEMMA)
    for name in (f"{gemma}:embedding", f"{gemma}:embedding:2"):
        chosen = await manager.choose(name, kind="embedding")
        assert (chosen.key, chosen.instance) == (gemma, None)
    with pytest.raises(ModelNotFoundError):
        await manager.choose(f"{gemma}:embedding", kind="llm")


async def test_outside_the_allowlist_is_missing_and_only_the_hook_hears(
    manager: ModelManager,
) -> None:
    gemma = await key_of(manager, GEMMA)
    llama = await key_of(manager, LLAMA)
    await manager.load(llama, identifier="secret", context_length=256)
    heard: list[str] = []

    def only_gemma(key: str) -> bool:
        return key == gemma

    errors = {}
    for name in ("hugging-quants/llama", llama, "secret", "nobody/nothing"):
        with pytest.raises(ModelNotFoundError) as refused:
            await manager.choose(name, allowed=only_gemma, hidden=lambda n=name: heard.append(n))
        errors[name] = refused.value
        with pytest.raises(ModelNotFoundError):
            await manager.resolve(name, only_gemma)
    assert heard == ["hugging-quants/llama", llama, "secret"]
    for name, error in errors.items():
        assert error.message == errors["nobody/nothing"].message.replace("nobody/nothing", name)
        assert error.data == {"available_models": [gemma]}


async def test_ambiguous_lists_only_allowed_models(manager: ModelManager, models_dir: Path) -> None:
    for publisher in ("one", "two", "three"):
        write_gguf(models_dir / publisher / "same" / "same-q4_k_m.gguf", "llama")
    keys = {m.key for m in await manager.models() if "same" in m.path.name}
    hidden = max(keys)
    with pytest.raises(ModelNotFoundError, match="ambiguous") as ambiguous:
        await manager.choose("same", allowed=lambda key: key != hidden)
    assert hidden not in ambiguous.value.message
    assert hidden not in str(ambiguous.value.data)


# --- embedding instances: real embedders of the default model -----------------------------------


async def test_embedding_instances_are_named_by_the_model_not_the_load(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Names are the subject: fake engines and embedders (tests/fakes.py) serve the instances.
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    manager = make_manager(models_dir, FakeLoader())
    try:
        nomic, gemma = await key_of(manager, NOMIC), await key_of(manager, GEMMA)
        # An embedding model (its GGUF says so) is named like any other model.
        first = await manager.load(nomic, context_length=64)
        second = await manager.load("nomic-ai/nomic-embed", context_length=64)
        assert (first.identifier, second.identifier) == (nomic, f"{nomic}:2")
        assert first.type == second.type == "embedding"
        assert (await manager.choose(nomic, kind="embedding")).instance is first
        with pytest.raises(InvalidRequestError, match="embedding model"):
            await manager.choose(nomic, kind="llm")
        # An llm in embedding mode: <key>:embedding, then <key>:embedding:2, never a <key>:N.
        chat = await manager.load(gemma, context_length=256)
        modes = [await manager.load(gemma, embedding=True, context_length=64) for _ in range(2)]
        assert [m.identifier for m in modes] == [f"{gemma}:embedding", f"{gemma}:embedding:2"]
        assert chat.identifier == gemma
        assert (await manager.load(gemma, context_length=256)).identifier == f"{gemma}:2"
        # After an unload, the embedding identifier loads its model again (just in time).
        await manager.unload(f"{gemma}:embedding")
        again = await manager.acquire(f"{gemma}:embedding", kind="embedding")
        assert again is modes[1]  # the model's loaded embedding instance serves it
        await manager.unload(f"{gemma}:embedding:2")
        reloaded = await manager.acquire(f"{gemma}:embedding:2", kind="embedding")
        assert (reloaded.identifier, reloaded.type) == (f"{gemma}:embedding", "embedding")
    finally:
        await manager.close()
