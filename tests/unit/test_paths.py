"""Where state lives (README: Where state lives)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lms import paths
from lms.errors import UnsafePathError


def test_lms_home_relocates_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMS_HOME", str(tmp_path))
    for path in (
        paths.config_file(),
        paths.tokens_file(),
        paths.models_dir(),
        paths.socket_path(),
        paths.pid_file(),
        paths.daemon_log(),
        paths.audit_log(),
    ):
        assert path.is_relative_to(tmp_path), path
    assert paths.socket_path().parent == tmp_path / "run"


def test_runtime_dir_without_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMS_HOME", raising=False)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert paths.runtime_dir() == xdg / "lms"
    # A world-writable XDG_RUNTIME_DIR (e.g. /tmp) is never used.
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp")
    assert not str(paths.runtime_dir()).startswith("/tmp/")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.runtime_dir() == paths.data_dir() / "run"


def test_private_dir_created_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "run"
    paths.ensure_private_dir(target)
    assert target.stat().st_mode & 0o777 == 0o700


def test_private_dir_with_wrong_mode_refused(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    os.chmod(target, 0o755)
    with pytest.raises(UnsafePathError, match="0755") as info:
        paths.ensure_private_dir(target)
    assert "chmod 700" in (info.value.hint or "")


def test_symlinked_private_dir_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafePathError):
        paths.ensure_private_dir(link)


def test_socket_path_too_long(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="longer"):
        paths.check_socket_path(tmp_path / ("x" * 120) / "lms.sock")
