"""``models.dir`` switched on a running daemon to an LM Studio models folder, read in place: every
listing (``lms ls`` up and down, ``GET /api/v1/models``, ``/v1/models``, the official SDK's
``list_downloaded_models``) shows LM Studio's keys and the same paths, without a restart."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import lmstudio
import openai
import pytest
from conftest import Server
from typer.testing import CliRunner

from lms import modelfolder, modelkeys
from lms.cli import app

pytestmark = pytest.mark.model

KEYS = [
    "google/gemma-3-270m",  # the default model, linked with its manifest
    "llama-3.2-1b-instruct",
    "mobilevlm_v2-1.7b",
    "text-embedding-nomic-embed-text-v1.5",
]


def _lmstudio_folder(root: Path, default_model_path: Path, make_gguf: Callable[..., bytes]) -> None:
    """LM Studio's layout, with the files it keeps beside models."""
    gemma = root / "google" / "gemma-3-270m"
    gemma.mkdir(parents=True)
    (gemma / default_model_path.name).symlink_to(default_model_path)
    manifest = default_model_path.with_name(modelkeys.MANIFEST_NAME)
    (gemma / manifest.name).write_bytes(manifest.read_bytes())
    llama = root / "hugging-quants" / "Llama-3.2-1B-Instruct-Q8_0-GGUF"
    llama.mkdir(parents=True)
    (llama / "llama-3.2-1b-instruct-q8_0.gguf").symlink_to(default_model_path)
    vlm = root / "ZiangWu" / "MobileVLM_V2-1.7B-GGUF"
    make_gguf(vlm / "ggml-model-q4_k.gguf", tensor_bytes=256)
    (vlm / "mmproj-model-f16.gguf").write_bytes(b"GGUF")
    (vlm / "model.yaml").write_text("model: ZiangWu/MobileVLM_V2-1.7B-GGUF\n")
    nomic = root / "nomic-ai" / "nomic-embed-text-v1.5-GGUF"
    make_gguf(nomic / "nomic-embed-text-v1.5.Q4_K_M.gguf", tensor_bytes=256, arch="bert")
    (nomic / "nomic-embed-text-v1.5.Q8_0.gguf.part").write_bytes(b"partial")
    (root / ".DS_Store").write_bytes(b"\0")


@pytest.fixture
def cli(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """The CLI of the server's LMS_HOME; ``models.dir`` is unset again afterwards."""
    monkeypatch.setenv("LMS_HOME", str(server.home))
    monkeypatch.delenv("LMS_MODELS_DIR", raising=False)
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    runner = CliRunner()
    try:
        yield runner
    finally:
        runner.invoke(app, ["config", "unset", "models.dir"])


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=60) as response:
        doc: dict[str, object] = json.loads(response.read())
        return doc


def test_models_dir_switches_live_and_every_listing_agrees(
    server: Server,
    cli: CliRunner,
    tmp_path: Path,
    default_model_path: Path,
    make_gguf: Callable[..., bytes],
) -> None:
    folder = tmp_path / "lmstudio" / "models"
    _lmstudio_folder(folder, default_model_path, make_gguf)
    missing = cli.invoke(app, ["config", "set", "models.dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert f"{tmp_path / 'nope'} is not a folder" in missing.stderr

    set_it = cli.invoke(app, ["config", "set", "models.dir", str(folder)])
    assert set_it.exit_code == 0, set_it.stderr
    # No restart: the daemon re-reads config.toml when it changes.
    up = cli.invoke(app, ["ls", "--json"])
    assert up.exit_code == 0, up.stderr
    listed = json.loads(up.stdout)
    assert [m["key"] for m in listed] == KEYS
    by_key = {m["key"]: m for m in listed}
    assert by_key["text-embedding-nomic-embed-text-v1.5"]["type"] == "embedding"
    assert by_key["llama-3.2-1b-instruct"]["relative_path"] == (
        "hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF/llama-3.2-1b-instruct-q8_0.gguf"
    )
    assert all(Path(m["path"]) == folder / m["relative_path"] for m in listed)
    # The same document the CLI reads itself with the daemon down (nothing loaded from here).
    down = modelfolder.read_entries(folder)
    assert [{**m, "loaded_instances": []} for m in listed] == down

    native = _get(server.url + "/api/v1/models")["models"]
    assert isinstance(native, list)
    assert [(m["key"], m["type"], m["size_bytes"]) for m in native] == [
        (m["key"], m["type"], m["size_bytes"]) for m in listed
    ]
    ids = [m.id for m in openai.OpenAI(base_url=server.url + "/v1", api_key="x").models.list()]
    assert [i for i in ids if i in by_key] == KEYS
    host = "localhost:" + server.url.rsplit(":", 1)[1]
    with lmstudio.Client(api_host=host) as sdk:
        downloaded = sdk.list_downloaded_models()
    assert sorted((m.model_key, m.path, m.type) for m in downloaded) == [
        (m["key"], m["relative_path"], m["type"]) for m in listed
    ]

    # Back to the default folder, live as well.
    assert cli.invoke(app, ["config", "unset", "models.dir"]).exit_code == 0
    back = [m["key"] for m in json.loads(cli.invoke(app, ["ls", "--json"]).stdout)]
    assert "llama-3.2-1b-instruct" not in back
    assert "google/gemma-3-270m" in back
