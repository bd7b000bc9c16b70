"""Daemon logging: a rotated file (0600), plus the terminal in foreground mode.

Every handler formats through :class:`ScrubbingFormatter`: whatever a logger passes (our own
messages, aiohttp's reports of malformed requests with their raw header lines, tracebacks), the
written record is redacted (no token, no secret: :mod:`lms.redaction`) and is exactly one line.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path
from types import TracebackType

from lms.redaction import scrub

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
log = logging.getLogger("lms.daemon")


class ScrubbingFormatter(logging.Formatter):
    """Formats a record, then redacts secrets and escapes control characters in the result: the
    message, its arguments, the traceback and the stack all end up on one redacted line."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))

    def formatException(self, ei: _ExcInfo) -> str:
        # record.exc_text caches this: keep the cached copy redacted too.
        return scrub(super().formatException(ei))


def setup(path: Path, *, foreground: bool, debug: bool = False) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler: logging.Handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if foreground:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
        console.setLevel(logging.INFO)
        root.addHandler(console)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    # stderr is daemon.log too (the CLI starts the daemon so): what Python would print there
    # raw (warnings, a dying thread's traceback) goes through the scrubbing handlers instead.
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("thread %s died", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
