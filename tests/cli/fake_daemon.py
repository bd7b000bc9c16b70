"""A stand-in daemon process for tests of ``lms.starter.ensure_daemon`` (start-up plumbing only).

It follows the daemon's start-up contract: ``--ready-fd N`` gets one JSON line, the pid file is
held under an flock (a second one exits 6), ``POST /shutdown`` makes it exit. ``FAKE_DAEMON_MODE``
picks a failure: ``fail`` (reports port_in_use), ``die`` (exits 7 without a word);
``FAKE_DAEMON_DELAY`` seconds pass between taking the lock and listening.
``FAKE_DAEMON_SPAWNS`` names a file that gets one line per start, to count them.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from typing import Any

from fake_control import FakeControlServer

from lms import paths


def main(argv: list[str]) -> int:
    ready_fd = int(argv[argv.index("--ready-fd") + 1]) if "--ready-fd" in argv else None

    def report(message: dict[str, Any]) -> None:
        if ready_fd is not None:
            os.write(ready_fd, (json.dumps(message) + "\n").encode())
            os.close(ready_fd)

    spawns = os.environ.get("FAKE_DAEMON_SPAWNS")
    if spawns:
        with open(spawns, "a") as out:
            out.write(f"{os.getpid()}\n")
    mode = os.environ.get("FAKE_DAEMON_MODE", "ok")
    if mode == "die":
        return 7
    if mode == "fail":
        report({"ok": False, "code": "port_in_use", "message": "port 1234 is in use"})
        return 6
    lock_fd = os.open(paths.pid_file(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        report({"ok": False, "code": "daemon_already_running", "message": "lock held"})
        return 6
    time.sleep(float(os.environ.get("FAKE_DAEMON_DELAY", "0")))
    stop = threading.Event()
    fake = FakeControlServer(paths.socket_path())
    fake.route("POST", "/shutdown", (200, {"ok": True}))
    fake.after[("POST", "/shutdown")] = stop.set
    fake.start()
    report({"ok": True, "pid": os.getpid()})
    stop.wait()
    fake.stop()
    paths.pid_file().unlink(missing_ok=True)
    os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
