"""The ``lms`` console script: shell completion's values first, then the Typer CLI.

``lms __complete SOURCE`` is what the static completion scripts run at each TAB for token names,
model keys and loaded instances. It is answered here, before Typer and the CLI's modules are
imported (about 200 ms saved per TAB); every other command line goes to :func:`lms.cli.main`.
"""

from __future__ import annotations

import sys

COMPLETE_COMMAND = "__complete"


def main() -> None:
    """Entry point of the ``lms`` console script (and of ``python -m lms``)."""
    if len(sys.argv) > 1 and sys.argv[1] == COMPLETE_COMMAND:
        from lms import completion

        sys.exit(completion.main(sys.argv[2:]))
    from lms.cli import main as cli_main

    cli_main()
