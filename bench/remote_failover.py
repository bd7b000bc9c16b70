"""``bench/remote.py --failover``: replicas killed under load behind lms's gate (see
bench/remote.py's docstring)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from parallel import free_port, slots_args, stop_llama_server
from remote import (
    PROMPTS,
    Outcome,
    Target,
    kind,
    launch,
    make_gate,
    stream_chat,
    upstream_id,
    wait_listed,
)


def failover(args: argparse.Namespace, models: Path, model_path: Path) -> None:
    ports = [free_port(), free_port()]
    # Two replicas share the machine's cores: each gets half, so neither spins on the other's.
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    server_args = [*slots_args(2)[:4], "-fa", "on", "-t", threads, "-tb", threads]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    served = None
    home = None
    stop = threading.Event()
    outcomes: list[Outcome] = []
    threads: list[threading.Thread] = []
    try:
        for i, port in enumerate(ports):
            procs[i] = launch(model_path, port, server_args)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        served, token, home = make_gate(urls, models, "health_interval = 1\n")
        model = f"up/{upstream_id(ports[0])}"
        wait_listed(served.port, token, model, time.monotonic() + 60)
        gate = Target(served.port, model, token)

        def client(index: int) -> None:
            k = index
            while not stop.is_set():
                prompt = PROMPTS[k % len(PROMPTS)]
                k += 1
                outcome = stream_chat(gate.port, gate.model, prompt, args.max_tokens, gate.token)
                outcomes.append(outcome)
                if outcome.status != 200 or outcome.broke:
                    time.sleep(0.1)

        print(
            f"failover: 2 llama-server replicas ({shlex.join(server_args)}) behind the gate,"
            f" health_interval 1; {args.clients} clients for {args.duration:.0f} s, max_tokens"
            f" {args.max_tokens}; a replica SIGKILLed and restarted every {args.kill_every:.0f} s",
            flush=True,
        )
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        threads = [
            threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)
        ]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        kills = 0
        while True:
            next_kill = start + args.kill_every * (kills + 1)
            if next_kill >= start + args.duration:
                break
            time.sleep(max(0.0, next_kill - time.monotonic()))
            victim = kills % 2
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            t = time.monotonic() - start
            procs[victim] = launch(model_path, ports[victim], server_args)
            print(
                f"  {t:5.1f} s: replica {victim + 1} killed, back after"
                f" {time.monotonic() - start - t:.1f} s",
                flush=True,
            )
        time.sleep(max(0.0, start + args.duration - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        report_failover(outcomes, kills)
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        stop.set()
        if served is not None:
            served.stop()
        for proc in procs.values():
            if proc.poll() is None:
                stop_llama_server(proc)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


def report_failover(outcomes: list[Outcome], kills: int) -> None:
    kinds = Counter(kind(o) for o in outcomes)
    before = kinds["refused"] + kinds["error before content"]
    print(f"{len(outcomes)} requests, {kills} kills:")
    print(f"  succeeded                                  {kinds['ok']}")
    print(
        f"  failed before any content (target 0)       {before} (HTTP errors or no answer:"
        f" {kinds['refused']}, error events before content: {kinds['error before content']})"
    )
    print(f"  cut mid-stream, ended by an error event    {kinds['cut']}")
    print(f"  silent stops (target 0)                    {kinds['silent stop']}")
    reasons = Counter(
        (kind(o), o.status, o.broke, (o.error or "")[:120]) for o in outcomes if kind(o) != "ok"
    )
    for (what, status, broke, error), n in reasons.most_common(8):
        print(f"    {n} x {what}: HTTP {status} {broke or ''} {error}")
