"""The API token format (README: Authentication): ``sk-lm-<id>:<secret>``.

``<id>`` is 8 characters ``[A-Za-z0-9]``: public, shown in listings, logs and the audit log.
``<secret>`` is 20 characters ``[A-Za-z0-9]`` from :mod:`secrets` (about 119 bits). This is exactly
LM Studio's shape, which the official SDKs validate client-side.

Only :func:`hash_token` of the whole token is ever stored. A single SHA-256 is enough for a
machine-generated secret of this entropy (a slow KDF would only add latency to every request), and
:func:`compare_hashes` compares digests with :func:`hmac.compare_digest`.

Nothing in this module puts a token, or any part of a secret, into an error message: a malformed
value is never echoed, and :func:`redact` scrubs token-shaped text from anything that is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from lms.errors import InvalidApiKeyError

PREFIX = "sk-lm-"
ID_LENGTH = 8
SECRET_LENGTH = 20
ALPHABET = string.ascii_letters + string.digits

_ID = f"[A-Za-z0-9]{{{ID_LENGTH}}}"
TOKEN_RE = re.compile(rf"sk-lm-({_ID}):([A-Za-z0-9]{{{SECRET_LENGTH}}})")
ID_RE = re.compile(_ID)
# Anything that starts like a token, even a truncated or over-long one: used to scrub text.
_TOKENISH_RE = re.compile(r"sk-lm-([A-Za-z0-9]{0,8})(:[^\s\"',;&]*)?")

#: A hash no token can have, compared against when the id is unknown so that every failed
#: lookup costs the same work as a real comparison.
_DUMMY_HASH = "0" * 64

MALFORMED_MESSAGE = (
    "the API token is malformed: lms tokens look like sk-lm-<8 letters or digits>:<20 letters "
    "or digits>"
)


def generate() -> tuple[str, str]:
    """A fresh token: ``(token_id, full_token)``. Show ``full_token`` once; store its hash only."""
    token_id = random_id()
    return token_id, compose(token_id, random_secret())


def random_id() -> str:
    """A random 8-character token id (the registry retries on the rare collision)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH))


def random_secret() -> str:
    """A random 20-character secret."""
    return "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))


def compose(token_id: str, secret: str) -> str:
    """The full token ``sk-lm-<id>:<secret>`` (rotation keeps the id, changes the secret)."""
    return f"{PREFIX}{token_id}:{secret}"


def parse(value: str) -> tuple[str, str]:
    """Split a full token into ``(token_id, secret)``.

    Surrounding whitespace is ignored (as the SDK does). Raises InvalidApiKeyError, whose message
    never contains ``value``, when the value is not a well-formed token.
    """
    match = TOKEN_RE.fullmatch(value.strip())
    if match is None:
        raise InvalidApiKeyError(MALFORMED_MESSAGE, data={"reason": "malformed"})
    return match.group(1), match.group(2)


def is_token_id(value: str) -> bool:
    """Whether ``value`` has the shape of a token id (8 letters or digits)."""
    return ID_RE.fullmatch(value) is not None


def looks_like_token(value: str) -> bool:
    """Whether ``value`` looks like (a piece of) a full token: it must never be echoed."""
    return _TOKENISH_RE.search(value) is not None


def hash_token(full_token: str) -> str:
    """SHA-256 hex digest of the whole token (what tokens.toml stores)."""
    return hashlib.sha256(full_token.encode("utf-8")).hexdigest()


def compare_hashes(actual: str, expected: str | None) -> bool:
    """Constant-time comparison of two hex digests (None never matches)."""
    matches = hmac.compare_digest(actual, expected or _DUMMY_HASH)
    return matches and expected is not None


def redact(text: str) -> str:
    """``text`` with every token-shaped substring reduced to its public id: ``sk-lm-<id>:***``."""
    if PREFIX not in text:
        return text
    return _TOKENISH_RE.sub(lambda m: f"{PREFIX}{m.group(1)}:***", text)


def shown(value: str, limit: int = 64) -> str:
    """A user-supplied value made safe to quote in an error message: redacted and shortened."""
    value = redact(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def token_from_header(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header value, or None when there is none.

    ``Bearer`` is matched case-insensitively (RFC 7235). A header with another scheme, or a
    Bearer header with nothing after it, raises InvalidApiKeyError (never echoing the header).
    For ``x-api-key`` (Anthropic clients on ``/v1/messages``) pass the header value directly to
    the verifier instead.
    """
    if authorization is None or not authorization.strip():
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidApiKeyError(
            "the Authorization header must use the Bearer scheme: 'Authorization: Bearer <token>'",
            data={"reason": "bad_scheme"},
        )
    credentials = credentials.strip()
    if not credentials:
        raise InvalidApiKeyError(MALFORMED_MESSAGE, data={"reason": "malformed"})
    return credentials


def token_from_sdk_auth(client_identifier: object, client_passkey: object) -> str | None:
    """The token carried by an SDK auth packet (``clientIdentifier``, ``clientPasskey``).

    A guest packet (identifier ``guest:<uuid>``, or the bare uuid older SDKs send) carries no
    token: None. Anything else is reassembled into ``sk-lm-<id>:<passkey>``; the verifier then
    rejects it if it is malformed.
    """
    if not isinstance(client_identifier, str) or not isinstance(client_passkey, str):
        return None
    if not is_token_id(client_identifier):
        return None
    return f"{PREFIX}{client_identifier}:{client_passkey}"
