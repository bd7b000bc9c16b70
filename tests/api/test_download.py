"""Download jobs against a real loopback HTTP server of the test's own (see file_server.py).

The loopback server is a private address: tests switch ``models.allow_private_urls`` on in
config.toml to use it, except where they check the refusal itself, or give the policy an
``exempt`` address to stand for a public server.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from lms import modelkeys, paths
from lms.config import ConfigWatcher
from lms.download.downloader import AlreadyDownloaded, DownloadManager, Job
from lms.download.outbound import OutboundPolicy
from lms.errors import ConflictError, InvalidParameterError, UrlNotAllowedError
from lms.inference import catalog

from .file_server import FileServer, job_error

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def set_private_urls(home: Path, on: bool) -> None:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[models]\nallow_private_urls = {'true' if on else 'false'}\n")


def visible_files(root: Path) -> list[Path]:
    """Every file a user (or discovery) would see under the models folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return found


def all_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


@pytest.fixture
def tiny(tmp_path: Path, make_gguf: Callable[..., bytes]) -> bytes:
    return make_gguf(tmp_path / "src" / "tiny.gguf", tensor_bytes=2 << 20)


@pytest.fixture
async def files(tiny: bytes) -> AsyncIterator[FileServer]:
    corrupt = b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 4096  # the magic, then nonsense
    server = await FileServer(
        {
            "tiny.gguf": tiny,
            "page.gguf": b"<!DOCTYPE html><html><body>not a model</body></html>" * 50,
            "corrupt.gguf": corrupt,
        }
    ).start()
    yield server
    await server.close()


@pytest.fixture
def downloads(lms_home: Path) -> DownloadManager:
    set_private_urls(lms_home, True)
    return DownloadManager(
        ConfigWatcher({}).current, stall_timeout=0.5, attempts=2, retry_delay=0.01
    )


async def run(manager: DownloadManager, url: str, **fields: Any) -> Job:
    job = await manager.start(url, **fields)
    assert isinstance(job, Job)
    assert job.task is not None
    await asyncio.wait_for(job.task, 30)
    return job


# --- success and resume ---------------------------------------------------------------------------


async def test_download_places_a_checked_gguf(
    downloads: DownloadManager, files: FileServer, tiny: bytes
) -> None:
    digest = hashlib.sha256(tiny).hexdigest()
    job = await run(downloads, files.url("/files/tiny.gguf"), sha256=digest, size=len(tiny))
    doc = job.to_json()
    assert doc["status"] == "completed", doc
    assert re.fullmatch(r"job_[0-9a-f]{10}", doc["job_id"])
    assert doc["downloaded_bytes"] == doc["total_size_bytes"] == len(tiny)
    assert doc["completed_at"].endswith("Z") and doc["started_at"].endswith("Z")
    assert "bytes_per_second" not in doc and "error" not in doc
    target = paths.models_dir() / "127.0.0.1" / "tiny" / "tiny.gguf"
    assert target.read_bytes() == tiny
    assert doc["model_key"] == "tiny"  # LM Studio's key of the folder 127.0.0.1/tiny
    assert [m.key for m in catalog.discover(paths.models_dir())] == ["tiny"]
    assert all_files(paths.models_dir()) == [target]  # no partial, no sidecar left


async def test_hugging_face_paths_name_the_model_after_the_repo(
    downloads: DownloadManager, files: FileServer
) -> None:
    job = await run(downloads, files.url("/someone/Tiny-GGUF/resolve/main/tiny.gguf"))
    assert job.status == "completed", job.error
    assert job.model_key == "tiny"  # LM Studio's key of someone/Tiny-GGUF
    assert (paths.models_dir() / "someone" / "Tiny-GGUF" / "tiny.gguf").is_file()


async def test_explicit_publisher_and_name_win(
    downloads: DownloadManager, files: FileServer
) -> None:
    job = await run(downloads, files.url("/files/tiny.gguf"), publisher="me", name="mine")
    assert job.model_key == "me/mine"  # what was asked for: a manifest says so
    assert modelkeys.read_manifest(job.target.parent) == "me/mine"
    with pytest.raises(InvalidParameterError) as bad:
        await downloads.start(files.url("/files/tiny.gguf"), name="../escape")
    assert bad.value.param == "name"


