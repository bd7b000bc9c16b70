"""Grammar-constrained sampling in the engine, on the real default model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from lms.errors import InvalidRequestError
from lms.inference import choice
from lms.inference.choice import Chooser
from lms.inference.engine import Engine, LoadOptions
from lms.inference.generation import cache_scope
from lms.inference.sampling import SamplingParams
from lms.inference.structured import schema_grammar

pytestmark = pytest.mark.model

PROMPT = "<start_of_turn>user\nDescribe a city as JSON.<end_of_turn>\n<start_of_turn>model\n"
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "population": {"type": "integer"},
        "coastal": {"type": "boolean"},
        "districts": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "population", "coastal", "districts"],
}
GRAMMAR = schema_grammar(CITY, param="schema")
SMALL = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "big": {"type": "boolean"}},
    "required": ["name", "big"],
}


@pytest.fixture(scope="module")
def engine(default_model_path: Path) -> Iterator[Engine]:
    loaded = Engine.load(default_model_path, LoadOptions(context_length=512))
    yield loaded
    loaded.close()


async def generate(engine: Engine, grammar: str = GRAMMAR, **params: object) -> tuple[str, str]:
    generation = engine.submit(
        engine.tokenize(PROMPT),
        SamplingParams(max_tokens=200, grammar=grammar, **params),  # type: ignore[arg-type]
    )
    text = await generation.text()
    assert generation.result is not None
    return text, generation.result.finish_reason


async def test_a_bad_grammar_is_a_400_and_the_engine_keeps_serving(engine: Engine) -> None:
    for grammar in ("root ::= undefined-rule", "not gbnf at all", 'start ::= "x"'):
        with pytest.raises(InvalidRequestError) as info:
            engine.submit(engine.tokenize(PROMPT), SamplingParams(grammar=grammar))
        assert info.value.param == "grammar" and info.value.status == 400
    text, reason = await generate(engine, temperature=0.0)
    assert reason == "stop"
    jsonschema.validate(json.loads(text), CITY)


async def test_greedy_obeys_the_grammar(engine: Engine) -> None:
    generation = engine.submit(
        engine.tokenize("The sky is"),
        SamplingParams(temperature=0.0, grammar='root ::= " " ("green" | "purple") "!"'),
    )
    assert await generation.text() in (" green!", " purple!")
    assert generation.result is not None and generation.result.finish_reason == "stop"


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.7, "seed": 1},
        {"temperature": 1.3, "seed": 2},
        {"temperature": 1.0, "seed": 3, "top_k": 0, "min_p": 0.0},  # masks the whole vocabulary
        {"temperature": 0.0, "repeat_penalty": 1.3},  # greedy through a chain
        {"temperature": 0.9, "seed": 4, "presence_penalty": 0.5},
    ],
)
async def test_sampled_output_obeys_the_grammar(engine: Engine, params: dict[str, object]) -> None:
    text, reason = await generate(engine, **params)
    assert reason == "stop", text
    jsonschema.validate(json.loads(text), CITY)


async def test_the_fast_path_changes_nothing_for_greedy(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Greedy with a grammar must be the argmax of the allowed tokens, whichever way it is found:
    # the unconstrained pick when allowed, the shortlist, or the whole vocabulary masked.
    # Each run in a cache scope of its own: all three prefill the prompt from scratch.
    grammar = schema_grammar(SMALL, param="schema")
    cache_scope.set("fast")
    fast, _ = await generate(engine, grammar, temperature=0.0)
    monkeypatch.setattr(Chooser, "_allows", staticmethod(lambda grammar, token: False))
    cache_scope.set("shortlist")
    shortlist, _ = await generate(engine, grammar, temperature=0.0)
    monkeypatch.setattr(choice, "_shortlist_decides", lambda *args: False)
    cache_scope.set("full")
    full, _ = await generate(engine, grammar, temperature=0.0)
    assert fast == shortlist == full
    jsonschema.validate(json.loads(fast), SMALL)
