"""Streaming throughput through the LM Studio SDK socket against ``/v1/completions``, one run.

One daemon (its own LMS_HOME, the default model); each round streams the same prompt, greedy,
``--max-tokens`` tokens, once with the official ``lmstudio`` SDK (``complete_stream`` over the
``/llm`` WebSocket) and once as ``POST /v1/completions`` with ``stream: true`` (SSE over
http.client), in alternating order so that the machine's drift hits both alike. Both sides are
timed by the client as it receives pieces: the decode rate is (tokens - 1) / (last piece - first
piece), tokens as the server counts them. The figure that counts is the median of the per-round
ratios (SDK ÷ HTTP); time to first piece is printed too.

    .venv/bin/python bench/sdk_stream.py [--rounds 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from typing import Any

import harness

PROMPT = "The history of the city of Paris begins"
MODEL = "google/gemma-3-270m"


def sdk_round(model: Any, max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = last = 0.0
    pieces = 0
    stream = model.complete_stream(PROMPT, config={"maxTokens": max_tokens, "temperature": 0})
    for _ in stream:
        last = time.perf_counter()
        if pieces == 0:
            first = last
        pieces += 1
    tokens = stream.result().stats.predicted_tokens_count or pieces
    return first - start, (tokens - 1) / (last - first), tokens


def http_round(port: int, max_tokens: int) -> tuple[float, float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = last = 0.0
    tokens = pieces = 0
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if not chunk["choices"] or not chunk["choices"][0]["text"]:
            continue
        last = time.perf_counter()
        if pieces == 0:
            first = last
        pieces += 1
    conn.close()
    tokens = tokens or pieces
    return first - start, (tokens - 1) / (last - first), tokens


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    import lmstudio

    served = harness.start("lmsb")
    port = served.port
    try:
        with lmstudio.Client(api_host=f"localhost:{port}") as client:
            model = client.llm.model(MODEL)  # loads it
            sdk_round(model, 8)  # warm-up, both paths
            http_round(port, 8)
            ratios, ttft_sdk, ttft_http = [], [], []
            for i in range(args.rounds):
                if i % 2 == 0:
                    s = sdk_round(model, args.max_tokens)
                    h = http_round(port, args.max_tokens)
                else:
                    h = http_round(port, args.max_tokens)
                    s = sdk_round(model, args.max_tokens)
                ratios.append(s[1] / h[1])
                ttft_sdk.append(s[0])
                ttft_http.append(h[0])
                print(
                    f"round {i + 1}: sdk {s[1]:6.1f} tok/s ({s[2]} tok)  "
                    f"http {h[1]:6.1f} tok/s ({h[2]} tok)  ratio {s[1] / h[1]:.3f}",
                    flush=True,
                )
        print(f"max_tokens: {args.max_tokens}, rounds: {args.rounds}")
        print(f"throughput ratio sdk/http, median of rounds: {statistics.median(ratios):.3f}")
        print(
            f"time to first piece: sdk {statistics.median(ttft_sdk) * 1000:.1f} ms, "
            f"http {statistics.median(ttft_http) * 1000:.1f} ms (medians)"
        )
    finally:
        served.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
