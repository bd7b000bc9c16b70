"""``lms chat``: one-shot or interactive chat with a model, streamed from the daemon."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lms.cli import completers, render
from lms.errors import InvalidRequestError, from_code

if TYPE_CHECKING:
    from lms import client as control

DEFAULT_SYSTEM = (
    "You are an AI assistant running in the user's terminal. Provide helpful and concise responses."
)


def register(app: typer.Typer, *, rich_help_panel: str) -> None:
    app.command("chat", rich_help_panel=rich_help_panel)(chat)


def chat(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Model key or loaded identifier (default: the loaded one).",
            autocompletion=completers.models,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            "-p",
            metavar="PROMPT",
            help="One-shot: answer this and exit (stdin is appended).",
        ),
    ] = None,
    system: Annotated[
        str | None, typer.Option("--system-prompt", "-s", metavar="SYSTEM", help="System prompt.")
    ] = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Print prediction stats to stderr.")
    ] = False,
    ttl: Annotated[
        int,
        typer.Option(
            "--ttl",
            metavar="SECONDS",
            min=1,
            help="Idle seconds before a JIT-loaded model unloads.",
        ),
    ] = 3600,
    temperature: Annotated[
        float | None,
        typer.Option("--temperature", metavar="T", min=0.0, help="Sampling temperature."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", metavar="N", min=1, help="Stop after this many tokens."),
    ] = None,
) -> None:
    """Chat with a model: one-shot with -p (or piped stdin), else interactive.

    The reply streams to stdout; --stats prints tokens/second, time to first token and token
    counts to stderr. In interactive mode Ctrl-C interrupts a reply without leaving; /exit or
    Ctrl-D leaves, /clear forgets the conversation.
    """
    from lms import client as control
    from lms import starter

    piped = None if sys.stdin.isatty() else sys.stdin.read()
    if prompt is None and piped is not None and not piped.strip():
        # Interactive chat prompts; off a terminal there is nobody to answer.
        raise InvalidRequestError(
            "nothing to send: stdin is not a terminal and holds no prompt",
            hint='give one with -p "..." or on stdin (echo "..." | lms chat)',
        )
    daemon = control.ControlClient()
    starter.ensure_daemon(client=daemon, announce=render.note)
    model = model or _default_model(daemon)
    messages: list[dict[str, str]] = [{"role": "system", "content": system or DEFAULT_SYSTEM}]
    options = {"model": model, "ttl": ttl, "temperature": temperature, "max_tokens": max_tokens}
    if prompt is not None or piped:
        text = "\n\n".join(part for part in (prompt, piped) if part)
        if not text.strip():
            raise InvalidRequestError("the prompt is empty")
        messages.append({"role": "user", "content": text})
        _reply(daemon, options, messages, stats)
        return
    _interactive(daemon, options, messages, stats)


def _default_model(daemon: control.ControlClient) -> str:
    loaded = daemon.instances()
    if len(loaded) == 1:
        return loaded[0]["identifier"]
    models = [m["key"] for m in daemon.models() if m["type"] == "llm"]
    if len(models) == 1:
        return models[0]
    raise InvalidRequestError(
        "say which model to chat with: lms chat MODEL",
        hint="models: " + (", ".join(models) or "none (see lms get / lms import)"),
    )


def _reply(
    daemon: control.ControlClient,
    options: dict[str, Any],
    messages: list[dict[str, str]],
    stats: bool,
) -> str:
    body = {k: v for k, v in options.items() if v is not None}
    body["messages"] = messages
    pieces: list[str] = []
    stream = daemon.chat(body)  # a generator: closing it closes the connection
    try:
        for event in stream:
            kind = event.get("type")
            if kind == "delta":
                pieces.append(event["content"])
                sys.stdout.write(event["content"])
                sys.stdout.flush()
            elif kind == "error":
                error = event["error"]
                raise from_code(error["code"], error["message"], hint=error.get("hint"))
            elif kind == "end" and stats:
                _print_stats(event["stats"])
    finally:
        stream.close()
        if pieces and not pieces[-1].endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
    return "".join(pieces)


def _print_stats(stats: dict[str, Any]) -> None:
    render.say("Prediction Stats:")
    render.say(f"  Stop Reason: {stats['stop_reason']}")
    render.say(f"  Tokens/Second: {stats['tokens_per_second']}")
    render.say(f"  Time to First Token: {stats['time_to_first_token_seconds']}s")
    render.say(f"  Prompt Tokens: {stats['prompt_tokens']}")
    render.say(f"  Predicted Tokens: {stats['predicted_tokens']}")
    render.say(f"  Total Tokens: {stats['prompt_tokens'] + stats['predicted_tokens']}")


def _interactive(
    daemon: control.ControlClient,
    options: dict[str, Any],
    messages: list[dict[str, str]],
    stats: bool,
) -> None:
    render.note(f"chatting with {options['model']}; /exit or Ctrl-D leaves, /clear forgets")
    system = messages[0]
    while True:
        try:
            line = input("> ")
        except EOFError:
            render.say("")
            return
        except KeyboardInterrupt:
            render.say("")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/clear":
            del messages[1:]
            render.note("conversation cleared")
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer = _reply(daemon, options, messages, stats)
        except KeyboardInterrupt:
            render.say("")
            render.note("reply interrupted")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})
        messages[0] = system
