"""``lms remote``: add, list, rm — config.toml's ``[remotes.NAME]`` tables, with or without a
daemon (its live state from a FakeControlServer's canned ``GET /remotes``)."""

from __future__ import annotations

import io
import json
import os
import stat
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fake_control import FakeControlServer, remote_doc
from pki import make_pki
from typer.testing import CliRunner

import lms
from lms import completion, config, modelkeys, paths
from lms.auth import audit
from lms.cli import app
from lms.errors import ExitCode
from lms.protocol import DaemonStatus

pytestmark = pytest.mark.usefixtures("lms_home")

KEY = "sk-upstream-0123456789abcdef"


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    return runner.invoke(app, ["remote", *args], input=input)


def add(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    result = invoke(runner, "add", *args, input=input)
    assert result.exit_code == 0, result.stderr
    return result


def config_doc() -> dict[str, Any]:
    return tomllib.loads(paths.config_file().read_text())


def key_file(tmp_path: Path, mode: int = 0o600, text: str = KEY + "\n") -> Path:
    path = tmp_path / "upstream.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def everything_printed(result: Any) -> str:
    return result.stdout + result.stderr


# --- add / list / rm round trip -----------------------------------------------------------------


def test_add_list_rm_round_trip_through_config_toml(runner: CliRunner, tmp_path: Path) -> None:
    key = key_file(tmp_path)
    result = add(
        runner,
        "gpu",
        "http://10.0.0.5:8080/v1/",
        "http://10.0.0.6:8080",
        "--key-file",
        str(key),
        "--model",
        "llama-*",
        "-m",
        "qwen*",
        "--timeout",
        "120",
        "--max-concurrent",
        "8",
        "--health-path",
        "/health",
    )
    assert result.stdout.splitlines() == [
        "added remote gpu",
        "  urls:     http://10.0.0.5:8080, http://10.0.0.6:8080",
        f"  key file: {key}",
        "  models:   llama-*, qwen*",
    ]
    assert "within seconds (no restart)" in result.stderr
    assert config_doc() == {
        "remotes": {
            "gpu": {
                "urls": ["http://10.0.0.5:8080", "http://10.0.0.6:8080"],
                "key_file": str(key),
                "models": ["llama-*", "qwen*"],
                "timeout": 120,
                "max_concurrent": 8,
                "health_path": "/health",
            }
        }
    }
    assert KEY not in everything_printed(result)

    listed = invoke(runner, "list")
    assert listed.exit_code == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "URLS", "KEY", "FILE", "MODELS", "STATE"]
    assert lines[1].split() == [
        "gpu",
        "http://10.0.0.5:8080,",
        "http://10.0.0.6:8080",
        str(key),
        "llama-*,",
        "qwen*",
        "-",
    ]
    assert "daemon not running" in listed.stderr

    removed = invoke(runner, "rm", "gpu")
    assert removed.exit_code == 0, removed.stderr
    assert removed.stdout == ""
    assert "removed remote gpu" in removed.stderr
    assert config_doc() == {}
    assert key.read_text() == KEY + "\n"  # the user's own key file is left alone
    empty = invoke(runner, "list")
    assert empty.exit_code == 0 and empty.stdout == ""
    assert "no remotes in" in empty.stderr


