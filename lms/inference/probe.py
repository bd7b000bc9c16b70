"""A model file is read by llama.cpp in a child process before the daemon reads it.

llama.cpp answers some malformed files with ``abort()`` rather than an error it returns: a GGUF
whose vocabulary holds a token twice stops the process at
``GGML_ASSERT(id_to_token.size() == token_to_id.size())``. In the daemon that would be every
client's server gone, and a token with the ``models`` permission can download a file and load
it. So :func:`check` first has ``python -m lms.inference.probe FILE`` read the file's
vocabulary (``vocab_only``: the model's metadata and tokenizer, no weights; where the aborts
found so far are — a weight tensor of the wrong shape is an error llama.cpp returns, and
:func:`lms.inference.worker.load_model` turns it into ModelLoadError). A child that dies
makes ModelLoadError (500 ``model_load_failed``), naming the file; the daemon goes on.

A file that passed is remembered by its resolved path, size and modification time for the life
of the process, so a reload costs nothing; a first load costs the child's start (about half a
second here).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from lms.errors import ModelLoadError

#: How long the child may take to read a vocabulary (a large one takes a second or two).
PROBE_TIMEOUT_SECONDS = 120.0

_passed: set[tuple[str, int, int]] = set()
_lock = threading.Lock()


def check(path: Path) -> None:
    """Refuse (ModelLoadError) a file llama.cpp aborts on or cannot read; a missing file is
    left to the load itself, which says so."""
    try:
        resolved = path.resolve(strict=True)
        st = resolved.stat()
    except OSError:
        return
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _passed:
            return
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lms.inference.probe", str(resolved)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"cannot load {path.name}: llama.cpp did not finish reading its vocabulary within"
            f" {PROBE_TIMEOUT_SECONDS:.0f} s"
        ) from None
    if done.returncode == 0:
        with _lock:
            _passed.add(key)
        return
    if done.returncode < 0:  # killed by a signal: abort() is SIGABRT
        raise ModelLoadError(
            f"cannot load {path.name}: llama.cpp aborted reading it (a malformed GGUF);"
            " the daemon did not load it"
        )
    raise ModelLoadError(
        f"cannot load {path.name}: llama.cpp could not read it as a model"
        " (corrupt or unsupported GGUF)"
    )


def _probe(path: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return 1
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(2)
    sys.exit(_probe(sys.argv[1]))
