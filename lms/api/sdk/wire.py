"""Frames of the SDK protocol (reference/lmstudio-sdk-protocol.md §4) and the SDK's error object.

Every frame is one JSON object in one text frame. Server → client frames always carry the
``callId`` or ``channelId`` they answer, except ``communicationWarning`` (the Python SDK kills the
socket's receive task on any other top-level frame, pitfall 7).

Errors go out as ``SerializedLMSExtendedError`` objects (pitfall 8: always an object). The SDK
formats ``title``, ``errorData``, ``displayData`` and ``suggestion`` into its exception message
and picks the exception class from ``displayData.code``: an :class:`LmsError` may carry such a
display block in ``data["sdk_display"]`` (see :func:`no_model_matching`, :func:`path_not_found`).
"""

from __future__ import annotations

import json
from typing import Any

from lms.errors import LmsError, ModelNotFoundError

#: ``data`` key of an LmsError holding the SDK's ``displayData`` block.
DISPLAY = "sdk_display"
#: How many names an error lists at most (LM Studio's "sample" fields).
SAMPLE = 10


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def rpc_result(call_id: int, result: Any) -> dict[str, Any]:
    if result is None:  # a void endpoint: no "result" key at all
        return {"type": "rpcResult", "callId": call_id}
    return {"type": "rpcResult", "callId": call_id, "result": result}


def rpc_error(call_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"type": "rpcError", "callId": call_id, "error": error}


def channel_send(channel_id: int, message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "channelSend", "channelId": channel_id, "message": message}


def channel_close(channel_id: int) -> dict[str, Any]:
    return {"type": "channelClose", "channelId": channel_id}


def channel_error(channel_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"type": "channelError", "channelId": channel_id, "error": error}


def warning(text: str, kind: str) -> dict[str, Any]:
    return {"type": "communicationWarning", "warning": text, "kind": kind}


def error_object(err: LmsError) -> dict[str, Any]:
    """The ``SerializedLMSExtendedError`` of ``err``: its message as the title, our error code
    (and the parameter at fault) as ``errorData``, its hint as ``suggestion``."""
    data: dict[str, Any] = {"code": err.code}
    if err.param:
        data["param"] = err.param
    error: dict[str, Any] = {"title": err.message, "rootTitle": err.message, "errorData": data}
    display = err.data.get(DISPLAY)
    if isinstance(display, dict):
        error["displayData"] = display
    if err.hint:
        error["suggestion"] = err.hint
    return error


def no_model_matching(
    query: dict[str, Any], loaded: list[str], *, hint: str | None = None
) -> ModelNotFoundError:
    """No loaded model matches ``query``; ``loaded`` are the identifiers the caller may see."""
    shown = ", ".join(loaded[:SAMPLE]) or "none"
    return ModelNotFoundError(
        f"no loaded model matches {describe_query(query)} (loaded: {shown})",
        param="model",
        hint=hint,
        data={
            DISPLAY: {
                "code": "generic.noModelMatchingQuery",
                "query": query,
                "loadedModelsSample": loaded[:SAMPLE],
                "totalLoadedModels": len(loaded),
            }
        },
    )


def path_not_found(path: str, available: list[str], message: str | None = None) -> LmsError:
    """No downloaded model is ``path``; ``available`` are the keys the caller may use."""
    shown = ", ".join(available[:SAMPLE]) or "(none)"
    return ModelNotFoundError(
        message or f'model "{path}" not found. Available models: {shown}',
        param="model",
        data={
            DISPLAY: {
                "code": "generic.pathNotFound",
                "path": path,
                "availablePathsSample": available[:SAMPLE],
                "totalModels": len(available),
            }
        },
    )


def describe_query(query: dict[str, Any]) -> str:
    parts = [f"{key} {value!r}" for key, value in query.items() if value is not None]
    return " and ".join(parts) if parts else "any model"
