"""Speculative decoding's request fields and reported stats on every family (docs/API.md):
``speculative`` everywhere, ``draft_model`` on the OpenAI-compatible and native routes, the SDK's
``speculativeDecoding`` keys, and the draft token counts of the native and SDK answers.

Plumbing only: fake engines record the sampling parameters that reach them and hand back the
``DraftStats`` a test scripts. What the engine does with them is tested where the engine is.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import FakeLoader, Reply
from lmstudio._kv_config import parse_prediction_config, prediction_config_to_kv_config_stack
from lmstudio._sdk_models import LlmPredictionStats

from lms.inference.generation import DraftStats
from lms.inference.sampling import SamplingParams

from .sdkwire import Client, channel_frames, connect, predict_request

MODEL = "google/gemma-3-270m"
ASK = [{"role": "user", "content": "hi"}]
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": ASK, "max_tokens": 2},
    "/v1/completions": {"prompt": "hi", "max_tokens": 2},
    "/v1/responses": {"input": "hi", "max_output_tokens": 2},
    "/v1/messages": {"messages": ASK, "max_tokens": 2},
    "/api/v1/chat": {"input": "hi", "max_output_tokens": 2},
}
EVERY_ROUTE = list(BODIES)
DRAFT_ROUTES = [path for path in BODIES if path != "/v1/messages"]
STATS = DraftStats(model="someone/draft", total=9, accepted=5, rejected=2, ignored=2)
NATIVE_DRAFT_FIELDS = {
    "draft_model",
    "total_draft_tokens_count",
    "accepted_draft_tokens_count",
    "rejected_draft_tokens_count",
    "ignored_draft_tokens_count",
}


async def post(client: Client, path: str, **fields: Any) -> tuple[int, Any]:
    response = await client.post(path, json={"model": MODEL, **BODIES[path], **fields})
    return response.status, await response.json()


def asked(fake_model: FakeLoader) -> SamplingParams:
    """The sampling parameters of the one request the fake engines played."""
    assert len(fake_model.script.params) == 1, fake_model.script.params
    return fake_model.script.params[0]


def assert_refused(path: str, status: int, body: Any, field: str) -> None:
    """A 400 naming ``field``: as ``param`` in the OpenAI-shaped envelope, in the message in
    Anthropic's (which has no ``param``)."""
    assert status == 400, body
    if path == "/v1/messages":
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["param"] == field, body
    assert f"'{field}'" in body["error"]["message"], body


# --- request fields ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EVERY_ROUTE)
async def test_speculative_is_on_unless_the_request_says_false(
    client: Client, fake_model: FakeLoader, path: str
) -> None:
    status, body = await post(client, path)
    assert status == 200, body
    assert asked(fake_model).speculative is True
    fake_model.script.params.clear()
    status, body = await post(client, path, speculative=False)
    assert status == 200, body
    params = asked(fake_model)
    assert params.speculative is False and params.draft_model is None


@pytest.mark.parametrize("value", ["false", 0, 1, [], {}])
@pytest.mark.parametrize("path", EVERY_ROUTE)
async def test_speculative_must_be_a_boolean(
    client: Client, fake_model: FakeLoader, path: str, value: Any
) -> None:
    status, body = await post(client, path, speculative=value)
    assert_refused(path, status, body, "speculative")
    assert fake_model.script.params == []


@pytest.mark.parametrize("path", DRAFT_ROUTES)
async def test_draft_model_reaches_the_engine(
    client: Client, fake_model: FakeLoader, path: str
) -> None:
    # Resolved like a model to load (here the model is its own draft): the engine gets the key.
    status, body = await post(client, path, draft_model="gemma-3-270m")
    assert status == 200, body
    params = asked(fake_model)
    assert params.draft_model == MODEL and params.speculative is True


@pytest.mark.parametrize(
    "value",
    [5, True, ["a/b"], {"key": "a/b"}, "", "x" * 129, "a\nb", " a/b", "a/b ", "a\u200bb"],
)
@pytest.mark.parametrize("path", DRAFT_ROUTES)
async def test_a_bad_draft_model_is_refused(
    client: Client, fake_model: FakeLoader, path: str, value: Any
) -> None:
    status, body = await post(client, path, draft_model=value)
    assert_refused(path, status, body, "draft_model")
    assert fake_model.script.params == []


