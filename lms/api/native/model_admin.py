"""Model management on the native API: load, unload, download and its status (docs/API.md,
Model load and unload; Downloads).

All four routes need the ``models`` permission (the route table in ``lms.auth.permissions``).
Load and unload resolve names among the models the token may use: a model or instance outside
its allowlist answers exactly like a missing one (404), and the lists in those errors name only
what the token may use. ``ttl``, ``identifier`` and ``context_length`` are bounded by the
manager (docs/LIMITS.md).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lms import protocol
from lms.api import bodies, instances
from lms.api.security import check_model, model_filter
from lms.api.state import DOWNLOADS, MANAGER
from lms.download.jobs import AlreadyDownloaded, Job
from lms.errors import (
    InstanceNotFoundError,
    InvalidParameterError,
    MissingParameterError,
)
from lms.inference.manager import Instance

routes = web.RouteTableDef()

#: How long ``POST /api/v1/models/download`` waits for the server's first answer, so that its
#: job already shows the file's size (or the failure), as LM Studio's does.
DOWNLOAD_ANSWER_SECONDS = 10.0

# llama.cpp load knobs of LM Studio's load route that lms accepts but decides itself (type-checked).
_IGNORED_LOAD_FIELDS: tuple[tuple[str, type], ...] = (
    ("eval_batch_size", int),
    ("flash_attention", bool),
    ("num_experts", int),
    ("offload_kv_cache_to_gpu", bool),
)


def _load_config(instance: Instance) -> dict[str, Any]:
    """LM Studio's ``load_config``: only the keys that apply to the instance's mode."""
    return instance.load_config()


@routes.post(protocol.API_NATIVE_LOAD)
async def load(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    query = bodies.require(body, "model", str)
    instances.refuse_remote(request, query, "Loading", "model")
    context_length = bodies.get(body, "context_length", int)
    ttl = bodies.get(body, "ttl", int)
    identifier = bodies.get(body, "identifier", str)
    echo = bodies.get(body, "echo_load_config", bool, False)
    for name, kind in _IGNORED_LOAD_FIELDS:
        bodies.get(body, name, kind)
    parallel = bodies.get(body, "parallel", int)
    draft_model = bodies.draft_model(body)
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    manager.check_request(ttl=ttl, context_length=context_length)
    if identifier is not None:
        manager.check_identifier(identifier, allowed)
    model = await manager.resolve(
        query, allowed, hidden=lambda: instances.audit_hidden(request, query)
    )
    check_model(request, model.key)
    instance = await manager.load(
        model,
        context_length=context_length,
        ttl=ttl,
        identifier=identifier,
        parallel=parallel,
        allowed=allowed,
        draft_model=draft_model,
        drafts=instances.drafts(request),
    )
    answer: dict[str, Any] = {
        "type": instance.model.type,
        "instance_id": instance.identifier,
        "load_time_seconds": round(instance.load_time, 3),
        "status": "loaded",
    }
    if echo:
        answer["load_config"] = _load_config(instance)
    return web.json_response(answer)


@routes.post(protocol.API_NATIVE_UNLOAD)
async def unload(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    instance_id = bodies.require(body, "instance_id", str)
    instances.refuse_remote(request, instance_id, "Unloading", "instance_id")
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    instance = manager.find_instance(instance_id)
    if instance is None or not allowed(instance.model.key):
        if instance is not None:
            instances.audit_hidden(request, instance_id)
        visible = [i.identifier for i in manager.instances() if allowed(i.model.key)]
        loaded = ", ".join(visible) or "none"
        raise InstanceNotFoundError(
            f'no loaded instance "{instance_id}" (loaded: {loaded})', param="instance_id"
        )
    check_model(request, instance.model.key)
    await manager.unload(instance_id)
    return web.json_response({"instance_id": instance_id})


@routes.post(protocol.API_NATIVE_DOWNLOAD)
async def download(request: web.Request) -> web.Response:
    body = await bodies.read_json(request)
    url = bodies.get(body, "url", str)
    model = bodies.get(body, "model", str)
    if url and model and url != model:
        raise InvalidParameterError("give the URL in 'model' or in 'url', not both", param="url")
    source = url or model
    if not source:
        raise MissingParameterError("'model' (the URL of a .gguf file) is required", param="model")
    return web.json_response((await start_download(request, source, body)).to_json())


async def start_download(
    request: web.Request, source: str, body: dict[str, Any]
) -> Job | AlreadyDownloaded:
    """Start downloading ``source`` with the body's ``sha256``, ``size``, ``publisher`` and
    ``name`` (this route's and the control socket's), and wait up to
    :data:`DOWNLOAD_ANSWER_SECONDS` for the server's first answer."""
    downloads = request.app[DOWNLOADS]
    outcome = await downloads.start(
        source,
        sha256=bodies.get(body, "sha256", str),
        size=bodies.get(body, "size", int),
        publisher=bodies.get(body, "publisher", str),
        name=bodies.get(body, "name", str),
    )
    if isinstance(outcome, Job):
        await downloads.wait_answered(outcome, DOWNLOAD_ANSWER_SECONDS)
    return outcome


@routes.get(protocol.API_NATIVE_DOWNLOAD_STATUS)
async def download_status(request: web.Request) -> web.Response:
    job = request.app[DOWNLOADS].get(request.match_info["job_id"])
    return web.json_response(job.to_json())
