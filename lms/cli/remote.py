"""``lms remote add | list | rm``: the remote engines of config.toml (``[remotes.NAME]``).

A remote is an OpenAI-compatible server (llama.cpp's llama-server, vLLM, SGLang, another lms)
whose models the daemon serves as ``NAME/<upstream id>``, behind lms's own token gate. These
commands edit config.toml (under its lock, atomically, the rest of the file kept) and work with
or without a daemon: a running daemon re-reads the file and picks a change up within seconds.
Each change is recorded in the audit log with the remote's name and URLs.

The upstream's API key never appears in config.toml, in an argument, in output, in a message or
in the audit log: ``--key-file`` names a file of yours that only you can read (0600), and
``--key-stdin`` reads the key from stdin into ``<config dir>/remotes/NAME.key`` (0600).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from lms import config, paths
from lms.cli import completers, render
from lms.cli import remoteedit as edits
from lms.errors import InvalidParameterError, NotFoundError, SettingError

if TYPE_CHECKING:
    from lms.remoteconfig import RemoteSpec

app = typer.Typer(
    help="Serve the models of other OpenAI-compatible servers as NAME/<model> (config.toml).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
NameArgument = Annotated[
    str,
    typer.Argument(
        help="The remote's name: its models are served as NAME/<upstream model id>.",
        autocompletion=completers.remotes,
        show_default=False,
    ),
]


TimeoutOption = Annotated[
    int | None,
    typer.Option(
        "--timeout",
        metavar="S",
        help="Seconds a whole request may take (default 600).",
        show_default=False,
    ),
]
ConnectTimeoutOption = Annotated[
    int | None,
    typer.Option(
        "--connect-timeout",
        metavar="S",
        help="Seconds to connect to the server (default 10).",
        show_default=False,
    ),
]
IdleTimeoutOption = Annotated[
    int | None,
    typer.Option(
        "--idle-timeout",
        metavar="S",
        help="Seconds the server may stay silent mid-answer (default 300).",
        show_default=False,
    ),
]


# --- add --------------------------------------------------------------------------------------


@app.command()
def add(
    name: Annotated[
        str,
        typer.Argument(
            help="A name: 1-48 of a-z, 0-9, '.', '_', '-'. Models are served as NAME/<id>.",
            show_default=False,
        ),
    ],
    urls: Annotated[
        list[str],
        typer.Argument(
            metavar="URL...",
            help="Base URL of the server, such as http://10.0.0.5:8080 (several: replicas).",
            show_default=False,
        ),
    ],
    key_file: Annotated[
        str | None,
        typer.Option(
            "--key-file",
            metavar="PATH",
            help="A file holding the server's API key, readable by you only (chmod 600).",
            show_default=False,
        ),
    ] = None,
    key_stdin: Annotated[
        bool,
        typer.Option(
            "--key-stdin",
            help="Read the server's API key from stdin and keep it in a 0600 file of lms.",
        ),
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="GLOB",
            help="Serve only upstream models whose id matches, such as 'llama-*' (repeatable).",
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            "--ca-file",
            metavar="PATH",
            help="PEM file of the CA that signs the server's certificate (https only).",
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    idle_timeout: IdleTimeoutOption = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            "--max-concurrent",
            metavar="N",
            help="Requests sent to one replica at once; more are refused with 503 (default 64).",
            show_default=False,
        ),
    ] = None,
    health_path: Annotated[
        str | None,
        typer.Option(
            "--health-path",
            metavar="PATH",
            help="Route asked to check the server's health (default /v1/models).",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a remote of the same name.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Add a remote engine: serve the models of an OpenAI-compatible server as NAME/<model id>.

    The server (llama-server, vLLM, SGLang, another lms) is asked for its models at URL/v1/models;
    clients of lms reach them through lms's own API tokens (a token's --model globs apply to
    NAME/<id>). Its API key, if it needs one, comes from --key-file (a file only you can read)
    or --key-stdin (never from the command line). A running daemon picks the change up within
    seconds, without a restart. Recorded in the audit log (name and URLs, never the key).
    """
    from lms import remoteconfig

    try:
        remoteconfig.check_name(name)
    except ValueError as exc:
        raise SettingError(f"NAME: {exc}", param="name") from None
    if key_file is not None and key_stdin:
        raise InvalidParameterError("give --key-file or --key-stdin, not both", param="key_file")
    managed_key = paths.remote_key_file(name)
    table: dict[str, Any] = {"urls": list(urls), "models": list(model or [])}
    if key_file is not None:
        table["key_file"] = edits.checked_key_file(key_file)
    elif key_stdin:
        table["key_file"] = str(managed_key)
    if ca_file is not None:
        table["ca_file"] = edits.checked_ca_file(ca_file)
    optional = {
        "timeout": timeout,
        "connect_timeout": connect_timeout,
        "idle_timeout": idle_timeout,
        "max_concurrent": max_concurrent,
        "health_path": health_path,
    }
    table.update({field: value for field, value in optional.items() if value is not None})
    spec = edits.parse(name, table)
    edits.refuse_publisher_clash(name)
    # Refused early, before a key is read; checked again under config.toml's lock below.
    edits.check_free(name, config.read_file().get(config.REMOTES, ()), replace=replace)
    key = edits.read_key_from_stdin() if key_stdin else None
    replaced: list[RemoteSpec] = []

    def change(current: tuple[RemoteSpec, ...]) -> tuple[RemoteSpec, ...]:
        old = edits.check_free(name, current, replace=replace)
        edits.audit_change(name, old, spec)
        if key is not None:
            edits.write_key(managed_key, key)
        replaced.extend([old] if old is not None else [])
        return (*(other for other in current if other.name != name), spec)

    existed = managed_key.exists()
    try:
        remotes = config.write_remotes(change)
    except BaseException:
        if key is not None and not existed:
            managed_key.unlink(missing_ok=True)
        raise
    if replaced:
        edits.drop_managed_key(replaced[0], remotes)
    if json_output:
        render.emit_json({**spec.public_dict(), "replaced": bool(replaced)})
    else:
        render.result(f"{'replaced' if replaced else 'added'} remote {name}")
        render.result(f"  urls:     {', '.join(spec.urls)}")
        render.result(f"  key file: {spec.key_file or 'none'}")
        render.result(f"  models:   {', '.join(spec.models) or 'all'}")
    render.note(
        f"a running daemon serves its models as {name}/<model id> within seconds (no restart)"
    )
    edits.warn_about_exposure(spec)


