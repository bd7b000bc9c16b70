"""What the engine and the embedder share: a llama.cpp model and context owned by one worker
thread, which takes its jobs from a queue, and their orderly release."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals

#: Put on the job queue by :meth:`ModelWorker.close`: the worker fails what is left and returns.
STOP = object()


class ModelWorker(ABC):
    """Base of :class:`~lms.inference.engine.Engine` and :class:`~lms.inference.embedder.Embedder`.

    A subclass sets ``_model``, ``_ctx`` and ``_batch``, implements :meth:`_run` (the worker
    thread's loop, which returns once it takes :data:`STOP`) and calls :meth:`_start_worker` last
    in its constructor.
    """

    _model: internals.LlamaModel
    _ctx: internals.LlamaContext
    _batch: Any  # a llama_batch from llama_batch_init

    def _start_worker(self, name: str) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @abstractmethod
    def _run(self) -> None:
        """The worker thread: take jobs until :data:`STOP`, then fail what is left."""

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Stop the worker (what is queued or running ends with an error naming the unload)
        and free the model (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(STOP)
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()
        self._model.close()
