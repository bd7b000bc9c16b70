"""Download jobs as the routes show them (docs/API.md, Downloads)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from lms.download.layout import Placement
from lms.errors import LmsError
from lms.protocol import DownloadJob

_RATE_WINDOW = 5.0
JobStatus = Literal["downloading", "completed", "failed"]


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_json(err: LmsError, *, include_path: bool) -> dict[str, str]:
    body = {"type": err.type, "code": err.code, "message": err.message}
    # A hint about a file of the server (a full disk names it) is for its owner's CLI only.
    if err.hint and (include_path or "path" not in err.data):
        body["hint"] = err.hint
    return body


@dataclass
class Job:
    """One download: its request, where it goes, and how far it got."""

    id: str
    url: URL
    placement: Placement
    target: Path
    sha256: str | None
    expected_size: int | None
    status: JobStatus = "downloading"
    total_size: int | None = None
    downloaded: int = 0
    started_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    error: LmsError | None = None
    model_key: str | None = None
    #: The running sha256 of the partial file (only when one is expected).
    digest: Any = None
    #: Set once the size is known from the server's answer, or the job has ended.
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def is_running(self) -> bool:
        return self.status == "downloading"

    def progress(self, downloaded: int) -> None:
        self.downloaded = downloaded
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= 0.2:
            self._samples.append((now, downloaded))

    def bytes_per_second(self) -> float:
        now = time.monotonic()
        recent = [s for s in self._samples if now - s[0] <= _RATE_WINDOW]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return max(0.0, (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]))

    def to_json(self, *, include_path: bool = False) -> DownloadJob:
        doc: DownloadJob = {
            "job_id": self.id,
            "status": self.status,
            "total_size_bytes": self.total_size,
            "downloaded_bytes": self.downloaded,
            "started_at": _iso(self.started_at),
            "model_key": self.model_key or self.placement.key,
            "file_name": self.placement.file_name,
        }
        if self.status == "downloading":
            rate = self.bytes_per_second()
            doc["bytes_per_second"] = round(rate, 1)
            if rate > 0 and self.total_size is not None:
                left = max(0, self.total_size - self.downloaded) / rate
                doc["estimated_completion"] = _iso(time.time() + left)
        if self.status == "completed" and self.completed_at is not None:
            doc["completed_at"] = _iso(self.completed_at)
        if self.error is not None:
            doc["error"] = _error_json(self.error, include_path=include_path)
        if include_path:
            doc["path"] = str(self.target)
        return doc


@dataclass(frozen=True)
class AlreadyDownloaded:
    """The answer when the target file is already in the models folder."""

    model_key: str
    file_name: str
    target: Path

    def to_json(self, *, include_path: bool = False) -> DownloadJob:
        doc: DownloadJob = {
            "status": "already_downloaded",
            "model_key": self.model_key,
            "file_name": self.file_name,
        }
        if include_path:
            doc["path"] = str(self.target)
        return doc
