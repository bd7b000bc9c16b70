"""Typer's coercion, deferred until a value is there (lms/cli/coercion.py): same values, same
errors, and no pydantic for parameters left out."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer._click import Context
from typer._coercion import AdapterRuntimeParam
from typer.core import TyperGroup, _TyperParameter
from typer.testing import CliRunner

from lms.cli import HELP_OPTION_NAMES, app, coercion

pytestmark = pytest.mark.usefixtures("lms_home")


def _walk(command: Any) -> list[Any]:
    found = [command]
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            found.extend(_walk(sub))
    return found


def _params(command: Any) -> list[_TyperParameter]:
    help_option = command.get_help_option(
        Context(command, help_option_names=list(HELP_OPTION_NAMES))
    )
    return [p for p in [*command.params, help_option] if isinstance(p, _TyperParameter)]


def test_every_parameter_of_every_command_is_deferred() -> None:
    root = typer.main.get_command(app)
    coercion.defer(root, HELP_OPTION_NAMES)
    params = [p for command in _walk(root) for p in _params(command)]
    assert len(params) > 50
    assert all(isinstance(p._runtime_param, coercion.DeferredRuntimeParam) for p in params)
    assert all(not p._runtime_param.built for p in params)  # type: ignore[union-attr]


def test_a_left_out_value_builds_nothing_and_a_given_one_is_typers_own() -> None:
    root = typer.main.get_command(app)
    coercion.defer(root, HELP_OPTION_NAMES)
    chat = root.commands["chat"]  # type: ignore[attr-defined]
    ctx = Context(chat)
    max_tokens = next(p for p in chat.params if p.name == "max_tokens")
    assert max_tokens.process_value(ctx, None) is None
    runtime = max_tokens._runtime_param
    assert isinstance(runtime, coercion.DeferredRuntimeParam) and runtime.built == []
    assert max_tokens.process_value(ctx, "7") == 7
    assert len(runtime.built) == 1 and isinstance(runtime.built[0], AdapterRuntimeParam)
    assert max_tokens.process_value(ctx, "8") == 8
    assert len(runtime.built) == 1  # built once


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "warm"], "Invalid value for '--temperature'"),
        (["--max-tokens", "0"], "Invalid value for '--max-tokens'"),
        (["--ttl", "1.5"], "Invalid value for '--ttl'"),
    ],
)
def test_a_bad_value_is_still_typers_usage_error(
    runner: CliRunner, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["chat", "m", "-p", "hi", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()).replace("│", "")
