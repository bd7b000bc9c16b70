"""A small documentation MCP server, written with the official ``mcp`` SDK, for the tests.

``build(name)`` makes the server; ``tiktoken_stdio.py`` runs it over stdio (as an mcp.json
server does) and ``docs_http.py`` over streamable HTTP (as a remote server does).
"""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import MCPServer

#: The first line of the documentation ``fetch_tiktoken_documentation`` returns.
FIRST_LINE = "# ⏳ tiktoken: fast BPE tokeniser (lms test server)"
DOCUMENTATION = (
    f"{FIRST_LINE}\n"
    "tiktoken is a fast BPE tokeniser for use with OpenAI's models.\n"
    "Install it with: pip install tiktoken\n"
)


def build(name: str) -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool()
    def fetch_tiktoken_documentation() -> str:
        """Fetch the tiktoken documentation (its README)."""
        return DOCUMENTATION

    @server.tool()
    def search_tiktoken_documentation(query: str) -> str:
        """Search the tiktoken documentation for a query."""
        lines = [line for line in DOCUMENTATION.splitlines() if query.lower() in line.lower()]
        return "\n".join(lines) or "no match"

    @server.tool()
    def count_letters(text: str) -> int:
        """Count the letters of a text."""
        return sum(ch.isalpha() for ch in text)

    @server.tool()
    def server_pid() -> int:
        """The process id of this server."""
        return os.getpid()

    @server.tool()
    def crash() -> str:
        """Exit at once, without answering."""
        os._exit(3)

    @server.tool()
    async def hang() -> str:
        """Never answer."""
        await asyncio.sleep(3600)
        return "too late"

    return server
