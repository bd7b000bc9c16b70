"""``lms mcp list``: the MCP servers of mcp.json, and the tools they offer.

Without ``--tools`` the CLI reads mcp.json itself (no daemon needed); with ``--tools`` it asks
the daemon, starting it, which starts each server to list its tools. Secrets — the values of
``env`` and ``headers``, a URL's user info and query values — are always shown redacted.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lms.cli import render

app = typer.Typer(no_args_is_help=True, help="MCP servers clients may use (mcp.json).")


@app.command("list")
def list_servers(
    tools: Annotated[
        bool,
        typer.Option(
            "--tools", help="Also list each server's tools (asks the daemon, starting it)."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
) -> None:
    """List the servers of mcp.json: name, type (stdio or remote), command or URL.

    Clients use them as integrations "mcp/<name>" (with auth on, mcp.allow_mcp_json on and a
    token with the mcp permission). Values of env and headers are never shown.
    """
    from lms import client as control
    from lms import starter

    if tools:
        daemon = control.ControlClient()
        starter.ensure_daemon(client=daemon, announce=render.note)
        doc = daemon.mcp_servers(tools=True)
    else:
        from lms.mcp import config as mcp_config  # only here: `import lms.cli` stays light

        found = mcp_config.read()
        doc = {
            "path": str(found.path),
            "servers": [spec.public() for spec in found.servers.values()],
        }
    if as_json:
        render.emit_json(doc)
        return
    servers: list[dict[str, Any]] = doc["servers"]
    if not servers:
        render.note(f"no MCP servers in {doc['path']}")
        render.say('hint: add one as {"mcpServers": {"<name>": {"command": ..., "args": [...]}}}')
        return
    if not tools:
        rows = [[s["name"], s["type"], _target(s), _secrets(s)] for s in servers]
        render.result(render.table(["NAME", "TYPE", "COMMAND / URL", "SECRETS"], rows))
        return
    for index, server in enumerate(servers):
        if index:
            render.result()
        render.result(f"{server['name']} ({server['type']}): {_target(server)}")
        if "error" in server:
            render.result(f"  error: {server['error']}")
            continue
        rows = [[f"  {t['name']}", _first_line(t["description"])] for t in server["tools"]]
        render.result(render.table(["  TOOL", "DESCRIPTION"], rows) if rows else "  no tools")


def _target(server: dict[str, Any]) -> str:
    if server["type"] == "stdio":
        return " ".join([server["command"], *server["args"]])
    return str(server["url"])


def _secrets(server: dict[str, Any]) -> str:
    """The names of the server's secrets with their values as listed (redacted)."""
    values = {**server.get("env", {}), **server.get("headers", {})}
    return ", ".join(f"{name}={value}" for name, value in values.items()) or "-"


def _first_line(text: str) -> str:
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= 80 else line[:77] + "..."
