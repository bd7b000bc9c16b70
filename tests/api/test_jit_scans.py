"""A just-in-time load reads the models folder once, whichever route asks (the API chooses the
instance with the manager's own rule, then hands that choice to the load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lms.inference import catalog

MODEL = "google/gemma-3-270m"  # on the scripted fakes (tests/fakes.py): the subject is the scan


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """Every read of the models folder (the real discover still answers)."""
    calls: list[Path | None] = []
    real = catalog.discover

    def counted(models_dir: Path | None = None) -> list[catalog.ModelFile]:
        calls.append(models_dir)
        return real(models_dir)

    monkeypatch.setattr(catalog, "discover", counted)
    return calls


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/api/v1/chat", {"input": "Hi", "max_output_tokens": 1}),
        ("/v1/embeddings", {"input": "Hi"}),
    ],
    ids=["openai", "native", "embeddings"],
)
async def test_a_jit_load_reads_the_models_folder_once(
    client: TestClient,  # type: ignore[type-arg]
    scans: list[Path | None],
    route: str,
    body: dict[str, Any],
) -> None:
    extra = {"max_tokens": 1} if route == "/v1/chat/completions" else {}
    response = await client.post(route, json={"model": MODEL, **body, **extra})
    assert response.status == 200, await response.text()
    assert len(scans) == 1
