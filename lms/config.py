"""Settings (README: Settings): defaults < config.toml < ``LMS_*`` environment < command-line flags.

Settings that decide security (``auth.*``, ``mcp.*``, ``server.cors*``, ``server.allowed_hosts``)
come from config.toml only: neither the environment of whichever process started the daemon nor
a flag can change them. The daemon re-reads the file when it changes (:class:`ConfigWatcher`) and
fails closed when it is broken.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from lms import paths, storage
from lms.errors import ConfigBrokenError, SettingError
from lms.remoteconfig import RemoteSpec, dump_remotes, parse_remotes

# The table of settings lives in lms/settingtable.py; these names are used as ``config.X``.
from lms.settingtable import MAX_PARALLEL as MAX_PARALLEL
from lms.settingtable import SETTINGS as SETTINGS
from lms.settingtable import Setting as Setting
from lms.settingtable import Settings as Settings
from lms.settingtable import setting as setting


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


def registry_locator(watcher: ConfigWatcher) -> Callable[[], Path]:
    """The registry ``watcher``'s config.toml names now, for a check on every request: worked
    out again only when the file's settings change (ConfigBrokenError while it is broken)."""
    last: tuple[Settings, Path] | None = None

    def locate() -> Path:
        nonlocal last
        settings = watcher.current()
        if last is None or last[0] is not settings:
            last = (settings, registry_file_of(settings))
        return last[1]

    return locate


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


_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


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
