"""Remote engines: what lms's token gate costs in front of llama.cpp's llama-server.

One llama-server (built as in ``bench/parallel.py``: ``-np 4``, 4 slots of 4,096 tokens, the
default model) serves the same streamed ``/v1/chat/completions`` to clients talking to it
directly and, through an lms daemon (the gate: its own home, ``auth.required = true``,
``[remotes.up] urls = [llama-server]``), to clients sending ``up/<id>`` and an lms token. Rounds
alternate ABBA between the two paths, at 1 and 4 concurrent clients; each client sends
``--requests`` requests one after the other (temperature 0, ``--max-tokens`` 128, fixed prompts).
Per round: aggregate tokens/s (streamed chunks with content ÷ the round's wall time) and the p50
time to first content token. Figures: the median over rounds of gate ÷ direct tokens/s (target
≥ 0.97) and of gate p50 TTFT minus direct p50 TTFT (targets ≤ 2 ms at 1 client, ≤ 5 ms at 4). With
128-token streams that difference is noisy (a request's first token waits for wherever the other
clients' decoding is); batches of 1 and 4 simultaneous ``max_tokens`` 1 requests, alternating
between the paths (``--short-clients``), isolate the gate's added latency.

``--failover``: two llama-server replicas (``-np 2`` each) behind ``[remotes.up] urls = [a, b]``,
``health_interval = 1``; ``--clients`` clients stream through the gate for ``--duration``
seconds while every ``--kill-every`` seconds one replica (in turn) is SIGKILLed and restarted on
its port. Counted: successes, requests that failed before any content (target 0), streams cut
after content that end with an error event, and silent stops (a stream that ends without
``[DONE]`` after a finish, or without an error event: must be 0).

On a 2-core machine llama-server's two compute threads and the gate share the cores: every
millisecond of the gate's CPU (printed per streamed chunk and per request) is taken from
generation. ``--server-args '-t 1 -tb 1'`` leaves a core to the gate, which separates that
contention from the latency the gate adds by itself.

The load average is printed before and after: a run sharing the CPU with other work is to be
repeated, not read (wrap runs in ``flock`` with any other benchmark of the machine).

    .venv/bin/python bench/remote.py [--rounds 8] [--clients 1,4] [--requests 4] [--max-tokens 128]
        [--short-requests 20] [--server-args '-t 1 -tb 1']
    .venv/bin/python bench/remote.py --failover [--duration 120] [--kill-every 30] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import harness
from parallel import build_llama_server, free_port, slots_args, stop_llama_server, wait_http

#: The model's id at llama-server (``--alias``); the gate serves it as ``up/<ALIAS>``.
ALIAS = "gemma-3-270m"
PROMPTS = [
    "Write a long story about a lighthouse keeper and a storm.",
    "Describe, step by step, how bread is baked in a village bakery.",
    "Write a long letter from a sailor to his sister about the sea.",
    "Explain in detail how a steam engine works, for a curious child.",
]


@dataclass
class Outcome:
    """One streamed chat completion as the client saw it."""

    status: int = 0
    ttft: float | None = None  # seconds to the first chunk with content
    tokens: int = 0  # chunks with content
    finished: bool = False  # a chunk had a finish_reason
    done: bool = False  # data: [DONE] arrived
    error: str | None = None  # the error event's message, or the HTTP error body
    broke: str | None = None  # the connection failed (exception name)
    end: float = 0.0


def stream_chat(port: int, model: str, prompt: str, max_tokens: int, token: str | None) -> Outcome:
    """One streaming ``/v1/chat/completions`` over a fresh connection (raw http.client)."""
    out = Outcome()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        response = conn.getresponse()
        out.status = response.status
        if response.status != 200:
            out.error = response.read()[:300].decode(errors="replace")
            return out
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                out.done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                out.error = str(error.get("message") if isinstance(error, dict) else error)
                continue
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    out.tokens += 1
                    if out.ttft is None:
                        out.ttft = time.perf_counter() - start
                if choice.get("finish_reason"):
                    out.finished = True
    except (OSError, http.client.HTTPException, ValueError) as exc:
        out.broke = type(exc).__name__
    finally:
        conn.close()
        out.end = time.perf_counter()
    return out


@dataclass
class Target:
    """Where a client sends: a port, the model's name there, the token (None: no header)."""

    port: int
    model: str
    token: str | None


