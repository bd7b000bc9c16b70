"""Download throughput of lms's downloader against curl, from the same loopback server.

The server (aiohttp's FileResponse, i.e. sendfile) runs in its own process and serves the
default model (~253 MB). Each round downloads it once with lms's DownloadManager (the whole job:
stream to the hidden partial, fsync, GGUF header check, link into place) and once with
``curl -o``, in alternating order, into the same temporary folder. The figure that counts is the
median of the per-round ratios (lms throughput ÷ curl throughput). lms fsyncs the file before
linking it into place and curl does not, so the ratio against "curl + fsync of its file" is
printed too.

    .venv/bin/python bench/download.py [--rounds 5] [--sha256]

``--sha256`` makes lms also check the file's sha256 (curl does no such work).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def serve(path: str, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    async def main() -> None:
        app = web.Application()

        async def model(request: web.Request) -> web.FileResponse:
            return web.FileResponse(path)

        app.router.add_get("/m/model.gguf", model)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def lms_round(url: str, models: Path, sha256: str | None) -> float:
    from lms.config import Settings
    from lms.download.downloader import DownloadManager, Job

    manager = DownloadManager(
        lambda: Settings(models_allow_private_urls=True), models_dir=lambda: models
    )

    async def run() -> float:
        started = time.perf_counter()
        job = await manager.start(url, sha256=sha256, publisher="bench", name="model")
        assert isinstance(job, Job) and job.task is not None
        await job.task
        elapsed = time.perf_counter() - started
        assert job.status == "completed", job.error
        return elapsed

    elapsed = asyncio.run(run())
    shutil.rmtree(models / "bench")
    return elapsed


def curl_round(url: str, out: Path) -> tuple[float, float]:
    """curl's time, and its time plus an fsync of the file (what lms pays before the rename)."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - started
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    synced = time.perf_counter() - started
    out.unlink()
    return elapsed, synced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sha256", action="store_true", help="lms also checks the sha256")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is not installed (apt-get install curl)")

    from lms.inference import defaultmodel

    work = Path(tempfile.mkdtemp(prefix="lms-bench-"))
    try:
        source = defaultmodel.ensure_default_model(work / "source")
        size = source.stat().st_size
        digest = None
        if args.sha256:
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        ready: multiprocessing.Queue[int] = multiprocessing.Queue()
        server = multiprocessing.Process(target=serve, args=(str(source), ready), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{ready.get(timeout=30)}/m/model.gguf"
        models = work / "models"
        models.mkdir()
        curl_round(url, work / "warm.gguf")  # warm the page cache and the server
        ratios, synced_ratios = [], []
        print(f"file: {size / 1e6:.1f} MB; rounds: {args.rounds}; sha256 check: {args.sha256}")
        for i in range(args.rounds):
            if i % 2 == 0:
                ours = lms_round(url, models, digest)
                theirs, synced = curl_round(url, work / "curl.gguf")
            else:
                theirs, synced = curl_round(url, work / "curl.gguf")
                ours = lms_round(url, models, digest)
            ratios.append(theirs / ours)  # throughput ratio: lms ÷ curl
            synced_ratios.append(synced / ours)
            print(
                f"round {i + 1}: lms {size / ours / 1e6:6.1f} MB/s ({ours:.2f} s)"
                f"   curl {size / theirs / 1e6:6.1f} MB/s ({theirs:.2f} s)"
                f"   curl+fsync {size / synced / 1e6:6.1f} MB/s ({synced:.2f} s)"
                f"   ratio {ratios[-1]:.2f} / {synced_ratios[-1]:.2f}"
            )
        print(f"median throughput ratio lms/curl: {statistics.median(ratios):.2f}")
        print(f"median throughput ratio lms/(curl+fsync): {statistics.median(synced_ratios):.2f}")
        server.terminate()
        server.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
