"""The token registry, ``tokens.toml`` (README: Where state lives; Authentication): what ``lms
token ...`` edits.

Layout (0600, hashes only, never a secret)::

    generation = 7            # incremented by every write

    [[tokens]]
    id = "Ab3dE5fG"
    name = "ci"
    hash = "<sha256 hex of the whole token>"
    permissions = ["inference"]
    models = ["google/*"]     # glob allowlist, empty = every model
    created_at = 2026-01-01T00:00:00Z
    expires_at = 2027-01-31T00:00:00Z        # optional
    rpm = 60                                 # optional
    previous_hash = "<sha256 hex>"           # optional, during a rotation's grace period
    previous_hash_expires_at = 2026-01-02T00:00:00Z
    key_rule = 2                             # optional (1): the model-key rule of `models`

Every operation reads the file and rewrites it atomically while holding ``storage.locked``, so
concurrent CLIs never lose each other's writes and a writer killed at any moment leaves the old or
the new file, both whole. A file that cannot be read or does not validate raises
ConfigBrokenError naming it; writes refuse too, so a hand-damaged registry is never silently
replaced. A missing file is an empty registry.

Every change is appended to the audit log (``token_created``, ``token_edited``,
``token_rotated``, ``token_removed``) by the process that makes it, under the registry's lock and
before the write: a change is never made without its entry. When the audit log cannot be
written (a full disk) nothing changes, so a token is never stored whose secret was not shown, and
a rotation never invalidates a secret without handing out the new one.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from lms import paths, storage
from lms.auth import tokens, tomlsubset
from lms.auth.permissions import DEFAULT_PERMISSIONS, Permission, sorted_permissions
from lms.auth.record import (
    KEY_RULE,
    TokenRecord,
    check_models,
    check_name,
    check_permissions,
    check_rpm,
    from_toml,
)
from lms.auth.timespec import check_future, format_utc, utc_now
from lms.errors import ConfigBrokenError, ConflictError, InvalidRequestError, NotFoundError

_HEADER = b"# lms API token registry: managed by `lms token`. Hashes only, never a secret.\n\n"
_TOP_LEVEL = {"generation", "tokens"}


@dataclass(frozen=True, slots=True)
class RegistryState:
    """One parsed version of tokens.toml."""

    generation: int
    records: tuple[TokenRecord, ...]

    def by_id(self) -> dict[str, TokenRecord]:
        return {record.id: record for record in self.records}


EMPTY = RegistryState(generation=0, records=())


def parse(data: bytes, path: Path) -> RegistryState:
    """Parse and validate the bytes of tokens.toml; ConfigBrokenError names ``path`` and why."""
    try:
        text = data.decode("utf-8")
        # The fast reader returns None for anything but dump()'s own layout: tomllib decides.
        doc = tomlsubset.loads(text)
    except UnicodeDecodeError as exc:
        raise broken(path, f"not valid TOML: {exc}") from None
    if doc is None:
        import tomllib  # only off the fast path: reading the registry is every TAB's work

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise broken(path, f"not valid TOML: {exc}") from None
    if unknown := set(doc) - _TOP_LEVEL:
        raise broken(path, f"unknown key(s) {', '.join(sorted(unknown))}")
    generation = doc.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise broken(path, "generation must be a whole number")
    tables = doc.get("tokens", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise broken(path, "tokens must be [[tokens]] tables")
    records: list[TokenRecord] = []
    ids: set[str] = set()
    names: set[str] = set()
    for index, table in enumerate(tables, 1):
        where = f"token {table['id']!r}" if isinstance(table.get("id"), str) else f"token #{index}"
        try:
            record = from_toml(table)
        except ValueError as exc:
            raise broken(path, f"{where}: {exc}") from None
        if record.id in ids:
            raise broken(path, f"{where}: id used twice")
        if record.name in names:
            raise broken(path, f"{where}: name {record.name!r} used twice")
        ids.add(record.id)
        names.add(record.name)
        records.append(record)
    return RegistryState(generation=generation, records=tuple(records))


def check_location(path: Path) -> None:
    """Refuse a registry outside the default place whose folder does not exist.

    A registry named by ``auth.registry_file`` lives in a folder someone made (often on a shared
    filesystem): when it is gone (the share is not mounted) the registry is broken, not empty,
    and nothing creates the folder on the local disk in its place. The default's folder (the
    config dir) is made on demand.
    """
    if path.parent != paths.tokens_file().parent and not path.parent.is_dir():
        raise broken(path, f"its folder {path.parent} does not exist (is it mounted?)")


def read(path: Path) -> RegistryState:
    """Read tokens.toml (no lock: the file is always replaced whole). Missing file: empty;
    missing folder of a configured registry: ConfigBrokenError (:func:`check_location`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        check_location(path)
        return EMPTY
    except OSError as exc:
        raise broken(path, f"cannot be read: {exc.strerror}") from None
    return parse(data, path)


def dump(state: RegistryState) -> bytes:
    """The bytes of tokens.toml for ``state``."""
    doc: dict[str, Any] = {"generation": state.generation}
    if state.records:
        doc["tokens"] = [record.to_toml() for record in state.records]
    return _HEADER + tomli_w.dumps(doc).encode("utf-8")


def broken(path: Path, problem: str) -> ConfigBrokenError:
    """The ConfigBrokenError for a registry file that cannot be used."""
    return ConfigBrokenError(
        f"the token registry {path} is broken: {problem}",
        hint=f"fix or remove {path} (removing it revokes every token)",
    )


class Registry:
    """Operations on tokens.toml, for the CLI (``lms token ...``) and for tests.

    ``path`` defaults to the registry config.toml names (``auth.registry_file``, else
    ``tokens.toml``), resolved at each operation (so ``LMS_HOME`` and edits of config.toml are
    honoured; ConfigBrokenError while config.toml is broken);
    ``clock`` returns the aware UTC "now" (injectable for tests). Constructing does no I/O.
    Every method raises ConfigBrokenError when the file is broken.
    """

    def __init__(
        self, path: Path | None = None, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._path = path
        self._clock = clock

    @property
    def path(self) -> Path:
        if self._path is not None:
            return self._path
        from lms import config  # config.toml: only when no path was given

        return config.current_registry_file()

    # --- reading ------------------------------------------------------------------------------

    def state(self) -> RegistryState:
        """The whole registry as it is now (generation and records)."""
        return read(self.path)

    def list(self) -> builtins.list[TokenRecord]:
        """Every token, in creation order."""
        return builtins.list(self.state().records)

    def find(self, id_or_name: str) -> TokenRecord:
        """The token whose id is ``id_or_name``, else whose name is. NotFoundError otherwise."""
        return _resolve(self.state(), id_or_name)

    # --- writing ------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        permissions: Collection[Permission] | None = None,
        models: Sequence[str] = (),
        expires_at: datetime | None = None,
        rpm: int | None = None,
    ) -> tuple[TokenRecord, str]:
        """Mint a token: ``(record, full_token)``. Show ``full_token`` once; it is not stored.

        ``permissions`` None or empty gives :data:`DEFAULT_PERMISSIONS` (``inference``).
        ConflictError (exit 6) when the name is taken (or is another token's id);
        InvalidRequestError (exit 2) for a bad name, pattern, rpm or an expiry not in the future.
        """
        now = self._clock()
        check_name(name)
        perms = check_permissions(permissions) if permissions else DEFAULT_PERMISSIONS
        allowlist = check_models(models)
        if expires_at is not None:
            check_future(expires_at, now)
        if rpm is not None:
            check_rpm(rpm)
        with self._locked() as path:
            state = read(path)
            _check_name_free(state, name, own_id=None)
            taken = {r.id for r in state.records} | {r.name for r in state.records}
            token_id, full = tokens.generate()
            while token_id in taken:
                token_id, full = tokens.generate()
            record = TokenRecord(
                id=token_id,
                name=name,
                hash=tokens.hash_token(full),
                permissions=perms,
                models=allowlist,
                created_at=now.replace(microsecond=0),
                expires_at=expires_at,
                rpm=rpm,
                key_rule=KEY_RULE,
            )
            from lms.auth import audit  # config, json: only when writing

            audit.append(
                audit.AuditEvent.TOKEN_CREATED,
                token_id=record.id,
                name=record.name,
                permissions=sorted_permissions(record.permissions),
                models=list(record.models),
                expires_at=_iso(record.expires_at),
                rpm=record.rpm,
            )
            self._write(path, state, (*_pruned(state.records, now), record))
        return record, full

    def edit(
        self,
        id_or_name: str,
        *,
        name: str | None = None,
        permissions: Collection[Permission] | None = None,
        add_permissions: Collection[Permission] = (),
        remove_permissions: Collection[Permission] = (),
        models: Sequence[str] | None = None,
        all_models: bool = False,
        expires_at: datetime | None = None,
        no_expiry: bool = False,
        rpm: int | None = None,
        no_rpm: bool = False,
    ) -> TokenRecord:
        """Change a token; its secret (hash) stays the same. Returns the record as stored.

        ``permissions`` replaces the set, then ``add_permissions`` and ``remove_permissions``
        apply (removing every permission leaves a token that may only list models). ``models``
        replaces the allowlist, ``all_models`` empties it; ``no_expiry`` and ``no_rpm`` clear
        those limits. Giving a value together with its clearing flag, or nothing at all, is an
        InvalidRequestError. An edit that changes nothing writes nothing.
        """
        _exclusive("--model", models is not None, "--all-models", all_models)
        _exclusive("--expires", expires_at is not None, "--no-expiry", no_expiry)
        _exclusive("--rpm", rpm is not None, "--no-rpm", no_rpm)
        if (
            name is None
            and permissions is None
            and not add_permissions
            and not remove_permissions
            and models is None
            and not all_models
            and expires_at is None
            and not no_expiry
            and rpm is None
            and not no_rpm
        ):
            raise InvalidRequestError("nothing to change: give at least one option to edit")
        now = self._clock()
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = check_name(name)
        if models is not None or all_models:
            changes["models"] = () if all_models else check_models(models or ())
            changes["key_rule"] = KEY_RULE  # the allowlist is written under today's keys
        if expires_at is not None:
            check_future(expires_at, now)
            changes["expires_at"] = expires_at
        if no_expiry:
            changes["expires_at"] = None
        if rpm is not None:
            changes["rpm"] = check_rpm(rpm)
        if no_rpm:
            changes["rpm"] = None
        with self._locked() as path:
            state = read(path)
            old = _resolve(state, id_or_name)
            perms = check_permissions(permissions) if permissions is not None else old.permissions
            perms = (perms | check_permissions(add_permissions)) - set(remove_permissions)
            if perms != old.permissions:
                changes["permissions"] = perms
            if "name" in changes:
                _check_name_free(state, changes["name"], own_id=old.id)
            new = dataclasses.replace(old, **changes)
            diff = {
                key: [_jsonable(getattr(old, key)), _jsonable(getattr(new, key))]
                for key in changes
                if getattr(old, key) != getattr(new, key)
            }
            if not diff:
                return old
            from lms.auth import audit  # config, json: only when writing

            audit.append(
                audit.AuditEvent.TOKEN_EDITED, token_id=new.id, name=new.name, changes=diff
            )
            self._write(path, state, _replaced(_pruned(state.records, now), new))
        return new

    def rotate(self, id_or_name: str, grace: timedelta = timedelta(0)) -> tuple[TokenRecord, str]:
        """A new secret for the same token (id, name, permissions, limits kept).

        The old secret keeps working until ``now + grace``, then never again; ``grace`` 0 makes
        it invalid at once. Only the latest previous secret is kept: rotating again during a
        grace period ends the older secret's grace. Returns ``(record, new_full_token)``.
        """
        if grace < timedelta(0):
            raise InvalidRequestError("--grace cannot be negative", param="grace")
        now = self._clock()
        with self._locked() as path:
            state = read(path)
            old = _resolve(state, id_or_name)
            full = tokens.compose(old.id, tokens.random_secret())
            new = dataclasses.replace(
                old,
                hash=tokens.hash_token(full),
                previous_hash=old.hash if grace else None,
                previous_hash_expires_at=now + grace if grace else None,
            )
            from lms.auth import audit  # config, json: only when writing

            audit.append(
                audit.AuditEvent.TOKEN_ROTATED,
                token_id=new.id,
                name=new.name,
                grace_seconds=int(grace.total_seconds()),
                previous_valid_until=_iso(new.previous_hash_expires_at),
            )
            self._write(path, state, _replaced(_pruned(state.records, now), new))
        return new, full

    def remove(self, id_or_name: str) -> TokenRecord:
        """Revoke a token: it fails on the daemon's very next check. Returns what was removed."""
        now = self._clock()
        with self._locked() as path:
            state = read(path)
            old = _resolve(state, id_or_name)
            kept = tuple(r for r in _pruned(state.records, now) if r.id != old.id)
            from lms.auth import audit  # config, json: only when writing

            audit.append(audit.AuditEvent.TOKEN_REMOVED, token_id=old.id, name=old.name)
            self._write(path, state, kept)
        return old

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Path]:
        """Resolve the registry's path once for an operation, check its folder, hold its lock."""
        path = self.path
        check_location(path)
        with storage.locked(path):
            yield path

    def _write(self, path: Path, state: RegistryState, records: Iterable[TokenRecord]) -> None:
        # Temp files exist only while a writer holds the lock: any found now belong to a writer
        # that was killed mid-write.
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        new_state = RegistryState(generation=state.generation + 1, records=tuple(records))
        storage.write_atomic(path, dump(new_state), mode=0o600)