def run_round(
    path: Target, clients: int, requests: int, max_tokens: int
) -> tuple[float, float, list[Outcome]]:
    """``clients`` concurrent clients, each sending ``requests`` requests in turn: (aggregate
    tokens/s, p50 TTFT in seconds, every outcome). A request that fails is counted by the
    caller (see :func:`failures`), not timed; a round where all fail raises."""
    outcomes: list[Outcome] = []

    def client(index: int) -> None:
        for k in range(requests):
            prompt = PROMPTS[(index + k) % len(PROMPTS)]
            outcomes.append(stream_chat(path.port, path.model, prompt, max_tokens, path.token))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    good = [o for o in outcomes if kind(o) == "ok" and o.ttft is not None]
    if not good:
        raise RuntimeError(f"port {path.port}: every request failed: {outcomes[:1]}")
    wall = max(o.end for o in outcomes) - start
    ttfts = [o.ttft for o in good if o.ttft is not None]
    return sum(o.tokens for o in good) / wall, statistics.median(ttfts), outcomes


def failures(outcomes: list[Outcome]) -> str:
    """The requests that did not succeed, by how they ended ("none" when all did)."""
    counts = Counter(
        f"{kind(o)}: HTTP {o.status} {o.broke or ''}{(o.error or '')[:160]}"
        for o in outcomes
        if kind(o) != "ok"
    )
    return "; ".join(f"{n} x {what}" for what, n in counts.most_common()) or "none"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired(
    direct: Target,
    gate: Target,
    pids: tuple[int, int],
    clients: int,
    requests: int,
    max_tokens: int,
    rounds: int,
    gap: float,
    seen: dict[str, list[Outcome]],
) -> dict[str, list[float]]:
    """ABBA rounds: per round each path's tokens/s and p50 TTFT (``d_``/``g_``), and the CPU
    milliseconds per streamed chunk of the gate and of llama-server (``pids``) in the gate's
    runs (``gate_cpu``, ``llama_cpu``); every outcome is appended to ``seen``."""
    keys = ("d_tps", "g_tps", "d_ttft", "g_ttft", "gate_cpu", "llama_cpu")
    found: dict[str, list[float]] = {k: [] for k in keys}
    for n in range(rounds):
        # Whoever runs second in a pair meets a machine the first has just warmed; swapping the
        # order each round cancels that out of the median. The pause keeps llama-server's
        # spinning compute threads of one path off the other path's first request.
        order = [("d", direct), ("g", gate)] if n % 2 == 0 else [("g", gate), ("d", direct)]
        for side, path in order:
            time.sleep(gap)
            before = [cpu_seconds(pid) for pid in pids]
            tps, ttft, outcomes = run_round(path, clients, requests, max_tokens)
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
            found[f"{side}_tps"].append(tps)
            found[f"{side}_ttft"].append(ttft)
            seen[side] += outcomes
            if side == "g":
                chunks = max(1, sum(o.tokens for o in outcomes))
                found["gate_cpu"].append(used[0] * 1000 / chunks)
                found["llama_cpu"].append(used[1] * 1000 / chunks)
    return found


def interleaved(
    direct: Target,
    gate: Target,
    gate_pid: int,
    requests: int,
    rounds: int,
    seen: dict[str, list[Outcome]],
    clients: int = 1,
) -> tuple[list[float], float]:
    """``max_tokens`` 1, ``clients`` concurrent requests at a time, the batches alternating
    between the paths (ABBA): per round, the gate's p50 time to first token minus the direct
    one, in ms (failed requests are only appended to ``seen``); and the gate's CPU milliseconds
    per request. A batch of simultaneous one-token requests is prefilled together, so unlike
    streams of 128 tokens its time to first token does not depend on where other clients'
    decoding happens to be: the gate's added latency under concurrency can be resolved."""
    added = []
    cpu = 0.0
    for _ in range(rounds):
        times: dict[str, list[float]] = {"d": [], "g": []}
        for k in range(requests):
            order = [("d", direct), ("g", gate)] if k % 2 == 0 else [("g", gate), ("d", direct)]
            for side, path in order:
                before = cpu_seconds(gate_pid)
                outcomes: list[Outcome] = []

                def one(path: Target = path, outcomes: list[Outcome] = outcomes) -> None:
                    outcomes.append(stream_chat(path.port, path.model, PROMPTS[0], 1, path.token))

                threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if side == "g":
                    cpu += cpu_seconds(gate_pid) - before
                seen[side] += outcomes
                times[side] += [o.ttft for o in outcomes if kind(o) == "ok" and o.ttft is not None]
        added.append((statistics.median(times["g"]) - statistics.median(times["d"])) * 1000)
    return added, cpu * 1000 / max(1, len(seen["g"]))


