"""The SDK's chat history (docs/API.md, SDK endpoints) as the chat messages lms's templates take.

SDK messages are ``{"role", "content": [parts]}`` with parts ``text``, ``file`` (a handle from
``uploadFileBase64``), ``toolCallRequest`` (assistant) and ``toolCallResult`` (tool). They become
OpenAI-shaped messages: text joined, tool calls as ``tool_calls``, each tool result a ``tool``
message. Uploaded text files are inlined as text; images are refused (no lms model has a vision
encoder wired in).
"""

from __future__ import annotations

import json
from typing import Any

from lms.api.sdk.files import FileStore
from lms.errors import InvalidParameterError

ROLES = ("system", "user", "assistant", "tool")


def _bad(where: str, what: str) -> InvalidParameterError:
    return InvalidParameterError(f"'{where}' {what}", param="history")


def sdk_messages(history: Any) -> list[dict[str, Any]]:
    """The ``history.messages`` list of a request, checked for shape."""
    messages = history.get("messages") if isinstance(history, dict) else None
    if not isinstance(messages, list) or not messages:
        raise _bad("history.messages", "must be a non-empty list")
    for index, message in enumerate(messages):
        where = f"history.messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _bad(where, f"must be an object with a role among {', '.join(ROLES)}")
        if not isinstance(message.get("content"), list):
            raise _bad(f"{where}.content", "must be a list of parts")
    return messages


def chat_messages(history: Any, files: FileStore, owner: str) -> list[dict[str, Any]]:
    """OpenAI-shaped messages of an SDK history."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(sdk_messages(history)):
        where = f"history.messages[{index}].content"
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for number, part in enumerate(message["content"]):
            kind = part.get("type") if isinstance(part, dict) else None
            place = f"{where}[{number}]"
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "file":
                texts.append(_file_text(part, files, owner, place))
            elif kind == "toolCallRequest":
                calls.append(_call(part.get("toolCallRequest"), place))
            elif kind == "toolCallResult":
                results.append(_result(part, place))
            else:
                raise _bad(place, "is not a text, file, toolCallRequest or toolCallResult part")
        role = message["role"]
        if results:
            out += results
            continue
        entry: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
        if calls:
            entry["tool_calls"] = calls
            entry["content"] = entry["content"] or None
        out.append(entry)
    return out


def raw_prompt(history: Any, files: FileStore, owner: str) -> str:
    """The prompt of ``complete()``: every message's text, concatenated (its template)."""
    return "".join(str(m["content"] or "") for m in chat_messages(history, files, owner))


def _file_text(part: dict[str, Any], files: FileStore, owner: str, where: str) -> str:
    identifier = part.get("identifier")
    stored = files.get(owner, identifier) if isinstance(identifier, str) else None
    if stored is None:
        raise _bad(where, "names a file this client has not uploaded (or that expired)")
    if stored.file_type == "image":
        raise InvalidParameterError(
            f"'{where}' is an image, and lms models take text only (no vision support)",
            param="history",
        )
    if stored.file_type != "text/plain":
        raise _bad(where, f"is a file of type {stored.file_type}; only text files are read")
    return stored.data.decode("utf-8")


def _call(request: Any, where: str) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("name"), str):
        raise _bad(where, "must carry a toolCallRequest with a name")
    arguments = request.get("arguments") or {}
    return {
        "id": str(request.get("id") or f"call:{where}"),
        "type": "function",
        "function": {"name": request["name"], "arguments": json.dumps(arguments)},
    }


def _result(part: dict[str, Any], where: str) -> dict[str, Any]:
    content = part.get("content")
    if not isinstance(content, str):
        raise _bad(where, "must carry the tool's result as a string")
    result: dict[str, Any] = {"role": "tool", "content": content}
    if isinstance(part.get("toolCallId"), str):
        result["tool_call_id"] = part["toolCallId"]
    return result
