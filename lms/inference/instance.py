"""A loaded instance: a model under an identifier, with the engine or embedder serving it.

An **llm** instance holds an :class:`Engine` (chat, completions); an **embedding** instance an
:class:`Embedder`. :mod:`lms.inference.manager` owns them and says how they are named.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lms.errors import InvalidRequestError
from lms.inference.catalog import ModelFile
from lms.inference.embedder import Embedder
from lms.inference.engine import Engine, Generation, GenerationResult
from lms.inference.templates import ChatFormatter
from lms.inference.tools import Tool, template_inputs
from lms.logstream import LogHub
from lms.protocol import InstanceEntry

InstanceType = Literal["llm", "embedding"]
#: The identifier suffix of an embedding instance of an llm model.
EMBEDDING_SUFFIX = ":embedding"


@dataclass
class Instance:
    """A model loaded under an identifier, with the engine (llm) or embedder that serves it."""

    identifier: str
    model: ModelFile
    backend: Engine | Embedder
    formatter: ChatFormatter
    ttl: int | None
    jit: bool
    load_time: float
    loaded_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    #: The default draft model's key (``lms load --draft-model``): requests with speculation on
    #: and no ``draft_model`` of their own use it (:mod:`lms.inference.drafts`).
    draft_model: str | None = None
    #: Attached draft models' file sizes by key (they count towards :meth:`entry`'s size).
    draft_sizes: dict[str, int] = field(default_factory=dict)
    #: Held while a draft model is being attached: one attach at a time per instance.
    draft_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    def touch(self) -> None:
        self.last_used_at = time.time()

    @property
    def type(self) -> InstanceType:
        return "embedding" if isinstance(self.backend, Embedder) else "llm"

    @property
    def engine(self) -> Engine:
        """The generation engine; InvalidRequestError (400) on an embedding instance."""
        if isinstance(self.backend, Embedder):
            raise InvalidRequestError(
                f'"{self.identifier}" is loaded in embedding mode: it serves /v1/embeddings only',
                param="model",
            )
        return self.backend

    @property
    def embedder(self) -> Embedder:
        """The embedding engine; InvalidRequestError (400) on an llm instance."""
        if not isinstance(self.backend, Embedder):
            raise InvalidRequestError(
                f'"{self.identifier}" is not loaded in embedding mode', param="model"
            )
        return self.backend

    @property
    def context_length(self) -> int:
        """Tokens one request may use: a sequence's share of an llm context, or the
        embedding context."""
        backend = self.backend
        return backend.n_ctx if isinstance(backend, Embedder) else backend.n_ctx_per_seq

    def load_config(self) -> dict[str, Any]:
        """``config`` of this instance in ``GET /api/v1/models`` (docs/API.md, Native models): only
        ``context_length`` for an embedding instance."""
        backend = self.backend
        if isinstance(backend, Embedder):
            return {"context_length": backend.n_ctx}
        return {
            "context_length": backend.n_ctx_per_seq,
            "eval_batch_size": backend.options.batch_size,
            "parallel": backend.options.parallel,
            "flash_attention": backend.options.flash_attention,
            **({"draft_model": self.draft_model} if self.draft_model is not None else {}),
        }

    @property
    def is_busy(self) -> bool:
        return self.backend.active > 0 or self.backend.queued > 0

    @property
    def template_handles_tools(self) -> bool:
        """Whether the chat template takes ``tools`` and tool messages as they are (our own
        fallbacks and GGUF templates trained for tool use) rather than written into the text."""
        return self.formatter.kind != "gguf" or self.model.trained_for_tool_use

    def chat_text(self, messages: list[dict[str, Any]], tools: Sequence[Tool] = ()) -> str:
        """A chat rendered with the model's template, ready for the answer (no BOS).

        Tool calls and results in ``messages`` (OpenAI shape) and the offered ``tools`` reach
        the template as it can take them (see :func:`lms.inference.tools.template_inputs`).
        """
        prepared, offered = template_inputs(
            messages, tools, template_handles_tools=self.template_handles_tools
        )
        return self.formatter.render(prepared, add_generation_prompt=True, tools=offered)

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: Sequence[Tool] = ()
    ) -> tuple[list[int], tuple[str, ...]]:
        """Tokens of :meth:`chat_text`, and the template's stop strings."""
        text = self.chat_text(messages, tools)
        return self.engine.tokenize(text), tuple(self.formatter.stop_strings)

    def ttl_left(self, now: float | None = None) -> float | None:
        if not self.ttl:
            return None
        if self.is_busy:
            return float(self.ttl)
        return max(0.0, self.ttl - ((now or time.time()) - self.last_used_at))

    def entry(self) -> InstanceEntry:
        return {
            "identifier": self.identifier,
            "model_key": self.model.key,
            "type": self.type,
            "status": self.backend.status,
            "queued": self.backend.queued,
            "context_length": self.context_length,
            "parallel": None
            if isinstance(self.backend, Embedder)
            else self.backend.options.parallel,
            "ttl_seconds": self.ttl,
            "ttl_left_seconds": self.ttl_left(),
            "jit": self.jit,
            "loaded_at": self.loaded_at,
            "last_used_at": self.last_used_at,
            "load_time_seconds": round(self.load_time, 3),
            "size_bytes": self.model.size_bytes + sum(self.draft_sizes.values()),
            "draft_model": self.draft_model,
            "draft_models": list(self.draft_sizes),
        }


class PredictionLog:
    """Publishes each prediction's formatted input and its output (``lms log stream``)."""

    def __init__(self, hub: LogHub, instance: Instance) -> None:
        self.hub = hub
        self.instance = instance

    def __call__(self, generation: Generation) -> None:
        if not self.hub.wants("model"):
            return
        self.hub.publish(
            "model",
            {
                "type": "llm.prediction.input",
                "modelIdentifier": self.instance.identifier,
                "modelPath": str(self.instance.model.path),
                "input": self.instance.engine.detokenize(generation.prompt_tokens, special=True),
            },
        )
        generation.on_done = self.finished

    def finished(self, generation: Generation, result: GenerationResult) -> None:
        self.hub.publish(
            "model",
            {
                "type": "llm.prediction.output",
                "modelIdentifier": self.instance.identifier,
                "output": generation.output_text,
                "stats": {
                    "stopReason": result.finish_reason,
                    "promptTokensCount": result.prompt_tokens,
                    "predictedTokensCount": result.completion_tokens,
                    "tokensPerSecond": round(result.tokens_per_second, 2),
                    "timeToFirstTokenSec": round(result.time_to_first_token, 3),
                },
            },
        )
