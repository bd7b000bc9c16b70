"""What a fuzz session saw: cases per route, statuses, failures — printed at the end.

Under the ``ci`` profile a failure is raised at once (Hypothesis shrinks it to a minimal body).
Under the ``fuzz`` profile every failure is written down and the run goes on, so that the
figures of a 10,000-case run are complete; the session then fails if any were written down.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

#: Where the figures of the last run go (gitignored), besides the terminal summary;
#: LMS_FUZZ_FIGURES moves them (to keep one run's figures while another runs).
FIGURES_FILE = Path(os.environ.get("LMS_FUZZ_FIGURES") or Path(__file__).parent / ".last-run.json")


class CaseFailure(AssertionError):
    """A case broke a property (a 500, no envelope, no answer, the daemon stopped serving)."""


@dataclass
class Failure:
    route: str
    outcome: str
    case: str


@dataclass
class Ledger:
    profile: str
    seed: str = ""
    #: Generated cases per route (an SDK case is one to three frames on one socket).
    cases: Counter[str] = field(default_factory=Counter)
    #: Outcomes per route: one per HTTP case, one per SDK frame.
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[Failure] = field(default_factory=list)
    restarts: int = 0

    @property
    def collecting(self) -> bool:
        return self.profile == "fuzz"

    def case(self, route: str) -> None:
        """One generated case of ``route`` begins."""
        self.cases[route] += 1
        if sum(self.cases.values()) % 100 == 0:
            self.save()

    def count(self, route: str, outcome: str) -> None:
        """What one request or frame got (a status and code, or an SDK answer)."""
        self.outcomes[route] += 1
        self.statuses[route][outcome] += 1

    def fail(self, route: str, outcome: str, case: str) -> None:
        """A broken property: raised now (ci), or written down (fuzz)."""
        self.failures.append(Failure(route, outcome, case))
        if not self.collecting:
            raise CaseFailure(f"{route}: {outcome}\n  case: {case}")

    def figures(self) -> dict[str, object]:
        kinds: Counter[tuple[str, str]] = Counter((f.route, f.outcome) for f in self.failures)
        smallest: dict[tuple[str, str], str] = {}
        for f in self.failures:
            key = (f.route, f.outcome)
            if key not in smallest or len(f.case) < len(smallest[key]):
                smallest[key] = f.case
        return {
            "profile": self.profile,
            "seed": self.seed,
            "total_cases": sum(self.cases.values()),
            "cases": dict(sorted(self.cases.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "statuses": {r: dict(sorted(c.items())) for r, c in sorted(self.statuses.items())},
            "failures": len(self.failures),
            "daemon_restarts": self.restarts,
            "failure_kinds": [
                {"route": r, "outcome": o, "count": n, "smallest_case": smallest[(r, o)]}
                for (r, o), n in sorted(kinds.items())
            ],
        }

    def save(self) -> None:
        tmp = FIGURES_FILE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.figures(), indent=1, ensure_ascii=True) + "\n")
        tmp.replace(FIGURES_FILE)

    def summary_lines(self) -> list[str]:
        figures = self.figures()
        lines = [
            f"fuzz profile {self.profile}, seed {self.seed or '(derandomized)'}:"
            f" {figures['total_cases']} cases, {figures['failures']} failures,"
            f" {self.restarts} daemon restarts",
        ]
        for route, n in sorted(self.cases.items()):
            seen = ", ".join(f"{s} x{k}" for s, k in sorted(self.statuses[route].items()))
            lines.append(f"  {route}: {n} cases, {self.outcomes[route]} outcomes ({seen})")
        for kind in figures["failure_kinds"]:  # type: ignore[attr-defined]
            lines.append(
                f"  FAILED {kind['route']}: {kind['outcome']} x{kind['count']};"
                f" smallest: {kind['smallest_case']}"
            )
        lines.append(f"  figures written to {FIGURES_FILE}")
        return lines
