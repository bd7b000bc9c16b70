"""MCP integrations against a running daemon (``python -m lms.daemon --serve``) with auth on:
the request of LM Studio's authentication page, as written, and the official ``openai`` client
on ``/v1/responses`` — with a real stdio MCP server from mcp.json (``tests/mcp_servers``).

The default model is a base model: its answers do not end by themselves, so a request without
``max_output_tokens`` generates until the context is full. The tests load it with a small
context (as ``MODEL``) to keep that short; the request is otherwise LM Studio's, word for word.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Server

from lms.auth.permissions import Permission
from lms.auth.registry import Registry

MODEL = "mcp-gemma"
SERVERS = Path(__file__).parents[1] / "mcp_servers"
sys.path.insert(0, str(SERVERS))
from docs import FIRST_LINE  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture
def mcp_home(server: Server) -> Iterator[dict[str, str]]:
    """Auth on, mcp.json servers allowed, the tiktoken server in mcp.json; tokens by name.
    Everything is put back afterwards (the daemon is shared by the session)."""
    config_dir = server.home / "config"
    config_dir.mkdir(mode=0o700, exist_ok=True)
    config, mcp_json = config_dir / "config.toml", config_dir / "mcp.json"
    config.write_text("[auth]\nrequired = true\n\n[mcp]\nallow_mcp_json = true\n")
    entry = {"command": sys.executable, "args": [str(SERVERS / "tiktoken_stdio.py")]}
    mcp_json.write_text(json.dumps({"mcpServers": {"tiktoken": entry}}))
    registry = Registry(config_dir / "tokens.toml")
    made = {
        "mcp": registry.create("mcp-client", permissions={Permission.INFERENCE, Permission.MCP}),
        "inference": registry.create("plain-client"),
        "models": registry.create("mcp-loader", permissions={Permission.MODELS}),
    }
    tokens = {name: token for name, (_, token) in made.items()}
    load = {
        "model": "google/gemma-3-270m",
        "identifier": MODEL,
        "context_length": 512,
        "parallel": 1,
    }
    status, answer = post(f"{server.url}/api/v1/models/load", load, tokens["models"])
    assert status == 200, answer
    try:
        yield tokens
    finally:
        post(f"{server.url}/api/v1/models/unload", {"instance_id": MODEL}, tokens["models"])
        config.write_text("[auth]\nrequired = false\n")
        mcp_json.unlink()
        for record, _ in made.values():
            registry.remove(record.id)


def post(url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_request_of_lm_studios_auth_page(server: Server, mcp_home: dict[str, str]) -> None:
    # curl http://localhost:1234/api/v1/chat -H "Authorization: Bearer $LM_API_TOKEN" -d '{...}'
    body = {
        "model": MODEL,
        "input": "What is the first line in the tiktoken documentation?",
        "temperature": 0,  # greedy: what the model does after the tool must not be a draw
        "integrations": [
            {
                "type": "plugin",
                "id": "mcp/tiktoken",
                "allowed_tools": ["fetch_tiktoken_documentation"],
            }
        ],
    }
    status, answer = post(f"{server.url}/api/v1/chat", body, mcp_home["mcp"])
    assert status == 200, answer
    call, *rest = answer["output"]
    assert call["type"] == "tool_call"
    assert call["tool"] == "fetch_tiktoken_documentation"
    assert call["provider_info"] == {"type": "plugin", "plugin_id": "mcp/tiktoken"}
    assert json.loads(call["output"])[0]["text"].splitlines()[0] == FIRST_LINE
    assert rest and rest[-1]["type"] == "message"
    assert answer["response_id"].startswith("resp_")
    # the same request with a token lacking the mcp permission: 403 naming it
    status, answer = post(f"{server.url}/api/v1/chat", body, mcp_home["inference"])
    assert (status, answer["error"]["code"]) == (403, "insufficient_permissions")
    assert "'mcp'" in answer["error"]["message"]


def test_openai_client_with_an_mcp_tool(server: Server, mcp_home: dict[str, str]) -> None:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=mcp_home["mcp"], max_retries=0
    ) as client:
        response = client.responses.create(
            model=MODEL,
            input="What is the first line in the tiktoken documentation?",
            tools=[
                {
                    "type": "mcp",
                    "server_label": "tiktoken",
                    "allowed_tools": ["fetch_tiktoken_documentation"],
                    "require_approval": "never",
                }
            ],
            max_output_tokens=16,
            temperature=0,  # greedy: what the model does next must not depend on a draw
        )
    kinds = [item.type for item in response.output]
    assert kinds[:2] == ["mcp_list_tools", "mcp_call"] and kinds[-1] == "message"
    call = response.output[1]
    assert call.type == "mcp_call"
    assert call.name == "fetch_tiktoken_documentation" and call.server_label == "tiktoken"
    assert call.output is not None and call.output.startswith(FIRST_LINE)
