"""The CLI's side of the control socket: HTTP/1.1 with JSON bodies over a Unix socket.

:class:`ControlClient` speaks to a running daemon (``protocol.CONTROL_*`` routes) and rebuilds
the daemon's errors from their ``code`` (``errors.from_code``); :func:`lms.starter.ensure_daemon`
starts a daemon in the background when none runs. Standard library only: the CLI must start
fast.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import os
import socket
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, cast

import lms
from lms import paths, protocol
from lms.errors import (
    DaemonNotRunningError,
    DaemonVersionError,
    LmsError,
    UnsafePathError,
    from_code,
)
from lms.peercred import peer_uid
from lms.protocol import (
    CONTROL_AUTH,
    CONTROL_DOWNLOADS,
    CONTROL_IMPORT,
    CONTROL_INSTANCES,
    CONTROL_LOAD,
    CONTROL_MCP,
    CONTROL_MODELS,
    CONTROL_REMOTES,
    CONTROL_SERVER,
    CONTROL_SERVER_START,
    CONTROL_SERVER_STOP,
    CONTROL_SHUTDOWN,
    CONTROL_STATUS,
    CONTROL_UNLOAD,
    DaemonStatus,
    DownloadJob,
    ImportResult,
    InstanceEntry,
    ModelEntry,
    ServerStatus,
    control_download_path,
)

# Quick routes answer in milliseconds; a daemon silent for this long is stuck.
DEFAULT_TIMEOUT = 10.0
# A model load reads gigabytes from disk: allow it a long time (Ctrl-C still interrupts).
LOAD_TIMEOUT = 1800.0
# Listing models may first assemble the default model (a 253 MB copy and its sha256).
MODELS_TIMEOUT = 300.0
# Starting a download waits up to 10 s in the daemon for the server's first answer.
DOWNLOAD_START_TIMEOUT = 60.0
# An import copies a model file (gigabytes) and fsyncs it.
IMPORT_TIMEOUT = 1800.0
# How long `shutdown(wait=True)` waits for the daemon to release its pid lock.
STOP_TIMEOUT = 30.0
# Listing MCP tools starts the servers of mcp.json (each bounded by mcp.timeout).
MCP_TOOLS_TIMEOUT = 600.0

START_HINT = "start it with: lms daemon up"
#: How often waits on the daemon (its exit, its start) look again.
POLL_INTERVAL = 0.05
_NOT_RUNNING_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK})


def _not_running(path: Path) -> DaemonNotRunningError:
    return DaemonNotRunningError(
        f"the daemon is not running (no daemon on {path})", hint=START_HINT
    )


# --- peer credentials ---------------------------------------------------------------------------


def check_peer_uid(uid: int | None, path: Path, *, expected: int | None = None) -> None:
    """Refuse a daemon that runs as another user: it could read what we send it.

    When the platform cannot report the peer's uid, the owner of the socket file decides.
    """
    expected = os.geteuid() if expected is None else expected
    if uid is None:
        try:
            uid = path.stat().st_uid
        except OSError:
            return
    if uid != expected:
        raise UnsafePathError(
            f"the daemon on {path} runs as uid {uid}, not as you (uid {expected}); "
            "refusing to talk to it",
            hint="remove that socket or set LMS_HOME to a directory of your own",
        )


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` whose ``connect()`` opens the daemon's Unix socket.

    The ``Host`` header says ``localhost``; the daemon's uid is checked on every connection.
    """

    def __init__(self, socket_path: Path, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(os.fspath(self.socket_path))
            check_peer_uid(peer_uid(sock), self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


# --- the client ---------------------------------------------------------------------------------


class ControlClient:
    """Typed calls to the daemon's control routes.

    Each call opens one connection (the daemon is local; a connection costs microseconds).
    Errors the daemon reports come back as the same :class:`LmsError` subclass; a missing socket
    or a refused connection is :class:`DaemonNotRunningError` (exit 3).
    """

    def __init__(
        self, socket_path: Path | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.socket_path = socket_path or paths.socket_path()
        self.timeout = timeout

    # -- plumbing --

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer, or raise the daemon's error."""
        paths.check_socket_path(self.socket_path)
        conn = UnixHTTPConnection(self.socket_path, timeout=timeout or self.timeout)
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        response: http.client.HTTPResponse | None = None
        try:
            try:
                conn.connect()
            except OSError as exc:
                raise self._connect_error(exc) from exc
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
            except TimeoutError as exc:
                raise LmsError(
                    f"the daemon did not answer {method} {path} within "
                    f"{timeout or self.timeout:g} s",
                    hint=f"see its log: {paths.daemon_log()}",
                ) from exc
            except (ConnectionError, http.client.HTTPException) as exc:
                raise LmsError(
                    f"the daemon closed the connection during {method} {path}",
                    hint=f"it may have crashed; see its log: {paths.daemon_log()}",
                ) from exc
        finally:
            if response is not None:
                response.close()
            conn.close()
        return self._decode(status, raw, f"{method} {path}")

    def stream(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """Send one request and yield the NDJSON objects of a streamed answer as they come.

        No read timeout: a log stream idles for as long as nothing happens. Closing the
        generator closes the connection, which the daemon sees as the end of the stream.
        """
        paths.check_socket_path(self.socket_path)
        conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout)
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/x-ndjson"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.connect()
            except OSError as exc:
                raise self._connect_error(exc) from exc
            assert conn.sock is not None
            conn.request(method, path, body=payload, headers=headers)
            conn.sock.settimeout(None)
            response = conn.getresponse()
            if response.status >= 400:
                self._decode(response.status, response.read(), f"{method} {path}")
            try:
                for line in response:
                    if line.strip():
                        yield json.loads(line)
            except (ConnectionError, http.client.HTTPException) as exc:
                raise LmsError(
                    f"the daemon closed the stream of {method} {path}",
                    hint=f"it may have stopped; see its log: {paths.daemon_log()}",
                ) from exc
        finally:
            conn.close()

    def stream_logs(self, sources: Sequence[str]) -> Generator[dict[str, Any], None, None]:
        """Live daemon events (``lms log stream``), until the generator is closed."""
        query = "&".join(f"source={s}" for s in sources)
        return self.stream("GET", f"{protocol.CONTROL_LOGS}?{query}")

    def chat(self, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """A streamed chat turn on the control plane: start, delta..., end (or error)."""
        return self.stream("POST", protocol.CONTROL_CHAT, body)

    def _connect_error(self, exc: OSError) -> LmsError:
        if exc.errno in _NOT_RUNNING_ERRNOS:
            return _not_running(self.socket_path)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return UnsafePathError(
                f"permission denied on the control socket {self.socket_path}",
                hint="it belongs to another user: set LMS_HOME to a directory of your own",
            )
        if isinstance(exc, TimeoutError):
            return LmsError(
                f"the daemon did not accept a connection on {self.socket_path} in time",
                hint=f"see its log: {paths.daemon_log()}",
            )
        return LmsError(f"cannot connect to the daemon on {self.socket_path}: {exc.strerror}")

    @staticmethod
    def _decode(status: int, raw: bytes, what: str) -> Any:
        try:
            doc = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if status >= 400:
            error = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), str):
                data = error.get("data")
                return_error = from_code(
                    error["code"],
                    str(error.get("message") or error["code"]),
                    hint=error.get("hint") if isinstance(error.get("hint"), str) else None,
                    data=data if isinstance(data, dict) else None,
                )
                raise return_error
            raise LmsError(f"the daemon answered {what} with HTTP {status} and no error details")
        if raw and doc is None:
            raise LmsError(f"the daemon answered {what} with a body that is not JSON")
        return doc

    # -- routes --

    def status(self, *, check_version: bool = True) -> DaemonStatus:
        """The daemon's status; with ``check_version``, refuse a daemon of another version."""
        status = cast(DaemonStatus, self.request("GET", CONTROL_STATUS))
        if check_version:
            check_version_matches(status)
        return status

    def shutdown(self, *, wait: bool = True, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the daemon to exit; with ``wait``, return once it has released its pid lock."""
        try:
            self.request("POST", CONTROL_SHUTDOWN, {})
        except LmsError as exc:
            # A daemon that exits before its answer is fully read did what was asked;
            # waiting for its pid lock below tells whether it is really gone.
            if not (
                wait and isinstance(exc.__cause__, (ConnectionError, http.client.HTTPException))
            ):
                raise
        if wait:
            wait_for_exit(timeout=timeout)

    def server_status(self) -> ServerStatus:
        return cast(ServerStatus, self.request("GET", CONTROL_SERVER))

    def server_start(
        self,
        *,
        port: int | None = None,
        bind: str | None = None,
        cors: bool | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> ServerStatus:
        """Start the HTTP API server; only the given fields are sent (the daemon has defaults)."""
        fields = {
            "port": port,
            "bind": bind,
            "cors": cors,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
        }
        body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        return cast(ServerStatus, self.request("POST", CONTROL_SERVER_START, body))

    def server_stop(self) -> ServerStatus:
        return cast(ServerStatus, self.request("POST", CONTROL_SERVER_STOP, {}))

    def auth_status(self) -> dict[str, Any]:
        """What the daemon enforces now (``GET /auth``): ``auth_required``, ``config_healthy``,
        ``config_error``, ``registry`` (path, healthy, error, generation, tokens), ``mcp`` and
        ``server``. Never starts a daemon: DaemonNotRunningError when none runs."""
        return cast(dict[str, Any], self.request("GET", CONTROL_AUTH))

    def models(self) -> list[ModelEntry]:
        doc = self.request("GET", CONTROL_MODELS, timeout=MODELS_TIMEOUT)
        return cast(list[ModelEntry], doc["models"])

    def instances(self) -> list[InstanceEntry]:
        doc = self.request("GET", CONTROL_INSTANCES)
        return cast(list[InstanceEntry], doc["instances"])

    def load(
        self,
        model: str,
        *,
        context_length: int | None = None,
        ttl: int | None = None,
        identifier: str | None = None,
        embedding: bool = False,
        parallel: int | None = None,
        draft_model: str | None = None,
        timeout: float = LOAD_TIMEOUT,
    ) -> InstanceEntry:
        """Load a model (``embedding``: in embedding mode, as a separate instance;
        ``draft_model``: the instance's default draft model for speculative decoding)."""
        body: dict[str, Any] = {"model": model}
        if context_length is not None:
            body["context_length"] = context_length
        if ttl is not None:
            body["ttl"] = ttl
        if identifier is not None:
            body["identifier"] = identifier
        if embedding:
            body["embedding"] = True
        if parallel is not None:
            body["parallel"] = parallel
        if draft_model is not None:
            body["draft_model"] = draft_model
        return cast(InstanceEntry, self.request("POST", CONTROL_LOAD, body, timeout=timeout))

    def unload(self, identifier: str | None = None, *, all: bool = False) -> list[str]:
        """Unload one instance, or every instance with ``all``; returns the identifiers."""
        if all == (identifier is not None):
            raise ValueError("give exactly one of identifier and all")
        body: dict[str, Any] = {"all": True} if all else {"identifier": identifier}
        doc = self.request("POST", CONTROL_UNLOAD, body, timeout=LOAD_TIMEOUT)
        return cast(list[str], doc["unloaded"])

    def download(
        self,
        url: str,
        *,
        sha256: str | None = None,
        size: int | None = None,
        publisher: str | None = None,
        name: str | None = None,
    ) -> DownloadJob:
        """Start a download job in the daemon (``url``: an http(s) URL of a .gguf file, or the
        bundled model's key). The answer is the job, or ``status: already_downloaded``."""
        fields = {"sha256": sha256, "size": size, "publisher": publisher, "name": name}
        body: dict[str, Any] = {"url": url, **{k: v for k, v in fields.items() if v is not None}}
        doc = self.request("POST", CONTROL_DOWNLOADS, body, timeout=DOWNLOAD_START_TIMEOUT)
        return cast(DownloadJob, doc)

    def download_status(self, job_id: str) -> DownloadJob:
        """A download job's progress; JobNotFoundError for an unknown id."""
        return cast(DownloadJob, self.request("GET", control_download_path(job_id)))

    def download_cancel(self, job_id: str) -> DownloadJob:
        """Stop a download job; its partial file stays, so the same download resumes later."""
        path = control_download_path(job_id, cancel=True)
        return cast(DownloadJob, self.request("POST", path, {}))

    def mcp_servers(self, *, tools: bool = False) -> dict[str, Any]:
        """mcp.json's servers as the daemon reads it (``path``, ``servers``), secrets redacted;
        with ``tools`` each server's tools (``tools``) or why it could not start (``error``),
        starting the servers that are not running."""
        path = CONTROL_MCP + ("?tools=1" if tools else "")
        return cast(dict[str, Any], self.request("GET", path, timeout=MCP_TOOLS_TIMEOUT))

    def remotes(self) -> list[dict[str, Any]]:
        """The remote engines as the daemon serves them now (``GET /remotes``): per remote its
        ``name``, ``models`` (keys ``NAME/<upstream id>``), ``error`` (or None) and
        ``replicas`` (``url``, ``healthy``, ``in_flight``, ``error``). Never starts a daemon:
        DaemonNotRunningError when none runs."""
        doc = self.request("GET", CONTROL_REMOTES)
        return cast(list[dict[str, Any]], doc["remotes"])

    def import_model(
        self,
        path: str,
        *,
        mode: str = "copy",
        publisher: str | None = None,
        name: str | None = None,
    ) -> ImportResult:
        """Have the daemon check the GGUF at ``path`` (absolute) and bring it into the models
        folder by ``mode`` (copy, move or symlink)."""
        fields = {"publisher": publisher, "name": name}
        body: dict[str, Any] = {"path": path, "mode": mode}
        body.update({k: v for k, v in fields.items() if v is not None})
        doc = self.request("POST", CONTROL_IMPORT, body, timeout=IMPORT_TIMEOUT)
        return cast(ImportResult, doc)


def check_version_matches(status: DaemonStatus, cli_version: str | None = None) -> None:
    """Raise DaemonVersionError when the daemon runs another version than this CLI."""
    cli_version = cli_version or lms.__version__
    if status.get("version") != cli_version:
        raise DaemonVersionError(
            f"the running daemon is version {status.get('version')} but this lms is version "
            f"{cli_version} (pid {status.get('pid')})",
            hint="restart it: lms daemon down && lms daemon up",
        )


def try_status(client: ControlClient | None = None) -> DaemonStatus | None:
    """The daemon's status without a version check, or None when no daemon runs."""
    try:
        return (client or ControlClient()).status(check_version=False)
    except DaemonNotRunningError:
        return None


# --- pid lock probing -----------------------------------------------------------------------------


def is_pid_lock_held(pid_file: Path | None = None) -> bool:
    """Whether some process (a daemon, alive or starting) holds the pid-file lock.

    Probing takes a shared lock for an instant; the file is never created here.
    """
    pid_file = pid_file or paths.pid_file()
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_for_exit(*, timeout: float = STOP_TIMEOUT, pid_file: Path | None = None) -> None:
    """Poll, with a deadline, until the daemon has released its pid lock."""
    deadline = time.monotonic() + timeout
    while is_pid_lock_held(pid_file):
        if time.monotonic() >= deadline:
            raise LmsError(
                f"the daemon did not exit within {timeout:g} s",
                hint=f"see its log: {paths.daemon_log()}",
            )
        time.sleep(POLL_INTERVAL)
