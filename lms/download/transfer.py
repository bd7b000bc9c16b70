"""One download job's transfer: stream, resume, verify, place (see :mod:`.downloader`).

Chunks are written and hashed in a worker thread, one write in flight while the next chunk is
read, so disk and network overlap and the event loop never blocks on either. Writes are shielded
from cancellation and awaited before the file is closed: a cancelled job leaves a partial file
that ends where its last write ended, ready to be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from yarl import URL

from lms import storage
from lms.download import layout
from lms.download.jobs import Job
from lms.download.outbound import CheckedUrl, OutboundPolicy, OutboundSession, shown_url
from lms.errors import (
    DownloadError,
    DownloadStalledError,
    DownloadVerificationError,
    LmsError,
    ModelLoadError,
    UpstreamError,
)
from lms.inference import catalog

log = logging.getLogger("lms.download")

GGUF_MAGIC = b"GGUF"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_WRITE_BYTES = 4 << 20  # hand the writer thread 4 MiB at a time


class _Retry(Exception):
    """A transfer failure worth another attempt; ``error`` is reported if none is left."""

    def __init__(self, error: LmsError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class Transfer:
    """How jobs transfer: the outbound rule, timeouts, and how often a cut transfer resumes."""

    policy: OutboundPolicy
    stall_timeout: float = 60.0
    connect_timeout: float = 30.0
    attempts: int = 4
    retry_delay: float = 1.0

    async def run(self, job: Job, first_hop: CheckedUrl) -> None:
        """Download ``job`` to its partial file, verify it and link it into place."""
        await self._download(job, first_hop)
        await self._verify_and_place(job)

    async def _download(self, job: Job, first_hop: CheckedUrl) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.stall_timeout
        )
        async with OutboundSession(self.policy, timeout=timeout) as session:
            attempt = 0
            while True:
                attempt += 1
                try:
                    # The first attempt connects to the addresses checked when the job started;
                    # a retry checks the name again (its answer may legitimately change).
                    await self._attempt(job, session, first_hop if attempt == 1 else job.url)
                    return
                except _Retry as retry:
                    if attempt >= self.attempts:
                        raise retry.error from None
                    log.info(
                        "download job %s: %s; resuming (attempt %d of %d)",
                        job.id,
                        retry.error.message,
                        attempt + 1,
                        self.attempts,
                    )
                    await asyncio.sleep(self.retry_delay * attempt)

    async def _attempt(self, job: Job, session: OutboundSession, url: URL | CheckedUrl) -> None:
        partial = layout.partial_path(job.target)
        meta_path = layout.partial_meta_path(job.target)
        offset, meta = await asyncio.to_thread(_resumable, partial, meta_path, job.url)
        headers: dict[str, str] = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        try:
            async with session.get(url, headers=headers) as response:
                offset, total = self._accept(job, response, offset)
                job.total_size = total if total is not None else job.expected_size
                await asyncio.to_thread(
                    _prepare_partial, partial, meta_path, offset, job, response, self._free_check
                )
                job.progress(offset)
                job.answered.set()
                await self._receive(job, response, partial, offset)
        except UpstreamError as err:
            if type(err) is UpstreamError:
                raise _Retry(err) from None  # unreachable: try again
            raise
        if job.total_size is None:
            job.total_size = job.downloaded
        elif job.downloaded != job.total_size:
            raise _Retry(
                DownloadError(
                    f"{shown_url(job.url)} ended after {job.downloaded} of {job.total_size} bytes"
                )
            )

    def _accept(
        self, job: Job, response: aiohttp.ClientResponse, offset: int
    ) -> tuple[int, int | None]:
        """Where the body starts and the file's total size, from the response's status."""
        shown = shown_url(job.url)
        status = response.status
        total: int | None
        if status == 206 and offset:
            found = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if found is None or int(found.group(1)) != offset:
                raise _Retry(DownloadError(f"{shown} answered a range request inconsistently"))
            total = None if found.group(3) == "*" else int(found.group(3))
        elif status == 200:
            offset, total = 0, response.content_length
        elif status == 416 and offset:
            # The partial is no prefix of the file any more: start over.
            layout.partial_meta_path(job.target).unlink(missing_ok=True)
            raise _Retry(DownloadError(f"{shown} refused to resume at byte {offset}"))
        elif status >= 500 or status == 429:
            raise _Retry(DownloadError(f"{shown} answered HTTP {status} {response.reason}"))
        else:
            raise DownloadError(f"{shown} answered HTTP {status} {response.reason or ''}".strip())
        if total is not None and job.expected_size is not None and total != job.expected_size:
            raise DownloadVerificationError(
                f"{shown} is {total} bytes, but {job.expected_size} were expected"
            )
        return offset, total

    def _free_check(self, folder: Path, needed: int) -> None:
        if needed > shutil.disk_usage(folder).free:
            raise storage.full_error(folder, needed=needed)

    async def _receive(
        self, job: Job, response: aiohttp.ClientResponse, partial: Path, offset: int
    ) -> None:
        """Stream the body to the partial file; one write in flight while reading the next.

        Writes are shielded from cancellation and always awaited before the file is closed, so
        a cancelled job leaves a partial file that ends at a write boundary.
        """
        writer = await asyncio.to_thread(_Writer.open, partial, offset, job.sha256 is not None)
        pending: asyncio.Future[None] | None = None

        async def write(data: bytearray) -> None:
            nonlocal pending
            if pending is not None:
                await asyncio.shield(pending)
            pending = asyncio.ensure_future(asyncio.to_thread(writer.write, data))

        received = offset
        buffer = bytearray()
        checked_magic = offset >= len(GGUF_MAGIC)
        try:
            try:
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    received += len(chunk)
                    job.progress(received)
                    if not checked_magic and received >= len(GGUF_MAGIC):
                        _check_magic(job, bytes(buffer[: len(GGUF_MAGIC)]))
                        checked_magic = True
                    if len(buffer) >= _WRITE_BYTES:
                        await write(buffer)
                        buffer = bytearray()
            except asyncio.CancelledError:
                if buffer:
                    await write(buffer)  # keep what arrived: a later job resumes after it
                raise
            except (TimeoutError, aiohttp.ServerTimeoutError):
                broken: LmsError | None = DownloadStalledError(
                    f"{shown_url(job.url)} sent nothing for {self.stall_timeout:g} s"
                    f" (after {received} bytes)"
                )
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                broken = DownloadError(
                    f"the connection to {shown_url(job.url)} broke after {received} bytes"
                    f" ({type(exc).__name__})"
                )
            else:
                broken = None
                if not checked_magic and buffer:
                    _check_magic(job, bytes(buffer))
            if buffer:
                await write(buffer)  # what arrived before a break is kept for the resume
            if pending is not None:
                await asyncio.shield(pending)
            if broken is not None:
                raise _Retry(broken)
        finally:
            if pending is not None:
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # retrieved: the first await reported it already
            # What reached the disk is what a resume continues from.
            job.progress(writer.written)
            job.digest = writer.digest
            await asyncio.to_thread(writer.close)

    async def _verify_and_place(self, job: Job) -> None:
        partial = layout.partial_path(job.target)
        shown = shown_url(job.url)
        size = (await asyncio.to_thread(partial.stat)).st_size
        if job.expected_size is not None and size != job.expected_size:
            raise DownloadVerificationError(
                f"{shown} gave {size} bytes, but {job.expected_size} were expected"
            )
        if job.sha256 is not None:
            if job.digest is not None:
                actual = job.digest.hexdigest()
            else:
                actual = await asyncio.to_thread(_sha256_of, partial)
            if actual != job.sha256:
                raise DownloadVerificationError(
                    f"{shown} has sha256 {actual}, but {job.sha256} was expected"
                )
        try:
            await asyncio.to_thread(catalog.read_metadata, partial)
        except ModelLoadError as err:
            detail = err.message.rpartition(" is not a readable GGUF model ")[2] or err.message
            raise DownloadVerificationError(
                f"{shown} is not a usable GGUF model {detail}".rstrip(),
                hint="check the URL: it must be the .gguf file itself",
            ) from None
        await asyncio.to_thread(layout.place, partial, job.target)
        await asyncio.to_thread(layout.partial_meta_path(job.target).unlink, missing_ok=True)


def _check_magic(job: Job, head: bytes) -> None:
    if head[: len(GGUF_MAGIC)] != GGUF_MAGIC:
        raise DownloadVerificationError(
            f"{shown_url(job.url)} is not a GGUF file (it starts with {head[:16]!r})",
            hint="check the URL: it must be the .gguf file itself, not a web page about it",
        )


def _resumable(partial: Path, meta_path: Path, url: URL) -> tuple[int, dict[str, Any]]:
    """How many bytes of ``partial`` can be kept: all of them when it was downloaded from
    ``url`` (recorded beside it), else none."""
    try:
        size = partial.stat().st_size
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0, {}
    if not isinstance(meta, dict) or meta.get("url") != str(url):
        return 0, {}
    return size, meta


def _prepare_partial(
    partial: Path,
    meta_path: Path,
    offset: int,
    job: Job,
    response: aiohttp.ClientResponse,
    free_check: Callable[[Path, int], None],
) -> None:
    """Record where the partial comes from (before its first byte) and check the disk space."""
    if job.total_size is not None:
        free_check(partial.parent, job.total_size - offset)
    if offset == 0:
        etag = response.headers.get("ETag")
        meta = {
            "url": str(job.url),
            "etag": etag if etag and not etag.startswith("W/") else None,
            "last_modified": response.headers.get("Last-Modified"),
            "total_size": job.total_size,
        }
        with storage.guard_full(meta_path):
            meta_path.write_text(json.dumps(meta), encoding="utf-8")


class _Writer:
    """The partial file and the running sha256, used from worker threads one call at a time."""

    def __init__(self, path: Path, file: IO[bytes], written: int, digest: Any) -> None:
        self.path = path
        self.file = file
        self.written = written
        self.digest = digest

    @classmethod
    def open(cls, partial: Path, offset: int, hashing: bool) -> _Writer:
        digest = hashlib.sha256() if hashing else None
        try:
            with storage.guard_full(partial):
                if offset:
                    file: IO[bytes] = partial.open("r+b")
                    file.truncate(offset)
                    if digest is not None:
                        while block := file.read(1 << 20):
                            digest.update(block)
                    file.seek(offset)
                else:
                    file = partial.open("wb")
        except OSError as exc:
            raise DownloadError(f"cannot write {partial}: {exc.strerror}") from exc
        return cls(partial, file, offset, digest)

    def write(self, data: bytearray) -> None:
        try:
            # Flushed at once: a full disk is reported by this write, with ``written`` counting
            # only bytes that reached the file (a resume continues from them).
            with storage.guard_full(self.path):
                self.file.write(data)
                self.file.flush()
        except OSError as exc:
            raise DownloadError(f"cannot write {self.path}: {exc.strerror}") from exc
        if self.digest is not None:
            self.digest.update(data)
        self.written += len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