async def test_a_cut_transfer_resumes_with_range(
    downloads: DownloadManager, files: FileServer, tiny: bytes
) -> None:
    job = await run(
        downloads, files.url("/cut-once/tiny.gguf"), sha256=hashlib.sha256(tiny).hexdigest()
    )
    assert job.status == "completed", job.error
    assert [s.path for s in files.seen] == ["/cut-once/tiny.gguf"] * 2
    first, second = files.seen
    assert first.range is None
    assert second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(tiny) // 2
    assert (paths.models_dir() / "127.0.0.1" / "tiny" / "tiny.gguf").read_bytes() == tiny


async def test_a_failed_job_leaves_a_hidden_partial_that_the_next_job_resumes(
    lms_home: Path, files: FileServer, tiny: bytes
) -> None:
    set_private_urls(lms_home, True)
    once = DownloadManager(ConfigWatcher({}).current, attempts=1, retry_delay=0)
    failed = await run(once, files.url("/cut-once/tiny.gguf"))
    assert failed.status == "failed"
    assert job_error(dict(failed.to_json()))["code"] == "download_failed"
    assert "broke after" in failed.to_json()["error"]["message"]
    folder = paths.models_dir() / "127.0.0.1" / "tiny"
    partial = folder / ".tiny.gguf.part"
    assert 0 < partial.stat().st_size < len(tiny)
    assert visible_files(paths.models_dir()) == []
    assert catalog.discover(paths.models_dir()) == []

    kept = partial.stat().st_size
    again = await run(once, files.url("/cut-once/tiny.gguf"))
    assert again.status == "completed", again.error
    assert files.seen[-1].range == f"bytes={kept}-"
    assert (folder / "tiny.gguf").read_bytes() == tiny
    assert not partial.exists()


async def test_a_server_that_ignores_range_makes_the_job_start_over(
    downloads: DownloadManager, files: FileServer, tiny: bytes
) -> None:
    job = await run(downloads, files.url("/no-range/tiny.gguf"), size=len(tiny))
    assert job.status == "completed", job.error
    assert files.seen[1].range is not None  # it asked to resume, got the whole file again
    assert (paths.models_dir() / "127.0.0.1" / "tiny" / "tiny.gguf").read_bytes() == tiny


# --- content failures: nothing stays ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "code", "words"),
    [
        ("/files/tiny.gguf", {"size": 12345}, "download_verification_failed", "12345"),
        ("/files/tiny.gguf", {"sha256": "0" * 64}, "download_verification_failed", "sha256"),
        ("/files/page.gguf", {}, "download_verification_failed", "not a GGUF file"),
        ("/files/corrupt.gguf", {}, "download_verification_failed", "not a usable GGUF"),
        ("/files/missing.gguf", {}, "download_failed", "404"),
    ],
)
async def test_failures_leave_nothing_behind(
    downloads: DownloadManager,
    files: FileServer,
    path: str,
    fields: dict[str, Any],
    code: str,
    words: str,
) -> None:
    job = await run(downloads, files.url(path), **fields)
    assert job.status == "failed"
    error = job_error(dict(job.to_json()))
    assert error["code"] == code
    assert words in error["message"]
    assert "completed_at" not in job.to_json()
    assert all_files(paths.models_dir()) == []  # not even the hidden partial
    assert not (paths.models_dir() / "127.0.0.1").exists()  # the folders it made are gone


async def test_a_stalled_server_fails_the_job_after_its_attempts(
    downloads: DownloadManager, files: FileServer, tiny: bytes
) -> None:
    started = time.monotonic()
    job = await run(downloads, files.url("/stall/tiny.gguf"))
    assert job.status == "failed"
    error = job_error(dict(job.to_json()))
    assert error["code"] == "download_stalled"
    assert "sent nothing for 0.5 s" in error["message"]
    assert files.paths_seen() == ["/stall/tiny.gguf"] * 2  # it tried to resume once
    assert files.seen[1].range == "bytes=1024-"
    assert time.monotonic() - started < 10
    assert visible_files(paths.models_dir()) == []


