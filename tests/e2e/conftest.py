"""End-to-end fixtures: the real ``lms`` command in subprocesses, a private LMS_HOME each."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LMS = str(Path(sys.executable).with_name("lms"))


@dataclass
class Home:
    """An LMS_HOME and the environment that points the ``lms`` command at it."""

    root: Path
    env: dict[str, str]

    def lms(
        self, *args: str, timeout: float = 120, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LMS, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,  # type: ignore[call-overload]
        )

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def daemon_pid(self) -> int | None:
        try:
            return int((self.run_dir / "lms.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def server_url(self) -> str:
        status = self.lms("server", "status", "--json")
        assert status.returncode == 0, status.stderr
        return str(json.loads(status.stdout)["url"])


@pytest.fixture
def home(default_models_dir: Path) -> Iterator[Home]:
    root = Path(tempfile.mkdtemp(prefix="lmse"))
    (root / "data").mkdir(mode=0o700)
    (root / "data" / "models").symlink_to(default_models_dir, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env.update(LMS_HOME=str(root), NO_COLOR="1")
    # Outputs compared across requests must not hang on the machine's timing: speculation is
    # off here (its cost plan is measured), and proven in tests/inference/test_speculative.py.
    env["LMS_MODELS_SPECULATIVE"] = "false"
    state = Home(root, env)
    try:
        yield state
    finally:
        pid = state.daemon_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (state.run_dir / "lms.sock").exists():
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
