"""Wall time of shell completion for `lms token rm <TAB>` with 1,000 tokens, and of `lms --help`.

A fresh LMS_HOME gets N tokens (written in one go in the registry's own format). Then, each
measured round-robin so that a busy machine's drift hits them alike, median and fastest of
``--runs`` runs:

- bash TAB: completions/lms.bash sourced, ``_lms`` called for ``lms token rm `` (COMP_WORDS set
  as bash sets them), timed inside bash with $EPOCHREALTIME: what a user waits for at a TAB;
- ``lms __complete tokens``: the hidden command alone, answered by lms.launcher before Typer
  is imported (what the static scripts run);
- the same values through the Typer app (``lms.cli.main``): what the hidden command would cost
  if the launcher did not short-cut Typer;
- Typer's own dynamic completion (``lms --install-completion`` style: ``_LMS_COMPLETE``);
- ``lms --version`` (start-up floor of the Typer CLI) and ``lms --help`` (rich formatting).

Target: the bash TAB under 250 ms.

    .venv/bin/python bench/completion.py [--tokens 1000] [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from token_list import populate  # the same 1,000 tokens as the token-list benchmark

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LMS = str(BIN / "lms")
TARGET_MS = 250.0


def timed(argv: list[str], env: dict[str, str], expect_lines: int | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr}")
    if expect_lines is not None and len(done.stdout.splitlines()) != expect_lines:
        raise SystemExit(f"{shlex.join(argv)}: {len(done.stdout.splitlines())} lines")
    return elapsed


def bash_tab(env: dict[str, str], count: int) -> float:
    """Seconds ``_lms`` takes for ``lms token rm <TAB>``, measured inside bash."""
    script = "\n".join(
        [
            f"source {shlex.quote(str(ROOT / 'completions' / 'lms.bash'))}",
            "COMP_LINE='lms token rm '; COMP_POINT=${#COMP_LINE}",
            "COMP_WORDS=(lms token rm ''); COMP_CWORD=3",
            "start=$EPOCHREALTIME; _lms; end=$EPOCHREALTIME",
            'echo "${#COMPREPLY[@]} $start $end"',
        ]
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    replies, start, end = done.stdout.split()
    if int(replies) != 2 * count:  # names and ids
        raise SystemExit(f"bash offered {replies} values, expected {2 * count}")
    return float(end) - float(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    count: int = args.tokens

    home = Path(tempfile.mkdtemp(prefix="lmsbench"))
    try:
        populate(home, count)
        env = dict(os.environ, LMS_HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        env.pop("NO_COLOR", None)
        via_typer = [sys.executable, "-c", "import sys; from lms.cli import main; main()"]
        typer_env = dict(
            env, _LMS_COMPLETE="complete_bash", COMP_WORDS="lms token rm ", COMP_CWORD="3"
        )
        measures: dict[str, Callable[[], float]] = {
            "bash TAB: lms token rm <TAB> (static script)": lambda: bash_tab(env, count),
            "lms __complete tokens (launcher, no Typer)": lambda: timed(
                [LMS, "__complete", "tokens"], env, 2 * count
            ),
            "lms __complete tokens through the Typer app": lambda: timed(
                [*via_typer, "__complete", "tokens"], env, 2 * count
            ),
            "Typer's dynamic completion (_LMS_COMPLETE)": lambda: timed(
                [LMS], typer_env, 2 * count
            ),
            "lms --version": lambda: timed([LMS, "--version"], env),
            "lms --help": lambda: timed([LMS, "--help"], env),
        }
        samples: dict[str, list[float]] = {name: [] for name in measures}
        for measure in measures.values():
            measure()  # warm the page cache and .pyc files
        for _ in range(args.runs):
            for name, measure in measures.items():
                samples[name].append(measure())
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print(f"{count} tokens, {args.runs} runs each, {os.cpu_count()} CPUs; milliseconds")
    width = max(len(name) for name in samples)
    print(f"{'':<{width}}  {'median':>7}  {'fastest':>7}")
    for name, values in samples.items():
        median, fastest = statistics.median(values) * 1000, min(values) * 1000
        print(f"{name:<{width}}  {median:7.1f}  {fastest:7.1f}")
    tab = statistics.median(samples["bash TAB: lms token rm <TAB> (static script)"]) * 1000
    verdict = "meets" if tab < TARGET_MS else "MISSES"
    print(f"bash TAB median {tab:.1f} ms {verdict} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