async def test_an_existing_file_is_never_replaced(
    downloads: DownloadManager, files: FileServer
) -> None:
    target = paths.models_dir() / "127.0.0.1" / "tiny" / "tiny.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the user's own file")
    outcome = await downloads.start(files.url("/files/tiny.gguf"))
    assert isinstance(outcome, AlreadyDownloaded)
    assert outcome.to_json() == {
        "status": "already_downloaded",
        "model_key": "tiny",
        "file_name": "tiny.gguf",
    }
    assert target.read_bytes() == b"the user's own file"
    assert files.seen == []


async def test_one_job_per_file_and_cancel_keeps_the_partial(
    lms_home: Path, files: FileServer
) -> None:
    set_private_urls(lms_home, True)
    manager = DownloadManager(ConfigWatcher({}).current, stall_timeout=30)
    job = await manager.start(files.url("/stall/tiny.gguf"))
    assert isinstance(job, Job)
    deadline = time.monotonic() + 10
    while job.downloaded < 1024 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert job.to_json()["status"] == "downloading"
    assert job.to_json()["total_size_bytes"] == len(files.files["tiny.gguf"])
    with pytest.raises(ConflictError) as busy:
        await manager.start(files.url("/stall/tiny.gguf"))
    assert busy.value.data["job_id"] == job.id

    cancelled = await manager.cancel(job.id)
    assert cancelled.status == "failed"
    assert job_error(dict(cancelled.to_json()))["code"] == "download_cancelled"
    partial = paths.models_dir() / "127.0.0.1" / "tiny" / ".tiny.gguf.part"
    assert partial.stat().st_size == 1024
    assert visible_files(paths.models_dir()) == []
    await manager.close()


# --- the outbound rule ---------------------------------------------------------------------------


async def test_private_addresses_are_refused_unless_allowed(
    lms_home: Path, files: FileServer
) -> None:
    set_private_urls(lms_home, False)
    manager = DownloadManager(ConfigWatcher({}).current)
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(UrlNotAllowedError) as refused:
            await manager.start(files.url("/files/tiny.gguf", host=host))
        assert "loopback address" in refused.value.message
        assert f"{host}:{files.port}/files/tiny.gguf" in refused.value.message
        assert "models.allow_private_urls" in (refused.value.hint or "")
    assert files.seen == []  # refused before any connection
    assert all_files(paths.models_dir()) == []


async def test_a_redirect_to_a_private_address_is_refused(
    lms_home: Path, files: FileServer
) -> None:
    set_private_urls(lms_home, False)
    # 127.0.0.1 stands for a public server; the redirect points at another loopback address.
    manager = DownloadManager(
        ConfigWatcher({}).current, policy=OutboundPolicy(exempt=frozenset({LOOPBACK}))
    )
    private = f"http://127.0.0.2:{files.port}/files/tiny.gguf"
    job = await run(manager, files.url("/redirect-to/tiny.gguf?" + urlencode({"url": private})))
    assert job.status == "failed"
    error = job_error(dict(job.to_json()))
    assert error["code"] == "url_not_allowed"
    assert "127.0.0.2 is a loopback address" in error["message"]
    assert "redirects to" in error["message"]
    assert files.paths_seen() == ["/redirect-to/tiny.gguf"]  # the target was never contacted
    assert all_files(paths.models_dir()) == []


async def test_redirects_are_followed_through_the_rule(
    lms_home: Path, files: FileServer, tiny: bytes
) -> None:
    set_private_urls(lms_home, False)
    manager = DownloadManager(
        ConfigWatcher({}).current, policy=OutboundPolicy(exempt=frozenset({LOOPBACK}))
    )
    job = await run(manager, files.url("/redirect/tiny.gguf"))
    assert job.status == "completed", job.error
    assert files.paths_seen() == ["/redirect/tiny.gguf", "/files/tiny.gguf"]
    assert (paths.models_dir() / "127.0.0.1" / "tiny" / "tiny.gguf").read_bytes() == tiny


