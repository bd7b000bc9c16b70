"""OpenAI-compatible ``POST /v1/embeddings`` (docs/API.md, Embeddings).

The request's model is served by an embedding-mode instance of it, loaded just in time when
needed (see ``lms.inference.manager`` for identifiers and keep-last-JIT). Vectors are
L2-normalised means of the model's final hidden states (``lms.inference.embedder``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiohttp import web

from lms import protocol
from lms.api import bodies, instances
from lms.api.openai import remote
from lms.api.security import record_generation
from lms.errors import InvalidParameterError
from lms.inference.embedder import EmbeddingInput, Vector

routes = web.RouteTableDef()

#: Inputs one request may carry (OpenAI's limit).
MAX_INPUTS = 2048


def parse_input(value: Any) -> list[EmbeddingInput]:
    """``input``: a string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise InvalidParameterError(
            "'input' must be a non-empty string, a list of strings, or a list of token arrays",
            param="input",
        )
    if len(value) > MAX_INPUTS:
        raise InvalidParameterError(
            f"'input' holds {len(value)} items; at most {MAX_INPUTS} per request", param="input"
        )
    if all(_is_token(v) for v in value):
        return [list(value)]
    parsed: list[EmbeddingInput] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            parsed.append(item)
        elif isinstance(item, list) and item and all(_is_token(v) for v in item):
            parsed.append(list(item))
        else:
            raise InvalidParameterError(
                f"'input[{i}]' must be a string or a non-empty array of token ids", param="input"
            )
    return parsed


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode(vector: Vector, encoding: str) -> list[float] | str:
    if encoding == "base64":  # what OpenAI sends: little-endian float32, base64
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    floats: list[float] = vector.tolist()
    return floats


@routes.post(protocol.API_OPENAI_EMBEDDINGS)
async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await bodies.read_json(request)
    model = bodies.require(body, "model", str)
    found = instances.remote(request, model)
    if found is not None:
        return await remote.forward(request, found, body, protocol.API_OPENAI_EMBEDDINGS)
    if body.get("input") is None:
        raise InvalidParameterError("'input' is required", param="input")
    inputs = parse_input(body["input"])
    encoding = bodies.get(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise InvalidParameterError(
            "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
        )
    dimensions = bodies.get(body, "dimensions", int)
    bodies.get(body, "user", str)  # accepted, unused
    instance = await instances.acquire(
        request, model, ttl=bodies.get(body, "ttl", int), kind="embedding"
    )
    embedder = instance.embedder
    if dimensions is not None and dimensions != embedder.n_embd:
        raise InvalidParameterError(
            f"'dimensions' must be {embedder.n_embd} for {instance.model.key}"
            " (its vectors cannot be shortened)",
            param="dimensions",
        )
    result = await embedder.embed(inputs)
    instance.touch()
    record_generation(request, result.total_tokens, 0)
    return web.json_response(
        {
            "object": "list",
            "data": _data(result.vectors, encoding or "float"),
            "model": instance.model.key,
            "usage": {"prompt_tokens": result.total_tokens, "total_tokens": result.total_tokens},
        }
    )


def _data(vectors: Sequence[Vector], encoding: str) -> list[dict[str, Any]]:
    return [
        {"object": "embedding", "embedding": _encode(np.asarray(v), encoding), "index": i}
        for i, v in enumerate(vectors)
    ]
