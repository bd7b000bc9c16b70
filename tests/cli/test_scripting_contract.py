"""The scripting contract of README: Command reference, for every command of the Typer app.

- stdout holds only results: with --json exactly one JSON document (``log stream --json``:
  one per line), never a message line (``lms: ...``, ``hint: ...``, ``warning``);
- stderr holds the messages; a failure says ``lms: ...`` (or Click's usage error) there;
- exit codes come from the one table (``lms.errors.ExitCode``);
- off a terminal, with or without NO_COLOR: no ANSI escape, no progress bar; on a terminal
  with NO_COLOR, no colour;
- nothing prompts when stdin is not a terminal: ``typer.confirm``/``typer.prompt``/``input``
  fail the test if reached, and destructive commands ask for --yes instead.

Commands are enumerated from the app: a command without cases here fails
:func:`test_every_command_has_contract_cases`.
"""

from __future__ import annotations

import builtins
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from fake_control import FakeControlServer, instance_doc, remote_doc, server_doc
from typer.testing import CliRunner

import lms
from lms import config, modelkeys, paths
from lms.auth.registry import Registry
from lms.cli import app
from lms.cli.docgen import tree
from lms.errors import ExitCode
from lms.remoteconfig import parse_remote

pytestmark = pytest.mark.usefixtures("lms_home")

Stdout = Literal["json", "ndjson", "text", "empty"]


@dataclass
class World:
    """What a case's setup may prepare: files under LMS_HOME, a fake daemon's routes."""

    home: Path
    fake: FakeControlServer | None
    tmp: Path


@dataclass(frozen=True)
class Case:
    args: list[str]
    exit: ExitCode = ExitCode.OK
    stdout: Stdout = "text"
    daemon: bool = False  # run against a FakeControlServer on the control socket
    setup: Callable[[World], None] | None = None
    input: str = ""
    expect: list[str] = field(default_factory=list)  # substrings of stdout + stderr

    @property
    def id(self) -> str:
        return " ".join(self.args) or "(no arguments)"


# --- set-ups -------------------------------------------------------------------------------------

MODEL = "google/gemma-3-270m"


def tokens(world: World) -> None:
    Registry().create("ci", None)
    Registry().create("editor", None)


def mcp_json(world: World) -> None:
    paths.ensure_dir(paths.config_dir())
    server = {"command": "uvx", "args": ["tiktoken-mcp"], "env": {"KEY": "s3cret"}}
    paths.mcp_file().write_text(json.dumps({"mcpServers": {"tiktoken": server}}))


def broken_mcp_json(world: World) -> None:
    paths.ensure_dir(paths.config_dir())
    paths.mcp_file().write_text("{")


def mcp_tools(world: World) -> None:
    server = {
        "name": "tiktoken",
        "id": "mcp/tiktoken",
        "type": "stdio",
        "command": "uvx",
        "args": [],
        "env": {"KEY": "<redacted>"},
        "tools": [{"name": "fetch_tiktoken_documentation", "description": "Fetch the docs."}],
    }
    doc = {"path": "/home/me/.config/lms/mcp.json", "servers": [server]}
    _fake(world).route("GET", "/mcp/servers?tools=1", (200, doc))


def broken_registry(world: World) -> None:
    paths.ensure_dir(paths.config_dir())
    paths.tokens_file().write_text("generation = [\n")


def model_file(world: World) -> None:
    file = paths.models_dir() / "google" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
    file.parent.mkdir(parents=True)
    file.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(100))  # an empty header
    modelkeys.write_manifest(file.parent, MODEL)  # as the default model's assembly writes it


def gguf_file(world: World) -> None:
    (world.tmp / "tiny.gguf").write_bytes(b"GGUF" + bytes(10))


def _fake(world: World) -> FakeControlServer:
    assert world.fake is not None
    return world.fake


def instances(world: World) -> None:
    docs = [instance_doc(MODEL), instance_doc(f"{MODEL}:embedding", model_key=MODEL)]
    _fake(world).route("GET", "/instances", (200, {"instances": docs}))


def one_instance(world: World) -> None:
    _fake(world).route("GET", "/instances", (200, {"instances": [instance_doc(MODEL)]}))


