"""Upstream OpenAI-compatible servers for the remote-engine tests: two real ones and a fake.

* :class:`LlamaCppServer` — llama-cpp-python's own server (``python -m llama_cpp.server``) on the
  default model, in a subprocess of its own process group; ``stop()`` (SIGTERM, then SIGKILL)
  or ``kill()`` (SIGKILL at once: a replica dying mid-request).
* :class:`LmsUpstream` — another real lms daemon: its own LMS_HOME, ``auth.required = true``, a
  token made with the real ``lms token create`` written to a 0600 key file, the default model
  loaded just in time on the first request for ``google/gemma-3-270m``.
* :class:`~remote.fake_upstream.FakeUpstream` — scripted, in-process, for plumbing.

All three have ``base_url`` (``http://127.0.0.1:PORT``, no ``/v1``) and ``key_file`` (a 0600
file holding the key, or None), which :mod:`remote.gateconfig` turns into the gate's
``[remotes.NAME]`` tables. The real ones are context managers and are gone (pid reaped or
killed) once ``stop()`` returns, as tests/conftest.py checks at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .fake_upstream import FakeUpstream, Received, fake_upstream
from .gateconfig import add_remotes, remote_section, remotes_toml, write_key_file
from .openai_shapes import ALL_PATHS, INFERENCE_PATHS, LEAK_MARKERS, LEAKY_TEXT, Fault

__all__ = [
    "ALL_PATHS",
    "DEFAULT_MODEL_KEY",
    "INFERENCE_PATHS",
    "LEAKY_TEXT",
    "LEAK_MARKERS",
    "FakeUpstream",
    "Fault",
    "LlamaCppServer",
    "LmsUpstream",
    "Received",
    "add_remotes",
    "fake_upstream",
    "get_json",
    "process_alive",
    "remote_section",
    "remotes_toml",
    "write_key_file",
]

DEFAULT_MODEL_KEY = "google/gemma-3-270m"  # the default model's id on an lms upstream
LMS = str(Path(sys.executable).with_name("lms"))
_STARTUP_SECONDS = 240.0  # generous: a busy 2-core CI machine loads the model slowly
_POLL_SECONDS = 0.1
# The environment a llama_cpp.server subprocess keeps: its settings are pydantic-settings, which
# read any variable named like a field (MODEL, PORT, HOST, CACHE, API_KEY, ...); uvicorn reads
# HOST and PORT too. PYTEST_LMS_RUN lets tests/conftest.py find it if it ever leaks.
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "PYTEST_LMS_RUN")


def get_json(url: str, key: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    """GET ``url`` (with ``Authorization: Bearer key``): (status, parsed body or None)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it holds nothing and its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class LlamaCppServer:
    """``python -m llama_cpp.server`` on ``model``, on a free loopback port.

    Its ``/v1/models`` lists one id: ``alias`` if given, else the model's path as given. It
    answers any model name with that one model. Without ``api_key`` it wants no key. It runs one
    request at a time (``/v1/models`` too waits for a running generation), has no ``/health``,
    ignores ``stream_options`` and sends no ``usage`` on streams.
    """

    model: Path
    api_key: str | None = None
    alias: str | None = None
    # The packaged GGUF carries no chat template: without this the server falls back to llama-2's
    # format, on which the model mostly answers nothing at all.
    chat_format: str | None = "gemma"
    n_ctx: int = 2048
    # The server's own default (True) ends a running stream early, with [DONE] and no
    # finish_reason, as soon as another request waits for the model (non-streaming requests are
    # never cut): what a stream gets would hang on timing. False (here the default) makes every
    # request wait its turn and finish; pass True to meet the server as shipped.
    interrupt_requests: bool = False
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = _STARTUP_SECONDS
    port: int = 0
    key_file: Path | None = None
    model_id: str = ""
    startup_seconds: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    _dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lmsllamacpp")))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, wait: bool = True) -> LlamaCppServer:
        """Launch the server; with ``wait``, return once ``/v1/models`` answers 200 (the model
        is loaded). ``wait=False`` returns at once (then :meth:`wait_ready`, or :meth:`kill`
        it while it loads), and does not retry a port taken meanwhile."""
        if self.api_key is not None and self.key_file is None:
            self.key_file = write_key_file(self._dir / "upstream.key", self.api_key)
        began = time.monotonic()
        for _attempt in range(3):  # a free port can be taken between the check and the bind
            self.port = _free_port()
            self._launch()
            if not wait:
                return self
            if self.wait_ready():
                self.startup_seconds = time.monotonic() - began
                return self
        raise AssertionError(f"llama_cpp.server never got a port; its log:\n{self.log()[-4000:]}")

    def _launch(self) -> None:
        argv = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
        ]  # fmt: skip
        if self.api_key is not None:
            argv += ["--api_key", self.api_key]
        if self.alias is not None:
            argv += ["--model_alias", self.alias]
        argv += ["--interrupt_requests", str(self.interrupt_requests).lower()]
        if self.chat_format is not None:
            argv += ["--chat_format", self.chat_format]
        argv += self.extra_args
        env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._dir,
                start_new_session=True,  # its own process group, stopped as one
            )

    def wait_ready(self) -> bool:
        """Poll ``/v1/models`` until 200 (True) or the port was taken (False); fails when the
        server exits otherwise or is not ready within ``startup_timeout``."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log().lower():
                    return False
                raise AssertionError(
                    f"llama_cpp.server exited with {self.proc.returncode}; its log:\n"
                    + self.log()[-4000:]
                )
            with contextlib.suppress(OSError):  # refused until the model is loaded
                status, body = get_json(f"{self.base_url}/v1/models", self.api_key, timeout=10)
                if status == 200:
                    self.model_id = str(body["data"][0]["id"])
                    return True
            time.sleep(_POLL_SECONDS)
        log = self.log()[-4000:]
        self.stop()
        raise AssertionError(
            f"llama_cpp.server not ready within {self.startup_timeout:g} s; its log:\n{log}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server's process group at once (a replica dying mid-request)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds; reaped when this returns."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        if not os.environ.get("LMS_TEST_KEEP_UPSTREAM_LOGS"):
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LlamaCppServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a start that failed half-way leaves nothing behind
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class LmsUpstream:
    """Another real lms daemon: auth required, one token in ``key_file``, the default model.

    ``settings`` are extra config.toml tables (e.g. ``{"models": {"jit_keep_last": False}}``);
    ``perms`` is passed to ``lms token create --perm`` (default: inference only).
    """

    models_dir: Path
    token_name: str = "gate"
    perms: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lmsu")))
    env: dict[str, str] = field(default_factory=dict)
    base_url: str = ""
    key_file: Path | None = None
    startup_seconds: float = 0.0
    pid: int | None = None

    def lms(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LMS, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    @property
    def key(self) -> str:
        """The token (the gate's upstream key). Never print it: nothing logs a token."""
        assert self.key_file is not None
        return self.key_file.read_text().strip()

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "config.toml"

    def start(self) -> LmsUpstream:
        began = time.monotonic()
        (self.home / "data").mkdir(mode=0o700, exist_ok=True)
        doc: dict[str, Any] = {"auth": {"required": True}, "models": {"dir": str(self.models_dir)}}
        for table, values in self.settings.items():
            doc.setdefault(table, {}).update(values)
        self.config_file.parent.mkdir(mode=0o700, exist_ok=True)
        self.config_file.write_text(tomli_w.dumps(doc))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LMS_")}
        # Speculation off, as in tests/e2e: outputs must not hang on the machine's timing.
        self.env.update(LMS_HOME=str(self.home), NO_COLOR="1", LMS_MODELS_SPECULATIVE="false")
        args = ["token", "create", self.token_name, "--quiet"]
        if self.perms is not None:
            args += ["--perm", self.perms]
        created = self.lms(*args)
        assert created.returncode == 0, created.stderr
        self.key_file = write_key_file(self.home / "upstream.key", created.stdout.strip())
        started = self.lms("server", "start", "--port", "0")
        assert started.returncode == 0, started.stderr
        self.base_url = started.stdout.strip()
        self.pid = int((self.home / "run" / "lms.pid").read_text().strip())
        deadline = time.monotonic() + _STARTUP_SECONDS
        while (status := get_json(f"{self.base_url}/v1/models", self.key)[0]) != 200:
            assert time.monotonic() < deadline, f"the lms upstream answers {status}"
            time.sleep(_POLL_SECONDS)
        self.startup_seconds = time.monotonic() - began
        return self

    def kill(self) -> None:
        """SIGKILL the daemon (its own session) at once."""
        if self.pid is not None and process_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            assert _wait_gone(self.pid, 60), f"the lms upstream {self.pid} survived SIGKILL"

    def stop(self) -> None:
        """``lms daemon down``; SIGKILL if the daemon is still there after 30 s."""
        if self.pid is None:  # a start that failed half-way may have left one
            with contextlib.suppress(OSError, ValueError):
                self.pid = int((self.home / "run" / "lms.pid").read_text().strip())
        if self.pid is not None and process_alive(self.pid):
            down = self.lms("daemon", "down")
            if down.returncode not in (0, 3) or not _wait_gone(self.pid, 30):
                self.kill()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> LmsUpstream:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a start that failed half-way leaves nothing behind
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