def test_list_json_shape(runner: CliRunner) -> None:
    add(runner, "vllm", "https://vllm.example:8000", "--connect-timeout", "3")
    result = invoke(runner, "list", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {
        "path": str(paths.config_file()),
        "daemon_running": False,
        "remotes": [
            {
                "name": "vllm",
                "urls": ["https://vllm.example:8000"],
                "key_file": "",
                "models": [],
                "ca_file": "",
                "timeout": 600,
                "connect_timeout": 3,
                "idle_timeout": 300,
                "max_concurrent": 64,
                "health_path": "/v1/models",
                "health_interval": 5,
                "live": None,
            }
        ],
    }


def test_add_json_is_one_document(runner: CliRunner) -> None:
    result = add(runner, "a", "http://127.0.0.1:8081", "--json")
    doc = json.loads(result.stdout)
    assert doc["name"] == "a" and doc["urls"] == ["http://127.0.0.1:8081"]
    assert doc["replaced"] is False
    assert doc["key_file"] == ""
    replaced = add(runner, "a", "http://127.0.0.1:8082", "--replace", "--json")
    assert json.loads(replaced.stdout)["replaced"] is True


def test_add_and_rm_keep_every_other_setting(runner: CliRunner) -> None:
    for key, value in [("server.port", "5678"), ("auth.required", "on"), ("models.ttl", "60")]:
        assert runner.invoke(app, ["config", "set", key, value]).exit_code == 0
    add(runner, "one", "http://127.0.0.1:9001")
    add(runner, "two", "http://127.0.0.1:9002")
    others = {"server": {"port": 5678}, "auth": {"required": True}, "models": {"ttl": 60}}
    doc = config_doc()
    assert set(doc.pop("remotes")) == {"one", "two"}
    assert doc == others
    assert invoke(runner, "rm", "one").exit_code == 0
    doc = config_doc()
    assert doc.pop("remotes") == {"two": {"urls": ["http://127.0.0.1:9002"]}}
    assert doc == others
    assert invoke(runner, "rm", "two").exit_code == 0
    assert config_doc() == others


def test_changes_are_audited_with_name_and_urls_never_the_key(runner: CliRunner) -> None:
    add(runner, "gpu", "http://10.0.0.5:8080", "--key-stdin", input=KEY + "\n")
    add(runner, "gpu", "http://10.0.0.7:8080", "--replace", "--key-stdin", input=KEY + "x\n")
    assert invoke(runner, "rm", "gpu").exit_code == 0
    entries = [e for e in audit.read() if e["event"] == "remote_changed"]
    managed = str(paths.remote_key_file("gpu"))
    assert [(e["name"], e["old"], e["new"]) for e in entries] == [
        ("gpu", None, {"urls": ["http://10.0.0.5:8080"], "models": [], "key_file": managed}),
        (
            "gpu",
            {"urls": ["http://10.0.0.5:8080"], "models": [], "key_file": managed},
            {"urls": ["http://10.0.0.7:8080"], "models": [], "key_file": managed},
        ),
        ("gpu", {"urls": ["http://10.0.0.7:8080"], "models": [], "key_file": managed}, None),
    ]
    assert KEY not in paths.audit_log().read_text()
    shown = runner.invoke(app, ["auth", "audit"])
    assert "remote_changed" in shown.stdout and KEY not in shown.stdout


# --- keys ---------------------------------------------------------------------------------------


def test_key_stdin_writes_a_private_file_and_never_shows_the_key(runner: CliRunner) -> None:
    result = add(runner, "vllm", "https://vllm.example", "--key-stdin", input=KEY + "\n")
    path = paths.remote_key_file("vllm")
    assert path == paths.config_dir() / "remotes" / "vllm.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().strip() == KEY
    assert config_doc()["remotes"]["vllm"]["key_file"] == str(path)
    assert f"  key file: {path}" in result.stdout
    assert KEY not in everything_printed(result)
    assert KEY not in paths.config_file().read_text()
    for args in (["list"], ["list", "--json"]):
        listed = invoke(runner, *args)
        assert listed.exit_code == 0
        assert KEY not in everything_printed(listed)
        assert str(path) in listed.stdout

    assert invoke(runner, "rm", "vllm").exit_code == 0
    assert not path.exists()  # the key file --key-stdin wrote goes with the remote


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "no key on stdin"),
        ("\n", "no key on stdin"),
        ("two words\n", "printable ASCII"),
        ("x" * 5000 + "\n", "printable ASCII"),
    ],
)
def test_key_stdin_refuses_a_missing_or_malformed_key(
    runner: CliRunner, given: str, message: str
) -> None:
    result = invoke(runner, "add", "vllm", "https://vllm.example", "--key-stdin", input=given)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.stderr
    assert given.strip() == "" or given.strip()[:20] not in everything_printed(result)
    assert not paths.config_file().exists()
    assert not paths.remote_key_file("vllm").exists()


