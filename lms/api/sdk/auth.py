"""In-band authentication of an SDK socket, and the token check of every call on it (README:
Authentication).

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
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lms import payload
from lms.api.state import AUTH, CONFIG
from lms.auth.gate import Where
from lms.auth.permissions import ANY_TOKEN, Access, sdk_access_for
from lms.auth.record import TokenRecord
from lms.auth.tokens import token_from_sdk_auth
from lms.errors import (
    InvalidJsonError,
    InvalidRequestError,
    LmsError,
    MissingApiKeyError,
    ModelNotAllowedError,
)

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
    """The client described by an auth packet; InvalidRequestError (or the payload bounds'
    InvalidJsonError / InvalidParameterError) says what is wrong with it."""
    what = "the authentication packet"
    try:
        packet = json.loads(text)
    except ValueError:
        packet = None
    except RecursionError:
        raise InvalidJsonError(f"{what} is nested deeper than {payload.MAX_DEPTH} levels") from None
    payload.check(packet, what=what)  # depth, surrogates, numbers: a 400 naming the field
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


class SocketAuth:
    """The token checks of one socket of namespace ``namespace``, made by the app's
    :class:`~lms.auth.gate.TokenGate` (``peer``: the client's address, for the refusal count)."""

    def __init__(
        self, app: web.Application, namespace: str, client: Client, peer: str | None = None
    ) -> None:
        self.app = app
        self.namespace = namespace
        self.client = client
        self.peer = peer

    def admit(self) -> None:
        """Check the auth packet: with auth on, its token must be valid (any permission)."""
        if not self.app[CONFIG].current().auth_required:
            return
        self._admit("auth", ANY_TOKEN, is_request=False)

    def authorize(self, endpoint: str, access: Access) -> TokenRecord | None:
        """The record of the token allowed to call ``endpoint`` (None with auth off); raises an
        AuthError (counted) for a token that is missing, no longer valid, lacks the permission
        or is over its rate. ConfigBrokenError while a security file is broken (fail closed)."""
        if not self.app[CONFIG].current().auth_required:
            return None
        return self._admit(endpoint, access, is_request=True)

    def check_model(self, record: TokenRecord | None, endpoint: str, model_key: str) -> None:
        """Refuse a resolved model key outside the token's allowlist (counted)."""
        if record is None:
            return
        access = sdk_access_for(self.namespace, endpoint)
        self.app[AUTH].check_model(record, access, model_key, self.where(endpoint))

    def record_tokens(
        self, record: TokenRecord | None, prompt: int | None, completion: int | None
    ) -> None:
        self.app[AUTH].record_tokens(record, prompt, completion)

    def hidden(self, record: TokenRecord, endpoint: str, query: str) -> None:
        """Count (in the audit log only) that ``query`` named a model or instance outside the
        token's allowlist: the client got the same answer as for a missing one."""
        err = ModelNotAllowedError(f'"{query}" is outside the allowlist')
        self.app[AUTH].refuse(self.where(endpoint), err, record.id)

    def refused(self, endpoint: str, err: LmsError) -> None:
        """Count a refusal of this socket that the gate did not decide (a malformed packet)."""
        presented = self.client.token is not None
        self.app[AUTH].refuse(self.where(endpoint), err, None, presented=presented)

    def where(self, endpoint: str) -> Where:
        return Where("WS", f"/{self.namespace}:{endpoint}", self.peer)

    def _admit(self, endpoint: str, access: Access, *, is_request: bool) -> TokenRecord:
        where = self.where(endpoint)
        try:
            return self.app[AUTH].admit(self.client.token, access, where, is_request=is_request)
        except MissingApiKeyError as err:
            # The SDK's user sets a token differently than an HTTP client: say how.
            raise MissingApiKeyError(
                SDK_MISSING_MESSAGE, hint=SDK_MISSING_HINT, data=err.data
            ) from None


def failure_text(err: LmsError) -> str:
    """The ``error`` string of a refused auth packet (the SDK shows it as the cause)."""
    return f"{err.message} ({err.hint})" if err.hint else err.message


def packet_reply(err: LmsError | None) -> dict[str, Any]:
    if err is None:
        return {"success": True}
    return {"success": False, "error": failure_text(err)}
