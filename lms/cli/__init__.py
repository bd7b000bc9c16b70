"""The ``lms`` command: a Typer root group with one sub-app per command group.

Errors are converted in exactly one place, :meth:`LmsGroup.invoke`: an :class:`LmsError`
becomes ``lms: <message>`` (and ``hint: ...``) on stderr and its exit code; Ctrl-C exits 130;
anything else is an internal error (exit 1), with a traceback only under ``--debug``.

Importing this package must stay cheap and must never load aiohttp, llama_cpp or the daemon's
modules: every command pays for it. The command modules import what only some commands need
(``lms.client`` and ``lms.starter``, with http.client; the token registry; rich) inside those
commands, and Typer's pydantic coercion is built only for a value that is there
(:mod:`lms.cli.coercion`); ``lms --version`` and ``lms __complete`` are answered by
:mod:`lms.launcher` before this package is imported.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Any

import typer
from typer._click import Context as ClickContext  # Typer 0.29 vendors click (pinned 0.29.*)
from typer.core import TyperGroup

import lms
from lms.cli import auth as auth_cmd
from lms.cli import chat as chat_cmd
from lms.cli import coercion, completers, render
from lms.cli import config as config_cmd
from lms.cli import daemon as daemon_cmd
from lms.cli import download as download_cmd
from lms.cli import log as log_cmd
from lms.cli import mcp as mcp_cmd
from lms.cli import models as models_cmd
from lms.cli import remote as remote_cmd
from lms.cli import server as server_cmd
from lms.cli import token as token_cmd
from lms.errors import ExitCode, LmsError

__all__ = ["LmsGroup", "app", "main"]

HELP_OPTION_NAMES = ("-h", "--help")


class LmsGroup(TyperGroup):
    """The root group: the one place where errors become messages and exit codes."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Typer's pydantic coercion only for a value that needs it (lms/cli/coercion.py); here,
        # so that the console script and every CliRunner test take the same path.
        coercion.defer(self, HELP_OPTION_NAMES)
        return super().main(*args, **kwargs)

    def invoke(self, ctx: ClickContext) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):
            raise  # Typer's own usage errors and exits: it prints and exits itself
        except LmsError as err:
            if debug:
                traceback.print_exc(file=sys.stderr)
            render.error(err.message, err.hint)
            raise typer.Exit(int(err.exit_code)) from None
        except KeyboardInterrupt:
            render.say("")
            render.note("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            render.error(
                f"internal error: {type(exc).__name__}: {exc}",
                None if debug else "run it again with --debug for the traceback",
            )
            raise typer.Exit(int(ExitCode.FAILED)) from None


app = typer.Typer(
    name="lms",
    cls=LmsGroup,
    invoke_without_command=True,
    no_args_is_help=False,
    context_settings={"help_option_names": list(HELP_OPTION_NAMES)},
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lms {lms.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of errors (for bug reports).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """lms: a local LLM server with API-token authentication, driven from the command line.

    With no command, prints this help and whether the daemon and the server run.
    """
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        daemon_cmd.print_state_summary()


app.add_typer(daemon_cmd.app, name="daemon", rich_help_panel="Serve")
app.add_typer(server_cmd.app, name="server", rich_help_panel="Serve")
app.add_typer(token_cmd.app, name="token", rich_help_panel="Authentication")
app.add_typer(auth_cmd.app, name="auth", rich_help_panel="Authentication")
app.add_typer(config_cmd.app, name="config", rich_help_panel="Settings")
models_cmd.register(app, rich_help_panel="Local models")
download_cmd.register(app, rich_help_panel="Local models")
chat_cmd.register(app, rich_help_panel="Local models")
app.add_typer(log_cmd.app, name="log", rich_help_panel="Serve")
app.add_typer(mcp_cmd.app, name="mcp", rich_help_panel="Serve")
app.add_typer(remote_cmd.app, name="remote", rich_help_panel="Serve")
completers.register(app)


def main() -> None:
    """Entry point of the ``lms`` console script."""
    command = typer.main.get_command(app)
    command.main(prog_name="lms")
