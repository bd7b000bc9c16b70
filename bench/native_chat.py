"""Streaming overhead of the native ``/api/v1/chat`` against ``/v1/completions``, same run.

Both stream the same tokens from the same instance: ``/api/v1/chat`` with ``store: false`` and
a prompt that its chat template turns into N prompt tokens, ``/v1/completions`` with that very
rendered prompt. Rounds alternate; the figure is the median of per-round ratios of decode
tokens/s (native ÷ completions) and the difference in time to first token.

    .venv/bin/python bench/native_chat.py [--rounds 6] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time

import harness

MODEL = "google/gemma-3-270m"
QUESTION = "Tell me about the history of Paris."
RENDERED = f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"


def stream(port: int, path: str, body: dict[str, object], is_token: object) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    first = last = 0.0
    n = 0
    for raw in conn.getresponse():
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        if is_token(json.loads(line[6:])):  # type: ignore[operator]
            last = time.perf_counter()
            first = first or last
            n += 1
    conn.close()
    return first - start, (n - 1) / (last - first)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    served = harness.start("lmsn", {"LMS_MODELS_PARALLEL": "1"})
    port = served.port
    try:
        native_body = {
            "model": MODEL,
            "input": QUESTION,
            "stream": True,
            "store": False,
            "temperature": 0,
            "max_output_tokens": args.max_tokens,
        }
        plain_body = {
            "model": MODEL,
            "prompt": RENDERED,
            "stream": True,
            "temperature": 0,
            "max_tokens": args.max_tokens,
        }

        def native_token(event: dict[str, object]) -> bool:
            return event.get("type") == "message.delta"

        def plain_token(event: dict[str, object]) -> bool:
            choices = event.get("choices")
            return bool(choices) and bool(choices[0].get("text"))  # type: ignore[index]

        stream(port, "/v1/completions", plain_body, plain_token)  # JIT load + warm-up
        ratios, ttft = [], []
        for i in range(args.rounds):
            p_ttft, p_tps = stream(port, "/v1/completions", plain_body, plain_token)
            n_ttft, n_tps = stream(port, "/api/v1/chat", native_body, native_token)
            ratios.append(n_tps / p_tps)
            ttft.append(n_ttft - p_ttft)
            print(
                f"round {i + 1}: completions {p_tps:6.1f} tok/s, native {n_tps:6.1f} tok/s,"
                f" ratio {n_tps / p_tps:.3f}",
                flush=True,
            )
        print(
            f"/api/v1/chat ÷ /v1/completions streaming, median ratio: "
            f"{statistics.median(ratios):.3f}; extra time to first token: "
            f"{statistics.median(ttft) * 1000:+.1f} ms"
        )
    finally:
        served.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
