"""``man/lms.1`` and ``man/lms-<group>.1``: man pages written from the command model.

lms.1 describes the global options and the top-level commands (ls, ps, load, unload, get,
import, chat) in full, and points to one page per command group for the rest. Every page has
ENVIRONMENT (``LMS_HOME``, the ``LMS_*`` setting variables of :data:`lms.config.SETTINGS`),
FILES (from :mod:`lms.paths`), EXIT STATUS (:data:`lms.errors.EXIT_CODE_MEANINGS`), EXAMPLES and
SEE ALSO. The output is deterministic: no date, no path of this machine, the app's own order.
Only the classic man macros are used (``TH SH SS TP PP RS RE B BR I nf fi br``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import lms
from lms import config, paths
from lms.cli.docgen.examples import EXAMPLES
from lms.cli.docgen.tree import Argument, Command, Option, paragraphs
from lms.errors import EXIT_CODE_MEANINGS

_SOURCE = f"lms {lms.__version__}"
_MANUAL = "User Commands"

# The files of FILES, by the lms.paths function that locates each.
_FILES: list[tuple[str, str]] = [
    ("config_file", "Settings, written by lms config and lms auth require."),
    (
        "tokens_file",
        "The token registry: ids, names, permissions and SHA-256 hashes, never a "
        "secret (mode 0600). Written by lms token. The auth.registry_file setting may name "
        "another file instead, e.g. one that several gates share.",
    ),
    ("mcp_file", "MCP servers clients may use (written by you)."),
    (
        "models_dir",
        "Models, as <publisher>/<repository>/<file>.gguf (lms get, lms import), unless the "
        "models.dir setting names another folder, e.g. ~/.lmstudio/models, read in place.",
    ),
    ("chats_db", "Stored chats of /api/v1/chat and /v1/responses (daemon; bounded)."),
    ("usage_db", "Token usage: last use and request counts (daemon, in batches)."),
    ("audit_log", "The audit log: token changes, security settings switched, refused requests."),
    ("socket_path", "The daemon's control socket (only its owner may connect)."),
    ("pid_file", "The daemon's pid lock: one daemon per LMS_HOME."),
    ("daemon_log", "The daemon's log (rotated; never a secret)."),
]


def render_pages(root: Command) -> dict[str, str]:
    """Every man page, by file name."""
    pages = {"lms.1": _main_page(root)}
    for group in root.visible_subcommands():
        if group.is_group:
            pages[f"lms-{group.path[-1]}.1"] = _group_page(root, group)
    return pages


# --- roff -----------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Text for a roff input line: backslashes, minus signs, non-ASCII characters escaped, and
    an invisible break point after each '/' (a long path or URL still fits a narrow terminal)."""
    out = []
    for char in text.replace("\\", "\\e").replace("-", "\\-"):
        out.append(char if ord(char) < 128 else f"\\[u{ord(char):04X}]")
        if char == "/":
            out.append("\\:")
    return "".join(out)


def _text(text: str) -> str:
    """One input line of running text (a leading '.' or ' would start a request)."""
    line = escape(text)
    return "\\&" + line if line.startswith((".", "'")) else line


def _quoted(text: str) -> str:
    """A macro argument in double quotes."""
    return '"' + escape(text).replace('"', "\\(dq") + '"'


def _paragraphs(text: str) -> list[str]:
    lines: list[str] = []
    for index, paragraph in enumerate(paragraphs(text)):
        if index:
            lines.append(".PP")
        lines.append(_text(paragraph))
    return lines


def _bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{escape(text)}\\fR"


# --- parts ------------------------------------------------------------------------------------


def _synopsis(command: Command) -> list[str]:
    words: list[str] = []
    for argument in command.arguments:
        name = _italic(argument.metavar)
        words.append(name if argument.required else f"[{name}]")
    has_options = any(not o.eager for o in command.options)
    if command.is_group:
        words += [f"[{_italic('OPTIONS')}]"] if has_options else []
        words += [_italic("COMMAND"), f"[{_italic('ARGS')}]..."]
    elif has_options:
        words.append(f"[{_italic('OPTIONS')}]")
    lines = [f".B {escape(command.name)}"]
    if words:
        lines.append(" ".join(words))
    return lines


