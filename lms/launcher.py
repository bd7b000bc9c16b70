"""The ``lms`` console script: the answers that need no CLI framework first, then the Typer CLI.

``lms __complete SOURCE`` is what the static completion scripts run at each TAB for token names,
model keys and loaded instances, and ``lms --version`` (or ``-V``) alone prints the version: both
are answered here, before Typer, rich and the CLI's modules are imported (about 100 ms saved per
call), with the very output the Typer app gives. Every other command line goes to
:func:`lms.cli.main`.
"""

from __future__ import annotations

import os
import sys

COMPLETE_COMMAND = "__complete"
VERSION_OPTIONS = ("--version", "-V")


def main() -> None:
    """Entry point of the ``lms`` console script (and of ``python -m lms``)."""
    args = sys.argv[1:]
    if args and args[0] == COMPLETE_COMMAND:
        from lms import completion

        sys.exit(completion.main(args[1:]))
    if len(args) == 1 and args[0] in VERSION_OPTIONS:
        sys.exit(_print_version())
    from lms.cli import main as cli_main

    cli_main()


def _print_version() -> int:
    """The root callback's eager ``--version`` (lms.cli._print_version), as Typer ends it: the
    same line; nothing and exit 0 without a stdout; exit 1, silently, when the reader is gone."""
    import lms

    if sys.stdout is None:
        return 0
    try:
        sys.stdout.write(f"lms {lms.__version__}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's own advice: no second error when the interpreter flushes stdout on exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0
