"""How the CLI prints: results to stdout, messages to stderr, JSON as one document.

Tables are plain columns (four spaces apart, like LM Studio's ``lms``) so that they stay the same
on a pipe; colour only where the stream is a terminal and ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

import typer

PREFIX = "lms: "


def use_colour(stream: IO[str]) -> bool:
    """Colour only on a terminal, never with ``NO_COLOR`` set or ``TERM=dumb``."""
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def is_interactive() -> bool:
    """Whether the user can answer a prompt (stdin is a terminal)."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


# --- stdout -----------------------------------------------------------------------------------


def result(text: str = "") -> None:
    """A result line on stdout."""
    typer.echo(text)


def emit_json(doc: Any) -> None:
    """One JSON document on stdout (stable keys as given, sorted nowhere: order is meaning)."""
    typer.echo(json.dumps(doc, ensure_ascii=False))


# --- stderr -----------------------------------------------------------------------------------


def say(text: str) -> None:
    """A message on stderr."""
    typer.echo(text, err=True)


def note(text: str) -> None:
    """A message on stderr, prefixed with ``lms:``."""
    typer.echo(PREFIX + text, err=True)


def warn(text: str) -> None:
    """A warning on stderr, in bold yellow on a terminal."""
    colour = use_colour(sys.stderr)
    typer.secho(f"{PREFIX}warning: {text}", err=True, fg="yellow", bold=True, color=colour)


def error(message: str, hint: str | None = None) -> None:
    """An error on stderr, as the root group reports it."""
    colour = use_colour(sys.stderr)
    typer.secho(f"{PREFIX}{message}", err=True, fg="red", color=colour)
    if hint:
        typer.echo(f"hint: {hint}", err=True)


@contextlib.contextmanager
def spinner(text: str) -> Iterator[None]:
    """A rich spinner on stderr while long work runs; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    console = Console(stderr=True, no_color=not use_colour(sys.stderr))
    with console.status(text):
        yield


# --- formatting -------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain columns, four spaces apart, left-aligned; no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("    ".join(cells).rstrip())
    return "\n".join(lines)


def format_size(size: int | None) -> str:
    """Decimal units, as LM Studio shows sizes: ``253.06 MB``, ``4.92 GB``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} TB"


def format_duration(seconds: float | None) -> str:
    """Compact durations: ``45s``, ``55m``, ``1h``, ``1h 5m``, ``2d 3h``."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts: list[tuple[int, str]] = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    if total == 0:
        return "0s"
    # Two units are enough to read at a glance (1h 5m, not 1h 5m 12s).
    first = next(i for i, (n, _) in enumerate(parts) if n)
    kept = [f"{n}{u}" for n, u in parts[first : first + 2] if n]
    return " ".join(kept)


def format_ttl(left: float | None, ttl: int | None) -> str:
    """``55m / 1h``: idle time left before an unload, over the instance's TTL."""
    if ttl is None:
        return "-"
    return f"{format_duration(left)} / {format_duration(ttl)}"


def format_value(value: Any) -> str:
    """A setting value as a user types it back to ``lms config set``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "[]"
    return str(value)


def on_off(value: bool | None) -> str:
    if value is None:
        return "unknown"
    return "on" if value else "off"
