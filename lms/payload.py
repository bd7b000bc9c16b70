"""Decoding untrusted JSON (request bodies, SDK frames) within bounds (stdlib only).

Every byte from the network is hostile, so a decoded value is checked before any handler sees
it, and each failure is a 400 that names the field:

* nesting deeper than :data:`MAX_DEPTH` (objects and arrays) is refused, instead of a
  ``RecursionError`` deep in a handler (or in the JSON scanner itself);
* an integer outside ±:data:`INT_LIMIT` is refused (``1`` followed by 400 zeros would otherwise
  overflow the first ``float()`` that touches it);
* ``NaN``, ``Infinity`` and numbers too large for a double (``1e400``) are refused;
* a lone UTF-16 surrogate (``"\\ud800"``) in any string or key is refused: it is not Unicode,
  and nothing downstream (the tokenizer, a log line, a SQLite row) can encode it.

Every bound is listed in ``docs/LIMITS.md``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from lms.errors import InvalidJsonError, InvalidParameterError

#: Deepest nesting of objects and arrays accepted in a request body or SDK frame.
MAX_DEPTH = 64
#: Integers must lie strictly between -INT_LIMIT and INT_LIMIT (64-bit, signed or not).
INT_LIMIT = 2**64

_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(raw: bytes | str, *, what: str = "the request body") -> Any:
    """Decode ``raw`` and :func:`check` the value; :class:`InvalidJsonError` or
    :class:`InvalidParameterError` (naming the field) on anything out of bounds."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidJsonError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJsonError(f"{what} is not valid JSON: {exc}") from None
    except ValueError:  # an integer literal past Python's 4,300-digit conversion limit
        raise InvalidJsonError(
            f"{what} holds an integer far beyond 64 bits (integers must fit in 64 bits)"
        ) from None
    check(value, what=what)
    return value


def check(value: Any, *, what: str = "the request body") -> None:
    """Walk a decoded value (iteratively: no recursion of ours to exhaust) and refuse what
    :func:`loads` refuses."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict):
            if depth >= MAX_DEPTH:
                raise InvalidJsonError(
                    f"{what} is nested deeper than {MAX_DEPTH} levels (at '{path}')"
                )
            for key, item in node.items():
                child = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    raise InvalidParameterError(
                        f"a key in '{path or 'the body'}' is not valid Unicode (a lone surrogate)",
                        param=path or None,
                    )
                stack.append((item, child, depth + 1))
        elif isinstance(node, list):
            if depth >= MAX_DEPTH:
                raise InvalidJsonError(
                    f"{what} is nested deeper than {MAX_DEPTH} levels (at '{path}')"
                )
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node))
        elif isinstance(node, str):
            if _SURROGATE.search(node):
                raise InvalidParameterError(
                    f"'{path}' is not valid Unicode (it contains a lone surrogate)",
                    param=path or None,
                )
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int):
            if not -INT_LIMIT < node < INT_LIMIT:
                raise InvalidParameterError(
                    f"'{path}' is out of range (integers must fit in 64 bits)",
                    param=path or None,
                )
        elif isinstance(node, float) and not math.isfinite(node):
            raise InvalidParameterError(
                f"'{path}' must be a finite number (not NaN, Infinity or beyond 1.8e308)",
                param=path or None,
            )


def is_valid_text(text: str) -> bool:
    """Whether ``text`` is encodable Unicode (no lone surrogate)."""
    return _SURROGATE.search(text) is None
