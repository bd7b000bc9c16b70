"""Speculative decoding: lms with guessing on (its default) against lms with ``"speculative":
false`` and against llama.cpp's llama-server with its own n-gram speculation.

Two workloads, greedy where the output is copied and sampled where it is free:

- *repetitive*: rewrite a ~400-token JSON document with one change (the answer mostly repeats
  the prompt; two such prompts), 256 tokens, temperature 0;
- *free*: a short story (two prompts), 256 tokens, temperature 0.7 and a seed (the same seed
  for every server in a round).

Each round runs every server once, in an order that rotates from round to round, with 1 or 4
concurrent clients, each sending the workload's prompts one after the other through
``/v1/completions`` (non-streaming; the figure is completion tokens ÷ wall time of the round).
lms serves 4 slots; llama-server runs ``-np 4``, built from the llama.cpp vendored in the
installed llama-cpp-python (see bench/parallel.py). The figures that count are medians of
per-round ratios.

    .venv/bin/python bench/speculative.py [--rounds 8] [--clients 1,4] [--spec-type ngram-mod]
    .venv/bin/python bench/speculative.py --search     # which --spec-type serves best here
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import harness
from parallel import slots_args, start_llama_server, stop_llama_server

MODEL = "google/gemma-3-270m"
SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")

PEOPLE = [
    {"id": i, "name": name, "age": age, "city": city, "email": f"{name.lower()}@example.com"}
    for i, (name, age, city) in enumerate(
        [
            ("Alice", 34, "Lisbon"),
            ("Bruno", 28, "Porto"),
            ("Chen", 41, "Madrid"),
            ("Dana", 25, "Paris"),
            ("Emil", 39, "Berlin"),
            ("Fatima", 31, "Rome"),
            ("Goran", 45, "Vienna"),
            ("Hana", 29, "Prague"),
        ]
    )
]
DOCUMENT = json.dumps(PEOPLE, indent=2)  # about 400 tokens


def turn(text: str) -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


#: Each client sends every prompt of the workload in turn: two prompts per workload, so that
#: a round does not hang on the one path greedy decoding takes through one text (lms and
#: llama-server round near-ties differently, and their texts can part ways).
WORKLOADS: dict[str, dict[str, object]] = {
    "repetitive": {
        "prompts": [
            turn(
                'Rewrite this JSON with the key "age" renamed to "years". Output only the'
                " JSON.\n\n" + DOCUMENT
            ),
            turn("Copy this JSON exactly, changing Lisbon to Faro.\n\n" + DOCUMENT),
        ],
        "temperature": 0,
    },
    "free": {
        "prompts": [
            turn("Write a short story about a lighthouse keeper and a storm."),
            turn("Write a short story about a baker who finds a map in a loaf of bread."),
        ],
        "temperature": 0.7,
    },
}


def one_client(port: int, bodies: list[dict[str, object]], out: list[int]) -> None:
    for body in bodies:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        headers = {"Content-Type": "application/json"}
        conn.request("POST", "/v1/completions", json.dumps(body), headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"port {port}: {response.status} {answer}")
        out.append(int(answer["usage"]["completion_tokens"]))


def run_round(port: int, bodies: list[dict[str, object]], clients: int) -> float:
    """Aggregate completion tokens per second of ``clients`` concurrent clients, each sending
    ``bodies`` one after the other."""
    counts: list[int] = []
    threads = [
        threading.Thread(target=one_client, args=(port, bodies, counts)) for _ in range(clients)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if len(counts) != clients * len(bodies):
        raise RuntimeError("a request failed")
    return sum(counts) / wall


def body_of(workload: str, seed: int, **extra: object) -> list[dict[str, object]]:
    spec = WORKLOADS[workload]
    prompts = spec["prompts"]
    assert isinstance(prompts, list)
    return [
        {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 256,
            "temperature": spec["temperature"],
            "seed": seed,
            **extra,
        }
        for prompt in prompts
    ]


def with_spec(spec_type: str | None) -> list[str]:
    return slots_args(4) + ([] if spec_type is None else ["--spec-type", spec_type])


def compare(
    runners: dict[str, Callable[[str, int, int], float]],
    workload: str,
    clients: int,
    rounds: int,
) -> dict[str, list[float]]:
    """Tokens/s of each runner per round, in an order rotating by round."""
    names = list(runners)
    results: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        order = names[n % len(names) :] + names[: n % len(names)]
        for name in order:
            results[name].append(runners[name](workload, clients, 1000 + n))
    return results


def ratios(a: list[float], b: list[float]) -> str:
    values = [x / y for x, y in zip(a, b, strict=True)]
    spread = ", ".join(f"{v:.2f}" for v in values)
    return f"{statistics.median(values):.3f} (rounds {spread})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--workloads", default="repetitive,free")
    parser.add_argument("--spec-type", default="ngram-mod", help="llama-server's --spec-type")
    parser.add_argument(
        "--search", action="store_true", help="rank llama-server's n-gram --spec-type variants"
    )
    args = parser.parse_args()
    served = harness.start("lmsspec", {"LMS_MODELS_PARALLEL": "4"})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        model_path = next(served.models_dir.rglob("*.gguf"))
        lms = served.port

        def lms_run(extra: dict[str, object]) -> Callable[[str, int, int], float]:
            return lambda w, c, seed: run_round(lms, body_of(w, seed, **extra), c)

        if args.search:
            runners = {}
            for spec_type in (None, *SPEC_TYPES):
                proc, port = start_llama_server(model_path, with_spec(spec_type))
                procs.append(proc)
                runners[spec_type or "none"] = lambda w, c, seed, port=port: run_round(
                    port, body_of(w, seed), c
                )
                run_round(port, body_of("repetitive", 1), 1)  # warm-up
            found = compare(runners, "repetitive", 1, args.rounds)
            print("llama-server --spec-type, repetitive workload, 1 client (tok/s, median):")
            for name, values in sorted(found.items(), key=lambda kv: -statistics.median(kv[1])):
                print(f"  {name:14s} {statistics.median(values):7.1f}")
            return 0

        proc, llama = start_llama_server(model_path, with_spec(args.spec_type))
        procs.append(proc)
        runners = {
            "lms": lms_run({}),
            "lms-off": lms_run({"speculative": False}),
            "llama-server": lambda w, c, seed: run_round(llama, body_of(w, seed), c),
        }
        for runner in runners.values():  # JIT load, calibration, warm caches
            runner("repetitive", 1, 1)
        print(
            f'lms: 4 slots, speculation on vs "speculative": false; llama-server -np 4'
            f" --spec-type {args.spec_type}; 256 tokens; {args.rounds} rounds",
            flush=True,
        )
        for workload in args.workloads.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                found = compare(runners, workload, clients, args.rounds)
                med = {name: statistics.median(v) for name, v in found.items()}
                print(
                    f"{workload}, {clients} client(s): lms {med['lms']:.1f} tok/s,"
                    f" lms-off {med['lms-off']:.1f}, llama-server {med['llama-server']:.1f};"
                    f" lms/lms-off {ratios(found['lms'], found['lms-off'])};"
                    f" lms/llama-server {ratios(found['lms'], found['llama-server'])}",
                    flush=True,
                )
    finally:
        served.stop()
        for proc in procs:
            stop_llama_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
