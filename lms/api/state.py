"""Typed keys of the aiohttp applications' shared state."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager


@dataclass(frozen=True)
class Listener:
    """Where the API listens (the Host check depends on it)."""

    host: str
    port: int
    tls: bool = False

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


MANAGER = web.AppKey("manager", ModelManager)
CONFIG = web.AppKey("config", ConfigWatcher)
LISTENER = web.AppKey("listener", Listener)