# --- list -------------------------------------------------------------------------------------


@app.command("list")
def list_cmd(json_output: JsonOption = False) -> None:
    """List the remotes of config.toml and, when the daemon runs, what each serves now.

    The daemon's state of a remote: the models it serves (NAME/<id>), each replica's health and
    requests in flight, or why the remote cannot be used. The daemon is never started: without
    it, only the configuration is shown. Key files are shown by path, never their contents.
    """
    configured: tuple[RemoteSpec, ...] = config.read_file().get(config.REMOTES, ())
    live = _live_state()
    docs = [
        {**spec.public_dict(), "live": None if live is None else live.get(spec.name)}
        for spec in configured
    ]
    if json_output:
        render.emit_json(
            {"path": str(paths.config_file()), "daemon_running": live is not None, "remotes": docs}
        )
        return
    if live is None:
        render.note("daemon not running: showing config.toml only")
    if not docs:
        render.note(f"no remotes in {paths.config_file()}")
        render.say("hint: add one: lms remote add NAME http://HOST:PORT")
        return
    rows = [
        [
            doc["name"],
            ", ".join(doc["urls"]),
            doc["key_file"] or "none",
            ", ".join(doc["models"]) or "all",
            _state(doc["live"], running=live is not None),
        ]
        for doc in docs
    ]
    render.result(render.table(["NAME", "URLS", "KEY FILE", "MODELS", "STATE"], rows))
    for doc in docs:
        if doc["live"] is not None:
            render.result()
            _print_live(doc["name"], doc["live"])


def _live_state() -> dict[str, dict[str, Any]] | None:
    """The daemon's state of each remote by name, or None when no daemon runs."""
    from lms import client as control
    from lms.errors import DaemonNotRunningError, RouteNotFoundError

    try:
        found = control.ControlClient().remotes()
    except DaemonNotRunningError:
        return None
    except RouteNotFoundError:
        render.warn("the running daemon does not report remotes (restart it: lms daemon down)")
        return {}
    return {str(entry["name"]): {k: v for k, v in entry.items() if k != "name"} for entry in found}


def _state(live: dict[str, Any] | None, *, running: bool) -> str:
    if not running:
        return "-"
    if live is None:
        return "not in use yet"
    if live.get("error"):
        return f"error: {live['error']}"
    replicas = live.get("replicas", [])
    healthy = sum(1 for replica in replicas if replica.get("healthy"))
    count = len(live.get("models", []))
    return (
        f"{count} model{'' if count == 1 else 's'},"
        f" {healthy}/{len(replicas)} replica{'' if len(replicas) == 1 else 's'} healthy"
    )


def _print_live(name: str, live: dict[str, Any]) -> None:
    render.result(f"{name}:")
    for replica in live.get("replicas", []):
        health = "healthy" if replica.get("healthy") else "unhealthy"
        if replica.get("error"):
            health += f": {replica['error']}"
        render.result(f"  {replica['url']}  {health}, {replica.get('in_flight', 0)} in flight")
    models = live.get("models", [])
    render.result(f"  models: {', '.join(models) if models else 'none'}")


# --- rm ---------------------------------------------------------------------------------------


@app.command()
def rm(name: NameArgument) -> None:
    """Remove a remote from config.toml (a running daemon stops serving it within seconds).

    The key file --key-stdin wrote for it is deleted; a file given with --key-file is left
    alone. Recorded in the audit log.
    """
    removed: list[RemoteSpec] = []

    def change(current: tuple[RemoteSpec, ...]) -> tuple[RemoteSpec, ...]:
        old = next((spec for spec in current if spec.name == name), None)
        if old is None:
            raise NotFoundError(f"no remote named {name!r}", hint="see: lms remote list")
        edits.audit_change(name, old, None)
        removed.append(old)
        return tuple(spec for spec in current if spec.name != name)

    remotes = config.write_remotes(change)
    dropped = edits.drop_managed_key(removed[0], remotes)
    render.note(f"removed remote {name}" + (f" and its key file {dropped}" if dropped else ""))
