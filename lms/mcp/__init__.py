"""MCP integrations (README: MCP integrations): mcp.json, client sessions with the official SDK,
the tool loop.

Importing this package loads nothing: ``lms mcp list`` (the CLI) imports :mod:`lms.mcp.config`,
which is stdlib-only, and must not pay for the SDK.
"""
