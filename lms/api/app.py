"""The TCP API application: every client-facing route behind the middlewares."""

from __future__ import annotations

from aiohttp import web

from lms import protocol
from lms.api import middlewares, native, native_chat, openai, responses, security
from lms.api.state import AUTH, CHATS, CONFIG, LISTENER, MANAGER, AuthGuard, Listener
from lms.chats import ChatStore
from lms.config import ConfigWatcher
from lms.inference.manager import ModelManager

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
) -> web.Application:
    """The aiohttp application served on TCP."""
    app = web.Application(
        middlewares=[middlewares.errors, middlewares.defences, security.enforce],
        client_max_size=protocol.MAX_BODY_BYTES,
    )
    app[MANAGER] = manager
    app[CONFIG] = config
    app[LISTENER] = listener
    app[AUTH] = guard or AuthGuard()
    app[CHATS] = chats or ChatStore()
    app.add_routes(routes)
    app.add_routes(openai.routes)
    app.add_routes(native.routes)
    app.add_routes(native_chat.routes)
    app.add_routes(responses.routes)
    app.on_response_prepare.append(middlewares.add_cors_headers)
    return app
