"""A draft model: a second, smaller model whose greedy guesses the main model verifies.

LM Studio calls it a draft model (``draft_model``); llama.cpp's server takes one with ``-md``.
A :class:`Drafter` belongs to one engine and is used only by that engine's worker thread: it has
its own llama context with one sequence per engine slot, and remembers which tokens each
sequence's cells hold, so each step only decodes what the text gained since the last one
(the prompt once, then the tokens accepted since) before it guesses.

The guesses are greedy (each the draft model's most likely token): a guess is then one certain
token, and the engine's verification keeps the output distribution of the main model unchanged
(:meth:`lms.inference.engine.Engine._verify`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from lms.errors import InvalidParameterError, ModelLoadError
from lms.inference.generation import LoadOptions
from lms.inference.promptcache import common_prefix
from lms.inference.worker import context_params, load_model

__all__ = ["Drafter"]

#: Token ids whose text must be the same in both vocabularies (besides their sizes): a draft
#: model with another tokenizer guesses ids that mean other words.
_PROBE_TOKENS = 4096


class Drafter:
    """A loaded draft model for an engine with ``slots`` sequences of ``n_ctx_per_seq`` tokens.

    Build it with :meth:`load` (blocking); then only the engine's worker calls :meth:`guess`,
    :meth:`forget` and :meth:`close`.
    """

    def __init__(
        self,
        key: str,
        path: Path,
        model: internals.LlamaModel,
        ctx: internals.LlamaContext,
        *,
        slots: int,
        batch_size: int,
    ) -> None:
        self.key = key
        self.path = path
        self._model: Any = model
        self._ctx: Any = ctx
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        self.batch_size = batch_size
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, slots)
        self._cells: dict[int, list[int]] = {}  # tokens each sequence's cells hold

    @classmethod
    def load(
        cls,
        key: str,
        path: Path,
        options: LoadOptions,
        vocab: Any,
    ) -> Drafter:
        """Load ``path`` as a draft for a model loaded with ``options`` whose vocabulary is
        ``vocab`` (a llama_vocab_p): the same context shape, one sequence per slot. A file whose
        vocabulary differs is refused with a 400 naming ``draft_model``."""
        model = load_model(path)
        try:
            _check_vocabulary(model.vocab, vocab, key)
            try:
                ctx = internals.LlamaContext(
                    model=model, params=context_params(options), verbose=False
                )
            except ValueError as exc:
                raise ModelLoadError(
                    f"cannot create a context for the draft model {key} (out of memory?)"
                ) from exc
        except BaseException:
            model.close()
            raise
        return cls(key, path, model, ctx, slots=options.parallel, batch_size=options.batch_size)

    def guess(self, wanted: Sequence[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """For each ``(seq, tokens, k)``: the draft model's ``k`` greedy next tokens after
        ``tokens`` (the sequence's whole text so far), by ``seq``. Sequences are decoded
        together: one batch per step."""
        rows: dict[int, int] = {}  # seq -> batch index of its logits in the last decode
        # Bring each sequence's cells up to its text (the first time: the whole prompt).
        pending = []
        for seq, tokens, _ in wanted:
            held = self._cells.get(seq, [])
            keep = min(common_prefix(held, tokens), len(tokens) - 1)
            memory = self._ctx.memory
            if not llama_cpp.llama_memory_seq_rm(memory, seq, keep, -1):
                llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
                keep = 0
            self._cells[seq] = tokens[:keep]
            pending.append((seq, tokens, keep))
        while pending:
            self._batch.n_tokens = 0
            later = []
            for seq, tokens, start in pending:
                room = self.batch_size - self._batch.n_tokens
                if room <= 0:
                    later.append((seq, tokens, start))
                    continue
                end = min(len(tokens), start + room)
                for pos in range(start, end):
                    index = self._add(tokens[pos], pos, seq, logits=pos == len(tokens) - 1)
                self._cells[seq] = tokens[:end]
                if end < len(tokens):
                    later.append((seq, tokens, end))
                else:
                    rows[seq] = index
            self._decode()
            pending = later
        guesses: dict[int, list[int]] = {seq: [] for seq, _, _ in wanted}
        limits = {seq: k for seq, _, k in wanted}
        while rows:
            for seq, index in rows.items():
                guesses[seq].append(self._argmax(index))
            rows = {s: i for s, i in rows.items() if len(guesses[s]) < limits[s]}
            if not rows:
                break
            self._batch.n_tokens = 0
            for seq in list(rows):
                token = guesses[seq][-1]
                cells = self._cells[seq]
                rows[seq] = self._add(token, len(cells), seq, logits=True)
                cells.append(token)
            self._decode()
        return guesses

    def forget(self, seq: int, keep: int) -> None:
        """The main model kept only the first ``keep`` tokens of ``seq``'s text: cells past them
        hold rejected guesses and go."""
        cells = self._cells.get(seq)
        if cells is not None and len(cells) > keep:
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq, keep, -1)
            del cells[keep:]

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()
        self._model.close()

    def _add(self, token: int, pos: int, seq: int, *, logits: bool) -> int:
        batch = self._batch
        i: int = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        return i

    def _decode(self) -> None:
        rc = llama_cpp.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            for seq in list(self._cells):
                llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq, -1, -1)
            self._cells.clear()
            raise RuntimeError(f"llama_decode of the draft model failed (code {rc})")

    def _argmax(self, index: int) -> int:
        row = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
        logits: np.ndarray[Any, np.dtype[np.float32]] = np.ctypeslib.as_array(
            row, shape=(self.n_vocab,)
        )
        return int(logits.argmax())


def _check_vocabulary(draft: Any, main: Any, key: str) -> None:
    size = int(llama_cpp.llama_vocab_n_tokens(draft))
    same = size == int(llama_cpp.llama_vocab_n_tokens(main))
    buffers = [ctypes.create_string_buffer(64) for _ in range(2)]
    step = max(1, size // _PROBE_TOKENS)
    for token in range(0, size, step) if same else ():
        pieces = []
        for vocab, buf in zip((draft, main), buffers, strict=True):
            n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
            pieces.append(buf.raw[: max(n, 0)])
        if pieces[0] != pieces[1]:
            same = False
            break
    if not same:
        raise InvalidParameterError(
            f"the draft model {key} has another vocabulary than the model it would draft for:"
            " a draft model must use the same tokenizer (a smaller model of the same family)",
            param="draft_model",
        )