def catalog(world: World) -> None:
    model = {
        "key": MODEL,
        "type": "llm",
        "publisher": "google",
        "display_name": "Gemma 3 270M",
        "architecture": "gemma3",
        "params_string": "270M",
        "quantization": "Q4_K_M",
        "bits_per_weight": 4.5,
        "size_bytes": 253_000_000,
        "path": "/models/google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
        "format": "gguf",
        "max_context_length": 32768,
        "trained_for_tool_use": False,
        "vision": False,
        "loaded_instances": [MODEL],
    }
    _fake(world).route("GET", "/models", (200, {"models": [model]}))


def loads(world: World) -> None:
    def load(body: Any) -> tuple[int, Any]:
        if body["model"] != MODEL:
            return 404, {"error": {"code": "model_not_found", "message": "no such model"}}
        return 200, instance_doc(MODEL, load_time_seconds=1.25)

    _fake(world).route("POST", "/instances/load", load)


def unloads(world: World) -> None:
    one_instance(world)
    _fake(world).route("POST", "/instances/unload", (200, {"unloaded": [MODEL]}))


def shutdown(world: World) -> None:
    _fake(world).route("POST", "/shutdown", (200, {"ok": True}))


def server_running(world: World) -> None:
    fake = _fake(world)
    fake.server = server_doc(running=True, auth=True)
    fake.route("POST", "/server/stop", (200, server_doc()))


def server_starts(world: World) -> None:
    fake = _fake(world)

    def start(body: Any) -> tuple[int, Any]:
        fake.server = server_doc(running=True, port=body["port"])
        fake.server["host"] = body["bind"]
        return 200, fake.server

    fake.route("POST", "/server/start", start)


def port_in_use(world: World) -> None:
    _fake(world).error("POST", "/server/start", 409, "port_in_use", "port 1234 is in use")


def downloads(world: World) -> None:
    fake = _fake(world)
    job = {
        "job_id": "j1",
        "status": "downloading",
        "downloaded_bytes": 0,
        "total_size_bytes": 100,
        "file_name": "m.gguf",
        "model_key": "example.com/m",
        "started_at": "2026-01-01T00:00:00Z",
    }
    fake.route("POST", "/downloads", (200, job))
    done = {**job, "status": "completed", "downloaded_bytes": 100, "path": "/models/m.gguf"}
    fake.route("GET", "/downloads/j1", (200, done))


def already_downloaded(world: World) -> None:
    job = {"status": "already_downloaded", "model_key": MODEL, "downloaded_bytes": 253}
    _fake(world).route("POST", "/downloads", (200, job))


def imports(world: World) -> None:
    gguf_file(world)
    result = {
        "model_key": "local/tiny",
        "path": "/models/local/tiny/tiny.gguf",
        "source": str(world.tmp / "tiny.gguf"),
        "mode": "copy",
        "size_bytes": 14,
    }
    _fake(world).route("POST", "/models/import", (200, result))


def _ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def chats(world: World) -> None:
    one_instance(world)
    stats = {
        "stop_reason": "eos",
        "tokens_per_second": 42.0,
        "time_to_first_token_seconds": 0.05,
        "prompt_tokens": 12,
        "predicted_tokens": 2,
    }
    body = _ndjson(
        {"type": "start", "model": MODEL},
        {"type": "delta", "content": "Paris"},
        {"type": "delta", "content": "."},
        {"type": "end", "stats": stats},
    )
    _fake(world).route("POST", "/chat", (200, body))


def chat_fails(world: World) -> None:
    error = {"code": "model_not_found", "message": "no model 'nobody/nothing'"}
    _fake(world).route("POST", "/chat", (200, _ndjson({"type": "error", "error": error})))


def logs(world: World) -> None:
    request = {
        "type": "server.request",
        "method": "GET",
        "route": "/v1/models",
        "status": 200,
        "token_id": None,
        "duration_ms": 3,
    }
    body = _ndjson(
        {"type": "subscribed"},
        {"timestamp": 1_767_225_600_000, "data": request},
    )
    fake = _fake(world)
    fake.route("GET", "/logs?source=server&source=model", (200, body))
    fake.route("GET", "/logs?source=server", (200, body))


def remotes(world: World) -> None:
    spec = parse_remote("gpu", {"urls": ["http://10.0.0.5:8080"]})
    config.write_remotes(lambda current: (*current, spec))


