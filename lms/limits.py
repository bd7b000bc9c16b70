"""Bounds on what a load asks for: idle TTLs, instance identifiers, context lengths.

Every path that loads a model (HTTP, SDK frames, the control socket, the CLI) reaches these
checks, so a value is refused the same way wherever it comes from: a 400 ``invalid_parameter``
naming the field the client sent (``ttl``, ``ttlMs``, ``identifier``, ``context_length``...).
Nothing is clamped. The bounds are listed in docs/LIMITS.md. Stdlib only, so the CLI can check
its options before it talks to the daemon.
"""

from __future__ import annotations

import math
from typing import Final

from lms.errors import InvalidParameterError

#: The longest idle TTL a load may ask for: 30 days.
MAX_TTL_SECONDS: Final = 30 * 24 * 3600
#: The longest instance identifier, in characters.
MAX_IDENTIFIER_LENGTH: Final = 128
#: The smallest context length a load may ask for.
MIN_CONTEXT_LENGTH: Final = 16


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ttl(value: object, param: str = "ttl") -> int:
    """An idle TTL in whole seconds: an integer from 1 to :data:`MAX_TTL_SECONDS`."""
    if not _is_integer(value):
        raise InvalidParameterError(f"'{param}' must be a whole number of seconds", param=param)
    assert isinstance(value, int)
    if not 1 <= value <= MAX_TTL_SECONDS:
        raise InvalidParameterError(
            f"'{param}' must be between 1 and {MAX_TTL_SECONDS} seconds (30 days)", param=param
        )
    return value


def ttl_from_milliseconds(value: object, param: str = "ttlMs") -> int:
    """An idle TTL given in milliseconds (the SDK's ``ttlMs``), as whole seconds rounded up.

    Positive, finite and at most 30 days; NaN and the infinities are refused, never rounded.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidParameterError(f"'{param}' must be a number of milliseconds", param=param)
    finite = isinstance(value, int) or math.isfinite(value)  # math.isfinite(10**400) raises
    if not finite or not 0 < value <= MAX_TTL_SECONDS * 1000:
        raise InvalidParameterError(
            f"'{param}' must be more than 0 and at most {MAX_TTL_SECONDS * 1000} milliseconds"
            " (30 days)",
            param=param,
        )
    return max(1, math.ceil(value / 1000))


def check_identifier(value: object, param: str = "identifier") -> str:
    """An instance identifier: 1 to :data:`MAX_IDENTIFIER_LENGTH` printable characters.

    Printable is :meth:`str.isprintable`: no control or format characters, no surrogates, no
    line or paragraph separators and no whitespace other than the ASCII space, which may appear
    inside but not at either end.
    """
    if not isinstance(value, str):
        raise InvalidParameterError(f"'{param}' must be a string", param=param)
    if not 1 <= len(value) <= MAX_IDENTIFIER_LENGTH:
        raise InvalidParameterError(
            f"'{param}' must be 1 to {MAX_IDENTIFIER_LENGTH} characters long", param=param
        )
    if not value.isprintable() or value != value.strip():
        raise InvalidParameterError(
            f"'{param}' must be printable text (no control characters, no surrogates, no"
            " leading or trailing spaces)",
            param=param,
        )
    return value


def check_context_length(value: object, ceiling: int, param: str = "context_length") -> int:
    """A requested context length: an integer from 16 to ``ceiling`` (the
    ``models.max_context_length`` setting)."""
    if not _is_integer(value):
        raise InvalidParameterError(f"'{param}' must be a whole number of tokens", param=param)
    assert isinstance(value, int)
    if not MIN_CONTEXT_LENGTH <= value <= ceiling:
        raise InvalidParameterError(
            f"'{param}' must be between {MIN_CONTEXT_LENGTH} and {ceiling} tokens"
            " (models.max_context_length)",
            param=param,
        )
    return value
