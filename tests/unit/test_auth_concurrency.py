"""The registry under concurrent writers and writers killed at any moment (docs/LIMITS.md)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lms.auth.registry import Registry
from lms.auth.verifier import TokenVerifier


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    return tmp_path


CREATE_ONE = textwrap.dedent(
    """
    import sys
    from lms.auth.registry import Registry
    sys.stdin.readline()  # start together
    print(Registry().create(sys.argv[1])[1], flush=True)
    """
)


def test_twenty_processes_create_at_once(home: Path) -> None:
    env = {**os.environ, "LMS_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE_ONE, f"worker-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for i in range(20)
    ]
    outputs = [proc.communicate("go\n", timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 20, [err for _, err in outputs]
    minted = [out.strip() for out, _ in outputs]
    assert len(set(minted)) == 20
    registry = Registry()
    state = registry.state()
    assert state.generation == 20
    assert sorted(r.name for r in state.records) == sorted(f"worker-{i}" for i in range(20))
    verifier = TokenVerifier()
    names = {verifier.authenticate(token).name for token in minted}
    assert names == {f"worker-{i}" for i in range(20)}


WRITER = textwrap.dedent(
    """
    import itertools, sys
    from datetime import timedelta
    from lms.auth.registry import Registry
    registry = Registry()
    start = int(sys.argv[1])
    for i in itertools.count(start):
        record, token = registry.create(f"t{i}")
        print("created", token, flush=True)
        registry.edit(record.id, rpm=i % 50 + 1)
        if i % 3 == 0:
            record, token = registry.rotate(record.id, grace=timedelta(hours=1))
            print("rotated", token, flush=True)
    """
)


def test_writer_killed_at_random_moments_leaves_a_consistent_registry(home: Path) -> None:
    env = {**os.environ, "LMS_HOME": str(home)}
    rng = random.Random(1234)
    reported: list[str] = []
    start = 0
    for _ in range(6):
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # writing has begun
            assert first.startswith("created ")
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            lines = [first, *proc.stdout.read().splitlines(keepends=True)]
        assert proc.returncode == -signal.SIGKILL
        # A line is complete only if the writer finished printing it (its write had returned).
        reported += [line.split()[1] for line in lines if line.endswith("\n")]

        # Whatever the moment of the kill, the registry parses, and every token the writer
        # reported is valid, under its own name, with consistent fields.
        state = Registry().state()
        ids = [r.id for r in state.records]
        assert len(ids) == len(set(ids))
        verifier = TokenVerifier()
        for token in reported:
            record = verifier.authenticate(token)
            assert token.startswith(f"sk-lm-{record.id}:")
            assert record.name.startswith("t")
            assert record.rpm is None or 1 <= record.rpm <= 50
        # The next run numbers its tokens after those really in the registry.
        start = max((int(r.name[1:]) for r in state.records), default=-1) + 1
    assert len(reported) > 6
    # No killed writer left the lock held: one more write goes through, and it clears any
    # temp file a writer killed inside its atomic write left behind.
    Registry().create("after")
    assert [p.name for p in (home / "config").iterdir() if p.name.endswith(".tmp")] == []