def remotes_live(world: World) -> None:
    remotes(world)
    _fake(world).remotes = [remote_doc("gpu", ["http://10.0.0.5:8080"], models=("llama-3",))]


def both(*setups: Callable[[World], None]) -> Callable[[World], None]:
    def run(world: World) -> None:
        for setup in setups:
            setup(world)

    return run


# --- the cases, by command ------------------------------------------------------------------------

USAGE = ExitCode.USAGE

CASES: dict[str, list[Case]] = {
    "": [
        Case([], expect=["Usage: lms", "Daemon: not running"]),
        Case([], daemon=True, expect=["Daemon: running"]),
        Case(["--version"], expect=[f"lms {lms.__version__}"]),
        Case(["--help"], expect=["Usage: lms"]),
        Case(["frobnicate"], USAGE, "empty"),
    ],
    "__complete": [
        Case(["__complete", "tokens"], setup=tokens, expect=["ci", "editor"]),
        Case(["__complete", "instances"], stdout="empty"),
        Case(["__complete", "nope"], USAGE, "empty"),
    ],
    "ls": [
        Case(["ls"], setup=model_file, expect=[MODEL]),
        Case(["ls", "--json"], stdout="json", setup=model_file),
        Case(["ls", "--json"], stdout="json", daemon=True, setup=catalog),
        Case(["ls"], daemon=True, setup=catalog, expect=["LOADED"]),
    ],
    "ps": [
        Case(["ps"], daemon=True, setup=instances, expect=[f"{MODEL}:embedding"]),
        Case(["ps", "--json"], stdout="json", daemon=True, setup=instances),
        Case(["ps", "--bogus"], USAGE, "empty"),
    ],
    "load": [
        Case(["load", MODEL], daemon=True, setup=loads, expect=[MODEL]),
        Case(["load", MODEL, "--json"], stdout="json", daemon=True, setup=loads),
        Case(["load", "nobody/nothing"], ExitCode.NOT_FOUND, "empty", daemon=True, setup=loads),
        Case(["load", MODEL, "--context-length", "0"], USAGE, "empty"),
    ],
    "unload": [
        Case(["unload"], stdout="empty", daemon=True, setup=unloads),
        Case(["unload", MODEL, "--json"], stdout="json", daemon=True, setup=unloads),
        Case(["unload", MODEL, "--all"], USAGE, "empty"),
    ],
    "get": [
        Case(["get", "https://example.com/m.gguf"], daemon=True, setup=downloads),
        Case(
            ["get", "https://example.com/m.gguf", "--json"],
            stdout="json",
            daemon=True,
            setup=downloads,
        ),
        Case(["get", MODEL, "--json"], stdout="json", daemon=True, setup=already_downloaded),
        Case(["get", MODEL, "--size", "0"], USAGE, "empty"),
    ],
    "import": [
        Case(["import", "{tmp}/tiny.gguf"], daemon=True, setup=imports, expect=["local/tiny"]),
        Case(["import", "{tmp}/tiny.gguf", "--json"], stdout="json", daemon=True, setup=imports),
        # Destructive: --move removes the original. Off a terminal: --yes, not a question.
        Case(
            ["import", "{tmp}/tiny.gguf", "--move"],
            USAGE,
            "empty",
            setup=gguf_file,
            expect=["--yes"],
        ),
        Case(["import", "{tmp}/missing.gguf"], ExitCode.NOT_FOUND, "empty"),
    ],
    "chat": [
        Case(
            ["chat", "-p", "Capital of France?", "--stats"],
            daemon=True,
            setup=chats,
            expect=["Paris.", "Tokens/Second"],
        ),
        Case(["chat", MODEL], daemon=True, setup=chats, input="Capital of France?"),
        # No prompt and nothing on stdin: interactive chat needs a terminal.
        Case(["chat", MODEL], USAGE, "empty", daemon=True, setup=chats, expect=["-p"]),
        Case(
            ["chat", "nobody/nothing", "-p", "hi"],
            ExitCode.NOT_FOUND,
            "empty",
            daemon=True,
            setup=chat_fails,
        ),
    ],
    "daemon up": [
        Case(["daemon", "up"], stdout="empty", daemon=True, expect=["already running"]),
        Case(["daemon", "up", "--json"], stdout="json", daemon=True),
    ],
    "daemon down": [
        Case(["daemon", "down"], stdout="empty", daemon=True, setup=shutdown),
        Case(["daemon", "down", "--json"], stdout="json", daemon=True, setup=shutdown),
        Case(["daemon", "down"], ExitCode.NOT_RUNNING, "empty"),
    ],
    "daemon status": [
        Case(["daemon", "status"], daemon=True, expect=["pid"]),
        Case(["daemon", "status", "--json"], stdout="json", daemon=True),
        Case(["daemon", "status"], ExitCode.NOT_RUNNING, "empty"),
        Case(["daemon", "status", "--json"], ExitCode.NOT_RUNNING, "json"),
    ],
    "server start": [
        Case(["server", "start"], daemon=True, setup=server_starts, expect=["http://"]),
        Case(
            ["server", "start", "--bind", "0.0.0.0"],
            daemon=True,
            setup=server_starts,
            expect=["warning"],
        ),
        Case(["server", "start"], ExitCode.CONFLICT, "empty", daemon=True, setup=port_in_use),
        Case(["server", "start", "--port", "70000"], USAGE, "empty"),
    ],
    "server stop": [
        Case(["server", "stop"], stdout="empty", daemon=True, setup=server_running),
        Case(["server", "stop"], ExitCode.NOT_RUNNING, "empty"),
    ],
    "server status": [
        Case(["server", "status"], daemon=True, setup=server_running, expect=["running on"]),
        Case(["server", "status", "--json"], stdout="json", daemon=True, setup=server_running),
        Case(["server", "status", "--json"], ExitCode.NOT_RUNNING, "json"),
        Case(["server", "status"], ExitCode.NOT_RUNNING, "empty", daemon=True),
    ],
    "token create": [
        Case(["token", "create", "ci"], expect=["sk-lm-", "shown only once"]),
        Case(["token", "create", "ci", "--quiet"], expect=["sk-lm-"]),
        Case(["token", "create", "ci", "--json"], stdout="json"),
        Case(["token", "create", "ci", "--perm", "root"], USAGE, "empty"),
        Case(["token", "create", "ci"], ExitCode.CONFLICT, "empty", setup=tokens),
    ],
    "token list": [
        Case(["token", "list"], setup=tokens, expect=["editor"]),
        Case(["token", "list", "--json"], stdout="json", setup=tokens),
        Case(["token", "list", "--json"], stdout="json"),
        Case(["token", "list"], ExitCode.FAILED, "empty", setup=broken_registry),
    ],
    "token edit": [
        Case(["token", "edit", "ci", "--rpm", "60"], stdout="empty", setup=tokens),
        Case(
            ["token", "edit", "ci", "--add-perm", "models", "--json"], stdout="json", setup=tokens
        ),
        Case(["token", "edit", "nobody", "--rpm", "60"], ExitCode.NOT_FOUND, "empty", setup=tokens),
    ],
    "token rotate": [
        Case(["token", "rotate", "ci"], setup=tokens, expect=["sk-lm-"]),
        Case(["token", "rotate", "ci", "--grace", "1h", "--json"], stdout="json", setup=tokens),
        Case(["token", "rotate", "nobody"], ExitCode.NOT_FOUND, "empty", setup=tokens),
    ],
    "token rm": [
        Case(["token", "rm", "ci", "--yes"], stdout="empty", setup=tokens),
        # Destructive: off a terminal it needs --yes, and says so instead of asking.
        Case(["token", "rm", "ci"], USAGE, "empty", setup=tokens, expect=["--yes"]),
        Case(["token", "rm", "nobody", "--yes"], ExitCode.NOT_FOUND, "empty", setup=tokens),
    ],
    "auth require": [
        Case(["auth", "require", "on"], stdout="empty", expect=["ON"]),
        Case(["auth", "require", "off"], stdout="empty", expect=["OFF"]),
        Case(["auth", "require", "maybe"], USAGE, "empty"),
    ],
    "auth status": [
        Case(["auth", "status"], setup=tokens, expect=["2 tokens"]),
        Case(["auth", "status", "--json"], stdout="json", setup=tokens),
        Case(["auth", "status", "--json"], ExitCode.FAILED, "json", setup=broken_registry),
    ],
    "auth audit": [
        Case(["auth", "audit"], setup=tokens, expect=["token_created"]),
        Case(["auth", "audit", "--json", "--since", "1d"], stdout="json", setup=tokens),
        Case(["auth", "audit", "--since", "yesterday"], USAGE, "empty"),
    ],
    "config list": [
        Case(["config", "list"], expect=["server.port"]),
        Case(["config", "list", "--json"], stdout="json"),
    ],
    "config get": [
        Case(["config", "get", "server.port"], expect=["1234"]),
        Case(["config", "get", "server.port", "--json"], stdout="json"),
        Case(["config", "get", "nope"], USAGE, "empty"),
    ],
    "config set": [
        Case(["config", "set", "models.ttl", "60"], stdout="empty"),
        Case(["config", "set", "server.port", "99999"], USAGE, "empty"),
    ],
    "config unset": [
        Case(["config", "unset", "models.ttl"], stdout="empty"),
        Case(["config", "unset", "nope"], USAGE, "empty"),
    ],
    "log stream": [
        Case(["log", "stream"], daemon=True, setup=logs, expect=["GET /v1/models 200"]),
        Case(
            ["log", "stream", "--source", "server", "--json"],
            stdout="ndjson",
            daemon=True,
            setup=logs,
        ),
        Case(["log", "stream", "--source", "disk"], USAGE, "empty"),
    ],
    "mcp list": [
        Case(["mcp", "list"], setup=mcp_json, expect=["tiktoken", "KEY=<redacted>"]),
        Case(["mcp", "list", "--json"], stdout="json", setup=mcp_json),
        Case(["mcp", "list"], stdout="empty", expect=["no MCP servers"]),
        Case(["mcp", "list"], ExitCode.FAILED, "empty", setup=broken_mcp_json),
        Case(
            ["mcp", "list", "--tools"],
            daemon=True,
            setup=mcp_tools,
            expect=["fetch_tiktoken_documentation"],
        ),
        Case(["mcp", "list", "--tools", "--json"], stdout="json", daemon=True, setup=mcp_tools),
    ],
    "remote add": [
        Case(["remote", "add", "gpu", "http://10.0.0.5:8080"], expect=["added remote gpu"]),
        Case(["remote", "add", "gpu", "http://10.0.0.5:8080", "--json"], stdout="json"),
        Case(
            ["remote", "add", "v", "https://v.example", "--key-stdin"],
            input="sk-upstream-key\n",
            expect=["remotes/v.key"],
        ),
        Case(["remote", "add", "Bad", "http://h"], USAGE, "empty"),
        Case(["remote", "add", "gpu", "http://h"], ExitCode.CONFLICT, "empty", setup=remotes),
    ],
    "remote list": [
        Case(["remote", "list"], setup=remotes, expect=["gpu", "daemon not running"]),
        Case(["remote", "list", "--json"], stdout="json", setup=remotes),
        Case(["remote", "list"], stdout="empty", expect=["no remotes"]),
        Case(["remote", "list"], daemon=True, setup=remotes_live, expect=["gpu/llama-3"]),
        Case(["remote", "list", "--json"], stdout="json", daemon=True, setup=remotes_live),
    ],
    "remote rm": [
        Case(["remote", "rm", "gpu"], stdout="empty", setup=remotes, expect=["removed"]),
        Case(["remote", "rm", "nope"], ExitCode.NOT_FOUND, "empty"),
    ],
}

