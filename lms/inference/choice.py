"""Choosing each token from llama.cpp's logits: sampler chains and grammar-constrained picks.

The engine decodes; this module decides. Greedy requests take the argmax of the logits row
directly (no chain, no copy of the vocabulary); others get a llama.cpp sampler chain built from
their :class:`SamplingParams`. A request with a grammar keeps its grammar sampler out of the
chain and consults it only when the unconstrained pick is not allowed (:meth:`Chooser.pick`).
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp import llama_grammar

from lms.errors import InternalError, InvalidRequestError
from lms.inference.sampling import SamplingParams

__all__ = ["Chooser", "is_valid_grammar", "json_schema_grammar"]

# llama_token_data as a numpy record, to hand the whole vocabulary to llama.cpp samplers.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
_SHORTLIST = 1024  # tokens a grammar masks first when it rejects the unconstrained pick

Logits = np.ndarray[Any, np.dtype[np.float32]]


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF (root rule ``root``) for JSON text valid against ``schema``, by llama.cpp's own
    converter. Raises ValueError when the converter cannot handle the schema. It never fetches a
    remote ``$ref`` (it asserts; callers refuse those first, so ``python -O`` changes nothing).
    """
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter fails with asserts, KeyErrors, re.errors...
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def is_valid_grammar(grammar: str) -> bool:
    """Whether llama.cpp parses ``grammar`` as GBNF with a ``root`` rule (no vocabulary needed:
    only token references like ``<hello>`` do, and callers leave those to :class:`Chooser`).
    Bound the grammar first (:mod:`grammar_limits`): the parser recurses on nesting."""
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


class Chooser:
    """Token choice for one model's vocabulary; owned by the engine's worker thread."""

    def __init__(self, vocab: Any, n_vocab: int) -> None:
        self._vocab = vocab
        self.n_vocab = n_vocab
        self._candidates = np.zeros(0, dtype=_TOKEN_DATA)  # allocated by the first grammar

    def grammar_sampler(self, grammar: str) -> Any:
        """A llama.cpp grammar sampler (free it with ``llama_sampler_free``); raises
        InvalidRequestError for text that is not GBNF with a ``root`` rule."""
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._vocab, grammar.encode("utf-8"), b"root"
        )
        if not sampler:  # llama.cpp printed why to stderr; it returns NULL on any parse error
            raise InvalidRequestError(
                "the output grammar is not valid GBNF with a 'root' rule", param="grammar"
            )
        return sampler

    def check_grammar(self, grammar: str) -> None:
        """Refuse a bad grammar now (a 400), not in the middle of a stream."""
        llama_cpp.llama_sampler_free(self.grammar_sampler(grammar))

    def chain(self, params: SamplingParams) -> internals.LlamaSampler | None:
        """The sampler chain of ``params``; None for greedy requests (the argmax will do)."""
        if params.is_greedy:
            return None
        sampler = internals.LlamaSampler()
        if (params.repeat_penalty, params.frequency_penalty, params.presence_penalty) != (
            1.0,
            0.0,
            0.0,
        ):
            sampler.add_penalties(
                self.n_vocab,
                64,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        if params.temperature <= 0:
            sampler.add_greedy()
            return sampler
        if params.top_k > 0:
            sampler.add_top_k(params.top_k)
        if params.top_p < 1.0:
            sampler.add_top_p(params.top_p, 1)
        if params.min_p > 0.0:
            sampler.add_min_p(params.min_p, 1)
        sampler.add_temp(params.temperature)
        seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        sampler.add_dist(seed & 0xFFFFFFFF)
        return sampler

    def pick(
        self,
        logits: Logits,
        params: SamplingParams,
        sampler: internals.LlamaSampler | None,
        grammar: Any,
    ) -> int:
        """Sample as if the grammar came first in the chain, without paying for it every token.

        Masking all 262k tokens of gemma with a grammar costs more than the forward pass, so (as
        llama.cpp's server does) the token is first picked from the unconstrained logits. Only
        when the grammar rejects it are the most likely tokens masked and the pick redone, and
        only when that shortlist cannot decide is the whole vocabulary masked. Greedy decoding
        gives exactly the argmax of the allowed tokens either way. The chosen token is accepted
        by the grammar and the chain.
        """
        token = self._choose(params, sampler, grammar, None, logits, masked=False)
        if token is None or not self._allows(grammar, token):
            n = min(_SHORTLIST, self.n_vocab)
            shortlist = np.argpartition(logits, -n)[-n:]
            token = self._choose(
                params, sampler, grammar, shortlist, logits[shortlist], masked=True
            )
        if token is None:
            token = self._choose(params, sampler, grammar, None, logits, masked=True)
        if token is None:
            raise InternalError("the output grammar allows no further token")
        llama_cpp.llama_sampler_accept(grammar, token)
        if sampler is not None:
            llama_cpp.llama_sampler_accept(sampler.sampler, token)
        return token

    def _choose(
        self,
        params: SamplingParams,
        sampler: internals.LlamaSampler | None,
        grammar: Any,
        ids: np.ndarray[Any, Any] | None,
        logits: Logits,
        *,
        masked: bool,
    ) -> int | None:
        """The chain's choice among ``ids`` (all tokens when None), without accepting it; with
        ``masked``, among those the grammar allows — None when that choice is not certain."""
        if sampler is None and not masked:
            return int(logits.argmax())
        if len(self._candidates) != self.n_vocab:
            self._candidates = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        candidates = self._candidates[: len(logits)]
        candidates["id"] = np.arange(len(logits), dtype=np.int32) if ids is None else ids
        candidates["logit"] = logits
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        if masked:
            llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
            allowed = candidates["logit"][np.isfinite(candidates["logit"])]
            if not allowed.size:
                return None
            if ids is not None and not _shortlist_decides(
                params, sampler is None, allowed, float(logits.min())
            ):
                return None
        if sampler is None:
            return int(candidates["id"][candidates["logit"].argmax()])
        llama_cpp.llama_sampler_apply(sampler.sampler, ctypes.byref(array))
        return int(array.data[array.selected].id)

    @staticmethod
    def _allows(grammar: Any, token: int) -> bool:
        one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        array = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(one[0].logit))


def _shortlist_decides(
    params: SamplingParams, greedy: bool, allowed: np.ndarray[Any, Any], floor: float
) -> bool:
    """Whether the best grammar-allowed tokens of the shortlist settle the chain's choice.

    Every token outside the shortlist has a logit <= ``floor``, below every shortlisted one.
    """
    if greedy:
        return True  # the best allowed token is in the shortlist
    if (params.repeat_penalty, params.presence_penalty, params.frequency_penalty) != (
        1.0,
        0.0,
        0.0,
    ):
        return False  # penalties move logits across the floor
    if 0 < params.top_k <= allowed.size:
        return True  # top-k keeps shortlisted tokens only
    # min-p drops everything below max + log(min_p): the rest of the vocabulary included?
    return params.min_p > 0.0 and floor < float(allowed.max()) + math.log(params.min_p)
