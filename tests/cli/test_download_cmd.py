"""``lms get`` and ``lms import`` against the real daemon and a loopback HTTP server of our own."""

from __future__ import annotations

import http.server
import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lms import paths
from lms.cli import app
from lms.protocol import DaemonStatus


@pytest.fixture
def shared_models(lms_home: Path, default_model_path: Path) -> Path:
    """A writable models folder (this module writes to it), unlike conftest's shared one.

    The default model inside is a symlink to the session's verified copy, with its marker, so
    the daemon finds it ready instead of assembling 253 MB.
    """
    target = paths.models_dir() / "google" / "gemma-3-270m" / default_model_path.name
    target.parent.mkdir(parents=True)
    target.symlink_to(default_model_path)
    marker = default_model_path.with_name(f".{default_model_path.name}.verified")
    shutil.copy(marker, target.with_name(marker.name))
    return paths.models_dir()


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path, make_gguf: Callable[..., bytes]) -> Iterator[str]:
    """A loopback HTTP server (in a thread) serving /tiny.gguf; yields its base URL."""
    _Files.files = {"/files/tiny.gguf": make_gguf(tmp_path / "tiny.gguf", tensor_bytes=256 << 10)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def visible_models(root: Path) -> set[str]:
    """The GGUF files a user sees (``lms ls`` without a daemon lists exactly these)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names = [f for f in filenames if f[0] != "." and f.endswith(".gguf")]
        found |= {str(Path(dirpath, f).relative_to(root)) for f in names}
    return found


def every_file(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files}


@pytest.mark.model
def test_get(runner: CliRunner, running_daemon: DaemonStatus, file_server: str) -> None:
    url = f"{file_server}/files/tiny.gguf"
    refused = runner.invoke(app, ["get", url])
    assert refused.exit_code == 4, refused.stderr
    assert "127.0.0.1 is a loopback address" in refused.stderr
    assert "models.allow_private_urls" in refused.stderr
    assert not (paths.models_dir() / "127.0.0.1").exists()

    assert runner.invoke(app, ["config", "set", "models.allow_private_urls", "on"]).exit_code == 0
    done = runner.invoke(app, ["get", url, "--json"])
    assert done.exit_code == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "completed"
    assert job["model_key"] == "tiny"
    assert (
        job["downloaded_bytes"] == job["total_size_bytes"] == len(_Files.files["/files/tiny.gguf"])
    )
    assert Path(job["path"]).read_bytes() == _Files.files["/files/tiny.gguf"]
    assert "━" not in done.stderr and "%" not in done.stderr  # no progress bar on a pipe

    listed = json.loads(runner.invoke(app, ["ls", "--json"]).stdout)
    assert "tiny" in [m["key"] for m in listed]

    again = runner.invoke(app, ["get", url])
    assert again.exit_code == 0
    assert again.stdout.strip() == "tiny"
    assert "already downloaded" in again.stderr

    missing = runner.invoke(app, ["get", f"{file_server}/files/none.gguf"])
    assert missing.exit_code == 1
    assert "404" in missing.stderr
    bundled = runner.invoke(app, ["get", "google/gemma-3-270m"])
    assert bundled.exit_code == 0, bundled.stderr
    assert bundled.stdout.strip() == "google/gemma-3-270m"
    assert "already downloaded" in bundled.stderr
    bad = runner.invoke(app, ["get", "someone/some-model"])
    assert bad.exit_code == 2
    assert "not an http(s) URL" in bad.stderr
    assert visible_models(paths.models_dir()) == {
        "google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
        "127.0.0.1/tiny/tiny.gguf",
    }


@pytest.mark.model
def test_import(
    runner: CliRunner,
    running_daemon: DaemonStatus,
    tmp_path: Path,
    make_gguf: Callable[..., bytes],
) -> None:
    source = tmp_path / "Tiny-F32.gguf"
    data = make_gguf(source, tensor_bytes=64 << 10)
    before = every_file(paths.models_dir())

    copied = runner.invoke(app, ["import", str(source)])
    assert copied.exit_code == 0, copied.stderr
    assert copied.stdout.strip() == "tiny"  # LM Studio's rule: no name given
    target = paths.models_dir() / "local" / "Tiny-F32" / "Tiny-F32.gguf"
    assert target.read_bytes() == data and not target.is_symlink()
    assert source.exists()

    taken = runner.invoke(app, ["import", str(source)])
    assert taken.exit_code == 6
    assert "already exists" in taken.stderr

    linked = runner.invoke(app, ["import", str(source), "--symlink", "--name", "linked", "--json"])
    assert linked.exit_code == 0, linked.stderr
    result = json.loads(linked.stdout)
    assert result["model_key"] == "local/linked"
    assert result["mode"] == "symlink"
    assert os.readlink(result["path"]) == str(source)

    keys = [m["key"] for m in json.loads(runner.invoke(app, ["ls", "--json"]).stdout)]
    assert {"tiny", "local/linked"} <= set(keys)  # --name: the key asked for

    no_yes = runner.invoke(app, ["import", str(source), "--move", "--publisher", "me"])
    assert no_yes.exit_code == 2
    assert "--yes" in no_yes.stderr
    moved = runner.invoke(app, ["import", str(source), "--move", "-y", "--publisher", "me"])
    assert moved.exit_code == 0, moved.stderr
    assert moved.stdout.strip() == "me/Tiny-F32"
    assert not source.exists()
    assert (paths.models_dir() / "me" / "Tiny-F32" / "Tiny-F32.gguf").read_bytes() == data

    both = runner.invoke(app, ["import", str(target), "--copy", "--move"])
    assert both.exit_code == 2

    keys = [m["key"] for m in json.loads(runner.invoke(app, ["ls", "--json"]).stdout)]
    assert {"tiny", "me/Tiny-F32"} <= set(keys)

    # Refusals: nothing half-written, not even a hidden file.
    after_good = every_file(paths.models_dir())
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(data[: len(data) // 3])  # a truncated GGUF
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    for bad in (corrupt, text):
        refused = runner.invoke(app, ["import", str(bad), "--name", "bad"])
        assert refused.exit_code == 1, refused.stderr
        assert "is not a readable GGUF model" in refused.stderr
    wrong_type = tmp_path / "model.bin"
    wrong_type.write_bytes(data)
    assert runner.invoke(app, ["import", str(wrong_type)]).exit_code == 2
    assert runner.invoke(app, ["import", str(tmp_path / "absent.gguf")]).exit_code == 5
    assert every_file(paths.models_dir()) == after_good
    assert before <= after_good


@pytest.mark.model
def test_get_shows_a_progress_bar_on_a_terminal(
    runner: CliRunner, running_daemon: DaemonStatus, file_server: str
) -> None:
    """The real ``lms`` with its stderr on a pseudo-terminal draws rich's bar there."""
    assert runner.invoke(app, ["config", "set", "models.allow_private_urls", "on"]).exit_code == 0
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lms", "get", f"{file_server}/files/tiny.gguf"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(secondary)
    drawn = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            drawn += chunk
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(primary)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    assert stdout.decode().strip() == "tiny"
    assert b"tiny.gguf" in drawn  # the bar's label
    assert "━".encode() in drawn  # the bar itself
