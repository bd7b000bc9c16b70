"""Download jobs: a GGUF file from an http(s) URL into the models folder (README: Command
reference; Settings).

A job streams the body to ``.<file>.part`` beside its target (hidden from discovery), through
the outbound rule of :mod:`lms.download.outbound`. It resumes: after a cut or a stall it asks for
the rest (``Range`` from the partial's size, ``If-Range`` with the server's validator) up to
``attempts`` times, and a later job for the same target continues the partial a failed or
cancelled one left; a server that ignores ``Range`` makes it start over. It checks the size
(``Content-Length`` / ``Content-Range``, and ``size`` when given), the sha256 when given, that
the first bytes are GGUF's magic and finally the whole header with ``catalog.read_metadata``,
then links the file into place without replacing anything (:mod:`.transfer`). A job that fails
on the *content* (size, sha256, not a GGUF) deletes its partial; one that fails on the
*transfer* (network, stall, HTTP 5xx, cancel) keeps it for the next try. No failure leaves a
file that discovery lists, and none touches a file the user had.

Jobs live in the daemon's memory; the last ``max_jobs`` finished ones are kept for status.
Besides URLs, the bundled default model can be asked for by its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from yarl import URL

from lms import paths
from lms.config import Settings
from lms.download import layout
from lms.download.jobs import AlreadyDownloaded, Job
from lms.download.layout import Placement
from lms.download.outbound import CheckedUrl, OutboundPolicy, check_url, parse_url, shown_url
from lms.download.transfer import Transfer
from lms.errors import (
    ConflictError,
    DownloadCancelledError,
    DownloadVerificationError,
    InternalError,
    InvalidParameterError,
    JobNotFoundError,
    LmsError,
)
from lms.inference import catalog, defaultmodel

log = logging.getLogger("lms.download")

PRIVATE_URLS_HINT = (
    "downloads from loopback/private addresses are off; allow them with:"
    " lms config set models.allow_private_urls on"
)
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

__all__ = ["AlreadyDownloaded", "DownloadManager", "Job"]


class DownloadManager:
    """The daemon's download jobs. Construct without I/O; ``await close()`` cancels them.

    ``policy`` is a template of the outbound rule (tests set ``exempt`` or ``resolve``);
    ``allow_private`` always comes from ``models.allow_private_urls`` at the job's start.
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        models_dir: Callable[[], Path] = paths.models_dir,
        *,
        policy: OutboundPolicy | None = None,
        stall_timeout: float = 60.0,
        connect_timeout: float = 30.0,
        attempts: int = 4,
        retry_delay: float = 1.0,
        max_jobs: int = 100,
    ) -> None:
        self._settings = settings
        self.models_dir = models_dir
        self._policy = policy or OutboundPolicy()
        self._timeouts = (stall_timeout, connect_timeout)
        self._retries = (max(1, attempts), retry_delay)
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}
        self._by_target: dict[Path, Job] = {}

    def policy(self) -> OutboundPolicy:
        """The outbound rule in force now (reads ``models.allow_private_urls``)."""
        allow = self._settings().models_allow_private_urls
        return dataclasses.replace(
            self._policy, allow_private=allow, setting_hint=PRIVATE_URLS_HINT
        )

    def _transfer(self) -> Transfer:
        stall, connect = self._timeouts
        attempts, delay = self._retries
        return Transfer(self.policy(), stall, connect, attempts, delay)

    # --- the API of the routes ----------------------------------------------------------------

    async def start(
        self,
        source: str,
        *,
        sha256: str | None = None,
        size: int | None = None,
        publisher: str | None = None,
        name: str | None = None,
    ) -> Job | AlreadyDownloaded:
        """Start downloading ``source`` (an http(s) URL of a .gguf file, or the bundled model's
        key). Raises, before any job exists, InvalidParameterError for bad fields,
        UrlNotAllowedError when the outbound rule refuses the URL and ConflictError when a job
        for the same file runs; everything later is reported by the job."""
        if sha256 is not None and not _SHA256.match(sha256):
            raise InvalidParameterError("'sha256' must be 64 hexadecimal digits", param="sha256")
        if size is not None and size < 1:
            raise InvalidParameterError("'size' must be a positive number of bytes", param="size")
        if not source.strip().lower().startswith(("http://", "https://")):
            return await self._bundled(source.strip())
        url = parse_url(source)
        placement = layout.placement_for_url(url, publisher=publisher, name=name)
        target = placement.target(self.models_dir())
        running = self._by_target.get(target)
        if running is not None:
            raise ConflictError(
                f"{placement.file_name} is already being downloaded (job {running.id})",
                hint=f"follow it: GET {running.id}",
                data={"job_id": running.id},
            )
        if os.path.lexists(target):
            key = await self.key_of(target) or placement.key
            return AlreadyDownloaded(key, placement.file_name, target)
        checked = await check_url(url, self.policy())
        job = Job(
            id=f"job_{secrets.token_hex(5)}",
            url=url,
            placement=placement,
            target=target,
            sha256=sha256.lower() if sha256 else None,
            expected_size=size,
        )
        self._remember(job)
        job.task = asyncio.create_task(self._run(job, checked))
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no download job {job_id!r}", param="job_id")
        return job

    async def cancel(self, job_id: str) -> Job:
        """Stop a running job (its partial file stays, for a later resume)."""
        job = self.get(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
        return job

    async def wait_answered(self, job: Job, timeout: float) -> None:
        """Wait until the job knows its size or has ended, for at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.answered.wait(), timeout)

    async def close(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def key_of(self, path: Path) -> str | None:
        """The catalog key discovery gives the file at ``path`` (None if it is not listed)."""
        models = await asyncio.to_thread(catalog.discover, self.models_dir())
        return next((m.key for m in models if m.path == path), None)

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._by_target[job.target] = job
        finished = [j for j in self._jobs.values() if not j.is_running]
        for old in finished[: max(0, len(self._jobs) - self.max_jobs)]:
            del self._jobs[old.id]

    async def _bundled(self, key: str) -> Job | AlreadyDownloaded:
        if key.lower() != defaultmodel.DEFAULT_MODEL_KEY:
            raise InvalidParameterError(
                f"{key!r} is not an http(s) URL of a .gguf file; the only model lms installs by"
                f" key is the bundled {defaultmodel.DEFAULT_MODEL_KEY}",
                hint="give the URL of a GGUF file, e.g. https://huggingface.co/OWNER/REPO"
                "/resolve/main/FILE.gguf",
                param="url",
            )
        models_dir = self.models_dir()
        target = defaultmodel.default_model_path(models_dir)
        publisher, name = defaultmodel.DEFAULT_MODEL_KEY.split("/")
        placement = Placement(publisher, name, target.name, declared=True)  # its manifest
        if target.exists():
            return AlreadyDownloaded(placement.key, placement.file_name, target)
        job = Job(
            id=f"job_{secrets.token_hex(5)}",
            url=URL("file:///bundled"),
            placement=placement,
            target=target,
            sha256=None,
            expected_size=None,
        )
        self._remember(job)
        job.task = asyncio.create_task(self._run_bundled(job, models_dir))
        return job

    async def _run_bundled(self, job: Job, models_dir: Path) -> None:
        job.answered.set()
        try:
            await asyncio.to_thread(defaultmodel.ensure_default_model, models_dir)
            size = job.target.stat().st_size
            job.total_size, job.downloaded = size, size
            self._finish(job)
        except LmsError as err:
            self._fail(job, err)
        finally:
            self._by_target.pop(job.target, None)

    # --- a job ------------------------------------------------------------------------------

    async def _run(self, job: Job, first_hop: CheckedUrl) -> None:
        keep_partial = True
        created: list[Path] = []
        try:
            created = await asyncio.to_thread(layout.make_dirs, job.target)
            await self._transfer().run(job, first_hop)
            await asyncio.to_thread(layout.declare_key, job.placement, job.target)
            job.model_key = await self.key_of(job.target) or job.placement.key
            self._finish(job)
        except asyncio.CancelledError:
            self._fail(
                job,
                DownloadCancelledError(
                    f"the download of {shown_url(job.url)} was cancelled;"
                    " starting it again resumes it"
                ),
            )
            raise
        except DownloadVerificationError as err:
            keep_partial = False
            self._fail(job, err)
        except LmsError as err:
            self._fail(job, err)
        except Exception:
            log.exception("download job %s failed", job.id)
            self._fail(job, InternalError("the download failed; see the daemon log"))
        finally:
            self._by_target.pop(job.target, None)
            job.answered.set()
            if job.status != "completed":
                await asyncio.to_thread(self._clean_up, job.target, keep_partial, created)

    @staticmethod
    def _clean_up(target: Path, keep_partial: bool, created: list[Path]) -> None:
        partial, meta = layout.partial_path(target), layout.partial_meta_path(target)
        with contextlib.suppress(OSError):
            if not keep_partial or partial.stat().st_size == 0:
                partial.unlink()
        if not partial.exists():
            with contextlib.suppress(OSError):
                meta.unlink()
        layout.remove_empty_dirs(created)

    def _finish(self, job: Job) -> None:
        job.status = "completed"
        job.completed_at = time.time()
        job.answered.set()
        log.info("downloaded %s to %s (%s bytes)", shown_url(job.url), job.target, job.downloaded)

    def _fail(self, job: Job, err: LmsError) -> None:
        job.status = "failed"
        job.error = err
        job.answered.set()
        log.warning("download job %s of %s failed: %s", job.id, shown_url(job.url), err.message)
