"""``lms config list | get | set | unset``: the settings in config.toml (no daemon needed)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from lms import config, paths
from lms.cli import completers, render

app = typer.Typer(
    help="Show and change settings (written to config.toml; no daemon needed).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
KeyArgument = Annotated[
    str,
    typer.Argument(
        help="Setting key, such as server.port.", autocompletion=completers.setting_keys
    ),
]

# Settings the daemon reads when the server starts, not while it runs.
_APPLY_AT_SERVER_START = {"server.port", "server.bind"}


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _describe(key: str, effective: config.Settings, file_values: dict[str, Any]) -> dict[str, Any]:
    spec = config.setting(key)
    return {
        "key": key,
        "value": _json_value(effective.get(key)),
        "default": _json_value(spec.default),
        "source": config.source_of(key, file_values, os.environ),
        "security": spec.security,
        "env_var": spec.env_var,
        "help": spec.help,
    }


def _current() -> tuple[config.Settings, dict[str, Any]]:
    file_values = config.read_file()
    return config.load(), file_values


@app.command("list")
def list_cmd(json_output: JsonOption = False) -> None:
    """List every setting: key, value, where the value comes from (default, file, env)."""
    effective, file_values = _current()
    docs = [_describe(key, effective, file_values) for key in config.SETTINGS]
    if json_output:
        render.emit_json(docs)
        return
    rows = [
        [
            doc["key"],
            render.format_value(doc["value"]),
            doc["source"],
            "security: config.toml only" if doc["security"] else "",
        ]
        for doc in docs
    ]
    render.result(render.table(["KEY", "VALUE", "SOURCE", "NOTE"], rows))


@app.command("get")
def get_cmd(key: KeyArgument, json_output: JsonOption = False) -> None:
    """Print the effective value of one setting."""
    config.setting(key)
    effective, file_values = _current()
    doc = _describe(key, effective, file_values)
    if json_output:
        render.emit_json(doc)
    else:
        render.result(render.format_value(doc["value"]))


@app.command("set")
def set_cmd(
    key: KeyArgument,
    value: Annotated[
        str, typer.Argument(help="New value: on/off, a number, or a comma-separated list.")
    ],
) -> None:
    """Validate a value and write it to config.toml.

    A change of a security setting (auth.*, mcp.*, server.cors*, server.allowed_hosts, ...) is
    recorded in the audit log.
    """
    stored = config.set_value(key, value, before_write=_audit_change)
    render.note(f"{key} = {render.format_value(stored)} (in {paths.config_file()})")
    _explain_effect(key)


@app.command("unset")
def unset_cmd(key: KeyArgument) -> None:
    """Remove a setting from config.toml: its default applies again."""
    default = config.unset_value(key, before_write=_audit_change)
    render.note(f"{key} reset to its default ({render.format_value(default)})")
    _explain_effect(key)


def _audit_change(key: str, old: Any, new: Any) -> None:
    # lms.config may not import lms.auth (a lower layer): the CLI hands it the audit's hook,
    # which records the change before the write, under config.toml's lock.
    from lms.auth import audit

    audit.security_setting(key, old, new)


def _explain_effect(key: str) -> None:
    spec = config.setting(key)
    if spec.env_var and os.environ.get(spec.env_var, "") != "":
        render.warn(f"{spec.env_var} is set in the environment and overrides config.toml")
    if key in _APPLY_AT_SERVER_START:
        render.note(
            "takes effect at the next start of the server (lms server stop; lms server start)"
        )
