"""The rules of ``lms remote add`` and ``rm`` (:mod:`lms.cli.remote`): what an edit of
config.toml's ``[remotes.NAME]`` tables checks, and the key files it writes and removes.

An upstream's key is read here from stdin only, written 0600 in a 0700 folder, and never put
into a message, an error or the audit log (which records a remote's URLs and key file path).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lms import config, paths
from lms.cli import render
from lms.errors import ConflictError, InvalidParameterError, SettingError

if TYPE_CHECKING:
    from lms.remoteconfig import RemoteSpec

#: The option of ``lms remote add`` behind each field of a ``[remotes.NAME]`` table, so that an
#: error of :func:`lms.remoteconfig.parse_remote` names what the user typed.
_OPTIONS = {
    "urls": "URL",
    "key_file": "--key-file",
    "models": "--model",
    "ca_file": "--ca-file",
    "timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
    "idle_timeout": "--idle-timeout",
    "max_concurrent": "--max-concurrent",
    "health_path": "--health-path",
}


def parse(name: str, table: dict[str, Any]) -> RemoteSpec:
    """The validated spec; a SettingError names the option (or argument) that is wrong."""
    from lms import remoteconfig

    try:
        return remoteconfig.parse_remote(name, table)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        option = _OPTIONS.get(field)
        if option is None:
            raise SettingError(f"remote {name}: {exc}") from None
        raise SettingError(f"{option}: {problem}", param=field) from None


def checked_key_file(text: str) -> str:
    """The absolute path of a key file the daemon will accept, checked now so that the operator
    learns of a bad mode or owner at once (a SettingError says what is wrong, never the key)."""
    from lms import remoteconfig

    path = Path(text).expanduser().absolute()
    try:
        remoteconfig.read_key(str(path))
    except remoteconfig.KeyFileError as exc:
        raise SettingError(f"--key-file: {exc}", param="key_file") from None
    return str(path)


def checked_ca_file(text: str) -> str:
    """The absolute path of a PEM file of CA certificates that loads."""
    import ssl

    path = Path(text).expanduser().absolute()
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "not a PEM file of CA certificates"
        raise SettingError(f"--ca-file: cannot use {path}: {reason}", param="ca_file") from None
    return str(path)


def check_free(name: str, current: tuple[RemoteSpec, ...], *, replace: bool) -> RemoteSpec | None:
    """The remote ``name`` replaces (None: a new one); ConflictError when it exists and
    ``replace`` is off, SettingError when a new one would pass the bound."""
    from lms import remoteconfig

    old = next((spec for spec in current if spec.name == name), None)
    if old is not None and not replace:
        raise ConflictError(
            f"a remote named {name!r} already exists ({', '.join(old.urls)})",
            hint=f"pass --replace to replace it, or remove it first: lms remote rm {name}",
        )
    if old is None and len(current) >= remoteconfig.MAX_REMOTES:
        raise SettingError(f"config.toml already holds {remoteconfig.MAX_REMOTES} remotes")
    return old


def refuse_publisher_clash(name: str) -> None:
    """Refuse a name that is a publisher of local models: ``NAME/<id>`` would clash with the
    keys ``publisher/model`` (compared case-insensitively, as a models folder may spell it)."""
    from lms import modelfolder

    root = config.current_models_dir()
    taken = {modelfolder.LOCAL_PUBLISHER}
    with contextlib.suppress(OSError):  # no models folder (yet): nothing is taken there
        taken |= {e.name.lower() for e in root.iterdir() if e.is_dir() and e.name[0] != "."}
    # type_of: keys without the embedding prefix (it never adds a publisher); no header read.
    for found in modelfolder.scan(root, type_of=lambda _path: None).models:
        if "/" in found.key:
            taken.add(found.key.split("/", 1)[0].lower())
    if name.lower() in taken:
        raise ConflictError(
            f"{name!r} is a publisher of local models in {root}: their keys {name}/... would"
            f" clash with the remote's models {name}/<id>",
            hint="choose another name for the remote",
        )


def read_key_from_stdin() -> str:
    """One line from stdin (without echo on a terminal); the key itself is never in a message."""
    from lms.remoteconfig import MAX_KEY_BYTES

    if render.is_interactive():
        import getpass

        text = getpass.getpass("API key of the server (not shown): ")
    else:
        text = sys.stdin.readline(MAX_KEY_BYTES + 2)
    key = text.strip()
    if not key:
        raise InvalidParameterError(
            "--key-stdin: no key on stdin",
            hint="pipe it in: lms remote add NAME URL --key-stdin < file-with-the-key",
            param="key_stdin",
        )
    if len(key) > MAX_KEY_BYTES or any(not 0x21 <= ord(char) <= 0x7E for char in key):
        raise InvalidParameterError(
            f"--key-stdin: a key is one line of 1-{MAX_KEY_BYTES} printable ASCII characters,"
            " without spaces",
            param="key_stdin",
        )
    return key


def write_key(path: Path, key: str) -> None:
    """Write the key file 0600 in the 0700 folder of managed keys (atomically; only under
    config.toml's lock, which every writer of these files holds), then read it back with the
    daemon's own reader."""
    from lms import remoteconfig, storage

    paths.ensure_private_dir(path.parent)
    storage.write_atomic(path, (key + "\n").encode("ascii"), mode=0o600)
    remoteconfig.read_key(str(path))


def drop_managed_key(old: RemoteSpec, remotes: tuple[RemoteSpec, ...]) -> Path | None:
    """Remove the key file ``--key-stdin`` wrote for ``old`` once no remote names it any more;
    a key file of the user's own (``--key-file``) is never touched. Returns the removed path."""
    managed = paths.remote_key_file(old.name)
    if not old.key_file or Path(old.key_file).expanduser() != managed:
        return None
    if any(spec.key_file and Path(spec.key_file).expanduser() == managed for spec in remotes):
        return None
    managed.unlink(missing_ok=True)
    return managed


def audit_change(name: str, old: RemoteSpec | None, new: RemoteSpec | None) -> None:
    # Before the write, under config.toml's lock, as for the other security settings.
    from lms.auth import audit

    audit.append(audit.AuditEvent.REMOTE_CHANGED, name=name, old=_view(old), new=_view(new))


def _view(spec: RemoteSpec | None) -> dict[str, Any] | None:
    """What the audit log records of a remote: where it points, never its key."""
    if spec is None:
        return None
    return {"urls": list(spec.urls), "models": list(spec.models), "key_file": spec.key_file}


def warn_about_exposure(spec: RemoteSpec) -> None:
    if not config.read_file().get("auth.required", False):
        render.warn(
            "authentication is off: any client of the server may use this remote"
            " (turn it on: lms auth require on)"
        )
    insecure = [url for url in spec.urls if url.startswith("http://") and not _is_local(url)]
    if spec.key_file and insecure:
        render.warn(f"the key goes unencrypted over the network to {', '.join(insecure)}")


def _is_local(url: str) -> bool:
    import ipaddress
    import urllib.parse

    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
