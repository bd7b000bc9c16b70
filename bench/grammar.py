"""What a JSON grammar costs per token on the default model (gemma-3-270m, 262k vocabulary).

Rounds alternate between the modes so that the machine's drift hits all alike. Each mode
reports medians over its rounds: tokens/s (decode + sampling, prompt excluded) with its ratio to
the same sampling without a grammar, and the time the engine spends choosing each token
(``Engine._sample``: logits to token, grammar included), which a busy machine disturbs less.
"grammar masked every token" sends the whole vocabulary through the grammar for every token —
the cost of a grammar placed first in llama.cpp's sampler chain, i.e. without the engine's fast
path (unconstrained pick first, then a shortlist).

    .venv/bin/python bench/grammar.py [--rounds 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from lms.inference import defaultmodel
from lms.inference.engine import Engine, LoadOptions
from lms.inference.sampling import SamplingParams
from lms.inference.structured import any_json_object_grammar

PROMPT = (
    "<start_of_turn>user\nDescribe the city of Paris as a JSON object with many fields."
    "<end_of_turn>\n<start_of_turn>model\n"
)
_sample = Engine._sample
spent: list[float] = []


def timed_sample(self: Engine, seq: Any, index: int) -> int:
    start = time.perf_counter()
    token = _sample(self, seq, index)
    spent.append(time.perf_counter() - start)
    return token


def never(*args: Any) -> bool:
    return False


async def run(engine: Engine, params: SamplingParams) -> tuple[float, float]:
    """tokens/s and milliseconds spent choosing each token."""
    spent.clear()
    generation = engine.submit(engine.tokenize(PROMPT), params)
    await generation.text()
    assert generation.result is not None
    return generation.result.tokens_per_second, 1000 * sum(spent) / max(len(spent), 1)


def with_grammar(params: SamplingParams, grammar: str) -> SamplingParams:
    return SamplingParams(**{**vars(params), "grammar": grammar})


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    models = Path(tempfile.gettempdir()) / "lms-bench-models"
    defaultmodel.ensure_default_model(models)
    engine = Engine.load(defaultmodel.default_model_path(models), LoadOptions(context_length=1024))
    grammar = any_json_object_grammar()
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    sampled = SamplingParams(temperature=0.8, seed=7, max_tokens=args.max_tokens)
    modes: dict[str, tuple[SamplingParams, bool]] = {
        "greedy": (greedy, False),
        "greedy + JSON grammar": (with_grammar(greedy, grammar), False),
        "greedy + grammar masked every token": (with_grammar(greedy, grammar), True),
        "t=0.8": (sampled, False),
        "t=0.8 + JSON grammar": (with_grammar(sampled, grammar), False),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    try:
        with mock.patch.object(Engine, "_sample", timed_sample):
            await run(engine, greedy)  # warm-up
            for _ in range(args.rounds):
                for name, (params, every_token) in modes.items():
                    with contextlib.ExitStack() as patches:
                        if every_token:
                            patches.enter_context(
                                mock.patch.object(Engine, "_grammar_allows", never)
                            )
                            patches.enter_context(
                                mock.patch.object(Engine, "_shortlist_decides", staticmethod(never))
                            )
                        results[name].append(await run(engine, params))
    finally:
        await asyncio.to_thread(engine.close)
    rate = {name: statistics.median(r for r, _ in values) for name, values in results.items()}
    print(f"{'mode':38s} {'tokens/s':>9s} {'vs none':>8s} {'choosing ms/token':>18s}")
    for name, values in results.items():
        base = rate["greedy" if name.startswith("greedy") else "t=0.8"]
        choosing = statistics.median(ms for _, ms in values)
        print(f"{name:38s} {rate[name]:9.1f} {rate[name] / base:7.2f}x {choosing:18.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
