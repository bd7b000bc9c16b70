"""``/system``: ``listDownloadedModels`` and ``version``.

Downloaded models are listed with their own type (``llm`` or ``embedding``: the only two the
SDK accepts), then the remote engines' models (llms), all filtered by the token's allowlist.
"""

from __future__ import annotations

from typing import Any

from lms import __version__
from lms.api.sdk import records, remotes
from lms.api.sdk.calls import Call, Endpoint, rpc


async def list_downloaded_models(call: Call, parameter: Any) -> list[dict[str, Any]]:
    models = await call.manager.models()
    local = [records.model_info(m) for m in models if call.allows(m.key)]
    return local + [records.remote_model_info(m) for m in remotes.visible(call)]


async def version(call: Call, parameter: Any) -> dict[str, Any]:
    return {"version": __version__, "build": 0}


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("system", "listDownloadedModels"): rpc(list_downloaded_models),
    ("system", "version"): rpc(version),
}
