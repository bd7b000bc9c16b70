"""Hypothesis strategies of hostile JSON values: wrong types, extreme numbers, deep nesting, huge
strings, lone surrogates, NULs and control characters, pathological JSON schemas and GBNF
grammars. Sizes are bounded so that one case stays fast (a few MB at most)."""

from __future__ import annotations

from typing import Any

from fuzz_rawjson import Raw, encode, nested_arrays, nested_objects
from hypothesis import strategies as st

# --- numbers ----------------------------------------------------------------------------------

_NUMBER_TEXTS = [
    "1e400",
    "-1e400",
    "1e-400",
    "1E+308",
    "1.7976931348623157e308",
    "4.9e-324",
    "-0",
    "-0.0",
    "NaN",
    "Infinity",
    "-Infinity",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "-18446744073709551616",
    "2147483647",
    "2147483648",
    "4294967296",
    "1.0",
    "1e2",
    "0.5e1",
    "1" + "0" * 400,
    "-1" + "0" * 400,
    "0." + "0" * 400 + "1",
    "1" * 5000,
]

big_number = st.one_of(
    st.sampled_from(_NUMBER_TEXTS).map(Raw),
    st.integers(min_value=17, max_value=5000).map(lambda n: Raw("1" + "0" * n)),
    st.integers(min_value=17, max_value=5000).map(lambda n: Raw("-9" + "9" * n)),
    st.integers(min_value=300, max_value=100_000).map(lambda n: Raw(f"1e{n}")),
)

plain_number = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1, 2, 16, 100_000, 10**9, -(10**9), 0.5, -0.5, 1e-9, 1e300]),
)

number = st.one_of(plain_number, big_number)

# --- strings ----------------------------------------------------------------------------------

_TRICKY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1b[31mred\x1b[0m",
    "\r\n\t\x0b\x0c",
    "\u2028\u2029",
    "\ufeff",
    "\uffff",
    "\U0001f600" * 50,
    "../../../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\system32",
    "%s%s%n%x",
    "{{ 7 * 7 }}",
    "{% for x in range(99999999) %}{% endfor %}",
    "${jndi:ldap://127.0.0.1:1/a}",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "sk-lm-AbCdEfGh:AbCdEfGhIjKlMnOpQrSt",
    "http://127.0.0.1:1/x.gguf",
    "https://localhost:1/model.gguf",
    "file:///etc/passwd",
    "mcp/../../x",
    "google/gemma-3-270m",
    "google/gemma-3-270m:2",
    "gemma",
    "*",
    "?",
    "null",
    "true",
    "0",
    "-1",
]

_SURROGATE_TEXTS = [
    '"\\ud800"',
    '"\\udfff"',
    '"a\\ud800b"',
    '"\\udc00\\ud800"',
    '"\\ud83d"',
    '"x\\ud800\\u0000"',
    '"\\u0000"',
    '"\\u001f"',
    '"\\uFFFE"',
]

huge_string = st.one_of(
    st.integers(min_value=1_000, max_value=300_000).map(lambda n: "a" * n),
    st.integers(min_value=1_000, max_value=50_000).map(lambda n: "\U0001f600" * n),
    st.integers(min_value=1_000, max_value=50_000).map(lambda n: "\x00" * n),
    st.integers(min_value=100, max_value=20_000).map(lambda n: "hello " * n),
)

surrogate = st.one_of(
    st.sampled_from(_SURROGATE_TEXTS).map(Raw),
    st.integers(min_value=0xD800, max_value=0xDFFF).map(lambda c: Raw(f'"x\\u{c:04x}"')),
)

text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
    st.sampled_from(_TRICKY_STRINGS),
)

string = st.one_of(text, huge_string, surrogate)

# --- nesting and containers -------------------------------------------------------------------

_DEPTHS = [63, 64, 65, 100, 300, 990, 1000, 5000, 100_000]

deep = st.one_of(
    st.sampled_from(_DEPTHS).map(nested_arrays),
    st.sampled_from(_DEPTHS).map(nested_objects),
    st.integers(min_value=1, max_value=200_000).map(nested_arrays),
    st.sampled_from(_DEPTHS).map(lambda d: Raw('{"a":[' * d + "0" + "]}" * d)),
)

broken_json = st.sampled_from(
    [
        Raw("[1,2"),
        Raw("{"),
        Raw('"unterminated'),
        Raw("01"),
        Raw("[1,]"),
        Raw("{'a': 1}"),
        Raw("undefined"),
        Raw("0x10"),
        Raw("+1"),
        Raw(".5"),
        Raw('"\\x41"'),
        Raw('"\\u12"'),
        Raw('{"a":1,"a":2}'),
        Raw('"\t"'),
    ]
)

big_container = st.one_of(
    st.integers(min_value=1_000, max_value=100_000).map(
        lambda n: Raw("[" + ",".join(["0"] * n) + "]")
    ),
    st.integers(min_value=1_000, max_value=50_000).map(
        lambda n: Raw("{" + ",".join(f'"k{i}":{i}' for i in range(n)) + "}")
    ),
    st.integers(min_value=100, max_value=20_000).map(
        lambda n: Raw("[" + ",".join(['""'] * n) + "]")
    ),
)

