"""Settings (README: Settings): defaults < config.toml < ``LMS_*`` environment < command-line flags.

Settings that decide security (``auth.*``, ``mcp.*``, ``server.cors*``, ``server.allowed_hosts``)
come from config.toml only: neither the environment of whichever process started the daemon nor
a flag can change them. The daemon re-reads the file when it changes (:class:`ConfigWatcher`) and
fails closed when it is broken.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lms import paths, storage
from lms.errors import ConfigBrokenError, SettingError
from lms.limits import MAX_TTL_SECONDS
from lms.remoteconfig import RemoteSpec, dump_remotes, parse_remotes


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


def registry_file_of(settings: Settings) -> Path:
    """The token registry ``settings`` name: ``auth.registry_file`` with ``~`` expanded, else
    the default (``<config dir>/tokens.toml``). The one place that decides it: the daemon's
    verifier, ``lms token``, ``lms auth`` and shell completion all ask here."""
    if not settings.auth_registry_file:
        return paths.tokens_file()
    try:
        return Path(settings.auth_registry_file).expanduser()
    except RuntimeError as exc:  # "~" without a home directory: which file is unknown
        raise ConfigBrokenError(f"auth.registry_file: {exc}") from None


def current_registry_file() -> Path:
    """The token registry in force for this process: config.toml's ``auth.registry_file`` (a
    security setting: the environment cannot move it). ConfigBrokenError while config.toml is
    broken: which registry to use is then unknown, and nothing is read or written."""
    return registry_file_of(build(read_file(), {}))


def models_dir_of(settings: Settings) -> Path:
    """The models folder ``settings`` name: ``models.dir`` with ``~`` expanded, else the
    default (``<data dir>/models``)."""
    return Path(settings.models_dir).expanduser() if settings.models_dir else paths.models_dir()


def current_models_dir() -> Path:
    """The models folder in force for this process (config.toml and ``LMS_MODELS_DIR``)."""
    return models_dir_of(load())


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

_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


def _unknown_key(key: str) -> SettingError:
    return SettingError(f"unknown setting {key!r}", hint="see: lms config list")


def setting(key: str) -> Setting:
    try:
        return SETTINGS[key]
    except KeyError:
        raise _unknown_key(key) from None


def parse_text(key: str, text: str) -> Any:
    """Parse ``text`` (from the command line or the environment) into the value of ``key``."""
    spec = setting(key)
    try:
        if spec.kind is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return _validated(spec, True)
            if low in _FALSE:
                return _validated(spec, False)
            raise ValueError("must be on or off (true/false, yes/no, 1/0)")
        if spec.kind is int:
            try:
                return _validated(spec, int(text.strip()))
            except ValueError as exc:
                if "invalid literal" in str(exc):
                    raise ValueError("must be a whole number") from None
                raise
        if spec.kind is tuple:
            stripped = text.strip()
            if stripped.startswith("["):
                items = json.loads(stripped)
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    raise ValueError("must be a list of strings")
            else:
                items = [part.strip() for part in stripped.split(",") if part.strip()]
            return _validated(spec, tuple(items))
        return _validated(spec, text.strip())
    except (ValueError, json.JSONDecodeError) as exc:
        raise SettingError(f"invalid value {text!r} for {key}: {exc}") from None


def _validated(spec: Setting, value: Any) -> Any:
    if spec.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("must be a whole number")
    if spec.kind is bool and not isinstance(value, bool):
        raise ValueError("must be true or false")
    if spec.kind is str and not isinstance(value, str):
        raise ValueError("must be a string")
    if spec.kind is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        value = tuple(value)
    if spec.check:
        spec.check(value)
    return value


def read_file(path: Path | None = None) -> dict[str, Any]:
    """The settings written in config.toml, flattened to dotted keys and validated.

    A missing file is empty. An unreadable or invalid file raises ConfigBrokenError naming the
    file and the problem.
    """
    path = path or paths.config_file()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigBrokenError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigBrokenError(f"{path} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for section, table in doc.items():
        if section == REMOTES:
            try:
                values[REMOTES] = parse_remotes(table)
            except ValueError as exc:
                raise ConfigBrokenError(f"{path}: {exc}") from None
            continue
        if not isinstance(table, dict):
            raise ConfigBrokenError(f"{path}: {section!r} must be a [section]")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in SETTINGS:
                raise ConfigBrokenError(f"{path}: unknown setting {key!r}")
            try:
                values[key] = _validated(SETTINGS[key], value)
            except ValueError as exc:
                raise ConfigBrokenError(f"{path}: {key}: {exc}") from None
    return values


#: The config.toml section of remote engines (not a setting of SETTINGS: a table of tables).
REMOTES = "remotes"


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Values of the non-security settings given as ``LMS_*`` environment variables."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, spec in SETTINGS.items():
        var = spec.env_var
        if var and environ.get(var, "") != "":
            try:
                values[key] = parse_text(key, environ[var])
            except SettingError as exc:
                raise SettingError(f"{var}: {exc}") from None
    return values


def build(file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
    """Combine file values and overrides (env, flags); overrides never touch security keys."""
    changes: dict[str, Any] = {
        SETTINGS[k].field if k != REMOTES else REMOTES: v for k, v in file_values.items()
    }
    for key, value in overrides.items():
        spec = setting(key)
        if spec.security:
            raise SettingError(f"{key} can only be set in config.toml (lms config set {key} ...)")
        changes[spec.field] = value
    return Settings(**changes)


def load(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """The effective settings: defaults < config.toml < environment < ``overrides``."""
    merged = env_values(environ)
    merged.update(overrides or {})
    return build(read_file(), merged)


#: Called with (key, old, new) under config.toml's lock just before a write (``old``: the
#: file's value, or the default when absent): what the audit log needs (see lms.auth.audit).
BeforeWrite = Callable[[str, Any, Any], None]


def set_value(key: str, text: str, *, before_write: BeforeWrite | None = None) -> Any:
    """Validate and write one setting to config.toml (atomically, under its lock)."""
    value = parse_text(key, text)
    if key == "models.dir" and value and not Path(value).expanduser().is_dir():
        raise SettingError(
            f"invalid value {text!r} for {key}: {Path(value).expanduser()} is not a folder",
            hint="create it first, or give the folder that holds your models",
        )
    if key == "auth.registry_file" and value and not Path(value).expanduser().parent.is_dir():
        raise SettingError(
            f"invalid value {text!r} for {key}: {Path(value).expanduser().parent} is not a folder",
            hint="create it (or mount the shared filesystem) first",
        )
    path = paths.config_file()
    with storage.locked(path):
        values = read_file(path)
        if before_write is not None:
            before_write(key, values.get(key, setting(key).default), value)
        values[key] = value
        storage.write_atomic(path, _dump(values))
    return value


def unset_value(key: str, *, before_write: BeforeWrite | None = None) -> Any:
    """Remove a setting from config.toml; returns the default that applies again."""
    default = setting(key).default
    path = paths.config_file()
    with storage.locked(path):
        values = read_file(path)
        if key in values:
            if before_write is not None:
                before_write(key, values[key], default)
            del values[key]
            storage.write_atomic(path, _dump(values))
    return default


def _dump(values: Mapping[str, Any]) -> bytes:
    doc: dict[str, dict[str, Any]] = {}
    for key in sorted(values):
        if key == REMOTES:
            if values[key]:
                doc[REMOTES] = dump_remotes(values[key])
            continue
        section, name = key.split(".", 1)
        value = values[key]
        doc.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
    return tomli_w.dumps(doc).encode("utf-8")


def write_remotes(
    change: Callable[[tuple[RemoteSpec, ...]], tuple[RemoteSpec, ...]],
) -> tuple[RemoteSpec, ...]:
    """Rewrite config.toml's remotes as ``change`` returns them (under its lock, atomically;
    the rest of the file is kept). ``change`` may raise to write nothing."""
    path = paths.config_file()
    with storage.locked(path):
        values = read_file(path)
        remotes = tuple(sorted(change(values.get(REMOTES, ())), key=lambda spec: spec.name))
        values[REMOTES] = remotes
        storage.write_atomic(path, _dump(values))
    return remotes


def source_of(key: str, file_values: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """Where the effective value of ``key`` comes from: default, file or env."""
    spec = setting(key)
    if spec.env_var and environ.get(spec.env_var, "") != "":
        return "env"
    return "file" if key in file_values else "default"


class ConfigWatcher:
    """The daemon's view of config.toml: re-read when the file changes, fail closed when broken.

    ``overrides`` (environment and flags of the daemon's start) apply to non-security settings
    only; security settings always come from the file as it is now.
    """

    def __init__(self, overrides: Mapping[str, Any], path: Path | None = None) -> None:
        self._overrides = dict(overrides)
        self._path = path
        self._signature: tuple[int, int, int, int] | str | None = "unread"
        self._settings: Settings | None = None
        self._error: ConfigBrokenError | None = None

    @property
    def path(self) -> Path:
        return self._path or paths.config_file()

    def current(self) -> Settings:
        """The settings in force now; raises ConfigBrokenError while the file is broken."""
        signature = storage.file_signature(self.path)
        if signature != self._signature:
            self._signature = signature
            try:
                self._settings = build(read_file(self.path), self._overrides)
                self._error = None
            except ConfigBrokenError as exc:
                self._settings, self._error = None, exc
        if self._error is not None:
            raise self._error
        assert self._settings is not None
        return self._settings

    def set_override(self, key: str, value: Any) -> None:
        self._overrides[key] = value
        self._signature = "unread"
