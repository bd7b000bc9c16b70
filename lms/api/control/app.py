"""The control-plane application served on the Unix socket (``lms`` ↔ daemon).

Only the owning user may talk to it: the socket is 0600 in a 0700 directory, and every
connection's peer uid is checked with ``SO_PEERCRED``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from lms import protocol
from lms.api import bodies, middlewares
from lms.api.instances import refuse_remote
from lms.api.native.model_admin import start_download
from lms.api.state import DOWNLOADS, MANAGER, MCP, REMOTES
from lms.download import importer
from lms.download.downloader import DownloadManager
from lms.errors import (
    ForbiddenRequestError,
    InternalError,
    InvalidParameterError,
    LmsError,
    MethodNotAllowedError,
    RouteNotFoundError,
)
from lms.mcp.sessions import McpServers
from lms.peercred import peer_uid
from lms.protocol import DaemonStatus, ImportResult, ModelEntry, ServerStatus
from lms.remote.registry import Remotes

log = logging.getLogger("lms.control")


class Controller(Protocol):
    """What the daemon offers the control plane."""

    def daemon_status(self) -> DaemonStatus: ...

    def server_status(self) -> ServerStatus: ...

    async def start_server(
        self,
        port: int | None,
        bind: str | None,
        cors: bool | None,
        tls: tuple[str, str] | None = None,
    ) -> ServerStatus: ...

    def auth_status(self) -> dict[str, Any]: ...

    async def stop_server(self) -> ServerStatus: ...

    def request_shutdown(self) -> None: ...


CONTROLLER = web.AppKey("controller", Controller)


@web.middleware
async def control_errors(request: web.Request, handler: middlewares.Handler) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or peer_uid(sock) != os.geteuid():
        err: LmsError = ForbiddenRequestError("the control socket serves its owner only")
        return web.json_response(protocol.control_error_body(err), status=err.status)
    try:
        return await handler(request)
    except LmsError as exc:
        err = exc
    except web.HTTPException as exc:
        if exc.status == 404:
            err = RouteNotFoundError(f"unknown control route {request.path}")
        elif exc.status == 405:
            err = MethodNotAllowedError(f"{request.method} not allowed on {request.path}")
        else:
            raise
    except Exception:
        log.exception("control request %s %s failed", request.method, request.path)
        err = InternalError("internal error in the daemon; see its log")
    return web.json_response(protocol.control_error_body(err), status=err.status)


routes = web.RouteTableDef()


async def _optional_json(request: web.Request) -> dict[str, Any]:
    return await bodies.read_json(request) if request.can_read_body else {}


@routes.get(protocol.CONTROL_STATUS)
async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].daemon_status())


@routes.post(protocol.CONTROL_SHUTDOWN)
async def shutdown(request: web.Request) -> web.Response:
    request.app[CONTROLLER].request_shutdown()
    return web.json_response({"ok": True})


@routes.get(protocol.CONTROL_SERVER)
async def server_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].server_status())


@routes.post(protocol.CONTROL_SERVER_START)
async def server_start(request: web.Request) -> web.Response:
    body = await _optional_json(request)
    cert, key = bodies.get(body, "tls_cert", str), bodies.get(body, "tls_key", str)
    if bool(cert) != bool(key):
        raise InvalidParameterError("TLS needs both a certificate and a key", param="tls_cert")
    result = await request.app[CONTROLLER].start_server(
        bodies.get(body, "port", int),
        bodies.get(body, "bind", str),
        bodies.get(body, "cors", bool),
        (cert, key) if cert and key else None,
    )
    return web.json_response(result)


@routes.post(protocol.CONTROL_SERVER_STOP)
async def server_stop(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CONTROLLER].stop_server())


@routes.get(protocol.CONTROL_AUTH)
async def auth_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].auth_status())


@routes.get(protocol.CONTROL_MODELS)
async def models(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    entries: list[ModelEntry] = []
    for model in await manager.models():
        entries.append(
            {
                "key": model.key,
                "type": model.type,
                "publisher": model.publisher,
                "display_name": model.display_name,
                "architecture": model.architecture,
                "params_string": model.params_string,
                "quantization": model.quantization,
                "bits_per_weight": model.bits_per_weight,
                "size_bytes": model.size_bytes,
                "path": str(model.path),
                "relative_path": model.relative_path,
                "format": "gguf",
                "max_context_length": model.max_context_length,
                "trained_for_tool_use": model.trained_for_tool_use,
                "vision": model.vision,
                "loaded_instances": manager.loaded_identifiers(model.key),
            }
        )
    remotes = request.app.get(REMOTES)
    for remote in remotes.models() if remotes is not None else []:
        entries.append(
            {
                "key": remote.key,
                "type": "llm",
                "publisher": remote.model.remote,
                "display_name": remote.model.upstream_id,
                "architecture": None,
                "params_string": None,
                "quantization": None,
                "bits_per_weight": None,
                "size_bytes": 0,
                "path": "",
                "relative_path": "",
                "format": "remote",
                "max_context_length": remote.model.context_length,
                "trained_for_tool_use": True,
                "vision": False,
                "loaded_instances": [],
                "remote": remote.model.remote,
            }
        )
    return web.json_response({"models": entries})


@routes.get(protocol.CONTROL_REMOTES)
async def remotes_status(request: web.Request) -> web.Response:
    remotes = request.app.get(REMOTES)
    return web.json_response({"remotes": remotes.status() if remotes is not None else []})


@routes.get(protocol.CONTROL_INSTANCES)
async def instances(request: web.Request) -> web.Response:
    return web.json_response({"instances": [i.entry() for i in request.app[MANAGER].instances()]})


@routes.post(protocol.CONTROL_LOAD)
async def load(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    refuse_remote(request, bodies.require(body, "model", str), "Loading", "model")
    instance = await request.app[MANAGER].load(
        bodies.require(body, "model", str),
        context_length=bodies.get(body, "context_length", int),
        ttl=bodies.get(body, "ttl", int),
        identifier=bodies.get(body, "identifier", str),
        embedding=bodies.get(body, "embedding", bool),
        parallel=bodies.get(body, "parallel", int),
        draft_model=bodies.draft_model(body),
    )
    return web.json_response(instance.entry())


@routes.post(protocol.CONTROL_UNLOAD)
async def unload(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    manager = request.app[MANAGER]
    identifier = bodies.get(body, "identifier", str)
    everything = bodies.get(body, "all", bool, False)
    if bool(identifier) == bool(everything):
        raise InvalidParameterError("give either 'identifier' or 'all': true", param="identifier")
    if everything:
        return web.json_response({"unloaded": await manager.unload_all()})
    assert identifier is not None
    refuse_remote(request, identifier, "Unloading", "identifier")
    await manager.unload(identifier)
    return web.json_response({"unloaded": [identifier]})


@routes.post(protocol.CONTROL_IMPORT)
async def import_model(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    source = Path(bodies.require(body, "path", str))
    mode = bodies.get(body, "mode", str, "copy")
    if mode not in importer.MODES:
        raise InvalidParameterError(
            f"'mode' must be one of {', '.join(importer.MODES)}", param="mode"
        )
    downloads = request.app[DOWNLOADS]
    target = await asyncio.to_thread(
        importer.import_file,
        source,
        downloads.models_dir(),
        mode=mode,
        publisher=bodies.get(body, "publisher", str),
        name=bodies.get(body, "name", str),
    )
    key = await downloads.key_of(target)
    result: ImportResult = {
        "model_key": key or f"{target.parent.parent.name}/{target.parent.name}",
        "path": str(target),
        "source": str(source),
        "mode": mode,
        "size_bytes": target.stat().st_size,
    }
    return web.json_response(result)


@routes.post(protocol.CONTROL_DOWNLOADS)
async def download(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    outcome = await start_download(request, bodies.require(body, "url", str), body)
    return web.json_response(outcome.to_json(include_path=True))


@routes.get(protocol.CONTROL_DOWNLOAD)
async def download_status(request: web.Request) -> web.Response:
    job = request.app[DOWNLOADS].get(request.match_info["job_id"])
    return web.json_response(job.to_json(include_path=True))


@routes.post(protocol.CONTROL_DOWNLOAD_CANCEL)
async def download_cancel(request: web.Request) -> web.Response:
    job = await request.app[DOWNLOADS].cancel(request.match_info["job_id"])
    return web.json_response(job.to_json(include_path=True))


@routes.get(protocol.CONTROL_MCP)
async def mcp_servers(request: web.Request) -> web.Response:
    """mcp.json's servers (secrets redacted); with ``?tools=1`` each server's tools, starting
    the servers that are not running (an error per server that cannot start)."""
    with_tools = request.query.get("tools", "") in ("1", "true")
    servers = await request.app[MCP].describe(with_tools=with_tools)
    return web.json_response({"path": str(request.app[MCP].config.path), "servers": servers})


def build_control_app(
    controller: Controller,
    manager: Any,
    downloads: DownloadManager,
    mcp: McpServers | None = None,
    remotes: Remotes | None = None,
) -> web.Application:
    app = web.Application(middlewares=[control_errors], client_max_size=1024 * 1024)
    if remotes is not None:
        app[REMOTES] = remotes
    app[CONTROLLER] = controller
    app[MANAGER] = manager
    app[DOWNLOADS] = downloads
    if mcp is None:
        mcp = McpServers()
        app.on_cleanup.append(lambda _app: mcp.close())
    app[MCP] = mcp
    app.add_routes(routes)
    return app
