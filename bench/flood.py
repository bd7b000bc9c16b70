"""A flood of refused requests: what it costs a valid client, and what it leaves on disk.

Against one daemon with auth on, in one run: a valid client's ``GET /v1/models`` latency in
alternating blocks, quiet and during a flood (threads sending requests with random bad tokens —
random ids and secrets, garbage, none — to random paths under the routes' templates, with random
query strings), so the machine's drift hits both alike. Then the daemon is stopped (which writes
the last window of counts) and the audit files are read back:

* growth of ``refusals.jsonl`` (and its rotated files), ``audit.jsonl`` and ``daemon.log``;
* the sum of ``count`` over the refusal lines, which must equal the refused requests sent.

Goals: refusal log growth ≤ 100 KB for 10,000 refusals, every one counted; valid p50 during the
flood within 3 times the quiet one. (Past 100 refusals from one network in a window, the daemon
answers each refusal 50 ms late, so the flood slows down: its duration is part of the result.)

    .venv/bin/python bench/flood.py [--requests 10000] [--blocks 5] [--threads 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness

ALPHABET = string.ascii_letters + string.digits


def junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(ALPHABET, k=n))


def bad_request(rng: random.Random) -> tuple[str, str, dict[str, str]]:
    """A request every part of which a flooding client can vary for free."""
    kind = rng.randrange(4)
    if kind == 0:
        headers = {}
    elif kind == 1:
        headers = {"Authorization": f"Bearer {junk(rng, 30)}"}
    else:
        headers = {"Authorization": f"Bearer sk-lm-{junk(rng, 8)}:{junk(rng, 20)}"}
    where = rng.randrange(3)
    if where == 0:
        return "GET", f"/api/v1/models/download/status/{junk(rng, 16)}", headers
    if where == 1:
        return "GET", f"/v1/models?{junk(rng, 8)}={junk(rng, 64)}", headers
    return "POST", f"/v1/chat/completions?{junk(rng, 12)}", headers


def flood(port: int, n: int, seed: int, refused: list[int], index: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        method, path, headers = bad_request(rng)
        body = b"{}" if method == "POST" else None
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status not in (401, 403):
            raise AssertionError(f"{method} {path}: {response.status}")
        refused[index] += 1
    conn.close()


def timed_requests(conn: http.client.HTTPConnection, n: int, token: str) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter() - start)
        assert response.status == 200, response.status
    return times


def sizes(home: Path) -> dict[str, int]:
    data, logs = home / "data", home / "logs"
    found = {
        "refusals": sum(p.stat().st_size for p in data.glob("refusals.jsonl*")),
        "audit": (data / "audit.jsonl").stat().st_size if (data / "audit.jsonl").exists() else 0,
        "daemon.log": sum(p.stat().st_size for p in logs.glob("daemon.log*")),
    }
    return found


def counted(home: Path) -> tuple[int, int]:
    """(sum of ``count``, lines) over the kept refusal files."""
    total = lines = 0
    for path in sorted((home / "data").glob("refusals.jsonl*")):
        for line in path.read_text().splitlines():
            total += int(json.loads(line)["count"])
            lines += 1
    return total, lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--per-block", type=int, default=200)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lmsf"))
    os.environ["LMS_HOME"] = str(home)
    from lms.auth.registry import Registry

    _, token = Registry().create("bench")
    config = home / "config" / "config.toml"
    config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.write_text("[auth]\nrequired = true\n")
    daemon = harness.start("lmsf", home=home)
    port = daemon.port
    quiet: list[float] = []
    loud: list[float] = []
    refused = [0] * args.threads
    per_thread = args.requests // (args.blocks * args.threads)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        timed_requests(conn, 100, token)  # warm-up
        before = sizes(home)
        started = time.perf_counter()
        for block in range(args.blocks):
            quiet += timed_requests(conn, args.per_block, token)
            threads = [
                threading.Thread(target=flood, args=(port, per_thread, block * 100 + i, refused, i))
                for i in range(args.threads)
            ]
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                loud += timed_requests(conn, 10, token)
                threads[0].join(timeout=0.05)  # a client's pace, not a second flood
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        daemon.stop()  # the last window of counts is written at shutdown
    try:
        after = sizes(home)
        total, lines = counted(home)
        sent = sum(refused)
        print(f"flood: {sent} refused requests in {elapsed:.1f} s ({sent / elapsed:.0f}/s)")
        print(
            f"valid GET /v1/models p50: quiet {statistics.median(quiet) * 1000:.2f} ms "
            f"({len(quiet)}), during the flood {statistics.median(loud) * 1000:.2f} ms "
            f"({len(loud)}): x{statistics.median(loud) / statistics.median(quiet):.2f}"
        )
        for name in ("refusals", "audit", "daemon.log"):
            print(f"{name} growth: {(after[name] - before[name]) / 1024:.1f} KiB")
        print(f"refusal lines: {lines}; sum of count: {total}; refused sent: {sent}")
        ok = total == sent and after["refusals"] - before["refusals"] <= 100 * 1024
        print("every refusal counted, growth bounded" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
