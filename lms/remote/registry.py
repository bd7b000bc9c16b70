"""The daemon's remote engines, kept in step with config.toml's ``[remotes.NAME]`` tables.

:class:`Remotes` looks at the settings every second: a remote added starts (its models appear
after its first poll, within seconds), a changed one is replaced (requests in flight finish on
the old one), a removed one closes. No restart. While config.toml is broken, nothing changes
here: the gate refuses every request anyway (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lms.config import Settings
from lms.errors import ConfigBrokenError, ModelNotFoundError
from lms.remote.engine import RemoteEngine
from lms.remote.models import RemoteModel
from lms.remoteconfig import RemoteSpec

log = logging.getLogger("lms.remote")

#: Seconds between two looks at the settings.
RECONCILE_SECONDS = 1.0


class Remotes:
    """Every configured remote engine, by name."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        local_publishers: Callable[[], set[str]] = set,
    ) -> None:
        self._settings = settings
        self._local_publishers = local_publishers
        self.engines: dict[str, RemoteEngine] = {}
        self._task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.reconcile()
        self._task = asyncio.create_task(self._watch(), name="remotes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        engines, self.engines = list(self.engines.values()), {}
        await asyncio.gather(*(engine.close() for engine in engines))
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            try:
                await self.reconcile()
            except Exception:  # the watch must outlive any one mistake
                log.exception("remotes: reconcile failed")

    async def reconcile(self) -> None:
        """Start, replace and close engines so that they match the settings now."""
        try:
            specs = {spec.name: spec for spec in self._settings().remotes}
        except ConfigBrokenError:
            return
        publishers: set[str] = set()
        if specs:
            found = await asyncio.to_thread(self._local_publishers)  # a folder listing
            publishers = {name.lower() for name in found}
        for name, engine in list(self.engines.items()):
            if specs.get(name) != engine.spec:
                del self.engines[name]
                self._retire(engine)
        for name, spec in specs.items():
            if name not in self.engines:
                self.engines[name] = self._start(spec)
            self.engines[name].clash = (
                f"the name {name!r} is also a publisher folder of local models: rename the"
                " remote (lms remote rm, then add it under another name)"
                if name in publishers
                else None
            )

    def _start(self, spec: RemoteSpec) -> RemoteEngine:
        engine = RemoteEngine(spec)
        engine.start()
        log.info("remote %s: %d replica(s)", spec.name, len(spec.urls))
        return engine

    def _retire(self, engine: RemoteEngine) -> None:
        """Close ``engine`` once its requests in flight have ended (or its timeout passed)."""

        async def retire() -> None:
            deadline = asyncio.get_running_loop().time() + engine.spec.timeout
            while any(r.in_flight for r in engine.pool.replicas):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            await engine.close()

        task = asyncio.create_task(retire(), name=f"retire remote {engine.spec.name}")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # --- lookups -------------------------------------------------------------------------------

    def serving(self) -> list[RemoteEngine]:
        """Engines whose models may be used (not clashing with a local publisher folder)."""
        return [engine for engine in self.engines.values() if engine.clash is None]

    def models(self) -> list[RemoteModel]:
        """Every remote model, by key."""
        found = [model for engine in self.serving() for model in engine.models.values()]
        return sorted(found, key=lambda model: model.key.lower())

    def find(self, query: str) -> RemoteModel | None:
        """The remote model whose key is ``query`` (any case), or None. Only names of
        configured remotes are looked at: a local ``publisher/model`` is never shadowed."""
        name, sep, _ = query.partition("/")
        engine = self.engines.get(name.lower()) if sep else None
        if engine is None or engine.clash is not None:
            return None
        return engine.models.get(query.lower())

    def resolve(
        self, query: str, allowed: Callable[[str], bool], hidden: Callable[[], None]
    ) -> RemoteModel | None:
        """The rule every surface uses (HTTP routes, SDK sockets, ``lms chat``): the remote
        model ``query`` names, None when it names no configured remote. Within a remote's names
        nothing falls back to local models: a model the remote does not list, or one outside
        ``allowed`` (``hidden`` is called, for the audit log), is ModelNotFoundError listing the
        remote models ``allowed`` shows."""
        if not self.is_remote(query):
            return None
        found = self.find(query)
        if found is not None and allowed(found.key):
            return found
        if found is not None:
            hidden()
        visible = [model.key for model in self.models() if allowed(model.key)]
        raise ModelNotFoundError(
            f'model "{query}" not found. Available models: {", ".join(visible) or "(none)"}',
            param="model",
            data={"available_models": visible},
        )

    def is_remote(self, query: str) -> bool:
        """Whether ``query`` names a model of a configured remote (``NAME/...``)."""
        name, sep, _ = query.partition("/")
        return bool(sep) and name.lower() in self.engines

    def status(self) -> list[dict[str, Any]]:
        """The control plane's ``GET /remotes``."""
        return [engine.public_dict() for engine in sorted(self.engines.values(), key=_name)]


def publishers_in(models_dir: Path) -> set[str]:
    """The publisher folders of a models folder (blocking: a folder listing)."""
    try:
        return {entry.name for entry in models_dir.iterdir() if entry.is_dir()}
    except OSError:
        return set()


def _name(engine: RemoteEngine) -> str:
    return engine.spec.name
