"""What the engine and the embedder share: a llama.cpp model and context owned by one worker
thread, which takes its jobs from a queue, and their orderly release.

The worker thread cannot die from a request: each subclass fails the one job whose work raised
(an :class:`~lms.errors.LmsError` as it is, anything else as an
:class:`~lms.errors.InternalError` with the traceback in the log), and a supervisor restarts the
loop if the loop itself ever raises, after failing the work it held (:meth:`_recover`).

The queue in front of the worker is bounded (docs/LIMITS.md): an instance holds at most its
slots plus ``queue_length`` requests; one more is refused at once with
:class:`~lms.errors.ServerBusyError` (503 with ``Retry-After``) instead of waiting minutes.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals

from lms.errors import InternalError, LmsError, ModelLoadError, ServerBusyError
from lms.inference import probe
from lms.inference.generation import LoadOptions

log = logging.getLogger("lms.worker")
llama_log = logging.getLogger("lms.engine")  # where llama.cpp's own messages always went

#: Put on the job queue by :meth:`ModelWorker.close`: the worker fails what is left and returns.
STOP = object()
#: Seconds a refused client is told to wait (``Retry-After``): about the time a short request
#: takes to free a slot on a small machine.
RETRY_AFTER_SECONDS = 2


def _silence_llama_logs() -> None:
    # llama.cpp prints to stderr by default; route it to our logger at debug level.
    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        llama_log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _silence_llama_logs.callback = _callback  # type: ignore[attr-defined]  # keep it alive


_silence_llama_logs()


def load_model(path: Path, progress: Callable[[float], None] | None = None) -> Any:
    """Read a GGUF's weights (blocking); ``progress`` hears 0..1 from the loading thread.

    A file llama.cpp cannot read becomes ModelLoadError, naming the file.
    """
    model_params = llama_cpp.llama_model_default_params()
    if progress is not None:

        @llama_cpp.llama_progress_callback
        def report(fraction: float, user_data: ctypes.c_void_p) -> bool:
            progress(float(fraction))
            return True  # keep loading

        model_params.progress_callback = report
    if not path.is_file():  # llama-cpp-python says ValueError for this too: tell them apart
        raise ModelLoadError(f"cannot load {path.name}: the file is gone ({path})")
    probe.check(path)  # in a child first: llama.cpp aborts on some malformed files
    try:
        return internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
    except (ValueError, OSError) as exc:
        raise ModelLoadError(
            f"cannot load {path.name}: llama.cpp could not read it as a model"
            " (corrupt or unsupported GGUF)"
        ) from exc


def context_params(options: LoadOptions) -> Any:
    """llama.cpp context parameters for a generating model loaded with ``options``: one
    sequence per slot of ``context_length`` tokens, prompt chunks of ``batch_size`` (the engine
    and its draft models use the same)."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = options.context_length * options.parallel
    params.n_batch = options.batch_size
    params.n_ubatch = options.batch_size
    params.n_seq_max = options.parallel
    params.n_threads = options.threads
    params.n_threads_batch = options.threads
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if options.flash_attention
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    params.no_perf = True
    return params


def internal_error(exc: BaseException, what: str) -> LmsError:
    """What a job that raised ``exc`` fails with: an LmsError as it is; anything else as an
    InternalError (500, generic on the wire) whose traceback goes to the log."""
    if isinstance(exc, LmsError):
        return exc
    log.error("%s failed", what, exc_info=exc)
    err = InternalError(f"{what} failed")
    err.__cause__ = exc
    return err


class ModelWorker(ABC):
    """Base of :class:`~lms.inference.engine.Engine` and :class:`~lms.inference.embedder.Embedder`.

    A subclass sets ``_model``, ``_ctx`` and ``_batch``, implements :meth:`_run` (the worker
    thread's loop, which returns once it takes :data:`STOP`) and :meth:`_recover`, and calls
    :meth:`_start_worker` last in its constructor.
    """

    _model: internals.LlamaModel
    _ctx: internals.LlamaContext
    _batch: Any  # a llama_batch from llama_batch_init

    def _start_worker(self, name: str, *, slots: int, queue_length: int) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._capacity = slots + queue_length
        self._queue_length = queue_length
        self._outstanding = 0  # admitted requests not yet answered (event loop side)
        self.restarts = 0  # times the supervisor restarted a failed loop
        self._thread = threading.Thread(target=self._supervise, name=name, daemon=True)
        self._thread.start()

    @abstractmethod
    def _run(self) -> None:
        """The worker thread: take jobs until :data:`STOP`, then fail what is left."""

    @abstractmethod
    def _recover(self, err: LmsError) -> None:
        """After the loop raised: fail the work in progress with ``err`` and leave the worker
        ready to run again (queued jobs are kept)."""

    def _supervise(self) -> None:
        crashed_while_closing = False
        while True:
            try:
                self._run()
                return
            except Exception as exc:
                err = internal_error(exc, f"the worker loop of {self._thread.name}")
            self.restarts += 1
            try:
                self._recover(err)
            except Exception:  # nothing more to save; serve what comes next
                log.exception("recovering %s failed", self._thread.name)
            if self._closed:
                if crashed_while_closing:  # shutting down itself fails: close() must return
                    return
                crashed_while_closing = True
                self._jobs.put(STOP)  # STOP may have been taken already: the loop must see one

    # --- called from the event loop ---------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return self._jobs.qsize()

    @property
    def outstanding(self) -> int:
        """Requests admitted and not yet answered (running or waiting)."""
        return self._outstanding

    def _admit_request(self) -> None:
        """Count a new request in, or refuse it with ServerBusyError when the instance already
        holds its slots plus ``queue_length`` requests. The caller calls :meth:`_release` once
        the request is answered (or cancelled)."""
        if self._outstanding >= self._capacity:
            raise ServerBusyError(
                f"the model {self._thread.name.split(':', 1)[-1]} is busy: all its slots are"
                f" taken and {self._queue_length} requests are waiting; retry in"
                f" {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._outstanding += 1

    def _release(self) -> None:
        self._outstanding -= 1

    def close(self) -> None:
        """Stop the worker (what is queued or running ends with an error naming the unload; a
        running job stops at its next step) and free the model (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(STOP)
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()
        self._model.close()
