"""Bounds on what becomes an output grammar: JSON schemas, their grammars, and raw GBNF.

llama.cpp parses a grammar recursively, one C stack frame chain per level of parentheses
(about 400 bytes a level: ~17,000 levels overflow an 8 MiB stack and kill the process), and
llama-cpp-python's JSON-schema converter writes ``maxLength: n`` (``minItems``, ``{m,n}`` in a
``pattern``...) as ``n`` nested groups or ``n`` copies of a rule: ``maxLength: 30000`` was a
SIGSEGV, ``1e8`` 20 s of CPU and 3 GB. So everything is measured *before* it reaches the
converter or llama.cpp, and refused with a 400 naming the field — never clamped:

- a schema: nesting depth, node count, each repetition keyword, their total, each ``pattern``
  with its quantifiers multiplied out (:func:`check_schema`);
- a grammar (converted or raw): characters, rules, parenthesis depth, each ``{m,n}`` count
  (:func:`check_grammar`), then llama.cpp's own parser where that is cheap (:func:`parse`).

Every bound is listed in ``docs/LIMITS.md``. All of this is CPU work: callers run it off the
event loop.
"""

from __future__ import annotations

import re
from typing import Any

from lms.errors import InvalidParameterError

MAX_SCHEMA_DEPTH = 32  # nested objects/arrays of the schema document itself
MAX_SCHEMA_NODES = 20_000  # values (objects, arrays, scalars) in one schema
MAX_REPETITIONS = 1_000  # each minLength/maxLength/minItems/maxItems/..., each {m,n}
MAX_SCHEMA_REPETITIONS = 20_000  # all of a schema's repetition counts added up
MAX_PATTERN_SIZE = 4_000  # a pattern's atoms, with its quantifiers multiplied out
# The converter's rules for optional properties grow with the square of their number (900 of
# them: 4 s of CPU), so they are counted apart from required ones.
MAX_OPTIONAL_PROPERTIES = 128  # in one object
MAX_SCHEMA_OPTIONAL_PROPERTIES = 1_024  # in all the schema's objects
MAX_GRAMMAR_CHARS = 512 * 1024
MAX_GRAMMAR_RULES = 2_048  # "name ::= ..." definitions
MAX_GRAMMAR_DEPTH = 1_024  # nested parentheses: ~0.4 MiB of C stack in llama.cpp's parser

# Keywords the converter expands into that many copies or nested groups.
_REPETITION_KEYWORDS = frozenset(("minLength", "maxLength", "minItems", "maxItems"))
# Keywords holding data, not schemas: their contents are counted but not read as keywords.
_DATA_KEYWORDS = frozenset(("enum", "const", "default", "examples"))
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:(,)\s*(\d*)\s*)?\}")


def _refuse(param: str, what: str) -> InvalidParameterError:
    return InvalidParameterError(f"'{param}' {what}", param=param)


def check_schema(schema: Any, *, param: str, for_grammar: bool = True) -> int:
    """Refuse a schema past the bounds (a 400 naming ``param``); return its repetition total.

    The walk is iterative, so a schema nested thousands of levels is refused, not a
    RecursionError. Without ``for_grammar`` only depth and size are checked (a tool only shown
    in the prompt needs no grammar, so its ``maxLength`` is the model's business).
    """
    total = optional = nodes = 0
    stack: list[tuple[Any, int, bool]] = [(schema, 1, False)]
    while stack:
        node, depth, is_data = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise _refuse(param, f"has more than {MAX_SCHEMA_NODES:,} values")
        if isinstance(node, list):
            if depth > MAX_SCHEMA_DEPTH:
                raise _refuse(param, f"is nested deeper than {MAX_SCHEMA_DEPTH} levels")
            stack.extend((item, depth + 1, is_data) for item in node)
        elif isinstance(node, dict):
            if depth > MAX_SCHEMA_DEPTH:
                raise _refuse(param, f"is nested deeper than {MAX_SCHEMA_DEPTH} levels")
            if for_grammar and not is_data:
                optional += _optional_properties(node, param)
                if optional > MAX_SCHEMA_OPTIONAL_PROPERTIES:
                    raise _refuse(
                        param,
                        f"has more than {MAX_SCHEMA_OPTIONAL_PROPERTIES:,} optional properties"
                        " in all (not in 'required'); output grammars allow no more",
                    )
            for key, value in node.items():
                if for_grammar and not is_data:
                    total += _repetitions(key, value, param)
                child_is_data = is_data or key in _DATA_KEYWORDS
                stack.append((value, depth + 1, child_is_data))
    if total > MAX_SCHEMA_REPETITIONS:
        raise _refuse(
            param,
            f"asks for {total:,} repetitions in all (minLength, maxItems, pattern counts...);"
            f" at most {MAX_SCHEMA_REPETITIONS:,} can become a grammar",
        )
    return total


def _optional_properties(node: dict[Any, Any], param: str) -> int:
    """How many of an object schema's ``properties`` are not ``required``."""
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return 0
    required = node.get("required")
    names = {n for n in required if isinstance(n, str)} if isinstance(required, list) else set()
    count = sum(1 for name in properties if name not in names)
    if count > MAX_OPTIONAL_PROPERTIES:
        raise _refuse(
            param,
            f"has an object with {count:,} optional properties (not in 'required'); output"
            f" grammars allow at most {MAX_OPTIONAL_PROPERTIES:,} per object",
        )
    return count