def test_replacing_with_a_key_file_drops_the_key_stdin_file(
    runner: CliRunner, tmp_path: Path
) -> None:
    add(runner, "vllm", "https://vllm.example", "--key-stdin", input=KEY + "\n")
    managed = paths.remote_key_file("vllm")
    assert managed.exists()
    own = key_file(tmp_path)
    add(runner, "vllm", "https://vllm.example", "--replace", "--key-file", str(own))
    assert not managed.exists()
    assert own.exists()
    assert config_doc()["remotes"]["vllm"]["key_file"] == str(own)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_others_can_read_is_refused(
    runner: CliRunner, tmp_path: Path, mode: int
) -> None:
    key = key_file(tmp_path, mode=mode)
    result = invoke(runner, "add", "gpu", "http://10.0.0.5:8080", "--key-file", str(key))
    assert result.exit_code == ExitCode.USAGE
    assert "--key-file" in result.stderr and f"chmod 600 {key}" in result.stderr
    assert KEY not in everything_printed(result)
    assert not paths.config_file().exists()


def test_a_missing_symlinked_or_malformed_key_file_is_refused(
    runner: CliRunner, tmp_path: Path
) -> None:
    def refused(path: Path, message: str) -> None:
        result = invoke(runner, "add", "gpu", "http://10.0.0.5:8080", "--key-file", str(path))
        assert result.exit_code == ExitCode.USAGE, result.stderr
        assert message in result.stderr
        assert KEY not in everything_printed(result)

    refused(tmp_path / "missing.key", "cannot open the key file")
    real = key_file(tmp_path)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    refused(link, "cannot open the key file")
    refused(key_file(tmp_path, text=f"{KEY} and more\n"), "must hold one key")
    assert not paths.config_file().exists()