def _option_item(option: Option) -> list[str]:
    names = [n for n in option.all_names if not n.startswith("--")]
    names += [n for n in option.all_names if n.startswith("--")]
    tag = ", ".join(_bold(n) for n in names)
    if option.takes_value:
        tag += " " + _italic(option.metavar)
    text = option.help
    if option.multiple and "repeat" not in text.lower():
        text += " May be repeated."
    if option.default is not None:
        text += f" Default: {option.default}."
    return [".TP", tag, *_paragraphs(text or " ")]


def _argument_item(argument: Argument) -> list[str]:
    text = argument.help or " "
    if not argument.required:
        text += " Optional."
    return [".TP", _italic(argument.metavar), *_paragraphs(text)]


def _command_body(command: Command) -> list[str]:
    lines = _paragraphs(command.help)
    for argument in command.arguments:
        lines += _argument_item(argument)
    for option in command.options:
        lines += _option_item(option)
    return lines


def _subsection(command: Command) -> list[str]:
    return [f".SS {_quoted(command.usage())}", *_command_body(command)]


def _environment() -> list[str]:
    lines = [".SH ENVIRONMENT"]
    lines += [
        ".TP",
        _bold("LMS_HOME"),
        _text(
            "Moves every file of lms under this one directory (config/, data/, logs/, run/): "
            "settings, tokens, models, logs, the socket and the pid lock. For a second "
            "instance, or tests."
        ),
    ]
    security = []
    for spec in config.SETTINGS.values():
        if spec.env_var is None:
            security.append(spec.key)
            continue
        lines += [
            ".TP",
            _bold(spec.env_var),
            _text(
                f"The setting {spec.key}: {spec.help} (default: {_value(spec.default)}). "
                "It overrides config.toml; a command-line flag overrides it."
            ),
        ]
    lines += [
        ".PP",
        _text(
            "Security settings have no environment variable: they come from config.toml only "
            f"({', '.join(security)})."
        ),
        ".TP",
        _bold("NO_COLOR"),
        _text(
            "When set and not empty, no colour on a terminal either (as on a pipe, where lms "
            "never writes colours or progress bars). TERM=dumb does the same."
        ),
        ".TP",
        _bold("LM_API_TOKEN"),
        _text(
            "Not read by lms itself: the usual variable for an API token in clients "
            '(curl -H "Authorization: Bearer $LM_API_TOKEN", LM Studio\'s SDKs). '
            "Fill it with: export LM_API_TOKEN=$(lms token create NAME --quiet)."
        ),
        ".TP",
        _bold("XDG_CONFIG_HOME, XDG_DATA_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR"),
        _text("Where state lives when LMS_HOME is not set (see FILES)."),
    ]
    return lines


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "empty"
    return str(value)


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def file_locations() -> list[tuple[str, str, str]]:
    """(default path, path under LMS_HOME, description) of each file, without this machine's
    home directory: paths computed by lms.paths for a placeholder home."""
    home, lms_home = "/@HOME@", "/@LMS_HOME@"
    xdg = {
        f"XDG_{kind}": None for kind in ("CONFIG_HOME", "DATA_HOME", "STATE_HOME", "RUNTIME_DIR")
    }
    found = []
    for function, description in _FILES:
        locate = getattr(paths, function)
        with _environ(HOME=home, LMS_HOME=None, **xdg):
            default = str(locate()).replace(home, "~", 1)
        with _environ(LMS_HOME=lms_home):
            relocated = str(locate()).replace(lms_home, "$LMS_HOME", 1)
        found.append((default, relocated, description))
    return found


