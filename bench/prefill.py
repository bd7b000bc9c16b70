"""Cold prefill of a long prompt: lms against llama.cpp's own llama-server.

Both servers get the same raw text on ``/v1/completions`` with ``max_tokens`` 1, temperature 0
and ``"cache_prompt": false``; each round's prompt also starts with a line of its own, so no
prefix of an earlier round could be reused even if a cache ignored that flag. Prefill
throughput is the prompt's token count (as each server reports it in ``usage``) divided by the
whole request's wall time as the client sees it (connect, prefill, one sampled token, answer):
with one output token that is time to first token plus the answer's few bytes. llama-server
(built as in ``bench/parallel.py``) runs with its defaults and lms's context (``-c`` =
4 slots of 4,096); lms runs with its defaults. Rounds alternate ABBA; the figure that counts is the
median of the per-round ratios lms ÷ llama-server, for a long prompt (about 2,600 tokens by
default) and, for comparison, a short one. ``--stream`` times the first streamed token instead.

The machine's load average is printed before and after: a run that shares the CPU with other
work gives wide round ranges and is to be repeated, not read (wrap runs in ``flock`` with any
other benchmark of the machine).

    .venv/bin/python bench/prefill.py [--rounds 10] [--entries 70] [--stream] [--parallel N]
        [--server-args '--cache-ram 0'] [--gap 0.5]

``--parallel 8 --server-args '-np 4 -fa on -t 2 -tb 2'`` is ``bench/parallel.py``'s set-up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import sys
import time

import harness
from parallel import build_llama_server, start_llama_server, stop_llama_server

MODEL = "google/gemma-3-270m"
WINDS = ["north", "south", "east", "west"]


def long_text(entries: int) -> str:
    """Plain prose-like text, about 37 tokens an entry with gemma's tokenizer."""
    return " ".join(
        f"Entry {i}: the keeper of lighthouse number {i * 7 % 113} wrote that the wind came from"
        f" the {WINDS[i % 4]} at {i % 40 + 3} knots, and that ship {i * 13 % 257} passed at dawn."
        for i in range(entries)
    )


def complete(port: int, prompt: str, *, stream: bool = False) -> tuple[float, int]:
    """One completion of one token: (seconds, prompt tokens). Seconds are the whole request's,
    or with ``stream`` those to the first chunk holding text (time to first token)."""
    body: dict[str, object] = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0,
        "cache_prompt": False,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"port {port}: HTTP {response.status}: {response.read()[:300]!r}")
    if not stream:
        raw = response.read()
        seconds = time.perf_counter() - start
        conn.close()
        return seconds, int(json.loads(raw)["usage"]["prompt_tokens"])
    seconds, tokens = 0.0, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if not seconds and chunk.get("choices") and "text" in chunk["choices"][0]:
            seconds = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = int(chunk["usage"]["prompt_tokens"])
    conn.close()
    return seconds, tokens


def measure(
    lms_port: int, llama_port: int, text: str, rounds: int, label: str, *, stream: bool, gap: float
) -> None:
    ratios: list[float] = []
    lms_tps: list[float] = []
    llama_tps: list[float] = []
    counts: set[tuple[int, int]] = set()
    for n in range(rounds):
        prompt = f"Log {label} {n}.\n{text}"
        # ABBA: whoever runs second meets a machine the first has just warmed; swapping the
        # order each round cancels that out of the median.
        # Both servers' compute threads spin for a while after a request (OpenMP, llama-server's
        # polling threadpool): the pause keeps one server's spinning off the other's request.
        if n % 2 == 0:
            time.sleep(gap)
            a = complete(lms_port, prompt, stream=stream)
            time.sleep(gap)
            b = complete(llama_port, prompt, stream=stream)
        else:
            time.sleep(gap)
            b = complete(llama_port, prompt, stream=stream)
            time.sleep(gap)
            a = complete(lms_port, prompt, stream=stream)
        counts.add((a[1], b[1]))
        lms_tps.append(a[1] / a[0])
        llama_tps.append(b[1] / b[0])
        ratios.append(lms_tps[-1] / llama_tps[-1])
    tokens = ", ".join(f"lms {a} / llama-server {b}" for a, b in sorted(counts))
    print(
        f"{label} prompt ({tokens} tokens): lms {statistics.median(lms_tps):6.0f} tok/s,"
        f" llama-server {statistics.median(llama_tps):6.0f} tok/s,"
        f" median ratio {statistics.median(ratios):.3f} over {rounds} rounds"
        f" (range {min(ratios):.2f}-{max(ratios):.2f}: {', '.join(f'{r:.2f}' for r in ratios)})",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--entries", type=int, default=70, help="long prompt size (~37 tok each)")
    parser.add_argument("--short-rounds", type=int, default=10)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between requests")
    parser.add_argument("--parallel", type=int, help="lms's slots (models.parallel)")
    parser.add_argument(
        "--stream", action="store_true", help="time to the first streamed token instead"
    )
    parser.add_argument(
        "--server-args", default="", help="more llama-server options, e.g. '--cache-ram 0'"
    )
    args = parser.parse_args()
    print("$ " + shlex.join([sys.executable, *sys.argv]), flush=True)

    server_bin = build_llama_server()
    settings = {} if args.parallel is None else {"LMS_MODELS_PARALLEL": str(args.parallel)}
    served = harness.start("lmsf", settings)
    llama_proc = None
    try:
        model_path = next(served.models_dir.rglob("*.gguf"))
        llama_args = ["-c", str(4 * 4096), *shlex.split(args.server_args)]
        llama_proc, llama_port = start_llama_server(model_path, llama_args)
        text = long_text(args.entries)
        for port in (served.port, llama_port):  # JIT load, first-run costs
            complete(port, "Warm-up.")
            complete(port, text)
        timed = "time to the first streamed token" if args.stream else "whole request time"
        print(
            f"llama-server: {server_bin} (defaults, -c {4 * 4096} {args.server_args});"
            f" lms: {settings or 'defaults'};"
            " /v1/completions, max_tokens 1, cache_prompt false;"
            f" throughput = prompt tokens / {timed}"
        )
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        measure(
            served.port, llama_port, text, args.rounds, "long", stream=args.stream, gap=args.gap
        )
        if args.short_rounds:
            short = "Write a short story about a lighthouse keeper."
            measure(
                served.port,
                llama_port,
                short,
                args.short_rounds,
                "short",
                stream=args.stream,
                gap=args.gap,
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        served.stop()
        if llama_proc is not None:
            stop_llama_server(llama_proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
