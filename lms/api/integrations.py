"""MCP servers a request asks for: ``integrations`` of ``/api/v1/chat``, ``tools`` of type
``mcp`` of ``/v1/responses`` — read, checked against the gates, connected (README: MCP
integrations).

The gates, all checked before any server is started or contacted, each refusal audited:

1. authentication must be on (403 ``mcp_requires_auth``) — for per-request servers too, which is
   stricter than LM Studio: they make the daemon connect where a client says;
2. the kind must be allowed: ``mcp.allow_mcp_json`` for mcp.json servers, ``mcp.allow_remote``
   for per-request ones (400 ``mcp_disabled``, naming the setting);
3. the token must hold ``mcp`` (mcp.json) or ``remote-mcp`` (per-request) (403
   ``insufficient_permissions``);
4. a per-request URL must pass the outbound rule (403 ``url_not_allowed``: loopback and private
   addresses only with ``mcp.allow_private_urls``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from lms.api.security import TOKEN, refuse
from lms.api.state import AUTH, CONFIG, MCP
from lms.auth.permissions import Permission
from lms.download.outbound import CheckedUrl, OutboundPolicy, check_url
from lms.errors import (
    AuthError,
    ForbiddenRequestError,
    InvalidParameterError,
    McpAuthRequiredError,
    McpConnectionError,
    McpDisabledError,
    PermissionDeniedError,
    UpstreamError,
)
from lms.mcp.config import PLUGIN_PREFIX, ServerSpec
from lms.mcp.loop import Toolbox

log = logging.getLogger("lms.mcp")

Kind = Literal["plugin", "ephemeral"]
#: Headers that would change how the request is framed or routed: not a client's to set.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_HEADER_NAME = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(frozen=True)
class Integration:
    """One MCP server a request asks for. ``name`` is the mcp.json name (plugin) or the
    ``server_label`` (ephemeral); ``allowed_tools`` None means every tool of the server."""

    kind: Kind
    name: str
    param: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    allowed_tools: tuple[str, ...] | None = None

    @property
    def shown(self) -> str:
        if self.kind == "plugin":
            return f"the mcp.json server '{PLUGIN_PREFIX}{self.name}'"
        return f"the per-request MCP server '{self.name}'"


# --- reading the request ---------------------------------------------------------------------


def parse_integrations(value: Any, *, param: str = "integrations") -> list[Integration]:
    """``integrations`` of ``/api/v1/chat``: ``"mcp/<name>"``, ``{"type": "plugin", "id":
    "mcp/<name>", "allowed_tools"?}`` or ``{"type": "ephemeral_mcp", "server_label",
    "server_url", "allowed_tools"?, "headers"?}``; each malformed part is a 400 naming it."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidParameterError(f"'{param}' must be a list", param=param)
    found: list[Integration] = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(item, str):
            found.append(Integration("plugin", _plugin_name(item, where), where))
            continue
        if not isinstance(item, dict):
            raise InvalidParameterError(
                f"'{where}' must be a string 'mcp/<name>' or an object", param=where
            )
        kind = item.get("type")
        if kind == "plugin":
            plugin_id = item.get("id")
            if not isinstance(plugin_id, str):
                raise InvalidParameterError(f"'{where}.id' must be a string", param=f"{where}.id")
            found.append(
                Integration(
                    "plugin",
                    _plugin_name(plugin_id, f"{where}.id"),
                    where,
                    allowed_tools=_allowed(item.get("allowed_tools"), f"{where}.allowed_tools"),
                )
            )
        elif kind == "ephemeral_mcp":
            found.append(_ephemeral(item, where, "server_label", "server_url"))
        else:
            raise InvalidParameterError(
                f"'{where}.type' must be 'plugin' or 'ephemeral_mcp'", param=f"{where}.type"
            )
    return found


def parse_mcp_tools(value: Any, *, param: str = "tools") -> list[Integration]:
    """``tools`` of ``/v1/responses``: ``{"type": "mcp", "server_label", "server_url"?,
    "allowed_tools"?, "headers"?, "require_approval"?}``. Without ``server_url`` it names an
    mcp.json server. Tools of another type are refused (not served on this route yet)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidParameterError(f"'{param}' must be a list", param=param)
    found: list[Integration] = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise InvalidParameterError(f"'{where}' must be an object", param=where)
        if item.get("type") != "mcp":
            raise InvalidParameterError(
                f"'{where}.type' {item.get('type')!r} is not supported on /v1/responses:"
                " only MCP tools ('mcp') are",
                param=f"{where}.type",
            )
        if item.get("server_url") is None:
            label = item.get("server_label")
            if not isinstance(label, str) or not label:
                raise InvalidParameterError(
                    f"'{where}.server_label' must be a non-empty string",
                    param=f"{where}.server_label",
                )
            found.append(
                Integration(
                    "plugin",
                    label.removeprefix(PLUGIN_PREFIX),
                    where,
                    allowed_tools=_allowed(item.get("allowed_tools"), f"{where}.allowed_tools"),
                )
            )
        else:
            found.append(_ephemeral(item, where, "server_label", "server_url"))
    return found


def _plugin_name(plugin_id: str, where: str) -> str:
    if not plugin_id.startswith(PLUGIN_PREFIX) or len(plugin_id) == len(PLUGIN_PREFIX):
        raise InvalidParameterError(
            f"'{where}' must name an mcp.json server as 'mcp/<name>' (got {plugin_id[:80]!r});"
            " lms runs MCP servers only, no other plugins",
            param=where,
        )
    return plugin_id[len(PLUGIN_PREFIX) :]


def _ephemeral(item: dict[str, Any], where: str, label_key: str, url_key: str) -> Integration:
    label, url = item.get(label_key), item.get(url_key)
    if not isinstance(label, str) or not label:
        raise InvalidParameterError(
            f"'{where}.{label_key}' must be a non-empty string", param=f"{where}.{label_key}"
        )
    if not isinstance(url, str) or not url:
        raise InvalidParameterError(
            f"'{where}.{url_key}' must be a non-empty string", param=f"{where}.{url_key}"
        )
    return Integration(
        "ephemeral",
        label,
        where,
        url=url,
        headers=_headers(item.get("headers"), f"{where}.headers"),
        allowed_tools=_allowed(item.get("allowed_tools"), f"{where}.allowed_tools"),
    )


def _allowed(value: Any, where: str) -> tuple[str, ...] | None:
    """A list of tool names; OpenAI's ``{"tool_names": [...]}`` too. None: every tool."""
    if value is None:
        return None
    if isinstance(value, dict) and "tool_names" in value:
        value = value["tool_names"]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise InvalidParameterError(f"'{where}' must be a list of tool names", param=where)
    return tuple(value)


