"""In-band authentication of an SDK socket, and the token check of every call on it (SPEC §4).

The upgrade of the five SDK paths is public; the client's first text frame must then be the auth
packet ``{"authVersion": 1, "clientIdentifier": ..., "clientPasskey": ...}`` within
:data:`AUTH_TIMEOUT` seconds. A token travels as identifier = its 8-character id and passkey =
its 20-character secret; a guest (no token) sends ``guest:<uuid>`` and a random passkey.

With ``auth.required`` on, the packet must carry a valid token. After that, **every** call is
checked again through the verifier (which notices any change of tokens.toml), so a token revoked,
expired or stripped of a permission while the socket is open is refused on its next call. With
auth off, every well-formed packet is accepted and any token in it is ignored (clients send dummy
ones), as on the HTTP routes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lms.api.state import AUTH, CONFIG
from lms.auth import audit
from lms.auth.permissions import Access, sdk_access_for
from lms.auth.record import TokenRecord
from lms.auth.tokens import token_from_sdk_auth
from lms.errors import AuthError, InvalidRequestError, LmsError, MissingApiKeyError

log = logging.getLogger("lms.auth")

#: Seconds a client has, after the upgrade, to send its auth packet.
AUTH_TIMEOUT = 10.0
#: Longest identifier or passkey accepted (as LM Studio's own server).
MAX_FIELD = 256

SDK_MISSING_MESSAGE = (
    "this server requires an API token: pass api_token='sk-lm-...' to lmstudio.Client"
    " (or set LMSTUDIO_API_TOKEN)"
)
SDK_MISSING_HINT = "create a token with: lms token create NAME"


@dataclass(frozen=True)
class Client:
    """Who opened a socket: the token of its auth packet (None for a guest) and the key that
    scopes its uploaded files: a digest of identifier and passkey, which every socket of one SDK
    client shares and nobody else can present."""

    token: str | None
    scope: str

    @property
    def token_id(self) -> str | None:
        return self.token[6:14] if self.token else None


def read_packet(text: str) -> Client:
    """The client described by an auth packet; InvalidRequestError says what is wrong with it."""
    try:
        packet = json.loads(text)
    except ValueError:
        packet = None
    if not isinstance(packet, dict) or packet.get("authVersion") != 1:
        raise InvalidRequestError(
            "the first message must be the SDK's authentication packet"
            ' {"authVersion": 1, "clientIdentifier": ..., "clientPasskey": ...}'
        )
    identifier = packet.get("clientIdentifier")
    passkey = packet.get("clientPasskey")
    for name, value in (("clientIdentifier", identifier), ("clientPasskey", passkey)):
        if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD:
            raise InvalidRequestError(
                f"the authentication packet's {name} must be a string of 1 to {MAX_FIELD}"
                " characters"
            )
    assert isinstance(identifier, str) and isinstance(passkey, str)
    digest = hashlib.sha256(f"{identifier}\0{passkey}".encode()).hexdigest()
    return Client(token=token_from_sdk_auth(identifier, passkey), scope=digest)


class Gate:
    """The token checks of one socket of namespace ``namespace``."""

    def __init__(self, app: web.Application, namespace: str, client: Client) -> None:
        self.app = app
        self.namespace = namespace
        self.client = client

    def admit(self) -> None:
        """Check the auth packet: with auth on, its token must be valid (any permission)."""
        if not self.app[CONFIG].current().auth_required:
            return
        self._authenticate("auth")

    def authorize(self, endpoint: str, access: Access) -> TokenRecord | None:
        """The record of the token allowed to call ``endpoint`` (None with auth off); raises an
        AuthError (audited) for a token that is missing, no longer valid, lacks the permission
        or is over its rate. ConfigBrokenError while a security file is broken (fail closed)."""
        if not self.app[CONFIG].current().auth_required:
            return None
        guard = self.app[AUTH]
        record = self._authenticate(endpoint)
        try:
            guard.verifier.authorize(record, access)
            guard.limiter.hit(record)
        except AuthError as err:
            self.refused(endpoint, err, record.id)
            raise
        guard.usage.record_request(record.id)
        return record

    def check_model(self, record: TokenRecord | None, endpoint: str, model_key: str) -> None:
        """Refuse a resolved model key outside the token's allowlist (audited)."""
        if record is None:
            return
        try:
            self.app[AUTH].verifier.authorize(
                record, sdk_access_for(self.namespace, endpoint), model_key=model_key
            )
        except AuthError as err:
            self.refused(endpoint, err, record.id)
            raise

    def record_tokens(self, record: TokenRecord | None, prompt: int, completion: int) -> None:
        if record is not None:
            self.app[AUTH].usage.record_tokens(record.id, prompt, completion)

    def refused(self, endpoint: str, err: LmsError, token_id: str | None) -> None:
        """Audit a refusal of this socket (never the token itself)."""
        token_id = token_id or err.data.get("token_id") or self.client.token_id
        route = f"/{self.namespace}:{endpoint}"
        try:
            audit.request_refused(token_id, "WS", route, err.code)
        except OSError:
            log.exception("cannot write the audit log")
        log.info("refused WS %s: %s (token %s)", route, err.code, token_id or "none")

    def _authenticate(self, endpoint: str) -> TokenRecord:
        try:
            return self.app[AUTH].verifier.authenticate(self.client.token)
        except MissingApiKeyError as err:
            sdk_err = MissingApiKeyError(SDK_MISSING_MESSAGE, hint=SDK_MISSING_HINT, data=err.data)
            self.refused(endpoint, sdk_err, None)
            raise sdk_err from None
        except AuthError as err:
            self.refused(endpoint, err, None)
            raise


def failure_text(err: LmsError) -> str:
    """The ``error`` string of a refused auth packet (the SDK shows it as the cause)."""
    return f"{err.message} ({err.hint})" if err.hint else err.message


def packet_reply(err: LmsError | None) -> dict[str, Any]:
    if err is None:
        return {"success": True}
    return {"success": False, "error": failure_text(err)}
