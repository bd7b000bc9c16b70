"""The properties every HTTP case must keep, and the check that the daemon still serves.

* no 500; a 5xx only where documented (``ALLOWED_5XX``);
* a status of 400 or more comes with the JSON error envelope of the route's family;
* a 200 is a JSON object (or a complete event stream when streaming was asked for);
* the answer arrives within :data:`LIVENESS_SECONDS` — a bound only a wedge exceeds, not a
  performance assertion;
* afterwards ``/health`` and one small real completion still succeed.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any

from fuzz_daemon import MODEL, Daemon
from fuzz_ledger import Ledger

#: A body without a token limit generates to the end of the fuzz daemon's 256-token context:
#: at the 2.6 tokens/s seen on a 2-core machine under a load of 10, that is about 100 s.
LIVENESS_SECONDS = 300.0
#: A small real completion checks the workers after every this many cases of a route (and
#: after any case that broke a property); ``/health`` after every case.
PROBE_EVERY = 10

#: The documented 5xx answers (docs/LIMITS.md and the error table): code → where it may come.
ALLOWED_5XX: dict[tuple[int, str], frozenset[str] | None] = {
    (503, "server_busy"): None,
    (503, "shutting_down"): None,
    (507, "storage_full"): None,
    (501, "not_implemented"): None,
    (502, "upstream_error"): frozenset(
        {"/v1/responses", "/api/v1/chat", "/api/v1/models/download"}
    ),
    (502, "download_failed"): frozenset({"/api/v1/models/download"}),
    (502, "download_verification_failed"): frozenset({"/api/v1/models/download"}),
    (504, "download_stalled"): frozenset({"/api/v1/models/download"}),
    (502, "mcp_connection_error"): frozenset({"/v1/responses", "/api/v1/chat"}),
    (502, "plugin_connection_error"): frozenset({"/v1/responses", "/api/v1/chat"}),
}
ANTHROPIC_ROUTES = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


@dataclass
class Answer:
    status: int
    content_type: str
    raw: bytes
    elapsed: float


def send(daemon: Daemon, path: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """POST raw bytes; the whole answer (a stream to its end) or an exception."""
    host, port = daemon.host_port
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=LIVENESS_SECONDS)
    try:
        sent = {**daemon.auth, "Content-Type": "application/json", **(headers or {})}
        connection.request("POST", path, body=body, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        content_type = response.getheader("Content-Type", "")
        return Answer(response.status, content_type, raw, time.monotonic() - started)
    finally:
        connection.close()


def _envelope_problem(path: str, body: Any) -> str | None:
    """What is wrong with an error body (None: a proper envelope of the route's family)."""
    if not isinstance(body, dict):
        return "error body is not a JSON object"
    error = body.get("error")
    if not isinstance(error, dict):
        return "error body has no 'error' object"
    if not isinstance(error.get("message"), str) or not error["message"]:
        return "error envelope has no message"
    if path in ANTHROPIC_ROUTES:
        if body.get("type") != "error" or not isinstance(error.get("type"), str):
            return "not an Anthropic error envelope"
        return None
    if not isinstance(error.get("code"), str) or not isinstance(error.get("type"), str):
        return "error envelope has no code/type"
    return None


def judge(path: str, answer: Answer) -> tuple[str, str] | None:
    """The broken property of one answer (a kind for the figures, and details), or None."""
    if answer.elapsed > 2 * LIVENESS_SECONDS:
        return "slow answer", f"the answer took {answer.elapsed:.0f} s"
    try:
        body = json.loads(answer.raw) if "json" in answer.content_type else None
    except ValueError:
        body = None
    if answer.status >= 400:
        problem = _envelope_problem(path, body)
        if problem:
            return f"{answer.status} without envelope", f"{problem}: {answer.raw[:300]!r}"
        if answer.status < 500:
            return None
        error = body["error"]  # type: ignore[index]
        if path in ANTHROPIC_ROUTES:
            # Anthropic's envelope has no code: a documented status passes, a 500 does not.
            if answer.status in {s for s, _ in ALLOWED_5XX}:
                return None
            return f"{answer.status} {error.get('type')}", str(error.get("message"))
        code = str(error.get("code"))
        if (answer.status, code) in ALLOWED_5XX:
            routes = ALLOWED_5XX[(answer.status, code)]
            if routes is None or path in routes:
                return None
        return f"{answer.status} {code}", str(error.get("message"))
    if answer.status != 200:
        return f"status {answer.status}", repr(answer.raw[:300])
    if answer.content_type.startswith("text/event-stream"):
        return None if answer.raw else ("empty event stream", "")
    if not isinstance(body, dict):
        return "200 without a JSON object", repr(answer.raw[:300])
    return None


def outcome_of(path: str, answer: Answer) -> str:
    """A short label for the figures: status and error code."""
    if answer.status < 400:
        return str(answer.status)
    try:
        body = json.loads(answer.raw)
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    except ValueError:
        code = None
    return f"{answer.status} {code or '?'}"


def still_serving(daemon: Daemon, *, completion: bool = True) -> str | None:
    """None when ``/health`` and (unless told otherwise) one small real completion succeed;
    else what failed."""
    try:
        status, body = daemon.request("GET", "/health", timeout=LIVENESS_SECONDS)
        if status != 200:
            return f"/health answered {status}: {body!r}"
        if not completion:
            return None
        probe = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        status, body = daemon.request("POST", "/v1/completions", probe, timeout=LIVENESS_SECONDS)
        if status != 200 or not isinstance(body, dict) or not body.get("choices"):
            return f"a small completion answered {status}: {str(body)[:200]}"
    except (OSError, http.client.HTTPException) as exc:
        return f"daemon not serving: {exc!r}"
    return None


def check_case(daemon: Daemon, ledger: Ledger, route: str, body: bytes, shown: str) -> None:
    """Send one case, judge it, count it, then check that the daemon still serves (and start
    it again when it does not, under the collecting profile)."""
    ledger.case(route)
    mark = daemon.log_size()
    broken = True
    try:
        answer = send(daemon, route, body)
    except TimeoutError:
        ledger.count(route, "no answer")
        ledger.fail(route, f"no answer within {LIVENESS_SECONDS:.0f} s", shown)
    except (OSError, http.client.HTTPException) as exc:
        ledger.count(route, "connection broken")
        ledger.fail(route, f"connection broken ({type(exc).__name__})", shown)
    else:
        ledger.count(route, outcome_of(route, answer))
        problem = judge(route, answer)
        broken = problem is not None
        if problem:
            kind, detail = problem
            if answer.status >= 500:  # the cause, from the daemon's log (a traceback's last line)
                cause = daemon.last_error(since=mark)
                kind, detail = f"{kind} [{cause.split(':')[0]}]", f"{detail} [{cause}]"
            ledger.fail(route, kind, f"{shown}\n  -> {detail}")
    probe = broken or ledger.cases[route] % PROBE_EVERY == 0
    after = still_serving(daemon, completion=probe)
    if after:
        try:
            ledger.fail(route, "daemon stopped serving afterwards", f"{shown}\n  -> {after}")
        finally:
            daemon.restart()
