"""THE outbound rule (README: Settings), for every connection the daemon makes on a client's behalf.

Downloads use it now, per-request MCP servers later. For each URL, and again for every redirect
hop:

1. only ``http`` and ``https``, a host, no user name or password in the URL, and never a
   redirect from ``https`` down to ``http``;
2. the host is resolved **once** (``getaddrinfo`` in the loop's executor, off the event loop);
3. every address it resolves to is checked: loopback, private, link-local, shared (CGNAT),
   reserved, multicast and unspecified addresses are refused — also when wrapped in IPv6
   (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, Teredo) — unless the policy
   allows private addresses; multicast and unspecified addresses are refused even then (no
   server lives there);
4. the connection goes to the addresses that were checked: aiohttp asks a resolver pinned to
   them, never the system's DNS, so an answer that changes between check and connect (DNS
   rebinding) cannot redirect it. The URL is unchanged, so the ``Host`` header and TLS SNI and
   certificate checks use the original name.

Redirects are followed here, by hand and bounded, so that each hop passes the same check.
Environment proxies are ignored (a proxy would connect somewhere unchecked).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from lms.errors import InvalidParameterError, UpstreamError, UrlNotAllowedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port) -> IP address strings``; the default asks the system's resolver.
Resolve = Callable[[str, int], Awaitable[list[str]]]

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Refused even when private addresses are allowed: no server can be reached there.
_ALWAYS_REFUSED = frozenset({"unspecified", "multicast"})


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, through ``getaddrinfo`` in the loop's executor."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UpstreamError(f"cannot resolve the host {host!r}: {exc.strerror}") from None
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone index
        if address not in found:
            found.append(address)
    return found


def refusal_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why the outbound rule refuses ``address`` (``"loopback"``, ``"private"``, ...), or None."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 is judged as the IPv4 address it reaches.
        if address.ipv4_mapped is not None:
            candidates = [address.ipv4_mapped]
        elif address in _NAT64:
            candidates = [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
        else:
            if address.sixtofour is not None:
                candidates.append(address.sixtofour)
            if address.teredo is not None:
                candidates.extend(address.teredo)
    for candidate in candidates:
        reason = _reason(candidate)
        if reason is not None and (not allow_private or reason in _ALWAYS_REFUSED):
            return reason
    return None


def _reason(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """What the daemon may connect to for a client.

    ``allow_private`` comes from a setting (``models.allow_private_urls`` for downloads) and
    ``setting_hint`` names it in refusals. ``exempt`` lists addresses treated as public: a seam
    for tests, whose servers all live on loopback; the daemon never sets it. ``resolve`` is the
    name resolver (tests inject one to play DNS).
    """

    allow_private: bool = False
    setting_hint: str | None = None
    exempt: frozenset[IPAddress] = frozenset()
    resolve: Resolve = system_resolve
    max_redirects: int = MAX_REDIRECTS

    def refusal(self, address: IPAddress) -> str | None:
        if address in self.exempt:
            return None
        return refusal_reason(address, allow_private=self.allow_private)


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the rule, with the addresses its connection may use."""

    url: URL
    host: str
    port: int
    addresses: tuple[str, ...]


def parse_url(text: str | URL, *, param: str = "url") -> URL:
    """``text`` as an absolute http(s) URL with a host and no credentials (else a 400)."""
    try:
        url = text if isinstance(text, URL) else URL(text.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidParameterError(f"'{param}' is not a valid URL: {exc}", param=param) from None
    if url.scheme not in ("http", "https"):
        shown = f"{url.scheme}:" if url.scheme else "no scheme"
        raise InvalidParameterError(
            f"'{param}' must be an http:// or https:// URL (got {shown})", param=param
        )
    if not url.raw_host:
        raise InvalidParameterError(f"'{param}' has no host: {text}", param=param)
    if url.user is not None or url.password is not None:
        raise InvalidParameterError(
            f"'{param}' must not carry a user name or password", param=param
        )
    return url


def shown_url(url: URL) -> str:
    """A URL for messages and logs: without its query string, which may hold a signature."""
    return str(url.with_query(None).with_fragment(None))


async def check_url(url: str | URL, policy: OutboundPolicy, *, param: str = "url") -> CheckedUrl:
    """Resolve ``url``'s host once and check every address; raises UrlNotAllowedError (403)
    naming the URL and the reason, UpstreamError when the name does not resolve."""
    parsed = parse_url(url, param=param)
    host = parsed.raw_host
    assert host is not None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        addresses = await policy.resolve(host, port)
        if not addresses:
            raise UpstreamError(f"the host {host!r} of {shown_url(parsed)} has no address")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        reason = policy.refusal(ip)
        if reason is not None:
            via = "is" if literal is not None else f"resolves to {address}, which is"
            raise UrlNotAllowedError(
                f"refusing to connect to {shown_url(parsed)}: {host} {via} a {reason} address",
                hint=policy.setting_hint if reason not in _ALWAYS_REFUSED else None,
                param=param,
            )
    return CheckedUrl(parsed, host, port, tuple(addresses))


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _PinnedResolver(AbstractResolver):
    """aiohttp's resolver: answers only for names checked by :func:`check_url`, with the
    addresses that were checked. An unchecked name cannot be connected to."""

    def __init__(self) -> None:
        self._pins: dict[str, tuple[str, ...]] = {}

    def pin(self, checked: CheckedUrl) -> None:
        self._pins[checked.host] = checked.addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._pins.get(host)
        if addresses is None:
            raise OSError(f"{host} was not checked by the outbound rule")
        results: list[ResolveResult] = []
        for address in addresses:
            af = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, af):
                continue
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": af,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        if not results:
            raise OSError(f"{host} has no checked address of family {family!r}")
        return results

    async def close(self) -> None:
        self._pins.clear()


