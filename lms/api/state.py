"""Typed keys of the aiohttp applications' shared state."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from lms.auth.gate import TokenGate
from lms.chats import ChatStore
from lms.config import ConfigWatcher
from lms.download.downloader import DownloadManager
from lms.inference.manager import ModelManager
from lms.logstream import LogHub
from lms.mcp.sessions import McpServers
from lms.remote.registry import Remotes


@dataclass(frozen=True)
class Listener:
    """Where the API listens (the Host check depends on it)."""

    host: str
    port: int
    tls: bool = False

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


#: The one token gate of HTTP routes and SDK sockets (the name the app and the daemon use).
AuthGuard = TokenGate


MANAGER = web.AppKey("manager", ModelManager)
CONFIG = web.AppKey("config", ConfigWatcher)
LISTENER = web.AppKey("listener", Listener)
AUTH = web.AppKey("auth", TokenGate)
CHATS = web.AppKey("chats", ChatStore)
LOGS = web.AppKey("logs", LogHub)
DOWNLOADS = web.AppKey("downloads", DownloadManager)
MCP = web.AppKey("mcp", McpServers)
REMOTES = web.AppKey("remotes", Remotes)
