"""Loaded instances: explicit loads, just-in-time loads, idle TTL, keep-last-JIT (SPEC §5)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lms import paths
from lms.config import Settings
from lms.errors import ConflictError, InstanceNotFoundError, InvalidRequestError, ModelNotFoundError
from lms.inference import catalog
from lms.inference.catalog import ModelFile
from lms.inference.engine import Engine, LoadOptions
from lms.inference.templates import ChatFormatter
from lms.protocol import InstanceEntry

log = logging.getLogger("lms.models")


@dataclass
class Instance:
    """A model loaded under an identifier, with the engine that serves it."""

    identifier: str
    model: ModelFile
    engine: Engine
    formatter: ChatFormatter
    ttl: int | None
    jit: bool
    load_time: float
    loaded_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)

    def touch(self) -> None:
        self.last_used_at = time.time()

    @property
    def is_busy(self) -> bool:
        return self.engine.active > 0 or self.engine.queued > 0

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], tuple[str, ...]]:
        """Tokens of a chat rendered with the model's template, and the template's stops."""
        text = self.formatter.render(messages, add_generation_prompt=True, tools=tools)
        return self.engine.tokenize(text), tuple(self.formatter.stop_strings)

    def ttl_left(self, now: float | None = None) -> float | None:
        if not self.ttl:
            return None
        if self.is_busy:
            return float(self.ttl)
        return max(0.0, self.ttl - ((now or time.time()) - self.last_used_at))

    def entry(self) -> InstanceEntry:
        return {
            "identifier": self.identifier,
            "model_key": self.model.key,
            "type": "llm",
            "status": self.engine.status,
            "queued": self.engine.queued,
            "context_length": self.engine.n_ctx_per_seq,
            "parallel": self.engine.options.parallel,
            "ttl_seconds": self.ttl,
            "ttl_left_seconds": self.ttl_left(),
            "jit": self.jit,
            "loaded_at": self.loaded_at,
            "last_used_at": self.last_used_at,
            "load_time_seconds": round(self.load_time, 3),
            "size_bytes": self.model.size_bytes,
        }


class ModelManager:
    """Owns every loaded instance of the daemon."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        models_dir: Callable[[], Path] = paths.models_dir,
    ) -> None:
        self._settings = settings
        self._models_dir = models_dir
        self._instances: dict[str, Instance] = {}
        self._lock = asyncio.Lock()

    async def models(self) -> list[ModelFile]:
        """Every downloaded model (metadata read off the event loop)."""
        return await asyncio.to_thread(catalog.discover, self._models_dir())

    async def resolve(self, query: str) -> ModelFile:
        return catalog.resolve(query, await self.models())

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
    ) -> Instance:
        """The instance that serves an inference request for ``query``, JIT-loading it.

        ``query`` is an instance identifier or a model key. ``ttl`` and ``context_length`` apply
        only when this request is the one that loads the model; ``progress`` then hears about
        the load (0..1, from the loading thread).
        """
        instance = self._instances.get(query)
        if instance is None:
            model = await self.resolve(query)
            instance = next((i for i in self.instances() if i.model.key == model.key), None)
            if instance is None:
                if not self._settings().models_jit:
                    raise ModelNotFoundError(
                        f'model "{model.key}" is not loaded and just-in-time loading is off',
                        hint=f"load it first: lms load {model.key}",
                        param="model",
                    )
                instance = await self._load_jit(model, ttl, context_length, progress)
        instance.touch()
        return instance

    async def _load_jit(
        self,
        model: ModelFile,
        ttl: int | None,
        context_length: int | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> Instance:
        async with self._lock:
            existing = next((i for i in self.instances() if i.model.key == model.key), None)
            if existing is not None:
                return existing
            settings = self._settings()
            if settings.models_jit_keep_last:
                for other in [i for i in self.instances() if i.jit]:
                    await self._unload_locked(other.identifier)
            return await self._load_locked(
                model,
                context_length=context_length or settings.models_context_length,
                ttl=ttl if ttl is not None else (settings.models_ttl or None),
                identifier=None,
                jit=True,
                progress=progress,
            )

    async def load(
        self,
        query: str,
        *,
        context_length: int | None = None,
        ttl: int | None = None,
        identifier: str | None = None,
    ) -> Instance:
        """An explicit load (``lms load``, ``POST /api/v1/models/load``): a new instance."""
        if context_length is not None and context_length < 16:
            raise InvalidRequestError("context_length must be at least 16", param="context_length")
        if ttl is not None and ttl < 1:
            raise InvalidRequestError("ttl must be at least 1 second", param="ttl")
        model = await self.resolve(query)
        async with self._lock:
            if identifier is not None and identifier in self._instances:
                raise ConflictError(f'an instance named "{identifier}" is already loaded')
            return await self._load_locked(
                model,
                context_length=context_length or self._settings().models_context_length,
                ttl=ttl,
                identifier=identifier,
                jit=False,
            )

    async def _load_locked(
        self,
        model: ModelFile,
        *,
        context_length: int,
        ttl: int | None,
        identifier: str | None,
        jit: bool,
        progress: Callable[[float], None] | None = None,
    ) -> Instance:
        if identifier is None:
            identifier, n = model.key, 2
            while identifier in self._instances:
                identifier, n = f"{model.key}:{n}", n + 1
        if model.max_context_length:
            context_length = min(context_length, model.max_context_length)
        options = LoadOptions(context_length=context_length)
        started = time.perf_counter()
        engine = await asyncio.to_thread(Engine.load, model.path, options, progress)
        instance = Instance(
            identifier=identifier,
            model=model,
            engine=engine,
            formatter=ChatFormatter(model),
            ttl=ttl,
            jit=jit,
            load_time=time.perf_counter() - started,
        )
        self._instances[identifier] = instance
        log.info(
            "loaded %s as %s (context %d, %.2fs)",
            model.key,
            identifier,
            context_length,
            instance.load_time,
        )
        return instance

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
        await asyncio.to_thread(instance.engine.close)
        log.info("unloaded %s", identifier)

    async def reap_idle(self, now: float | None = None) -> list[str]:
        """Unload instances whose idle TTL has run out; returns their identifiers."""
        expired = [i.identifier for i in self.instances() if i.ttl_left(now) == 0.0]
        for identifier in expired:
            async with self._lock:
                instance = self._instances.get(identifier)
                if instance is not None and instance.ttl_left(now) == 0.0:
                    await self._unload_locked(identifier)
                    log.info("unloaded %s after %ss idle", identifier, instance.ttl)
        return expired

    async def run_reaper(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_idle()
            except Exception:
                log.exception("idle unload failed")

    async def close(self) -> None:
        await self.unload_all()
