"""Permission names and the one route / SDK endpoint → access table."""

from __future__ import annotations

import pytest

from lms.auth import permissions as perms
from lms.auth.permissions import ANY_TOKEN, PUBLIC, Permission
from lms.errors import InvalidRequestError

# README: Authentication; APIs, written out independently of the table under test.
EXPECTED_ROUTES = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/lmstudio-greeting"): PUBLIC,
    ("GET", "/llm"): PUBLIC,
    ("GET", "/embedding"): PUBLIC,
    ("GET", "/system"): PUBLIC,
    ("GET", "/files"): PUBLIC,
    ("GET", "/repository"): PUBLIC,
    ("GET", "/v1/models"): ANY_TOKEN,
    ("GET", "/api/v1/models"): ANY_TOKEN,
    ("POST", "/v1/chat/completions"): Permission.INFERENCE,
    ("POST", "/v1/completions"): Permission.INFERENCE,
    ("POST", "/v1/embeddings"): Permission.INFERENCE,
    ("POST", "/v1/responses"): Permission.INFERENCE,
    ("POST", "/v1/messages"): Permission.INFERENCE,
    ("POST", "/v1/messages/count_tokens"): Permission.INFERENCE,
    ("POST", "/api/v1/chat"): Permission.INFERENCE,
    ("POST", "/api/v1/models/load"): Permission.MODELS,
    ("POST", "/api/v1/models/unload"): Permission.MODELS,
    ("POST", "/api/v1/models/download"): Permission.MODELS,
    ("GET", "/api/v1/models/download/status/{job_id}"): Permission.MODELS,
}


def test_route_table_is_exactly_the_spec() -> None:
    assert dict(perms.ROUTE_ACCESS) == EXPECTED_ROUTES


@pytest.mark.parametrize(("route", "access"), EXPECTED_ROUTES.items())
def test_access_for(route: tuple[str, str], access: perms.Access) -> None:
    assert perms.access_for(*route) is access
    assert perms.access_for(route[0].lower(), route[1]) is access


def test_head_follows_get() -> None:
    assert perms.access_for("HEAD", "/v1/models") is ANY_TOKEN
    assert perms.access_for("HEAD", "/health") is PUBLIC


@pytest.mark.parametrize(
    "route",
    [
        ("GET", "/v1/chat/completions"),
        ("POST", "/health"),
        ("GET", "/api/v1/models/download/status/123"),  # a raw path, not the pattern
        ("GET", "/invocations"),
        ("OPTIONS", "/v1/models"),
        ("DELETE", "/api/v1/models/load"),
    ],
)
def test_unmapped_routes_raise_key_error(route: tuple[str, str]) -> None:
    with pytest.raises(KeyError):
        perms.access_for(*route)


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        perms.ROUTE_ACCESS[("GET", "/x")] = PUBLIC  # type: ignore[index]


def test_sdk_table() -> None:
    for namespace in ("llm", "embedding"):
        assert perms.sdk_access_for(namespace, "listLoaded") is ANY_TOKEN
        assert perms.sdk_access_for(namespace, "getOrLoad") is Permission.INFERENCE
        assert perms.sdk_access_for(namespace, "tokenize") is Permission.INFERENCE
        assert perms.sdk_access_for(namespace, "countTokens") is Permission.INFERENCE
        assert perms.sdk_access_for(namespace, "loadModel") is Permission.MODELS
        assert perms.sdk_access_for(namespace, "unloadModel") is Permission.MODELS
        assert perms.sdk_access_for(namespace, "getModelInfo") is ANY_TOKEN
    assert perms.sdk_access_for("llm", "predict") is Permission.INFERENCE
    assert perms.sdk_access_for("llm", "applyPromptTemplate") is Permission.INFERENCE
    assert perms.sdk_access_for("embedding", "embedString") is Permission.INFERENCE
    assert perms.sdk_access_for("system", "listDownloadedModels") is ANY_TOKEN
    assert perms.sdk_access_for("files", "uploadFileBase64") is Permission.INFERENCE
    assert perms.sdk_access_for("repository", "downloadModel") is Permission.MODELS
    # No SDK endpoint is public: the socket's auth packet always comes first.
    assert PUBLIC not in set(perms.SDK_ACCESS.values())
    assert {ns for ns, _ in perms.SDK_ACCESS} == set(perms.SDK_NAMESPACES)
    with pytest.raises(KeyError):
        perms.sdk_access_for("llm", "embedString")
    with pytest.raises(KeyError):
        perms.sdk_access_for("plugins", "predict")


def test_parse_permissions() -> None:
    assert perms.parse_permissions(["inference"]) == {Permission.INFERENCE}
    assert perms.parse_permissions(["all"]) == set(Permission)
    assert perms.parse_permissions(["ALL"]) == set(Permission)
    assert perms.parse_permissions(["models,remote-mcp", "mcp"]) == {
        Permission.MODELS,
        Permission.REMOTE_MCP,
        Permission.MCP,
    }
    assert perms.parse_permissions([]) == frozenset()
    assert frozenset({Permission.INFERENCE}) == perms.DEFAULT_PERMISSIONS


def test_unknown_permission_lists_valid_ones() -> None:
    with pytest.raises(InvalidRequestError) as info:
        perms.parse_permissions(["inference", "admin"])
    message = str(info.value)
    assert "'admin'" in message
    for name in ("inference", "models", "mcp", "remote-mcp", "all"):
        assert name in message


def test_sorted_permissions_is_stable() -> None:
    assert perms.sorted_permissions({Permission.MCP, Permission.INFERENCE}) == ["inference", "mcp"]
