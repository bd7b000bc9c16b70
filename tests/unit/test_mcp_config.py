"""mcp.json in Cursor's notation: parsing, clear errors, redaction of secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lms.errors import McpConfigError
from lms.mcp.config import REDACTED, McpConfigFile, parse, read, redact_url


def doc(servers: object) -> bytes:
    return json.dumps({"mcpServers": servers}).encode()


def test_stdio_and_remote_servers() -> None:
    found = parse(
        doc(
            {
                "tiktoken": {"command": "uvx", "args": ["tiktoken-mcp"], "env": {"KEY": "s3"}},
                "search": {"url": " https://example.com/mcp ", "headers": {"X-Key": "h1"}},
                "off": {"command": "x", "disabled": True},
                "typed": {"type": "http", "url": "http://localhost:8000/mcp"},
            }
        ),
        Path("mcp.json"),
    )
    assert sorted(found.servers) == ["search", "tiktoken", "typed"]
    stdio = found.servers["tiktoken"]
    assert (stdio.kind, stdio.command, stdio.args, stdio.env) == (
        "stdio",
        "uvx",
        ("tiktoken-mcp",),
        {"KEY": "s3"},
    )
    assert stdio.plugin_id == "mcp/tiktoken"
    remote = found.servers["search"]
    assert (remote.kind, remote.url, remote.headers) == (
        "remote",
        "https://example.com/mcp",
        {"X-Key": "h1"},
    )


def test_listings_and_repr_never_show_secrets() -> None:
    found = parse(
        doc(
            {
                "a": {"command": "run", "env": {"API_KEY": "s3cret-env"}},
                "b": {
                    "url": "https://me:pw@example.com/mcp?token=s3cret-query",
                    "headers": {"Authorization": "Bearer s3cret-header"},
                },
            }
        ),
        Path("mcp.json"),
    )
    shown = json.dumps([spec.public() for spec in found.servers.values()])
    shown += repr(found)
    for secret in ("s3cret-env", "s3cret-query", "s3cret-header", "pw"):
        assert secret not in shown
    assert found.servers["a"].public()["env"] == {"API_KEY": REDACTED}
    assert found.servers["b"].public()["headers"] == {"Authorization": REDACTED}
    assert found.servers["b"].public()["url"] == (
        f"https://{REDACTED}@example.com/mcp?token={REDACTED}"
    )


def test_redact_url_keeps_what_is_not_secret() -> None:
    assert redact_url("https://example.com:8443/a/mcp") == "https://example.com:8443/a/mcp"
    assert redact_url("http://h/p?a=1&b=") == f"http://h/p?a={REDACTED}&b={REDACTED}"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{nope", "is not valid JSON: Expecting property name"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"[]", "the top level must be an object"),
        (b'{"servers": {}}', "'mcpServers' must be an object"),
        (doc({"bad name!": {"command": "x"}}), "the server name 'bad name!' must be"),
        (doc({"a": "run"}), "mcpServers.a must be an object"),
        (doc({"a": {}}), "mcpServers.a needs either 'command'"),
        (doc({"a": {"command": "x", "url": "https://h"}}), "not both"),
        (doc({"a": {"command": ""}}), "mcpServers.a.command must be a non-empty string"),
        (doc({"a": {"command": "x", "args": "y"}}), "mcpServers.a.args must be a list"),
        (doc({"a": {"command": "x", "env": {"K": 1}}}), "mcpServers.a.env.K must be a string"),
        (doc({"a": {"url": "ftp://h/x"}}), "mcpServers.a.url must be an http://"),
        (doc({"a": {"url": "https://h", "type": "sse"}}), "sse is not supported"),
        (doc({"a": {"url": "https://h", "headers": []}}), "headers must be an object"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(raw: bytes, problem: str) -> None:
    path = Path("/somewhere/mcp.json")
    with pytest.raises(McpConfigError) as caught:
        parse(raw, path)
    assert str(path) in caught.value.message
    assert problem in caught.value.message


def test_error_messages_never_echo_values() -> None:
    with pytest.raises(McpConfigError) as caught:
        parse(doc({"a": {"command": "x", "env": {"K": ["s3cret"]}}}), Path("mcp.json"))
    assert "s3cret" not in caught.value.message


def test_missing_file_is_no_servers(tmp_path: Path) -> None:
    assert read(tmp_path / "mcp.json").servers == {}


def test_the_daemon_view_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    view = McpConfigFile(path)
    assert view.current().servers == {}
    path.write_bytes(doc({"a": {"command": "x"}}))
    assert list(view.current().servers) == ["a"]
    path.write_text("{broken")
    with pytest.raises(McpConfigError):
        view.current()
    with pytest.raises(McpConfigError):  # still broken, still said
        view.current()
    path.write_bytes(doc({"b": {"url": "https://h/mcp"}}))
    assert list(view.current().servers) == ["b"]


def test_the_cli_side_loads_no_sdk() -> None:
    """``lms mcp list`` reads mcp.json through lms.mcp.config: importing it (and the CLI
    module) must not load the MCP SDK, httpx2 or aiohttp."""
    code = (
        "import sys, lms.cli.mcp;"
        "print([m for m in ('mcp', 'mcp_types', 'httpx2', 'aiohttp', 'pydantic')"
        " if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert out.stdout.strip() == "[]"
