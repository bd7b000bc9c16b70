"""Scrubbing of text that leaves the daemon: log lines, log-stream events, error bodies.

Anything that could be a secret is replaced before it is written anywhere (docs/LIMITS.md):

- a token-shaped value (``sk-lm-<id>:<secret>``, also truncated, mangled or URL-encoded) keeps
  only its public id: ``sk-lm-<id>:***``;
- the credentials after ``Bearer``/``Basic`` (8 characters or more), and the value after
  ``Authorization``, ``x-api-key``, ``api_key``, ``passkey``, ``password``, ``secret`` and
  similar keys (``key: v``, ``key=v``, ``"key": "v"``);
- any run of 20 or more letters and digits (a bare secret, possibly glued to an escape such as
  ``\\x01`` by a ``repr``), except hexadecimal digests (32 hex digits or more) and words or
  camelCase identifiers (``predictedTokensCount``).

:func:`escape_controls` then makes one record one line: CR, LF and every other C0/C1 control
character (and the Unicode line and paragraph separators) become visible escapes, so a ``%0a``
in a path cannot forge a log line.
"""

from __future__ import annotations

import re
from typing import Any

PLACEHOLDER = "***"
#: Longest request path written to a log line or quoted in an error (characters, after escaping).
MAX_LOGGED_PATH = 256

_STOP = r"\s\"'<>,;&()\[\]{}\\"
_TOKENISH = re.compile(rf"(?i)sk-lm-([A-Za-z0-9]{{0,8}})[^{_STOP}]*")
_SCHEME = re.compile(
    rf"(?i)\b(bearer(?:\s+|%20|\+)(?=[^{_STOP}]{{8}})|basic(?:\s+|%20|\+)(?=[A-Za-z0-9+/=]{{12}}))"
    rf"[^{_STOP}]+"
)
_AUTHORIZATION = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*)[^\r\n\"'\\]+")
_KEYED = re.compile(
    r"(?i)((?:x-api-key|api[_-]?key|apikey|access[_-]?token|client_?passkey|passkey|password"
    rf"|secret)[\"']?\s*[:=]\s*[\"']?)[^{_STOP}]+"
)
_LONG_RUN = re.compile(r"[A-Za-z0-9]{20,}")
_DIGEST = re.compile(r"[0-9a-fA-F]{32,}")
# A long word or camelCase identifier (``predictedTokensCount``): letters only, each capital
# followed by lower case. A random secret has that shape with odds below one in ten million.
_WORD = re.compile(r"[A-Z]?[a-z]+(?:[A-Z][a-z]+)*")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _tokenish(match: re.Match[str]) -> str:
    token_id = match.group(1)
    return f"sk-lm-{token_id}:{PLACEHOLDER}" if len(token_id) == 8 else f"sk-lm-{PLACEHOLDER}"


def _long_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return run if _DIGEST.fullmatch(run) or _WORD.fullmatch(run) else PLACEHOLDER


def redact_secrets(text: str) -> str:
    """``text`` with token-shaped values and bare secrets replaced (for error messages, which
    quote a client's input but never its credentials' headers)."""
    return _LONG_RUN.sub(_long_run, _TOKENISH.sub(_tokenish, text))


def redact(text: str) -> str:
    """``text`` with everything that could be a token or a secret replaced by ``***``."""
    text = _TOKENISH.sub(_tokenish, text)
    text = _SCHEME.sub(lambda m: m.group(1) + PLACEHOLDER, text)
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + PLACEHOLDER, text)
    text = _KEYED.sub(lambda m: m.group(1) + PLACEHOLDER, text)
    return _LONG_RUN.sub(_long_run, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters become ``\\n``, ``\\r``, ``\\xNN``, ``\\uNNNN``."""
    return _CONTROLS.sub(_escape, text)


def scrub(text: str) -> str:
    """A log line's text: redacted first (so escapes cannot split a secret), then one line."""
    return escape_controls(redact(text))


def loggable_path(path: str) -> str:
    """A request path as logs and error messages show it: no query string (callers pass
    ``request.path``, which has none), redacted, control characters escaped, length-capped."""
    shown = scrub(path.split("?", 1)[0])
    return shown if len(shown) <= MAX_LOGGED_PATH else shown[: MAX_LOGGED_PATH - 1] + "…"


def redact_value(value: Any) -> Any:
    """A JSON-like value with :func:`redact` applied to every string (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
