"""The token gate: the one place that checks a token for a request, for HTTP routes and SDK
socket calls alike (README: Authentication).

:meth:`TokenGate.admit` authenticates the presented token, authorizes it for the access the
route or endpoint requires, applies its rate limit and counts its use; :meth:`check_model`
refuses a resolved model outside the token's allowlist; :meth:`refuse` records any refusal
(these, and refusals decided elsewhere, such as the MCP gates) in the one
:class:`~lms.auth.refusals.RefusalRecorder`. Each caller says :class:`Where` the request came
from and went, which is also what refusals are counted by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lms.auth.permissions import Access
from lms.auth.ratelimit import RateLimiter
from lms.auth.record import TokenRecord
from lms.auth.refusals import TARPIT_AFTER, TARPIT_SECONDS, RefusalKey, RefusalRecorder, peer_class
from lms.auth.usage import UsageBuffer, UsageStore
from lms.auth.verifier import TokenVerifier
from lms.errors import AuthError, LmsError

#: Route of a request that matched no route.
UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class Where:
    """A checked request: ``method`` (an HTTP method, or ``WS`` for an SDK socket), ``route``
    (the matched route's template, or ``/<namespace>:<endpoint>``; never the raw path) and
    ``peer`` (the client's address, or None)."""

    method: str
    route: str
    peer: str | None = None


@dataclass
class TokenGate:
    """The daemon's token machinery: registry view, per-token limits, usage counts, refusals."""

    verifier: TokenVerifier = field(default_factory=TokenVerifier)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    usage: UsageBuffer = field(default_factory=lambda: UsageBuffer(UsageStore()))
    refusals: RefusalRecorder = field(default_factory=RefusalRecorder)
    tarpit_after: int = TARPIT_AFTER
    tarpit_seconds: float = TARPIT_SECONDS

    def admit(
        self, raw_token: str | None, access: Access, where: Where, *, is_request: bool = True
    ) -> TokenRecord:
        """The record of ``raw_token`` once it may pass; else the AuthError (recorded).

        MissingApiKeyError, InvalidApiKeyError, ExpiredApiKeyError, PermissionDeniedError,
        RateLimitedError; ConfigBrokenError (not recorded: nothing was refused to anyone in
        particular) while tokens.toml is broken. A request (``is_request``; not an SDK socket's
        auth packet) is rate-limited and counted against the token.
        """
        token_id: str | None = None
        try:
            record = self.verifier.authenticate(raw_token)
            token_id = record.id
            self.verifier.authorize(record, access)
            if is_request:
                self.limiter.hit(record)
        except AuthError as err:
            self.refuse(where, err, token_id, presented=bool(raw_token and raw_token.strip()))
            raise
        if is_request:
            self.usage.record_request(record.id)
        return record

    def refusal_delay(self, where: Where) -> float:
        """How long to hold a refusal's reply (seconds): 0, unless the peer's network has had
        more than ``tarpit_after`` refusals in this window. A flooding connection then waits
        for its answers instead of taking the event loop's time from valid clients."""
        refused = self.refusals.peer_refusals(peer_class(where.peer))
        return self.tarpit_seconds if refused > self.tarpit_after else 0.0

    def check_model(
        self, record: TokenRecord | None, access: Access, model_key: str, where: Where
    ) -> None:
        """Refuse (recorded) a resolved model key outside ``record``'s allowlist."""
        if record is None:
            return
        try:
            self.verifier.authorize(record, access, model_key=model_key)
        except AuthError as err:
            self.refuse(where, err, record.id)
            raise

    def record_tokens(
        self, record: TokenRecord | None, prompt: int | None, completion: int | None
    ) -> None:
        """Count a finished generation's tokens against ``record`` (nothing with auth off)."""
        if record is not None:
            self.usage.record_tokens(record.id, prompt, completion)

    def refuse(
        self, where: Where, err: LmsError, token_id: str | None = None, *, presented: bool = False
    ) -> None:
        """Count a refusal in the audit log, by a key the client cannot vary at will: the id
        of a registered token (``unknown`` for any other token presented, ``none`` without
        one), never the token itself."""
        claimed = token_id or err.data.get("token_id")
        if isinstance(claimed, str) and self.verifier.knows(claimed):
            shown = claimed
        elif claimed or presented:
            shown = "unknown"
        else:
            shown = "none"
        key = RefusalKey(
            peer=peer_class(where.peer),
            reason=err.code,
            method=where.method,
            route=where.route,
            token_id=shown,
        )
        self.refusals.record(key)
