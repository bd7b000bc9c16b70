"""Parallel streaming clients: lms (continuous batching) against llama.cpp's own llama-server.

llama-server is built from the llama.cpp source vendored in the installed llama-cpp-python's
sdist, in this benchmark's own cache (bench/.cache, never committed), and run with ``-np 4`` on
the same model. lms runs with 8 slots. Rounds alternate between the two servers in ABBA order:
64 tokens, temperature 0, 1, 4 and 8 concurrent streaming clients. The figure that counts is the
median of the per-round ratios lms ÷ llama-server of aggregate tokens/s; time to first token is
reported at each load.

    .venv/bin/python bench/parallel.py [--rounds 9] [--clients 1,4,8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from importlib import metadata
from pathlib import Path

import harness

CACHE = Path(__file__).resolve().parent / ".cache"
PROMPT = "Write a short story about a lighthouse keeper."


def build_llama_server() -> Path:
    version = metadata.version("llama-cpp-python")
    root = CACHE / f"llama-cpp-python-{version}"
    binary = root / "build-server" / "bin" / "llama-server"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"llama-cpp-python=={version}",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(CACHE),
            ],
            check=True,
        )
    if not root.exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(CACHE, filter="data")
        extracted = CACHE / f"llama_cpp_python-{version}"
        if extracted.exists():
            extracted.rename(root)
    source = root / "vendor" / "llama.cpp"
    build = root / "build-server"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=ON",
        ],
        check=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count())],
        check=True,
    )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not come up")


def start_llama_server(model_path: Path, args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """llama-server (built as above) on ``model_path`` and a free port with ``args`` added;
    returns once ``/health`` answers (the process is stopped if it never does)."""
    port = free_port()
    command = [str(build_llama_server()), "-m", str(model_path), "--port", str(port)]
    command += ["--no-webui", "--log-disable", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port, "/health", time.monotonic() + 120)
    except BaseException:
        stop_llama_server(proc)
        raise
    return proc, port


def stop_llama_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def slots_args(slots: int) -> list[str]:
    """The set-up the parallel benchmarks compare: ``slots`` slots of 4,096 tokens, flash
    attention, every core for generation and prompts."""
    threads = str(os.cpu_count())
    return ["-np", str(slots), "-c", str(4096 * slots), "-fa", "on", "-t", threads, "-tb", threads]


def one_stream(port: int, model: str, results: list[tuple[float, int, float]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"model": model, "prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True}
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = 0.0
    tokens = 0
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            tokens += 1
            if not first:
                first = time.perf_counter() - start
    conn.close()
    results.append((first, tokens, time.perf_counter()))


def run_round(port: int, model: str, clients: int) -> tuple[float, float]:
    results: list[tuple[float, int, float]] = []
    threads = [
        threading.Thread(target=one_stream, args=(port, model, results)) for _ in range(clients)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = max(r[2] for r in results) - start
    tokens = sum(r[1] for r in results)
    return tokens / wall, statistics.median(r[0] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--clients", default="1,4,8")
    args = parser.parse_args()
    loads = [int(c) for c in args.clients.split(",")]

    server_bin = build_llama_server()
    served = harness.start("lmsp", {"LMS_MODELS_PARALLEL": "8"})
    lms_port = served.port
    llama_proc = None
    try:
        model_path = next(served.models_dir.rglob("*.gguf"))
        llama_proc, llama_port = start_llama_server(model_path, slots_args(4))
        model = "google/gemma-3-270m"
        run_round(lms_port, model, 1)  # JIT load + warm-up
        run_round(llama_port, model, 1)
        print(f"llama-server: {server_bin} (-np 4); lms: 8 slots; 64 tokens, temperature 0")
        for clients in loads:
            ratios, lms_ttft, llama_ttft, lms_tps, llama_tps = [], [], [], [], []
            for n in range(args.rounds):
                # ABBA order: whoever runs second in a pair meets a machine the first one has
                # just warmed (or heated); swapping each round cancels that out of the median.
                if n % 2 == 0:
                    a_tps, a_ttft = run_round(lms_port, model, clients)
                    b_tps, b_ttft = run_round(llama_port, model, clients)
                else:
                    b_tps, b_ttft = run_round(llama_port, model, clients)
                    a_tps, a_ttft = run_round(lms_port, model, clients)
                ratios.append(a_tps / b_tps)
                lms_tps.append(a_tps)
                llama_tps.append(b_tps)
                lms_ttft.append(a_ttft)
                llama_ttft.append(b_ttft)
            print(
                f"{clients} client(s): lms {statistics.median(lms_tps):6.1f} tok/s, "
                f"llama-server {statistics.median(llama_tps):6.1f} tok/s, "
                f"median ratio {statistics.median(ratios):.3f} "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
                f"TTFT lms {statistics.median(lms_ttft) * 1000:.0f} ms, "
                f"llama-server {statistics.median(llama_ttft) * 1000:.0f} ms",
                flush=True,
            )
    finally:
        served.stop()
        if llama_proc is not None:
            stop_llama_server(llama_proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
