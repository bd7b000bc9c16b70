"""The LM Studio SDK's WebSocket protocol, served beside the HTTP API on the same port.

``setup(app)`` adds the five socket paths (``/llm``, ``/embedding``, ``/system``, ``/files``,
``/repository``). Their upgrade is public; the client authenticates in-band with its first frame
(:mod:`.auth`), then calls endpoints over the socket (:mod:`.session`). Which endpoint needs which
permission is :data:`lms.auth.permissions.SDK_ACCESS`; the handlers are in :mod:`.models` (shared
by ``/llm`` and ``/embedding``), :mod:`.llm`, :mod:`.embedding`, :mod:`.system`, :mod:`.files`
and :mod:`.repository`. The browser defences of the TCP app (Host, Origin) apply to the upgrade
like to any request.
"""

from __future__ import annotations

from aiohttp import web

from lms.api.sdk import embedding, files, llm, models, repository, system
from lms.api.sdk.calls import Endpoint
from lms.api.sdk.session import SOCKETS, OpenSockets, close_all, serve
from lms.auth.permissions import SDK_NAMESPACES

#: (namespace, endpoint) → the handler of every SDK endpoint lms serves.
ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    **models.ENDPOINTS,
    **llm.ENDPOINTS,
    **embedding.ENDPOINTS,
    **system.ENDPOINTS,
    **files.ENDPOINTS,
    **repository.ENDPOINTS,
}


async def _socket(request: web.Request) -> web.StreamResponse:
    return await serve(request, ENDPOINTS)


def setup(app: web.Application) -> None:
    """Serve the SDK sockets on ``app`` and close them when it shuts down."""
    app[SOCKETS] = OpenSockets()
    app[files.FILES] = files.FileStore()
    app.router.add_routes([web.get(f"/{namespace}", _socket) for namespace in SDK_NAMESPACES])
    app.on_shutdown.append(close_all)
