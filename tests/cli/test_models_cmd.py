"""``lms ls | ps | load | unload`` against no daemon and against a FakeControlServer; the load
bounds also against the real daemon's control socket."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_control import FakeControlServer, instance_doc
from typer.testing import CliRunner

from lms import client as control
from lms import paths
from lms.cli import app, render
from lms.errors import InvalidParameterError
from lms.inference import defaultmodel

pytestmark = pytest.mark.usefixtures("lms_home")


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)


# --- ls without a daemon ------------------------------------------------------------------------


def test_ls_without_models_or_daemon(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_spawn(*a: Any, **k: Any) -> int:
        raise AssertionError("ls started a daemon")

    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    result = runner.invoke(app, ["ls"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "not downloaded any models" in result.stderr
    assert json.loads(runner.invoke(app, ["ls", "--json"]).stdout) == []


def test_ls_without_daemon_reads_the_headers_itself(
    runner: CliRunner, make_gguf: Callable[..., bytes]
) -> None:
    models = paths.models_dir()
    gemma = models / "google" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
    make_gguf(gemma, tensor_bytes=2048, name="Gemma Tiny")
    defaultmodel.ensure_manifest(gemma.parent)  # as the default model's assembly writes it
    _write(models / "google" / "gemma-3-270m" / "mmproj-gemma.gguf", 5)  # a projector
    make_gguf(models / "pub" / "two" / "Two-Q8_0.gguf", tensor_bytes=1024)
    make_gguf(models / "pub" / "two" / "Two-F16.gguf", tensor_bytes=2048)
    make_gguf(models / "pub" / "flat.gguf", tensor_bytes=64)
    make_gguf(models / "top.gguf", tensor_bytes=64)
    _write(models / "pub" / "dl" / "half.gguf.part", 7)  # a partial download
    _write(models / ".hidden" / "x" / "y.gguf", 7)
    _write(models / "notes" / "readme.txt", 7)
    _write(models / "bad" / "zeros" / "zeros.gguf", 64)  # not a GGUF: the daemon skips it too

    listed = runner.invoke(app, ["ls", "--json"])
    assert listed.exit_code == 0, listed.stderr
    entries = json.loads(listed.stdout)
    zeros = models / "bad" / "zeros" / "zeros.gguf"
    assert f"warning: not listed: {zeros} is not a readable GGUF model" in listed.stderr
    assert [e["key"] for e in entries] == [
        "flat",
        "google/gemma-3-270m",
        "top",
        "two@f16",
        "two@q8_0",
    ]
    first = entries[1]
    assert first == {
        "key": "google/gemma-3-270m",
        "type": "llm",
        "publisher": "google",
        "display_name": "Gemma Tiny",
        "architecture": "llama",
        "params_string": first["params_string"],
        "quantization": "F32",
        "bits_per_weight": 32.0,
        "size_bytes": gemma.stat().st_size,
        "path": str(gemma),
        "relative_path": "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
        "format": "gguf",
        "max_context_length": 256,
        "trained_for_tool_use": False,
        "vision": False,
        "loaded_instances": [],
    }
    assert first["params_string"]

    result = runner.invoke(app, ["ls"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    total = sum(e["size_bytes"] for e in entries)
    assert lines[0] == f"You have 5 models, taking up {render.format_size(total)}."
    assert lines[2].split() == ["MODEL", "TYPE", "PARAMS", "ARCH", "QUANT", "SIZE"]
    assert lines[4].split()[:5] == [
        "google/gemma-3-270m",
        "llm",
        first["params_string"],
        "llama",
        "F32",
    ]


# --- with a (fake) daemon -----------------------------------------------------------------------


def _model(key: str, loaded: list[str]) -> dict[str, Any]:
    return {
        "key": key,
        "type": "llm",
        "publisher": key.split("/")[0],
        "display_name": key,
        "architecture": "gemma3",
        "params_string": "270M",
        "quantization": "Q4_K_M",
        "bits_per_weight": 4.5,
        "size_bytes": 253_113_024,
        "path": f"/models/{key}/x.gguf",
        "format": "gguf",
        "max_context_length": 32768,
        "trained_for_tool_use": False,
        "vision": False,
        "loaded_instances": loaded,
    }


def test_ls_with_a_daemon_shows_its_catalog(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    models = [_model("google/gemma-3-270m", ["a", "b"]), _model("pub/other", [])]
    fake_daemon.route("GET", "/models", (200, {"models": models}))
    result = runner.invoke(app, ["ls"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "You have 2 models, taking up 506.23 MB."
    assert lines[2].split() == ["MODEL", "TYPE", "PARAMS", "ARCH", "QUANT", "SIZE"]
    assert lines[3].split() == [
        "google/gemma-3-270m", "llm", "270M", "gemma3", "Q4_K_M",
        "253.11", "MB", "✓", "LOADED", "(2)",
    ]  # fmt: skip
    assert lines[4].endswith("MB")
    assert json.loads(runner.invoke(app, ["ls", "--json"]).stdout) == models


def test_ps_lists_instances_sorted_with_ttl_left(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    instances = [
        instance_doc("zeta", model_key="pub/z", status="generating", queued=2),
        instance_doc("alpha", model_key="pub/a", type="embedding", ttl_seconds=None),
    ]
    fake_daemon.route("GET", "/instances", (200, {"instances": instances}))
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "IDENTIFIER", "MODEL", "MODE", "STATUS", "QUEUED", "SIZE", "CONTEXT", "TTL"
    ]  # fmt: skip
    assert lines[1].split() == [
        "alpha",
        "pub/a",
        "embedding",
        "IDLE",
        "0",
        "253.00",
        "MB",
        "4096",
        "-",
    ]
    assert lines[2].split() == [
        "zeta", "pub/z", "chat", "GENERATING", "2", "253.00", "MB", "4096", "55m", "/", "1h"
    ]  # fmt: skip
    doc = json.loads(runner.invoke(app, ["ps", "--json"]).stdout)
    assert [i["identifier"] for i in doc] == ["alpha", "zeta"]


def test_ps_with_nothing_loaded(runner: CliRunner, fake_daemon: FakeControlServer) -> None:
    fake_daemon.route("GET", "/instances", (200, {"instances": []}))
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no model is loaded" in result.stderr
    assert json.loads(runner.invoke(app, ["ps", "--json"]).stdout) == []


def test_load_prints_the_identifier_and_the_load_time(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.route("POST", "/instances/load", (200, instance_doc("mine", model_key="pub/m")))
    result = runner.invoke(
        app, ["load", "pub/m", "--context-length", "2048", "--ttl", "600", "--identifier", "mine"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "mine\n"
    assert "loaded pub/m in 0.50 s (253.00 MB, context 4096)" in result.stderr
    body = {"model": "pub/m", "context_length": 2048, "ttl": 600, "identifier": "mine"}
    assert ("POST", "/instances/load", body) in fake_daemon.requests


def test_load_of_an_unknown_model_exits_5_with_the_daemon_message(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    fake_daemon.error(
        "POST", "/instances/load", 404, "model_not_found",
        'model "nope" not found. Available models: google/gemma-3-270m',
    )  # fmt: skip
    result = runner.invoke(app, ["load", "nope"])
    assert result.exit_code == 5
    assert "Available models: google/gemma-3-270m" in result.stderr


@pytest.mark.parametrize(
    "args", [["load", "m", "--context-length", "0"], ["load", "m", "--ttl", "0"]]
)
def test_load_rejects_bad_numbers(runner: CliRunner, args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ttl", "2592001"], "'--ttl' must be between 1 and 2592000 seconds (30 days)"),
        (["--ttl", "9" * 401], "'--ttl' must be between 1 and 2592000 seconds (30 days)"),
        (["--identifier", "a\x07b"], "'--identifier' must be printable text"),
        (["--identifier", "x" * 129], "'--identifier' must be 1 to 128 characters long"),
    ],
)
def test_load_refuses_out_of_bounds_ttl_and_identifier_before_the_daemon(
    runner: CliRunner, fake_daemon: FakeControlServer, args: list[str], says: str
) -> None:
    result = runner.invoke(app, ["load", "pub/m", *args])
    assert result.exit_code == 2, result.stderr
    assert says in result.stderr
    assert not [r for r in fake_daemon.requests if r[1] == "/instances/load"]


def test_load_passes_the_draft_model_through(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    doc = instance_doc("pub/m", model_key="pub/m", draft_model="pub/d", draft_models=["pub/d"])
    fake_daemon.route("POST", "/instances/load", (200, doc))
    result = runner.invoke(app, ["load", "pub/m", "--draft-model", "pub/d", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["draft_model"] == "pub/d"
    assert ("POST", "/instances/load", {"model": "pub/m", "draft_model": "pub/d"}) in (
        fake_daemon.requests
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--draft-model", ""], "'--draft-model' must be 1 to 128 characters long"),
        (["--draft-model", "x" * 129], "'--draft-model' must be 1 to 128 characters long"),
        (["--draft-model", "a\nb"], "'--draft-model' must be printable text"),
        (["--draft-model", "pub/d", "--embedding"], "--draft-model is for chat models"),
    ],
)
def test_load_refuses_a_bad_draft_model_before_the_daemon(
    runner: CliRunner, fake_daemon: FakeControlServer, args: list[str], says: str
) -> None:
    result = runner.invoke(app, ["load", "pub/m", *args])
    assert result.exit_code == 2, result.stderr
    assert says in result.stderr
    assert not [r for r in fake_daemon.requests if r[1] == "/instances/load"]


def test_unload_identifier_and_all_together_is_bad_usage(runner: CliRunner) -> None:
    result = runner.invoke(app, ["unload", "x", "--all"])
    assert result.exit_code == 2
    assert "not both" in result.stderr


def _unload_route(fake: FakeControlServer, loaded: list[str]) -> None:
    fake.route("GET", "/instances", (200, {"instances": [instance_doc(i) for i in loaded]}))

    def unload(body: Any) -> tuple[int, Any]:
        if body.get("all"):
            return 200, {"unloaded": loaded}
        if body["identifier"] not in loaded:
            message = f"no instance {body['identifier']!r}"
            return 404, {"error": {"code": "instance_not_found", "message": message}}
        return 200, {"unloaded": [body["identifier"]]}

    fake.route("POST", "/instances/unload", unload)


def test_unload_without_identifier_takes_the_only_instance(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    _unload_route(fake_daemon, ["only"])
    result = runner.invoke(app, ["unload"])
    assert result.exit_code == 0, result.stderr
    assert 'unloaded "only"' in result.stderr
    assert ("POST", "/instances/unload", {"identifier": "only"}) in fake_daemon.requests


@pytest.mark.parametrize(("loaded", "message"), [([], "nothing to unload"), (["a", "b"], "a, b")])
def test_unload_without_identifier_needs_exactly_one_instance(
    runner: CliRunner, fake_daemon: FakeControlServer, loaded: list[str], message: str
) -> None:
    _unload_route(fake_daemon, loaded)
    result = runner.invoke(app, ["unload"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not any(path == "/instances/unload" for _, path, _ in fake_daemon.requests)


def test_unload_all_and_unknown(runner: CliRunner, fake_daemon: FakeControlServer) -> None:
    _unload_route(fake_daemon, ["a", "b"])
    result = runner.invoke(app, ["unload", "--all", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"unloaded": ["a", "b"]}
    unknown = runner.invoke(app, ["unload", "zzz"])
    assert unknown.exit_code == 5
    assert "no instance 'zzz'" in unknown.stderr


@pytest.mark.model
@pytest.mark.usefixtures("running_daemon")
@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("ttl", 2_592_001, "'ttl' must be between 1 and 2592000 seconds"),
        ("ttl", 10**30, "'ttl'"),
        ("identifier", "a\x00b", "'identifier' must be printable text"),
        ("identifier", "\ud800", "'identifier'"),
        ("identifier", "x" * 129, "'identifier' must be 1 to 128 characters"),
        ("context_length", 1_000_000_000, "'context_length' must be between 16 and 32768"),
    ],
)
def test_the_control_socket_bounds_loads_too(field: str, value: Any, says: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        control.ControlClient().load("google/gemma-3-270m", **{field: value})
    assert says in info.value.message
    assert control.ControlClient().instances() == []
