"""Typer's parameter coercion, built only for a value that needs it.

Typer 0.29 (pinned 0.29.*) coerces every parameter of a command line through a pydantic
``TypeAdapter`` that it builds on first use, before it looks at the value: an option left out
(value None) imports pydantic all the same, about 80 ms of every command's start-up. Typer adds
``--install-completion`` and ``--show-completion`` to the root and they are left out of nearly
every command line, so nearly every command paid for pydantic.

:func:`defer` gives each parameter a runtime that keeps Typer's own handling of a missing value
(:meth:`RuntimeParam.coerce`, shared by all runtimes) and builds Typer's own runtime, adapter
and all, the first time a value is actually there: the values, the errors and the messages are
Typer's, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from typer._click import Command, Context
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer.core import TyperGroup, _TyperParameter

__all__ = ["defer"]


@dataclass(frozen=True)
class DeferredRuntimeParam(RuntimeParam):
    """Typer's runtime for ``descriptor``, built when a value is first there to coerce."""

    descriptor: TypeDescriptor
    built: list[RuntimeParam] = field(default_factory=list, compare=False, repr=False)

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        if not self.built:  # Typer's own runtime, built once per parameter
            self.built.append(build_runtime_param(self.descriptor))
        return self.built[0]._coerce_value(value, param=param, ctx=ctx)


def defer(command: Command, help_option_names: Sequence[str] = ("--help",)) -> None:
    """Give every Typer parameter of ``command`` and its sub-commands a deferred runtime, their
    help options included (made here as Typer makes them on parsing, from the root's
    ``help_option_names``, and kept by each command as it keeps its own)."""
    help_option = command.get_help_option(
        Context(command, help_option_names=list(help_option_names))
    )
    for param in [*command.params, *([help_option] if help_option else [])]:
        if isinstance(param, _TyperParameter) and param._runtime_param is None:
            descriptor = param.type_descriptor
            param._runtime_param = DeferredRuntimeParam(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                descriptor=descriptor,
            )
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            defer(sub, help_option_names)
