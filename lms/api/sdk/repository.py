"""``/repository``: the model hub calls of the SDK, which lms does not offer.

The socket itself must upgrade and authenticate (``AsyncClient`` opens all five sockets,
docs/API.md, SDK rule 2). Its three endpoints answer a clear error (after the ``models`` permission
check) instead of an unknown-endpoint warning: lms downloads models by URL (``lms get URL``, ``POST
/api/v1/models/download``), it has no searchable hub.
"""

from __future__ import annotations

from typing import Any

from lms.api.sdk.calls import Call, Channel, Endpoint, channel, rpc
from lms.errors import NotImplementedYetError


def _no_hub() -> NotImplementedYetError:
    return NotImplementedYetError(
        "lms has no model hub to search or download from through the SDK",
        hint="download a GGUF by URL: lms get URL (or POST /api/v1/models/download)",
    )


async def search_models(call: Call, parameter: Any) -> None:
    raise _no_hub()


async def get_model_download_options(call: Call, parameter: Any) -> None:
    raise _no_hub()


async def download_model(channel: Channel, parameter: Any) -> None:
    raise _no_hub()


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("repository", "searchModels"): rpc(search_models),
    ("repository", "getModelDownloadOptions"): rpc(get_model_download_options),
    ("repository", "downloadModel"): channel(download_model),
}