def _headers(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameterError(f"'{where}' must be an object of strings", param=where)
    for name, text in value.items():
        if not name or not set(name) <= _HEADER_NAME:
            raise InvalidParameterError(f"'{where}' has an invalid header name", param=where)
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidParameterError(f"'{where}' may not set {name}", param=where)
        if not isinstance(text, str) or "\r" in text or "\n" in text:
            # never echo the value: headers carry secrets
            raise InvalidParameterError(
                f"'{where}.{name}' must be a string on one line", param=where
            )
    return dict(value)


# --- the gates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """An integration that passed the gates, with what connecting to it needs."""

    integration: Integration
    spec: ServerSpec | None = None
    checked: CheckedUrl | None = None


async def admit(request: web.Request, wanted: Sequence[Integration]) -> list[Admitted]:
    """Check every gate for every integration (nothing is started or contacted here; a per-
    request URL's name is resolved). A refusal is audited and raised."""
    if not wanted:
        return []
    settings = request.app[CONFIG].current()
    record = request.get(TOKEN)
    token_id = record.id if record is not None else None
    try:
        for item in wanted:
            if not settings.auth_required or record is None:
                raise McpAuthRequiredError(
                    f"refused {item.shown}: MCP integrations need authentication, and it is"
                    " off on this server (auth.required)",
                    hint="the server's owner can turn it on: lms auth require on",
                    param=item.param,
                )
            if item.kind == "plugin" and not settings.mcp_allow_mcp_json:
                raise _disabled(item, "mcp.allow_mcp_json", "mcp.json servers")
            if item.kind == "ephemeral" and not settings.mcp_allow_remote:
                raise _disabled(item, "mcp.allow_remote", "per-request MCP servers")
            permission = Permission.MCP if item.kind == "plugin" else Permission.REMOTE_MCP
            try:
                request.app[AUTH].verifier.authorize(record, permission)
            except AuthError as err:
                raise PermissionDeniedError(
                    f"refused {item.shown}: {err.message}",
                    hint=err.hint,
                    param=item.param,
                    data=err.data,
                ) from None
        admitted: list[Admitted] = []
        servers = request.app[MCP]
        policy = OutboundPolicy(
            allow_private=settings.mcp_allow_private_urls,
            setting_hint="the server's owner can allow private addresses:"
            " lms config set mcp.allow_private_urls on",
        )
        for item in wanted:
            if item.kind == "plugin":
                admitted.append(Admitted(item, spec=servers.spec(item.name)))
                continue
            assert item.url is not None
            try:
                checked = await check_url(item.url, policy, param=f"{item.param}.server_url")
            except ForbiddenRequestError as err:
                raise type(err)(
                    f"refused {item.shown}: {err.message}", hint=err.hint, param=err.param
                ) from None
            except UpstreamError as err:
                raise McpConnectionError(f"{item.shown}: {err.message}") from None
            admitted.append(Admitted(item, checked=checked))
        return admitted
    except (AuthError, ForbiddenRequestError, McpDisabledError) as err:
        refuse(request, err, token_id)
        raise


def _disabled(item: Integration, setting: str, what: str) -> McpDisabledError:
    return McpDisabledError(
        f"refused {item.shown}: {what} are turned off on this server ({setting})",
        hint=f"the server's owner can allow them: lms config set {setting} on",
        param=item.param,
    )


async def connect(request: web.Request, admitted: Sequence[Admitted]) -> Toolbox:
    """Start (or reuse) the servers and gather the allowed tools. Per-request sessions belong
    to the returned toolbox: close it (``async with``)."""
    servers = request.app[MCP]
    toolbox = Toolbox()
    try:
        for entry in admitted:
            item = entry.integration
            if entry.spec is not None:
                connection, tools = await servers.plugin_tools(entry.spec)
                toolbox.add(connection, tools, item.allowed_tools)
            else:
                assert entry.checked is not None
                connection = await servers.ephemeral(item.name, entry.checked, item.headers)
                try:
                    tools = await connection.list_tools()
                except BaseException:
                    await connection.close()
                    raise
                toolbox.add(connection, tools, item.allowed_tools, owned=True)
    except BaseException:
        await toolbox.aclose()
        raise
    if not toolbox.offered:
        log.info("MCP integrations of %s %s offer no allowed tool", request.method, request.path)
    return toolbox
