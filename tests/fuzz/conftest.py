"""The fuzz suite's fixtures: Hypothesis profiles, ONE real daemon per session, the ledger.

Profiles (``--hypothesis-profile``):

* ``ci`` (the default here, what ``make test`` runs): 10 derandomized cases per test, no
  example database, a failure raised at once (not shrunk);
* ``fuzz`` (``make fuzz``): 600 cases per test (over 10,000 in all), seeded by
  ``--hypothesis-seed``; failures are written down and the run goes on (see ``fuzz_ledger.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_daemon import Daemon
from fuzz_ledger import Ledger
from hypothesis import HealthCheck, Phase, settings

_COMMON = {
    "deadline": None,  # the liveness bound is ours (see fuzz_properties.py), not a timing assertion
    "database": None,  # no .hypothesis directory left behind
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}
# No shrinking under ci: each step of it is a round trip to the daemon (a wedge costs the whole
# liveness bound), and the report already names the generated case.
settings.register_profile(
    "ci",
    max_examples=10,
    derandomize=True,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    **_COMMON,
)
# LMS_FUZZ_EXAMPLES changes the number of cases per test of the fuzz profile (a shorter run).
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("LMS_FUZZ_EXAMPLES") or 600),
    derandomize=False,
    **_COMMON,
)
if settings.get_current_profile_name() == "default":
    settings.load_profile("ci")

_LEDGER: list[Ledger] = []


@pytest.fixture(scope="session")
def ledger(request: pytest.FixtureRequest) -> Ledger:
    seed = request.config.getoption("hypothesis_seed", default=None)
    book = Ledger(profile=settings.get_current_profile_name(), seed=str(seed or ""))
    _LEDGER.append(book)
    return book


@pytest.fixture(scope="session")
def daemon(default_models_dir: Path, ledger: Ledger) -> Iterator[Daemon]:
    """The real daemon every fuzz test sends its cases to (stopped by pid at the end)."""
    server = Daemon(default_models_dir)
    try:
        server.start()
        yield server
    finally:
        ledger.restarts = server.restarts
        server.close()


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed", default=None)
    return f"fuzz: hypothesis profile {settings.get_current_profile_name()}, seed {seed}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for book in _LEDGER:
        book.save()
        terminalreporter.section("fuzz figures")
        for line in book.summary_lines():
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if any(book.failures for book in _LEDGER) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