@dataclass
class OutboundSession:
    """An aiohttp client session bound to the outbound rule. Use as ``async with``.

    ``timeout`` applies to each hop; ``sock_read`` in it is the stall timeout of a body.
    Responses are not decompressed (``Accept-Encoding: identity`` is sent): a download's bytes
    and its ``Content-Length`` stay the file's.
    """

    policy: OutboundPolicy
    timeout: aiohttp.ClientTimeout = field(
        default_factory=lambda: aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    )
    read_bufsize: int = 1 << 20
    _session: aiohttp.ClientSession | None = None
    _resolver: _PinnedResolver | None = None

    async def __aenter__(self) -> OutboundSession:
        self._resolver = _PinnedResolver()
        connector = aiohttp.TCPConnector(resolver=self._resolver, use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            trust_env=False,
            auto_decompress=False,
            read_bufsize=self.read_bufsize,
            headers={"Accept-Encoding": "identity", "User-Agent": "lms"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    @contextlib.asynccontextmanager
    async def get(
        self, url: str | URL | CheckedUrl, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``url``, following redirects only to URLs that pass the rule; yields the final
        response (any status but a redirect). A :class:`CheckedUrl` is connected to as it was
        checked. Raises UrlNotAllowedError for a refused hop, UpstreamError for an unreachable
        server or too many redirects."""
        session, resolver = self._session, self._resolver
        if session is None or resolver is None:
            raise RuntimeError("use OutboundSession as 'async with'")
        checked = url if isinstance(url, CheckedUrl) else await check_url(url, self.policy)
        for _hop in range(self.policy.max_redirects + 1):
            resolver.pin(checked)
            response = await self._send(session, checked, headers)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                try:
                    yield response
                finally:
                    response.release()
                return
            response.release()
            checked = await self._next_hop(checked.url, location)
        first = url.url if isinstance(url, CheckedUrl) else parse_url(url)
        raise UpstreamError(
            f"{shown_url(first)} redirects more than {self.policy.max_redirects} times"
        )

    async def _send(
        self,
        session: aiohttp.ClientSession,
        checked: CheckedUrl,
        headers: Mapping[str, str] | None,
    ) -> aiohttp.ClientResponse:
        try:
            return await session.get(checked.url, headers=headers, allow_redirects=False)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamError(
                f"the certificate of {checked.host}:{checked.port} is not trusted for"
                f" {shown_url(checked.url)}: {exc.certificate_error}",
                hint="a private CA can be trusted through SSL_CERT_FILE in the daemon's"
                " environment (restart it with: lms daemon stop)",
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                f"cannot connect to {checked.host}:{checked.port} for {shown_url(checked.url)}:"
                f" {exc.os_error.strerror or exc.os_error}"
            ) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(f"{shown_url(checked.url)} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"request to {shown_url(checked.url)} failed: {exc}") from exc

    async def _next_hop(self, current: URL, location: str) -> CheckedUrl:
        try:
            target = current.join(URL(location))
        except (ValueError, TypeError):
            raise UrlNotAllowedError(
                f"{shown_url(current)} redirects to an invalid URL: {location[:200]!r}"
            ) from None
        if current.scheme == "https" and target.scheme == "http":
            raise UrlNotAllowedError(
                f"{shown_url(current)} redirects from https down to http"
                f" ({shown_url(target)}): refused"
            )
        try:
            return await check_url(target, self.policy, param="redirect")
        except (InvalidParameterError, UrlNotAllowedError) as exc:
            why = exc.message.removeprefix(f"refusing to connect to {shown_url(target)}: ")
            raise UrlNotAllowedError(
                f"{shown_url(current)} redirects to {shown_url(target)}, which is refused: {why}",
                hint=exc.hint,
            ) from None
