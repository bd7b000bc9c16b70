"""The official `lmstudio` SDK names instances and finds models as LM Studio does
(docs/IDENTIFIERS.md): ``load_new_instance`` twice gives ``<key>`` then ``<key>:2``, a taken
identifier is refused with "already exists", and ``model()`` takes a path prefix in any case.

The real default model, in the real daemon; its key and path are read from the SDK's listing.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmstudio
import pytest
from conftest import Server

pytestmark = pytest.mark.model


@pytest.fixture
def client(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[lmstudio.Client]:
    monkeypatch.delenv("LMSTUDIO_API_TOKEN", raising=False)
    with lmstudio.Client(api_host="localhost:" + server.url.rsplit(":", 1)[1]) as sdk:
        yield sdk


def loaded_of(client: lmstudio.Client, key: str) -> list[str]:
    return sorted(m.identifier for m in client.llm.list_loaded() if m.get_info().model_key == key)


def test_load_twice_taken_identifier_and_path_prefix(client: lmstudio.Client) -> None:
    (model,) = client.llm.list_downloaded()
    key, path = model.model_key, model.path
    for identifier in loaded_of(client, key):  # start from no instance of the model
        client.llm.unload(identifier)
    config = {"contextLength": 512}
    try:
        first = client.llm.load_new_instance(key, config=config)
        second = client.llm.load_new_instance(key, config=config)
        assert (first.identifier, second.identifier) == (key, f"{key}:2")
        with pytest.raises(lmstudio.LMStudioServerError, match="already exists"):
            client.llm.load_new_instance(key, f"{key}:2", config=config)
        # A prefix of the model's path, in another case, that is no key or name.
        prefix = path[: path.index("/") + 5].upper()
        assert client.llm.model(prefix).identifier == key
        # The smallest free number is used again after an unload.
        second.unload()
        third = client.llm.load_new_instance(prefix, config=config)
        assert third.identifier == f"{key}:2"
        assert loaded_of(client, key) == [key, f"{key}:2"]
    finally:
        for identifier in loaded_of(client, key):
            client.llm.unload(identifier)
