"""The official `lmstudio` SDK asks for a draft model (``draftModel``) and reads what it did
(docs/API.md, Draft models): the real default model drafts for itself (nothing smaller shares
its vocabulary), in the real daemon, on an instance of this test's own so that the draft stays
attached to nothing another test uses."""

from __future__ import annotations

from collections.abc import Iterator

import lmstudio
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
IDENTIFIER = "sdk-drafts"
pytestmark = pytest.mark.model


@pytest.fixture
def client(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[lmstudio.Client]:
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    with lmstudio.Client(api_host="localhost:" + server.url.rsplit(":", 1)[1]) as sdk:
        yield sdk


def test_a_draft_model_guesses_and_the_stats_say_so(client: lmstudio.Client) -> None:
    model = client.llm.load_new_instance(MODEL, IDENTIFIER, config={"contextLength": 512})
    try:
        result = model.respond(
            "Count from one to twenty in words.",
            config={
                "draftModel": "gemma-3-270m",  # any name of the model, as for a load
                "speculativeDecodingNumDraftTokensExact": 3,  # guess whatever the costs
                "temperature": 0,
                "maxTokens": 24,
            },
        )
        stats = result.stats
        assert stats.used_draft_model_key == MODEL
        total = stats.total_draft_tokens_count
        assert total is not None and total > 0, stats
        assert (
            (stats.accepted_draft_tokens_count or 0)
            + (stats.rejected_draft_tokens_count or 0)
            + (stats.ignored_draft_tokens_count or 0)
        ) == total
        assert result.content
    finally:
        client.llm.unload(IDENTIFIER)
