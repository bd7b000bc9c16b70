"""Every on-disk location of lms (README: Where state lives), computed afresh at each call.

``LMS_HOME`` relocates everything under one directory, the socket and the pid lock included.
Otherwise platformdirs decides, with app name ``lms``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

APP_NAME = "lms"
# AF_UNIX paths are limited to 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


def home() -> Path | None:
    """The ``LMS_HOME`` directory, when set (an empty value counts as unset)."""
    value = os.environ.get("LMS_HOME", "")
    return Path(value).expanduser().absolute() if value else None


def config_dir() -> Path:
    root = home()
    return root / "config" if root else Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    root = home()
    return root / "data" if root else Path(platformdirs.user_data_dir(APP_NAME))


def log_dir() -> Path:
    root = home()
    return root / "logs" if root else Path(platformdirs.user_log_dir(APP_NAME))


def runtime_dir() -> Path:
    """Where the socket and pid lock live: never a world-writable /tmp path."""
    root = home()
    if root:
        return root / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and _is_private_dir(Path(xdg)):
        return Path(xdg) / APP_NAME
    return data_dir() / "run"


def _is_private_dir(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def config_file() -> Path:
    return config_dir() / "config.toml"


def tokens_file() -> Path:
    return config_dir() / "tokens.toml"


def mcp_file() -> Path:
    return config_dir() / "mcp.json"


def remote_key_file(name: str) -> Path:
    """The key file ``lms remote add NAME --key-stdin`` writes (0600, in a 0700 folder)."""
    return config_dir() / "remotes" / f"{name}.key"


def models_dir() -> Path:
    return data_dir() / "models"


def chats_db() -> Path:
    return data_dir() / "chats.sqlite3"


def usage_db() -> Path:
    return data_dir() / "usage.sqlite3"


def audit_log() -> Path:
    return data_dir() / "audit.jsonl"


def socket_path() -> Path:
    return runtime_dir() / "lms.sock"


def pid_file() -> Path:
    return runtime_dir() / "lms.pid"


def start_lock() -> Path:
    """Serialises CLIs that race to start the daemon."""
    return runtime_dir() / "start.lock"


def daemon_log() -> Path:
    return log_dir() / "daemon.log"


def lock_file_for(path: Path) -> Path:
    """The separate lock file guarding rewrites of a state file."""
    return path.with_name(path.name + ".lock")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) 0700, or check that an existing one is ours and 0700.

    Raises UnsafePathError, saying why, for a directory of another user or one that group or
    others can enter.
    """
    from lms.errors import UnsafePathError

    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise UnsafePathError(f"cannot create {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
            hint="remove it or point LMS_HOME elsewhere",
        )
    if st.st_mode & 0o077:
        raise UnsafePathError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; lms needs 0700",
            hint=f"run: chmod 700 {path}",
        )
    return path


def ensure_dir(path: Path) -> Path:
    """Create a state directory 0700 if missing (existing ones are left as they are)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def check_socket_path(path: Path) -> None:
    from lms.errors import UnsafePathError

    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UnsafePathError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes",
            hint="set LMS_HOME to a shorter directory",
        )
