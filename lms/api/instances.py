"""Which instance serves a request: resolution, the token's model allowlist, JIT loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lms.api.security import check_model, model_filter
from lms.api.state import MANAGER
from lms.errors import ModelNotFoundError
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

    The allowlist applies to the resolved model key, never to the name the client chose. An
    unknown model gets 404 listing only the models this token may use. ``kind`` is the mode the
    route needs (``embedding`` for /v1/embeddings).
    """
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    instance = manager.find_instance(query)
    if instance is not None:
        key = instance.model.key
        if instance.type != kind and query == key:
            instance = next(
                (i for i in manager.instances() if i.model.key == key and i.type == kind), None
            )
    else:
        models = await manager.models()
        try:
            key = catalog.resolve(model_query(query, kind), models).key
        except ModelNotFoundError as err:
            visible = [m.key for m in models if allowed(m.key)]
            raise ModelNotFoundError(
                f'model "{query}" not found. Available models: {", ".join(visible) or "(none)"}',
                param="model",
                hint=err.hint,
            ) from None
        instance = next(
            (i for i in manager.instances() if i.model.key == key and i.type == kind), None
        )
    check_model(request, key)
    return Target(query, key, instance)


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
    refused with 400 (see :meth:`ModelManager.acquire`).
    """
    found = resolved or await target(request, query, kind=kind)
    return await request.app[MANAGER].acquire(
        found.instance.identifier if found.instance else found.key,
        ttl=ttl,
        context_length=context_length,
        progress=progress,
        kind=kind,
    )
