"""The table of settings (README: Settings): each key, its type, its default, its check, and
whether it decides security (then config.toml alone sets it). Where values come from and how
they are read, written and watched is :mod:`lms.config`."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lms.errors import SettingError
from lms.limits import MAX_TTL_SECONDS
from lms.remoteconfig import RemoteSpec


@dataclass(frozen=True)
class Settings:
    server_port: int = 1234
    server_bind: str = "127.0.0.1"
    server_cors: bool = False
    server_cors_origins: tuple[str, ...] = ()
    server_allowed_hosts: tuple[str, ...] = ()
    auth_required: bool = False
    auth_registry_file: str = ""
    mcp_allow_mcp_json: bool = False
    mcp_allow_remote: bool = False
    mcp_allow_private_urls: bool = False
    mcp_timeout: int = 60
    mcp_idle_timeout: int = 600
    models_allow_private_urls: bool = False
    models_jit: bool = True
    models_jit_keep_last: bool = True
    models_ttl: int = 3600
    models_context_length: int = 4096
    models_parallel: int = 4
    models_max_context_length: int = 32768
    models_queue_length: int = 64
    models_speculative: bool = True
    models_dir: str = ""
    #: ``[remotes.NAME]`` tables (docs/REMOTES.md): file only, written by ``lms remote``.
    remotes: tuple[RemoteSpec, ...] = ()

    def get(self, key: str) -> Any:
        return getattr(self, SETTINGS[key].field)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _check_port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535 (0 picks a free port)")


def _check_bind(value: str) -> None:
    if value == "localhost":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address such as 127.0.0.1, 0.0.0.0 or ::1") from None


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def _check_origins(value: tuple[str, ...]) -> None:
    for origin in value:
        if origin == "*":
            raise ValueError("'*' is not allowed: list each origin (e.g. http://localhost:3000)")
        if not _ORIGIN.match(origin):
            raise ValueError(f"{origin!r} is not an origin like http://localhost:3000")


_HOSTNAME = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")


def _check_hosts(value: tuple[str, ...]) -> None:
    for host in value:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a host name")


def _check_non_negative(value: int) -> None:
    if value < 0:
        raise ValueError("must be 0 or more")


def _check_timeout(value: int) -> None:
    if not 1 <= value <= 3600:
        raise ValueError("must be between 1 and 3600 seconds")


def _check_ttl(value: int) -> None:
    if not 0 <= value <= MAX_TTL_SECONDS:
        raise ValueError(f"must be between 0 and {MAX_TTL_SECONDS} seconds (30 days)")


def _check_context(value: int) -> None:
    if not 16 <= value <= 1_048_576:
        raise ValueError("must be between 16 and 1048576")


MAX_PARALLEL = 16


def _check_parallel(value: int) -> None:
    if not 1 <= value <= MAX_PARALLEL:
        raise ValueError(f"must be between 1 and {MAX_PARALLEL}")


MAX_QUEUE_LENGTH = 1024


def _check_queue_length(value: int) -> None:
    if not 0 <= value <= MAX_QUEUE_LENGTH:
        raise ValueError(f"must be between 0 and {MAX_QUEUE_LENGTH}")


def _check_models_dir(value: str) -> None:
    if value and not Path(value).expanduser().is_absolute():
        raise ValueError("must be an absolute path (or start with ~), or empty for the default")
    if "\0" in value:
        raise ValueError("must not contain a NUL character")


def _check_registry_file(value: str) -> None:
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    try:
        absolute = Path(value).expanduser().is_absolute()
    except RuntimeError:  # ~user of no such user, or ~ without a home directory
        raise ValueError(f"cannot expand the ~ of {value!r}") from None
    if value and not absolute:
        raise ValueError("must be an absolute path (or start with ~), or empty for the default")
    if value.endswith("/"):
        raise ValueError("must name a file, not a folder (e.g. /srv/lms/tokens.toml)")


@dataclass(frozen=True)
class Setting:
    key: str
    kind: type
    help: str
    security: bool = False
    check: Callable[[Any], None] | None = None

    @property
    def field(self) -> str:
        return self.key.replace(".", "_")

    @property
    def env_var(self) -> str | None:
        return None if self.security else "LMS_" + self.field.upper()

    @property
    def default(self) -> Any:
        return next(f.default for f in dataclasses.fields(Settings) if f.name == self.field)


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in [
        Setting("server.port", int, "TCP port of the HTTP API", check=_check_port),
        Setting("server.bind", str, "bind address of the HTTP API", check=_check_bind),
        Setting("server.cors", bool, "answer CORS requests", security=True),
        Setting(
            "server.cors_origins",
            tuple,
            "origins allowed when CORS is on (exact match)",
            security=True,
            check=_check_origins,
        ),
        Setting(
            "server.allowed_hosts",
            tuple,
            "extra Host names accepted on a loopback bind (reverse proxies)",
            security=True,
            check=_check_hosts,
        ),
        Setting("auth.required", bool, "require an API token on every request", security=True),
        Setting(
            "auth.registry_file",
            str,
            "the token registry, e.g. one file that several gates share (empty: tokens.toml)",
            security=True,
            check=_check_registry_file,
        ),
        Setting("mcp.allow_mcp_json", bool, "let clients use mcp.json servers", security=True),
        Setting("mcp.allow_remote", bool, "let clients use per-request MCP servers", security=True),
        Setting(
            "mcp.allow_private_urls",
            bool,
            "per-request MCP URLs may resolve to private addresses",
            security=True,
        ),
        Setting(
            "mcp.timeout",
            int,
            "seconds an MCP server may take to start or to answer a request",
            security=True,
            check=_check_timeout,
        ),
        Setting(
            "mcp.idle_timeout",
            int,
            "seconds an unused mcp.json server keeps running (0: until the daemon stops)",
            check=_check_non_negative,
        ),
        Setting(
            "models.allow_private_urls",
            bool,
            "downloads may come from private addresses",
            security=True,
        ),
        Setting("models.jit", bool, "load a requested model just in time"),
        Setting("models.jit_keep_last", bool, "keep only the last JIT-loaded model"),
        Setting(
            "models.ttl",
            int,
            "idle seconds before a JIT-loaded model unloads (0: never)",
            check=_check_ttl,
        ),
        Setting(
            "models.context_length", int, "default context length of a load", check=_check_context
        ),
        Setting(
            "models.parallel",
            int,
            "requests a loaded model serves at once (continuous batching)",
            check=_check_parallel,
        ),
        Setting(
            "models.max_context_length",
            int,
            "the largest context length a load may ask for (any client, any path)",
            security=True,
            check=_check_context,
        ),
        Setting(
            "models.queue_length",
            int,
            "requests that may wait for a loaded model beyond those it serves (more get 503)",
            check=_check_queue_length,
        ),
        Setting(
            "models.speculative",
            bool,
            "guess tokens from each request's own text (speculative decoding; models loaded"
            " after the change)",
        ),
        Setting(
            "models.dir",
            str,
            "the models folder, e.g. ~/.lmstudio/models, read in place (empty: the default)",
            check=_check_models_dir,
        ),
    ]
}


def _unknown_key(key: str) -> SettingError:
    return SettingError(f"unknown setting {key!r}", hint="see: lms config list")


def setting(key: str) -> Setting:
    try:
        return SETTINGS[key]
    except KeyError:
        raise _unknown_key(key) from None
