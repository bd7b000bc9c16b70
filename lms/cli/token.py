"""``lms token create | list | edit | rotate | rm``: the API tokens in the token registry
(tokens.toml, or the file ``auth.registry_file`` names; README: Authentication, docs/GATES.md).

These commands edit files and work with or without a daemon; a running daemon notices each
change before its next check, so an edit or a revocation applies to the very next request.

A full token is printed exactly once, on stdout, by ``create`` and ``rotate``; it never goes into
a message, a log, the audit log or a process argument. The token library is imported inside the
commands, not here: every ``lms`` start (each TAB of shell completion) imports this module.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lms.cli import completers, render
from lms.errors import ConfigBrokenError, InvalidParameterError

if TYPE_CHECKING:
    from datetime import datetime

    from lms.auth.record import TokenRecord
    from lms.auth.usage import TokenUsage

app = typer.Typer(
    help=(
        "Create, list, change, rotate and revoke API tokens (tokens.toml, or auth.registry_file;"
        " no daemon needed)."
    ),
    no_args_is_help=True,
)

_PERM_HELP = "inference, models, mcp, remote-mcp or all"


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
TokenArgument = Annotated[
    str,
    typer.Argument(
        metavar="ID|NAME",
        help="The token's id or name (an exact id match wins).",
        autocompletion=completers.tokens,
        show_default=False,
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print only the token, on stdout (TOKEN=$(lms token ... -q))."
    ),
]
PermOption = Annotated[
    list[str] | None,
    typer.Option(
        "--perm",
        "-p",
        metavar="PERM",
        help=f"Permission: {_PERM_HELP}. Repeat or separate with commas.",
        autocompletion=completers.permissions,
        show_default=False,
    ),
]
ModelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        metavar="GLOB",
        help="Allow only models whose key matches, such as 'google/*' (repeatable).",
        show_default=False,
    ),
]
RpmOption = Annotated[
    int | None,
    typer.Option("--rpm", metavar="N", help="At most N requests per minute.", show_default=False),
]


# --- create -----------------------------------------------------------------------------------


@app.command()
def create(
    name: Annotated[
        str,
        typer.Argument(help="A unique name: letters, digits, '.', '_', '-'.", show_default=False),
    ],
    perm: PermOption = None,
    model: ModelOption = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            metavar="WHEN",
            help="Expiry: a duration (30m, 12h, 30d) or a UTC date (2027-01-31).",
            show_default=False,
        ),
    ] = None,
    rpm: RpmOption = None,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
) -> None:
    """Create a token and print it ONCE on stdout: store it now, it cannot be shown again.

    Without --perm the token may run inference only. The note about the token goes to stderr;
    with --quiet nothing but the token is printed, for TOKEN=$(lms token create ci --quiet).
    """
    from lms.auth.permissions import parse_permissions
    from lms.auth.registry import Registry
    from lms.auth.timespec import parse_expiry

    permissions = parse_permissions(perm or [])
    expires_at = parse_expiry(expires) if expires is not None else None
    record, full = Registry().create(
        name, permissions or None, models=model or [], expires_at=expires_at, rpm=rpm
    )
    if json_output:
        render.emit_json({**record.public_dict(), "token": full})
    else:
        render.result(full)
    if quiet or json_output:
        return
    render.note(f"created token {record.name!r} (id {record.id})")
    _describe_limits(record)
    render.say("Store it now: it is shown only once (lms keeps only its hash).")
    render.say("Use it:       export LM_API_TOKEN=<the token above>")
    render.say('              curl -H "Authorization: Bearer $LM_API_TOKEN" ...')
    _hint_if_auth_off()


def _describe_limits(record: TokenRecord) -> None:
    from lms.auth.permissions import sorted_permissions

    render.say(f"  permissions: {', '.join(sorted_permissions(record.permissions)) or 'none'}")
    render.say(f"  models:      {', '.join(record.models) or 'all'}")
    render.say(f"  expires:     {_moment(record.expires_at, 'never')}")
    render.say(f"  rpm:         {record.rpm if record.rpm is not None else 'unlimited'}")


def _hint_if_auth_off() -> None:
    from lms import config

    try:
        required = config.read_file().get("auth.required", False)
    except ConfigBrokenError:
        return  # `lms auth status` reports a broken config.toml; this is only a hint
    if not required:
        render.say("Note: authentication is off, so the server does not ask for tokens yet")
        render.say("      (turn it on: lms auth require on).")


# --- list -------------------------------------------------------------------------------------

# Above this many tokens a terminal gets styled plain columns instead of a rich table.
_RICH_ROWS_MAX = 100
_HEADERS = ["ID", "NAME", "PERMISSIONS", "MODELS", "CREATED", "EXPIRES", "LAST USED", "REQUESTS"]


@app.command("list")
def list_cmd(json_output: JsonOption = False) -> None:
    """List tokens: id, name, permissions, models, created, expires, last used, request count.

    Never a secret or a hash. Usage (last used, requests) is written by the daemon in batches
    every few seconds, so the latest requests may not be counted yet; it is this machine's
    daemon's alone (gates sharing a registry each count their own).
    """
    from lms.auth.registry import Registry
    from lms.auth.timespec import utc_now

    records = Registry().list()
    usage: dict[str, TokenUsage] = {}
    if records:
        import sqlite3

        from lms.auth.usage import UsageStore  # sqlite3: only when there is usage to show

        store = UsageStore()
        try:
            usage = store.read()  # one query for every token
        except sqlite3.Error as exc:
            # Usage is a convenience; the tokens themselves must stay listable.
            render.warn(f"cannot read token usage from {store.path} ({exc}); shown without it")
    now = utc_now()
    if json_output:
        render.emit_json([_list_doc(r, usage.get(r.id), now) for r in records])
        return
    if not records:
        render.note("no tokens yet; create one with: lms token create NAME")
        return
    perms: dict[Any, str] = {}  # few distinct sets: format each once
    rows = [_list_row(r, usage.get(r.id), now, perms) for r in records]
    expired = [r.is_expired(now) for r in records]
    if not _is_terminal():
        render.result(render.table(_HEADERS, rows))
    elif len(rows) <= _RICH_ROWS_MAX:
        _print_rich_table(rows, expired)
    else:
        _print_styled_table(rows, expired)


def _list_doc(record: TokenRecord, used: TokenUsage | None, now: datetime) -> dict[str, Any]:
    doc = record.public_dict()
    doc["expired"] = record.is_expired(now)
    if used is not None:
        doc.update(used.public_dict())
    else:
        doc.update(last_used_at=None, request_count=0, prompt_tokens=0, completion_tokens=0)
    return doc


def _list_row(
    record: TokenRecord, used: TokenUsage | None, now: datetime, perms: dict[Any, str]
) -> list[str]:
    permissions = perms.get(record.permissions)
    if permissions is None:
        from lms.auth.permissions import sorted_permissions

        permissions = perms[record.permissions] = ",".join(sorted_permissions(record.permissions))
    expires = _moment(record.expires_at, "never")
    if record.is_expired(now):
        expires += " (expired)"
    return [
        record.id,
        record.name,
        permissions or "-",
        ",".join(record.models) or "all",
        _moment(record.created_at, "-"),
        expires,
        _moment(used.last_used_at if used else None, "never"),
        str(used.request_count if used else 0),
    ]


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _print_rich_table(rows: list[list[str]], expired: list[bool]) -> None:
    # rich costs tens of milliseconds to import: only a terminal pays for it.
    from rich.console import Console
    from rich.table import Table

    # Four spaces between columns, as render.table lays them out on a pipe.
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2))
    for header in _HEADERS:
        table.add_column(header, no_wrap=header not in ("NAME", "MODELS"))
    for row, is_expired in zip(rows, expired, strict=True):
        table.add_row(*row, style="dim" if is_expired else None)
    Console(no_color=not render.use_colour(sys.stdout), highlight=False).print(table)


def _print_styled_table(rows: list[list[str]], expired: list[bool]) -> None:
    """The pipe's columns with a bold header and dim expired rows: rich lays out a long table
    in about a millisecond per row, too slow for a registry of thousands."""
    colour = render.use_colour(sys.stdout)
    lines = render.table(_HEADERS, rows).split("\n")
    typer.secho(lines[0], bold=True, color=colour)
    for line, is_expired in zip(lines[1:], expired, strict=True):
        if is_expired:
            typer.secho(line, dim=True, color=colour)
        else:
            typer.echo(line)


def _moment(moment: datetime | None, missing: str) -> str:
    """``2027-01-31T00:00:00Z``, as ``timespec.format_utc`` writes it (a listing formats
    thousands: this skips its conversions when the moment is already in UTC)."""
    if moment is None:
        return missing
    if moment.utcoffset():
        from datetime import UTC

        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="seconds")[:19] + "Z"


# --- edit -------------------------------------------------------------------------------------


@app.command()
def edit(
    token: TokenArgument,
    name: Annotated[
        str | None, typer.Option("--name", help="A new name.", show_default=False)
    ] = None,
    perm: Annotated[
        list[str] | None,
        typer.Option(
            "--perm",
            "-p",
            metavar="PERM",
            help=f"Replace the permissions: {_PERM_HELP} (repeatable).",
            autocompletion=completers.permissions,
            show_default=False,
        ),
    ] = None,
    add_perm: Annotated[
        list[str] | None,
        typer.Option(
            "--add-perm",
            metavar="PERM",
            help="Add a permission (repeatable).",
            autocompletion=completers.permissions,
            show_default=False,
        ),
    ] = None,
    remove_perm: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-perm",
            metavar="PERM",
            help="Remove a permission (repeatable).",
            autocompletion=completers.permissions,
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="GLOB",
            help="Replace the model allowlist (repeatable).",
            show_default=False,
        ),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all-models", help="Allow every model (clear the allowlist).")
    ] = False,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            metavar="WHEN",
            help="New expiry: a duration from now (30d) or a UTC date (2027-01-31).",
            show_default=False,
        ),
    ] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Never expire.")] = False,
    rpm: RpmOption = None,
    no_rpm: Annotated[bool, typer.Option("--no-rpm", help="Remove the rate limit.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Change a token's name, permissions, models, expiry or rate limit; its secret stays.

    The daemon applies the change to the token's very next request.
    """
    from lms.auth.permissions import parse_permissions
    from lms.auth.registry import Registry
    from lms.auth.timespec import parse_expiry

    registry = Registry()
    before = registry.find(token)
    after = registry.edit(
        token,
        name=name,
        permissions=parse_permissions(perm) if perm else None,
        add_permissions=parse_permissions(add_perm or []),
        remove_permissions=parse_permissions(remove_perm or []),
        models=model or None,
        all_models=all_models,
        expires_at=parse_expiry(expires) if expires is not None else None,
        no_expiry=no_expiry,
        rpm=rpm,
        no_rpm=no_rpm,
    )
    if json_output:
        render.emit_json(after.public_dict())
        return
    if after == before:
        render.note(f"token {after.name!r} (id {after.id}) already had these settings")
        return
    render.note(f"token {after.name!r} (id {after.id}) updated; its secret is unchanged")
    _describe_limits(after)


