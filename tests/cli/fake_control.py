"""FakeControlServer: canned JSON answers on a Unix socket, for tests of the client's plumbing.

Never a stand-in for the real daemon's behaviour: it answers what a test tells it to.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lms

Answer = tuple[int, Any]
Handler = Callable[[Any], Answer]


def server_doc(*, running: bool = False, port: int = 1234, auth: bool = False) -> dict[str, Any]:
    return {
        "running": running,
        "host": "127.0.0.1" if running else None,
        "port": port if running else None,
        "url": f"http://127.0.0.1:{port}" if running else None,
        "cors": False,
        "auth_required": auth,
        "tls": False,
    }


def instance_doc(identifier: str, *, model_key: str | None = None, **extra: Any) -> dict[str, Any]:
    now = time.time()
    doc: dict[str, Any] = {
        "identifier": identifier,
        "model_key": model_key or identifier,
        "type": "llm",
        "status": "idle",
        "queued": 0,
        "context_length": 4096,
        "parallel": 1,
        "ttl_seconds": 3600,
        "ttl_left_seconds": 3300.0,
        "jit": False,
        "loaded_at": now,
        "last_used_at": now,
        "load_time_seconds": 0.5,
        "size_bytes": 253_000_000,
    }
    doc.update(extra)
    return doc


def remote_doc(
    name: str,
    urls: list[str],
    *,
    models: tuple[str, ...] = (),
    error: str | None = None,
    healthy: bool = True,
) -> dict[str, Any]:
    """One entry of ``GET /remotes``: models keyed ``NAME/<id>``, one replica per URL."""
    replicas = [
        {
            "url": url,
            "healthy": healthy,
            "in_flight": 0,
            "error": None if healthy else "connection refused",
        }
        for url in urls
    ]
    return {
        "name": name,
        "models": [f"{name}/{model}" for model in models],
        "error": error,
        "replicas": replicas,
    }


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    #: Tracebacks of handlers that raised: kept for :meth:`FakeControlServer.stop` instead of
    #: printed to stderr (where they would be noise in another test's output).
    errors: list[str]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client gave up on its answer (e.g. a CLI that timed out): its test's
            # assertions see that; nothing went wrong in the fake
        self.errors.append(traceback.format_exc())


class FakeControlServer:
    """Answers ``(method, path)`` with the status and JSON body a test set with :meth:`route`."""

    def __init__(self, socket_path: Path, *, version: str = lms.__version__) -> None:
        self.socket_path = socket_path
        self.requests: list[tuple[str, str, Any]] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        # Called once the answer to (method, path) is written, e.g. to exit after /shutdown.
        self.after: dict[tuple[str, str], Callable[[], None]] = {}
        self.server = server_doc()
        self.version = version
        self.started_at = time.time()
        self.route("GET", "/status", lambda _body: (200, self.status_doc()))
        self.route("GET", "/server", lambda _body: (200, self.server))
        # GET /remotes: the daemon's state of each remote engine (lms remote list).
        self.remotes: list[dict[str, Any]] = []
        self.route("GET", "/remotes", lambda _body: (200, {"remotes": self.remotes}))
        self._httpd: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def status_doc(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            "started_at": self.started_at,
            "uptime_seconds": 3725.0,
            "server": self.server,
        }

    def route(self, method: str, path: str, answer: Handler | Answer) -> None:
        if callable(answer):
            self.routes[(method, path)] = answer
            return
        fixed: Answer = answer

        def canned(_body: Any) -> Answer:
            return fixed

        self.routes[(method, path)] = canned

    def error(
        self, method: str, path: str, status: int, code: str, message: str, **kw: Any
    ) -> None:
        self.route(method, path, (status, {"error": {"code": code, "message": message, **kw}}))

    def start(self) -> FakeControlServer:
        fake = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append((self.command, self.path, body))
                handler = fake.routes.get((self.command, self.path))
                if handler is None:
                    status, doc = 404, {"error": {"code": "route_not_found", "message": "no"}}
                else:
                    status, doc = handler(body)
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                after = fake.after.get((self.command, self.path))
                if after is not None:
                    after()

            do_GET = _answer
            do_POST = _answer

        self._httpd = _UnixHTTPServer(str(self.socket_path), RequestHandler)
        self._httpd.errors = []
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; raises if a handler raised (a broken test route, not a client's)."""
        errors: list[str] = []
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            errors = self._httpd.errors
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.socket_path.unlink(missing_ok=True)
        if errors:
            raise AssertionError("the fake control server's handler raised:\n" + errors[0])
