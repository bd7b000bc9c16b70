"""The official `openai` client's embeddings.create against lms, with the real default model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest
from conftest import Server

MODEL = "google/gemma-3-270m"
pytestmark = pytest.mark.model


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="lm-studio", max_retries=0) as c:
        yield c


def test_embeddings(client: openai.OpenAI) -> None:
    texts = [
        "A dog runs in the park.",
        "Quarterly revenue grew by ten percent.",
        "A dog runs in the park.",
    ]
    # the client asks for base64 by default and decodes it; float is the other encoding
    decoded = client.embeddings.create(model=MODEL, input=texts)
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert decoded.model == MODEL and [d.index for d in decoded.data] == [0, 1, 2]
    assert decoded.usage.prompt_tokens == decoded.usage.total_tokens > 6
    a, b, c = (np.array(d.embedding) for d in decoded.data)
    assert a.shape == (640,)  # gemma-3-270m's hidden size
    assert np.allclose([np.array(d.embedding) for d in floats.data], [a, b, c], atol=1e-6)
    assert float(a @ a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ c) > 0.999 and float(a @ b) < 0.995


def test_single_string_and_errors(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=MODEL, input="hello")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 640
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nobody/nothing", input="hello")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="hello", dimensions=3)
    assert "dimensions" in str(info.value)
