"""A real full disk for tests: a small tmpfs mounted for the test, filled to the last byte.

Tests that use it skip (saying why) where mounting is impossible (not root, no mount command,
no tmpfs in this kernel or container). The file system is always unmounted at the end; a busy
unmount (a process of the test still holds a file there) fails the test instead of leaking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


class SmallDisk:
    """A mounted tmpfs at ``root`` with a filler file that takes every free byte."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler.bin"

    def fill(self) -> None:
        """Write the filler until the kernel answers ENOSPC, then top it off byte by byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 16, 1 << 12, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        assert shutil.disk_usage(self.root).free == 0

    def free(self) -> None:
        self.filler.unlink()


@contextlib.contextmanager
def small_tmpfs(size: str = "8m") -> Iterator[SmallDisk]:
    """Mount a tmpfs of ``size`` on a fresh folder; skip the test when that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs mount, which needs root")
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command: cannot make a small file system to fill")
    folder = Path(tempfile.mkdtemp(prefix="lmsfull"))
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield SmallDisk(folder)
    finally:
        unmounted = subprocess.run(["umount", str(folder)], capture_output=True, text=True)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        with contextlib.suppress(OSError):
            folder.rmdir()
    # Not in ``finally``: a failure of the test itself is the one to report.
    assert unmounted.returncode == 0, f"tmpfs busy at the end: {unmounted.stderr}"
