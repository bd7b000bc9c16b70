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

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lms import config, paths
from lms.cli import completers, render
from lms.errors import ConflictError, InvalidParameterError, NotFoundError, SettingError

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

#: The option of ``lms remote add`` behind each field of a ``[remotes.NAME]`` table, so that an
#: error of :func:`lms.remoteconfig.parse_remote` names what the user typed.
_OPTIONS = {
    "urls": "URL",
    "key_file": "--key-file",
    "models": "--model",
    "ca_file": "--ca-file",
    "timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
    "idle_timeout": "--idle-timeout",
    "max_concurrent": "--max-concurrent",
    "health_path": "--health-path",
}


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
            help="Requests sent to one replica at once; more wait (default 64).",
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
        table["key_file"] = _checked_key_file(key_file)
    elif key_stdin:
        table["key_file"] = str(managed_key)
    if ca_file is not None:
        table["ca_file"] = _checked_ca_file(ca_file)
    numbers = {
        "timeout": timeout,
        "connect_timeout": connect_timeout,
        "idle_timeout": idle_timeout,
        "max_concurrent": max_concurrent,
        "health_path": health_path,
    }
    table.update({field: value for field, value in numbers.items() if value is not None})
    spec = _parse(name, table)
    _refuse_publisher_clash(name)
    # Refused early, before a key is read; checked again under config.toml's lock below.
    _check_free(name, config.read_file().get(config.REMOTES, ()), replace=replace)
    key = _read_key_from_stdin() if key_stdin else None
    replaced: list[RemoteSpec] = []

    def change(current: tuple[RemoteSpec, ...]) -> tuple[RemoteSpec, ...]:
        old = _check_free(name, current, replace=replace)
        _audit(name, old, spec)
        if key is not None:
            _write_key(managed_key, key)
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
        _drop_managed_key(replaced[0], remotes)
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
    _warn_about_exposure(spec)


def _parse(name: str, table: dict[str, Any]) -> RemoteSpec:
    """The validated spec; a SettingError names the option (or argument) that is wrong."""
    from lms import remoteconfig

    try:
        return remoteconfig.parse_remote(name, table)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        option = _OPTIONS.get(field)
        if option is None:
            raise SettingError(f"remote {name}: {exc}") from None
        raise SettingError(f"{option}: {problem}", param=field) from None


def _checked_key_file(text: str) -> str:
    """The absolute path of a key file the daemon will accept, checked now so that the operator
    learns of a bad mode or owner at once (a SettingError says what is wrong, never the key)."""
    from lms import remoteconfig

    path = Path(text).expanduser().absolute()
    try:
        remoteconfig.read_key(str(path))
    except remoteconfig.KeyFileError as exc:
        raise SettingError(f"--key-file: {exc}", param="key_file") from None
    return str(path)


def _checked_ca_file(text: str) -> str:
    """The absolute path of a PEM file of CA certificates that loads."""
    import ssl

    path = Path(text).expanduser().absolute()
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "not a PEM file of CA certificates"
        raise SettingError(f"--ca-file: cannot use {path}: {reason}", param="ca_file") from None
    return str(path)


def _check_free(name: str, current: tuple[RemoteSpec, ...], *, replace: bool) -> RemoteSpec | None:
    """The remote ``name`` replaces (None: a new one); ConflictError when it exists and
    ``replace`` is off, SettingError when a new one would pass the bound."""
    from lms import remoteconfig

    old = next((spec for spec in current if spec.name == name), None)
    if old is not None and not replace:
        raise ConflictError(
            f"a remote named {name!r} already exists ({', '.join(old.urls)})",
            hint=f"pass --replace to replace it, or remove it first: lms remote rm {name}",
        )
    if old is None and len(current) >= remoteconfig.MAX_REMOTES:
        raise SettingError(f"config.toml already holds {remoteconfig.MAX_REMOTES} remotes")
    return old