async def test_the_connection_goes_to_the_address_that_was_checked(
    lms_home: Path, files: FileServer, tiny: bytes
) -> None:
    """DNS rebinding: the name answers a checked address once, then a private one."""
    set_private_urls(lms_home, False)
    answers = [["127.0.0.1"]]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers.pop(0) if answers else ["10.0.0.1"]

    policy = OutboundPolicy(exempt=frozenset({LOOPBACK}), resolve=rebinding)
    manager = DownloadManager(ConfigWatcher({}).current, policy=policy)
    job = await run(manager, files.url("/files/tiny.gguf", host="models.example"))
    assert job.status == "completed", job.error
    assert asked == ["models.example"]  # resolved once; aiohttp never asked the system DNS
    assert files.seen[0].host == f"models.example:{files.port}"  # Host kept the name
    assert job.model_key == "tiny"

    # A later job asks again and gets the private answer: refused before connecting.
    with pytest.raises(UrlNotAllowedError) as refused:
        await manager.start(files.url("/files/tiny.gguf", host="models.example"), name="other")
    assert "resolves to 10.0.0.1, which is a private address" in refused.value.message
    assert len(files.seen) == 1


# --- the HTTP routes ----------------------------------------------------------------------------


async def poll(client: TestClient, job_id: str) -> dict[str, Any]:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while True:
        response = await client.get(f"/api/v1/models/download/status/{job_id}")
        assert response.status == 200
        doc: dict[str, Any] = await response.json()
        if doc["status"] != "downloading" or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.02)


async def test_download_routes(
    client: TestClient,  # type: ignore[type-arg]
    lms_home: Path,
    files: FileServer,
    tiny: bytes,
) -> None:
    set_private_urls(lms_home, True)
    response = await client.post(
        "/api/v1/models/download", json={"model": files.url("/files/tiny.gguf")}
    )
    assert response.status == 200
    started = await response.json()
    assert re.fullmatch(r"job_[0-9a-f]{10}", started["job_id"])
    assert started["status"] in ("downloading", "completed")
    assert started["total_size_bytes"] == len(tiny)  # the server's answer came first
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", started["started_at"])
    assert "path" not in started  # file system paths stay off the TCP API
    done = await poll(client, started["job_id"])
    assert done["status"] == "completed"
    assert done["downloaded_bytes"] == len(tiny)
    assert "completed_at" in done
    assert (paths.models_dir() / "127.0.0.1" / "tiny" / "tiny.gguf").read_bytes() == tiny

    again = await client.post(
        "/api/v1/models/download", json={"url": files.url("/files/tiny.gguf")}
    )
    assert (await again.json()) == {
        "status": "already_downloaded",
        "model_key": "tiny",
        "file_name": "tiny.gguf",
    }

    failed = await client.post(
        "/api/v1/models/download", json={"model": files.url("/files/missing.gguf")}
    )
    assert failed.status == 200
    doc = await failed.json()
    assert doc["status"] == "failed"  # the job ended before the answer
    assert doc["error"]["code"] == "download_failed"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({}, 400, "missing_required_parameter", "model"),
        ({"model": 5}, 400, "invalid_parameter", "model"),
        ({"model": "ftp://example.com/x.gguf"}, 400, "invalid_parameter", "url"),
        ({"model": "https://example.com/x.bin"}, 400, "invalid_parameter", "url"),
        ({"model": "openai/gpt-oss-20b"}, 400, "invalid_parameter", "url"),
        ({"model": "https://u:p@example.com/x.gguf"}, 400, "invalid_parameter", "url"),
        (
            {"model": "https://example.com/x.gguf", "sha256": "abc"},
            400,
            "invalid_parameter",
            "sha256",
        ),
        ({"model": "https://example.com/x.gguf", "size": 0}, 400, "invalid_parameter", "size"),
        (
            {"model": "https://example.com/x.gguf", "publisher": ".hidden"},
            400,
            "invalid_parameter",
            "publisher",
        ),
        ({"model": "http://127.0.0.1:9/x.gguf"}, 403, "url_not_allowed", "url"),
        ({"model": "http://[::ffff:10.1.2.3]/x.gguf"}, 403, "url_not_allowed", "url"),
        ({"model": "http://169.254.169.254/x.gguf"}, 403, "url_not_allowed", "url"),
    ],
)
async def test_download_route_refuses_bad_input(
    client: TestClient,  # type: ignore[type-arg]
    body: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    response = await client.post("/api/v1/models/download", json=body)
    doc = await response.json()
    assert response.status == status, doc
    assert doc["error"]["code"] == code
    assert doc["error"]["param"] == param
    assert not paths.models_dir().exists() or all_files(paths.models_dir()) == []


async def test_unknown_job_is_404(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/api/v1/models/download/status/job_0123456789")
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["type"] == "job_not_found"
    assert error["code"] == "job_not_found"
