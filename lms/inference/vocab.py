"""A loaded model's vocabulary: text to tokens and back, for the engine and the embedder.

llama.cpp's vocabulary is read-only once the model is loaded, so any thread may use it while the
worker decodes: the pipeline tokenizes in a helper thread, the engine's worker turns sampled
tokens into text, the event loop detokenizes for logs. Nothing here shares a scratch buffer
between threads (ctypes calls release the GIL); the piece cache is a dict that only ever gains
entries of one fixed value per token, so a race costs a duplicate lookup, never a wrong piece.
"""

from __future__ import annotations

import ctypes

import llama_cpp
from llama_cpp import _internals as internals

from lms.errors import InvalidParameterError

#: Longest token text llama.cpp writes for one token (pieces are a few bytes; a few control
#: tokens are longer).
PIECE_BUFFER = 256


class Vocabulary:
    """The vocabulary of ``model``: tokenize, detokenize, and the pieces of sampled tokens."""

    def __init__(self, model: internals.LlamaModel) -> None:
        self._model = model
        self.pointer = model.vocab  # a llama_vocab_p, for grammar samplers
        self.n_tokens = int(llama_cpp.llama_vocab_n_tokens(self.pointer))
        self._pieces: dict[int, bytes] = {}

    def encode(self, text: str, where: str = "the prompt", param: str | None = None) -> bytes:
        """``text`` as UTF-8; a lone surrogate is refused with a 400 saying ``where`` it was."""
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameterError(
                f"{where} holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text",
                param=param,
            ) from None

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokens of a prompt, with BOS when the model wants one (never twice, even when a chat
        template already wrote it); ``special`` parses control tokens like ``<start_of_turn>``.
        """
        add_bos = bool(self._model.add_bos_token())
        tokens = list(self._model.tokenize(self.encode(text), add_bos, special))
        bos = self._model.token_bos()
        if add_bos and len(tokens) > 1 and tokens[0] == tokens[1] == bos:
            del tokens[0]
        return tokens

    def tokenize_input(self, text: str, where: str) -> list[int]:
        """Tokens of an embedding input: BOS (and EOS/SEP where the vocabulary wants them);
        control tokens in the text are plain text."""
        encoded = self.encode(text, f"'{where}'", param="input")
        return list(self._model.tokenize(encoded, True, False))

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """Text of ``tokens``; ``special`` also renders control tokens (for logs)."""
        if not special:
            return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")
        return b"".join(self._render(t, special=True) for t in tokens).decode("utf-8", "replace")

    def piece(self, token: int) -> bytes:
        """The bytes of ``token`` as generated text (control tokens render empty); cached."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._render(token, special=False)
        return piece

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.pointer, token))

    def _render(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(PIECE_BUFFER)
        n = llama_cpp.llama_token_to_piece(self.pointer, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]
