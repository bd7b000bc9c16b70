"""ONE real daemon for the fuzz suite: the real ``lms`` command in a subprocess, a private
LMS_HOME, ``auth.required`` on, a token holding every permission, the real default model."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LMS = str(Path(sys.executable).with_name("lms"))
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Exit)\b.*")
MODEL = "google/gemma-3-270m"

#: Settings of the fuzz daemon. A short default context bounds any generation a hostile
#: ``max_tokens`` lets run to the context's end; private URLs let download and MCP cases go as
#: far as a refused connection on this machine (nothing leaves it).
CONFIG_TOML = """\
[auth]
required = true

[models]
context_length = 256
allow_private_urls = true
"""


class Daemon:
    """The daemon of one LMS_HOME; :meth:`start` again after it died."""

    def __init__(self, models_dir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lmsfz"))
        (self.root / "data").mkdir(mode=0o700)
        (self.root / "data" / "models").symlink_to(models_dir, target_is_directory=True)
        (self.root / "config").mkdir(mode=0o700)
        (self.root / "config" / "config.toml").write_text(CONFIG_TOML)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
        self.env.update(LMS_HOME=str(self.root), NO_COLOR="1")
        self.url = ""
        self.token = ""
        self.restarts = 0

    def lms(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LMS, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start(self) -> None:
        if not self.token:
            made = self.lms("token", "create", "fuzz", "--perm", "all", "--quiet")
            assert made.returncode == 0, made.stderr
            self.token = made.stdout.strip()
        started = self.lms("server", "start", "--port", "0")
        assert started.returncode == 0, started.stderr
        self.url = started.stdout.strip()
        # The model loads before the first case, not inside one.
        status, body = self.request("POST", "/api/v1/models/load", {"model": MODEL})
        assert status == 200, body

    def restart(self) -> None:
        """Start again after the daemon died (a fuzz run goes on and counts the death)."""
        self.restarts += 1
        self.kill()
        self.start()

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname and parts.port
        return parts.hostname, parts.port

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 120
    ) -> tuple[int, Any]:
        """One plain request with the token (for set-up, clean-up and liveness checks)."""
        host, port = self.host_port
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {**self.auth, "Content-Type": "application/json"}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw
        finally:
            connection.close()

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "daemon.log"

    def log_size(self) -> int:
        """Where the daemon log ends now (mark it before a case, read what the case added)."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def last_error(self, since: int = 0) -> str:
        """The exception line of the last traceback the daemon logged after offset ``since``
        (the cause of a 500 or of a socket the daemon dropped); "" when there is none."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(since, log.tell() - 64_000))
                tail = log.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        for line in reversed(tail):
            if _EXCEPTION_LINE.match(line):
                return line[:160]
        return ""

    def pid(self) -> int | None:
        try:
            return int((self.root / "run" / "lms.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """Stop this daemon by its pid (never by name): down, then TERM, then KILL."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.lms("daemon", "down", timeout=60)
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)):
            if not self.is_alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.is_alive():
                time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "run" / "lms.pid").unlink()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def unload_extras(daemon: Daemon) -> None:
    """Unload what a load case added (anything but the default model's two instances), so that
    cases never pile instances up."""
    status, body = daemon.request("GET", "/api/v1/models")
    assert status == 200, body
    for model in body["models"]:
        for instance in model["loaded_instances"]:
            name = instance["id"]
            if name not in (MODEL, MODEL + ":embedding"):
                daemon.request("POST", "/api/v1/models/unload", {"instance_id": name})
