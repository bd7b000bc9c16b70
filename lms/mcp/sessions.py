"""MCP client sessions with the official SDK: mcp.json servers kept for reuse, per-request ones.

A server from mcp.json starts when a request first needs it and stays up for the requests that
follow; a crashed one (found dead when it is next used) starts again, once per request; a
changed entry in mcp.json replaces the running server; all stop with the daemon. A per-request
(ephemeral) server is connected for one request and closed after it.

Every wait is bounded by ``mcp.timeout``: starting (the process launch and the MCP handshake),
listing tools, each tool call. A server that does not start is a ``plugin_connection_error``
(mcp.json) or ``mcp_connection_error`` (per-request), 502, whose message says what failed. A
stdio server's stderr goes to ``<log>/mcp/<name>.log`` (its own words: lms copies none of it to
its log, where secrets must never appear).

The SDK's client must be entered and left in one task (anyio cancel scopes), so each
connection is owned by a task of its own that opens the session, waits to be told to close,
and closes it; requests call the session from their own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import lms
from lms import paths
from lms.download.outbound import CheckedUrl, shown_url
from lms.errors import McpConnectionError, McpServerNotFoundError, PluginConnectionError
from lms.mcp.config import McpConfigFile, ServerSpec

if TYPE_CHECKING:  # the SDK loads on first use, not with the daemon (~0.4 s of imports)
    import httpx2
    import mcp_types
    from mcp import Client
    from mcp.client import Transport

    from lms.mcp.remote import HttpStatus

log = logging.getLogger("lms.mcp")

DEFAULT_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 600.0
#: Pages of ``tools/list`` read at most (a paginator that never ends cannot hang a request).
MAX_TOOL_PAGES = 20
#: A server's stderr log is rolled over to ``.1`` beyond this size, when the server starts.
STDERR_LOG_BYTES = 1 << 20
_CLOSE_SECONDS = 10.0  # the SDK's own stdio shutdown escalates within ~6 s

Kind = Literal["plugin", "ephemeral"]
TransportFactory = Callable[[], "Transport"]


class McpConnection:
    """One MCP client session, owned by its own task. Construct, ``await start()``, use,
    ``await close()``."""

    def __init__(
        self,
        label: str,
        kind: Kind,
        transport: TransportFactory,
        timeout: Callable[[], float],
        *,
        hint: str | None = None,
        on_close: Callable[[], None] | None = None,
        http_status: HttpStatus | None = None,
    ) -> None:
        self.label = label
        self.kind = kind
        self._transport = transport
        self._timeout = timeout
        self._hint = hint
        self._on_close = on_close
        self._http_status = http_status
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._failure: BaseException | None = None
        #: Dead or hung: not to be used again (an mcp.json server is then started anew).
        self.broken = False
        #: Requests using it now (:meth:`hold`); an idle mcp.json server is stopped only at 0.
        self.holders = 0
        self.last_used = time.monotonic()

    def hold(self) -> None:
        """A request uses this session until :meth:`release`: it is not stopped as idle."""
        self.holders += 1
        self.last_used = time.monotonic()

    def release(self) -> None:
        self.holders = max(0, self.holders - 1)
        self.last_used = time.monotonic()

    @property
    def provider_info(self) -> dict[str, str]:
        """``provider_info`` of the tool calls it serves (docs/API.md, Native chat)."""
        if self.kind == "plugin":
            return {"type": "plugin", "plugin_id": f"mcp/{self.label}"}
        return {"type": "ephemeral_mcp", "server_label": self.label}

    @property
    def description(self) -> str:
        if self.kind == "plugin":
            return f"the MCP server {self.label!r} (mcp.json)"
        return f"the per-request MCP server {self.label!r}"

    def _error(self, message: str) -> McpConnectionError:
        cls = PluginConnectionError if self.kind == "plugin" else McpConnectionError
        return cls(message, hint=self._hint)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (launching the process of a stdio server) and complete the MCP handshake."""
        timeout = self._timeout()
        self._task = asyncio.create_task(self._own(), name=f"mcp {self.label}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait(
                {self._task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await self.close()
            raise
        finally:
            ready.cancel()
        if self._ready.is_set():
            return
        if self._task.done():
            await self.close()
            raise self._error(f"{self.description} failed to start: {self._why(self._failure)}")
        await self.close()
        raise self._error(
            f"{self.description} did not complete the MCP handshake within {timeout:g} s"
            " (mcp.timeout)"
        )

    async def _own(self) -> None:
        import mcp_types
        from mcp import Client

        try:
            async with Client(
                self._transport(),
                client_info=mcp_types.Implementation(name="lms", version=lms.__version__),
                cache=None,  # every listing asks the server: that is how a dead one is found
            ) as client:
                self._client = client
                self._ready.set()
                await self._closing.wait()
        except BaseException as exc:
            self._failure = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._client = None
            self.broken = True

    async def close(self) -> None:
        """Close the session (a stdio server's process is stopped: stdin closed, then SIGTERM,
        then SIGKILL to its process group)."""
        self.broken = True
        task = self._task
        if task is not None and not task.done():
            if self._ready.is_set():
                self._closing.set()
            else:
                task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), _CLOSE_SECONDS)
            except TimeoutError:
                task.cancel()
            except BaseException:  # the owner's own failure was recorded; cancellation is ours
                pass
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()

    # --- requests -------------------------------------------------------------------------------

    def _live(self) -> Client:
        client = self._client
        if client is None or self.broken:
            raise self._error(f"{self.description} is not connected")
        return client

    async def list_tools(self) -> list[mcp_types.Tool]:
        """Every tool the server offers now."""
        import mcp_types
        from mcp.shared.exceptions import MCPError

        client = self._live()
        timeout = self._timeout()
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        try:
            async with asyncio.timeout(timeout):
                for _ in range(MAX_TOOL_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            self._abandon()
            raise self._error(
                f"{self.description} did not list its tools within {timeout:g} s (mcp.timeout)"
            ) from None
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self.broken = True
                raise self._error(f"{self.description} stopped (connection closed)") from None
            raise self._error(f"{self.description} cannot list its tools: {exc.message}") from None
        except Exception as exc:
            self._abandon()
            raise self._error(f"{self.description} failed: {self._why(exc)}") from None
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Run a tool. An error the server answers with (unknown tool, bad arguments) comes back
        as an error result, for the model to read; a dead or hung server raises."""
        import mcp_types
        from mcp.shared.exceptions import MCPError

        client = self._live()
        timeout = self._timeout()
        try:
            async with asyncio.timeout(timeout):
                return await client.call_tool(name, arguments)
        except TimeoutError:
            self._abandon()
            raise self._error(
                f"the tool {name!r} of {self.description} did not answer within {timeout:g} s"
                " (mcp.timeout)"
            ) from None
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self.broken = True
                raise self._error(
                    f"{self.description} stopped while running the tool {name!r}"
                ) from None
            return mcp_types.CallToolResult(
                content=[mcp_types.TextContent(type="text", text=f"Error: {exc.message}")],
                is_error=True,
            )
        except Exception as exc:
            self._abandon()
            raise self._error(
                f"{self.description} failed while running the tool {name!r}: {self._why(exc)}"
            ) from None

    def _why(self, exc: BaseException | None) -> str:
        reason = _reason(exc)
        status = self._http_status.code if self._http_status is not None else None
        return reason if status is None else f"{reason} (HTTP {status})"

    def _abandon(self) -> None:
        """A hung or failing session is not used again; it is closed in the background."""
        self.broken = True
        task = asyncio.get_running_loop().create_task(self.close())
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


def _reason(exc: BaseException | None) -> str:
    """Why a connection failed, in words (from the first leaf of an exception group)."""
    import httpx2
    import mcp_types
    from mcp.shared.exceptions import MCPError

    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if exc is None:
        return "it stopped"
    if isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED:
        return "it closed the connection before the handshake ended"
    if isinstance(exc, FileNotFoundError):
        return f"cannot run {exc.filename!r}: no such file"
    if isinstance(exc, PermissionError):
        return f"cannot run {exc.filename!r}: permission denied"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"the server answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx2.TimeoutException):
        return "the server did not answer in time"
    if isinstance(exc, httpx2.HTTPError):
        return f"HTTP request failed ({type(exc).__name__})"
    if isinstance(exc, MCPError):
        return exc.message
    return type(exc).__name__


# --- transports ----------------------------------------------------------------------------------


def stderr_log(name: str) -> Path:
    """Where the stderr of the mcp.json stdio server ``name`` goes."""
    return paths.log_dir() / "mcp" / f"{name}.log"


def _open_stderr(name: str) -> TextIO:
    path = stderr_log(name)
    paths.ensure_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > STDERR_LOG_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stream = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
    stream.write(f"--- lms starts the server {name!r} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    stream.flush()
    return stream


def _stdio(spec: ServerSpec, stderr: TextIO) -> TransportFactory:
    from mcp import StdioServerParameters, stdio_client

    assert spec.command is not None
    parameters = StdioServerParameters(command=spec.command, args=list(spec.args), env=spec.env)
    return lambda: stdio_client(parameters, errlog=stderr)


def _http(url: str, client: Callable[[], httpx2.AsyncClient]) -> TransportFactory:
    from mcp.client.streamable_http import streamable_http_client

    @contextlib.asynccontextmanager
    async def transport() -> AsyncIterator[Any]:
        async with client() as http, streamable_http_client(url, http_client=http) as streams:
            yield streams

    return transport


# --- the daemon's servers ------------------------------------------------------------------------


class McpServers:
    """Every MCP connection of the daemon: mcp.json servers by name, reused; per-request ones
    made on demand. ``timeout`` gives ``mcp.timeout`` as it is now."""

    def __init__(
        self,
        config: McpConfigFile | None = None,
        timeout: Callable[[], float] = lambda: DEFAULT_TIMEOUT,
        idle_timeout: Callable[[], float] = lambda: DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.config = config or McpConfigFile()
        self._timeout = timeout
        self._idle_timeout_setting = idle_timeout
        # The SDK and its HTTP client log URLs (query strings included) at INFO and headers at
        # DEBUG: secrets of mcp.json and of requests. lms logs what matters itself.
        for name in ("mcp", "httpx2", "httpcore2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._live: dict[str, tuple[ServerSpec, McpConnection]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ephemeral: set[McpConnection] = set()

    def timeout(self) -> float:
        try:
            return float(self._timeout())
        except Exception:  # a broken config.toml: the API refuses requests anyway
            return DEFAULT_TIMEOUT

    def _idle_timeout(self) -> float:
        try:
            return float(self._idle_timeout_setting())
        except Exception:  # a broken config.toml: keep servers until it is fixed
            return 0.0

    def spec(self, name: str) -> ServerSpec:
        """The mcp.json entry ``name`` (McpConfigError for a malformed file)."""
        current = self.config.current()
        spec = current.find(name)
        if spec is None:
            known = ", ".join(f"mcp/{n}" for n in sorted(current.servers)) or "none"
            raise McpServerNotFoundError(
                f"no MCP server named {name!r} in {current.path} (configured: {known})",
                param="integrations",
            )
        return spec

    async def plugin(self, spec: ServerSpec) -> McpConnection:
        """The running session of an mcp.json server, started if needed."""
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            live = self._live.get(spec.name)
            if live is not None and (live[1].broken or live[0] != spec):
                del self._live[spec.name]
                if not live[1].broken:
                    log.info("mcp.json changed: restarting the MCP server %r", spec.name)
                await live[1].close()
                live = None
            if live is not None:
                return live[1]
            connection = self._connect_plugin(spec)
            await connection.start()
            log.info("started the MCP server %r (%s)", spec.name, spec.kind)
            self._live[spec.name] = (spec, connection)
            return connection

    def _connect_plugin(self, spec: ServerSpec) -> McpConnection:
        if spec.kind == "stdio":
            stderr = _open_stderr(spec.name)
            return McpConnection(
                spec.name,
                "plugin",
                _stdio(spec, stderr),
                self.timeout,
                hint=f"the server's stderr is in {stderr_log(spec.name)}",
                on_close=stderr.close,
            )
        from lms.mcp import remote

        assert spec.url is not None
        url, headers, status = spec.url, spec.headers, remote.HttpStatus()
        return McpConnection(
            spec.name,
            "plugin",
            _http(url, lambda: remote.owner_client(headers, status)),
            self.timeout,
            http_status=status,
        )

    async def plugin_tools(self, spec: ServerSpec) -> tuple[McpConnection, list[mcp_types.Tool]]:
        """The session of an mcp.json server and its tools; a server that died since its last
        use is started again (once). The session comes held (:meth:`McpConnection.hold`): the
        caller releases it."""
        for attempt in (1, 2):
            connection = await self.plugin(spec)
            connection.hold()
            try:
                return connection, await connection.list_tools()
            except PluginConnectionError:
                connection.release()
                if attempt == 2 or not connection.broken:
                    raise
            log.warning("the MCP server %r had stopped: starting it again", spec.name)
        raise AssertionError("unreachable")

    async def reap_idle(self, now: float | None = None) -> None:
        """Stop mcp.json servers no request has used for ``mcp.idle_timeout`` seconds."""
        idle = self._idle_timeout()
        if idle <= 0:
            return
        now = time.monotonic() if now is None else now
        for name, (_, connection) in list(self._live.items()):
            if connection.holders or now - connection.last_used < idle:
                continue
            lock = self._locks.setdefault(name, asyncio.Lock())
            async with lock:
                if self._live.get(name, (None, None))[1] is not connection or connection.holders:
                    continue
                del self._live[name]
            log.info("stopping the MCP server %r: unused for %g s (mcp.idle_timeout)", name, idle)
            await connection.close()

    async def ephemeral(
        self, label: str, checked: CheckedUrl, headers: Mapping[str, str]
    ) -> McpConnection:
        """A started session with a per-request server, connected to the checked addresses
        only; the caller closes it."""
        from lms.mcp import remote

        url, status = str(checked.url), remote.HttpStatus()
        connection: McpConnection

        def forget() -> None:
            self._ephemeral.discard(connection)

        connection = McpConnection(
            label,
            "ephemeral",
            _http(url, lambda: remote.pinned_client(checked, headers, status)),
            self.timeout,
            on_close=forget,
            http_status=status,
        )
        self._ephemeral.add(connection)
        try:
            await connection.start()
        except BaseException:
            self._ephemeral.discard(connection)
            raise
        log.info("connected to the per-request MCP server %r at %s", label, shown_url(checked.url))
        return connection

    async def describe(self, *, with_tools: bool) -> list[dict[str, Any]]:
        """mcp.json's servers as listings show them (secrets redacted), with the tools each
        offers (starting it) when ``with_tools``."""
        specs = list(self.config.current().servers.values())

        async def entry(spec: ServerSpec) -> dict[str, Any]:
            item = spec.public()
            if not with_tools:
                return item
            try:
                connection, tools = await self.plugin_tools(spec)
            except PluginConnectionError as err:
                item["error"] = err.message
                return item
            connection.release()
            item["tools"] = [
                {"name": tool.name, "description": tool.description or ""} for tool in tools
            ]
            return item

        return list(await asyncio.gather(*(entry(spec) for spec in specs)))

    async def close(self) -> None:
        """Stop every server (at daemon shutdown)."""
        connections = [c for _, c in self._live.values()] + list(self._ephemeral)
        self._live.clear()
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        if connections:
            log.info("stopped %d MCP connection(s)", len(connections))
