"""Reading and validating JSON request bodies: every bad field gets a 400 that names it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web

from lms import limits, payload
from lms.errors import InvalidJsonError, InvalidParameterError, MissingParameterError
from lms.inference.sampling import SamplingParams

T = TypeVar("T")

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


#: Bodies larger than this are decoded on a worker thread, not on the event loop.
_DECODE_INLINE_BYTES = 64 * 1024


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, decoded within :mod:`lms.payload`'s bounds (depth, numbers,
    valid Unicode); a large body is decoded off the event loop."""
    raw = await request.read()
    if len(raw) > _DECODE_INLINE_BYTES:
        body = await asyncio.to_thread(payload.loads, raw)
    else:
        body = payload.loads(raw)
    if not isinstance(body, dict):
        raise InvalidJsonError("the request body must be a JSON object")
    return body


def get(body: Mapping[str, Any], name: str, kind: type[T], default: T | None = None) -> T | None:
    """An optional field of the given type (``null`` counts as absent)."""
    value = body.get(name)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidParameterError(
            f"'{name}' must be {_TYPE_NAMES.get(kind, kind.__name__)}", param=name
        )
    return value


def require(body: Mapping[str, Any], name: str, kind: type[T]) -> T:
    value = get(body, name, kind)
    if value is None:
        raise MissingParameterError(f"'{name}' is required", param=name)
    return value


def number_in(body: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = get(body, name, float, default)
    assert value is not None
    if not low <= value <= high:
        raise InvalidParameterError(f"'{name}' must be between {low} and {high}", param=name)
    return value


def stop_strings(body: Mapping[str, Any], name: str = "stop") -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) <= 16:
        return tuple(value)
    raise InvalidParameterError(
        f"'{name}' must be a string or a list of at most 16 strings", param=name
    )


def max_tokens(body: Mapping[str, Any], *names: str) -> int | None:
    """The generation limit; -1 or absent means "until the context is full"."""
    for name in names:
        value = get(body, name, int)
        if value is None:
            continue
        if value == -1:
            return None
        if value < 1:
            raise InvalidParameterError(f"'{name}' must be at least 1 (or -1)", param=name)
        return value
    return None


def sampling(body: Mapping[str, Any], *, max_token_fields: tuple[str, ...]) -> SamplingParams:
    """Sampling parameters shared by the OpenAI-compatible and native endpoints."""
    defaults = SamplingParams()
    seed = get(body, "seed", int)
    return SamplingParams(
        temperature=number_in(body, "temperature", 0.0, 5.0, defaults.temperature),
        top_p=number_in(body, "top_p", 0.0, 1.0, defaults.top_p),
        top_k=int(number_in(body, "top_k", 0, 100_000, defaults.top_k)),
        min_p=number_in(body, "min_p", 0.0, 1.0, defaults.min_p),
        repeat_penalty=number_in(body, "repeat_penalty", 0.0, 10.0, defaults.repeat_penalty),
        presence_penalty=number_in(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=number_in(body, "frequency_penalty", -2.0, 2.0, 0.0),
        seed=seed,
        stop=stop_strings(body),
        max_tokens=max_tokens(body, *max_token_fields),
        cache_prompt=bool(get(body, "cache_prompt", bool, True)),
        speculative=speculative(body),
        draft_model=draft_model(body),
    )


def speculative(body: Mapping[str, Any]) -> bool:
    """``speculative`` (default true): false turns every kind of speculative decoding off for
    the request. Every generating route of every family reads it."""
    return bool(get(body, "speculative", bool, True))


def draft_model(body: Mapping[str, Any]) -> str | None:
    """``draft_model``: the key of a model that guesses tokens for this request's model, an
    identifier within :func:`lms.limits.check_identifier`'s bounds. Together with
    ``"speculative": false`` it is a contradiction, refused rather than one of them ignored."""
    value = body.get("draft_model")
    if value is None:
        return None
    key = limits.check_identifier(value, "draft_model")
    if not speculative(body):
        raise InvalidParameterError(
            "'draft_model' asks for speculative decoding, but 'speculative' is false, which"
            " turns it off: send one or the other",
            param="draft_model",
        )
    return key