scalar = st.one_of(st.none(), st.booleans(), number, text)

wrong_type = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, [None], {"": None}]),
    plain_number,
    text,
)

small_json = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)

# --- JSON schemas -----------------------------------------------------------------------------


def _nested_schema(depth: int) -> Raw:
    head = '{"type":"object","properties":{"a":' * depth
    return Raw(head + '{"type":"string"}' + "}}" * depth)


_SCHEMAS: list[Any] = [
    {"type": "string", "maxLength": 10**12},
    {"type": "string", "minLength": 10**9},
    {"type": "string", "minLength": 100_000},
    {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
    {"type": "array", "items": {"type": "string"}, "maxItems": 10**12},
    {"type": "array", "items": {"type": "string"}, "minItems": 5000, "maxItems": 5000},
    {"type": "integer", "minimum": 10**30, "maximum": -(10**30)},
    {"type": "number", "minimum": Raw("1e400")},
    {"type": "string", "pattern": "(a+)+$"},
    {"type": "string", "pattern": "["},
    {"type": "string", "pattern": "a{1000000}"},
    {"type": "string", "format": "date-time"},
    {"$ref": "#"},
    {"$ref": "#/definitions/a", "definitions": {"a": {"$ref": "#/definitions/a"}}},
    {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
    {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]},
    {"$ref": "http://127.0.0.1:1/schema.json"},
    {"$ref": "#/nowhere"},
    {"$ref": 5},
    {"enum": []},
    {"enum": list(range(5000))},
    {"anyOf": []},
    {"oneOf": [{"type": "string"}] * 500},
    {"allOf": [{"type": "string"}, {"type": "integer"}]},
    {"not": {}},
    {"type": []},
    {"type": ["string", "null", "object", "array"]},
    {"type": "nonsense"},
    {"type": "object", "required": ["x"] * 1000},
    {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"] * 64},
    {"type": "object", "additionalProperties": {"$ref": "#"}},
    {"type": "object", "patternProperties": {"(": {"type": "string"}}},
    {"prefixItems": [{"type": "string"}] * 300, "type": "array"},
    {"const": Raw('"\\ud800"')},
    {"properties": {Raw('"\\ud800"'): {"type": "string"}}, "type": "object"},
    {"properties": {"\x00": {"type": "string"}}, "type": "object"},
    {"type": "string", "maxLength": -1},
    {"type": "string", "maxLength": "ten"},
    {"type": "string", "maxLength": Raw("1" + "0" * 400)},
    {"type": "array", "items": [{"type": "string"}] * 1000},
    {"if": {}, "then": {}, "else": {}},
    {},
    True,
    False,
    None,
    [],
    "object",
    0,
]

json_schema = st.one_of(
    st.sampled_from(_SCHEMAS),
    st.sampled_from([10, 30, 62, 63, 64, 100, 300, 1000]).map(_nested_schema),
    st.builds(
        lambda n, k: {"type": "array", "items": {"type": "string", "maxLength": k}, "maxItems": n},
        st.integers(min_value=0, max_value=2**63),
        st.integers(min_value=0, max_value=2**63),
    ),
    small_json,
)

# --- GBNF grammars ----------------------------------------------------------------------------

_GRAMMARS = [
    "",
    "root",
    "root ::=",
    "root ::= root",
    'root ::= root "a" | "a"',
    'root ::= "a" root',
    "root ::= x",
    "root ::= [",
    'root ::= "unterminated',
    'root ::= "a"{1000000}',
    'root ::= "a"{1000000,}',
    'root ::= "a"{5,1}',
    'root ::= ("a" | "b")* "\\x00"',
    "root ::= [^\\x00-\\U0010FFFF]",
    "root ::= [\\ud800]",
    'root ::= "' + "a" * 100_000 + '"',
    "root ::= " + " | ".join(f'"{i}"' for i in range(5000)),
    "root ::= " + "(" * 5000 + '"a"' + ")" * 5000,
    "root ::= " + "(" * 300 + '"a"' + ")" * 300,
    "\n".join(f"r{i} ::= r{i + 1}" for i in range(2000)) + '\nr2000 ::= "a"\nroot ::= r0',
    "root ::= a\na ::= b\nb ::= a",
    'root ::= "a"*****',
    'root ::= "\\',
    "root ::= \x00",
    "::= ::= ::=",
    'root ::= "a" # comment\n' * 1000,
]

gbnf = st.one_of(
    st.sampled_from(_GRAMMARS),
    st.text(max_size=200),
    st.builds(lambda n: 'root ::= "a"{' + str(n) + "}", st.integers(min_value=0, max_value=2**64)),
    st.builds(
        lambda n: "root ::= " + "(" * n + '"a"' + ")" * n,
        st.integers(min_value=1, max_value=20_000),
    ),
)

# --- any hostile value ------------------------------------------------------------------------

hostile = st.one_of(
    wrong_type,
    big_number,
    string,
    deep,
    broken_json,
    big_container,
    small_json,
)


def as_text(value: Any) -> str:
    """Readable form of a generated value (for figures and failure lists)."""

    shown = encode(value)
    return shown if len(shown) <= 300 else f"{shown[:240]}...<{len(shown)} chars>"
