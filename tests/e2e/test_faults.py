"""Faults, for real: kill -9 at the worst moments, clients that leave mid-work.

Each test asserts that nothing acknowledged is lost and that the daemon recovers (a new one
starts over the stale lock and socket) or stays up. A kill "at the write" is placed exactly,
never by timing luck: ``strace --inject`` delivers SIGKILL at the system call that writes the
file (the test is skipped where strace or ptrace is unavailable); a kill during a download
waits until the partial file has bytes on disk while the server holds back the rest.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import tomllib
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LMS, Home
from http_calls import is_gone, post, sse_events, stop_daemon, wait_until

from lms.client import ControlClient
from lms.protocol import InstanceEntry

MODEL = "google/gemma-3-270m"
LOST_CONNECTION = (ConnectionError, http.client.HTTPException, urllib.error.URLError)


@pytest.fixture
def daemon_home(home: Home, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """``home``, whose daemon (whichever was started last) is stopped and gone at the end."""
    monkeypatch.setenv("LMS_HOME", str(home.root))  # for ControlClient in this process
    home.env["PYTHONDONTWRITEBYTECODE"] = "1"  # no rename of a .pyc to confuse strace's count
    try:
        yield home
    finally:
        stop_daemon(home)


def _strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed: cannot place a SIGKILL at a system call")
    trial = subprocess.run([strace, "-o", os.devnull, "true"], capture_output=True, check=False)
    if trial.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace refused): {trial.stderr.decode()[:200]}")
    return strace


def _start_server(home: Home) -> str:
    started = home.lms("server", "start", "--port", "0")
    assert started.returncode == 0, started.stderr
    return home.server_url()


def _killed(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: is_gone(pid), what=f"pid {pid} gone after SIGKILL")


def _all_traced(pid: int) -> bool:
    """Every thread of ``pid`` has a tracer (strace -p attaches to them one by one)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return all(
            "TracerPid:\t0\n" not in Path(f"/proc/{pid}/task/{tid}/status").read_text()
            for tid in tasks
        )
    except FileNotFoundError:
        return False


def _chat(url: str, **fields: Any) -> tuple[int, bytes]:
    return post(f"{url}/api/v1/chat", {"model": MODEL, "max_output_tokens": 4, **fields})


def _instance(kind: str) -> InstanceEntry | None:
    for entry in ControlClient().instances():
        if entry["type"] == kind:
            return entry
    return None


def _is_idle(kind: str) -> bool:
    entry = _instance(kind)
    return entry is not None and entry["status"] == "idle" and entry["queued"] == 0


# --- kill -9 of the daemon during a stream ---------------------------------------------------


