"""Which instance serves a request: resolution, the token's model allowlist, JIT loading."""

from __future__ import annotations

from aiohttp import web

from lms.api.security import check_model, model_filter
from lms.api.state import MANAGER
from lms.errors import ModelNotFoundError
from lms.inference import catalog
from lms.inference.manager import Instance


async def acquire(request: web.Request, query: str, *, ttl: int | None = None) -> Instance:
    """The instance for ``query`` (identifier or model key), checked against the allowlist.

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
    check_model(request, key)
    return await manager.acquire(key if instance is None else query, ttl=ttl)
