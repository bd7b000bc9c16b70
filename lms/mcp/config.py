"""mcp.json: the MCP servers the owner configured, in Cursor's notation (README: Where state lives;
MCP integrations).

::

    {"mcpServers": {
        "tiktoken": {"command": "uvx", "args": ["tiktoken-mcp"], "env": {"API_KEY": "..."}},
        "search":   {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}
    }}

A server with ``command`` runs as a child process of the daemon and speaks MCP on its stdin and
stdout; a server with ``url`` is reached over streamable HTTP. Other keys of an entry (``type``,
``disabled``, ``description``…, written by other tools) are ignored, except that ``"type":
"sse"`` is refused (lms speaks streamable HTTP only) and ``"disabled": true`` hides the server.

The daemon reads the file when a request names one of its servers (parsed again only when the
file changes); ``lms mcp list`` reads it without a daemon. A malformed file is an
:class:`McpConfigError` naming the file and the problem — never a value from the file. Values
of ``env`` and ``headers`` are secrets: they stay out of ``repr`` and out of every listing.

stdlib only: the CLI imports this module, and it must not load the MCP SDK.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from lms import paths, storage
from lms.errors import McpConfigError

#: What a secret value is shown as.
REDACTED = "<redacted>"
#: The prefix of a plugin id naming an mcp.json server (``mcp/<name>``).
PLUGIN_PREFIX = "mcp/"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REMOTE_TYPES = ("http", "streamable-http", "streamable_http", "streamableHttp")


@dataclass(frozen=True)
class ServerSpec:
    """One server of mcp.json. Exactly one of ``command`` (stdio) and ``url`` (remote) is set."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    url: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> Literal["stdio", "remote"]:
        return "stdio" if self.command is not None else "remote"

    @property
    def plugin_id(self) -> str:
        return PLUGIN_PREFIX + self.name

    def public(self) -> dict[str, Any]:
        """The entry as listings show it: secrets (``env`` and ``headers`` values, a URL's
        user info and query values) redacted."""
        entry: dict[str, Any] = {"name": self.name, "id": self.plugin_id, "type": self.kind}
        if self.command is not None:
            entry.update(
                command=self.command,
                args=list(self.args),
                env=dict.fromkeys(self.env, REDACTED),
            )
        else:
            assert self.url is not None
            entry.update(url=redact_url(self.url), headers=dict.fromkeys(self.headers, REDACTED))
        return entry


@dataclass(frozen=True)
class McpConfig:
    """The servers of one reading of mcp.json, by name (disabled ones left out)."""

    path: Path
    servers: dict[str, ServerSpec]

    def find(self, name: str) -> ServerSpec | None:
        return self.servers.get(name)


def redact_url(url: str) -> str:
    """``url`` with its user info and the values of its query replaced by :data:`REDACTED`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{key}={REDACTED}" for key, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def read(path: Path | None = None) -> McpConfig:
    """The servers of mcp.json (none when the file does not exist)."""
    path = path or paths.mcp_file()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return McpConfig(path, {})
    except OSError as exc:
        raise McpConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse(raw, path)


def parse(raw: bytes, path: Path) -> McpConfig:
    """Parse the bytes of mcp.json; McpConfigError names ``path`` and the problem."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise McpConfigError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # its message holds a position, never the text
        raise McpConfigError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise McpConfigError(f'{path}: the top level must be an object {{"mcpServers": {{…}}}}')
    servers = doc.get("mcpServers")
    if not isinstance(servers, dict):
        raise McpConfigError(f"{path}: 'mcpServers' must be an object of servers by name")
    found: dict[str, ServerSpec] = {}
    for name, entry in servers.items():
        where = f"{path}: mcpServers.{name}"
        if not _NAME.match(name):
            raise McpConfigError(
                f"{path}: the server name {name[:64]!r} must be 1 to 64 letters, digits,"
                " '_', '-' or '.', starting with a letter or digit"
            )
        if not isinstance(entry, dict):
            raise McpConfigError(f"{where} must be an object")
        if entry.get("disabled") is True:
            continue
        found[name] = _server(name, entry, where)
    return McpConfig(path, found)


def _server(name: str, entry: dict[str, Any], where: str) -> ServerSpec:
    kind = entry.get("type")
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        raise McpConfigError(
            f"{where} needs either 'command' (a stdio server) or 'url' (a remote server)"
            + (", not both" if has_command else "")
        )
    if kind == "sse":
        raise McpConfigError(
            f"{where}: 'type' sse is not supported: lms speaks streamable HTTP to remote servers"
        )
    if has_command:
        if kind not in (None, "stdio"):
            raise McpConfigError(f"{where}: 'type' must be 'stdio' for a server with 'command'")
        command = entry["command"]
        if not isinstance(command, str) or not command.strip():
            raise McpConfigError(f"{where}.command must be a non-empty string")
        return ServerSpec(
            name=name,
            command=command,
            args=tuple(_strings(entry.get("args", []), f"{where}.args")),
            env=_string_map(entry.get("env", {}), f"{where}.env"),
        )
    if kind not in (None, *_REMOTE_TYPES):
        raise McpConfigError(f"{where}: 'type' must be 'http' for a server with 'url'")
    url = entry["url"]
    if not isinstance(url, str):
        raise McpConfigError(f"{where}.url must be a string")
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise McpConfigError(f"{where}.url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise McpConfigError(f"{where}.url must be an http:// or https:// URL with a host")
    return ServerSpec(
        name=name,
        url=url.strip(),
        headers=_string_map(entry.get("headers", {}), f"{where}.headers"),
    )


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise McpConfigError(f"{where} must be a list of strings")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise McpConfigError(f"{where} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise McpConfigError(f"{where}.{key} must be a string")
    return dict(value)


class McpConfigFile:
    """The daemon's view of mcp.json: parsed again only when the file changes.

    A malformed file raises its McpConfigError at each :meth:`current` until it is fixed; the
    daemon keeps serving everything else.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._signature: tuple[int, int, int, int] | str | None = "unread"
        self._config: McpConfig | None = None
        self._error: McpConfigError | None = None

    @property
    def path(self) -> Path:
        return self._path or paths.mcp_file()

    def current(self) -> McpConfig:
        path = self.path
        signature = storage.file_signature(path)
        if signature != self._signature:
            self._signature = signature
            try:
                self._config, self._error = read(path), None
            except McpConfigError as exc:
                self._config, self._error = None, exc
        if self._error is not None:
            raise self._error
        assert self._config is not None
        return self._config
