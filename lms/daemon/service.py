"""The daemon: control socket, TCP API server, model manager, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

import lms
from lms import config, paths
from lms.api.app import build_api_app
from lms.api.control.app import build_control_app
from lms.api.control.streams import add_stream_routes
from lms.api.state import AuthGuard, Listener
from lms.auth import audit
from lms.auth.verifier import TokenVerifier
from lms.config import ConfigWatcher
from lms.daemon import connections
from lms.download.downloader import DownloadManager
from lms.errors import (
    ConfigBrokenError,
    InvalidParameterError,
    PortInUseError,
    ServerAlreadyRunningError,
    ServerNotRunningError,
)
from lms.inference import defaultmodel
from lms.inference.manager import ModelManager
from lms.logstream import LogHub
from lms.mcp.sessions import McpServers
from lms.protocol import DaemonStatus, ServerStatus
from lms.remote.registry import Remotes, publishers_in

log = logging.getLogger("lms.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0
REAP_SECONDS = 5.0  # how often idle models and MCP servers are looked for


@dataclass
class _Server:
    runner: web.AppRunner
    listener: Listener


class Daemon:
    """One daemon per ``LMS_HOME``. Construct, then ``await serve()``; no I/O before that."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.config = ConfigWatcher(overrides or {})
        self.logs = LogHub()
        self.manager = ModelManager(self.config.current, self.models_dir, hub=self.logs)
        self.downloads = DownloadManager(self.config.current, self.models_dir)
        self.mcp = McpServers(
            timeout=lambda: self.config.current().mcp_timeout,
            idle_timeout=lambda: self.config.current().mcp_idle_timeout,
        )
        self.remotes = Remotes(self.config.current, lambda: publishers_in(self.models_dir()))
        # The registry config.toml names now (auth.registry_file), followed on every check.
        self.guard = AuthGuard(verifier=TokenVerifier(config.registry_locator(self.config)))
        self.socket_path = paths.socket_path()
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._server: _Server | None = None
        self._server_lock = asyncio.Lock()
        self._control: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- Controller (used by the control app) -------------------------------------------------

    def models_dir(self) -> Path:
        """The models folder in force now (``models.dir``, re-read with config.toml)."""
        return config.models_dir_of(self.config.current())

    def daemon_status(self) -> DaemonStatus:
        return {
            "version": lms.__version__,
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "server": self.server_status(),
        }

    def server_status(self) -> ServerStatus:
        try:
            auth_required = self.config.current().auth_required
        except Exception:
            auth_required = True  # broken config: the daemon fails closed
        server = self._server
        if server is None:
            return {
                "running": False,
                "host": None,
                "port": None,
                "url": None,
                "cors": False,
                "auth_required": auth_required,
                "tls": False,
            }
        host = server.listener.host
        url_host = f"[{host}]" if ":" in host else host
        scheme = "https" if server.listener.tls else "http"
        cors = False
        with contextlib.suppress(Exception):
            cors = self.config.current().server_cors
        return {
            "running": True,
            "host": host,
            "port": server.listener.port,
            "url": f"{scheme}://{url_host}:{server.listener.port}",
            "cors": cors,
            "auth_required": auth_required,
            "tls": server.listener.tls,
        }

    def auth_status(self) -> dict[str, Any]:
        """What the daemon enforces right now (for ``lms auth status``)."""
        config_error: str | None = None
        settings = None
        try:
            settings = self.config.current()
        except ConfigBrokenError as err:
            config_error = err.message
        return {
            # A broken config.toml fails closed: every API request is refused.
            "auth_required": settings.auth_required if settings else True,
            "config_healthy": config_error is None,
            "config_error": config_error,
            "registry": self.guard.verifier.status(),
            "mcp": {
                "allow_mcp_json": settings.mcp_allow_mcp_json if settings else False,
                "allow_remote": settings.mcp_allow_remote if settings else False,
                "allow_private_urls": settings.mcp_allow_private_urls if settings else False,
            },
            "server": self.server_status(),
        }

    async def start_server(
        self,
        port: int | None,
        bind: str | None,
        cors: bool | None,
        tls: tuple[str, str] | None = None,
    ) -> ServerStatus:
        async with self._server_lock:
            if cors is not None:
                # CORS is a security setting: it lives in config.toml only, so the owner's
                # `lms server start --cors` records it there, where the daemon reads it.
                await asyncio.to_thread(_record_cors, cors)
            settings = self.config.current()
            port = settings.server_port if port is None else port
            bind = settings.server_bind if bind is None else bind
            if self._server is not None:
                current = self._server.listener
                if bind == current.host and port in (current.port, 0):
                    return self.server_status()
                raise ServerAlreadyRunningError(
                    f"the server already runs on {current.host}:{current.port}",
                    hint="stop it first: lms server stop",
                )
            ssl_context = _ssl_context(tls) if tls else None
            sock = _listen(bind, port)
            listener = Listener(bind, sock.getsockname()[1], tls=ssl_context is not None)
            app = build_api_app(
                self.manager,
                self.config,
                listener,
                self.guard,
                downloads=self.downloads,
                logs=self.logs,
                mcp=self.mcp,
                remotes=self.remotes,
            )
            handler_args = connections.handler_args()
            runner = web.AppRunner(
                app,
                handler_cancellation=True,
                shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
                **handler_args,
            )
            await runner.setup()
            limits = connections.ConnectionLimits(
                connections.connection_budget(), connections.MAX_CONNECTIONS_PER_PEER
            )
            await connections.GuardedSite(
                runner, sock, limits=limits, handler_args=handler_args, ssl_context=ssl_context
            ).start()
            self._server = _Server(runner, listener)
            actual_port = listener.port
            log.info("API server listening on %s:%d", bind, actual_port)
            if not listener.is_loopback and not listener.tls:
                log.warning(
                    "the API server accepts connections from the network on %s without TLS:"
                    " tokens and prompts travel in clear text (use --tls-cert/--tls-key)",
                    bind,
                )
            if not listener.is_loopback and not settings.auth_required:
                log.warning(
                    "the API server accepts connections from the network on %s with"
                    " authentication OFF: anyone who can reach it can use it",
                    bind,
                )
            return self.server_status()

    async def stop_server(self) -> ServerStatus:
        async with self._server_lock:
            server = self._server
            if server is None:
                raise ServerNotRunningError("the server is not running")
            self._server = None
            await server.runner.cleanup()
            log.info("API server stopped")
            return self.server_status()

    async def _drain_api(self, grace: float) -> None:
        """Graceful stop: refuse new connections, let in-flight generations finish for ``grace``
        seconds, then cut the rest with a clear error (their streams still end properly)."""
        async with self._server_lock:
            server, self._server = self._server, None
        if server is None:
            return
        for site in list(server.runner.sites):
            await site.stop()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(i.is_busy for i in self.manager.instances()):
            await asyncio.sleep(0.05)
        await self.manager.close()  # remaining generations end with "the model was unloaded"
        await server.runner.cleanup()
        log.info("API server stopped")

    async def flush_usage(self) -> None:
        """Write the batched per-token usage counts to usage.sqlite3 (off the event loop)."""
        usage = self.guard.usage
        batch = usage.take()
        if not batch:
            return
        try:
            await asyncio.to_thread(usage.store.apply, batch)
        except Exception:
            usage.restore(batch)
            log.exception("cannot write token usage; will retry")

    async def _flush_usage_forever(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush_usage()

    def request_shutdown(self) -> None:
        """Ask the daemon to stop (safe from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    # --- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self,
        *,
        serve_api: bool = False,
        ready: Callable[[], None] | None = None,
        install_signals: bool = True,
        cors: bool | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """Run until asked to stop. The caller holds the pid lock."""
        self._loop = asyncio.get_running_loop()
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        paths.check_socket_path(self.socket_path)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale, from a daemon killed with -9: we hold the lock
        # Control requests are short; a CLI's idle keep-alive must not hold up shutdown.
        control_app = build_control_app(self, self.manager, self.downloads, self.mcp, self.remotes)
        add_stream_routes(control_app, self.logs)
        control = web.AppRunner(control_app, access_log=None, shutdown_timeout=2.0)
        await control.setup()
        await web.UnixSite(control, str(self.socket_path)).start()
        os.chmod(self.socket_path, 0o600)
        self._control = control
        reaper = asyncio.create_task(_every(REAP_SECONDS, self.manager.reap_idle, "idle unload"))
        mcp_reaper = asyncio.create_task(
            _every(REAP_SECONDS, self.mcp.reap_idle, "stopping idle MCP servers")
        )
        flusher = asyncio.create_task(self._flush_usage_forever())
        await self.remotes.start()
        try:
            try:
                models_dir: Path | None = self.models_dir()
            except ConfigBrokenError:  # every request fails closed meanwhile: nothing to fill
                models_dir = None
            if models_dir is not None:
                await asyncio.to_thread(defaultmodel.ensure_default_model, models_dir)
            if serve_api:
                await self.start_server(None, None, cors, tls)
            if ready:
                ready()
            await self._stop.wait()
        finally:
            log.info("shutting down")
            reaper.cancel()
            mcp_reaper.cancel()
            flusher.cancel()
            await self.downloads.close()  # partial files stay, for a resume
            await self._drain_api(SHUTDOWN_GRACE_SECONDS)
            await self.remotes.close()
            await self.mcp.close()  # stdio servers are stopped (stdin closed, then signals)
            await self.manager.close()
            await self.flush_usage()
            self.guard.refusals.flush()  # the last window's counts: no refusal goes uncounted
            await control.cleanup()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            log.info("stopped")


async def _every(seconds: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``work`` every ``seconds`` until cancelled; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)


def _record_cors(on: bool) -> None:
    """Write ``server.cors`` (a security setting: config.toml only) and audit a change."""
    config.set_value("server.cors", "on" if on else "off", before_write=audit.security_setting)


def _listen(bind: str, port: int) -> socket.socket:
    """Bind the API socket ourselves: a busy port is reported before anything starts."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        return socket.create_server((bind, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {bind} is already in use",
                hint="pick another with: lms server start --port N",
            ) from None
        raise PortInUseError(f"cannot listen on {bind}:{port}: {exc.strerror}") from None


def _ssl_context(tls: tuple[str, str]) -> ssl.SSLContext:
    cert, key = tls
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidParameterError(
            f"cannot use the TLS certificate {cert} with key {key}: {exc}", param="tls_cert"
        ) from None
    return context


def socket_dir() -> Path:
    return paths.ensure_private_dir(paths.runtime_dir())
