"""Model records as the SDK parses them (docs/API.md, SDK endpoints), and the KV configs of an
instance.

The SDK validates these with msgspec: required fields, JSON integers for sizes and lengths,
enum values and a ``type`` tag matching the namespace (SDK rule 6). A model's ``path`` is its
place under the models folder (``publisher/name/file.gguf``), never an absolute path.
"""

from __future__ import annotations

from typing import Any, Literal

from lms.inference.catalog import ModelFile
from lms.inference.embedder import Embedder
from lms.inference.manager import Instance
from lms.remote.models import RemoteModel

Kind = Literal["llm", "embedding"]

#: The context length announced for a model whose GGUF does not say.
FALLBACK_CONTEXT = 2048


def model_path(model: ModelFile) -> str:
    """LM Studio's model path: the file's path under the models folder (docs/MODELS.md)."""
    return model.relative_path or f"{model.publisher}/{model.name}/{model.path.name}"


def model_info(model: ModelFile, kind: Kind | None = None) -> dict[str, Any]:
    """``LlmInfo`` or ``EmbeddingModelInfo`` of a downloaded model, as ``kind`` (default: the
    model's own type; any model can also be used in embedding mode)."""
    kind = kind or model.type
    info: dict[str, Any] = {
        "type": kind,
        "modelKey": model.key,
        "format": "gguf",
        "displayName": model.display_name,
        "path": model_path(model),
        "sizeBytes": int(model.size_bytes),
        "maxContextLength": int(model.max_context_length or FALLBACK_CONTEXT),
    }
    if model.params_string:
        info["paramsString"] = model.params_string
    if model.architecture:
        info["architecture"] = model.architecture
    if kind == "llm":
        info["vision"] = bool(model.vision)
        info["trainedForToolUse"] = bool(model.trained_for_tool_use)
    return info


def instance_reference(instance: Instance) -> str:
    """An opaque name of this very instance (a reload under the same identifier gets another)."""
    return f"{instance.identifier}#{int(instance.loaded_at * 1_000_000):x}"


def instance_info(instance: Instance | RemoteModel) -> dict[str, Any]:
    """``LlmInstanceInfo`` or ``EmbeddingModelInstanceInfo`` of a loaded instance (or of a
    remote model, always loaded)."""
    if isinstance(instance, RemoteModel):
        return _remote_instance_info(instance)
    return {
        **model_info(instance.model, instance.type),
        "identifier": instance.identifier,
        "instanceReference": instance_reference(instance),
        "contextLength": int(instance.context_length),
    }


#: How an instance reference of a remote model starts (the model key follows).
REMOTE_REFERENCE = "remote:"


def remote_model_info(model: RemoteModel) -> dict[str, Any]:
    """``LlmInfo`` of a remote engine's model. The SDK's schema has no remote format and no
    field saying where a model runs: ``format`` is ``gguf`` (a value it accepts), ``path`` the
    key, ``sizeBytes`` 0 (unknown), the display name says ``(remote NAME)``, and an extra
    ``remote`` member (ignored by the SDK) names the remote."""
    return {
        "type": "llm",
        "modelKey": model.key,
        "format": "gguf",
        "displayName": f"{model.model.upstream_id} (remote {model.model.remote})",
        "path": model.key,
        "sizeBytes": 0,
        "maxContextLength": int(model.context_length),
        "vision": False,
        "trainedForToolUse": bool(model.model.trained_for_tool_use),
        "remote": model.model.remote,
    }


def _remote_instance_info(model: RemoteModel) -> dict[str, Any]:
    """``LlmInstanceInfo`` of a remote model: always "loaded" (its upstream keeps it ready),
    identified by its key."""
    return {
        **remote_model_info(model),
        "identifier": model.key,
        "instanceReference": REMOTE_REFERENCE + model.key,
        "contextLength": int(model.context_length),
    }


def _remote_load_config(model: RemoteModel) -> dict[str, Any]:
    """A remote model's load settings: its context length (what the upstream says, else
    :data:`lms.remote.models.DEFAULT_CONTEXT_LENGTH`)."""
    return {"fields": [{"key": "llm.load.contextLength", "value": int(model.context_length)}]}


def load_config(instance: Instance | RemoteModel) -> dict[str, Any]:
    """The instance's load settings as a KV config (``getLoadConfig``, ``loadModelConfig``)."""
    if isinstance(instance, RemoteModel):
        return _remote_load_config(instance)
    backend = instance.backend
    if isinstance(backend, Embedder):
        return {"fields": [{"key": "embedding.load.contextLength", "value": backend.n_ctx}]}
    return {
        "fields": [
            {"key": "llm.load.contextLength", "value": backend.n_ctx_per_seq},
            {"key": "llm.load.llama.evalBatchSize", "value": backend.options.batch_size},
            {"key": "llm.load.llama.flashAttention", "value": backend.options.flash_attention},
        ]
    }
