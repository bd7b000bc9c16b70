"""Plain HTTP calls and daemon stops shared by the end-to-end fault tests (stdlib only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import Home


def post(url: str, payload: dict[str, Any], timeout: float = 300) -> tuple[int, bytes]:
    """POST JSON; the status and the whole body, error statuses included."""
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a server-sent-events body."""
    events: list[tuple[str, dict[str, Any]]] = []
    for block in body.decode().split("\n\n"):
        kind, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
        if data and data != "[DONE]":
            events.append((kind, json.loads(data)))
    return events


def is_gone(pid: int) -> bool:
    """The process has exited (a zombie whose parent has yet to reap it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s")
        time.sleep(0.05)


def stop_daemon(home: Home) -> None:
    """``lms daemon down`` and wait until the process is gone; should that fail, end it by pid
    (SIGTERM, then SIGKILL) and fail, so that no daemon outlives its test."""
    pid = home.daemon_pid()
    if pid is None or is_gone(pid):
        return
    down = home.lms("daemon", "down", timeout=120)
    with contextlib.suppress(AssertionError):
        wait_until(lambda: is_gone(pid), timeout=60)
        if down.returncode == 0:
            return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: is_gone(pid), timeout=30)
            break
    raise AssertionError(f"lms daemon down failed (exit {down.returncode}): {down.stderr}")
