"""Start-up of the ``lms`` CLI: medians of its three targets against ``python -c pass``.

Every command and every TAB of shell completion pays it. Measured, each a real subprocess of the
``lms`` console script with stdout on a pipe:

- ``python -c pass``: the floor (the interpreter and site-packages alone);
- ``lms --version`` (target ≤ 100 ms);
- ``lms __complete tokens``: what a TAB after ``lms token rm`` runs (target ≤ 75 ms);
- ``lms token list`` (target ≤ 150 ms);

the last two on a registry of ``--tokens`` tokens (1,000; with a usage row each, as
bench/token_list.py writes them). With ``--against DIR`` (another checkout, e.g. main) each
round also runs every command with ``PYTHONPATH=DIR``, alternating with this tree, so that a
busy machine's drift hits both alike; the figures are medians of ``--runs`` rounds after one
warm-up round.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--tokens 1000] [--against /path/to/main]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "bench"))

from token_list import populate  # noqa: E402  (bench/token_list.py: the same registry)

LMS = str(Path(sys.executable).with_name("lms"))

TARGETS_MS = {"--version": 100, "__complete tokens": 75, "token list": 150}


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--against", type=Path, help="a baseline checkout, run alternately")
    args = parser.parse_args()

    trees = {"this tree": HERE}
    if args.against:
        trees["baseline"] = args.against.resolve()
    base = {k: v for k, v in os.environ.items() if not k.startswith("LMS_") and k != "NO_COLOR"}
    home = Path(tempfile.mkdtemp(prefix="lmsb"))
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "--version": [LMS, "--version"],
        "__complete tokens": [LMS, "__complete", "tokens"],
        "token list": [LMS, "token", "list"],
    }
    times: dict[tuple[str, str], list[float]] = {}
    try:
        populate(home, args.tokens)
        envs = {
            tree: {**base, "LMS_HOME": str(home), "PYTHONPATH": str(path)}
            for tree, path in trees.items()
        }
        for round_ in range(args.runs + 1):
            for label, argv in commands.items():
                for tree, env in envs.items():
                    elapsed = run(argv, env)
                    if round_:
                        times.setdefault((tree, label), []).append(elapsed)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"median (min) of {args.runs} rounds, {args.tokens} tokens, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'command':<20}" + "".join(f"{tree:>22}" for tree in trees) + f"{'target':>10}")
    for label in commands:
        cells = []
        for tree in trees:
            values = times[(tree, label)]
            cells.append(
                f"{1000 * statistics.median(values):6.0f} ms (min {1000 * min(values):4.0f})"
            )
        target = f"≤{TARGETS_MS[label]} ms" if label in TARGETS_MS else ""
        name = "lms " + label if label in TARGETS_MS else label
        print(f"{name:<20}" + "".join(f"{cell:>22}" for cell in cells) + f"{target:>10}")


if __name__ == "__main__":
    main()
