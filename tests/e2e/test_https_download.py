"""`lms get` over HTTPS: a real TLS server on loopback with a certificate for ``localhost`` from a
CA made in the test. The daemon trusts that CA only through ``SSL_CERT_FILE`` (as a machine
with a corporate CA would), so the certificate check is OpenSSL's own, against the URL's name —
although the connection goes to the address the outbound rule pinned.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pki import Pki, make_pki

LMS = str(Path(sys.executable).with_name("lms"))
FILE = "/acme/tiny/resolve/main/tiny-Q8_0.gguf"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_url(
    pki: Pki, make_gguf: Callable[..., bytes], tmp_path: Path
) -> Iterator[tuple[str, bytes]]:
    """``https://localhost:PORT`` serving one small GGUF at :data:`FILE`, and its bytes."""
    body = make_gguf(tmp_path / "tiny.gguf", tensor_bytes=256 * 1024)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != FILE:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}", body
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def download_home() -> Iterator[Path]:
    """An LMS_HOME of its own (its models folder is written to) with private URLs allowed."""
    root = Path(tempfile.mkdtemp(prefix="lmsh"))
    config = root / "config"
    config.mkdir(mode=0o700)
    (config / "config.toml").write_text("[models]\nallow_private_urls = true\n")
    try:
        yield root
    finally:
        stopped = _stop_daemon(root)
        shutil.rmtree(root, ignore_errors=True)
        assert stopped is None, stopped


def _stop_daemon(root: Path) -> str | None:
    """Stop the daemon `lms get` started (``lms daemon down``); what went wrong, else None.

    Should ``down`` fail, the daemon is still ended (SIGTERM, then SIGKILL) so that no process
    outlives the test, and the failure is reported.
    """
    pid_file = root / "run" / "lms.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    down = subprocess.run(
        [LMS, "daemon", "down"], env=_env(root, None), capture_output=True, text=True, timeout=60
    )
    if down.returncode == 0 and _gone(pid, deadline=60):
        return None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _gone(pid, deadline=30):
            break
    return f"lms daemon down failed (exit {down.returncode}): {down.stderr.strip()}"


def _gone(pid: int, deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state == "Z":  # exited; its parent (not this test) has yet to reap it
            return True
        time.sleep(0.05)
    return False


def _env(home: Path, ca: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMS_", "SSL_CERT_"))}
    env.update(LMS_HOME=str(home), NO_COLOR="1")
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    return env


def test_get_over_https_verifies_the_certificate_by_name(
    download_home: Path, https_url: tuple[str, bytes], pki: Pki
) -> None:
    base, body = https_url
    done = subprocess.run(
        [LMS, "get", base + FILE, "--sha256", hashlib.sha256(body).hexdigest()],
        env=_env(download_home, pki.ca),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tiny"  # LM Studio's key of the folder acme/tiny
    placed = download_home / "data" / "models" / "acme" / "tiny" / "tiny-Q8_0.gguf"
    assert placed.read_bytes() == body


def test_an_untrusted_certificate_fails_clearly_and_leaves_no_model(
    download_home: Path, https_url: tuple[str, bytes]
) -> None:
    base, _ = https_url
    done = subprocess.run(
        [LMS, "get", base + FILE],
        env=_env(download_home, None),  # the system's CAs only: our test CA is unknown
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "certificate" in done.stderr and "not trusted" in done.stderr, done.stderr
    assert "SSL_CERT_FILE" in done.stderr  # the hint
    assert not (download_home / "data" / "models" / "acme" / "tiny" / "tiny-Q8_0.gguf").exists()
