"""A full disk for real: LMS_HOME on a small tmpfs, filled to the last byte.

Every write is refused with ``storage_full`` (CLI: exit 1 and the path; HTTP: 507 with no path),
nothing stored before is lost, and once space is freed everything works again.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Home
from fulldisk import SmallDisk, small_tmpfs
from http_calls import post, sse_events, stop_daemon, wait_until

MODEL = "google/gemma-3-270m"


@dataclass
class FullHome:
    home: Home
    disk: SmallDisk
    url: str


@pytest.fixture
def full_home(default_models_dir: Path) -> Iterator[FullHome]:
    """A running daemon and server whose LMS_HOME is a small tmpfs (not yet filled)."""
    with small_tmpfs("32m") as disk:
        root = disk.root
        (root / "data").mkdir(mode=0o700)
        (root / "data" / "models").symlink_to(default_models_dir, target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
        env.update(LMS_HOME=str(root), NO_COLOR="1")
        home = Home(root, env)
        try:
            started = home.lms("server", "start", "--port", "0")
            assert started.returncode == 0, started.stderr
            yield FullHome(home, disk, home.server_url())
        finally:
            # Before the unmount: the daemon holds files on the tmpfs.
            stop_daemon(home)


def _chat(url: str, **fields: Any) -> tuple[int, bytes]:
    return post(f"{url}/api/v1/chat", {"model": MODEL, "max_output_tokens": 4, **fields})


def _respond(url: str, **fields: Any) -> tuple[int, bytes]:
    return post(f"{url}/v1/responses", {"model": MODEL, "max_output_tokens": 4, **fields})


def _assert_storage_full_envelope(status: int, body: bytes, root: Path) -> None:
    assert status == 507, body
    error = json.loads(body)["error"]
    assert (error["code"], error["type"]) == ("storage_full", "storage_full")
    assert "no space left" in error["message"]
    assert str(root).encode() not in body  # the server's paths are its own business


@pytest.mark.model
def test_a_full_disk_refuses_every_write_clearly_and_loses_nothing(full_home: FullHome) -> None:
    home, disk, url = full_home.home, full_home.disk, full_home.url
    root = disk.root
    created = home.lms("token", "create", "ci", "--quiet")
    assert created.returncode == 0, created.stderr
    assert home.lms("config", "set", "server.port", "2000").returncode == 0
    status, body = _chat(url, input="Say hi.")
    assert status == 200, body
    first_chat = json.loads(body)["response_id"]
    status, body = _respond(url, input="Say hi.")
    assert status == 200, body
    first_response = json.loads(body)["id"]
    tokens_toml = root / "config" / "tokens.toml"
    config_toml = root / "config" / "config.toml"
    tokens_before, config_before = tokens_toml.read_bytes(), config_toml.read_bytes()

    disk.fill()

    token = home.lms("token", "create", "phone")
    assert token.returncode == 1, token.stderr
    assert "no space left on the disk" in token.stderr and str(tokens_toml) in token.stderr
    assert token.stdout == ""  # no secret printed for a token that was not stored
    assert "internal error" not in token.stderr and "Traceback" not in token.stderr
    assert tokens_toml.read_bytes() == tokens_before

    setting = home.lms("config", "set", "server.port", "3000")
    assert setting.returncode == 1, setting.stderr
    assert "no space left on the disk" in setting.stderr and str(config_toml) in setting.stderr
    assert config_toml.read_bytes() == config_before

    _assert_storage_full_envelope(*_chat(url, input="Say hi again."), root)
    _assert_storage_full_envelope(*_respond(url, input="Say hi again."), root)

    status, body = _chat(url, input="Count to three.", stream=True)
    assert status == 200
    events = sse_events(body)
    kinds = [kind for kind, _ in events]
    assert "message.end" in kinds and "error" in kinds
    assert kinds.index("error") > kinds.index("message.end")
    error = dict(events)["error"]["error"]
    assert error["code"] == "storage_full"
    assert str(root).encode() not in body
    assert "response_id" not in dict(events).get("chat.end", {}).get("result", {})

    # Reading needs no space: what was stored before is all there.
    status, body = _chat(url, input="And now?", previous_response_id=first_chat, store=False)
    assert status == 200, body
    status, body = _respond(url, input="And now?", previous_response_id=first_response, store=False)
    assert status == 200, body
    listed = home.lms("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)] == ["ci"]

    disk.free()

    again = home.lms("token", "create", "phone", "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().startswith("sk-lm-")
    assert home.lms("config", "set", "server.port", "3000").returncode == 0
    assert "port = 3000" in config_toml.read_text()
    status, body = _chat(url, input="Again.", previous_response_id=first_chat)
    assert status == 200, body
    assert json.loads(body)["response_id"].startswith("resp_")
    status, body = _respond(url, input="Again.", previous_response_id=first_response)
    assert status == 200, body


@pytest.mark.model
def test_a_responses_stream_ends_with_an_error_event_when_storing_fails(
    full_home: FullHome,
) -> None:
    disk, url = full_home.disk, full_home.url
    status, body = _respond(url, input="Say hi.")  # loads the model and creates the store
    assert status == 200, body
    disk.fill()
    status, body = _respond(url, input="Count to three.", stream=True)
    assert status == 200
    events = sse_events(body)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "error", kinds
    assert dict(events)["error"]["code"] == "storage_full"
    assert "response.completed" not in kinds
    assert str(disk.root).encode() not in body


class _GgufServer:
    """Serves one GGUF at ``/acme/{name}/resolve/main/{name}-Q8_0.gguf``: with a Content-Length
    for ``sized`` (the daemon checks the free space first), without one (the body ends with the
    connection) for ``unsized`` (only the writes find the disk full)."""

    def __init__(self, body: bytes) -> None:
        owner_body = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                if "/sized/" in self.path:
                    self.send_header("Content-Length", str(len(owner_body)))
                self.end_headers()
                self.wfile.write(owner_body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/acme/{name}/resolve/main/{name}-Q8_0.gguf"

    def __enter__(self) -> _GgufServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=60)


def _job(url: str, job_id: str) -> tuple[dict[str, Any], bytes]:
    with urllib.request.urlopen(f"{url}/api/v1/models/download/status/{job_id}") as answer:
        raw = answer.read()
    return json.loads(raw), raw


@pytest.mark.model
def test_lms_get_onto_a_full_disk_fails_clearly_then_works_once_space_is_freed(
    make_gguf: Callable[..., bytes], tmp_path: Path, default_models_dir: Path
) -> None:
    body = make_gguf(tmp_path / "tiny.gguf", tensor_bytes=1 << 20)
    with small_tmpfs("32m") as disk, _GgufServer(body) as files:
        root = disk.root
        (root / "config").mkdir(mode=0o700)
        (root / "config" / "config.toml").write_text("[models]\nallow_private_urls = true\n")
        # The models folder is on the small disk; the default model (which the daemon makes
        # sure of at start) stays where the session put it.
        (root / "data" / "models").mkdir(mode=0o700, parents=True)
        (root / "data" / "models" / "google").symlink_to(default_models_dir / "google")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
        env.update(LMS_HOME=str(root), NO_COLOR="1")
        home = Home(root, env)
        try:
            started = home.lms("server", "start", "--port", "0")
            assert started.returncode == 0, started.stderr
            url = home.server_url()
            disk.fill()
            for name in ("sized", "unsized"):
                got = home.lms("get", files.url(name))
                assert got.returncode == 1, got.stderr
                assert "lms: no space left on the disk" in got.stderr
                assert str(root / "data" / "models" / "acme" / name) in got.stderr
                assert not (root / "data" / "models" / "acme" / name).exists()

            status, raw = post(f"{url}/api/v1/models/download", {"model": files.url("unsized")})
            assert status == 200, raw
            job_id = json.loads(raw)["job_id"]
            wait_until(lambda: _job(url, job_id)[0]["status"] != "downloading", what="job ended")
            job, raw = _job(url, job_id)
            assert job["status"] == "failed"
            assert job["error"]["code"] == "storage_full" and "hint" not in job["error"]
            assert str(root).encode() not in raw  # the public API never shows the server's paths

            disk.free()
            got = home.lms("get", files.url("sized"))
            assert got.returncode == 0, got.stderr
            placed = root / "data" / "models" / "acme" / "sized" / "sized-Q8_0.gguf"
            assert placed.read_bytes() == body
        finally:
            stop_daemon(home)
