"""``/embedding``: ``embedString`` (the SDK's ``embed``; one call per string, docs/API.md, SDK rule
12). The endpoints it shares with ``/llm`` are in :mod:`models`."""

from __future__ import annotations

from typing import Any

from lms.api.sdk import models
from lms.api.sdk.calls import Call, Endpoint, rpc


async def embed_string(call: Call, parameter: Any) -> dict[str, Any]:
    text = models.text_param(parameter, "inputString")
    instance = await models.local_instance(call, parameter, "Embedding", "modelSpecifier")
    result = await instance.embedder.embed([text])
    call.record_tokens(result.total_tokens, 0)
    return {"embedding": [float(x) for x in result.vectors[0]]}


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("embedding", "embedString"): rpc(embed_string),
}
