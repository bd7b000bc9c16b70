"""`lms chat` and `lms log stream` with the real command, daemon and model."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from conftest import LMS, Home

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


def test_one_shot_chat_with_stats(home: Home) -> None:
    result = home.lms(
        "chat", MODEL, "-p", "What is the capital of France?", "--stats", "--max-tokens", "8"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # the reply, on stdout only
    assert "Prediction Stats:" in result.stderr and "Predicted Tokens: " in result.stderr
    assert "Prediction Stats" not in result.stdout


def test_stdin_is_appended_to_the_prompt(home: Home) -> None:
    result = subprocess.run(
        [LMS, "chat", MODEL, "-p", "Summarise:", "--max-tokens", "4"],
        input="The cat sat on the mat.",
        env=home.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_chat_unknown_model(home: Home) -> None:
    result = home.lms("chat", "nobody/nothing", "-p", "hi")
    assert result.returncode == 5
    assert MODEL in result.stderr


def test_log_stream_shows_requests_and_model_io(home: Home) -> None:
    assert home.lms("server", "start", "--port", "0").returncode == 0
    url = home.server_url()
    follower = subprocess.Popen(
        [LMS, "log", "stream", "--json"],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None and follower.stdout is not None
        assert "streaming logs" in follower.stderr.readline()  # subscribed: no race below
        request = urllib.request.Request(
            f"{url}/v1/completions",
            json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 3}).encode(),
            {"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=120).read()
        events = [json.loads(follower.stdout.readline()) for _ in range(3)]
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        for stream in (follower.stdout, follower.stderr):
            if stream:
                stream.close()
    kinds = {e["data"]["type"]: e for e in events}
    assert kinds["llm.prediction.input"]["data"]["input"].startswith("<bos>Hello")
    assert kinds["llm.prediction.output"]["data"]["stats"]["predictedTokensCount"] == 3
    request_event = kinds["server.request"]["data"]
    assert (request_event["method"], request_event["route"], request_event["status"]) == (
        "POST",
        "/v1/completions",
        200,
    )
