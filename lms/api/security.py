"""Token enforcement on every TCP route (README: Authentication), from the one route → permission
table.

Deny by default: with ``auth.required`` on, a route passes without a token only when the table
says PUBLIC (or it is a CORS preflight, answered earlier by the defences when CORS is on). A
matched route missing from the table is refused. The token is checked from the headers before
any handler reads the body, by the one token gate (:class:`lms.auth.gate.TokenGate`) that the
SDK sockets use too; every refusal is counted by it, keyed by the route's template.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from lms import protocol
from lms.api.middlewares import Handler
from lms.api.state import AUTH, CONFIG
from lms.auth.gate import UNMATCHED, Where
from lms.auth.permissions import PUBLIC, Access, access_for
from lms.auth.record import TokenRecord
from lms.auth.tokens import token_from_header
from lms.errors import AuthError, InternalError, LmsError
from lms.inference.generation import cache_scope

log = logging.getLogger("lms.auth")

#: The token that authorised the request (None with auth off or on a public route).
TOKEN = web.RequestKey("token", TokenRecord)


def _route_access(request: web.Request) -> Access | None:
    """The Access of the matched route, or None when no route matched (404/405 follow)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or request.match_info.http_exception is not None:
        return None
    try:
        return access_for(request.method, resource.canonical)
    except KeyError:
        log.error(
            "route %s %s is missing from the permission table", request.method, resource.canonical
        )
        raise InternalError("this route is not configured for authentication") from None


def presented_token(request: web.Request) -> str | None:
    """The token a client sent: ``Authorization: Bearer``, or ``x-api-key`` on Anthropic's
    routes."""
    header = request.headers.get("Authorization")
    if request.path in protocol.ANTHROPIC_PATHS and not header:
        return request.headers.get("x-api-key") or None
    return token_from_header(header)


@web.middleware
async def enforce(request: web.Request, handler: Handler) -> web.StreamResponse:
    cache_scope.set(None)  # a keep-alive connection runs its requests in one task
    if not request.app[CONFIG].current().auth_required:
        return await handler(request)  # auth off: any Authorization header is ignored
    access = _route_access(request)
    if access is None or access == PUBLIC:
        return await handler(request)
    gate = request.app[AUTH]
    checked = where(request)
    try:
        record = gate.admit(presented_token(request), access, checked)
    except AuthError:
        delay = gate.refusal_delay(checked)
        if delay:  # a flood of refusals from this network: its connections wait
            await asyncio.sleep(delay)
        raise
    request[TOKEN] = record
    cache_scope.set(record.id)  # cached prompt prefixes are shared within one token only
    return await handler(request)


def where(request: web.Request) -> Where:
    """The request as refusals are counted: its method, its route's template, its peer."""
    resource = request.match_info.route.resource
    matched = resource is not None and request.match_info.http_exception is None
    route = resource.canonical if matched and resource is not None else UNMATCHED
    return Where(request.method, route, request.remote)


def refuse(request: web.Request, err: LmsError, token_id: str | None = None) -> None:
    """Count a refused request in the audit log (never the token itself)."""
    request.app[AUTH].refuse(where(request), err, token_id)


def check_model(request: web.Request, model_key: str) -> None:
    """Refuse a model outside the token's allowlist (matched against the resolved key)."""
    record = request.get(TOKEN)
    if record is None:
        return
    request.app[AUTH].check_model(record, _access(request), model_key, where(request))


def model_filter(request: web.Request) -> Callable[[str], bool]:
    """Which model keys the request's token may see and use."""
    record: TokenRecord | None = request.get(TOKEN)
    if record is None:
        return lambda key: True
    return record.allows_model


def _access(request: web.Request) -> Access:
    access = _route_access(request)
    assert access is not None
    return access


def record_generation(
    request: web.Request, prompt_tokens: int | None, completion_tokens: int | None
) -> None:
    """Count a finished generation's tokens against the token that asked for it."""
    record: TokenRecord | None = request.get(TOKEN)
    request.app[AUTH].record_tokens(record, prompt_tokens, completion_tokens)
