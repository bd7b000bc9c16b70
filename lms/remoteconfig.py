"""Remote engines as config.toml declares them (docs/REMOTES.md): the ``[remotes.NAME]`` tables.

A remote is an OpenAI-compatible server (llama.cpp's llama-server, vLLM, SGLang, another lms)
whose models lms serves under ``NAME/<upstream id>``, behind its own token gate. Remotes are
security settings: they come from config.toml only (``lms remote add`` writes them there), every
field is validated, and a broken table makes the whole file broken (the daemon then refuses
requests, as for any other broken setting). The upstream's credential is never in config.toml:
``key_file`` names a file only its owner can read (0600), read by the daemon itself.

Stdlib only: the CLI and the daemon both read this.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A remote's name: the first part of its models' keys (``NAME/<upstream id>``).
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
MAX_REMOTES = 32
MAX_URLS = 16
MAX_GLOBS = 64
MAX_KEY_BYTES = 4096
#: Characters an upstream key may hold: it goes into an ``Authorization`` header as it is.
_KEY = re.compile(r"^[\x21-\x7e]{1,4096}$")
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,255}$")

#: (field, minimum, maximum) of the numeric fields; see RemoteSpec for what each bounds.
_BOUNDS = {
    "timeout": (1, 86_400),
    "connect_timeout": (1, 300),
    "idle_timeout": (1, 3600),
    "max_concurrent": (1, 4096),
    "health_interval": (1, 3600),
}


@dataclass(frozen=True)
class RemoteSpec:
    """One ``[remotes.NAME]`` table.

    Several ``urls`` are replicas of one engine (same models): requests go to the replica with
    the fewest in flight. The numeric fields bound what one upstream can cost the gate.
    """

    name: str
    urls: tuple[str, ...]
    #: A 0600 file holding the upstream's API key ("" = the upstream needs none).
    key_file: str = ""
    #: Upstream model ids served (shell-style globs, case-insensitive); empty = all of them.
    models: tuple[str, ...] = ()
    #: PEM file of the CA that signs the upstream's certificate ("" = the system's CAs).
    ca_file: str = ""
    #: Seconds a whole request may take upstream (a long generation included).
    timeout: int = 600
    #: Seconds to connect to a replica.
    connect_timeout: int = 10
    #: Seconds an upstream may stay silent: before its headers, or between two bytes of a body.
    idle_timeout: int = 300
    #: Requests one replica serves at once through this gate; more wait for a free one.
    max_concurrent: int = 64
    #: The route the active health check asks (any 2xx is healthy).
    health_path: str = "/v1/models"
    #: Seconds between active health checks and model-list polls.
    health_interval: int = 5

    def serves(self, upstream_id: str) -> bool:
        """Whether ``models`` lets this remote serve the upstream model ``upstream_id``."""
        if not self.models:
            return True
        low = upstream_id.lower()
        return any(fnmatch.fnmatchcase(low, glob.lower()) for glob in self.models)

    def table(self) -> dict[str, Any]:
        """The TOML table (only fields that differ from their defaults, ``urls`` always)."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        for name, default in _DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready view for ``lms remote list --json`` (the key file's path, never its
        contents)."""
        return {"name": self.name, **{k: getattr(self, k) for k in _FIELDS if k != "name"}} | {
            "urls": list(self.urls),
            "models": list(self.models),
        }


_FIELDS = [f for f in RemoteSpec.__dataclass_fields__]
_DEFAULTS: dict[str, Any] = {
    name: f.default
    for name, f in RemoteSpec.__dataclass_fields__.items()
    if name not in ("name", "urls")
}


def check_name(name: str) -> str:
    """``name`` if it can name a remote, else ValueError saying what a name may be."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"{name!r} is not a remote name: 1-48 lower-case letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def check_url(text: str) -> str:
    """The base URL of a replica, normalised: ``http(s)://host[:port][/prefix]`` without a
    trailing ``/`` or ``/v1`` (lms adds ``/v1/...``). ValueError says what is wrong."""
    if not isinstance(text, str) or not text or len(text) > 2048:
        raise ValueError("a URL must be a non-empty string of at most 2048 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ValueError(f"{text!r} holds spaces or control characters")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: only http:// and https:// upstreams are supported")
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{parts.scheme}://{parts.hostname}: a URL must not hold credentials"
            " (put the upstream's key in a key file: --key-file)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a base URL has no query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"{text!r} has an invalid port")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))


