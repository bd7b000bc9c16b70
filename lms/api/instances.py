"""Which instance serves a request: resolution, the token's model allowlist, JIT loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from lms.api.security import check_model, model_filter
from lms.api.state import MANAGER
from lms.errors import ModelNotFoundError
from lms.inference import catalog
from lms.inference.manager import Instance


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` resolved to; ``instance`` is None when it must be loaded."""

    query: str
    key: str
    instance: Instance | None


async def target(request: web.Request, query: str) -> Target:
    """Resolve ``query`` (identifier or model key) and check it against the token's allowlist.

    The allowlist applies to the resolved model key, never to the name the client chose. An
    unknown model gets 404 listing only the models this token may use.
    """
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    instance = manager.find_instance(query)
    if instance is not None:
        key = instance.model.key
    else:
        models = await manager.models()
        try:
            key = catalog.resolve(query, models).key
        except ModelNotFoundError as err:
            visible = [m.key for m in models if allowed(m.key)]
            raise ModelNotFoundError(
                f'model "{query}" not found. Available models: {", ".join(visible) or "(none)"}',
                param="model",
                hint=err.hint,
            ) from None
        instance = next((i for i in manager.instances() if i.model.key == key), None)
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
) -> Instance:
    """The instance for ``query``, loading it just in time when needed."""
    found = resolved or await target(request, query)
    return await request.app[MANAGER].acquire(
        found.instance.identifier if found.instance else found.key,
        ttl=ttl,
        context_length=context_length,
        progress=progress,
    )
