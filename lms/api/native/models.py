"""LM Studio's native REST API (``/api/v1/*``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lms import protocol
from lms.api.security import model_filter
from lms.api.state import MANAGER, REMOTES
from lms.inference.catalog import ModelFile
from lms.inference.manager import Instance
from lms.remote.models import RemoteModel

routes = web.RouteTableDef()


def _instance_json(instance: Instance) -> dict[str, Any]:
    return {"id": instance.identifier, "config": instance.load_config()}


def model_json(model: ModelFile, instances: list[Instance]) -> dict[str, Any]:
    """One element of ``GET /api/v1/models`` (docs/API.md, Native models)."""
    entry: dict[str, Any] = {
        "type": model.type,
        "publisher": model.publisher,
        "key": model.key,
        "display_name": model.display_name,
        "quantization": {"name": model.quantization, "bits_per_weight": model.bits_per_weight}
        if model.quantization
        else None,
        "size_bytes": model.size_bytes,
        "params_string": model.params_string,
        "loaded_instances": [_instance_json(i) for i in instances if i.model.key == model.key],
        "max_context_length": model.max_context_length,
        "format": "gguf",
    }
    if model.type == "llm":
        entry["architecture"] = model.architecture
        entry["capabilities"] = {
            "vision": model.vision,
            "trained_for_tool_use": model.trained_for_tool_use,
        }
        entry["description"] = None
    return entry


@routes.get(protocol.API_NATIVE_MODELS)
async def list_models(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    allowed = model_filter(request)
    instances = manager.instances()
    models = [model_json(m, instances) for m in await manager.models() if allowed(m.key)]
    models += [remote_json(m) for m in request.app[REMOTES].models() if allowed(m.key)]
    return web.json_response({"models": models})


def remote_json(model: RemoteModel) -> dict[str, Any]:
    """A remote engine's model in ``GET /api/v1/models``: ``format: "remote"`` and the remote's
    name; what the gate cannot know (size, quantization) is null."""
    return {
        "type": "llm",
        "publisher": model.model.remote,
        "key": model.key,
        "display_name": model.model.upstream_id,
        "quantization": None,
        "size_bytes": None,
        "params_string": None,
        "loaded_instances": [],
        "max_context_length": model.model.context_length,
        "format": "remote",
        "remote": model.model.remote,
        "architecture": None,
        "capabilities": {"vision": False, "trained_for_tool_use": True},
        "description": None,
    }
