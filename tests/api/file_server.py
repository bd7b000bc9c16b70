"""FileServer: a real HTTP server on loopback, run by a test, serving GGUF bytes badly on demand.

Routes (``name`` is a key of ``files``):

* ``/files/{name}`` and ``/{owner}/{repo}/resolve/{rev}/{name}`` — the file, with ``Range``
  support (206 + ``Content-Range``) and an ``ETag``;
* ``/cut-once/{name}`` — the first request gets the full ``Content-Length`` but only half the
  body, then the connection closes; later requests behave like ``/files``;
* ``/no-range/{name}`` — ignores ``Range`` (always 200 and the whole file), cut once like above;
* ``/stall/{name}`` — sends the headers and the first KiB, then nothing until the test ends;
* ``/redirect/{name}`` — 302 to ``/files/{name}``; ``/redirect-to/{name}?url=...`` — 302 to ``url``;
* ``/missing.gguf`` — 404.

Every request is recorded (path, ``Range``, ``Host``) for the test to assert on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Seen:
    path: str
    range: str | None
    host: str | None


@dataclass
class FileServer:
    files: dict[str, bytes]
    seen: list[Seen] = field(default_factory=list)
    cut_done: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    async def start(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/files/{name}", self.serve)
        app.router.add_get("/{owner}/{repo}/resolve/{rev}/{name}", self.serve)
        app.router.add_get("/cut-once/{name}", self.cut_once)
        app.router.add_get("/no-range/{name}", self.no_range)
        app.router.add_get("/stall/{name}", self.stall)
        app.router.add_get("/redirect/{name}", self.redirect)
        app.router.add_get("/redirect-to/{name}", self.redirect_to)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths_seen(self) -> list[str]:
        return [s.path for s in self.seen]

    def _record(self, request: web.Request) -> None:
        self.seen.append(Seen(request.path, request.headers.get("Range"), request.host))

    def _file(self, request: web.Request) -> bytes:
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound()
        return self.files[name]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return self._ranged(request, self._file(request))

    def _ranged(self, request: web.Request, data: bytes) -> web.Response:
        headers = {"ETag": '"v1"', "Accept-Ranges": "bytes"}
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if wanted and (if_range is None or if_range == '"v1"'):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return web.Response(status=206, body=data[start:], headers=headers)
        return web.Response(body=data, headers=headers)

    async def _cut(self, request: web.Request, data: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"ETag": '"v1"'})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        # A cut comes after the bytes were on their way: let the client read them first (aiohttp
        # drops what it buffered once it sees the connection reset).
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.close()
        return response

    async def cut_once(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        data = self._file(request)
        if request.path not in self.cut_done:
            self.cut_done.add(request.path)
            return await self._cut(request, data)
        return self._ranged(request, data)

    async def no_range(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        data = self._file(request)
        if request.path not in self.cut_done:
            self.cut_done.add(request.path)
            return await self._cut(request, data)
        return web.Response(body=data)

    async def stall(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        data = self._file(request)
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[:1024])
        await self.release.wait()
        return response

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        raise web.HTTPFound(f"/files/{request.match_info['name']}")

    async def redirect_to(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        raise web.HTTPFound(request.query["url"])


def job_error(doc: dict[str, Any]) -> dict[str, Any]:
    error = doc.get("error")
    assert isinstance(error, dict), doc
    return error