def test_a_relative_key_file_is_stored_absolute(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    add(runner, "gpu", "http://10.0.0.5:8080", "--key-file", "upstream.key")
    assert config_doc()["remotes"]["gpu"]["key_file"] == str(tmp_path / "upstream.key")


def test_key_file_and_key_stdin_together_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    key = key_file(tmp_path)
    result = invoke(
        runner, "add", "g", "http://h", "--key-file", str(key), "--key-stdin", input=KEY
    )
    assert result.exit_code == ExitCode.USAGE
    assert "not both" in result.stderr


def test_ca_file_must_load_and_needs_https(runner: CliRunner, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    result = invoke(runner, "add", "g", "https://h", "--ca-file", str(bogus))
    assert result.exit_code == ExitCode.USAGE
    assert "--ca-file: cannot use" in result.stderr
    result = invoke(runner, "add", "g", "https://h", "--ca-file", str(tmp_path / "none.pem"))
    assert result.exit_code == ExitCode.USAGE
    assert "--ca-file" in result.stderr
    assert not paths.config_file().exists()


def test_a_real_ca_file_is_stored(runner: CliRunner, tmp_path: Path) -> None:
    ca = make_pki(tmp_path).ca
    add(runner, "g", "https://h.example", "--ca-file", str(ca))
    assert config_doc()["remotes"]["g"]["ca_file"] == str(ca)
    result = invoke(runner, "add", "h", "http://h.example", "--ca-file", str(ca))
    assert result.exit_code == ExitCode.USAGE
    assert "--ca-file: only for https:// upstreams" in result.stderr


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad", "http://h"], "NAME: 'Bad' is not a remote name"),
        (["-dash", "http://h"], "No such option"),
        (["a/b", "http://h"], "is not a remote name"),
        (["ok", "ftp://h"], "URL: 'ftp://h': only http:// and https://"),
        (["ok", "http://user:pw@h"], "must not hold credentials"),
        (["ok", "http://h/?x=1"], "no query or fragment"),
        (["ok", "http://h:0"], "invalid port"),
        (["ok", "http://h", "http://h/v1"], "URL: a replica is listed twice"),
        (["ok", "http://h", "--model", ""], "--model: must be a list of non-empty globs"),
        (["ok", "http://h", "--model", "x" * 257], "--model: at most 64 globs"),
        (["ok", "http://h", "--timeout", "0"], "--timeout: must be a whole number between 1"),
        (["ok", "http://h", "--timeout", "86401"], "--timeout"),
        (["ok", "http://h", "--timeout", "soon"], "Invalid value for '--timeout'"),
        (["ok", "http://h", "--connect-timeout", "301"], "--connect-timeout"),
        (["ok", "http://h", "--idle-timeout", "0"], "--idle-timeout"),
        (["ok", "http://h", "--max-concurrent", "4097"], "--max-concurrent"),
        (["ok", "http://h", "--health-path", "health"], "--health-path: must be a path"),
        (["ok", "http://h", "--health-path", "/a/../b"], "--health-path"),
        (["ok"], "Missing argument"),
    ],
)
def test_bad_input_is_refused_with_exit_2_naming_the_option(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = invoke(runner, "add", *args)
    assert result.exit_code == ExitCode.USAGE, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not paths.config_file().exists()


def test_a_taken_name_needs_replace(runner: CliRunner) -> None:
    add(runner, "gpu", "http://10.0.0.5:8080")
    result = invoke(runner, "add", "gpu", "http://10.0.0.9:8080")
    assert result.exit_code == ExitCode.CONFLICT
    assert "a remote named 'gpu' already exists" in result.stderr
    assert "--replace" in result.stderr and "lms remote rm gpu" in result.stderr
    assert config_doc()["remotes"]["gpu"]["urls"] == ["http://10.0.0.5:8080"]
    replaced = add(runner, "gpu", "http://10.0.0.9:8080", "--replace")
    assert replaced.stdout.startswith("replaced remote gpu\n")
    assert config_doc()["remotes"] == {"gpu": {"urls": ["http://10.0.0.9:8080"]}}


def test_a_taken_name_keeps_its_key_stdin_file(runner: CliRunner) -> None:
    add(runner, "gpu", "http://10.0.0.5:8080", "--key-stdin", input=KEY + "\n")
    result = invoke(runner, "add", "gpu", "http://h", "--key-stdin", input="other-key\n")
    assert result.exit_code == ExitCode.CONFLICT
    assert paths.remote_key_file("gpu").read_text().strip() == KEY


def test_the_number_of_remotes_is_bounded(runner: CliRunner) -> None:
    from lms.remoteconfig import MAX_REMOTES

    for index in range(MAX_REMOTES):
        add(runner, f"r{index}", f"http://127.0.0.1:{9000 + index}")
    result = invoke(runner, "add", "one-more", "http://127.0.0.1:8999")
    assert result.exit_code == ExitCode.USAGE
    assert f"already holds {MAX_REMOTES} remotes" in result.stderr
    assert len(config.read_file()[config.REMOTES]) == MAX_REMOTES  # still a valid file


@pytest.mark.parametrize("folder", ["google", "Google", "lmstudio-community"])
def test_a_publisher_folder_name_is_refused(runner: CliRunner, folder: str) -> None:
    (paths.models_dir() / folder / "some-model-GGUF").mkdir(parents=True)
    result = invoke(runner, "add", folder.lower(), "http://h")
    assert result.exit_code == ExitCode.CONFLICT
    assert "is a publisher of local models" in result.stderr
    assert not paths.config_file().exists()


def test_a_manifest_publisher_and_local_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "lmstudio-community" / "gemma-GGUF"
    folder.mkdir(parents=True)
    (folder / "gemma-Q4_K_M.gguf").write_bytes(b"GGUF")
    modelkeys.write_manifest(folder, "acme/gemma")
    assert (
        runner.invoke(app, ["config", "set", "models.dir", str(tmp_path / "models")]).exit_code == 0
    )
    for name in ("acme", "lmstudio-community", "local"):
        result = invoke(runner, "add", name, "http://h")
        assert result.exit_code == ExitCode.CONFLICT, name
    add(runner, "gemma", "http://h")  # a model name is no publisher


def test_rm_of_an_unknown_remote_exits_5(runner: CliRunner) -> None:
    add(runner, "gpu", "http://10.0.0.5:8080")
    before = paths.config_file().read_bytes()
    result = invoke(runner, "rm", "nope")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "no remote named 'nope'" in result.stderr
    assert paths.config_file().read_bytes() == before


def test_a_broken_remotes_table_is_a_clear_error(runner: CliRunner) -> None:
    paths.ensure_dir(paths.config_dir())
    paths.config_file().write_text('[remotes.gpu]\nurls = ["ftp://h"]\n')
    for args in (["list"], ["add", "other", "http://h"], ["rm", "gpu"]):
        result = invoke(runner, *args)
        assert result.exit_code == ExitCode.FAILED, args
        assert "remotes.gpu: urls:" in result.stderr
    assert paths.config_file().read_text() == '[remotes.gpu]\nurls = ["ftp://h"]\n'


# --- the daemon's state -------------------------------------------------------------------------


def test_list_shows_the_daemon_state(runner: CliRunner, fake_daemon: FakeControlServer) -> None:
    add(runner, "gpu", "http://10.0.0.5:8080", "http://10.0.0.6:8080")
    add(runner, "down", "http://10.0.0.7:8080")
    add(runner, "new", "http://10.0.0.8:8080")
    fake_daemon.remotes = [
        remote_doc(
            "gpu", ["http://10.0.0.5:8080", "http://10.0.0.6:8080"], models=("llama-3", "qwen")
        ),
        remote_doc("down", ["http://10.0.0.7:8080"], healthy=False, error="no replica answers"),
    ]
    result = invoke(runner, "list")
    assert result.exit_code == 0, result.stderr
    assert "daemon not running" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:4]}
    assert rows["gpu"].endswith("2 models, 2/2 replicas healthy")
    assert rows["down"].endswith("error: no replica answers")
    assert rows["new"].endswith("not in use yet")
    out = result.stdout
    assert "gpu:\n  http://10.0.0.5:8080  healthy, 0 in flight\n" in out
    assert "  models: gpu/llama-3, gpu/qwen\n" in out
    assert "down:\n  http://10.0.0.7:8080  unhealthy: connection refused, 0 in flight\n" in out
    assert ("GET", "/remotes", None) in fake_daemon.requests

    doc = json.loads(invoke(runner, "list", "--json").stdout)
    assert doc["daemon_running"] is True
    live = {remote["name"]: remote["live"] for remote in doc["remotes"]}
    assert live["gpu"] == {
        "models": ["gpu/llama-3", "gpu/qwen"],
        "error": None,
        "replicas": [
            {"url": "http://10.0.0.5:8080", "healthy": True, "in_flight": 0, "error": None},
            {"url": "http://10.0.0.6:8080", "healthy": True, "in_flight": 0, "error": None},
        ],
    }
    assert live["down"]["error"] == "no replica answers"
    assert live["new"] is None


