"""MCP integrations (README: MCP integrations) on the TCP API, with REAL MCP servers written
with the ``mcp`` SDK
(``tests/mcp_servers``): a stdio server from mcp.json and a streamable-HTTP server on loopback.

Gate tests need no model: every gate is checked before a server is started or the model is
loaded. Tool-loop tests use the real default model (the first round is forced to a call).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lms.auth import audit
from lms.auth.permissions import Permission
from lms.auth.registry import Registry

MODEL = "google/gemma-3-270m"
SERVERS = Path(__file__).parents[1] / "mcp_servers"
sys.path.insert(0, str(SERVERS))
from docs import FIRST_LINE  # noqa: E402

ENV_SECRET = "env-secret-0123456789"
QUESTION = "What is the first line in the tiktoken documentation?"


def write_settings(home: Path, **sections: dict[str, Any]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_mcp_json(home: Path, servers: dict[str, Any]) -> Path:
    path = home / "config" / "mcp.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def tiktoken_entry() -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": [str(SERVERS / "tiktoken_stdio.py")],
        "env": {"DOCS_TOKEN": ENV_SECRET},
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def home(lms_home: Path) -> Path:
    """auth on, both kinds of MCP servers allowed, private URLs allowed (the test servers live
    on loopback), the tiktoken stdio server in mcp.json."""
    write_settings(
        lms_home,
        auth={"required": True},
        mcp={"allow_mcp_json": True, "allow_remote": True, "allow_private_urls": True},
    )
    write_mcp_json(lms_home, {"tiktoken": tiktoken_entry()})
    return lms_home


@pytest.fixture
def tokens(home: Path) -> dict[str, str]:
    registry = Registry()
    return {
        "all": registry.create("everything", permissions=set(Permission))[1],
        "inference": registry.create("inference-only")[1],
        "mcp": registry.create("mcp", permissions={Permission.INFERENCE, Permission.MCP})[1],
        "remote": registry.create(
            "remote", permissions={Permission.INFERENCE, Permission.REMOTE_MCP}
        )[1],
    }


@pytest.fixture
def http_server() -> Iterator[str]:
    """The test documentation server over streamable HTTP on loopback; yields its URL."""
    yield from _http_server()


@pytest.fixture
def http_server_with_header() -> Iterator[str]:
    """Like ``http_server``, but answering 401 without ``x-docs-key: s3cret``."""
    yield from _http_server("--header", "x-docs-key=s3cret")


def _http_server(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVERS / "docs_http.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the server accepts connections
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def plugin(name: str = "tiktoken", *allowed: str) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "plugin", "id": f"mcp/{name}"}
    if allowed:
        item["allowed_tools"] = list(allowed)
    return item


def ephemeral(url: str, *allowed: str, **extra: Any) -> dict[str, Any]:
    item = {"type": "ephemeral_mcp", "server_label": "docs", "server_url": url, **extra}
    if allowed:
        item["allowed_tools"] = list(allowed)
    return item


async def chat(
    client: TestClient,  # type: ignore[type-arg]
    token: str | None,
    integrations: list[Any],
    **extra: Any,
) -> tuple[int, dict[str, Any]]:
    body = {
        "model": MODEL,
        "input": QUESTION,
        "integrations": integrations,
        "temperature": 0,
        "max_output_tokens": 24,
        **extra,
    }
    response = await client.post("/api/v1/chat", json=body, headers=bearer(token) if token else {})
    return response.status, await response.json()


def stderr_log(home: Path, name: str = "tiktoken") -> Path:
    return home / "logs" / "mcp" / f"{name}.log"


def refusals(reason: str) -> list[dict[str, Any]]:
    return [e for e in audit.read() if e.get("reason") == reason]


# --- the gates ------------------------------------------------------------------------------------


async def test_auth_off_refuses_both_kinds(client: TestClient, home: Path) -> None:  # type: ignore[type-arg]
    write_settings(home, mcp={"allow_mcp_json": True, "allow_remote": True})
    for integration in ("mcp/tiktoken", ephemeral("https://example.com/mcp")):
        status, body = await chat(client, None, [integration])
        assert status == 403, body
        assert body["error"]["code"] == "mcp_requires_auth"
        assert "auth.required" in body["error"]["message"]
    assert not stderr_log(home).exists()  # the server was never started
    assert len(refusals("mcp_requires_auth")) >= 1


async def test_settings_off_refuse_naming_the_setting(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    write_settings(home, auth={"required": True})
    status, body = await chat(client, tokens["all"], [plugin()])
    assert (status, body["error"]["code"]) == (400, "mcp_disabled")
    assert "mcp.allow_mcp_json" in body["error"]["message"]
    assert body["error"]["param"] == "integrations[0]"
    status, body = await chat(client, tokens["all"], [ephemeral("https://example.com/mcp")])
    assert (status, body["error"]["code"]) == (400, "mcp_disabled")
    assert "mcp.allow_remote" in body["error"]["message"]
    assert not stderr_log(home).exists()
    assert refusals("mcp_disabled")  # audited (repeats within a second are coalesced)


async def test_token_without_the_permission_is_refused(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    status, body = await chat(client, tokens["inference"], ["mcp/tiktoken"])
    assert (status, body["error"]["code"]) == (403, "insufficient_permissions")
    assert "'mcp'" in body["error"]["message"] and "mcp/tiktoken" in body["error"]["message"]
    status, body = await chat(client, tokens["remote"], ["mcp/tiktoken"])
    assert status == 403
    status, body = await chat(client, tokens["mcp"], [ephemeral("https://example.com/mcp")])
    assert (status, body["error"]["code"]) == (403, "insufficient_permissions")
    assert "'remote-mcp'" in body["error"]["message"]
    assert not stderr_log(home).exists()
    assert len(refusals("insufficient_permissions")) == 3


async def test_private_url_is_refused_unless_allowed(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    write_settings(home, auth={"required": True}, mcp={"allow_remote": True})
    for url in ("http://127.0.0.1:9/mcp", "http://10.1.2.3/mcp", "http://[::1]:9/mcp"):
        status, body = await chat(client, tokens["remote"], [ephemeral(url)])
        assert (status, body["error"]["code"]) == (403, "url_not_allowed"), body
        assert "refused the per-request MCP server 'docs'" in body["error"]["message"]
    assert refusals("url_not_allowed")


async def test_every_gate_is_checked_before_any_server_starts(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    # the mcp.json server is allowed, the per-request one is not: nothing starts at all
    status, body = await chat(
        client, tokens["mcp"], ["mcp/tiktoken", ephemeral("https://example.com/mcp")]
    )
    assert status == 403, body
    assert not stderr_log(home).exists()


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ("mcp/tiktoken", "integrations"),
        (["lmstudio/js-code-sandbox"], "integrations[0]"),
        (["mcp/"], "integrations[0]"),
        ([{"type": "plugin"}], "integrations[0].id"),
        ([{"type": "remote"}], "integrations[0].type"),
        (
            [{"type": "plugin", "id": "mcp/x", "allowed_tools": "a"}],
            "integrations[0].allowed_tools",
        ),
        ([{"type": "ephemeral_mcp", "server_url": "https://x"}], "integrations[0].server_label"),
        ([{"type": "ephemeral_mcp", "server_label": "x"}], "integrations[0].server_url"),
        (
            [ephemeral("https://x", headers={"X-Key": "a\r\nb"})],
            "integrations[0].headers",
        ),
        ([ephemeral("ftp://example.com/mcp")], "integrations[0].server_url"),
    ],
)
async def test_malformed_integrations(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
    integrations: Any,
    param: str,
) -> None:
    status, body = await chat(client, tokens["all"], integrations)
    assert (status, body["error"]["param"]) == (400, param), body
    assert "a\r\nb" not in json.dumps(body)


async def test_tool_choice_is_checked(client: TestClient, tokens: dict[str, str]) -> None:  # type: ignore[type-arg]
    status, body = await chat(client, tokens["all"], ["mcp/tiktoken"], tool_choice="any")
    assert (status, body["error"]["param"]) == (400, "tool_choice")


# --- mcp.json problems ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ('{"servers": {}}', "'mcpServers' must be an object"),
        ('{"mcpServers": {"tiktoken": {"args": []}}}', "needs either 'command'"),
        ('{"mcpServers": {"tiktoken": {"command": "x", "env": {"K": 1}}}}', "env.K must be"),
    ],
)
async def test_malformed_mcp_json_is_a_clear_error(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
    content: str,
    problem: str,
) -> None:
    path = home / "config" / "mcp.json"
    path.write_text(content)
    status, body = await chat(client, tokens["all"], ["mcp/tiktoken"])
    assert (status, body["error"]["code"]) == (500, "mcp_config_invalid")
    assert str(path) in body["error"]["message"] and problem in body["error"]["message"]
    assert body["error"]["type"] == "plugin_connection_error"
    # the daemon keeps serving, and a fixed file is read again at once
    listing = await client.get("/api/v1/models", headers=bearer(tokens["all"]))
    assert listing.status == 200
    write_mcp_json(home, {"other": tiktoken_entry()})
    status, body = await chat(client, tokens["all"], ["mcp/tiktoken"])
    assert (status, body["error"]["code"]) == (404, "mcp_server_not_found")
    assert "mcp/other" in body["error"]["message"]


async def test_server_that_cannot_start(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_mcp_json(
        home,
        {
            "missing": {"command": "/nonexistent/mcp-server", "env": {"KEY": ENV_SECRET}},
            "quits": {"command": sys.executable, "args": ["-c", "import sys; sys.exit(4)"]},
        },
    )
    status, body = await chat(client, tokens["all"], ["mcp/missing"])
    assert (status, body["error"]["code"]) == (502, "plugin_connection_error"), body
    assert "'missing' (mcp.json) failed to start" in body["error"]["message"]
    assert "/nonexistent/mcp-server" in body["error"]["message"]
    status, body = await chat(client, tokens["all"], ["mcp/quits"])
    assert (status, body["error"]["code"]) == (502, "plugin_connection_error"), body
    assert "'quits' (mcp.json) failed to start" in body["error"]["message"]
    assert ENV_SECRET not in caplog.text and ENV_SECRET not in json.dumps(body)


async def test_server_that_never_answers_times_out(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    write_settings(home, auth={"required": True}, mcp={"allow_mcp_json": True, "timeout": 2})
    sleeper = {"command": sys.executable, "args": ["-c", "import time; time.sleep(600)"]}
    write_mcp_json(home, {"sleeper": sleeper})
    started = time.monotonic()
    status, body = await chat(client, tokens["all"], ["mcp/sleeper"])
    assert (status, body["error"]["code"]) == (502, "plugin_connection_error"), body
    assert "did not complete the MCP handshake within 2 s" in body["error"]["message"]
    assert time.monotonic() - started < 20


async def test_unreachable_per_request_server(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    status, body = await chat(client, tokens["all"], [ephemeral("http://127.0.0.1:9/mcp")])
    assert (status, body["error"]["code"]) == (502, "mcp_connection_error"), body
    assert "the per-request MCP server 'docs' failed to start" in body["error"]["message"]


# --- the tool loop with the real model ------------------------------------------------------------


def tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in body["output"] if item["type"] == "tool_call"]


@pytest.mark.model
async def test_mcp_json_server_as_lm_studio_documents_it(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    status, body = await chat(
        client, tokens["mcp"], [plugin("tiktoken", "fetch_tiktoken_documentation")]
    )
    assert status == 200, body
    call = body["output"][0]
    assert call["type"] == "tool_call"
    assert call["tool"] == "fetch_tiktoken_documentation"
    assert call["arguments"] == {}
    assert call["provider_info"] == {"type": "plugin", "plugin_id": "mcp/tiktoken"}
    content = json.loads(call["output"])  # the MCP content array, JSON-encoded
    assert content[0]["type"] == "text" and content[0]["text"].startswith(FIRST_LINE)
    assert body["output"][-1]["type"] == "message" and body["output"][-1]["content"]
    assert body["stats"]["input_tokens"] > 0 and body["stats"]["total_output_tokens"] > 0
    # the server keeps running for the next request (reused, not started again)
    log_before = stderr_log(home).read_text()
    status, body = await chat(
        client, tokens["mcp"], ["mcp/tiktoken"], store=False, max_output_tokens=4
    )
    assert status == 200
    assert stderr_log(home).read_text() == log_before
    assert ENV_SECRET not in log_before


@pytest.mark.model
async def test_only_allowed_tools_are_offered_and_run(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "server_pid")])
    assert status == 200, body
    assert [c["tool"] for c in tool_calls(body)] == ["server_pid"]


@pytest.mark.model
async def test_tool_choice_auto_lets_the_model_answer(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    status, body = await chat(
        client,
        tokens["mcp"],
        [plugin("tiktoken", "fetch_tiktoken_documentation")],
        tool_choice="auto",
        input="Say hello.",
    )
    assert status == 200, body
    assert all(item["type"] in ("message", "tool_call") for item in body["output"])


@pytest.mark.model
async def test_streaming_events(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    response = await client.post(
        "/api/v1/chat",
        json={
            "model": MODEL,
            "input": QUESTION,
            "integrations": [plugin("tiktoken", "fetch_tiktoken_documentation")],
            "temperature": 0,
            "max_output_tokens": 16,
            "stream": True,
        },
        headers=bearer(tokens["mcp"]),
    )
    assert response.status == 200
    events = parse_sse(await response.text())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "chat.start" and kinds[-1] == "chat.end"
    start = kinds.index("tool_call.start")
    assert kinds.index("tool_call.arguments") > start
    success = kinds.index("tool_call.success")
    assert "message.start" in kinds[success:] and "message.end" in kinds[success:]
    payloads = dict(events)
    provider = {"type": "plugin", "plugin_id": "mcp/tiktoken"}
    assert payloads["tool_call.start"]["tool"] == "fetch_tiktoken_documentation"
    assert payloads["tool_call.start"]["provider_info"] == provider
    assert payloads["tool_call.arguments"]["arguments"] == {}
    assert FIRST_LINE in payloads["tool_call.success"]["output"]
    result = payloads["chat.end"]["result"]
    assert result["output"][0]["output"] == payloads["tool_call.success"]["output"]
    deltas = "".join(p["content"] for k, p in events if k == "message.delta")
    assert result["output"][-1] == {"type": "message", "content": deltas}


@pytest.mark.model
async def test_crashed_server_fails_the_request_and_starts_again(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "server_pid")])
    assert status == 200, body
    first_pid = json.loads(tool_calls(body)[0]["output"])[0]["text"]
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "crash")])
    assert (status, body["error"]["code"]) == (502, "plugin_connection_error"), body
    assert "stopped while running the tool 'crash'" in body["error"]["message"]
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "server_pid")])
    assert status == 200, body
    second_pid = json.loads(tool_calls(body)[0]["output"])[0]["text"]
    assert second_pid != first_pid


@pytest.mark.model
async def test_hanging_tool_times_out(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
    tokens: dict[str, str],
) -> None:
    write_settings(
        home,
        auth={"required": True},
        mcp={"allow_mcp_json": True, "timeout": 3},
    )
    started = time.monotonic()
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "hang")])
    assert (status, body["error"]["code"]) == (502, "plugin_connection_error"), body
    assert "the tool 'hang'" in body["error"]["message"]
    assert "did not answer within 3 s" in body["error"]["message"]
    assert time.monotonic() - started < 60
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "server_pid")])
    assert status == 200, body  # a new server replaced the hung one


@pytest.mark.model
async def test_per_request_server_over_http(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
    http_server: str,
) -> None:
    status, body = await chat(
        client, tokens["remote"], [ephemeral(http_server, "fetch_tiktoken_documentation")]
    )
    assert status == 200, body
    call = tool_calls(body)[0]
    assert call["provider_info"] == {"type": "ephemeral_mcp", "server_label": "docs"}
    assert FIRST_LINE in call["output"]


@pytest.mark.model
async def test_per_request_headers_reach_the_server(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
    http_server_with_header: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    url = http_server_with_header + "?token=query-s3cret"
    status, body = await chat(client, tokens["remote"], [ephemeral(url)])
    assert (status, body["error"]["code"]) == (502, "mcp_connection_error"), body
    assert "HTTP 401" in body["error"]["message"]
    status, body = await chat(
        client,
        tokens["remote"],
        [ephemeral(url, "server_pid", headers={"x-docs-key": "s3cret"})],
    )
    assert status == 200, body
    assert [c["tool"] for c in tool_calls(body)] == ["server_pid"]
    assert "s3cret" not in caplog.text and "s3cret" not in json.dumps(body)


@pytest.mark.model
async def test_responses_api_with_mcp_tools(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
    http_server: str,
) -> None:
    tools = [
        {
            "type": "mcp",
            "server_label": "tiktoken",
            "allowed_tools": ["fetch_tiktoken_documentation"],
            "require_approval": "never",
        }
    ]
    response = await client.post(
        "/v1/responses",
        json={"model": MODEL, "input": QUESTION, "tools": tools, "max_output_tokens": 16},
        headers=bearer(tokens["all"]),
    )
    body = await response.json()
    assert response.status == 200, body
    kinds = [item["type"] for item in body["output"]]
    assert kinds[:2] == ["mcp_list_tools", "mcp_call"] and kinds[-1] == "message"
    listing, call = body["output"][:2]
    assert [t["name"] for t in listing["tools"]] == ["fetch_tiktoken_documentation"]
    assert call["server_label"] == "tiktoken" and call["status"] == "completed"
    assert call["name"] == "fetch_tiktoken_documentation" and call["output"].startswith(FIRST_LINE)
    # a per-request server, streamed
    tools = [{"type": "mcp", "server_label": "docs", "server_url": http_server}]
    response = await client.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": QUESTION,
            "tools": [{**tools[0], "allowed_tools": ["fetch_tiktoken_documentation"]}],
            "max_output_tokens": 8,
            "stream": True,
        },
        headers=bearer(tokens["all"]),
    )
    assert response.status == 200
    events = parse_sse(await response.text())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "response.created" and kinds[-1] in (
        "response.completed",
        "response.incomplete",
    )
    assert "response.mcp_call.completed" in kinds
    final = events[-1][1]["response"]
    assert [i["type"] for i in final["output"]][:2] == ["mcp_list_tools", "mcp_call"]


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _gone(pid: int, within: float = 15.0) -> bool:
    import os

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.model
async def test_an_idle_mcp_json_server_is_stopped_and_starts_again_when_needed(
    client: TestClient,  # type: ignore[type-arg]
    tokens: dict[str, str],
) -> None:
    from lms.api.state import MCP

    servers = client.app[MCP]
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "server_pid")])
    assert status == 200, body
    first_pid = int(json.loads(tool_calls(body)[0]["output"])[0]["text"])
    await servers.reap_idle(now=time.monotonic() + 5)  # not idle long enough: kept
    assert not _gone(first_pid, within=0.2)
    await servers.reap_idle(now=time.monotonic() + 10_000)  # mcp.idle_timeout is 600 s
    assert _gone(first_pid)
    status, body = await chat(client, tokens["mcp"], [plugin("tiktoken", "server_pid")])
    assert status == 200, body
    assert int(json.loads(tool_calls(body)[0]["output"])[0]["text"]) != first_pid


async def test_a_server_in_use_is_never_stopped_as_idle(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
) -> None:
    from lms.api.state import MCP

    servers = client.app[MCP]
    connection, tools = await servers.plugin_tools(servers.spec("tiktoken"))
    assert tools
    await servers.reap_idle(now=time.monotonic() + 10_000)
    assert not connection.broken  # held by "a request": kept
    connection.release()
    await servers.reap_idle(now=time.monotonic() + 10_000)
    assert connection.broken


async def test_idle_timeout_zero_keeps_servers(
    client: TestClient,  # type: ignore[type-arg]
    home: Path,
) -> None:
    from lms.api.state import MCP

    write_settings(
        home,
        auth={"required": True},
        mcp={"allow_mcp_json": True, "idle_timeout": 0},
    )
    servers = client.app[MCP]
    connection, _ = await servers.plugin_tools(servers.spec("tiktoken"))
    connection.release()
    await servers.reap_idle(now=time.monotonic() + 10_000)
    assert not connection.broken
