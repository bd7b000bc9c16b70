"""``/files``: ``uploadFileBase64`` (the SDK's ``prepare_image``), and where uploads are kept.

LM Studio scopes uploaded files to the client that sent them (docs/API.md, SDK rule 13): here to
the digest of the client's identifier and passkey, which every socket of one SDK client shares.
Files live in memory, bounded in total (:data:`MAX_TOTAL_BYTES`; the oldest go first) and in age
(:data:`MAX_AGE_SECONDS`); they are referenced later from a chat history by ``identifier``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lms.api.sdk.calls import Call, Endpoint, rpc
from lms.errors import InvalidParameterError, MissingParameterError

MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_AGE_SECONDS = 3600.0

_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
)


@dataclass
class StoredFile:
    owner: str
    name: str
    data: bytes
    file_type: str
    stored_at: float = field(default_factory=time.monotonic)


def file_type(name: str, data: bytes) -> str:
    """The SDK's ``FileType`` of an upload, from its content (and name for Word files)."""
    if data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "image"
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if name.lower().endswith((".doc", ".docx")):
        return "application/word"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "text/plain"


class FileStore:
    """Uploaded files, per owner, in memory, oldest evicted first."""

    def __init__(self, max_bytes: int = MAX_TOTAL_BYTES, max_age: float = MAX_AGE_SECONDS) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._bytes = 0

    def put(self, owner: str, name: str, data: bytes) -> tuple[str, StoredFile]:
        if len(data) > self.max_bytes:
            raise InvalidParameterError(
                f"the file is larger than {self.max_bytes} bytes", param="contentBase64"
            )
        identifier = f"file-{secrets.token_hex(12)}"
        stored = StoredFile(owner, name, data, file_type(name, data))
        self._files[identifier] = stored
        self._bytes += len(data)
        self._evict()
        return identifier, stored

    def get(self, owner: str, identifier: str) -> StoredFile | None:
        self._evict()
        stored = self._files.get(identifier)
        return stored if stored is not None and stored.owner == owner else None

    def _evict(self) -> None:
        now = time.monotonic()
        while self._files:
            identifier, oldest = next(iter(self._files.items()))
            if self._bytes <= self.max_bytes and now - oldest.stored_at <= self.max_age:
                return
            del self._files[identifier]
            self._bytes -= len(oldest.data)


FILES = web.AppKey("sdk_files", FileStore)


async def upload_file_base64(call: Call, parameter: Any) -> dict[str, Any]:
    if not isinstance(parameter, dict):
        raise MissingParameterError("'name' and 'contentBase64' are required", param="name")
    name, content = parameter.get("name"), parameter.get("contentBase64")
    if not isinstance(name, str) or not name:
        raise InvalidParameterError("'name' must be a non-empty string", param="name")
    if not isinstance(content, str):
        raise InvalidParameterError(
            "'contentBase64' must be a base64 string", param="contentBase64"
        )
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameterError(
            "'contentBase64' is not valid base64", param="contentBase64"
        ) from None
    identifier, stored = call.app[FILES].put(call.client.scope, name, data)
    return {"identifier": identifier, "fileType": stored.file_type, "sizeBytes": len(data)}


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("files", "uploadFileBase64"): rpc(upload_file_base64),
}
