"""Streaming throughput of lms against direct llama-cpp-python, measured in one run.

Rounds alternate between the two so that the machine's drift hits both alike; the figure that
counts is the median of the per-round ratios (lms ÷ direct). Also: time-to-first-token overhead,
and the wall time of `lms --help` and `lms daemon status`.

    .venv/bin/python bench/throughput.py [--rounds 6] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness

PROMPT = "The history of the city of Paris begins"


def direct_round(llm: Any, max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    for _ in llm.create_completion(PROMPT, max_tokens=max_tokens, temperature=0.0, stream=True):
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    return first - start, (n - 1) / (last - first), n


def lms_round(port: int, model: str, max_tokens: int) -> tuple[float, float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps(
        {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
    )
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = last = 0.0
    n = 0
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if not chunk["choices"] or not chunk["choices"][0]["text"]:
            continue
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    conn.close()
    return first - start, (n - 1) / (last - first), n


def wall(cmd: list[str], env: dict[str, str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    served = harness.start("lmsb")
    env, port = served.env, served.port
    try:
        from lms.inference import defaultmodel

        model_path = defaultmodel.default_model_path(served.models_dir)
        from llama_cpp import Llama

        from lms.inference.engine import LoadOptions

        threads = LoadOptions().threads
        llm = Llama(
            str(model_path),
            n_ctx=4096,
            flash_attn=True,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        model = defaultmodel.DEFAULT_MODEL_KEY
        lms_round(port, model, 8)  # JIT load + warm-up
        direct_round(llm, 8)
        ratios, ttft_direct, ttft_lms, rows = [], [], [], []
        for i in range(args.rounds):
            d_ttft, d_tps, d_n = direct_round(llm, args.max_tokens)
            s_ttft, s_tps, s_n = lms_round(port, model, args.max_tokens)
            ratios.append(s_tps / d_tps)
            ttft_direct.append(d_ttft)
            ttft_lms.append(s_ttft)
            rows.append(
                f"round {i + 1}: direct {d_tps:6.1f} tok/s ({d_n} tok)  "
                f"lms {s_tps:6.1f} tok/s ({s_n} tok)  ratio {s_tps / d_tps:.3f}"
            )
            print(rows[-1], flush=True)
        print(f"threads: {threads}, max_tokens: {args.max_tokens}, rounds: {args.rounds}")
        print(f"throughput ratio lms/direct, median of rounds: {statistics.median(ratios):.3f}")
        overhead_ms = (statistics.median(ttft_lms) - statistics.median(ttft_direct)) * 1000
        print(
            f"time to first token: direct {statistics.median(ttft_direct) * 1000:.1f} ms, "
            f"lms {statistics.median(ttft_lms) * 1000:.1f} ms (overhead {overhead_ms:+.1f} ms)"
        )
        lms_cmd = str(Path(sys.executable).with_name("lms"))
        print(
            f"`lms --help` wall time: {wall([lms_cmd, '--help'], env) * 1000:.0f} ms (median of 5)"
        )
        status_ms = wall([lms_cmd, "daemon", "status"], env) * 1000
        print(f"`lms daemon status` wall time: {status_ms:.0f} ms (median of 5)")
    finally:
        served.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
