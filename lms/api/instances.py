"""Which instance serves a request: resolution, the token's model allowlist, JIT loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lms.api.security import TOKEN, check_model, model_filter, refuse
from lms.api.state import MANAGER
from lms.auth.permissions import Permission
from lms.errors import ModelNotAllowedError, ModelNotFoundError, PermissionDeniedError
from lms.inference import catalog
from lms.inference.manager import Instance, InstanceType, model_query


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` resolved to; ``instance`` is None when it must be loaded."""

    query: str
    key: str
    instance: Instance | None


async def target(request: web.Request, query: str, *, kind: InstanceType = "llm") -> Target:
    """Resolve ``query`` (identifier or model key) and check it against the token's allowlist.

    The allowlist applies to the resolved model key, never to the name the client chose, and
    names resolve among the models this token may use: a model or instance outside the
    allowlist answers exactly like a missing one (404 listing only the models this token may
    use). ``kind`` is the mode the route needs (``embedding`` for /v1/embeddings).
    """
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    instance = manager.find_instance(query)
    if instance is not None and not allowed(instance.model.key):
        instance = None
    if instance is not None:
        key = instance.model.key
        if instance.type != kind and query == key:
            instance = next(
                (i for i in manager.instances() if i.model.key == key and i.type == kind), None
            )
    else:
        every = await manager.models()
        models = [m for m in every if allowed(m.key)]
        try:
            key = catalog.resolve(model_query(query, kind), models).key
        except ModelNotFoundError as err:
            audit_hidden(request, query, every)
            if "ambiguous" in err.message:
                raise
            visible = [m.key for m in models]
            raise ModelNotFoundError(
                f'model "{query}" not found. Available models: {", ".join(visible) or "(none)"}',
                param="model",
                hint=err.hint,
                data={"available_models": visible},
            ) from None
        instance = next(
            (i for i in manager.instances() if i.model.key == key and i.type == kind), None
        )
    check_model(request, key)
    return Target(query, key, instance)


def audit_hidden(request: web.Request, query: str, every: list[catalog.ModelFile]) -> None:
    """Write to the audit log (only there) that ``query`` named a model or instance the token
    may not use: the client got the same 404 as for a missing one."""
    record = request.get(TOKEN)
    if record is None:
        return
    manager = request.app[MANAGER]
    try:
        found = manager.find_instance(query) is not None or bool(catalog.resolve(query, every))
    except ModelNotFoundError:
        found = False
    if found:
        refuse(request, ModelNotAllowedError(f'"{query}" is outside the allowlist'), record.id)


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
        found.instance.identifier if found.instance else found.key,
        ttl=ttl,
        context_length=context_length,
        progress=progress,
        kind=kind,
        allowed=model_filter(request),
        may_widen_context=may_widen,
    )
