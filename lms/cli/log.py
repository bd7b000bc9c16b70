"""``lms log stream``: live requests and model input/output from the daemon."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from lms.cli import render

app = typer.Typer(no_args_is_help=True, help="Live logs of the daemon.")


class Source(StrEnum):
    server = "server"
    model = "model"


@app.command("stream")
def stream(
    source: Annotated[
        list[Source] | None,
        typer.Option(
            "--source", "-s", help="server (requests) or model (input/output); both by default."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON event per line (NDJSON).")
    ] = False,
) -> None:
    """Follow the daemon's live log until Ctrl-C.

    server events: method, route, status, token id and duration of each API request.
    model events: the formatted prompt of each prediction and its output with stats.
    Never a secret: requests are logged by token id.
    """
    from lms import client as control
    from lms import starter

    daemon = control.ControlClient()
    starter.ensure_daemon(client=daemon, announce=render.note)
    sources = [s.value for s in (source or list(Source))]
    events = daemon.stream_logs(sources)
    try:
        for event in events:
            if event.get("type") == "subscribed":
                render.note(f"streaming logs ({', '.join(sources)}); Ctrl-C stops")
                continue
            if as_json:
                render.result(json.dumps(event, ensure_ascii=False))
            else:
                render.result(_text(event))
    except KeyboardInterrupt:
        pass
    finally:
        events.close()


def _text(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(event["timestamp"] / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    data = event["data"]
    kind = data.get("type")
    if kind == "server.request":
        token = data.get("token_id") or "-"
        return (
            f"{when} {data['method']} {data['route']} {data['status']}"
            f" token={token} {data['duration_ms']}ms"
        )
    if kind == "llm.prediction.input":
        return f"{when} input to {data['modelIdentifier']}:\n{data['input']}\n"
    if kind == "llm.prediction.output":
        stats = " ".join(f"{k}={v}" for k, v in data.get("stats", {}).items())
        return f"{when} output of {data['modelIdentifier']} ({stats}):\n{data['output']}\n"
    return f"{when} {json.dumps(data)}"