@pytest.mark.parametrize("path", DRAFT_ROUTES)
async def test_draft_model_with_speculative_false_is_a_contradiction(
    client: Client, fake_model: FakeLoader, path: str
) -> None:
    status, body = await post(client, path, draft_model="someone/draft", speculative=False)
    assert_refused(path, status, body, "draft_model")
    assert "'speculative' is false" in body["error"]["message"]
    assert fake_model.script.params == []


async def test_the_longest_draft_model_key_is_accepted(
    client: Client, fake_model: FakeLoader
) -> None:
    # Within the bounds, so it is looked up: not a 400, a 404 naming the field.
    status, body = await post(client, "/v1/completions", draft_model="k" * 128)
    assert status == 404, body
    assert (body["error"]["code"], body["error"]["param"]) == ("model_not_found", "draft_model")
    assert fake_model.script.params == []


async def test_anthropic_messages_take_no_draft_model(
    client: Client, fake_model: FakeLoader
) -> None:
    # Not a field of /v1/messages: ignored like any field the route does not know.
    status, body = await post(client, "/v1/messages", draft_model="someone/draft")
    assert status == 200, body
    assert asked(fake_model).draft_model is None


# --- reported stats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draft", "expected"),
    [
        (
            STATS,
            {
                "draft_model": "someone/draft",
                "total_draft_tokens_count": 9,
                "accepted_draft_tokens_count": 5,
                "rejected_draft_tokens_count": 2,
                "ignored_draft_tokens_count": 2,
            },
        ),
        (
            DraftStats(model=None, total=4, accepted=4),
            {
                "total_draft_tokens_count": 4,
                "accepted_draft_tokens_count": 4,
                "rejected_draft_tokens_count": 0,
                "ignored_draft_tokens_count": 0,
            },
        ),
        (None, {}),
    ],
)
async def test_native_stats_carry_the_draft_counts_when_speculation_was_on(
    client: Client, fake_model: FakeLoader, draft: DraftStats | None, expected: dict[str, Any]
) -> None:
    fake_model.say(Reply(("Hi", " there"), draft=draft), Reply(("Hi",), draft=draft))
    status, body = await post(client, "/api/v1/chat")
    assert status == 200, body
    stats = body["stats"]
    assert {k: v for k, v in stats.items() if k in NATIVE_DRAFT_FIELDS} == expected
    assert stats["total_output_tokens"] == 2  # the other stats as ever
    response = await client.post(
        "/api/v1/chat", json={"model": MODEL, **BODIES["/api/v1/chat"], "stream": True}
    )
    text = await response.text()
    end = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")][-1]
    assert end["type"] == "chat.end", text
    streamed = end["result"]["stats"]
    assert {k: v for k, v in streamed.items() if k in NATIVE_DRAFT_FIELDS} == expected


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_and_anthropic_answers_have_no_draft_fields(
    client: Client, fake_model: FakeLoader, path: str, stream: bool
) -> None:
    fake_model.script.default = Reply(("Hi", " there"), draft=STATS)
    for route in (path, "/v1/messages"):
        response = await client.post(
            route, json={"model": MODEL, **BODIES[route], "stream": stream}
        )
        text = await response.text()
        assert response.status == 200, text
        for name in ("draft_model", "draft_tokens_count", "DraftTokensCount", "DraftModel"):
            assert name not in text, text


# --- the SDK ------------------------------------------------------------------------------------