def test_list_against_a_daemon_without_the_route(
    runner: CliRunner, fake_daemon: FakeControlServer
) -> None:
    del fake_daemon.routes[("GET", "/remotes")]
    add(runner, "gpu", "http://10.0.0.5:8080")
    result = invoke(runner, "list")
    assert result.exit_code == 0, result.stderr
    assert "does not report remotes" in result.stderr
    assert "not in use yet" in result.stdout


def test_list_never_starts_a_daemon(runner: CliRunner) -> None:
    add(runner, "gpu", "http://10.0.0.5:8080")
    assert invoke(runner, "list").exit_code == 0
    assert not paths.socket_path().exists()
    assert not paths.pid_file().exists()


# --- completion ---------------------------------------------------------------------------------


def test_rm_completes_the_configured_names(runner: CliRunner) -> None:
    assert completion.remotes() == []
    add(runner, "gpu", "http://10.0.0.5:8080")
    add(runner, "vllm", "http://10.0.0.6:8080")
    out = io.StringIO()
    assert completion.main(["remotes", "v"], out) == 0
    assert out.getvalue() == "vllm\n"
    assert completion.values("remotes") == ["gpu", "vllm"]
    paths.config_file().write_text("[remotes.gpu]\n")  # broken: nothing, silently
    assert completion.remotes() == []


