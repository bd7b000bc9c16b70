"""Draft models for speculative decoding (docs/API.md, Draft models): what a request's or a
load's ``draft_model`` names, checked like a load and attached to an instance's engine once.

A draft model is named like a model to load (:mod:`lms.inference.choosing`: an instance
identifier, a key in any of its looser forms, a path prefix), among the models the caller's
allowlist lets it use: a model outside it is not found, exactly like a missing one (404
``model_not_found`` naming ``draft_model``), and only the caller's ``hidden`` hook hears why. It
must be an llm model (an embedding model guesses nothing: 400). The engine refuses one with
another vocabulary (400 naming ``draft_model``).

Each instance attaches a draft model once, under its resolved model key, whatever name the
request used (``gemma-3-270m`` and ``google/gemma-3-270m`` are one attach); its file size then
counts towards the instance's size. An instance may hold a default draft model (``lms load
--draft-model``): a request with speculation on and no ``draft_model`` of its own uses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from lms.errors import InvalidParameterError, ModelNotFoundError
from lms.inference.catalog import ModelFile
from lms.inference.choosing import HiddenHook, ModelFilter
from lms.inference.instance import Instance
from lms.inference.sampling import SamplingParams

log = logging.getLogger("lms.models")

#: The field a draft model is named by, in every error about it.
PARAM = "draft_model"

#: Resolves a name to a model as a load does (:meth:`ModelManager.resolve`).
Resolver = Callable[[str, ModelFilter | None, HiddenHook | None], Awaitable[ModelFile]]
#: Told the name a caller used when it was not found only because of its allowlist (audit).
HiddenName = Callable[[str], None]


class Drafts:
    """Draft models as one caller may use them: the models its allowlist (``allowed``; None:
    every model) lets it name. Built by :meth:`ModelManager.drafts`."""

    def __init__(
        self,
        resolve: Resolver,
        loaded: Callable[[], list[Instance]],
        allowed: ModelFilter | None = None,
        hidden: HiddenName | None = None,
    ) -> None:
        self._resolve = resolve
        self._loaded = loaded
        self._allowed = allowed
        self._hidden = hidden

    async def resolve(self, query: str) -> ModelFile:
        """The llm model ``query`` names as a draft model: 404 naming ``draft_model`` when it is
        missing or outside the allowlist (the same answer), 400 for an embedding model."""
        hidden = self._hidden
        try:
            model = await self._resolve(
                query, self._allowed, (lambda: hidden(query)) if hidden is not None else None
            )
        except ModelNotFoundError as err:
            raise ModelNotFoundError(
                f"draft {err.message}", hint=err.hint, param=PARAM, data=err.data
            ) from None
        if self._allowed is not None and not self._allowed(model.key):  # resolve filtered it
            raise ModelNotFoundError(f'draft model "{query}" not found', param=PARAM)
        if model.type == "embedding":
            raise InvalidParameterError(
                f'"{model.key}" is an embedding model: it cannot be a draft model', param=PARAM
            )
        return model

    def allows(self, key: str) -> bool:
        """Whether the caller may use the model ``key`` (its allowlist; no allowlist: any)."""
        return self._allowed is None or self._allowed(key)

    async def use(self, instance: Instance, query: str) -> str:
        """The key of the draft model ``query`` names, attached to ``instance`` (at most once per
        key; later requests reuse it)."""
        if self._is_attached_key(instance, query):
            return query  # no catalog read for a key already attached (each tool round asks)
        return await attach(instance, await self.resolve(query))

    def _is_attached_key(self, instance: Instance, query: str) -> bool:
        # An exact model key resolves to itself unless an instance is named by it.
        return (
            query in instance.draft_sizes
            and (self._allowed is None or self._allowed(query))
            and not any(i.identifier == query and i.model.key != query for i in self._loaded())
        )


async def attach(instance: Instance, model: ModelFile) -> str:
    """Attach ``model`` to ``instance``'s engine as a draft model (blocking load in a worker
    thread; one at a time per instance, so two requests never load it twice); its key."""
    engine = instance.engine
    async with instance.draft_lock:
        if model.key not in instance.draft_sizes:
            await asyncio.to_thread(engine.attach_draft, model.key, model.path)
            instance.draft_sizes[model.key] = model.size_bytes
            log.info("attached %s to %s as a draft model", model.key, instance.identifier)
    return model.key


async def with_draft(
    instance: Instance, params: SamplingParams, drafts: Drafts | None
) -> SamplingParams:
    """``params`` with ``draft_model`` as the engine knows it: the request's own, resolved and
    attached (``drafts`` says which models the caller may use; None: none); else the
    instance's default draft model when speculation is on."""
    if params.draft_model is None:
        default = instance.draft_model
        # A caller whose allowlist hides the default draft gets none (its key would show in
        # the stats): prompt lookup still guesses for it.
        allowed = drafts is None or drafts.allows(default or "")
        if params.speculative and default is not None and allowed:
            return dataclasses.replace(params, draft_model=default)
        return params
    if drafts is None:
        raise InvalidParameterError("draft models are not available on this route", param=PARAM)
    return dataclasses.replace(params, draft_model=await drafts.use(instance, params.draft_model))
