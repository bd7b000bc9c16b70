"""Loaded instances: explicit loads, just-in-time loads, idle TTL, keep-last-JIT (README: Model
keys).

An instance is either an **llm** instance (an :class:`Engine`: chat, completions) or an
**embedding** instance (an :class:`Embedder`), of any model: a chat model can be loaded in
embedding mode too, as a separate instance.

Identifiers (docs/IDENTIFIERS.md): the first instance of a model is named by its key; further
instances ``<key>:2``, ``<key>:3``..., always the smallest free number (numbers freed by an unload
are used again). An embedding model's instance is named like any other. An llm model loaded in
embedding mode is ``<key>:embedding``, then ``<key>:embedding:2``..., even when ``<key>`` is
free, so that ``<key>`` keeps meaning the chat instance, a name says its mode, and no such name
is ever a ``<key>:N``. An explicit identifier already in use is refused (409, "already exists").
Names in requests resolve as :mod:`lms.inference.choosing` says.

Keep-last-JIT (``models.jit_keep_last``) applies per kind: a JIT load unloads the previous JIT
instances of the same kind only, so an application that embeds and chats (RAG) keeps one chat
and one embedding instance instead of reloading them in turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from lms import limits, paths
from lms.config import MAX_PARALLEL, Settings
from lms.errors import (
    ConflictError,
    InstanceNotFoundError,
    InvalidParameterError,
    InvalidRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
)
from lms.inference import catalog, choosing
from lms.inference import drafts as drafts_module
from lms.inference.catalog import ModelFile
from lms.inference.choosing import Choice as Choice
from lms.inference.choosing import HiddenHook as HiddenHook
from lms.inference.choosing import ModelFilter as ModelFilter
from lms.inference.choosing import model_query as model_query
from lms.inference.drafts import Drafts as Drafts
from lms.inference.embedder import Embedder
from lms.inference.engine import Engine, LoadOptions
from lms.inference.instance import EMBEDDING_SUFFIX as EMBEDDING_SUFFIX
from lms.inference.instance import Instance as Instance
from lms.inference.instance import InstanceType as InstanceType
from lms.inference.instance import PredictionLog
from lms.inference.templates import ChatFormatter
from lms.logstream import LogHub

log = logging.getLogger("lms.models")

#: Builds the backend of a new instance (blocking: the manager calls it off the event loop)
#: from the model file, its load options, whether it loads in embedding mode, and a progress
#: callback (0..1, from the loading thread).
Loader = Callable[[ModelFile, LoadOptions, bool, Callable[[float], None] | None], Engine | Embedder]


def load_backend(
    model: ModelFile,
    options: LoadOptions,
    embedding: bool,
    progress: Callable[[float], None] | None = None,
) -> Engine | Embedder:
    """The real loader: an :class:`Embedder` or an :class:`Engine` on the GGUF file."""
    if embedding:
        return Embedder.load(
            model.path, options, encoder=model.type == "embedding", progress=progress
        )
    return Engine.load(model.path, options, progress)


class ModelManager:
    """Owns every loaded instance of the daemon."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        models_dir: Callable[[], Path] = paths.models_dir,
        hub: LogHub | None = None,
        loader: Loader = load_backend,
    ) -> None:
        """``loader`` builds each instance's backend (:func:`load_backend` reads the GGUF with
        llama.cpp; tests of HTTP plumbing pass one that builds a scripted fake engine)."""
        self._settings = settings
        self._loader = loader
        self._models_dir = models_dir
        self._hub = hub
        self._instances: dict[str, Instance] = {}
        self._lock = asyncio.Lock()

    def models_dir(self) -> Path:
        """The models folder in force now."""
        return self._models_dir()

    async def models(self) -> list[ModelFile]:
        """Every downloaded model (metadata read off the event loop)."""
        return await asyncio.to_thread(catalog.discover, self._models_dir())

    async def resolve(
        self,
        query: str,
        allowed: ModelFilter | None = None,
        hidden: HiddenHook | None = None,
        *,
        kind: InstanceType = "llm",
    ) -> ModelFile:
        """The model ``query`` (an instance identifier, a model key or a path prefix) names to a
        load, among the models ``allowed`` lets the caller use: a model outside it is not found,
        exactly like a missing one, and the error lists only allowed models (``hidden`` hears
        when that is why). ``kind`` is the mode of the load. Reads the catalog once."""
        return choosing.downloaded(
            self._in_load_order(),
            await self.models(),
            choosing.Query(query, kind),
            self._models_dir(),
            allowed,
            hidden,
        )

    def drafts(
        self, allowed: ModelFilter | None = None, hidden: drafts_module.HiddenName | None = None
    ) -> Drafts:
        """Draft models as a caller whose allowlist is ``allowed`` may name them (resolved like
        a load, see :meth:`resolve`; ``hidden`` hears the name of a model only the allowlist
        hid)."""
        return Drafts(self.resolve, self._in_load_order, allowed, hidden)

    async def choose(
        self,
        query: str,
        *,
        kind: InstanceType = "llm",
        allowed: ModelFilter | None = None,
        hidden: HiddenHook | None = None,
        path_only: bool = False,
        vision: bool = False,
    ) -> Choice:
        """What ``query`` (an instance identifier, a model key or a path prefix) means to a
        request that needs an instance of ``kind``: the one place that decides it, for
        :meth:`acquire` and every API surface (rules in :mod:`lms.inference.choosing`). Reads
        the catalog once, and only when no loaded instance answers. ``allowed`` limits what
        ``query`` may name: anything outside it is not found, exactly like a missing one
        (``hidden`` hears about it). ``path_only`` and ``vision`` are the SDK's query fields
        (:class:`lms.inference.choosing.Query`).
        """
        wanted = choosing.Query(query, kind, path_only=path_only, vision=vision)
        instance = choosing.loaded(self._in_load_order(), wanted, allowed)
        if instance is not None:
            return Choice(instance.model.key, instance, None)
        model = choosing.downloaded(
            self._in_load_order(), await self.models(), wanted, self._models_dir(), allowed, hidden
        )
        choosing.check_serves(model, kind)
        return Choice(model.key, self._find(model.key, kind), model)

    def check_identifier(self, identifier: object, allowed: ModelFilter | None = None) -> str:
        """Refuse a new instance's ``identifier`` (400 naming it) unless it is printable, of
        bounded length (:mod:`lms.limits`), free, and matched by ``allowed``.

        A token limited to some models names its instances inside its allowlist (as if the
        identifier were a key): "that name is taken" then only ever speaks of a name in the
        token's own namespace, never of an instance of a model it may not see.
        """
        identifier = limits.check_identifier(identifier)
        if allowed is not None and not allowed(identifier):
            raise InvalidParameterError(
                f'the identifier "{identifier}" is outside this token\'s model allowlist; a token'
                " limited to some models names its instances with names its allowlist matches",
                param="identifier",
            )
        if identifier in self._instances:
            raise ConflictError(
                f'a model instance with the identifier "{identifier}" already exists'
            )
        return identifier

    def check_request(
        self,
        *,
        ttl: int | None = None,
        context_length: int | None = None,
        may_widen_context: bool = True,
        context_param: str = "context_length",
    ) -> None:
        """Refuse a load request's ``ttl`` or ``context_length`` past its bounds (400 naming
        the field; see :mod:`lms.limits`).

        ``may_widen_context`` says whether the caller may ask for more context than
        ``models.context_length`` (a token with the ``models`` permission, or no token at
        all); without it, more is refused with 403. ``models.max_context_length`` bounds
        everyone.
        """
        if ttl is not None:
            limits.check_ttl(ttl)
        if context_length is None:
            return
        settings = self._settings()
        limits.check_context_length(
            context_length, settings.models_max_context_length, context_param
        )
        if not may_widen_context and context_length > settings.models_context_length:
            raise PermissionDeniedError(
                f"'{context_param}' above {settings.models_context_length}"
                " (models.context_length) needs a token with the models permission",
                param=context_param,
            )

    def instances(self) -> list[Instance]:
        return sorted(self._instances.values(), key=lambda i: i.identifier)

    def find_instance(self, identifier: str) -> Instance | None:
        return self._instances.get(identifier)

    def loaded_identifiers(self, model_key: str) -> list[str]:
        return [i.identifier for i in self.instances() if i.model.key == model_key]

    async def acquire(
        self,
        query: str,
        *,
        ttl: int | None = None,
        context_length: int | None = None,
        progress: Callable[[float], None] | None = None,
        kind: InstanceType = "llm",
        allowed: ModelFilter | None = None,
        may_widen_context: bool = True,
        context_param: str = "context_length",
        chosen: Choice | None = None,
    ) -> Instance:
        """The instance that serves an inference request for ``query``, JIT-loading it.

        ``query`` is an instance identifier or a model name, resolved by :meth:`choose` unless
        the caller passes what it already ``chosen`` (then the catalog is not read again).
        ``ttl`` and ``context_length`` apply only when this request is the one that loads the
        model; ``progress`` then hears about the load (0..1, from the loading thread). ``kind``
        is the mode the request needs (see :meth:`choose`).

        ``ttl`` and ``context_length`` are checked on every request (:meth:`check_request`),
        loading or not. ``allowed`` limits what ``query`` may name: an instance or model
        outside it is not found, exactly like a missing one.
        """
        self.check_request(
            ttl=ttl,
            context_length=context_length,
            may_widen_context=may_widen_context,
            context_param=context_param,
        )
        if chosen is None or (
            chosen.instance is not None
            and self._instances.get(chosen.instance.identifier) is not chosen.instance
        ):
            chosen = await self.choose(query, kind=kind, allowed=allowed)
        instance = chosen.instance or self._find(chosen.key, kind)
        if instance is None:
            assert chosen.model is not None  # choose read the catalog when nothing was loaded
            if not self._settings().models_jit:
                flag = " --embedding" if kind == "embedding" else ""
                raise ModelNotFoundError(
                    f'model "{chosen.key}" is not loaded'
                    f"{' in embedding mode' if kind == 'embedding' else ''}"
                    " and just-in-time loading is off",
                    hint=f"load it first: lms load {chosen.key}{flag}",
                    param="model",
                )
            instance = await self._load_jit(
                chosen.model, ttl, context_length, progress, embedding=kind == "embedding"
            )
        instance.touch()
        return instance

    def _find(self, model_key: str, kind: InstanceType) -> Instance | None:
        """The first loaded (in load order) instance of ``model_key`` in mode ``kind``."""
        return next(
            (i for i in self._in_load_order() if i.model.key == model_key and i.type == kind),
            None,
        )

    def _in_load_order(self) -> list[Instance]:
        return list(self._instances.values())

    async def _load_jit(
        self,
        model: ModelFile,
        ttl: int | None,
        context_length: int | None = None,
        progress: Callable[[float], None] | None = None,
        *,
        embedding: bool = False,
    ) -> Instance:
        kind: InstanceType = "embedding" if embedding else "llm"
        async with self._lock:
            existing = self._find(model.key, kind)
            if existing is not None:
                return existing
            settings = self._settings()
            if settings.models_jit_keep_last:
                for other in [i for i in self.instances() if i.jit and i.type == kind]:
                    await self._unload_locked(other.identifier)
            return await self._load_locked(
                model,
                context_length=context_length or settings.models_context_length,
                ttl=ttl if ttl is not None else (settings.models_ttl or None),
                identifier=None,
                jit=True,
                progress=progress,
                embedding=embedding,
            )

    async def load(
        self,
        query: str | ModelFile,
        *,
        context_length: int | None = None,
        ttl: int | None = None,
        identifier: str | None = None,
        embedding: bool | None = None,
        progress: Callable[[float], None] | None = None,
        parallel: int | None = None,
        allowed: ModelFilter | None = None,
        context_param: str = "context_length",
        draft_model: str | None = None,
        drafts: Drafts | None = None,
    ) -> Instance:
        """An explicit load (``lms load``, ``POST /api/v1/models/load``): a new instance.

        ``parallel`` is how many requests it serves at once (continuous batching; default the
        ``models.parallel`` setting); more queue.

        ``embedding`` loads it in embedding mode; None means "as the model's type says" (an
        embedding model loads in embedding mode, any other as an llm). ``progress`` hears about
        the load (0..1, from the loading thread).

        ``ttl``, ``context_length`` and ``identifier`` are checked first (:mod:`lms.limits`);
        ``allowed`` limits which models ``query`` may name (see :meth:`resolve`). ``query`` may
        be a model the caller already resolved: then the catalog is not read again.

        ``draft_model`` names the instance's default draft model (:mod:`lms.inference.drafts`),
        resolved before the load among the models ``drafts`` lets the caller use (default: those
        ``allowed`` lets it use) and attached after it; should attaching fail, the instance is
        unloaded again and the load fails.
        """
        self.check_request(ttl=ttl, context_length=context_length, context_param=context_param)
        if identifier is not None:
            self.check_identifier(identifier, allowed)
        if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
            raise InvalidRequestError(
                f"parallel must be between 1 and {MAX_PARALLEL}", param="parallel"
            )
        if isinstance(query, ModelFile):
            model = query
        else:
            model = await self.resolve(query, allowed, kind="embedding" if embedding else "llm")
        draft = None
        if draft_model is not None:
            if embedding or model.type == "embedding":
                raise InvalidParameterError(
                    "a draft model guesses tokens for a chat model; an embedding instance"
                    " takes none",
                    param=drafts_module.PARAM,
                )
            draft = await (drafts or self.drafts(allowed)).resolve(draft_model)
        async with self._lock:
            if identifier is not None:  # again: another load may have taken it meanwhile
                self.check_identifier(identifier, allowed)
            instance = await self._load_locked(
                model,
                context_length=context_length or self._settings().models_context_length,
                ttl=ttl,
                identifier=identifier,
                jit=False,
                progress=progress,
                embedding=model.type == "embedding" if embedding is None else embedding,
                parallel=parallel,
            )
            if draft is not None:
                try:
                    instance.draft_model = await drafts_module.attach(instance, draft)
                except BaseException:
                    await self._unload_locked(instance.identifier)
                    raise
            return instance

    async def _load_locked(
        self,
        model: ModelFile,
        *,
        context_length: int,
        ttl: int | None,
        identifier: str | None,
        jit: bool,
        progress: Callable[[float], None] | None = None,
        embedding: bool = False,
        parallel: int | None = None,
    ) -> Instance:
        if identifier is None:
            identifier = self._free_identifier(model, embedding)
        if model.max_context_length:
            context_length = min(context_length, model.max_context_length)
        options = LoadOptions(
            context_length=context_length,
            parallel=1 if embedding else (parallel or self._settings().models_parallel),
            queue_length=self._settings().models_queue_length,
            speculative=self._settings().models_speculative,
        )
        started = time.perf_counter()
        backend = await asyncio.to_thread(self._loader, model, options, embedding, progress)
        instance = Instance(
            identifier=identifier,
            model=model,
            backend=backend,
            formatter=ChatFormatter(model),
            ttl=ttl,
            jit=jit,
            load_time=time.perf_counter() - started,
        )
        if self._hub is not None and isinstance(backend, Engine):
            backend.observer = PredictionLog(self._hub, instance)
        self._instances[identifier] = instance
        log.info(
            "loaded %s as %s (%s, context %d, %.2fs)",
            model.key,
            identifier,
            instance.type,
            context_length,
            instance.load_time,
        )
        return instance

    def planned_identifier(self, model: ModelFile, embedding: bool) -> str:
        """The identifier a load of ``model`` would get now, without one given."""
        return self._free_identifier(model, embedding)

    def _free_identifier(self, model: ModelFile, embedding: bool) -> str:
        base = model.key + (EMBEDDING_SUFFIX if embedding and model.type == "llm" else "")
        identifier, n = base, 2
        while identifier in self._instances:
            identifier, n = f"{base}:{n}", n + 1
        return identifier

    async def unload(self, identifier: str) -> None:
        async with self._lock:
            await self._unload_locked(identifier)

    async def unload_all(self) -> list[str]:
        async with self._lock:
            names = list(self._instances)
            for name in names:
                await self._unload_locked(name)
            return names

    async def _unload_locked(self, identifier: str) -> None:
        instance = self._instances.pop(identifier, None)
        if instance is None:
            loaded = ", ".join(self._instances) or "none"
            raise InstanceNotFoundError(
                f'no loaded instance "{identifier}" (loaded: {loaded})', param="identifier"
            )
        await asyncio.to_thread(instance.backend.close)
        log.info("unloaded %s", identifier)

    async def reap_idle(self, now: float | None = None) -> list[str]:
        """Unload instances whose idle TTL has run out; returns their identifiers."""
        expired = [i.identifier for i in self.instances() if _is_expired(i, now)]
        for identifier in expired:
            async with self._lock:
                instance = self._instances.get(identifier)
                if instance is not None and _is_expired(instance, now):
                    await self._unload_locked(identifier)
                    log.info("unloaded %s after %ss idle", identifier, instance.ttl)
        return expired

    async def close(self) -> None:
        await self.unload_all()


def _is_expired(instance: Instance, now: float | None) -> bool:
    # Every load path bounds the TTL; should an absurd one slip in anyway, that instance is
    # skipped (and said so) rather than making every pass of the reaper raise.
    try:
        return instance.ttl_left(now) == 0.0
    except (ArithmeticError, TypeError, ValueError):
        log.warning("instance %s has an unusable ttl; it is not unloaded", instance.identifier)
        return False
