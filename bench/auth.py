"""What token checks cost, measured against the same daemon in the same run.

1. Extra p50 latency of ``GET /v1/models`` with auth on versus off (alternating blocks, one
   keep-alive connection each, so the machine's drift hits both alike). Target: < 0.1 ms.
2. A bounded flood of requests with bad tokens from several threads: rejected requests/s, and
   the latency and success of a valid client served during the flood.

    .venv/bin/python bench/auth.py [--blocks 10] [--per-block 300] [--flood-seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness


def write_auth(home: Path, on: bool) -> None:
    config = home / "config" / "config.toml"
    config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.write_text(f"[auth]\nrequired = {'true' if on else 'false'}\n")
    time.sleep(0.05)  # let the mtime move on: the daemon re-reads on any change


def timed_requests(port: int, n: int, headers: dict[str, str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", "/v1/models", headers=headers)
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter() - start)
        assert response.status == 200, response.status
    conn.close()
    return times


def flood(port: int, stop: threading.Event, counts: list[int], index: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bad = {"Authorization": "Bearer sk-lm-AAAAAAAA:BBBBBBBBBBBBBBBBBBBB"}
    while not stop.is_set():
        conn.request("GET", "/v1/models", headers=bad)
        response = conn.getresponse()
        response.read()
        assert response.status == 401
        counts[index] += 1
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=300)
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    parser.add_argument("--flood-threads", type=int, default=4)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lmsa"))
    os.environ["LMS_HOME"] = str(home)
    from lms.auth.registry import Registry

    _, token = Registry().create("bench")
    daemon = harness.start("lmsa", home=home)
    port = daemon.port
    try:
        good = {"Authorization": f"Bearer {token}"}
        timed_requests(port, 200, good)  # warm-up
        off: list[float] = []
        on: list[float] = []
        for _ in range(args.blocks):
            write_auth(home, False)
            timed_requests(port, 5, good)
            off += timed_requests(port, args.per_block, good)
            write_auth(home, True)
            timed_requests(port, 5, good)
            on += timed_requests(port, args.per_block, good)
        p50_off, p50_on = statistics.median(off), statistics.median(on)
        print(f"GET /v1/models p50: auth off {p50_off * 1000:.3f} ms, on {p50_on * 1000:.3f} ms")
        print(
            f"extra p50 latency with auth on: {(p50_on - p50_off) * 1000:+.3f} ms "
            f"({len(off)} requests each)"
        )

        write_auth(home, True)
        stop = threading.Event()
        counts = [0] * args.flood_threads
        threads = [
            threading.Thread(target=flood, args=(port, stop, counts, i))
            for i in range(args.flood_threads)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        served: list[float] = []
        while time.perf_counter() - start < args.flood_seconds:
            served += timed_requests(port, 10, good)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        print(
            f"flood: {sum(counts)} bad-token requests rejected in {elapsed:.1f} s "
            f"= {sum(counts) / elapsed:.0f}/s from {args.flood_threads} connections"
        )
        print(
            f"valid client during the flood: {len(served)} requests all 200, "
            f"p50 {statistics.median(served) * 1000:.2f} ms, "
            f"p99 {sorted(served)[int(len(served) * 0.99)] * 1000:.2f} ms"
        )
    finally:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