def _refuse_publisher_clash(name: str) -> None:
    """Refuse a name that is a publisher of local models: ``NAME/<id>`` would clash with the
    keys ``publisher/model`` (compared case-insensitively, as a models folder may spell it)."""
    from lms import modelfolder

    root = config.current_models_dir()
    taken = {modelfolder.LOCAL_PUBLISHER}
    with contextlib.suppress(OSError):  # no models folder (yet): nothing is taken there
        taken |= {e.name.lower() for e in root.iterdir() if e.is_dir() and e.name[0] != "."}
    # type_of: keys without the embedding prefix (it never adds a publisher); no header read.
    for found in modelfolder.scan(root, type_of=lambda _path: None).models:
        if "/" in found.key:
            taken.add(found.key.split("/", 1)[0].lower())
    if name.lower() in taken:
        raise ConflictError(
            f"{name!r} is a publisher of local models in {root}: their keys {name}/... would"
            f" clash with the remote's models {name}/<id>",
            hint="choose another name for the remote",
        )


def _read_key_from_stdin() -> str:
    """One line from stdin (without echo on a terminal); the key itself is never in a message."""
    from lms.remoteconfig import MAX_KEY_BYTES

    if render.is_interactive():
        import getpass

        text = getpass.getpass("API key of the server (not shown): ")
    else:
        text = sys.stdin.readline(MAX_KEY_BYTES + 2)
    key = text.strip()
    if not key:
        raise InvalidParameterError(
            "--key-stdin: no key on stdin",
            hint="pipe it in: lms remote add NAME URL --key-stdin < file-with-the-key",
            param="key_stdin",
        )
    if len(key) > MAX_KEY_BYTES or any(not 0x21 <= ord(char) <= 0x7E for char in key):
        raise InvalidParameterError(
            f"--key-stdin: a key is one line of 1-{MAX_KEY_BYTES} printable ASCII characters,"
            " without spaces",
            param="key_stdin",
        )
    return key


def _write_key(path: Path, key: str) -> None:
    """Write the key file 0600 in the 0700 folder of managed keys (atomically; only under
    config.toml's lock, which every writer of these files holds), then read it back with the
    daemon's own reader."""
    from lms import remoteconfig, storage

    paths.ensure_private_dir(path.parent)
    storage.write_atomic(path, (key + "\n").encode("ascii"), mode=0o600)
    remoteconfig.read_key(str(path))


def _drop_managed_key(old: RemoteSpec, remotes: tuple[RemoteSpec, ...]) -> Path | None:
    """Remove the key file ``--key-stdin`` wrote for ``old`` once no remote names it any more;
    a key file of the user's own (``--key-file``) is never touched. Returns the removed path."""
    managed = paths.remote_key_file(old.name)
    if not old.key_file or Path(old.key_file).expanduser() != managed:
        return None
    if any(spec.key_file and Path(spec.key_file).expanduser() == managed for spec in remotes):
        return None
    managed.unlink(missing_ok=True)
    return managed


def _audit(name: str, old: RemoteSpec | None, new: RemoteSpec | None) -> None:
    # Before the write, under config.toml's lock, as for the other security settings.
    from lms.auth import audit

    audit.append(audit.AuditEvent.REMOTE_CHANGED, name=name, old=_view(old), new=_view(new))


def _view(spec: RemoteSpec | None) -> dict[str, Any] | None:
    """What the audit log records of a remote: where it points, never its key."""
    if spec is None:
        return None
    return {"urls": list(spec.urls), "models": list(spec.models), "key_file": spec.key_file}


def _warn_about_exposure(spec: RemoteSpec) -> None:
    if not config.read_file().get("auth.required", False):
        render.warn(
            "authentication is off: any client of the server may use this remote"
            " (turn it on: lms auth require on)"
        )
    insecure = [url for url in spec.urls if url.startswith("http://") and not _is_local(url)]
    if spec.key_file and insecure:
        render.warn(f"the key goes unencrypted over the network to {', '.join(insecure)}")


def _is_local(url: str) -> bool:
    import ipaddress
    import urllib.parse

    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        _audit(name, old, None)
        removed.append(old)
        return tuple(spec for spec in current if spec.name != name)

    remotes = config.write_remotes(change)
    dropped = _drop_managed_key(removed[0], remotes)
    render.note(f"removed remote {name}" + (f" and its key file {dropped}" if dropped else ""))
