"""Embedding throughput of lms's embedder against llama-cpp-python's ``Llama.embed``.

Both embed the same sentences (about 17 tokens each) with the default model, mean pooling, in
alternating rounds so that the machine's drift hits both alike. lms is measured twice: one
request holding every input (batched), and one request per input, all sent at once (the worker
merges what queues up). Figures are inputs per second, the median over rounds.

    .venv/bin/python bench/embeddings.py [--rounds 3] [--inputs 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path


def sentences(n: int) -> list[str]:
    return [
        f"Sentence number {i} is about a topic of some interest, with a few more words."
        for i in range(n)
    ]


async def lms_round(embedder: object, texts: list[str]) -> tuple[float, float]:
    from lms.inference.embedder import Embedder

    assert isinstance(embedder, Embedder)
    start = time.perf_counter()
    await embedder.embed(texts)
    batched = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    await asyncio.gather(*(embedder.embed([t]) for t in texts))
    concurrent = len(texts) / (time.perf_counter() - start)
    return batched, concurrent


def direct_round(llm: object, texts: list[str]) -> float:
    start = time.perf_counter()
    llm.embed(texts)  # type: ignore[attr-defined]
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=64)
    args = parser.parse_args()

    import llama_cpp

    from lms.inference import defaultmodel
    from lms.inference.embedder import Embedder
    from lms.inference.engine import LoadOptions

    models = Path(os.environ.get("LMS_TEST_MODELS_DIR") or tempfile.mkdtemp(prefix="lms-bench"))
    defaultmodel.ensure_default_model(models)
    path = defaultmodel.default_model_path(models)
    texts = sentences(args.inputs)
    embedder = Embedder.load(path, LoadOptions(context_length=2048))
    direct = llama_cpp.Llama(
        str(path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_seq_max=32,
        verbose=False,
    )
    lms_batched: list[float] = []
    lms_concurrent: list[float] = []
    llama_embed: list[float] = []
    try:
        for _ in range(args.rounds):
            batched, concurrent = asyncio.run(lms_round(embedder, texts))
            lms_batched.append(batched)
            lms_concurrent.append(concurrent)
            llama_embed.append(direct_round(direct, texts))
    finally:
        embedder.close()
        direct.close()
    load = os.getloadavg()[0]
    print(f"{args.inputs} inputs x {args.rounds} rounds, {os.cpu_count()} cpus, load {load:.1f}")
    print(f"lms, one request:        {statistics.median(lms_batched):7.1f} inputs/s")
    print(f"lms, concurrent singles: {statistics.median(lms_concurrent):7.1f} inputs/s")
    print(f"llama_cpp Llama.embed:   {statistics.median(llama_embed):7.1f} inputs/s")


if __name__ == "__main__":
    main()
