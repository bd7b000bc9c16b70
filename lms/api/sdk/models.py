"""Endpoints shared by the ``/llm`` and ``/embedding`` sockets: listing, getOrLoad, loadModel,
unloadModel, getModelInfo, getLoadConfig, tokenize, countTokens — and model resolution.

A socket's namespace is its mode: ``/llm`` sees and loads llm instances, ``/embedding``
embedding instances (any model can be loaded in embedding mode, README: Model keys).

Resolution of the SDK's model specifiers (docs/API.md, SDK endpoints) per docs/IDENTIFIERS.md: an
instance reference names one instance; a query goes through the one rule of every surface
(:mod:`lms.inference.choosing`): its ``identifier`` is an instance identifier, then a model key,
then a case-insensitive prefix of the model's path in the models folder; its ``path`` is a path
prefix only. A model found that has no loaded instance of the namespace's mode is loaded just in
time, as on the HTTP routes. Names resolve only among the models the token may use: an instance or
model outside its allowlist answers exactly like a missing one, and "not found" or "ambiguous"
errors list only what the token may use. Load TTLs, identifiers and context lengths are bounded
(:mod:`lms.limits`, docs/LIMITS.md). Remote engines' models are always loaded on ``/llm``
(:mod:`.remotes`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from lms.api.sdk import kvconfig, records, remotes, wire
from lms.api.sdk.calls import Call, Channel, Endpoint, channel, rpc
from lms.api.sdk.records import Kind
from lms.api.state import AUTH, CONFIG
from lms.auth.permissions import Permission
from lms.errors import (
    InstanceNotFoundError,
    InvalidParameterError,
    MissingParameterError,
    ModelNotFoundError,
    PermissionDeniedError,
)
from lms.inference.catalog import ModelFile
from lms.inference.embedder import Embedder
from lms.inference.manager import Choice, Instance
from lms.remote.models import RemoteModel, unsupported

#: Inputs longer than this are tokenized off the event loop.
_LONG_TEXT = 16_384
#: Smallest step of load progress worth a packet.
_PROGRESS_STEP = 0.02


def kind_of(call: Call) -> Kind:
    return "embedding" if call.namespace == "embedding" else "llm"


def loaded(call: Call, kind: Kind) -> list[Instance]:
    """Instances of ``kind`` the token may use, in load order: the SDK's ``model()`` without a
    key takes the first."""
    found = [i for i in call.manager.instances() if i.type == kind and call.allows(i.model.key)]
    return sorted(found, key=lambda i: i.loaded_at)


def visible(call: Call, kind: Kind) -> list[str]:
    """What the token may see loaded: its instances, then the remote models (always ready)."""
    return [i.identifier for i in loaded(call, kind)] + [m.key for m in remotes.visible(call)]


def may_widen_context(call: Call) -> bool:
    """Whether the caller may load with more context than ``models.context_length``."""
    return call.record is None or Permission.MODELS in call.record.permissions


def text_param(parameter: Any, name: str) -> str:
    value = parameter.get(name) if isinstance(parameter, dict) else None
    if value is None:
        raise MissingParameterError(f"'{name}' is required", param=name)
    if not isinstance(value, str):
        raise InvalidParameterError(f"'{name}' must be a string", param=name)
    return value


async def choose(call: Call, kind: Kind, query: dict[str, Any]) -> Choice:
    """What the SDK's model ``query`` (``{identifier?, path?, vision?}``) names, by the one rule
    of every surface (:meth:`ModelManager.choose`): the instance that serves it, or the
    downloaded model to load. A query without a name is the first loaded instance of ``kind``
    (the SDK's ``model()`` without a key). A name only a model outside the token's allowlist
    answers to is audited (:meth:`Call.hidden`) and answers like a missing one:
    ModelNotFoundError (``generic.pathNotFound``) listing only the models the token may use.
    """
    identifier, path = query.get("identifier"), query.get("path")
    vision = query.get("vision") is True
    name = identifier if isinstance(identifier, str) else path
    if not isinstance(name, str):
        first = next((i for i in loaded(call, kind) if not vision or i.model.vision), None)
        if first is None:
            raise wire.no_model_matching(query, visible(call, kind))
        return Choice(first.model.key, first, None)
    try:
        return await call.manager.choose(
            name,
            kind=kind,
            allowed=call.allows,
            hidden=lambda: call.hidden(name),
            path_only=not isinstance(identifier, str),
            vision=vision,
        )
    except ModelNotFoundError as err:
        raise _not_found(call, name, err) from None


async def downloaded(call: Call, name: str, kind: Kind) -> ModelFile:
    """The model ``name`` (an instance identifier, a key or a path prefix) means to a load, by
    the one rule of every surface (:meth:`ModelManager.resolve`); the error lists only the
    models the token may use, and a name only a hidden model answers to is audited."""
    try:
        return await call.manager.resolve(
            name, call.allows, hidden=lambda: call.hidden(name), kind=kind
        )
    except ModelNotFoundError as err:
        raise _not_found(call, name, err) from None


def _not_found(call: Call, name: str, err: ModelNotFoundError) -> Exception:
    available = err.data.get("available_models") if isinstance(err.data, dict) else None
    keys = [k for k in available or [] if isinstance(k, str) and call.allows(k)]
    return wire.path_not_found(name, keys, err.message if "ambiguous" in err.message else None)


def _specifier(parameter: Any, name: str) -> dict[str, Any]:
    spec = parameter.get(name) if isinstance(parameter, dict) else None
    if spec is None:
        raise MissingParameterError(f"'{name}' (a model specifier) is required", param=name)
    if isinstance(spec, dict):
        kind, checked = spec.get("type"), dict(spec)
        if kind == "instanceReference" and isinstance(spec.get("instanceReference"), str):
            return checked
        if kind == "query" and isinstance(spec.get("query", {}), dict):
            return checked
    raise InvalidParameterError(
        f"'{name}' must be {{type: query, query: {{identifier...}}}} or {{type:"
        " instanceReference, instanceReference}",
        param=name,
    )


async def instance_for(
    call: Call, parameter: Any, name: str = "specifier", *, jit: bool = True
) -> Instance | RemoteModel | None:
    """The instance (or remote model) a request's model specifier names, loading it just in
    time when ``jit``. Without ``jit``, None when nothing loaded matches."""
    kind = kind_of(call)
    spec = _specifier(parameter, name)
    if spec["type"] == "instanceReference":
        reference = spec["instanceReference"]
        instance = next(
            (i for i in call.manager.instances() if records.instance_reference(i) == reference),
            None,
        )
        if instance is None:
            remote = remotes.referenced(call, reference, name)
            if remote is not None:
                return remote
        if instance is not None and not call.allows(instance.model.key):
            call.hidden(instance.identifier)
            instance = None
        if instance is None or instance.type != kind:
            raise InstanceNotFoundError(
                "that model instance is no longer loaded", param=name, hint="get a new handle"
            )
    else:
        query: dict[str, Any] = spec.get("query") or {}
        try:
            remote = remotes.queried(call, query, any_loaded=bool(loaded(call, kind)))
            if remote is not None:
                return remote
            choice = await choose(call, kind, query)
        except ModelNotFoundError:
            if jit:
                raise
            return None
        instance = choice.instance
        if instance is None:
            if not jit:
                return None
            assert choice.model is not None  # read from the catalog: nothing loaded answered
            call.check_model(choice.key)
            instance = await call.manager.acquire(
                choice.key, kind=kind, allowed=call.allows, chosen=choice
            )
    call.check_model(instance.model.key)
    instance.touch()
    return instance


async def required_instance(
    call: Call, parameter: Any, name: str = "specifier"
) -> Instance | RemoteModel:
    instance = await instance_for(call, parameter, name)
    assert instance is not None
    return instance


async def local_instance(
    call: Call, parameter: Any, what: str, name: str = "specifier"
) -> Instance:
    """:func:`required_instance` for work only a local engine does (``what``, as the error
    says it): a remote model is ``remote_unsupported``."""
    instance = await required_instance(call, parameter, name)
    if isinstance(instance, RemoteModel):
        raise unsupported(what, instance.key, param=name)
    return instance


async def loading(
    channel: Channel,
    packet: str,
    load: Callable[[Callable[[float], None]], Awaitable[Instance]],
) -> Instance:
    """Run ``load(report)``, forwarding llama.cpp's progress (reported from the loading thread)
    as ``packet`` messages; the SDK's sync API times out after 60 s of silence."""
    loop = asyncio.get_running_loop()
    progress: asyncio.Queue[float | None] = asyncio.Queue()

    def report(fraction: float) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(progress.put_nowait, fraction)

    async def forward() -> None:
        last = 0.0
        while (fraction := await progress.get()) is not None:
            if fraction - last >= _PROGRESS_STEP and fraction < 1.0:
                last = fraction
                await channel.send({"type": packet, "progress": round(fraction, 4)})

    forwarder = asyncio.create_task(forward())
    try:
        return await load(report)
    finally:
        progress.put_nowait(None)
        await forwarder


# --- endpoints -----------------------------------------------------------------------------------


async def list_loaded(call: Call, parameter: Any) -> list[dict[str, Any]]:
    kind = kind_of(call)
    local = [records.instance_info(i) for i in loaded(call, kind) if call.allows(i.model.key)]
    return local + [records.instance_info(m) for m in remotes.visible(call)]


async def get_model_info(call: Call, parameter: Any) -> dict[str, Any] | None:
    instance = await instance_for(call, parameter, jit=False)
    if instance is None:
        throw = parameter.get("throwIfNotFound", True) if isinstance(parameter, dict) else True
        if throw is False:
            return None
        query = (parameter.get("specifier") or {}).get("query") or {}
        raise wire.no_model_matching(query, visible(call, kind_of(call)))
    return records.instance_info(instance)


async def get_load_config(call: Call, parameter: Any) -> dict[str, Any]:
    instance = await instance_for(call, parameter, jit=False)
    if instance is None:
        query = (parameter.get("specifier") or {}).get("query") or {}
        raise wire.no_model_matching(query, visible(call, kind_of(call)))
    return records.load_config(instance)


async def get_or_load(channel: Channel, parameter: Any) -> None:
    kind = kind_of(channel)
    name = text_param(parameter, "identifier")
    context_length = kvconfig.load_settings(parameter.get("loadConfigStack"), kind)
    ttl = kvconfig.ttl_seconds(parameter.get("loadTtlMs"), "loadTtlMs")
    widen = may_widen_context(channel)
    try:
        channel.manager.check_request(
            context_length=context_length, may_widen_context=widen, context_param="contextLength"
        )
    except PermissionDeniedError as err:
        if channel.record is not None:  # audited like the gate's own refusals
            channel.app[AUTH].refuse(channel.auth.where(channel.endpoint), err, channel.record.id)
        raise
    remote = remotes.named(channel, name)
    if remote is not None:  # ready upstream: the TTL does not apply, a context length cannot
        if context_length is not None:
            raise unsupported("A context length", remote.key, param="contextLength")
        info = records.instance_info(remote)
        await channel.finish({"type": "alreadyLoaded", "info": info})
        return
    choice = await choose(channel, kind, {"identifier": name})
    if choice.instance is not None:
        instance = choice.instance
        channel.check_model(instance.model.key)
        instance.touch()
        await channel.finish({"type": "alreadyLoaded", "info": records.instance_info(instance)})
        return
    model = choice.model
    assert model is not None  # read from the catalog: nothing loaded answered
    channel.check_model(model.key)
    planned = channel.manager.planned_identifier(model, kind == "embedding")
    info = records.model_info(model, kind)
    await channel.send({"type": "startLoading", "identifier": planned, "info": info})
    if channel.app[CONFIG].current().models_jit_keep_last:
        for other in loaded(channel, kind):
            if other.jit and other.model.key != model.key:
                notice = {"type": "unloadingOtherJITModel", "info": records.instance_info(other)}
                await channel.send(notice)
    instance = await loading(
        channel,
        "loadProgress",
        lambda report: channel.manager.acquire(
            model.key,
            ttl=ttl,
            context_length=context_length,
            progress=report,
            kind=kind,
            allowed=channel.allows,
            may_widen_context=widen,
            context_param="contextLength",
            chosen=choice,  # `choose` read the catalog already
        ),
    )
    await channel.finish({"type": "loadSuccess", "info": records.instance_info(instance)})


async def load_model(channel: Channel, parameter: Any) -> None:
    kind = kind_of(channel)
    key = text_param(parameter, "modelKey")
    remote = remotes.named(channel, key)
    if remote is not None:
        raise unsupported("Loading", remote.key, param="modelKey")
    identifier = parameter.get("identifier")
    if identifier is not None:
        identifier = channel.manager.check_identifier(identifier, channel.allows)
    context_length = kvconfig.load_settings(parameter.get("loadConfigStack"), kind)
    ttl = kvconfig.ttl_seconds(parameter.get("ttlMs"), "ttlMs")
    channel.manager.check_request(context_length=context_length, context_param="contextLength")
    model = await downloaded(channel, key, kind)
    channel.check_model(model.key)
    await channel.send({"type": "resolved", "info": records.model_info(model, kind)})
    instance = await loading(
        channel,
        "progress",
        lambda report: channel.manager.load(
            model,
            context_length=context_length,
            ttl=ttl,
            identifier=identifier,
            embedding=kind == "embedding",
            progress=report,
            allowed=channel.allows,
            context_param="contextLength",
        ),
    )
    await channel.finish({"type": "success", "info": records.instance_info(instance)})


async def unload_model(call: Call, parameter: Any) -> None:
    kind = kind_of(call)
    identifier = text_param(parameter, "identifier")
    remote = remotes.named(call, identifier)
    if remote is not None:
        raise unsupported("Unloading", remote.key, param="identifier")
    instance = next((i for i in loaded(call, kind) if i.identifier == identifier), None)
    if instance is None:
        hidden = call.manager.find_instance(identifier)
        if hidden is not None and hidden.type == kind:
            call.hidden(identifier)  # audited; answered like a missing one
        raise wire.no_model_matching({"identifier": identifier}, visible(call, kind))
    call.check_model(instance.model.key)
    await call.manager.unload(identifier)


async def _tokens(call: Call, parameter: Any) -> list[int]:
    instance = await local_instance(call, parameter, "Tokenizing")
    text = text_param(parameter, "inputString")
    backend = instance.backend
    if isinstance(backend, Embedder):
        # Embedding inputs are tokenized as the embedder does: with BOS/EOS where wanted.
        tokenize: Callable[[str], list[int]] = backend._tokenize
    else:
        tokenize = backend.tokenize
    if len(text) > _LONG_TEXT:
        return await asyncio.to_thread(tokenize, text)
    return tokenize(text)


async def tokenize(call: Call, parameter: Any) -> dict[str, Any]:
    return {"tokens": await _tokens(call, parameter)}


async def count_tokens(call: Call, parameter: Any) -> dict[str, Any]:
    return {"tokenCount": len(await _tokens(call, parameter))}


_SHARED: dict[str, Endpoint] = {
    "listLoaded": rpc(list_loaded),
    "getModelInfo": rpc(get_model_info),
    "getLoadConfig": rpc(get_load_config),
    "getOrLoad": channel(get_or_load),
    "loadModel": channel(load_model),
    "unloadModel": rpc(unload_model),
    "tokenize": rpc(tokenize),
    "countTokens": rpc(count_tokens),
}

ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    (namespace, name): endpoint
    for namespace in ("llm", "embedding")
    for name, endpoint in _SHARED.items()
}
