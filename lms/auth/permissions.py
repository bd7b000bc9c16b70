"""Permissions, and THE table mapping every route and SDK endpoint to what it needs (README:
Authentication).

An :data:`Access` is what a route requires when ``auth.required`` is on:

* :data:`PUBLIC` — no token at all (``GET /health``, ``GET /lmstudio-greeting``, and the WebSocket
  upgrades of the five SDK paths, which then authenticate in-band with the SDK's auth packet);
* :data:`ANY_TOKEN` — any valid token (model listings, filtered by the token's allowlist);
* a :class:`Permission` — a valid token holding that permission.

Deny by default: :func:`access_for` raises KeyError for a route that is not in the table, so the
middleware refuses it and a test that enumerates the application's routes fails on it. CORS
preflight (``OPTIONS``) is not in the table: the middleware lets it through only when CORS is on.
The control plane (Unix socket) is not in the table either: it is guarded by the socket's mode
and the peer's uid, and token management is never reachable over TCP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from lms import protocol
from lms.auth.tokens import shown
from lms.errors import InvalidRequestError


class Permission(StrEnum):
    """What a token may do beyond listing models. Values are the names the CLI accepts."""

    INFERENCE = "inference"
    """Chat, completions, responses, messages, embeddings, tokenize, count tokens, apply
    template, file upload for chat, and the just-in-time load a request triggers."""
    MODELS = "models"
    """Explicit load and unload, download and its status, import."""
    MCP = "mcp"
    """``integrations`` that use servers from mcp.json."""
    REMOTE_MCP = "remote-mcp"
    """Per-request (ephemeral) MCP servers."""


class Requirement(StrEnum):
    """The two accesses that are not a permission: no token at all, or any valid token."""

    PUBLIC = "public"
    ANY_TOKEN = "any-token"


Access: TypeAlias = Requirement | Permission
PUBLIC: Final = Requirement.PUBLIC
ANY_TOKEN: Final = Requirement.ANY_TOKEN

ALL = "all"
ALL_PERMISSIONS: Final = frozenset(Permission)
#: What a token created without ``--perm`` gets.
DEFAULT_PERMISSIONS: Final = frozenset({Permission.INFERENCE})


def valid_names() -> list[str]:
    """The names :func:`parse_permissions` accepts, for help texts and completion."""
    return [p.value for p in Permission] + [ALL]


def parse_permission(name: str) -> Permission:
    """One permission by name (case-insensitive); InvalidRequestError lists the valid ones."""
    try:
        return Permission(name.strip().lower())
    except ValueError:
        raise InvalidRequestError(
            f"unknown permission {shown(name)!r}; valid permissions: {', '.join(valid_names())}",
            param="perm",
        ) from None


def parse_permissions(names: Iterable[str]) -> frozenset[Permission]:
    """Permission names → a set. ``all`` expands to every permission; commas also separate.

    An empty input gives an empty set (the registry, not this parser, applies the default).
    """
    result: set[Permission] = set()
    for item in names:
        for name in item.split(","):
            if not name.strip():
                continue
            if name.strip().lower() == ALL:
                result.update(ALL_PERMISSIONS)
            else:
                result.add(parse_permission(name))
    return frozenset(result)


def sorted_permissions(permissions: Iterable[Permission]) -> list[str]:
    """Permission names in the table's order (for stable output and storage)."""
    chosen = set(permissions)
    return [p.value for p in Permission if p in chosen]


# --- HTTP routes (README: APIs) -------------------------------------------------------------------

#: The SDK's WebSocket paths: public upgrades, authenticated in-band (see :data:`SDK_ACCESS`).
SDK_NAMESPACES: Final = ("llm", "embedding", "system", "files", "repository")

API_NATIVE_DOWNLOAD = protocol.API_NATIVE_DOWNLOAD
API_NATIVE_DOWNLOAD_STATUS = protocol.API_NATIVE_DOWNLOAD_STATUS