def sdk_predict(fields: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``predict`` of 2 tokens whose prediction stack also holds ``fields``."""
    request = predict_request(1, "hi", 2)
    stack = request["creationParameter"]["predictionConfigStack"]
    stack["layers"].append({"layerName": "instance", "config": {"fields": fields}})
    return request


async def sdk_run(client: Client, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The last message of the ``predict`` channel: the ``success`` or the ``channelError``."""
    ws = await connect(client)
    await ws.send_json(sdk_predict(fields))
    frames = [f async for f in channel_frames(ws, 1)]
    await ws.close()
    last = frames[-1]
    return last if last["type"] == "channelError" else frames[-2]["message"]


def sdk_fields(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The KV fields the real lmstudio SDK sends for a prediction ``config``."""
    _, stack = prediction_config_to_kv_config_stack(None, config)  # type: ignore[arg-type]
    fields: list[dict[str, Any]] = stack.to_dict()["layers"][0]["config"]["fields"]
    return fields


async def test_sdk_draft_model_and_draft_tokens_reach_the_engine_and_are_echoed(
    client: Client, fake_model: FakeLoader
) -> None:
    config = {"draftModel": "gemma-3-270m", "speculativeDecodingNumDraftTokensExact": 3}
    success = await sdk_run(client, sdk_fields(config))
    assert success["type"] == "success", success
    params = asked(fake_model)
    assert (params.speculative, params.draft_model, params.draft_tokens) == (True, MODEL, 3)
    echoed = parse_prediction_config(success["predictionConfig"])  # as the SDK reads it
    assert echoed.draft_model == "gemma-3-270m"
    assert echoed.speculative_decoding_num_draft_tokens_exact == 3


async def test_sdk_defaults_leave_speculation_to_the_engine(
    client: Client, fake_model: FakeLoader
) -> None:
    success = await sdk_run(client, sdk_fields({"draftModel": ""}))  # the SDK's "no draft"
    assert success["type"] == "success", success
    params = asked(fake_model)
    assert (params.speculative, params.draft_model, params.draft_tokens) == (True, None, None)
    echoed = parse_prediction_config(success["predictionConfig"])
    assert echoed.draft_model is None
    assert echoed.speculative_decoding_num_draft_tokens_exact is None


async def test_sdk_zero_draft_tokens_turns_speculation_off(
    client: Client, fake_model: FakeLoader
) -> None:
    # The SDK's own schema stops at 1; a raw stack (or another client) may send 0.
    key = "llm.prediction.speculativeDecoding.numDraftTokensExact"
    success = await sdk_run(client, [{"key": key, "value": 0}])
    assert success["type"] == "success", success
    params = asked(fake_model)
    assert (params.speculative, params.draft_tokens) == (False, None)
    # The echo stays readable by the SDK, which refuses 0: speculation off echoes no key.
    echoed = parse_prediction_config(success["predictionConfig"])
    assert echoed.speculative_decoding_num_draft_tokens_exact is None


DRAFT_MODEL_KEY = "llm.prediction.speculativeDecoding.draftModel"
DRAFT_TOKENS_KEY = "llm.prediction.speculativeDecoding.numDraftTokensExact"


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        *(
            ([{"key": DRAFT_TOKENS_KEY, "value": value}], DRAFT_TOKENS_KEY)
            for value in (-1, 17, 2.5, True, "3", {"checked": True, "value": 3})
        ),
        *(
            ([{"key": DRAFT_MODEL_KEY, "value": value}], DRAFT_MODEL_KEY)
            for value in (5, False, ["a"], "x" * 129, "a\nb")
        ),
        (
            [
                {"key": DRAFT_MODEL_KEY, "value": "someone/draft"},
                {"key": DRAFT_TOKENS_KEY, "value": 0},
            ],
            DRAFT_TOKENS_KEY,
        ),
    ],
)
async def test_sdk_bad_speculative_settings_are_refused_naming_the_key(
    client: Client, fake_model: FakeLoader, fields: list[dict[str, Any]], key: str
) -> None:
    refused = await sdk_run(client, fields)
    assert refused["type"] == "channelError", refused
    data = refused["error"]["errorData"]
    assert data["code"] == "invalid_parameter" and data["param"] == key, refused
    assert key in refused["error"]["title"] + refused["error"].get("cause", ""), refused
    assert fake_model.script.params == []


@pytest.mark.parametrize("draft", [STATS, DraftStats(model=None, total=3, rejected=1, ignored=2)])
async def test_sdk_stats_carry_the_draft_counts(
    client: Client, fake_model: FakeLoader, draft: DraftStats
) -> None:
    fake_model.say(Reply(("Hi", " there"), draft=draft))
    success = await sdk_run(client, [])
    assert success["type"] == "success", success
    stats = LlmPredictionStats._from_api_dict(success["stats"])  # as the SDK reads them
    assert stats.used_draft_model_key == draft.model
    assert ("usedDraftModelKey" in success["stats"]) is (draft.model is not None)
    assert (
        stats.total_draft_tokens_count,
        stats.accepted_draft_tokens_count,
        stats.rejected_draft_tokens_count,
        stats.ignored_draft_tokens_count,
    ) == (draft.total, draft.accepted, draft.rejected, draft.ignored)


async def test_sdk_stats_have_no_draft_counts_when_speculation_was_off(
    client: Client, fake_model: FakeLoader
) -> None:
    fake_model.say(Reply(("Hi", " there")))
    success = await sdk_run(client, [])
    assert success["type"] == "success", success
    assert not [k for k in success["stats"] if "raft" in k], success["stats"]
    assert success["stats"]["predictedTokensCount"] == 2
