"""HTTP clients for remote MCP servers (the SDK's streamable-HTTP transport runs on httpx2).

A per-request server goes through THE outbound rule of :mod:`lms.download.outbound`: its URL is
checked there (:func:`~lms.download.outbound.check_url` resolves the name once and refuses
private addresses unless ``mcp.allow_private_urls``), and the client built here connects only to
the addresses that were checked — its network backend is pinned to them, so a DNS answer that
changes after the check cannot move the connection. The URL is unchanged, so the ``Host``
header, SNI and the certificate check use the original name. The SDK follows a redirect only
within the endpoint's origin (same host and port, or http→https on the same host), never down
from https to http, so every hop it follows lands on the checked addresses; environment proxies
are ignored (a proxy would connect somewhere unchecked).

An mcp.json server is the owner's own configuration: no address check, proxies honoured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpcore2
import httpx2

from lms.download.outbound import CheckedUrl

#: connect/write/pool seconds; reads wait longer (a server may hold an event stream open).
_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


@dataclass
class HttpStatus:
    """The last HTTP error status a server answered (the SDK reports only "an error response";
    a 401 or 404 says what to fix)."""

    code: int | None = None

    async def __call__(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.code = response.status_code


def owner_client(headers: Mapping[str, str], status: HttpStatus) -> httpx2.AsyncClient:
    """The client of a remote server from mcp.json."""
    return httpx2.AsyncClient(
        headers=dict(headers), timeout=_TIMEOUT, event_hooks={"response": [status]}
    )


def pinned_client(
    checked: CheckedUrl, headers: Mapping[str, str], status: HttpStatus
) -> httpx2.AsyncClient:
    """The client of a per-request server: connects to ``checked.addresses`` only."""
    return httpx2.AsyncClient(
        headers=dict(headers),
        timeout=_TIMEOUT,
        transport=_PinnedTransport(checked),
        trust_env=False,
        event_hooks={"response": [status]},
    )


class _PinnedTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, checked: CheckedUrl) -> None:
        super().__init__(trust_env=False)
        # httpx2 takes no network backend: the pool it built is replaced by the same pool over
        # the pinned backend (same TLS context as httpx2 builds by default).
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            network_backend=_PinnedBackend(checked),
        )


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Answers a connection to the checked host with its checked addresses, and refuses any
    other host."""

    def __init__(self, checked: CheckedUrl) -> None:
        self._checked = checked
        self._backend = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        if _bare(host) != _bare(self._checked.host):
            raise httpcore2.ConnectError(f"{host} was not checked by the outbound rule")
        failure: Exception | None = None
        for address in self._checked.addresses:
            try:
                return await self._backend.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # check_url never passes a host without addresses
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("remote MCP servers are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def _bare(host: str) -> str:
    return host.strip("[]").lower()
