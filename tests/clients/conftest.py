"""A real daemon and API server (foreground mode) for the official client libraries."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Server:
    url: str
    home: Path


@pytest.fixture(scope="session")
def server(default_models_dir: Path) -> Iterator[Server]:
    """`python -m lms.daemon --serve` on a free port, with its own LMS_HOME, for the session."""
    home = Path(tempfile.mkdtemp(prefix="lmsc"))
    (home / "data").mkdir(mode=0o700)
    (home / "data" / "models").symlink_to(default_models_dir, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env["LMS_HOME"] = str(home)
    # Outputs compared across requests must not hang on the machine's timing: speculation is
    # off here (its cost plan is measured), and proven in tests/inference/test_speculative.py.
    env["LMS_MODELS_SPECULATIVE"] = "false"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lms.daemon", "--serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the server listens
        assert "serving on " in banner, banner
        yield Server(url=banner.split("serving on ")[1].split()[0], home=home)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def auth_on(server: Server) -> Iterator[Path]:
    """Require authentication for one test (the daemon re-reads config.toml on change)."""
    config = server.home / "config" / "config.toml"
    config.parent.mkdir(mode=0o700, exist_ok=True)
    config.write_text("[auth]\nrequired = true\n")
    try:
        yield server.home
    finally:
        config.write_text("[auth]\nrequired = false\n")
