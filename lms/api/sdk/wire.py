"""Frames of the SDK protocol (docs/API.md, SDK frames) and the SDK's error object.

Every frame is one JSON object in one text frame. Server → client frames always carry the
``callId`` or ``channelId`` they answer, except ``communicationWarning`` (the Python SDK kills the
socket's receive task on any other top-level frame, SDK rule 4).

Errors go out as ``SerializedLMSExtendedError`` objects (SDK rule 5: always an object). The SDK
formats ``title``, ``errorData``, ``displayData`` and ``suggestion`` into its exception message
and picks the exception class from ``displayData.code``: an :class:`LmsError` may carry such a
display block in ``data["sdk_display"]`` (see :func:`no_model_matching`, :func:`path_not_found`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lms import payload, protocol
from lms.errors import InvalidJsonError, LmsError, ModelNotFoundError, PayloadTooLargeError
from lms.redaction import redact_secrets, redact_value

#: ``data`` key of an LmsError holding the SDK's ``displayData`` block.
DISPLAY = "sdk_display"
#: How many names an error lists at most (LM Studio's "sample" fields).
SAMPLE = 10


#: Largest frame answered (with an error when it is larger): the bound of a request body.
MAX_FRAME_BYTES = protocol.MAX_BODY_BYTES
#: Largest frame read at all: the socket is closed (1009) past it, as nothing can be answered.
MAX_READ_BYTES = 2 * MAX_FRAME_BYTES
#: Calls and channels open at once on one socket; one more is refused with an error.
MAX_OPEN = 64
#: Frames longer than this are decoded on a worker thread.
THREAD_DECODE_CHARS = 64 * 1024

_WHAT = "the message"


class BadFrame(Exception):
    """A frame that cannot be served: ``error`` says why, ``head`` holds whatever top-level
    members could be read (``type``, ``callId``, ``channelId``), to answer the right call."""

    def __init__(self, error: LmsError, head: dict[str, Any]) -> None:
        super().__init__(error.message)
        self.error = error
        self.head = head


def decode(text: str) -> dict[str, Any]:
    """One client frame, decoded within the bounds of :mod:`lms.payload` (a JSON object, no
    deeper than 64 levels, 64-bit integers, finite numbers, no lone surrogates) and
    :data:`MAX_FRAME_BYTES`; :class:`BadFrame` otherwise."""
    if len(text) * 4 > MAX_FRAME_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_FRAME_BYTES:
            too_large = PayloadTooLargeError(
                f"{_WHAT} is {size} bytes; the largest accepted is {MAX_FRAME_BYTES} bytes"
            )
            raise BadFrame(too_large, head(text))
    try:
        frame = json.loads(text)
    except RecursionError:
        error = InvalidJsonError(f"{_WHAT} is nested deeper than {payload.MAX_DEPTH} levels")
        raise BadFrame(error, head(text)) from None
    except ValueError as exc:
        raise BadFrame(InvalidJsonError(f"{_WHAT} is not valid JSON: {exc}"), {}) from None
    if not isinstance(frame, dict):
        raise BadFrame(InvalidJsonError(f"{_WHAT} is not a JSON object"), {})
    try:
        payload.check(frame, what=_WHAT)
    except LmsError as err:
        raise BadFrame(err, frame) from None
    return frame


_SPECIAL = re.compile(r'["{}\[\]]')
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(r'-?[0-9][0-9.eE+-]*|true|false|null|"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def head(text: str) -> dict[str, Any]:
    """The scalar members of the top-level object of a frame too deep or too large to decode
    whole (nested values are skipped, without recursion); ``{}`` when it is not an object."""
    found: dict[str, Any] = {}
    pos = _skip_space(text)
    if not text.startswith("{", pos):
        return found
    pos += 1
    while True:
        pos = _skip_space(text, pos)
        key = _STRING.match(text, pos)
        if key is None:
            return found
        pos = _skip_space(text, key.end())
        if not text.startswith(":", pos):
            return found
        pos = _skip_space(text, pos + 1)
        if text.startswith(("{", "["), pos):
            end = _skip_nested(text, pos)
            if end is None:
                return found
            pos = end
        else:
            value = _SCALAR.match(text, pos)
            if value is None:
                return found
            try:
                found[json.loads(key.group())] = json.loads(value.group())
            except ValueError:
                return found
            pos = value.end()
        pos = _skip_space(text, pos)
        if not text.startswith(",", pos):
            return found
        pos += 1


def _skip_space(text: str, pos: int = 0) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _skip_nested(text: str, pos: int) -> int | None:
    """The index after the object or array starting at ``pos`` (None if it never ends)."""
    depth = 0
    while True:
        special = _SPECIAL.search(text, pos)
        if special is None:
            return None
        char = special.group()
        if char == '"':
            string = _STRING.match(text, special.start())
            if string is None:
                return None
            pos = string.end()
            continue
        depth += 1 if char in "{[" else -1
        pos = special.end()
        if depth == 0:
            return pos


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
    # Warnings quote what the client sent (an endpoint name, a frame type): never a secret.
    return {"type": "communicationWarning", "warning": redact_secrets(text), "kind": kind}


def error_object(err: LmsError) -> dict[str, Any]:
    """The ``SerializedLMSExtendedError`` of ``err``: its message as the title, our error code
    (and the parameter at fault) as ``errorData``, its hint as ``suggestion``."""
    data: dict[str, Any] = {"code": err.code}
    if err.param:
        data["param"] = err.param
    # Messages may quote client input (a model query, an identifier): never a secret in them.
    message = redact_secrets(err.message)
    error: dict[str, Any] = {"title": message, "rootTitle": message, "errorData": data}
    display = err.data.get(DISPLAY)
    if isinstance(display, dict):
        error["displayData"] = redact_value(display)
    if err.hint and "path" not in err.data:  # a storage error's hint names a server path
        error["suggestion"] = redact_secrets(err.hint)
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
