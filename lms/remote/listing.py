"""A remote engine's ``GET /v1/models``, read into the models lms serves (docs/REMOTES.md).

Pure: the engine fetches the list (bounded) and calls :func:`parse_models` on a worker thread.
"""

from __future__ import annotations

from typing import Any

from lms import payload
from lms.errors import LmsError
from lms.remote.models import Backend, RemoteModel, RemoteModelInfo
from lms.remoteconfig import RemoteSpec

#: Model ids kept from one upstream's list; bytes of that list; characters of one id.
MAX_MODELS = 1000
MAX_MODEL_LIST_BYTES = 1024 * 1024
MAX_MODEL_ID = 256


def parse_models(raw: bytes, spec: RemoteSpec, backend: Backend) -> dict[str, RemoteModel]:
    """The models of ``spec``'s remote in ``raw`` (OpenAI's ``{"data": [{"id": ...}]}``), by
    lower-case key ``NAME/<upstream id>``: ids its ``models`` globs allow, the first
    :data:`MAX_MODELS` entries, the first of two ids equal but for case. ValueError when
    ``raw`` is not such a list."""
    try:
        doc = payload.loads(raw, what="the model list")
    except LmsError:
        raise ValueError("its model list is not JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("its model list has no 'data' list")
    models: dict[str, RemoteModel] = {}
    for entry in data[:MAX_MODELS]:
        upstream_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(upstream_id, str) or not _is_model_id(upstream_id):
            continue
        if not spec.serves(upstream_id):
            continue
        key = f"{spec.name}/{upstream_id}"
        if key.lower() in models:
            continue
        info = RemoteModelInfo(
            key=key,
            remote=spec.name,
            upstream_id=upstream_id,
            owned_by=_text(entry.get("owned_by")) or "remote",
            context_length=_context_length(entry),
        )
        models[key.lower()] = RemoteModel(info, backend)
    return models


def _is_model_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_MODEL_ID
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 128 else None


def _context_length(entry: dict[str, Any]) -> int | None:
    """The model's context, where the upstream says it (vLLM ``max_model_len``; lms and
    others ``context_length``; llama-server ``meta.n_ctx_train``)."""
    meta = entry.get("meta")
    for value in (
        entry.get("max_model_len"),
        entry.get("context_length"),
        meta.get("n_ctx_train") if isinstance(meta, dict) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 24:
            return value
    return None
