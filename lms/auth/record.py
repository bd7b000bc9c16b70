"""One token of the registry, its validation and its tokens.toml form (hashes only).

Names: 1-64 characters, a letter or digit first, then letters, digits, ``.``, ``_``, ``-``. A name
may look like a token id (``frontend`` is 8 letters), since the CLI resolves ``ID|NAME`` with an
exact id match first; to keep every token reachable by its name, the registry refuses a name equal
to another token's id and never mints an id equal to an existing name.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import translate
from typing import Any

from lms.auth import tokens
from lms.auth.permissions import Permission, parse_permission, sorted_permissions
from lms.auth.timespec import format_utc
from lms.errors import InvalidRequestError
from lms.modelfolder import former_key, relative_path_of

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_GLOB_LENGTH = 256
MAX_RPM = 100_000
_HASH_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the registry stores it: never its secret.

    ``models`` is a glob allowlist matched case-sensitively (:func:`fnmatch.fnmatchcase` rules;
    ``*`` also crosses ``/``) against the resolved model key; empty allows every model.
    ``previous_hash`` is the hash before the last rotation, valid until
    ``previous_hash_expires_at``, then never again.

    ``key_rule`` is the model-key rule the allowlist was written under: 1 before lms took LM
    Studio's keys (a stored token without the field), 2 since (every token created, and every
    allowlist edited, now). See :meth:`allows_model`.
    """

    id: str
    name: str
    hash: str
    permissions: frozenset[Permission]
    models: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None = None
    rpm: int | None = None
    previous_hash: str | None = None
    previous_hash_expires_at: datetime | None = None
    key_rule: int = 1
    _model_re: re.Pattern[str] | None = field(
        init=False, default=None, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.models:
            pattern = "|".join(f"(?:{translate(glob)})" for glob in self.models)
            object.__setattr__(self, "_model_re", re.compile(pattern))

    def is_expired(self, now: datetime) -> bool:
        """Whether the token has expired at ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def has_permission(self, permission: Permission) -> bool:
        return permission in self.permissions

    def allows_model(self, model_key: str) -> bool:
        """Whether the allowlist admits the resolved ``model_key`` (empty allowlist: all).

        An allowlist written under LM Studio's keys (``key_rule`` 2) matches a glob against the
        key, the model's path relative to the models folder (README: Model keys: ``google/*``
        admits whatever lies in the ``google`` folder), or the key lms gave the model before.
        One written before (``key_rule`` 1) matches only that former key, as it did then: an
        existing token neither loses a model nor gains one when the keys changed.
        """
        if self._model_re is None:
            return True
        path = relative_path_of(model_key)
        if self.key_rule < 2:
            former = model_key if path is None else former_key(path)
            return self._model_re.fullmatch(former) is not None
        names = (model_key,) if path is None else (model_key, path, former_key(path))
        return any(self._model_re.fullmatch(name) for name in names)

    def allowed_models(self, model_keys: Iterable[str]) -> list[str]:
        """The keys of ``model_keys`` this token may see and use, in their order."""
        return [key for key in model_keys if self.allows_model(key)]

    def previous_hash_active(self, now: datetime) -> str | None:
        """The rotation-grace hash still accepted at ``now``, if any."""
        until = self.previous_hash_expires_at
        if self.previous_hash is None or until is None or now >= until:
            return None
        return self.previous_hash

    def public_dict(self) -> dict[str, Any]:
        """Stable JSON-ready view for listings (``lms token list --json``): no hashes."""
        return {
            "id": self.id,
            "name": self.name,
            "permissions": sorted_permissions(self.permissions),
            "models": list(self.models),
            "rpm": self.rpm,
            "created_at": format_utc(self.created_at),
            "expires_at": format_utc(self.expires_at) if self.expires_at else None,
            "rotation_grace_until": (
                format_utc(self.previous_hash_expires_at)
                if self.previous_hash and self.previous_hash_expires_at
                else None
            ),
        }

    def to_toml(self) -> dict[str, Any]:
        """The table stored in tokens.toml (optional fields only when set)."""
        table: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "hash": self.hash,
            "permissions": sorted_permissions(self.permissions),
            "models": list(self.models),
            "created_at": self.created_at,
        }
        if self.expires_at is not None:
            table["expires_at"] = self.expires_at
        if self.rpm is not None:
            table["rpm"] = self.rpm
        if self.previous_hash is not None and self.previous_hash_expires_at is not None:
            table["previous_hash"] = self.previous_hash
            table["previous_hash_expires_at"] = self.previous_hash_expires_at
        if self.key_rule != 1:
            table["key_rule"] = self.key_rule
        return table


# --- validation of user input (InvalidRequestError, exit 2) -------------------------------------


def check_name(name: str) -> str:
    """A valid token name, or InvalidRequestError saying the rule."""
    if not NAME_RE.fullmatch(name):
        shown = "" if tokens.looks_like_token(name) else f" {tokens.shown(name)!r}"
        raise InvalidRequestError(f"invalid token name{shown}: {NAME_RULE}", param="name")
    return name


def check_models(globs: Iterable[str]) -> tuple[str, ...]:
    """A valid, de-duplicated glob allowlist (order kept)."""
    result: list[str] = []
    for glob in globs:
        glob = glob.strip()
        if not glob or len(glob) > MAX_GLOB_LENGTH or any(c.isspace() for c in glob):
            raise InvalidRequestError(
                f"invalid model pattern {tokens.shown(glob)!r}: a model key or a glob such as "
                "'google/*', without spaces",
                param="model",
            )
        if glob not in result:
            result.append(glob)
    return tuple(result)


def check_rpm(rpm: int) -> int:
    if isinstance(rpm, bool) or not isinstance(rpm, int) or not 0 < rpm <= MAX_RPM:
        raise InvalidRequestError(
            f"--rpm must be a whole number from 1 to {MAX_RPM}, not {rpm!r}", param="rpm"
        )
    return rpm


def check_permissions(permissions: Collection[Permission | str]) -> frozenset[Permission]:
    """Permissions (or their names) as a set; InvalidRequestError names an unknown one."""
    return frozenset(p if isinstance(p, Permission) else parse_permission(p) for p in permissions)


# --- tokens.toml form (ValueError, turned into ConfigBrokenError by the registry) ----------------

_REQUIRED = {"id", "name", "hash", "permissions", "models", "created_at"}
_OPTIONAL = {"expires_at", "rpm", "previous_hash", "previous_hash_expires_at", "key_rule"}
#: The model-key rule of tokens made or given an allowlist now (see TokenRecord).
KEY_RULE = 2


def from_toml(table: Mapping[str, Any]) -> TokenRecord:
    """Parse and validate one ``[[tokens]]`` table; ValueError says what is wrong."""
    keys = set(table)
    if missing := _REQUIRED - keys:
        raise ValueError(f"missing {', '.join(sorted(missing))}")
    if unknown := keys - _REQUIRED - _OPTIONAL:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
    token_id = table["id"]
    if not isinstance(token_id, str) or not tokens.is_token_id(token_id):
        raise ValueError("id must be 8 letters or digits")
    name = table["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"name: {NAME_RULE}")
    perms = table["permissions"]
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise ValueError("permissions must be a list of names")
    try:
        permissions = frozenset(Permission(p) for p in perms)
    except ValueError as exc:
        raise ValueError(f"permissions: {exc}") from None
    models = table["models"]
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ValueError("models must be a list of patterns")
    rpm = table.get("rpm")
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm <= 0):
        raise ValueError("rpm must be a whole number above 0")
    previous_hash = table.get("previous_hash")
    previous_until = _moment(table, "previous_hash_expires_at")
    if (previous_hash is None) != (previous_until is None):
        raise ValueError("previous_hash and previous_hash_expires_at go together")
    key_rule = table.get("key_rule", 1)
    if isinstance(key_rule, bool) or key_rule not in (1, KEY_RULE):
        raise ValueError(f"key_rule must be 1 or {KEY_RULE}")
    created_at = _moment(table, "created_at")
    assert created_at is not None
    return TokenRecord(
        id=token_id,
        name=name,
        hash=_digest(table["hash"], "hash"),
        permissions=permissions,
        models=tuple(models),
        created_at=created_at,
        expires_at=_moment(table, "expires_at"),
        rpm=rpm,
        previous_hash=None if previous_hash is None else _digest(previous_hash, "previous_hash"),
        previous_hash_expires_at=previous_until,
        key_rule=key_rule,
    )


def _digest(value: object, key: str) -> str:
    if not isinstance(value, str) or not _HASH_RE.fullmatch(value):
        raise ValueError(f"{key} must be a SHA-256 hex digest")
    return value


def _moment(table: Mapping[str, Any], key: str) -> datetime | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{key} must be a date-time with an offset, e.g. 2027-01-31T00:00:00Z")
    return value.astimezone(UTC)
