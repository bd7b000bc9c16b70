"""Shell completion on the Typer side: ``autocompletion=`` callbacks and ``lms __complete``.

Two kinds of callbacks:

- fixed values (permissions, setting keys): the docs generator calls them once and writes the
  values into the static scripts of ``completions/``;
- values that change (tokens, model keys, loaded instances): made by :func:`dynamic`, which marks
  the callback with its :mod:`lms.completion` source, so that the generator writes a call to
  ``lms __complete SOURCE`` into the scripts instead of values.

Typer's own dynamic completion (``lms --install-completion``) calls the same callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from lms import completion, config
from lms.launcher import COMPLETE_COMMAND

Completer = Callable[[str], list[str]]

# The attribute of a dynamic callback that names its lms.completion source.
SOURCE_ATTRIBUTE = "lms_completion_source"


def dynamic(source: str) -> Completer:
    """A callback offering the values of ``lms __complete SOURCE`` that start with what is typed."""
    if source not in completion.SOURCES:
        raise ValueError(f"unknown completion source {source!r}")

    def complete(incomplete: str) -> list[str]:
        try:
            return completion.values(source, incomplete)
        except Exception:  # a TAB shows nothing rather than a traceback
            return []

    complete.__name__ = f"complete_{source}"
    setattr(complete, SOURCE_ATTRIBUTE, source)
    return complete


def source_of(callback: object) -> str | None:
    """The :mod:`lms.completion` source of a callback made by :func:`dynamic`, else None."""
    source = getattr(callback, SOURCE_ATTRIBUTE, None)
    return source if isinstance(source, str) else None


tokens = dynamic("tokens")
models = dynamic("models")
instances = dynamic("instances")
remotes = dynamic("remotes")


def permissions(incomplete: str) -> list[str]:
    """Permission names (fixed: written into the static scripts)."""
    from lms.auth.permissions import valid_names

    return [name for name in valid_names() if name.startswith(incomplete.lower())]


def setting_keys(incomplete: str) -> list[str]:
    """Setting keys of ``lms config`` (fixed: written into the static scripts)."""
    return [key for key in config.SETTINGS if key.startswith(incomplete)]


def register(app: typer.Typer) -> None:
    """Add the hidden ``lms __complete`` command (the launcher answers it before Typer loads;
    this is the same command for ``python -c 'from lms.cli import main'`` and tests)."""
    app.command(COMPLETE_COMMAND, hidden=True)(complete_values)


def complete_values(
    source: Annotated[str, typer.Argument(help="tokens, models or instances.")],
    prefix: Annotated[str, typer.Argument(help="Only values starting with this.")] = "",
) -> None:
    """Print the values shell completion offers for SOURCE, one per line (for the scripts)."""
    code = completion.main([source, prefix])
    if code:
        raise typer.Exit(code)
