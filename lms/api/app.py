"""The TCP API application: every client-facing route behind the middlewares."""

from __future__ import annotations

from aiohttp import web

from lms import protocol
from lms.api import middlewares, requestlog, sdk, security
from lms.api.anthropic import messages
from lms.api.native import chat, model_admin, models
from lms.api.openai import completions, embeddings, responses
from lms.api.state import (
    AUTH,
    CHATS,
    CONFIG,
    DOWNLOADS,
    LISTENER,
    LOGS,
    MANAGER,
    MCP,
    REMOTES,
    AuthGuard,
    Listener,
)
from lms.chats import ChatStore
from lms.config import ConfigWatcher
from lms.download.downloader import DownloadManager
from lms.inference.manager import ModelManager
from lms.logstream import LogHub
from lms.mcp.sessions import McpServers
from lms.remote.registry import Remotes, publishers_in

routes = web.RouteTableDef()


@routes.get(protocol.API_HEALTH)
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get(protocol.API_GREETING)
async def greeting(request: web.Request) -> web.Response:
    return web.json_response({"lmstudio": True})


def build_api_app(
    manager: ModelManager,
    config: ConfigWatcher,
    listener: Listener,
    guard: AuthGuard | None = None,
    chats: ChatStore | None = None,
    downloads: DownloadManager | None = None,
    logs: LogHub | None = None,
    mcp: McpServers | None = None,
    remotes: Remotes | None = None,
) -> web.Application:
    """The aiohttp application served on TCP.

    ``downloads`` is the daemon's (shared with the control plane); without one the app makes
    its own, over the models folder, and cancels its jobs on cleanup. ``mcp`` likewise: the
    daemon's MCP servers outlive a stopped API server; an app's own stop on its cleanup.
    ``remotes`` likewise (an app's own start with it and stop on its cleanup).
    """
    app = web.Application(
        middlewares=[
            requestlog.publish_requests,
            middlewares.errors,
            middlewares.defences,
            security.enforce,
        ],
        client_max_size=protocol.MAX_BODY_BYTES,
    )
    app[MANAGER] = manager
    app[CONFIG] = config
    app[LISTENER] = listener
    app[AUTH] = guard or AuthGuard()
    app[CHATS] = chats or ChatStore()
    app[LOGS] = logs or LogHub()
    if downloads is None:
        downloads = DownloadManager(config.current)
        app.on_cleanup.append(lambda _app: downloads.close())
    app[DOWNLOADS] = downloads
    if mcp is None:
        mcp = McpServers(
            timeout=lambda: config.current().mcp_timeout,
            idle_timeout=lambda: config.current().mcp_idle_timeout,
        )
        app.on_cleanup.append(lambda _app: mcp.close())
    app[MCP] = mcp
    if remotes is None:
        own = Remotes(config.current, lambda: publishers_in(manager.models_dir()))
        app.on_startup.append(lambda _app: own.start())
        app.on_cleanup.append(lambda _app: own.close())
        remotes = own
    app[REMOTES] = remotes
    app.add_routes(routes)
    app.add_routes(completions.routes)
    app.add_routes(models.routes)
    app.add_routes(chat.routes)
    app.add_routes(responses.routes)
    app.add_routes(model_admin.routes)
    app.add_routes(embeddings.routes)
    app.add_routes(messages.routes)
    sdk.setup(app)
    app.on_response_prepare.append(middlewares.add_cors_headers)
    return app
