"""Generated frames for every SDK endpoint and hostile auth packets over real sockets: every
frame gets an answer or an error close, never silence, and the socket server still serves a
fresh connection after each case."""

from __future__ import annotations

import aiohttp
import pytest
from fuzz_daemon import Daemon, unload_extras
from fuzz_ledger import Ledger
from fuzz_properties import PROBE_EVERY, still_serving
from fuzz_sdk_client import Outcome, auth_case, frames_case, socket_serves
from fuzz_sdk_frames import NAMESPACES, auth_packet, frame
from hypothesis import given
from hypothesis import strategies as st

pytestmark = [
    pytest.mark.model,
    # Hypothesis warns when it prints a large generated case; large cases are the point here.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


def _after_case(daemon: Daemon, ledger: Ledger, route: str, shown: str) -> None:
    """The socket server (and, every few cases, the HTTP side) still serves."""
    after = socket_serves(daemon)
    if after is None and ledger.cases[route] % PROBE_EVERY == 0:
        after = still_serving(daemon)
    if after:
        try:
            ledger.fail(route, "daemon stopped serving afterwards", f"{shown}\n  -> {after}")
        finally:
            daemon.restart()
    unload_extras(daemon)


def _record(
    daemon: Daemon, ledger: Ledger, route: str, outcome: Outcome, shown: str, mark: int
) -> None:
    ledger.count(route, outcome.label)
    if outcome.problem:
        kind = outcome.problem.split(":")[0][:80]
        where = f"{outcome.frame}: " if outcome.frame else ""
        detail = f"{where}{outcome.problem}"
        if outcome.closed or "closed" in outcome.problem:
            # the cause, from the daemon's log (its last traceback line) once it is written:
            # the fresh socket of socket_serves() has been answered by then
            socket_serves(daemon)
            cause = daemon.last_error(since=mark)
            kind, detail = f"{kind} [{cause.split(':')[0]}]", f"{detail} [{cause}]"
        ledger.fail(route, kind, f"{shown}\n  -> {detail}")


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_sdk_socket_answers_every_generated_frame(
    namespace: str, daemon: Daemon, ledger: Ledger
) -> None:
    route = f"WS /{namespace}"

    @given(st.lists(frame(namespace), min_size=1, max_size=3))
    def one(frames: list[tuple[bytes, str, bool]]) -> None:
        shown = " | ".join(f[1] for f in frames)
        ledger.case(route)
        mark = daemon.log_size()
        try:
            outcomes = frames_case(daemon, namespace, frames)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            outcomes = [Outcome("connection broken", f"connection broken: {exc!r}")]
        for outcome in outcomes:
            _record(daemon, ledger, route, outcome, shown, mark)
        _after_case(daemon, ledger, route, shown)

    one()
    assert socket_serves(daemon) is None


@pytest.mark.parametrize("namespace", ["llm", "system"])
def test_sdk_auth_packet_gets_one_reply(namespace: str, daemon: Daemon, ledger: Ledger) -> None:
    route = f"WS /{namespace} auth"
    identifier, secret = daemon.token.removeprefix("sk-lm-").split(":")

    @given(auth_packet(identifier, secret))
    def one(packet: tuple[bytes, str, bool]) -> None:
        data, shown, binary = packet
        ledger.case(route)
        mark = daemon.log_size()
        try:
            outcome = auth_case(daemon, namespace, data, binary)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            outcome = Outcome("connection broken", f"connection broken: {exc!r}")
        _record(daemon, ledger, route, outcome, shown, mark)
        _after_case(daemon, ledger, route, shown)

    one()
