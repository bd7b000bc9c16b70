"""``lms __complete``: the values shell completion offers, read without Typer or a daemon."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lms import completion, ggufheader, modelkeys, modeltypes, paths
from lms.auth.registry import Registry


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lms"))
    monkeypatch.setenv("LMS_HOME", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = completion.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_tokens_are_names_then_ids(home: Path) -> None:
    assert completion.tokens() == []  # no tokens.toml yet
    alpha, _ = Registry().create("alpha", None)
    beta, _ = Registry().create("beta", None)
    assert completion.tokens() == ["alpha", "beta", alpha.id, beta.id]
    assert run("tokens") == (0, f"alpha\nbeta\n{alpha.id}\n{beta.id}\n", "")
    assert run("tokens", "al") == (0, "alpha\n", "")


def test_a_broken_registry_completes_nothing_and_says_nothing(home: Path) -> None:
    Registry().create("alpha", None)
    paths.tokens_file().write_text("generation = [broken\n")
    assert completion.tokens() == []
    assert run("tokens") == (0, "", "")


def test_models_come_from_the_folder_without_a_daemon(home: Path) -> None:
    for relative in ["google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf", "local/top-Q8_0.gguf"]:
        file = paths.models_dir() / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"GGUF")
    modelkeys.write_manifest(paths.models_dir() / "google" / "gemma-3-270m", "google/gemma-3-270m")
    assert completion.models() == ["google/gemma-3-270m", "top"]
    assert run("models", "goo") == (0, "google/gemma-3-270m\n", "")


def _write_embedding_gguf(path: Path) -> None:
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("Tiny Embed")
    writer.add_tensor("token_embd.weight", np.zeros((4, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_model_keys_follow_the_daemon_rule_reading_each_header_once(
    home: Path, monkeypatch: pytest.MonkeyPatch, make_gguf: Callable[..., bytes]
) -> None:
    folder = paths.models_dir() / "google" / "gemma-3-270m"
    for name in ["gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m-Q8_0.gguf"]:
        make_gguf(folder / name, tensor_bytes=64)
    modelkeys.write_manifest(folder, "google/gemma-3-270m")
    embed = paths.models_dir() / "nomic-ai" / "nomic-embed-text-v1.5-GGUF" / "nomic.Q4_K_M.gguf"
    _write_embedding_gguf(embed)
    keys = [
        "google/gemma-3-270m@q4_k_m",
        "google/gemma-3-270m@q8_0",
        "text-embedding-nomic-embed-text-v1.5",
    ]
    assert completion.models() == keys  # reads the embedding model's header, once
    assert (paths.data_dir() / modeltypes.TYPE_CACHE_NAME).is_file()

    def no_header(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("completion read a GGUF header")

    monkeypatch.setattr(ggufheader, "parse_header", no_header)
    assert completion.models() == keys  # every TAB after that: a stat per file
    assert run("models", "google/gemma-3-270m@q8") == (0, "google/gemma-3-270m@q8_0\n", "")
    monkeypatch.undo()
    monkeypatch.setenv("LMS_HOME", str(home))
    embed.unlink()
    make_gguf(embed, tensor_bytes=64)  # now a text model: read again, keyed again
    assert completion.models()[-1] == "nomic-embed-text-v1.5"


def test_no_daemon_means_no_instances_and_no_start(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_spawn(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("completion started a daemon")

    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    assert completion.instances() == []
    # A socket file nobody listens on (a crashed daemon) is no daemon either.
    paths.ensure_private_dir(paths.runtime_dir())
    paths.socket_path().touch()
    assert completion.instances() == []
    assert run("instances") == (0, "", "")


@pytest.mark.parametrize("argv", [[], ["nope"], ["tokens", "a", "b"]])
def test_bad_usage_exits_2(home: Path, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert (code, out) == (2, "")
    assert err == "usage: lms __complete tokens|models|instances|remotes [PREFIX]\n"