def _resolve(state: RegistryState, id_or_name: str) -> TokenRecord:
    for record in state.records:
        if record.id == id_or_name:
            return record
    for record in state.records:
        if record.name == id_or_name:
            return record
    if tokens.looks_like_token(id_or_name):
        raise InvalidRequestError(
            "that looks like a full token: give its id (the 8 characters after sk-lm-) or its "
            "name, never the secret"
        )
    raise NotFoundError(
        f"no token with id or name {tokens.shown(id_or_name)!r}",
        hint="see `lms token list`",
    )


def _check_name_free(state: RegistryState, name: str, own_id: str | None) -> None:
    for record in state.records:
        if record.id == own_id:
            continue
        if record.name == name:
            raise ConflictError(f"a token named {name!r} already exists (id {record.id})")
        if record.id == name:
            raise ConflictError(f"{name!r} is the id of another token; choose another name")


def _pruned(records: Iterable[TokenRecord], now: datetime) -> tuple[TokenRecord, ...]:
    """``records`` without rotation-grace hashes that can never be valid again."""
    return tuple(
        record
        if record.previous_hash is None or record.previous_hash_active(now)
        else dataclasses.replace(record, previous_hash=None, previous_hash_expires_at=None)
        for record in records
    )


def _replaced(records: Iterable[TokenRecord], new: TokenRecord) -> tuple[TokenRecord, ...]:
    return tuple(new if record.id == new.id else record for record in records)


def _exclusive(option: str, given: bool, flag: str, flagged: bool) -> None:
    if given and flagged:
        raise InvalidRequestError(f"{option} and {flag} cannot be used together")


def _iso(moment: datetime | None) -> str | None:
    return format_utc(moment) if moment else None


def _jsonable(value: object) -> Any:
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, frozenset):
        return sorted_permissions(value)
    if isinstance(value, tuple):
        return builtins.list(value)
    return value
