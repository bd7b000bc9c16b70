"""Wall time of the real `lms token list` (plain and --json) as the registry grows.

For each N a fresh LMS_HOME gets N tokens written in one go through the registry's own format
(``registry.dump``; creating them one by one would rewrite the file N times) and a usage row for
every token in usage.sqlite3, as a daemon leaves them; N = 0 is an empty registry. Then the real
``lms`` command runs in a subprocess: stdout to a pipe (the plain table), ``--json``, and stdout
on a pseudo-terminal (a rich table up to 100 tokens, styled plain columns above). Sizes are
measured round-robin so that a busy machine's drift hits them alike; each figure is the median
of ``--runs`` runs (and the fastest). ``lms --version`` is the start-up floor of Python alone
(the launcher answers it before Typer is imported); a command pays Typer and the CLI's modules on
top, and pydantic only when one of its options has a value (lms/cli/coercion.py).
bench/cli_startup.py measures the start-up targets against a baseline checkout.
Target: under 150 ms at N = 1000 (pipe), growing no worse than linearly.

    .venv/bin/python bench/token_list.py [--sizes 250,500,1000,2000] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lms import storage
from lms.auth import registry, tokens
from lms.auth.permissions import Permission
from lms.auth.record import TokenRecord
from lms.auth.usage import UsageDelta, UsageStore

LMS = str(Path(sys.executable).with_name("lms"))


def populate(home: Path, count: int) -> None:
    """``count`` tokens in tokens.toml and a usage row for each, under ``home``."""
    os.environ["LMS_HOME"] = str(home)
    now = datetime.now(UTC).replace(microsecond=0)
    records = []
    for i in range(count):
        token_id, full = tokens.generate()
        records.append(
            TokenRecord(
                id=token_id,
                name=f"token-{i:05d}",
                hash=tokens.hash_token(full),
                permissions=frozenset(
                    {Permission.INFERENCE} if i % 3 else {Permission.INFERENCE, Permission.MODELS}
                ),
                models=("google/*",) if i % 4 == 0 else (),
                created_at=now - timedelta(minutes=i),
                expires_at=now + timedelta(days=30) if i % 2 else None,
                rpm=60 if i % 5 == 0 else None,
            )
        )
    state = registry.RegistryState(generation=count, records=tuple(records))
    reg = registry.Registry()
    storage.write_atomic(reg.path, registry.dump(state), mode=0o600)
    assert len(reg.list()) == count
    UsageStore().apply(
        {
            r.id: UsageDelta(
                last_used_at=now.timestamp() - i, request_count=i + 1, prompt_tokens=10 * i
            )
            for i, r in enumerate(records)
        }
    )


def run_piped(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([LMS, *args], env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lms {' '.join(args)} failed: {done.stderr.decode()}")
    return elapsed


def run_on_tty(args: list[str], env: dict[str, str]) -> float:
    """Stdout on a pseudo-terminal (the rich table), read until the command ends."""
    leader, follower = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [LMS, *args], env={**env, "COLUMNS": "200"}, stdout=follower, stderr=subprocess.PIPE
    )
    os.close(follower)
    try:
        while True:
            try:
                if not os.read(leader, 65536):
                    break
            except OSError:  # EIO: the terminal's other side closed
                break
        proc.wait()
    finally:
        os.close(leader)
        if proc.stderr:
            proc.stderr.close()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"lms {' '.join(args)} on a tty failed with {proc.returncode}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sizes = [0, *(int(n) for n in args.sizes.split(","))]

    homes: dict[int, Path] = {}
    envs: dict[int, dict[str, str]] = {}
    base = {k: v for k, v in os.environ.items() if not k.startswith("LMS_") and k != "NO_COLOR"}
    measures = {
        "pipe": (run_piped, ["token", "list"]),
        "json": (run_piped, ["token", "list", "--json"]),
        "tty": (run_on_tty, ["token", "list"]),
    }
    times: dict[tuple[int, str], list[float]] = {}
    floor: list[float] = []
    try:
        for count in sizes:
            homes[count] = Path(tempfile.mkdtemp(prefix="lmsb"))
            if count:
                populate(homes[count], count)
            envs[count] = {**base, "LMS_HOME": str(homes[count])}
        # Round-robin over sizes, after one warm-up round: drift of a busy machine hits every
        # size alike.
        for run in range(args.runs + 1):
            if run:
                floor.append(run_piped(["--version"], envs[0]))
            for count in sizes:
                for label, (measure, argv) in measures.items():
                    elapsed = measure(argv, envs[count])
                    if run:
                        times.setdefault((count, label), []).append(elapsed)
    finally:
        for home in homes.values():
            shutil.rmtree(home, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):6.0f} ms (min {1000 * min(values):4.0f})"

    print(f"median of {args.runs} runs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"lms --version (Python start-up, no Typer): {ms(floor)}")
    print(f"{'tokens':>7}  {'list (pipe)':>22}  {'list --json':>22}  {'list (tty)':>22}")
    for count in sizes:
        cells = [ms(times[(count, label)]) for label in measures]
        print(f"{count:>7}  {cells[0]:>22}  {cells[1]:>22}  {cells[2]:>22}")
    low, high = sizes[1], sizes[-1]
    if high == low:  # one size: no slope to show
        return
    slopes = [
        1_000_000  # seconds → ms, per 1000 tokens
        * (statistics.median(times[(high, label)]) - statistics.median(times[(low, label)]))
        / (high - low)
        for label in measures
    ]
    print(
        f"per 1000 tokens ({low} → {high}): pipe {slopes[0]:.0f} ms, json {slopes[1]:.0f} ms, "
        f"tty {slopes[2]:.0f} ms"
    )


if __name__ == "__main__":
    main()
