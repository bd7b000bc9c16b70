"""``lms mcp list [--tools] [--json]``: mcp.json without a daemon, tools through a real daemon
and a real stdio MCP server (``tests/mcp_servers``); secrets always redacted."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lms import client as control
from lms import paths
from lms.cli import app
from lms.protocol import DaemonStatus

pytestmark = pytest.mark.usefixtures("lms_home")

SERVERS = Path(__file__).parents[1] / "mcp_servers"
SECRETS = ("env-s3cret", "header-s3cret", "query-s3cret", "userinfo-s3cret")


def write_mcp_json(content: object) -> Path:
    path = paths.mcp_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def servers() -> dict[str, object]:
    return {
        "mcpServers": {
            "tiktoken": {
                "command": sys.executable,
                "args": [str(SERVERS / "tiktoken_stdio.py")],
                "env": {"DOCS_TOKEN": "env-s3cret"},
            },
            "search": {
                "url": "https://me:userinfo-s3cret@example.com/mcp?key=query-s3cret",
                "headers": {"Authorization": "Bearer header-s3cret"},
            },
        }
    }


def test_list_reads_mcp_json_without_a_daemon(runner: CliRunner) -> None:
    write_mcp_json(servers())
    result = runner.invoke(app, ["mcp", "list"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "COMMAND", "/", "URL", "SECRETS"]
    assert lines[1].startswith("tiktoken") and "stdio" in lines[1]
    assert "DOCS_TOKEN=<redacted>" in lines[1]
    assert "search" in lines[2] and "https://<redacted>@example.com/mcp?key=<redacted>" in lines[2]
    assert "Authorization=<redacted>" in lines[2]
    assert not any(secret in result.output for secret in SECRETS)
    assert not paths.socket_path().exists()  # no daemon was started


def test_list_json(runner: CliRunner) -> None:
    path = write_mcp_json(servers())
    result = runner.invoke(app, ["mcp", "list", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["path"] == str(path)
    tiktoken, search = doc["servers"]
    assert tiktoken == {
        "name": "tiktoken",
        "id": "mcp/tiktoken",
        "type": "stdio",
        "command": sys.executable,
        "args": [str(SERVERS / "tiktoken_stdio.py")],
        "env": {"DOCS_TOKEN": "<redacted>"},
    }
    assert search["type"] == "remote" and search["headers"] == {"Authorization": "<redacted>"}
    assert not any(secret in result.stdout for secret in SECRETS)


def test_no_servers(runner: CliRunner) -> None:
    result = runner.invoke(app, ["mcp", "list"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert f"no MCP servers in {paths.mcp_file()}" in result.stderr


def test_malformed_mcp_json_is_a_clear_error(runner: CliRunner) -> None:
    path = write_mcp_json('{"mcpServers": {"a": {"command": "x", "env": {"K": 1}}}}')
    result = runner.invoke(app, ["mcp", "list"])
    assert result.exit_code == 1
    assert f"lms: {path}: mcpServers.a.env.K must be a string" in result.stderr
    assert "Traceback" not in result.output


def processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.model
def test_list_tools_asks_the_daemon(runner: CliRunner, running_daemon: DaemonStatus) -> None:
    config = servers()
    marker = f"tiktoken-{uuid.uuid4().hex}"  # the server's name argument: finds its process
    config["mcpServers"]["tiktoken"]["args"].append(marker)  # type: ignore[index]
    config["mcpServers"]["broken"] = {"command": "/nonexistent/server"}  # type: ignore[index]
    del config["mcpServers"]["search"]  # type: ignore[attr-defined]
    write_mcp_json(config)
    result = runner.invoke(app, ["mcp", "list", "--tools"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("tiktoken (stdio): ")
    fetch = next(line for line in out.splitlines() if "fetch_tiktoken_documentation" in line)
    assert fetch.split(maxsplit=1) == [
        "fetch_tiktoken_documentation",
        "Fetch the tiktoken documentation (its README).",
    ]
    assert "broken (stdio): /nonexistent/server\n  error: " in out
    assert "failed to start: cannot run '/nonexistent/server'" in out
    result = runner.invoke(app, ["mcp", "list", "--tools", "--json"])
    doc = json.loads(result.stdout)
    tiktoken = doc["servers"][0]
    assert "fetch_tiktoken_documentation" in [t["name"] for t in tiktoken["tools"]]
    assert tiktoken["env"] == {"DOCS_TOKEN": "<redacted>"}
    assert "env-s3cret" not in result.stdout
    assert "env-s3cret" not in paths.daemon_log().read_text()
    assert len(processes_with(marker)) == 1  # started once, reused by the second listing
    # the daemon stops the servers it started when it stops
    control.ControlClient().shutdown(wait=True)
    assert processes_with(marker) == []
    log = (paths.log_dir() / "mcp" / "tiktoken.log").read_text()
    assert log.count("lms starts the server 'tiktoken'") == 1
