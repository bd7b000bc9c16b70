"""Prompt caching: time to first token with a long shared prefix, reused against cold.

An agent's requests share a long system prompt and differ in the last question. With auth on,
cached cells are only reused within one token, so the same daemon gives both cases in one run:
each *cold* request comes with a token never used before (nothing to reuse), each *warm* one
with a token whose previous request had the same system prompt. Rounds alternate the order.

    .venv/bin/python bench/prompt_cache.py [--rounds 8] [--prefix-words 900]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness

MODEL = "google/gemma-3-270m"


def first_token_seconds(port: int, token: str, system: str, question: str) -> tuple[float, int]:
    """Streamed chat completion: seconds to the first content, and the cached prompt tokens."""
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    first = 0.0
    cached = 0
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
        elif not first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - start
    conn.close()
    return first, cached


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prefix-words", type=int, default=900)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lmsq"))
    (home / "config").mkdir(mode=0o700)
    (home / "config" / "config.toml").write_text("[auth]\nrequired = true\n")
    os.environ["LMS_HOME"] = str(home)
    from lms.auth.registry import Registry

    registry = Registry()
    warm_token = registry.create("warm")[1]
    cold_tokens = [registry.create(f"cold-{i}")[1] for i in range(args.rounds + 1)]
    words = " ".join(f"rule{i % 97}" for i in range(args.prefix_words))
    system = f"You are a careful assistant. Follow these house rules: {words}."
    daemon = harness.start("lmsq", home=home)
    try:
        port = daemon.port
        first_token_seconds(port, cold_tokens[-1], system, "Warm-up.")  # JIT load
        first_token_seconds(port, warm_token, system, "Prime the cache.")
        cold, warm, reused = [], [], []
        for i in range(args.rounds):
            question = f"Question {i}: what is rule{i}?"
            if i % 2 == 0:
                c = first_token_seconds(port, cold_tokens[i], system, question)
                w = first_token_seconds(port, warm_token, system, question)
            else:
                w = first_token_seconds(port, warm_token, system, question)
                c = first_token_seconds(port, cold_tokens[i], system, question)
            assert c[1] == 0, "a cold request reused cells"
            cold.append(c[0])
            warm.append(w[0])
            reused.append(w[1])
            print(
                f"round {i + 1}: cold {c[0] * 1000:7.1f} ms  warm {w[0] * 1000:7.1f} ms"
                f"  ({w[1]} tokens reused)",
                flush=True,
            )
        cold_ms, warm_ms = statistics.median(cold) * 1000, statistics.median(warm) * 1000
        print(
            f"time to first token, median of {args.rounds}: cold {cold_ms:.0f} ms,"
            f" warm {warm_ms:.0f} ms; cold ÷ warm ="
            f" {statistics.median(c / w for c, w in zip(cold, warm, strict=True)):.1f}"
            f" (warm requests reused {statistics.median(reused):.0f} prompt tokens)"
        )
    finally:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
