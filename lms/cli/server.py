"""``lms server start | stop | status``: the HTTP API server inside the daemon."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lms import config
from lms.cli import render
from lms.cli.daemon import server_line
from lms.errors import (
    DaemonNotRunningError,
    DaemonRunningError,
    InvalidParameterError,
    ServerNotRunningError,
)

app = typer.Typer(
    help="Start, stop and inspect the HTTP API server.",
    no_args_is_help=True,
)

_START_HINT = "start it with: lms server start"


def is_loopback(bind: str) -> bool:
    """Whether ``bind`` only accepts connections from this machine."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def warn_exposure(bind: str, port: int, *, auth_required: bool, tls: bool) -> None:
    """Warn loudly, on stderr, when the server listens beyond this machine."""
    if is_loopback(bind):
        return
    render.warn(f"the server accepts connections from the network (bind {bind}, port {port})")
    if not auth_required:
        render.warn(
            "authentication is OFF: anyone who can reach this port can use your models "
            "(turn it on: lms auth require on)"
        )
    if not tls:
        render.warn("no TLS: API tokens and prompts travel in clear text on the network")


def _tls_files(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """Absolute paths of the certificate and key (the daemon does not share our cwd)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise InvalidParameterError("--tls-cert and --tls-key go together")
    files = (cert.expanduser().absolute(), key.expanduser().absolute())
    for file in files:
        if not file.is_file():
            raise InvalidParameterError(f"no such file: {file}")
    return str(files[0]), str(files[1])


@app.command()
def start(
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            metavar="N",
            min=0,
            max=65535,
            help="TCP port (default: server.port; 0: any free).",
        ),
    ] = None,
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind", metavar="ADDR", help="Address to listen on (default: server.bind, 127.0.0.1)."
        ),
    ] = None,
    cors: Annotated[
        bool | None,
        typer.Option(
            "--cors/--no-cors",
            help="Turn CORS on or off (the daemon records it as the server.cors setting).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS (with --tls-key)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", metavar="FILE", help="PEM private key of --tls-cert."),
    ] = None,
    foreground: Annotated[
        bool,
        typer.Option(
            "--foreground",
            help="Run the daemon and the server in this terminal (Ctrl-C stops both).",
        ),
    ] = False,
) -> None:
    """Start the HTTP API server, starting the daemon if needed; prints the server's URL.

    A bind beyond loopback warns loudly on stderr, more so with authentication off or no TLS.
    """
    from lms import client as control
    from lms import starter

    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["server.port"] = config.parse_text("server.port", str(port))
    if bind is not None:
        overrides["server.bind"] = config.parse_text("server.bind", bind)
    settings = config.load(overrides)
    port, bind = settings.server_port, settings.server_bind
    tls = _tls_files(tls_cert, tls_key)

    if foreground:
        running = control.try_status()
        if running is not None:
            raise DaemonRunningError(
                f"a background daemon is already running (pid {running['pid']})",
                hint="stop it first: lms daemon down",
            )
        warn_exposure(bind, port, auth_required=settings.auth_required, tls=tls is not None)
        flags = ["--serve", "--port", str(port), "--bind", bind]
        if cors is not None:
            flags.append("--cors" if cors else "--no-cors")
        if tls is not None:
            flags += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        argv = starter.daemon_command(flags)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)

    starter.ensure_daemon(announce=render.note)
    client = control.ControlClient()
    before = client.server_status()
    status = client.server_start(
        port=port,
        bind=bind,
        cors=cors,
        tls_cert=tls[0] if tls else None,
        tls_key=tls[1] if tls else None,
    )
    host = status.get("host") or bind
    warn_exposure(
        host,
        status.get("port") or port,
        auth_required=bool(status.get("auth_required")),
        tls=bool(status.get("tls")),
    )
    auth = render.on_off(status.get("auth_required"))
    already = "already running" if before.get("running") else "started"
    render.note(f"server {already} (authentication {auth}, CORS {render.on_off(status['cors'])})")
    render.result(str(status.get("url")))


@app.command()
def stop() -> None:
    """Stop the HTTP API server (the daemon keeps running, models stay loaded)."""
    from lms import client as control

    client = control.ControlClient()
    try:
        before = client.server_status()
    except DaemonNotRunningError:
        raise ServerNotRunningError(
            "the server is not running (the daemon is not running)"
        ) from None
    client.server_stop()
    render.note(f"server stopped (it was on {before.get('url')})")


@app.command("status")
def status_cmd(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
) -> None:
    """Show whether the server runs, where, and whether authentication is on (exit 3 if not)."""
    from lms import client as control

    client = control.ControlClient()
    try:
        daemon = client.status(check_version=False)
    except DaemonNotRunningError:
        if json_output:
            render.emit_json(
                {
                    "running": False,
                    "host": None,
                    "port": None,
                    "url": None,
                    "cors": None,
                    "auth_required": None,
                    "tls": None,
                    "daemon_running": False,
                }
            )
        raise ServerNotRunningError(
            "the server is not running (the daemon is not running)", hint=_START_HINT
        ) from None
    server = daemon["server"]
    if json_output:
        render.emit_json({**server, "daemon_running": True})
    if not server.get("running"):
        raise ServerNotRunningError("the server is not running", hint=_START_HINT)
    if not json_output:
        render.result(f"The server is {server_line(server)}.")