def test_rm_argument_is_completed_from_the_remotes_source() -> None:
    from lms.cli.docgen import tree

    rm = next(c for c in tree.build().walk() if c.path == ("remote", "rm"))
    assert rm.arguments[0].values == tree.Values("dynamic", source="remotes")


def test_key_stdin_does_not_read_more_than_one_line(runner: CliRunner) -> None:
    add(runner, "a", "http://h", "--key-stdin", input=f"{KEY}\nsecond line\n")
    assert paths.remote_key_file("a").read_text() == KEY + "\n"
    assert os.stat(paths.remote_key_file("a")).st_uid == os.geteuid()


# --- with the real daemon -----------------------------------------------------------------------


@pytest.fixture
def remote_engines() -> None:
    """Skip, saying why, while the daemon has no remote engines (lms.remote) in this tree."""
    if not (Path(lms.__file__).parent / "remote" / "engine.py").is_file():
        pytest.skip("the daemon's remote engines (lms.remote) are not in this tree")


def _live(runner: CliRunner) -> dict[str, Any]:
    doc = json.loads(invoke(runner, "list", "--json").stdout)
    assert doc["daemon_running"] is True
    return {remote["name"]: remote["live"] for remote in doc["remotes"]}


def _served() -> list[str]:
    from lms import client as control

    return [entry["name"] for entry in control.ControlClient().remotes()]


@pytest.mark.model
def test_the_daemon_serves_what_add_wrote_and_stops_after_rm(
    runner: CliRunner, remote_engines: None, running_daemon: DaemonStatus
) -> None:
    from remote.upstreams import FakeUpstream

    with FakeUpstream(models=["llama-3", "qwen"], key=KEY).in_thread() as upstream:
        assert upstream.key_file is not None
        add(runner, "gpu", upstream.base_url, "--key-file", str(upstream.key_file), "-m", "llama*")
        deadline = time.monotonic() + 60
        while not (_live(runner).get("gpu") or {}).get("models"):
            assert time.monotonic() < deadline, "the daemon did not pick the remote up"
            time.sleep(0.05)
        live = _live(runner)["gpu"]
        assert live["models"] == ["gpu/llama-3"]
        assert live["error"] is None
        assert live["replicas"] == [
            {"url": upstream.base_url, "healthy": True, "in_flight": 0, "error": None}
        ]
        listed = invoke(runner, "list")
        assert "1 model, 1/1 replica healthy" in listed.stdout
        assert KEY not in everything_printed(listed)
        ls = runner.invoke(app, ["ls", "--json"])
        assert ls.exit_code == 0
        assert [m["remote"] for m in json.loads(ls.stdout) if m.get("remote")] == ["gpu"]
        chat = runner.invoke(app, ["chat", "gpu/llama-3", "-p", "hi from the cli"])
        assert chat.exit_code == 0, chat.stderr
        assert "echo: hi from the cli" in chat.stdout
        load = runner.invoke(app, ["load", "gpu/llama-3"])
        assert load.exit_code == 2 and "remote" in load.stderr

        assert invoke(runner, "rm", "gpu").exit_code == 0
        while "gpu" in _served():
            assert time.monotonic() < deadline, "the daemon still serves a removed remote"
            time.sleep(0.05)
    assert KEY not in paths.daemon_log().read_text()
