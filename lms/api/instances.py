"""Which instance serves a request: resolution, the token's model allowlist, JIT loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lms.api.security import TOKEN, check_model, model_filter, refuse
from lms.api.state import MANAGER, REMOTES
from lms.auth.permissions import Permission
from lms.errors import ModelNotAllowedError, PermissionDeniedError
from lms.inference.manager import Choice, Drafts, Instance, InstanceType
from lms.remote.models import RemoteModel, unsupported


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` resolved to; ``instance`` is None when it must be loaded."""

    query: str
    choice: Choice

    @property
    def key(self) -> str:
        return self.choice.key

    @property
    def instance(self) -> Instance | None:
        return self.choice.instance


async def target(request: web.Request, query: str, *, kind: InstanceType = "llm") -> Target:
    """Resolve ``query`` (identifier or model name) and check it against the token's allowlist.

    :meth:`ModelManager.choose` decides (the same rule as a just-in-time load). The allowlist
    applies to the resolved model key, never to the name the client chose, and names resolve
    among the models this token may use: a model or instance outside the allowlist answers
    exactly like a missing one (404 listing only the models this token may use), which only
    the audit log records. ``kind`` is the mode the route needs (``embedding`` for
    /v1/embeddings).
    """
    choice = await request.app[MANAGER].choose(
        query,
        kind=kind,
        allowed=model_filter(request),
        hidden=lambda: audit_hidden(request, query),
    )
    check_model(request, choice.key)
    return Target(query, choice)


def audit_hidden(request: web.Request, query: str) -> None:
    """Write to the audit log (only there) that ``query`` named a model or instance the token
    may not use: the client got the same 404 as for a missing one."""
    record = request.get(TOKEN)
    if record is not None:
        refuse(request, ModelNotAllowedError(f'"{query}" is outside the allowlist'), record.id)


def drafts(request: web.Request) -> Drafts:
    """Draft models as the request's token may name them (its allowlist; a hidden one is
    audited and answers like a missing one)."""
    record = request.get(TOKEN)
    return request.app[MANAGER].drafts(
        None if record is None else record.allows_model,
        lambda query: audit_hidden(request, query),
    )


def remote(request: web.Request, query: str) -> RemoteModel | None:
    """The remote model ``query`` names (``NAME/<upstream id>`` of a configured remote), or
    None when it names no remote. Within a remote's names nothing falls back to local models:
    a model the remote does not list, or one outside the token's allowlist (audited), is a 404
    listing the remote models this token may use."""
    remotes = request.app.get(REMOTES)
    if remotes is None:
        return None
    found = remotes.resolve(query, model_filter(request), lambda: audit_hidden(request, query))
    if found is not None:
        check_model(request, found.key)
    return found


def refuse_remote(request: web.Request, query: str, what: str, param: str) -> None:
    """Refuse ``what`` (loading, unloading) for a remote model with 400 ``remote_unsupported``;
    a remote key the token may not see, or that does not exist, is the usual 404."""
    found = remote(request, query)
    if found is not None:
        raise unsupported(what, found.key, param=param)


async def acquire_any(
    request: web.Request,
    query: str,
    *,
    ttl: int | None = None,
    progress: Callable[[float], None] | None = None,
    resolved: Target | None = None,
) -> Instance | RemoteModel:
    """A remote model when ``query`` names one (``ttl`` does not apply: the upstream decides
    what it keeps loaded), else :func:`acquire`'s instance."""
    found = remote(request, query)
    if found is not None:
        request.app[MANAGER].check_request(ttl=ttl, context_length=None, may_widen_context=True)
        return found
    return await acquire(request, query, ttl=ttl, progress=progress, resolved=resolved)


async def acquire(
    request: web.Request,
    query: str,
    *,
    ttl: int | None = None,
    context_length: int | None = None,
    progress: Callable[[float], None] | None = None,
    resolved: Target | None = None,
    kind: InstanceType = "llm",
) -> Instance:
    """The instance for ``query``, loading it just in time when needed.

    ``kind`` is the mode the route needs; an identifier of an instance of the other mode is
    refused with 400 (see :meth:`ModelManager.acquire`). ``ttl`` and ``context_length`` are
    checked against their bounds on every request, before resolution; a ``context_length``
    above ``models.context_length`` needs the ``models`` permission (403 without it).
    """
    manager = request.app[MANAGER]
    record = request.get(TOKEN)
    may_widen = record is None or Permission.MODELS in record.permissions
    try:
        manager.check_request(ttl=ttl, context_length=context_length, may_widen_context=may_widen)
    except PermissionDeniedError as err:
        if record is not None:
            refuse(request, err, record.id)  # audited like the gate's own refusals
        raise
    found = resolved or await target(request, query, kind=kind)
    return await manager.acquire(
        query,
        chosen=found.choice,
        ttl=ttl,
        context_length=context_length,
        progress=progress,
        kind=kind,
        allowed=model_filter(request),
        may_widen_context=may_widen,
    )
