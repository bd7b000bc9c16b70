"""JSON text with parts that ``json.dumps`` cannot write: numbers past any float (``1e400``, a
1 followed by 400 zeros), ``NaN``, lone surrogate escapes (``"\\ud800"``), nesting thousands of
levels deep. A body is built from plain values plus :class:`Raw` fragments and encoded here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Raw:
    """A fragment of JSON text placed as is (it may be invalid JSON on purpose)."""

    text: str

    def __repr__(self) -> str:  # keeps Hypothesis's falsifying examples short and readable
        shown = self.text if len(self.text) <= 80 else f"{self.text[:60]}...<{len(self.text)}>"
        return f"Raw({shown!r})"


def encode(value: Any) -> str:
    """JSON text of ``value``; :class:`Raw` fragments go in verbatim, also as object keys.

    Iterative, so a deep value built of plain containers cannot exhaust this process's stack.
    """
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (_Text, Raw)):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = [_Text("{")]
            for i, (key, inner) in enumerate(item.items()):
                if i:
                    parts.append(_Text(","))
                parts.append(_Text(key.text if isinstance(key, Raw) else json.dumps(str(key))))
                parts.append(_Text(":"))
                parts.append(inner)
            parts.append(_Text("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, (list, tuple)):
            parts = [_Text("[")]
            for i, inner in enumerate(item):
                if i:
                    parts.append(_Text(","))
                parts.append(inner)
            parts.append(_Text("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item))
    return "".join(out)


@dataclass(frozen=True)
class _Text:
    text: str


def nested_arrays(depth: int, core: str = "0") -> Raw:
    return Raw("[" * depth + core + "]" * depth)


def nested_objects(depth: int, key: str = "a", core: str = "0") -> Raw:
    return Raw(f'{{"{key}":' * depth + core + "}" * depth)
