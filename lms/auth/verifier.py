"""The daemon's side of the registry: authenticate and authorize each request (README:
Authentication).

:class:`TokenVerifier` keeps the parsed tokens.toml in memory and, before every check, calls
:meth:`TokenVerifier.refresh`, which costs one ``stat`` when nothing changed. Any change the CLI
makes is therefore in force for the very next request: revocation, expiry, rotation, edits.

Noticing every change: the file's signature (inode, size, mtime_ns, ctime_ns) alone can miss a
write, because an atomic rename may reuse the inode and two writes in the same tick of the
kernel's coarse clock may leave identical times and sizes. So, like git's "racily clean" index,
while the loaded file's ctime is within :data:`RACY_WINDOW` of the moment it was read, refresh
also reads the file's bytes and compares them (a write always changes them: the registry bumps
its ``generation`` counter on every write). Once a content check happens later than that window,
any further write necessarily gets a later ctime, and the signature alone is trusted again.

Which file: the one config.toml names (``auth.registry_file``, else ``tokens.toml``; see
:func:`lms.config.registry_file_of`), looked up before every check, so a change of the setting
applies to the next request (the registry at the new path is then loaded). Several daemons
("gates", docs/GATES.md) naming one shared file honour the same tokens.

Fail closed: while the file is unreadable or invalid, while a configured registry's folder is
missing, or while config.toml is broken (so which registry is unknown), every check raises
ConfigBrokenError (503), until it is fixed.

The daemon uses it through :class:`lms.auth.gate.TokenGate` (HTTP routes and SDK calls alike)::

    record = verifier.authenticate(raw_token)                     # 401s
    verifier.authorize(record, access)                            # PermissionDeniedError: 403
    ...  # later, once the model key is resolved:
    verifier.authorize(record, access, model_key=resolved_key)    # ModelNotAllowedError: 403

Every refusal is an LmsError whose ``data`` carries ``reason`` and (when known) ``token_id`` for
the audit log (the gate counts it there only if :meth:`TokenVerifier.knows` the id); no message
contains a token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from lms import config, storage
from lms.auth import registry, tokens
from lms.auth.permissions import PUBLIC, Access, Permission
from lms.auth.record import TokenRecord
from lms.auth.timespec import format_utc, utc_now
from lms.errors import (
    ConfigBrokenError,
    ExpiredApiKeyError,
    InvalidApiKeyError,
    MissingApiKeyError,
    ModelNotAllowedError,
    PermissionDeniedError,
)

#: How long after a write the file signature is not trusted alone (coarse kernel clocks,
#: filesystems with 1-2 s timestamps, a small clock skew).
RACY_WINDOW_NS = 3_000_000_000

MISSING_MESSAGE = (
    "an API token is required: send it as 'Authorization: Bearer <token>' "
    "(create one with `lms token create NAME`)"
)
INVALID_MESSAGE = "the API token is not valid (unknown, revoked or replaced by a rotation)"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}

Signature = tuple[int, int, int, int] | None


class TokenVerifier:
    """Authenticates tokens against tokens.toml and authorizes them for an :data:`Access`.

    ``path``: a fixed file, or a function returning the file in force now (the daemon passes
    one that reads its config watcher; it may raise ConfigBrokenError). By default the registry
    config.toml names, followed through a watcher of its own (one ``stat`` per check).
    Constructing does no I/O; the first check loads the file. Not thread-safe: call it from the
    event loop (each call is a few microseconds).
    """

    def __init__(
        self,
        path: Path | Callable[[], Path] | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._locate = _locator(path)
        self._path: Path | None = None
        self._clock = clock
        self._wall_ns = wall_ns
        self._loaded = False
        self._signature: Signature = None
        self._data: bytes | None = None
        self._racy = True
        self._state = registry.EMPTY
        self._by_id: dict[str, TokenRecord] = {}
        self._error: ConfigBrokenError | None = None

    @property
    def path(self) -> Path | None:
        """The registry file last looked at (None before the first check, or while config.toml
        is broken)."""
        return self._path

    @property
    def generation(self) -> int:
        """The generation of the registry in force (refresh first for an up-to-date value)."""
        return self._state.generation

    @property
    def records(self) -> tuple[TokenRecord, ...]:
        """The tokens in force (for ``lms auth status``: count, health)."""
        return self._state.records

    @property
    def error(self) -> ConfigBrokenError | None:
        """Why the registry is broken, or None when it is healthy."""
        return self._error

    def status(self) -> dict[str, object]:
        """Registry health for ``lms auth status`` (refreshes first; never raises)."""
        with contextlib.suppress(ConfigBrokenError):
            self.refresh()
        return {
            "path": None if self._path is None else str(self._path),
            "healthy": self._error is None,
            "error": self._error.message if self._error else None,
            "generation": self._state.generation,
            "tokens": len(self._state.records),
        }

    def refresh(self) -> None:
        """Re-read tokens.toml if it changed since the last look; cheap when it did not.

        Raises ConfigBrokenError while the file is broken (and keeps no token valid meanwhile).
        """
        try:
            path = self._locate()
        except ConfigBrokenError as exc:
            self._path, self._loaded = None, False
            self._fail(exc)
            raise
        if path != self._path:
            self._path, self._loaded = path, False
        signature = storage.file_signature(path)
        missing_folder = signature is None and self._error is not None  # mounted since?
        if not self._loaded or signature != self._signature or missing_folder:
            self._load(path, signature)
        elif self._racy and signature is not None:
            self._recheck(path, signature)
        if self._error is not None:
            raise self._error

    def authenticate(self, raw_token: str | None, now: datetime | None = None) -> TokenRecord:
        """The record of a valid token, after :meth:`refresh`.

        Raises MissingApiKeyError (None or empty), InvalidApiKeyError (malformed, unknown id,
        wrong secret, revoked, a rotated-out secret past its grace), ExpiredApiKeyError, or
        ConfigBrokenError while the registry is broken. Expiry is only revealed to a caller that
        holds the right secret.
        """
        self.refresh()
        if raw_token is None or not raw_token.strip():
            raise MissingApiKeyError(MISSING_MESSAGE, headers=_CHALLENGE, data={"reason": "none"})
        try:
            token_id, _ = tokens.parse(raw_token)
        except InvalidApiKeyError as exc:
            exc.headers = dict(_INVALID_CHALLENGE)
            raise
        record = self._by_id.get(token_id)
        digest = tokens.hash_token(raw_token.strip())
        now = now or self._clock()
        if record is None:
            tokens.compare_hashes(digest, None)
            raise _invalid(token_id, "unknown_token")
        if not tokens.compare_hashes(digest, record.hash):
            previous = record.previous_hash_active(now)
            if not tokens.compare_hashes(digest, previous):
                stale = tokens.compare_hashes(digest, record.previous_hash)
                reason = "rotated_out" if stale else "wrong_secret"
                raise _invalid(token_id, reason)
        if record.is_expired(now):
            assert record.expires_at is not None
            raise ExpiredApiKeyError(
                f"the API token {token_id} expired at {format_utc(record.expires_at)}",
                hint="create a new one, or extend it: lms token edit ID --expires 30d",
                headers=dict(_INVALID_CHALLENGE),
                data={"reason": "expired", "token_id": token_id},
            )
        return record

    def knows(self, token_id: str) -> bool:
        """Whether ``token_id`` is the id of a token in the registry as last loaded."""
        return token_id in self._by_id

    def authorize(self, record: TokenRecord, access: Access, model_key: str | None = None) -> None:
        """Check that ``record`` may use a route or endpoint requiring ``access``.

        Raises PermissionDeniedError naming the missing permission, and ModelNotAllowedError
        when ``model_key`` (the model key AFTER resolution, never a client-chosen identifier) is
        not in the token's allowlist. Call it again with ``model_key`` once it is resolved.
        """
        if access is PUBLIC:
            return
        if isinstance(access, Permission) and access not in record.permissions:
            raise PermissionDeniedError(
                f"the API token {record.id} lacks the '{access}' permission",
                hint=f"grant it with: lms token edit {record.id} --add-perm {access}",
                data={"reason": "insufficient_permissions", "token_id": record.id},
            )
        if model_key is not None and not record.allows_model(model_key):
            raise ModelNotAllowedError(
                f"the API token {record.id} may not use the model {model_key!r}",
                hint=f"allowed models: {', '.join(record.models)}",
                data={"reason": "model_not_allowed", "token_id": record.id},
            )

    # --- loading --------------------------------------------------------------------------------

    def _load(self, path: Path, signature: Signature) -> None:
        # ``signature`` was taken before reading: if a write lands in between, the next refresh
        # sees a different signature and loads again (never the other way round).
        self._loaded = True
        self._signature = signature
        self._racy = self._is_racy(signature)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            self._data = None
            self._fail(registry.broken(path, f"cannot be read: {exc.strerror}"))
            return
        self._data = data
        try:
            if data is None:
                registry.check_location(path)
            state = registry.EMPTY if data is None else registry.parse(data, path)
        except ConfigBrokenError as exc:
            self._fail(exc)
            return
        self._state = state
        self._by_id = state.by_id()
        self._error = None

    def _recheck(self, path: Path, signature: Signature) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data != self._data:
            self._load(path, signature)
        else:
            self._racy = self._is_racy(signature)

    def _is_racy(self, signature: Signature) -> bool:
        if signature is None:
            return False
        ctime_ns = max(signature[2], signature[3])
        return self._wall_ns() - ctime_ns < RACY_WINDOW_NS

    def _fail(self, error: ConfigBrokenError) -> None:
        self._error = error
        self._state = registry.EMPTY
        self._by_id = {}


def _locator(path: Path | Callable[[], Path] | None) -> Callable[[], Path]:
    if isinstance(path, Path):
        fixed = path
        return lambda: fixed
    if path is not None:
        return path
    return config.registry_locator(config.ConfigWatcher({}))  # security: the file alone


def _invalid(token_id: str, reason: str) -> InvalidApiKeyError:
    return InvalidApiKeyError(
        INVALID_MESSAGE,
        hint="check the token with `lms token list` (ids are shown, secrets never)",
        headers=dict(_INVALID_CHALLENGE),
        data={"reason": reason, "token_id": token_id},
    )