# --- rotate -----------------------------------------------------------------------------------


@app.command()
def rotate(
    token: TokenArgument,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            metavar="DURATION",
            help="How long the old secret keeps working (30m, 12h, 1d; 0: stops at once).",
        ),
    ] = "0",
    quiet: QuietOption = False,
    json_output: JsonOption = False,
) -> None:
    """Give a token a new secret and print it ONCE; id, name and permissions stay.

    The old secret keeps working for the --grace period (default: none), then never again.
    """
    from lms.auth.registry import Registry
    from lms.auth.timespec import parse_duration

    grace_period = parse_duration(grace, param="grace")
    record, full = Registry().rotate(token, grace_period)
    if json_output:
        render.emit_json({**record.public_dict(), "token": full})
    else:
        render.result(full)
    if quiet or json_output:
        return
    render.note(f"rotated token {record.name!r} (id {record.id})")
    until = record.previous_hash_expires_at
    if until is None:
        render.say("The old secret no longer works.")
    else:
        render.say(f"The old secret keeps working until {_moment(until, '-')}, then never again.")
    render.say("Store the new token now: it is shown only once.")


# --- rm ---------------------------------------------------------------------------------------


@app.command("rm")
def rm(
    token: TokenArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Revoke a token: the daemon refuses it from its very next request.

    Asks for confirmation on a terminal; without one (a script, a pipe), --yes is required.
    """
    from lms.auth.registry import Registry

    registry = Registry()
    record = registry.find(token)
    if not yes:
        if not render.is_interactive():
            raise InvalidParameterError(
                f"not revoking token {record.name!r} (id {record.id}) without confirmation: "
                "stdin is not a terminal",
                hint=f"pass --yes to revoke it: lms token rm {record.id} --yes",
            )
        typer.confirm(
            f"Revoke token {record.name!r} (id {record.id})? Clients using it will be refused",
            abort=True,
            err=True,
        )
    # Remove by id: the name could have been given to another token since the question.
    removed = registry.remove(record.id)
    render.note(f"revoked token {removed.name!r} (id {removed.id})")