ALL_CASES = [(path, case) for path, cases in CASES.items() for case in cases]


def _commands() -> list[tree.Command]:
    return [c for c in tree.build().walk() if not c.is_group or not c.path]


def test_every_command_has_contract_cases() -> None:
    enumerated = {" ".join(c.path) for c in _commands()}
    assert set(CASES) == enumerated, "a command without contract cases (or a stale entry)"


def test_every_json_option_is_exercised_and_every_exit_code_is_in_the_table() -> None:
    for command in _commands():
        if any("--json" in o.names for o in command.options):
            cases = CASES[" ".join(command.path)]
            assert any("--json" in c.args for c in cases), f"{command.name} --json"
    assert all(case.exit in set(ExitCode) for _, case in ALL_CASES)
    assert {case.exit for _, case in ALL_CASES} >= {0, 1, 2, 3, 5, 6}


# --- the matrix -----------------------------------------------------------------------------------

_MESSAGE_LINE = re.compile(r"^(lms: |hint: |warning)", re.MULTILINE)


def _no_prompt(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a command prompted while stdin is not a terminal")


@pytest.fixture
def no_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(typer, "confirm", _no_prompt)
    monkeypatch.setattr(typer, "prompt", _no_prompt)
    monkeypatch.setattr(builtins, "input", _no_prompt)


@pytest.mark.usefixtures("no_prompts")
@pytest.mark.parametrize("no_color", [True, False], ids=["NO_COLOR", "colour-allowed"])
@pytest.mark.parametrize(("path", "case"), ALL_CASES, ids=[c.id for _, c in ALL_CASES])
def test_contract(
    path: str,
    case: Case,
    no_color: bool,
    lms_home: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_spawn(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("started a real daemon")

    monkeypatch.setattr(os, "posix_spawn", no_spawn)
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    fake = request.getfixturevalue("fake_daemon") if case.daemon else None
    world = World(home=lms_home, fake=fake, tmp=tmp_path)
    if case.setup is not None:
        case.setup(world)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in case.args]

    result = CliRunner().invoke(app, args, input=case.input)
    out, err = result.stdout, result.stderr
    assert not isinstance(result.exception, AssertionError), result.exception

    assert result.exit_code == case.exit, f"exit {result.exit_code}\n{out}\n{err}"
    assert "\x1b" not in out + err, "ANSI escape off a terminal"
    assert "Traceback" not in out + err
    assert "━" not in err and "\r" not in err, "a progress bar off a terminal"
    for text in case.expect:
        assert text in out + err
    if case.stdout == "json":
        assert out.endswith("\n") and out.count("\n") == 1, "one JSON document, one line"
        json.loads(out)
    elif case.stdout == "ndjson":
        assert out.endswith("\n")
        assert all(isinstance(json.loads(line), dict) for line in out.splitlines())
    elif case.stdout == "empty":
        assert out == ""
    if case.stdout in ("text", "empty") or case.exit:
        assert not _MESSAGE_LINE.search(out), "a message on stdout"
    if case.exit not in (ExitCode.OK, ExitCode.USAGE):
        assert err.startswith("lms: ") or "\nlms: " in err, "the failure is said on stderr"
    if case.exit == ExitCode.USAGE:
        assert err.strip(), "a usage error says what is wrong"


# --- on a terminal --------------------------------------------------------------------------------

_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_COLOURS = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}


def _colours(text: str) -> set[int]:
    """The colour parameters (foreground, background) of the SGR sequences in ``text``."""
    found = set()
    for match in _SGR.finditer(text):
        found |= {int(p) for p in match.group(1).split(";") if p} & _COLOURS
    return found


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the real ``lms`` with stdin, stdout and stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lms", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), output.decode(errors="replace")


@pytest.mark.parametrize(
    "args",
    [
        ["token", "list"],  # a rich table on a terminal
        ["token", "rm", "nobody", "--yes"],  # an error, red on a terminal
        ["config", "set", "server.port", "99999"],  # a usage error
        ["auth", "require", "off"],
    ],
)
def test_no_colour_on_a_terminal_with_no_color(args: list[str], lms_home: Path) -> None:
    tokens(World(home=lms_home, fake=None, tmp=lms_home))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120")
    env.pop("NO_COLOR", None)
    _, coloured = _on_a_terminal(args, env)
    code, plain = _on_a_terminal(args, dict(env, NO_COLOR="1"))
    assert code in set(ExitCode)
    assert _colours(plain) == set(), plain
    if args[:2] == ["token", "rm"]:
        assert _colours(coloured), "the check can fail: errors are red without NO_COLOR"


def test_destructive_commands_do_not_wait_for_an_answer_on_a_pipe(lms_home: Path) -> None:
    # stdin an open pipe nobody writes to: a prompt would hang until the timeout.
    tokens(World(home=lms_home, fake=None, tmp=lms_home))
    with subprocess.Popen(
        [sys.executable, "-m", "lms", "token", "rm", "ci"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            code = proc.wait(timeout=60)  # stdin stays open (and silent) until it exits
        finally:
            proc.stdin.close()
        out, err = proc.stdout.read(), proc.stderr.read()
    assert code == ExitCode.USAGE
    assert out == ""
    assert "--yes" in err and "[y/N]" not in err
    assert [r.name for r in Registry().list()] == ["ci", "editor"]
