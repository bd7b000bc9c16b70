"""``lms auth require | status | audit``: the "Require Authentication" switch and its state.

``require`` writes ``auth.required`` to config.toml (a security setting: file only) and records
the change in the audit log; a running daemon re-reads the file before its next request.
``status`` asks the daemon what it enforces when one runs (never starting one), else shows what
the files say. ``audit`` reads audit.jsonl.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lms import config, paths
from lms.cli import render
from lms.errors import ConfigBrokenError, DaemonNotRunningError, LmsError

if TYPE_CHECKING:
    from lms.auth.registry import RegistryState

app = typer.Typer(
    help="Require API tokens, and see the state and the audit log of authentication.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


# --- require ----------------------------------------------------------------------------------


@app.command()
def require(
    state: Annotated[
        Switch,
        typer.Argument(
            metavar="on|off",
            case_sensitive=False,
            help="on: every API request needs a token.",
            show_default=False,
        ),
    ],
) -> None:
    """Turn "Require Authentication" on or off (auth.required in config.toml).

    A running daemon applies it to the very next request. The change goes to the audit log.
    """
    from lms.auth import audit

    key = "auth.required"
    new = config.set_value(key, state.value, before_write=audit.security_setting)
    where = paths.config_file()
    if new:
        render.note(f"authentication is ON: every API request needs a token ({key} in {where})")
        _hint_if_no_token()
    else:
        render.note(f"authentication is OFF: the API serves anyone who can reach it ({where})")
        _warn_if_exposed()


def _hint_if_no_token() -> None:
    from lms.auth.registry import Registry

    try:
        count = len(Registry().list())
    except ConfigBrokenError as err:
        render.warn(err.message)
        render.say("Every API request is refused until the token registry is fixed.")
        return
    if count == 0:
        render.say("No token exists yet: every request will be refused until you create one:")
        render.say("  export LM_API_TOKEN=$(lms token create me --quiet)")


def _warn_if_exposed() -> None:
    from lms import client as control

    try:
        server = control.ControlClient().server_status()
    except LmsError:
        return  # no daemon (or an unhealthy one): nothing listens to warn about
    host = server.get("host")
    if server.get("running") and host and not _is_loopback(host):
        render.warn(
            f"the server listens on {host}: anyone on the network can now use it without a token"
        )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- status -----------------------------------------------------------------------------------


@app.command()
def status(json_output: JsonOption = False) -> None:
    """Show what is enforced: authentication on/off, token registry health and count, MCP.

    With a daemon running, its answer (what it enforces right now); else the files, and a note
    that the daemon is not running (this never starts it). A broken config.toml or token registry
    (tokens.toml, or the file auth.registry_file names) is shown, then the command exits 1.
    """
    from lms import client as control

    try:
        doc = {"daemon_running": True, **control.ControlClient().auth_status()}
    except DaemonNotRunningError:
        doc = _status_from_files()
    doc["config_path"] = str(paths.config_file())
    if json_output:
        render.emit_json(doc)
    else:
        _print_status(doc)
    problems = []
    if not doc["config_healthy"]:
        problems.append(str(doc["config_error"]))
    if not doc["registry"]["healthy"] and doc["registry"]["error"] != doc["config_error"]:
        problems.append(str(doc["registry"]["error"]))
    if problems:
        raise ConfigBrokenError(
            "; ".join(problems),
            hint="every API request is refused (503) until this is fixed",
        )


def _status_from_files() -> dict[str, Any]:
    """The state the daemon would enforce from the files as they are now (same keys)."""
    from lms.auth import registry

    config_error: str | None = None
    settings: config.Settings | None = None
    try:
        settings = config.build(config.read_file(), {})
    except ConfigBrokenError as err:
        config_error = err.message
    # Which registry is in force is unknown while config.toml is broken (so is the daemon's).
    path = config.registry_file_of(settings) if settings else None
    state: RegistryState | None = None
    registry_error: str | None = config_error
    if path is not None:
        try:
            state = registry.read(path)
        except ConfigBrokenError as err:
            registry_error = err.message
    return {
        "daemon_running": False,
        # A broken config.toml fails closed, as the daemon does.
        "auth_required": settings.auth_required if settings else True,
        "config_healthy": config_error is None,
        "config_error": config_error,
        "registry": {
            "path": None if path is None else str(path),
            "healthy": registry_error is None,
            "error": registry_error,
            "generation": state.generation if state else None,
            "tokens": len(state.records) if state else None,
        },
        "mcp": {
            "allow_mcp_json": settings.mcp_allow_mcp_json if settings else False,
            "allow_remote": settings.mcp_allow_remote if settings else False,
        },
        "server": None,
    }


def _print_status(doc: dict[str, Any]) -> None:
    reg = doc["registry"]
    if not doc["config_healthy"]:
        auth = "every request refused: config.toml is broken"
    elif not reg["healthy"]:
        auth = "every request refused: the token registry is broken"
    else:
        auth = "required (on)" if doc["auth_required"] else "not required (off)"
        if doc["auth_required"] and reg["tokens"] == 0:
            auth += ": no token exists, so every request is refused"
    if doc["daemon_running"]:
        server = doc.get("server") or {}
        daemon = "running: this is what it enforces now"
        listening = f"running on {server.get('url')}" if server.get("running") else "not running"
    else:
        daemon = "not running: showing the files it will read when it starts"
        listening = "not running"
    if reg["healthy"]:
        tokens = f"{reg['tokens']} token{'' if reg['tokens'] == 1 else 's'}"
        registry_line = f"{tokens} (generation {reg['generation']}) in {reg['path']}"
    else:
        registry_line = f"BROKEN: {reg['error']}"
    mcp = doc["mcp"]
    mcp_line = (
        f"mcp.json servers {render.on_off(mcp.get('allow_mcp_json'))}, "
        f"per-request servers {render.on_off(mcp.get('allow_remote'))}"
    )
    if not doc["auth_required"]:
        mcp_line += " (MCP integrations are refused while authentication is off)"
    config_line = doc["config_path"] if doc["config_healthy"] else f"BROKEN: {doc['config_error']}"
    rows = [
        ("Authentication", auth),
        ("Daemon", daemon),
        ("Server", listening),
        ("Tokens", registry_line),
        ("MCP", mcp_line),
        ("Config", config_line),
    ]
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        render.result(f"{label + ':':<{width}} {value}")


# --- audit ------------------------------------------------------------------------------------

# Fields shown in their own columns, not among the details.
_COLUMNS = {"time", "event", "token_id"}


@app.command()
def audit(
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Only entries since then: a duration ago (1h, 30d) or a UTC date (2027-01-31).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show the audit log: token changes, security settings switched, refused requests.

    Refused requests are counted: repeats within a few seconds are one line with their count,
    read from refusals.jsonl and its rotated files. Tokens appear by id only; a secret is never
    written there.
    """
    from lms.auth import audit as audit_log
    from lms.auth.timespec import parse_since

    entries = audit_log.read(parse_since(since) if since is not None else None)
    if json_output:
        render.emit_json(entries)
        return
    if not entries:
        render.note("no audit entries" + (f" since {since}" if since else ""))
        return
    rows = [
        [
            str(entry.get("time", "")),
            str(entry.get("event", "")),
            str(entry.get("token_id") or "-"),
            " ".join(
                f"{key}={_detail(value)}" for key, value in entry.items() if key not in _COLUMNS
            ),
        ]
        for entry in entries
    ]
    render.result(render.table(["TIME", "EVENT", "TOKEN", "DETAILS"], rows))


def _detail(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
