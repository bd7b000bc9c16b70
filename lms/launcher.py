"""The ``lms`` console script: the answers that need no CLI framework first, then the Typer CLI.

``lms __complete SOURCE`` is what the static completion scripts run at each TAB for token names,
model keys and loaded instances, and ``lms --version`` (or ``-V``) alone prints the version: both
are answered here, before Typer, rich and the CLI's modules are imported (about 100 ms saved per
call), with the very output the Typer app gives. Every other command line goes to
:func:`lms.cli.main`.
"""

from __future__ import annotations

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
        import lms

        # The same line as the root callback's eager --version (lms.cli._print_version).
        sys.stdout.write(f"lms {lms.__version__}\n")
        sys.stdout.flush()
        sys.exit(0)
    from lms.cli import main as cli_main

    cli_main()