@pytest.mark.model
def test_kill_9_during_a_stream_then_a_new_daemon_has_everything(daemon_home: Home) -> None:
    home = daemon_home
    assert home.lms("token", "create", "ci", "--quiet").returncode == 0
    assert home.lms("config", "set", "models.jit_keep_last", "off").returncode == 0
    url = _start_server(home)
    status, body = _chat(url, input="Say hi.")
    assert status == 200, body
    stored = json.loads(body)["response_id"]

    pid = home.daemon_pid()
    assert pid is not None
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=300)
    try:
        payload = {"model": MODEL, "input": "1, 2, 3, 4, 5, 6, 7, 8,", "stream": True}
        connection.request(
            "POST",
            "/api/v1/chat",
            json.dumps({**payload, "max_output_tokens": 3000}),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"event: chat.start")
        _killed(pid)
        with pytest.raises(LOST_CONNECTION):
            while response.read(65536):
                pass  # the body was cut: a clean connection error, never a complete stream
    finally:
        connection.close()

    assert (home.run_dir / "lms.sock").exists()  # stale, left by the kill
    url = _start_server(home)  # a new daemon takes over the stale lock and socket
    assert home.daemon_pid() not in (None, pid)
    listed = home.lms("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)] == ["ci"]
    setting = home.lms("config", "get", "models.jit_keep_last")
    assert (setting.returncode, setting.stdout.strip()) == (0, "false")  # default: true
    status, body = _chat(url, input="And now?", previous_response_id=stored)
    assert status == 200, body


# --- kill -9 of `lms token create` at its write ----------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize(
    ("syscalls", "nth", "stored"),
    [
        ("fsync", 1, False),  # the temp file is written, not yet on disk
        ("rename,renameat,renameat2", 1, False),  # on disk, not yet renamed over tokens.toml
        ("fsync", 2, True),  # renamed: the new file is in place, its folder not yet synced
    ],
    ids=["at-fsync", "at-rename", "after-rename"],
)
def test_kill_9_during_token_create_leaves_the_old_or_the_new_file(
    daemon_home: Home, syscalls: str, nth: int, stored: bool
) -> None:
    home = daemon_home
    strace = _strace()
    acknowledged = home.lms("token", "create", "first", "--quiet")
    assert acknowledged.returncode == 0, acknowledged.stderr
    tokens_toml = home.root / "config" / "tokens.toml"
    before = tokens_toml.read_bytes()

    killed = subprocess.run(
        [
            strace,
            "-f",
            "-o",
            os.devnull,
            "-e",
            f"trace={syscalls}",
            "-e",
            f"inject={syscalls}:signal=KILL:when={nth}",
            LMS,
            "token",
            "create",
            "second",
            "--quiet",
        ],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == ""  # killed before the secret was shown: not acknowledged

    state = tomllib.loads(tokens_toml.read_text())  # whole: it parses
    names = [t["name"] for t in state["tokens"]]
    assert names == (["first", "second"] if stored else ["first"])
    if not stored:
        assert tokens_toml.read_bytes() == before

    third = home.lms("token", "create", "third", "--quiet")
    assert third.returncode == 0, third.stderr
    assert not list(tokens_toml.parent.glob(".tokens.toml.*.tmp"))  # the killed temp is gone
    listed = home.lms("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)} == {*names, "third"}


# --- kill -9 of the daemon during a download -------------------------------------------------


class _HeldBackServer:
    """A loopback HTTP server for one file: the first GET gets half the body, then waits for
    ``release``; later GETs honour ``Range`` (resume)."""

    def __init__(self, body: bytes, path: str) -> None:
        self.body = body
        self.path = path
        self.ranges: list[str | None] = []
        self.half_sent = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != owner.path:
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                owner.ranges.append(wanted)
                start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted else 0
                self.send_response(206 if start else 200)
                if start:
                    total = len(owner.body)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.send_header("Content-Length", str(len(owner.body) - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                if len(owner.ranges) == 1:
                    self.wfile.write(owner.body[: len(owner.body) // 2])
                    self.wfile.flush()
                    owner.half_sent.set()
                    owner.release.wait(timeout=300)
                    return
                self.wfile.write(owner.body[start:])

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def __enter__(self) -> _HeldBackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=60)


@pytest.fixture
def download_home() -> Iterator[Home]:
    """A Home of its own (its models folder is written to) with private URLs allowed."""
    root = Path(tempfile.mkdtemp(prefix="lmsk"))
    (root / "config").mkdir(mode=0o700)
    (root / "config" / "config.toml").write_text("[models]\nallow_private_urls = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
    env.update(LMS_HOME=str(root), NO_COLOR="1")
    home = Home(root, env)
    try:
        yield home
    finally:
        stop_daemon(home)
        shutil.rmtree(root, ignore_errors=True)


def test_kill_9_during_a_download_then_lms_get_resumes(
    download_home: Home, make_gguf: Callable[..., bytes], tmp_path: Path
) -> None:
    home = download_home
    body = make_gguf(tmp_path / "big.gguf", tensor_bytes=12 << 20)
    digest = hashlib.sha256(body).hexdigest()
    target = home.root / "data" / "models" / "acme" / "big" / "big-Q8_0.gguf"
    partial = target.with_name(f".{target.name}.part")
    with _HeldBackServer(body, "/acme/big/resolve/main/big-Q8_0.gguf") as server:
        getting = subprocess.Popen(
            [LMS, "get", server.url, "--sha256", digest],
            env=home.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.half_sent.wait(timeout=120)
            # The daemon hands its writer 4 MiB at a time: wait for the first on disk.
            wait_until(
                lambda: partial.exists() and partial.stat().st_size >= 4 << 20,
                what="4 MiB of the partial file on disk",
            )
            pid = home.daemon_pid()
            assert pid is not None
            _killed(pid)
            _, err = getting.communicate(timeout=120)
        finally:
            if getting.poll() is None:
                getting.kill()
                getting.communicate()
        assert getting.returncode != 0
        assert "Traceback" not in err and err.startswith("lms: "), err
        kept = partial.stat().st_size
        assert 0 < kept < len(body)
        server.release.set()

        again = home.lms("get", server.url, "--sha256", digest)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "big"  # LM Studio's key of acme/big/ (docs/MODELS.md)
        assert server.ranges[-1] == f"bytes={kept}-"  # resumed where the disk left off
    assert target.read_bytes() == body
    assert not partial.exists()


# --- kill -9 of the daemon at a stored-chat write --------------------------------------------


@pytest.mark.model
def test_kill_9_at_a_stored_chat_write_keeps_the_chat_store(daemon_home: Home) -> None:
    home = daemon_home
    strace = _strace()
    url = _start_server(home)
    status, body = _chat(url, input="Say hi.")
    assert status == 200, body
    stored = json.loads(body)["response_id"]
    chats = home.root / "data" / "chats.sqlite3"
    pid = home.daemon_pid()
    assert pid is not None
    # SIGKILL at the first write to the database file itself: its journal is already written,
    # the page writes of the commit are not.
    tracer = subprocess.Popen(
        [
            strace,
            "-f",
            "-p",
            str(pid),
            "-o",
            os.devnull,
            "-P",
            str(chats),
            "-e",
            "trace=write,pwrite64,pwritev,pwritev2",
            "-e",
            "inject=write,pwrite64,pwritev,pwritev2:signal=KILL",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _all_traced(pid), what="strace attached to every daemon thread")
        with pytest.raises(LOST_CONNECTION):
            _chat(url, input="Say hello.")
        wait_until(lambda: is_gone(pid), what="the daemon killed at its write")
        tracer.wait(timeout=60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()

    assert Path(f"{chats}-journal").exists()  # killed mid-commit: a hot journal is left
    url = _start_server(home)  # the new daemon's first open rolls it back
    status, body = _chat(url, input="And now?", previous_response_id=stored)
    assert status == 200, body
    added = json.loads(body)["response_id"]
    db = sqlite3.connect(chats)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT id FROM responses ORDER BY rowid").fetchall()
    finally:
        db.close()
    assert rows == [(stored,), (added,)]


# --- clients that leave ---------------------------------------------------------------------


@pytest.mark.model
def test_a_client_leaving_mid_generation_frees_the_engine(daemon_home: Home) -> None:
    home = daemon_home
    url = _start_server(home)
    pid = home.daemon_pid()
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=300)
    try:
        connection.request(
            "POST",
            "/api/v1/chat",
            json.dumps(
                {
                    "model": MODEL,
                    "input": "1, 2, 3, 4, 5, 6, 7, 8,",
                    "stream": True,
                    "max_output_tokens": 30000,
                    "temperature": 0,
                }
            ),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200
        deltas = 0
        while deltas < 3:  # generating for sure
            line = response.readline()
            assert line, "the stream ended early"
            deltas += line.startswith(b"event: message.delta")
    finally:
        connection.close()  # the client leaves
    # 30,000 tokens would take minutes: idle soon means the generation was cancelled.
    wait_until(lambda: _is_idle("llm"), timeout=120, what="the engine idle after the client left")
    status, body = _chat(url, input="Say hi.", stream=True)
    assert status == 200
    assert [kind for kind, _ in sse_events(body)][-1] == "chat.end"
    assert home.daemon_pid() == pid


@pytest.mark.model
def test_a_client_leaving_mid_embedding_batch_leaves_the_daemon_up(daemon_home: Home) -> None:
    home = daemon_home
    url = _start_server(home)
    pid = home.daemon_pid()
    # About 2,000 tokens: long enough to be seen computing, short enough for a busy CI machine.
    texts = [
        f"sentence {n}: the weather in a small town by the sea was mild, with a light breeze"
        " and a few clouds in the afternoon"
        for n in range(64)
    ]
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=300)
    try:
        connection.request(
            "POST",
            "/v1/embeddings",
            json.dumps({"model": MODEL, "input": texts}),
            {"Content-Type": "application/json"},
        )
        wait_until(
            lambda: (
                (entry := _instance("embedding")) is not None
                and entry["status"] == "computing_embedding"
            ),
            timeout=120,
            what="the embedding batch running",
        )
    finally:
        connection.close()  # the client leaves mid-batch
    wait_until(lambda: _is_idle("embedding"), timeout=300, what="the embedder idle again")
    status, body = post(f"{url}/v1/embeddings", {"model": MODEL, "input": ["one more"]})
    assert status == 200, body
    assert len(json.loads(body)["data"]) == 1
    assert home.daemon_pid() == pid
