"""Key files and the gate's ``[remotes.NAME]`` config sections, for the remote-engine tests.

The gate reads, in its config.toml::

    [remotes.gpu]
    urls = ["http://127.0.0.1:PORT"]   # base URLs; the gate appends /v1/chat/completions etc.
    key_file = "/abs/path/gpu.key"      # optional; a 0600 file holding the upstream's API key

Every upstream here (FakeUpstream, LlamaCppServer, LmsUpstream) has ``base_url`` and
``key_file`` (None without a key), which is what :func:`remote_section` takes.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import tomli_w


class Upstream(Protocol):
    @property
    def base_url(self) -> str: ...

    @property
    def key_file(self) -> Path | None: ...


def write_key_file(path: Path, key: str) -> Path:
    """Write ``key`` and a newline (as ``echo KEY > file`` would) to a new file, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return path


def remote_section(*upstreams: Upstream, key_file: Path | None = None) -> dict[str, Any]:
    """One ``[remotes.NAME]`` table: the upstreams' URLs (replicas of one remote) and the key
    file (``key_file``, else the first upstream's, if any)."""
    assert upstreams, "a remote has at least one URL"
    section: dict[str, Any] = {"urls": [u.base_url for u in upstreams]}
    chosen = key_file if key_file is not None else upstreams[0].key_file
    if chosen is not None:
        section["key_file"] = str(chosen)
    return section


def remotes_toml(remotes: Mapping[str, Upstream | Sequence[Upstream]]) -> str:
    """config.toml text with one ``[remotes.NAME]`` table per entry."""
    return tomli_w.dumps({"remotes": _tables(remotes)})


def add_remotes(config_file: Path, remotes: Mapping[str, Upstream | Sequence[Upstream]]) -> None:
    """Merge ``[remotes.NAME]`` tables into ``config_file`` (created, with its folder, if absent;
    other settings kept; a remote of the same name replaced)."""
    doc: dict[str, Any] = {}
    if config_file.exists():
        doc = tomllib.loads(config_file.read_text())
    doc.setdefault("remotes", {}).update(_tables(remotes))
    config_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    config_file.write_text(tomli_w.dumps(doc))


def _tables(remotes: Mapping[str, Upstream | Sequence[Upstream]]) -> dict[str, Any]:
    tables = {}
    for name, given in remotes.items():
        group = tuple(given) if isinstance(given, Sequence) else (given,)
        tables[name] = remote_section(*group)
    return tables
