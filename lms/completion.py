"""Values for shell completion, read cheaply: ``lms __complete SOURCE [PREFIX]``.

The static completion scripts in ``completions/`` know every command, option and fixed value by
heart (they are generated from the Typer app); for the values that change they run this hidden
command, one line per value on stdout. It is answered by :func:`main` before Typer is imported
(see :mod:`lms.launcher`): a TAB must not pay for building the CLI.

- ``tokens``: the names, then the ids, of the tokens in the registry (``auth.registry_file``,
  else tokens.toml; the registry's own reader).
- ``models``: model keys. The daemon's catalog when its socket answers, else the model files
  of the models folder (``models.dir``) keyed by :func:`lms.modelfolder.scan`, the daemon's own
  rule: a GGUF header is read only for a file new or changed since the last TAB (to tell an
  embedding model), then its type is cached (``model-types.json``).
- ``instances``: identifiers of the loaded instances, asked of the daemon only if its socket
  answers (nothing otherwise).
- ``remotes``: the names of the remote engines of config.toml (``[remotes.NAME]``).

Never starts the daemon, never prints an error into a completion: anything that fails yields no
values. Standard library and ``lms.paths`` only at import time; the rest is imported on use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from lms import paths

# How long a TAB may wait for a running daemon before it gives up on its values.
DAEMON_TIMEOUT = 1.0


def tokens() -> list[str]:
    """Names, then ids, of the tokens in the registry (nothing when it is missing or broken)."""
    from lms.auth import registry
    from lms.errors import ConfigBrokenError

    try:
        records = registry.read(_registry_file()).records
    except ConfigBrokenError:
        return []
    return [r.name for r in records] + [r.id for r in records]


def _registry_file() -> Path:
    """:func:`lms.config.current_registry_file`, without importing lms.config (and tomllib) at
    each TAB when config.toml cannot name another registry: when it is missing, or does not
    mention ``registry_file`` at all (a broken config.toml then still completes the default
    registry's names: a TAB only shows them)."""
    try:
        text = paths.config_file().read_bytes()
    except FileNotFoundError:
        return paths.tokens_file()
    except OSError:
        text = b"registry_file"  # let config.toml's own reader say what is wrong
    if b"registry_file" not in text:
        return paths.tokens_file()
    from lms import config

    return config.current_registry_file()


def models() -> list[str]:
    """Model keys: the running daemon's catalog, else the GGUF files of the models folder."""
    from lms import protocol

    doc = _ask_daemon(protocol.CONTROL_MODELS)
    if doc is not None:
        return sorted(str(model["key"]) for model in doc["models"])
    from lms import modelfolder

    return [model.key for model in modelfolder.scan().models]


def instances() -> list[str]:
    """Identifiers of the loaded instances; nothing when no daemon answers."""
    from lms import protocol

    doc = _ask_daemon(protocol.CONTROL_INSTANCES)
    if doc is None:
        return []
    return sorted(str(instance["identifier"]) for instance in doc["instances"])


def remotes() -> list[str]:
    """Names of the remote engines in config.toml (nothing when it is missing or broken)."""
    from lms import config
    from lms.errors import ConfigBrokenError

    try:
        specs = config.read_file().get(config.REMOTES, ())
    except ConfigBrokenError:
        return []
    return [spec.name for spec in specs]


SOURCES: dict[str, Callable[[], list[str]]] = {
    "tokens": tokens,
    "models": models,
    "instances": instances,
    "remotes": remotes,
}


def values(source: str, prefix: str = "") -> list[str]:
    """The values of ``source`` that start with ``prefix`` (KeyError for an unknown source)."""
    return [value for value in SOURCES[source]() if value.startswith(prefix)]


def main(argv: Sequence[str], out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """``lms __complete SOURCE [PREFIX]``: the values, one per line; exit 2 on bad usage."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not 1 <= len(argv) <= 2 or argv[0] not in SOURCES:
        err.write(f"usage: lms __complete {'|'.join(SOURCES)} [PREFIX]\n")
        return 2
    try:
        found = values(argv[0], argv[1] if len(argv) == 2 else "")
    except Exception:  # a TAB shows nothing rather than a traceback
        found = []
    if found:
        out.write("\n".join(found) + "\n")
    return 0


def _ask_daemon(route: str) -> Any:
    """The daemon's answer to ``GET route`` when its socket exists and answers in time, else
    None (no daemon, a stuck one, a socket of another user: a TAB never waits or complains)."""
    socket = paths.socket_path()
    if not socket.exists():
        return None
    from lms.client import ControlClient  # http.client: only when a daemon may answer

    client = ControlClient(socket, timeout=DAEMON_TIMEOUT)
    try:
        return client.request("GET", route, timeout=DAEMON_TIMEOUT)
    except Exception:
        return None
