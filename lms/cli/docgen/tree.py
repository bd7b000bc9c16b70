"""The Typer app as plain data: commands, options, arguments and how their values complete.

Every generator (completion scripts, man pages, the README's reference) reads this model, never
Typer's objects, so that they agree with each other and with ``lms --help``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import typer

from lms.cli import completers

ValueKind = Literal["none", "choices", "dynamic", "files"]


@dataclass(frozen=True)
class Values:
    """How the value of an option or argument completes."""

    kind: ValueKind = "none"
    choices: tuple[str, ...] = ()
    source: str = ""  # the lms.completion source, for kind "dynamic"


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]  # long name first, then short ones: ("--perm", "-p")
    secondary: tuple[str, ...]  # the "off" names of an on/off flag: ("--no-cors",)
    takes_value: bool
    multiple: bool
    metavar: str
    help: str
    default: str | None  # shown as "default: ..." when not None
    values: Values
    eager: bool  # --help, --version: end the command line

    @property
    def all_names(self) -> tuple[str, ...]:
        return self.names + self.secondary


@dataclass(frozen=True)
class Argument:
    name: str
    metavar: str
    required: bool
    help: str
    values: Values


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # () for lms itself, ("token", "rm") for lms token rm
    help: str  # the whole docstring (or the group's help), cleaned
    options: tuple[Option, ...]
    arguments: tuple[Argument, ...]
    subcommands: tuple[Command, ...] = field(default=())
    hidden: bool = False

    @property
    def name(self) -> str:
        return " ".join(("lms", *self.path))

    @property
    def summary(self) -> str:
        """The first paragraph of the help, on one line."""
        return paragraphs(self.help)[0] if self.help else ""

    @property
    def is_group(self) -> bool:
        return bool(self.subcommands)

    def visible_subcommands(self) -> tuple[Command, ...]:
        return tuple(c for c in self.subcommands if not c.hidden)

    def walk(self) -> list[Command]:
        """This command and every command below it, depth first, in the app's order."""
        found = [self]
        for sub in self.subcommands:
            found.extend(sub.walk())
        return found

    def usage(self) -> str:
        """``lms token create NAME [OPTIONS]``-style synopsis of this command."""
        parts = [self.name]
        has_options = any(not o.eager for o in self.options)
        if self.is_group:
            parts += ["[OPTIONS]"] if has_options else []
            parts += ["COMMAND", "[ARGS]..."]
            return " ".join(parts)
        parts += [a.metavar if a.required else f"[{a.metavar}]" for a in self.arguments]
        if has_options:
            parts.append("[OPTIONS]")
        return " ".join(parts)

    def synopsis(self) -> str:
        """``lms token rm ID|NAME [--yes]``: every option of a command, long names only."""
        parts = [self.name]
        parts += [a.metavar if a.required else f"[{a.metavar}]" for a in self.arguments]
        for option in self.options:
            if option.eager:
                continue
            longs = [n for n in option.all_names if n.startswith("--")] or list(option.names)
            word = "|".join(longs)
            if option.takes_value:
                word += f" {option.metavar}"
            parts.append(f"[{word}]..." if option.multiple else f"[{word}]")
        return " ".join(parts)


def paragraphs(text: str) -> list[str]:
    """The paragraphs of a cleaned docstring, each joined on one line."""
    blocks = [b for b in inspect.cleandoc(text).split("\n\n") if b.strip()]
    return [" ".join(line.strip() for line in b.splitlines()) for b in blocks]


def build(app: typer.Typer | None = None) -> Command:
    """The model of ``app`` (the ``lms`` app by default)."""
    if app is None:
        from lms.cli import app as lms_app

        app = lms_app
    root = typer.main.get_command(app)
    return _command(root, (), root.context_settings.get("help_option_names", ["--help"]))


def _command(cmd: Any, path: tuple[str, ...], help_names: list[str]) -> Command:
    options: list[Option] = []
    arguments: list[Argument] = []
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            arguments.append(_argument(param))
        else:
            options.append(_option(param))
    options.append(_help_option(help_names))
    subcommands: list[Command] = []
    for name, sub in getattr(cmd, "commands", {}).items():
        subcommands.append(_command(sub, (*path, name), help_names))
    return Command(
        path=path,
        help=inspect.cleandoc(cmd.help or ""),
        options=tuple(options),
        arguments=tuple(arguments),
        subcommands=tuple(subcommands),
        hidden=bool(getattr(cmd, "hidden", False)),
    )


def _help_option(names: list[str]) -> Option:
    longs = [n for n in names if n.startswith("--")]
    shorts = [n for n in names if not n.startswith("--")]
    return Option(
        names=(*longs, *shorts),
        secondary=(),
        takes_value=False,
        multiple=False,
        metavar="",
        help="Show this message and exit.",
        default=None,
        values=Values(),
        eager=True,
    )


def _values(param: Any) -> Values:
    desc = param.type_descriptor
    callback = desc.parameter_info.autocompletion
    if callback is not None:
        source = completers.source_of(callback)
        if source is not None:
            return Values("dynamic", source=source)
        return Values("choices", choices=tuple(callback("")))
    if desc.is_choice and desc.choices is not None:
        return Values("choices", choices=tuple(str(getattr(c, "value", c)) for c in desc.choices))
    if desc.is_path or desc.is_file:
        return Values("files")
    return Values()


def _option(param: Any) -> Option:
    names = sorted(param.opts, key=lambda n: (not n.startswith("--"), param.opts.index(n)))
    takes_value = not param.is_flag
    values = _values(param) if takes_value else Values()
    return Option(
        names=tuple(names),
        secondary=tuple(param.secondary_opts),
        takes_value=takes_value,
        multiple=bool(param.multiple),
        metavar=_metavar(param, values) if takes_value else "",
        help=inspect.cleandoc(param.help or ""),
        default=_default(param),
        values=values,
        eager=bool(param.is_eager),
    )


def _argument(param: Any) -> Argument:
    values = _values(param)
    return Argument(
        name=param.name,
        metavar=_metavar(param, values),
        required=bool(param.required),
        help=inspect.cleandoc(getattr(param, "help", None) or ""),
        values=values,
    )


def _metavar(param: Any, values: Values) -> str:
    if param.metavar:
        return str(param.metavar)
    if values.kind == "choices" and param.type_descriptor.is_choice:
        return "|".join(values.choices)
    if values.kind == "files":
        return "FILE"
    return str(param.name).upper().replace("_", "-")


def _default(param: Any) -> str | None:
    if param.is_flag or param.show_default is False or param.required:
        return None
    default = param.default
    if default is None or default == "" or isinstance(default, (bool, list, tuple)):
        return None
    return str(getattr(default, "value", default))


_SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*|--?[A-Za-z0-9][A-Za-z0-9-]*")


def check_words(words: Iterable[str]) -> list[str]:
    """``words`` as a list, after checking that each can be written into a shell script as is
    (no quoting, globbing or expansion): the scripts put fixed values between plain quotes."""
    checked = list(words)
    for word in checked:
        if not _SAFE_WORD.fullmatch(word):
            raise ValueError(f"{word!r} cannot be written into a completion script as is")
    return checked
