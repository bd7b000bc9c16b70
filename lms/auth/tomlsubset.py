"""A fast reader for the TOML that :func:`lms.auth.registry.dump` writes, with tomllib as the rule.

``tomllib`` is pure Python: a registry of 1,000 tokens (about 240 kB) takes it some 60 ms, which
``lms token list`` and the daemon's reload would pay on every read. The registry always writes the
same narrow layout (through ``tomli_w``)::

    # comment
    generation = 7

    [[tokens]]
    id = "Ab3dE5fG"
    permissions = [
        "inference",
    ]
    models = []
    created_at = 2026-01-01 00:00:00+00:00
    rpm = 60

:func:`loads` reads exactly that subset, line by line, and returns None for anything else (an
escape in a string, an inline array, a CRLF, a duplicate key, a date it cannot read, ...); the
caller then uses ``tomllib``, which parses the file or says precisely what is wrong with it. So
every value returned here is the value ``tomllib`` would return for the same text: each accepted
form is plain TOML whose meaning is read off literally (basic strings without escapes, decimal
integers without leading zeros, RFC 3339 date-times, arrays of such strings).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

_KEY = r"([A-Za-z0-9_-]+)"
# A basic string without escapes: its content is its value. Tab and other control characters
# are left to tomllib.
_STRING = r'"([^"\\\x00-\x1f\x7f]*)"'
_INTEGER = r"(0|[1-9][0-9]{0,17})"
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME = r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?"
_OFFSET = r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
_DATETIME = rf"({_DATE}[T ]{_TIME}{_OFFSET})"

_VALUE_LINE = re.compile(rf"{_KEY} = (?:{_STRING}|{_INTEGER}|{_DATETIME}|(\[\])|(\[))")
_ITEM_LINE = re.compile(rf"    {_STRING},")
_COMMENT_LINE = re.compile(r"#[^\x00-\x08\x0a-\x1f\x7f]*")
_TABLE_HEADER = "[[tokens]]"
_ARRAY_END = "]"


def loads(text: str) -> dict[str, Any] | None:
    """The document ``text`` holds, or None when it is not in the registry's own layout."""
    top: dict[str, Any] = {}
    tables: list[dict[str, Any]] = []
    current = top
    lines = text.split("\n")
    index, count = 0, len(lines)
    while index < count:
        line = lines[index]
        index += 1
        if not line or _COMMENT_LINE.fullmatch(line):
            continue
        if line == _TABLE_HEADER:
            if "tokens" in top:
                return None  # `tokens = ...` and [[tokens]] clash: tomllib explains
            current = {}
            tables.append(current)
            continue
        match = _VALUE_LINE.fullmatch(line)
        if match is None:
            return None
        key, string, integer, moment, empty, opening = match.groups()
        if key in current:
            return None
        value: Any
        if string is not None:
            value = string
        elif integer is not None:
            value = int(integer)
        elif moment is not None:
            try:
                value = datetime.fromisoformat(moment)
            except ValueError:
                return None
        elif empty is not None:
            value = []
        else:
            assert opening is not None
            items: list[str] = []
            while True:
                if index >= count:
                    return None
                line = lines[index]
                index += 1
                if line == _ARRAY_END:
                    break
                item = _ITEM_LINE.fullmatch(line)
                if item is None:
                    return None
                items.append(item.group(1))
            value = items
        current[key] = value
    if tables:
        top["tokens"] = tables
    return top