def spread(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def make_gate(urls: list[str], models: Path, extra: str = "") -> tuple[harness.Served, str, Path]:
    """An lms daemon with auth on, ``[remotes.up]`` on ``urls`` and the folder ``models`` (the
    default model is already there); returns it, a client token and its home (deleted by the
    caller)."""
    home = Path(tempfile.mkdtemp(prefix="lmsr"))
    os.environ["LMS_HOME"] = str(home)
    from lms.auth.registry import Registry

    _, token = Registry().create("bench")
    config = home / "config" / "config.toml"
    config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.write_text(
        f"[auth]\nrequired = true\n\n[remotes.up]\nurls = {json.dumps(urls)}\n{extra}"
    )
    served = harness.start("lmsr", {"LMS_MODELS_DIR": str(models)}, home=home)
    return served, token, home


def upstream_id(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/models")
    ids = [str(m["id"]) for m in json.loads(conn.getresponse().read())["data"]]
    conn.close()
    return ids[0]


def wait_listed(port: int, token: str, key: str, deadline: float) -> None:
    """Poll the gate's ``/v1/models`` until it lists ``key``."""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        if response.status == 200 and key in {m["id"] for m in json.loads(raw)["data"]}:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the gate never listed {key}")


def launch(model_path: Path, port: int, args: list[str]) -> subprocess.Popen[bytes]:
    """llama-server on ``port`` (a restart reuses its replica's port); returns once healthy."""
    command = [str(build_llama_server()), "-m", str(model_path), "--port", str(port)]
    command += ["--alias", ALIAS, "--no-webui", "--log-disable", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port, "/health", time.monotonic() + 120)
    except BaseException:
        stop_llama_server(proc)
        raise
    return proc


def measure(args: argparse.Namespace, models: Path, model_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    served = None
    home = None
    try:
        llama_port = free_port()
        server_args = slots_args(4) + shlex.split(args.server_args)
        procs.append(launch(model_path, llama_port, server_args))
        served, token, home = make_gate([f"http://127.0.0.1:{llama_port}"], models)
        model = upstream_id(llama_port)
        wait_listed(served.port, token, f"up/{model}", time.monotonic() + 60)
        pids = (served.proc.pid, procs[0].pid)
        direct = Target(llama_port, model, None)
        gate = Target(served.port, f"up/{model}", token)
        for path in (direct, gate, direct, gate):  # first-run costs, warm prompt caches
            run_round(path, 4, 1, args.max_tokens)
        print(
            f"llama-server: {build_llama_server()} ({shlex.join(server_args)}), model {model};"
            f" gate: lms daemon, auth on, [remotes.up]; /v1/chat/completions streamed,"
            f" temperature 0, max_tokens {args.max_tokens}, {args.requests} request(s) per client"
            f" per round, {args.rounds} rounds ABBA",
            flush=True,
        )
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        rows: list[tuple[str, list[float], list[float], dict[str, list[Outcome]]]] = []
        for clients in (int(c) for c in args.clients.split(",") if c):
            seen: dict[str, list[Outcome]] = {"d": [], "g": []}
            f = paired(
                direct,
                gate,
                pids,
                clients,
                args.requests,
                args.max_tokens,
                args.rounds,
                args.gap,
                seen,
            )
            ratios = [g / d for g, d in zip(f["g_tps"], f["d_tps"], strict=True)]
            added = [(g - d) * 1000 for g, d in zip(f["g_ttft"], f["d_ttft"], strict=True)]
            rows.append((f"{clients} client(s)", ratios, added, seen))
            print(
                f"{clients} client(s): direct {statistics.median(f['d_tps']):6.1f} tok/s,"
                f" gate {statistics.median(f['g_tps']):6.1f} tok/s, median ratio"
                f" {statistics.median(ratios):.3f} (rounds {spread(ratios, '.3f')});"
                f" p50 TTFT direct {statistics.median(f['d_ttft']) * 1000:.1f} ms,"
                f" gate {statistics.median(f['g_ttft']) * 1000:.1f} ms, added"
                f" {statistics.median(added):+.2f} ms (rounds {spread(added, '+.1f')});"
                f" CPU per streamed chunk: gate {statistics.median(f['gate_cpu']):.3f} ms,"
                f" llama-server {statistics.median(f['llama_cpu']):.2f} ms;"
                f" failed: direct {failures(seen['d'])}, gate {failures(seen['g'])}",
                flush=True,
            )
        for clients in (int(c) for c in args.short_clients.split(",") if c):
            if not args.short_requests:
                break
            seen = {"d": [], "g": []}
            added, cpu = interleaved(
                direct, gate, pids[0], args.short_requests, args.rounds, seen, clients
            )
            rows.append((f"max_tokens 1 x{clients}", [], added, seen))
            print(
                f"max_tokens 1, {clients} concurrent client(s), {args.short_requests} batch pairs"
                f" a round (ABBA): added p50 TTFT {statistics.median(added):+.2f} ms"
                f" (rounds {spread(added, '+.2f')}); gate CPU per request {cpu:.2f} ms;"
                f" failed: direct {failures(seen['d'])}, gate {failures(seen['g'])}",
                flush=True,
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
        print()
        print(
            f"{'':14s} {'gate/direct tok/s':>18s} {'added p50 TTFT':>15s}"
            f" {'failed: direct, gate':>20s}   targets"
        )
        targets = {
            "1 client(s)": "≥ 0.97, ≤ 2 ms",
            "4 client(s)": "≥ 0.97, ≤ 5 ms",
            "max_tokens 1 x1": "≤ 2 ms (the gate alone)",
            "max_tokens 1 x4": "≤ 5 ms (the gate alone)",
        }
        for label, ratios, added, seen in rows:
            ratio = f"{statistics.median(ratios):.3f}" if ratios else "-"
            failed = ", ".join(
                f"{sum(kind(o) != 'ok' for o in seen[side])} of {len(seen[side])}"
                for side in ("d", "g")
            )
            print(
                f"{label:14s} {ratio:>18s} {statistics.median(added):+12.2f} ms {failed:>20s}"
                f"   {targets.get(label, '(the gate alone)')}"
            )
    finally:
        if served is not None:
            served.stop()
        for proc in procs:
            stop_llama_server(proc)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


def kind(o: Outcome) -> str:
    """How a request through the gate ended."""
    if o.status != 200:
        return "refused"  # an HTTP error, or no answer at all
    if o.error is not None:
        return "cut" if o.tokens else "error before content"
    if o.done and o.finished and not o.broke:
        return "ok"
    return "silent stop"  # ended without a finish and [DONE], and without an error event


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", help='client counts (default 1,4; "": none; --failover: 4)')
    parser.add_argument("--requests", type=int, default=4, help="per client per round")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--short-requests", type=int, default=20, help="max_tokens 1 batches a round (0: none)"
    )
    parser.add_argument(
        "--short-clients", default="1,4", help="concurrent max_tokens 1 requests of a batch"
    )
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between two runs")
    parser.add_argument(
        "--server-args", default="", help="more llama-server options, e.g. '-t 1 -tb 1'"
    )
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--kill-every", type=float, default=30.0)
    args = parser.parse_args()
    print("$ " + shlex.join([sys.executable, *sys.argv]), flush=True)
    build_llama_server()
    from lms.inference import defaultmodel

    models = Path(tempfile.mkdtemp(prefix="lmsrm"))
    try:
        model_path = defaultmodel.ensure_default_model(models)
        if args.failover:
            from remote_failover import failover  # it imports this module's helpers

            args.clients = int(args.clients or 4)
            failover(args, models, model_path)
        else:
            args.clients = "1,4" if args.clients is None else args.clients
            measure(args, models, model_path)
    finally:
        shutil.rmtree(models, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
