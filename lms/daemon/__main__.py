"""``python -m lms.daemon``: the daemon process.

``--ready-fd N`` makes the daemon write one JSON line to fd N once its control socket listens
(``{"ok": true, "pid": ...}``) or when it fails to start (``{"ok": false, "code", "message"}``);
the CLI waits on it instead of sleeping. ``--serve`` is foreground mode: the API server starts
at once and the daemon stays attached to the terminal (``lms server start --foreground``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from lms import config, paths
from lms.daemon import connections, logs
from lms.daemon.lock import PidLock
from lms.daemon.service import Daemon
from lms.errors import ExitCode, LmsError

log = logging.getLogger("lms.daemon")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lms.daemon", description=__doc__)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--serve", action="store_true", help="start the API server (foreground)")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--bind", default=None)
    parser.add_argument("--cors", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def _report(fd: int | None, message: dict[str, Any]) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
        os.close(fd)
    except OSError:
        pass  # the CLI that started us is gone; nothing to tell


def _print_banner(daemon: Daemon) -> None:
    status = daemon.server_status()
    url = status["url"]
    auth = status["auth_required"]
    header = ' -H "Authorization: Bearer $LM_API_TOKEN"' if auth else ""
    lines = [
        f"lms is serving on {url}  (Ctrl-C stops it)",
        f"  models:  curl{header} {url}/v1/models",
        f"  try:     curl{header} {url}/v1/completions -H 'Content-Type: application/json' \\",
        '             -d \'{"model": "google/gemma-3-270m", "prompt": "The capital of France is",'
        ' "max_tokens": 16}\'',
    ]
    if auth:
        lines.append(
            "  auth is on: create a token with  export LM_API_TOKEN=$(lms token create me --quiet)"
        )
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    overrides: dict[str, Any] = {}
    try:
        overrides.update(config.env_values())
        if args.port is not None:
            overrides["server.port"] = config.parse_text("server.port", str(args.port))
        if args.bind is not None:
            overrides["server.bind"] = config.parse_text("server.bind", args.bind)
        paths.ensure_private_dir(paths.runtime_dir())
        logs.setup(paths.daemon_log(), foreground=args.serve, debug=args.debug)
        lock = PidLock(paths.pid_file())
        lock.acquire()
    except LmsError as err:
        _report(args.ready_fd, {"ok": False, "code": err.code, "message": err.message})
        print(f"lms daemon: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    os.umask(0o077)
    connections.raise_fd_limit()  # the API's connection cap keeps a reserve below it
    daemon = Daemon(overrides)

    def ready() -> None:
        log.info("daemon %d ready on %s", os.getpid(), daemon.socket_path)
        _report(args.ready_fd, {"ok": True, "pid": os.getpid()})
        if args.serve:
            _print_banner(daemon)

    try:
        tls = (args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
        asyncio.run(daemon.serve(serve_api=args.serve, ready=ready, cors=args.cors, tls=tls))
    except LmsError as err:
        log.error("daemon failed: %s", err.message)
        _report(args.ready_fd, {"ok": False, "code": err.code, "message": err.message})
        print(f"lms daemon: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    except Exception:
        log.exception("daemon crashed")
        _report(args.ready_fd, {"ok": False, "code": "internal_error", "message": "crashed"})
        return int(ExitCode.FAILED)
    finally:
        lock.release()
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
