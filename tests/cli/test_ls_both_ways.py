"""``lms ls --json`` prints the same document with the real daemon down and up, and shell
completion offers the same keys: one rule for model keys (lms.modelfolder)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lms import client as control
from lms import completion, modelkeys, paths
from lms.cli import app

pytestmark = pytest.mark.usefixtures("lms_home", "real_daemon_available")


def _variety(make_gguf: Callable[..., bytes], default_model_path: Path) -> None:
    """Every layout: the default model (linked, with its verified marker, so the daemon does not
    assemble it again), several variants, a top-level file, depth one, deeper files, and files
    both sides leave out."""
    root = paths.models_dir()
    folder = root / "google" / "gemma-3-270m"
    folder.mkdir(parents=True)
    (folder / default_model_path.name).symlink_to(default_model_path)
    marker = f".{default_model_path.name}.verified"
    shutil.copyfile(default_model_path.with_name(marker), folder / marker)
    shutil.copyfile(
        default_model_path.with_name(modelkeys.MANIFEST_NAME), folder / "lms-model.json"
    )
    # LM Studio's own layout beside it: its key rule, an embedding model, a split model.
    lmstudio = root / "hugging-quants" / "Llama-3.2-1B-Instruct-Q8_0-GGUF"
    lmstudio.mkdir(parents=True)
    (lmstudio / "llama-3.2-1b-instruct-q8_0.gguf").symlink_to(default_model_path)
    make_gguf(root / "nomic-ai" / "nomic-embed-text-v1.5-GGUF" / "n.Q4_K_M.gguf", arch="bert")
    make_gguf(root / "acme" / "Big-GGUF" / "big-00001-of-00002.gguf", tensor_bytes=64)
    make_gguf(root / "acme" / "Big-GGUF" / "big-00002-of-00002.gguf", tensor_bytes=128)
    make_gguf(root / "top.gguf", tensor_bytes=64)
    make_gguf(root / "pub" / "flat.gguf", tensor_bytes=64, name="Flat")
    make_gguf(root / "pub" / "multi" / "multi-Q4_K_M.gguf", tensor_bytes=64)
    make_gguf(root / "pub" / "multi" / "multi-Q8_0.gguf", tensor_bytes=128)
    make_gguf(root / "deep" / "two" / "x" / "two-F16.gguf", tensor_bytes=64)
    make_gguf(root / "deep" / "two" / "y" / "z" / "two-Q8_0.gguf", tensor_bytes=64)
    make_gguf(root / "deep" / "one" / "a" / "b" / "weights.gguf", tensor_bytes=64)
    (root / "pub" / "multi" / "mmproj-multi.gguf").write_bytes(b"GGUF")
    (root / "bad" / "zeros").mkdir(parents=True)
    (root / "bad" / "zeros" / "zeros.gguf").write_bytes(b"\0" * 64)


@pytest.mark.model
def test_ls_json_is_the_same_document_with_the_daemon_down_and_up(
    runner: CliRunner, make_gguf: Callable[..., bytes], default_model_path: Path
) -> None:
    _variety(make_gguf, default_model_path)
    down = runner.invoke(app, ["ls", "--json"])
    assert down.exit_code == 0, down.stderr
    offline = json.loads(down.stdout)
    keys = [
        "big",
        "flat",
        "google/gemma-3-270m",
        "llama-3.2-1b-instruct",
        "multi@q4_k_m",
        "multi@q8_0",
        "one",
        "text-embedding-nomic-embed-text-v1.5",
        "top",
        "two@f16",
        "two@q8_0",
    ]
    assert [m["key"] for m in offline] == keys
    assert all(m["loaded_instances"] == [] for m in offline)
    gemma = offline[2]
    assert (gemma["architecture"], gemma["quantization"]) == ("gemma3", "Q4_K_M")
    big = offline[0]
    split = paths.models_dir() / "acme" / "Big-GGUF"
    assert big["path"] == str(split / "big-00001-of-00002.gguf")
    assert big["size_bytes"] == sum(p.stat().st_size for p in split.iterdir())
    assert offline[7]["type"] == "embedding"
    # Completion cannot tell the file no one can read from a model: it offers it too.
    assert completion.models() == sorted([*keys, "zeros"])

    up = runner.invoke(app, ["daemon", "up", "--json"])
    assert up.exit_code == 0, up.stderr
    pid = json.loads(up.stdout)["pid"]
    try:
        listed = runner.invoke(app, ["ls", "--json"])
        assert listed.exit_code == 0, listed.stderr
        online = json.loads(listed.stdout)
        assert online == offline  # nothing is loaded: loaded_instances is [] on both sides
        assert completion.models() == keys  # the daemon's catalog, when it answers
    finally:
        control.ControlClient().shutdown(wait=True)
        _reap_soon(pid)


def _reap_soon(pid: int, timeout: float = 30.0) -> None:
    """Collect the exited daemon (our child) when it has exited; it released its lock already."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