_ROUTES: dict[tuple[str, str], Access] = {
    ("GET", protocol.API_HEALTH): PUBLIC,
    ("GET", protocol.API_GREETING): PUBLIC,
    **{("GET", f"/{namespace}"): PUBLIC for namespace in SDK_NAMESPACES},
    ("GET", protocol.API_OPENAI_MODELS): ANY_TOKEN,
    ("GET", protocol.API_NATIVE_MODELS): ANY_TOKEN,
    ("POST", protocol.API_OPENAI_CHAT): Permission.INFERENCE,
    ("POST", protocol.API_OPENAI_COMPLETIONS): Permission.INFERENCE,
    ("POST", protocol.API_OPENAI_EMBEDDINGS): Permission.INFERENCE,
    ("POST", protocol.API_OPENAI_RESPONSES): Permission.INFERENCE,
    ("POST", protocol.API_ANTHROPIC_MESSAGES): Permission.INFERENCE,
    ("POST", protocol.API_ANTHROPIC_COUNT_TOKENS): Permission.INFERENCE,  # loads the model
    ("POST", protocol.API_NATIVE_CHAT): Permission.INFERENCE,
    ("POST", protocol.API_NATIVE_LOAD): Permission.MODELS,
    ("POST", protocol.API_NATIVE_UNLOAD): Permission.MODELS,
    ("POST", API_NATIVE_DOWNLOAD): Permission.MODELS,
    ("GET", API_NATIVE_DOWNLOAD_STATUS): Permission.MODELS,
}

#: (METHOD, aiohttp path pattern) → Access, for every HTTP route of the API.
ROUTE_ACCESS: Final[Mapping[tuple[str, str], Access]] = MappingProxyType(_ROUTES)


def access_for(method: str, path_pattern: str) -> Access:
    """What the route ``method path_pattern`` requires.

    ``path_pattern`` is the aiohttp resource's canonical pattern (``request.match_info.route
    .resource.canonical``), e.g. ``/api/v1/models/download/status/{job_id}`` — never the raw
    request path. ``HEAD`` follows ``GET`` (aiohttp adds HEAD to every GET route). Raises KeyError
    for an unmapped route: the caller must refuse it.
    """
    method = method.upper()
    if method == "HEAD":
        method = "GET"
    return ROUTE_ACCESS[(method, path_pattern)]


# --- SDK WebSocket endpoints (docs/API.md, SDK endpoints) ---------------------------------------

_MODEL_NAMESPACE: dict[str, Access] = {
    "listLoaded": ANY_TOKEN,
    "getModelInfo": ANY_TOKEN,
    "getLoadConfig": ANY_TOKEN,
    "getOrLoad": Permission.INFERENCE,
    "tokenize": Permission.INFERENCE,
    "countTokens": Permission.INFERENCE,
    "loadModel": Permission.MODELS,
    "unloadModel": Permission.MODELS,
}

_SDK: dict[tuple[str, str], Access] = {
    **{("llm", name): access for name, access in _MODEL_NAMESPACE.items()},
    ("llm", "predict"): Permission.INFERENCE,
    ("llm", "applyPromptTemplate"): Permission.INFERENCE,
    **{("embedding", name): access for name, access in _MODEL_NAMESPACE.items()},
    ("embedding", "embedString"): Permission.INFERENCE,
    ("system", "listDownloadedModels"): ANY_TOKEN,
    ("system", "version"): ANY_TOKEN,
    ("files", "uploadFileBase64"): Permission.INFERENCE,
    ("repository", "searchModels"): Permission.MODELS,
    ("repository", "getModelDownloadOptions"): Permission.MODELS,
    ("repository", "downloadModel"): Permission.MODELS,
}

#: (namespace, endpoint) → Access, for every SDK RPC and channel endpoint lms serves.
SDK_ACCESS: Final[Mapping[tuple[str, str], Access]] = MappingProxyType(_SDK)


def sdk_access_for(namespace: str, endpoint: str) -> Access:
    """What the SDK endpoint ``endpoint`` (an ``rpcCall`` or ``channelCreate``) of the socket
    ``/namespace`` requires, checked after the in-band auth packet for every call.

    Raises KeyError for an unmapped endpoint: answer it as an unknown endpoint
    (``communicationWarning`` plus an error for that call).
    """
    return SDK_ACCESS[(namespace, endpoint)]
