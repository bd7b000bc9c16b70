"""What the benchmarks share: an lms daemon serving the HTTP API from a home of its own.

served = harness.start("lmsb", {"LMS_MODELS_PARALLEL": "8"})
try:
    ...  # http://127.0.0.1:{served.port}, files under served.home
finally:
    served.stop()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Served:
    """A running ``python -m lms.daemon --serve``: its port, home and environment."""

    proc: subprocess.Popen[str]
    port: int
    home: Path
    env: dict[str, str]
    owns_home: bool

    @property
    def models_dir(self) -> Path:
        return self.home / "data" / "models"

    def stop(self) -> None:
        """SIGTERM, wait, and delete the home when it was made for this daemon."""
        self.proc.terminate()
        self.proc.wait(timeout=60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.owns_home:
            shutil.rmtree(self.home, ignore_errors=True)


def start(
    prefix: str, settings: Mapping[str, str] | None = None, home: Path | None = None
) -> Served:
    """Start a daemon with ``LMS_HOME`` = ``home`` (a fresh temp dir named ``prefix…`` when
    None) and the ``LMS_*`` ``settings``; the caller's own ``LMS_*``/``LMSTUDIO_*`` variables
    are dropped. Returns once the server listens (its banner names the port)."""
    owns_home = home is None
    home = Path(tempfile.mkdtemp(prefix=prefix)) if home is None else home
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMS_", "LMSTUDIO_"))}
    env["LMS_HOME"] = str(home)
    env.update(settings or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "lms.daemon", "--serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # "lms is serving on http://127.0.0.1:PORT ..."
    if "http://127.0.0.1:" not in banner:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the daemon did not start: {banner!r}")
    port = int(banner.split("http://127.0.0.1:")[1].split()[0])
    return Served(proc, port, home, env, owns_home)
