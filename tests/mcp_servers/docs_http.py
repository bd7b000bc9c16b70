"""The test documentation server over streamable HTTP on loopback.

``python docs_http.py [--header NAME=VALUE]`` binds 127.0.0.1 on a free port, prints
``listening on http://127.0.0.1:PORT/mcp`` once it accepts connections, and serves until killed.
With ``--header``, a request without that header gets 401 (to see that headers reach it).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).parent))

from docs import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--header", default=None)
    args = parser.parse_args()
    app: Any = build("docs").streamable_http_app()
    if args.header:
        name, value = args.header.split("=", 1)
        app = _RequireHeader(app, name.lower().encode(), value.encode())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)
        await task

    asyncio.run(serve())


class _RequireHeader:
    def __init__(self, app: Any, name: bytes, value: bytes) -> None:
        self.app, self.name, self.value = app, name, value

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (self.name, self.value) not in scope["headers"]:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"missing header"})
            return
        await self.app(scope, receive, send)


if __name__ == "__main__":
    main()
