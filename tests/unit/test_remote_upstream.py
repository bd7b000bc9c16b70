"""The pure parts of talking to remote engines: sanitising, choosing a replica, error mapping."""

from __future__ import annotations

import json

import pytest

from lms.errors import (
    ModelNotFoundError,
    RemoteRejectedError,
    RemoteUnavailableError,
    ServerBusyError,
    UpstreamError,
)
from lms.remote.listing import parse_models
from lms.remote.upstream import FAILURES_TO_REMOVE, Pool, Replica, sanitise, status_error
from lms.remoteconfig import RemoteSpec


@pytest.mark.parametrize(
    "message",
    [
        "connect to http://10.1.2.3:8080/v1 failed",
        "upstream 10.1.2.3:9000 refused",
        "host gpu-box.internal:8000 down",
        "cannot open /srv/models/secret/model.gguf",
        "address [fe80::1]:8080 gone",
    ],
)
def test_sanitise_removes_addresses_urls_and_paths(message: str) -> None:
    shown = sanitise(message)
    for leak in ("10.1.2.3", "gpu-box.internal", "/srv/models", "fe80::1", "8080"):
        assert leak not in shown


def test_sanitise_drops_tracebacks_secrets_and_controls() -> None:
    assert "File" not in sanitise('Traceback (most recent call last):\n  File "/x.py"')
    assert "sk-abc" not in sanitise("key sk-abc123 refused", secrets=("sk-abc123",))
    assert "\n" not in sanitise("two\nlines") and len(sanitise("x" * 5000)) <= 500
    assert sanitise("context length exceeded: 5000 > 4096") == (
        "context length exceeded: 5000 > 4096"
    )


def test_status_errors_map_to_the_clients_terms() -> None:
    body = b'{"error": {"message": "bad thing at http://10.0.0.1:1/x"}}'
    assert isinstance(status_error(400, body, "k", ()), RemoteRejectedError)
    assert isinstance(status_error(404, body, "k", ()), ModelNotFoundError)
    assert isinstance(status_error(429, body, "k", ()), ServerBusyError)
    auth = status_error(401, body, "k", ())
    assert isinstance(auth, UpstreamError) and "credential" in auth.message
    assert isinstance(status_error(302, b"", "k", ()), UpstreamError)
    assert "10.0.0.1" not in status_error(500, body, "k", ()).message


def test_the_pool_picks_the_least_busy_healthy_replica() -> None:
    a, b, c = Replica("a", in_flight=3), Replica("b", in_flight=1), Replica("c", in_flight=0)
    pool = Pool([a, b, c], max_concurrent=4)
    assert pool.pick(set()) is c
    c.healthy = False
    assert pool.pick(set()) is b
    assert pool.pick({b}) is a
    a.in_flight = 4
    with pytest.raises(ServerBusyError):
        pool.pick({b})
    with pytest.raises(RemoteUnavailableError):
        pool.pick({a, b, c})


def test_ties_go_round_and_an_all_down_pool_is_tried_anyway() -> None:
    a, b = Replica("a"), Replica("b")
    pool = Pool([a, b], max_concurrent=8)
    assert {pool.pick(set()).url for _ in range(2)} == {"a", "b"}
    a.healthy = b.healthy = False
    assert pool.pick(set()) in (a, b)


def test_passive_checks_take_a_replica_out() -> None:
    flaky, dead = Replica("flaky"), Replica("dead")
    for _ in range(FAILURES_TO_REMOVE - 1):
        flaky.failed("answered HTTP 500", at_once=False)
    assert flaky.healthy
    flaky.succeeded()
    flaky.failed("answered HTTP 500", at_once=False)
    assert flaky.healthy  # failures count in a row
    dead.failed("cannot connect", at_once=True)
    assert not dead.healthy and dead.error == "cannot connect"


def test_model_lists_become_keys_under_the_remote_name() -> None:
    spec = RemoteSpec(name="gpu", urls=("http://h:1",), models=("qwen*", "Meta/*"))
    raw = json.dumps(
        {
            "data": [
                {"id": "Qwen-7B", "max_model_len": 32768},
                {"id": "qwen-7b"},  # equal but for case: the first one wins
                {"id": "Meta/Llama-3", "meta": {"n_ctx_train": 8192}, "owned_by": "vllm"},
                {"id": "other"},  # not allowed by the globs
                {"id": "bad id"},
                {"id": "x" * 300},
                {"no": "id"},
                "not an object",
            ]
        }
    ).encode()
    models = parse_models(raw, spec, backend=None)  # type: ignore[arg-type]
    assert sorted(m.key for m in models.values()) == ["gpu/Meta/Llama-3", "gpu/Qwen-7B"]
    assert models["gpu/qwen-7b"].context_length == 32768
    assert models["gpu/meta/llama-3"].model.owned_by == "vllm"
    assert models["gpu/meta/llama-3"].context_length == 8192
    for broken in (b"not json", b'{"data": 1}', b"[]"):
        with pytest.raises(ValueError):
            parse_models(broken, spec, backend=None)  # type: ignore[arg-type]


def test_the_cheap_path_renames_plain_chunks_and_leaves_the_rest_to_the_full_one() -> None:
    from lms.api.openai.remote import _Rename

    rename = _Rename('we"ird/id', 'gpu/we"ird/id')
    chunk = b'{"id":"x","model": "we\\"ird/id","choices":[{"delta":{"content":"\\"model\\""}}]}'
    renamed = rename.plain(chunk)
    assert renamed is not None and json.loads(renamed)["model"] == 'gpu/we"ird/id'
    assert json.loads(renamed)["choices"] == json.loads(chunk)["choices"]
    for other in (
        b'{"model":"we\\"ird/id","usage":{"prompt_tokens":1}}',
        b'{"model":"we\\"ird/id","error":{"message":"x"}}',
        b'{"model":"we\\"ird/id","x":"a\rb"}',
        b'{"model":"another"}',
        b"[1]",
    ):
        assert rename.plain(other) is None
