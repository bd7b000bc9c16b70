"""Generated bodies for every POST route against the real daemon: no 500, a JSON envelope of
the route's family for every error, an answer within the liveness bound, and the daemon still
serving a small real completion after each case."""

from __future__ import annotations

import pytest
from fuzz_daemon import Daemon, unload_extras
from fuzz_ledger import Ledger
from fuzz_properties import check_case, still_serving
from fuzz_routes import ROUTES, Route, case
from hypothesis import given

pytestmark = [
    pytest.mark.model,
    # Hypothesis warns when it prints a large generated case; large cases are the point here.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_post_route_survives_generated_bodies(path: str, daemon: Daemon, ledger: Ledger) -> None:
    route: Route = ROUTES[path]

    @given(case(route))
    def one(generated: tuple[bytes, str]) -> None:
        body, shown = generated
        try:
            check_case(daemon, ledger, route.path, body, shown)
        finally:
            if route.path in ("/api/v1/models/load", "/api/v1/models/unload"):
                unload_extras(daemon)

    one()
    assert still_serving(daemon) is None
