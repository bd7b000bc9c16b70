"""Typed keys of the aiohttp applications' shared state."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from lms.auth.audit import RefusalRecorder
from lms.auth.ratelimit import RateLimiter
from lms.auth.usage import UsageBuffer, UsageStore
from lms.auth.verifier import TokenVerifier
from lms.chats import ChatStore
from lms.config import ConfigWatcher
from lms.download.downloader import DownloadManager
from lms.inference.manager import ModelManager
from lms.logstream import LogHub
from lms.mcp.sessions import McpServers


@dataclass(frozen=True)
class Listener:
    """Where the API listens (the Host check depends on it)."""

    host: str
    port: int
    tls: bool = False

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


@dataclass
class AuthGuard:
    """The daemon's token machinery: registry view, per-token limits, usage counts."""

    verifier: TokenVerifier = field(default_factory=TokenVerifier)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    usage: UsageBuffer = field(default_factory=lambda: UsageBuffer(UsageStore()))
    refusals: RefusalRecorder = field(default_factory=RefusalRecorder)


MANAGER = web.AppKey("manager", ModelManager)
CONFIG = web.AppKey("config", ConfigWatcher)
LISTENER = web.AppKey("listener", Listener)
AUTH = web.AppKey("auth", AuthGuard)
CHATS = web.AppKey("chats", ChatStore)
LOGS = web.AppKey("logs", LogHub)
DOWNLOADS = web.AppKey("downloads", DownloadManager)
MCP = web.AppKey("mcp", McpServers)