def _files() -> list[str]:
    lines = [".SH FILES"]
    runtime_note = (
        f" When XDG_RUNTIME_DIR is set (and private), in $XDG_RUNTIME_DIR/{paths.APP_NAME}/ "
        "instead."
    )
    for function, (default, relocated, description) in zip(
        (f for f, _ in _FILES), file_locations(), strict=True
    ):
        text = f"{description} With LMS_HOME: {relocated}."
        if function in ("socket_path", "pid_file"):
            text += runtime_note
        lines += [".TP", _italic(default), _text(text)]
    return lines


def _exit_status() -> list[str]:
    lines = ['.SH "EXIT STATUS"']
    for code, meaning in EXIT_CODE_MEANINGS.items():
        lines += [".TP", _bold(str(int(code))), _text(meaning[0].upper() + meaning[1:] + ".")]
    return lines


def _examples(page: str) -> list[str]:
    lines = [".SH EXAMPLES"]
    for index, (what, shell) in enumerate(EXAMPLES[page]):
        if index:
            lines.append(".PP")
        lines += [_text(what), ".PP", ".RS 4", ".nf"]
        lines += [_text(line) for line in shell.split("\n")]
        lines += [".fi", ".RE"]
    return lines


def _see_also(root: Command, current: str) -> list[str]:
    pages = ["lms"] + [f"lms-{g.path[-1]}" for g in root.visible_subcommands() if g.is_group]
    others = [p for p in pages if p != current]
    lines = ['.SH "SEE ALSO"']
    for index, page in enumerate(others):
        comma = "," if index < len(others) - 1 else ""
        lines.append(f".BR {escape(page)} (1){comma}")
    return lines


def _header(name: str, summary: str) -> list[str]:
    return [
        f'.\\" Generated by `python -m lms.cli.docgen` from the Typer app of {_SOURCE}: do not '
        "edit.",
        f'.TH {escape(name.upper())} 1 "" {_quoted(_SOURCE)} {_quoted(_MANUAL)}',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
    ]


def _summary(command: Command) -> str:
    summary = command.summary.removeprefix("lms: ").rstrip(".")
    return summary[0].lower() + summary[1:] if summary[1:2].islower() else summary


# --- pages ------------------------------------------------------------------------------------


def _main_page(root: Command) -> str:
    lines = _header("lms", _summary(root))
    lines += [".SH SYNOPSIS", *_synopsis(root), ".SH DESCRIPTION"]
    lines += _paragraphs(root.help)
    lines += [
        ".PP",
        _text(
            "Results go to standard output, messages and progress to standard error. Every "
            "listing and status command takes --json: one JSON document on standard output. "
            "No command asks a question when standard input is not a terminal: a destructive "
            "one then needs --yes."
        ),
        ".SH OPTIONS",
    ]
    for option in root.options:
        lines += _option_item(option)
    lines.append(".SH COMMANDS")
    for command in root.visible_subcommands():
        if command.is_group:
            lines += [f".SS {_quoted(command.usage())}", *_paragraphs(command.help)]
            lines += [".PP", _text("Commands:")]
            for sub in command.visible_subcommands():
                lines += [".TP", _bold(sub.name), _text(sub.summary)]
            lines += [".PP", f"See \\fB{escape(_page_name(command))}\\fR(1)."]
        else:
            lines += _subsection(command)
    lines += _environment() + _files() + _exit_status() + _examples("")
    lines += _see_also(root, "lms")
    return "\n".join(lines) + "\n"


def _page_name(group: Command) -> str:
    return "lms-" + group.path[-1]


def _group_page(root: Command, group: Command) -> str:
    name = _page_name(group)
    lines = _header(name, _summary(group))
    lines.append(".SH SYNOPSIS")
    for index, sub in enumerate(group.visible_subcommands()):
        if index:
            lines.append(".br")
        lines += _synopsis(sub)
    lines += [".SH DESCRIPTION", *_paragraphs(group.help), ".SH COMMANDS"]
    for sub in group.visible_subcommands():
        lines += _subsection(sub)
    lines += _environment() + _files() + _exit_status() + _examples(group.path[-1])
    lines += _see_also(root, name)
    return "\n".join(lines) + "\n"