def _repetitions(key: Any, value: Any, param: str) -> int:
    """What one keyword adds to the repetition total (refusing one past the bound)."""
    if key in _REPETITION_KEYWORDS and isinstance(value, (int, float)):
        if isinstance(value, bool) or not 0 <= value <= MAX_REPETITIONS:
            raise _refuse(
                param,
                f"has {key} {value!r}: output grammars allow 0 to {MAX_REPETITIONS:,}",
            )
        return int(value)
    if key == "pattern" and isinstance(value, str):
        return pattern_size(value, param=param)
    return 0


def pattern_size(pattern: str, *, param: str) -> int:
    """The atoms of a regular expression with its quantifiers multiplied out (what the
    converter writes out); a 400 naming ``param`` past :data:`MAX_PATTERN_SIZE` or for a
    quantifier count past :data:`MAX_REPETITIONS`."""
    if len(pattern) > MAX_PATTERN_SIZE:
        raise _refuse(param, f"has a pattern longer than {MAX_PATTERN_SIZE:,} characters")
    frames: list[list[int]] = [[]]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            frames[-1].append(1)
            i += 2
            continue
        if ch == "[":
            i = _class_end(pattern, i)
            frames[-1].append(1)
            continue
        if ch == "(":
            if len(frames) > MAX_GRAMMAR_DEPTH:
                raise _refuse(param, f"has a pattern nested deeper than {MAX_GRAMMAR_DEPTH}")
            frames.append([])
        elif ch == ")" and len(frames) > 1:
            group = frames.pop()
            frames[-1].append(min(MAX_PATTERN_SIZE + 1, max(1, sum(group))))
        elif ch == "{" and (match := _QUANTIFIER.match(pattern, i)) is not None:
            low, _, high = match.groups()
            counts = [int(n) for n in (low, high) if n]
            if any(n > MAX_REPETITIONS for n in counts):
                raise _refuse(
                    param,
                    f"has a pattern repeating {max(counts):,} times: output grammars allow"
                    f" at most {MAX_REPETITIONS:,}",
                )
            if frames[-1] and counts:
                frames[-1][-1] = min(MAX_PATTERN_SIZE + 1, frames[-1][-1] * max(1, *counts))
            i = match.end()
            continue
        elif ch not in "|*+?^$":
            frames[-1].append(1)
        i += 1
    size = sum(sum(frame) for frame in frames)
    if size > MAX_PATTERN_SIZE:
        raise _refuse(
            param,
            f"has a pattern of more than {MAX_PATTERN_SIZE:,} characters once its repetitions"
            " are written out",
        )
    return size


def _class_end(text: str, start: int) -> int:
    """The index just past the character class opening at ``start`` (``[...]``)."""
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text) and text[i] != "]":
        i += 2 if text[i] == "\\" else 1
    return i + 1


def check_grammar(grammar: str, *, param: str) -> None:
    """Refuse GBNF past the bounds: size, rule count, parenthesis depth, ``{m,n}`` counts.

    A light scan (strings, character classes and comments skipped), not a parser: whatever it
    lets through is small and shallow enough for llama.cpp's parser to judge safely.
    """
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise _refuse(
            param,
            f"makes a grammar of {len(grammar):,} characters; at most {MAX_GRAMMAR_CHARS:,}"
            " are allowed",
        )
    depth = rules = 0
    i, n = 0, len(grammar)
    while i < n:
        ch = grammar[i]
        if ch == '"':
            i += 1
            while i < n and grammar[i] != '"':
                i += 2 if grammar[i] == "\\" else 1
        elif ch == "[":
            i = _class_end(grammar, i) - 1
        elif ch == "#":
            while i < n and grammar[i] not in "\r\n":
                i += 1
        elif ch == "(":
            depth += 1
            if depth > MAX_GRAMMAR_DEPTH:
                raise _refuse(
                    param,
                    f"makes a grammar nested deeper than {MAX_GRAMMAR_DEPTH:,} parentheses",
                )
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == ":" and grammar.startswith("::=", i):
            rules += 1
            if rules > MAX_GRAMMAR_RULES:
                raise _refuse(param, f"makes a grammar of more than {MAX_GRAMMAR_RULES:,} rules")
            i += 2
        elif ch == "{" and (match := _QUANTIFIER.match(grammar, i)) is not None:
            counts = [int(x) for x in (match.group(1), match.group(3)) if x]
            if any(c > MAX_REPETITIONS for c in counts):
                raise _refuse(
                    param,
                    f"repeats a part {max(counts):,} times; grammars allow at most"
                    f" {MAX_REPETITIONS:,}",
                )
            i = match.end() - 1
        i += 1


def parse(grammar: str, *, param: str) -> None:
    """Let llama.cpp's parser judge a bounded grammar: a 400 naming ``param`` when it is not
    GBNF with a ``root`` rule. Token references (``<...>``) need a model's vocabulary, so a
    grammar using them is left to the engine's own check when the generation is submitted."""
    if "<" in grammar:
        return
    from lms.inference.choice import is_valid_grammar  # llama_cpp: only for grammar users

    if not is_valid_grammar(grammar):
        raise _refuse(param, "is not a valid GBNF grammar with a 'root' rule")


def gbnf_grammar(value: Any, *, param: str) -> str:
    """A raw GBNF grammar from a request: a non-empty string within the bounds that llama.cpp
    parses (a 400 naming ``param`` otherwise)."""
    if not isinstance(value, str) or not value.strip():
        raise _refuse(param, "must be a non-empty GBNF grammar")
    check_grammar(value, param=param)
    parse(value, param=param)
    return value
