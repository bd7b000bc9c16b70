"""``lms daemon up | down | status``: the background daemon's lifecycle."""

from __future__ import annotations

from typing import Annotated, Any

import typer

import lms
from lms.cli import render
from lms.errors import DaemonNotRunningError, LmsError
from lms.protocol import DaemonStatus, ServerStatus

app = typer.Typer(
    help="Start, stop and inspect the background daemon.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _running_doc(status: DaemonStatus, *, started: bool | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": "running", **status, "cli_version": lms.__version__}
    if started is not None:
        doc["started"] = started
    return doc


def server_line(server: ServerStatus) -> str:
    """One line about the HTTP server, for status displays."""
    if not server.get("running"):
        return "not running"
    auth = "on" if server.get("auth_required") else "off"
    extras = [f"authentication {auth}"]
    if server.get("tls"):
        extras.append("TLS")
    if server.get("cors"):
        extras.append("CORS on")
    return f"running on {server.get('url')} ({', '.join(extras)})"


@app.command()
def up(json_output: JsonOption = False) -> None:
    """Start the daemon in the background (nothing to do if it already runs)."""
    from lms import starter

    outcome = starter.ensure_daemon(announce=render.note)
    status = outcome.status
    if json_output:
        render.emit_json(_running_doc(status, started=outcome.started))
    elif outcome.started:
        render.note(f"daemon started (pid {status['pid']})")
    else:
        render.note(f"the daemon is already running (pid {status['pid']})")


@app.command()
def down(json_output: JsonOption = False) -> None:
    """Stop the daemon: unload every model, stop the server, exit."""
    from lms import client as control

    client = control.ControlClient()
    # No version check: stopping a daemon of another version is how an upgrade is finished.
    status = client.status(check_version=False)
    client.shutdown(wait=True)
    if json_output:
        render.emit_json({"status": "stopped", "pid": status["pid"]})
    else:
        render.note(f"daemon stopped (pid {status['pid']})")


@app.command("status")
def status_cmd(json_output: JsonOption = False) -> None:
    """Show whether the daemon runs: pid, version, socket, uptime.

    Never starts it: exits 3 when it is not running.
    """
    from lms import client as control

    client = control.ControlClient()
    try:
        status = client.status(check_version=False)
    except DaemonNotRunningError:
        if json_output:
            render.emit_json({"status": "not-running"})
        raise
    if json_output:
        render.emit_json(_running_doc(status))
    else:
        render.result(f"daemon:  running (pid {status['pid']})")
        render.result(f"version: {status['version']}")
        render.result(f"socket:  {status['socket']}")
        render.result(f"uptime:  {render.format_duration(status['uptime_seconds'])}")
        render.result(f"server:  {server_line(status['server'])}")
    try:
        control.check_version_matches(status)
    except LmsError as exc:
        render.warn(f"{exc.message}; {exc.hint}")


def print_state_summary() -> None:
    """Two lines on stdout about the daemon and the server; never starts the daemon."""
    from lms import client as control

    try:
        status = control.ControlClient(timeout=2.0).status(check_version=False)
    except DaemonNotRunningError:
        render.result("Daemon: not running (start it with: lms daemon up)")
        render.result("Server: not running (start it with: lms server start)")
        return
    except LmsError as exc:
        render.result(f"Daemon: unknown ({exc.message})")
        return
    uptime = render.format_duration(status["uptime_seconds"])
    render.result(
        f"Daemon: running (pid {status['pid']}, version {status['version']}, up {uptime})"
    )
    render.result(f"Server: {server_line(status['server'])}")