def _check_file_path(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string (a path)")
    if value and ("\0" in value or not Path(value).expanduser().is_absolute()):
        raise ValueError(f"{what} must be an absolute path (or start with ~)")
    return value


def parse_remote(name: str, table: Any) -> RemoteSpec:
    """One ``[remotes.NAME]`` table, validated; ValueError names the field that is wrong."""
    check_name(name)
    if not isinstance(table, Mapping):
        raise ValueError("must be a table ([remotes.NAME])")
    unknown = sorted(set(table) - (set(_FIELDS) - {"name"}))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    urls = table.get("urls")
    if not isinstance(urls, list) or not urls:
        raise ValueError("urls: must be a list of one or more base URLs")
    if len(urls) > MAX_URLS:
        raise ValueError(f"urls: at most {MAX_URLS} replicas")
    try:
        checked = tuple(check_url(url) for url in urls)
    except ValueError as exc:
        raise ValueError(f"urls: {exc}") from None
    if len(set(checked)) != len(checked):
        raise ValueError("urls: a replica is listed twice")
    values: dict[str, Any] = {"name": name, "urls": checked}
    values["key_file"] = _check_file_path(table.get("key_file", ""), "key_file")
    ca_file = _check_file_path(table.get("ca_file", ""), "ca_file")
    if ca_file and not all(url.startswith("https://") for url in checked):
        raise ValueError("ca_file: only for https:// upstreams")
    values["ca_file"] = ca_file
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(g, str) and g for g in models):
        raise ValueError("models: must be a list of non-empty globs")
    if len(models) > MAX_GLOBS or any(len(g) > 256 for g in models):
        raise ValueError(f"models: at most {MAX_GLOBS} globs of at most 256 characters")
    values["models"] = tuple(models)
    for key, (low, high) in _BOUNDS.items():
        value = table.get(key, _DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key}: must be a whole number between {low} and {high}")
        values[key] = value
    health = table.get("health_path", _DEFAULTS["health_path"])
    if not isinstance(health, str) or not _HEALTH_PATH.match(health) or ".." in health:
        raise ValueError("health_path: must be a path such as /health or /v1/models")
    values["health_path"] = health
    return RemoteSpec(**values)


def parse_remotes(doc: Any) -> tuple[RemoteSpec, ...]:
    """The ``[remotes]`` section of config.toml; ValueError says which remote and field."""
    if not isinstance(doc, Mapping):
        raise ValueError("remotes: must hold [remotes.NAME] tables")
    if len(doc) > MAX_REMOTES:
        raise ValueError(f"remotes: at most {MAX_REMOTES} remotes")
    specs = []
    for name, table in doc.items():
        try:
            specs.append(parse_remote(name, table))
        except ValueError as exc:
            raise ValueError(f"remotes.{name}: {exc}") from None
    return tuple(sorted(specs, key=lambda spec: spec.name))


def dump_remotes(specs: tuple[RemoteSpec, ...]) -> dict[str, Any]:
    """The ``[remotes]`` section for ``specs`` (config.toml's writer)."""
    return {spec.name: spec.table() for spec in specs}


class KeyFileError(Exception):
    """A remote's key file cannot be used; the message names the problem (never the key)."""


def read_key(path: str) -> str:
    """The API key in ``path``: only its owner may read it (no group or other permission bits),
    at most 4 KB, one line of printable ASCII. Raises KeyFileError otherwise."""
    where = Path(path).expanduser()
    try:
        # O_NONBLOCK: a FIFO put there must not block the reader (it is refused below).
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyFileError(f"cannot open the key file {where}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"the key file {where} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"the key file {where} can be read by others (mode"
                f" {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {where}"
            )
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise KeyFileError(f"the key file {where} belongs to another user")
        raw = b""
        while len(raw) < MAX_KEY_BYTES + 2:
            try:
                chunk = os.read(fd, MAX_KEY_BYTES + 2 - len(raw))
            except OSError as exc:
                raise KeyFileError(f"cannot read the key file {where}: {exc.strerror}") from None
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(fd)
    text = raw.decode("ascii", errors="replace").strip()
    if len(raw) > MAX_KEY_BYTES + 1 or not _KEY.match(text):
        raise KeyFileError(
            f"the key file {where} must hold one key: 1-4096 printable ASCII characters, no spaces"
        )
    return text


def key_signature(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the key file changes (for re-reading it); None when it is missing."""
    try:
        info = Path(path).expanduser().stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode)
