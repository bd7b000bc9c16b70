"""The one error table of lms.

Every error a user can see is an :class:`LmsError` subclass carrying a stable ``code``, the HTTP
status the daemon answers with, the exit code the CLI ends with and the ``type`` of the API error
envelope. The daemon renders them (``protocol.error_body``), the client rebuilds them from
``code`` (:func:`from_code`) and the CLI's root group prints them. No other place converts errors.
"""

from __future__ import annotations

import builtins
from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    """Exit codes of the ``lms`` command (README: Command reference)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_RUNNING = 3
    AUTH = 4
    NOT_FOUND = 5
    CONFLICT = 6
    INTERRUPTED = 130


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the operation failed",
    ExitCode.USAGE: "bad usage: unknown option, bad value, invalid setting",
    ExitCode.NOT_RUNNING: "the daemon or the server is not running",
    ExitCode.AUTH: "authentication or permission refused",
    ExitCode.NOT_FOUND: "not found (model, token, instance)",
    ExitCode.CONFLICT: "conflict: name taken, port in use, another daemon holds the lock",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class LmsError(Exception):
    """Base of every error lms reports to a user or a client."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[ExitCode] = ExitCode.FAILED
    type: ClassVar[str] = "internal_error"
    anthropic_type: ClassVar[str] = "api_error"

    _registry: ClassVar[dict[str, builtins.type[LmsError]]] = {}

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param
        self.headers = headers or {}
        self.data = data or {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The first class that declares a code owns it; subclasses that only refine
        # behaviour keep their parent's code.
        if "code" in cls.__dict__:
            if cls.code in LmsError._registry:
                raise TypeError(f"error code {cls.code!r} declared twice")
            LmsError._registry[cls.code] = cls

    def __str__(self) -> str:
        return self.message


# --- bad input -------------------------------------------------------------------------------


class InvalidRequestError(LmsError):
    """A request or command argument is malformed (400 / exit 2)."""

    code = "invalid_request"
    status = 400
    exit_code = ExitCode.USAGE
    type = "invalid_request"
    anthropic_type = "invalid_request_error"


class InvalidJsonError(InvalidRequestError):
    code = "invalid_json"


class MissingParameterError(InvalidRequestError):
    code = "missing_required_parameter"


class InvalidParameterError(InvalidRequestError):
    code = "invalid_parameter"


class SettingError(InvalidRequestError):
    """An unknown setting key or a value that does not validate."""

    code = "invalid_setting"


class UnsafePathError(LmsError):
    """A state directory or file has an owner or mode lms refuses to trust."""

    code = "unsafe_path"
    exit_code = ExitCode.FAILED


class PayloadTooLargeError(InvalidRequestError):
    code = "payload_too_large"
    status = 413


class RequestTimeoutError(InvalidRequestError):
    """A request body arrived too slowly (408): see docs/LIMITS.md."""

    code = "request_timeout"
    status = 408


class UnsupportedMediaTypeError(InvalidRequestError):
    code = "unsupported_media_type"
    status = 415


class ForbiddenRequestError(InvalidRequestError):
    """Refused by the browser defences: foreign Origin, unknown Host."""

    code = "forbidden"
    status = 403
    exit_code = ExitCode.AUTH
    anthropic_type = "permission_error"


# --- authentication ----------------------------------------------------------------------------


class AuthError(LmsError):
    code = "authentication_error"
    status = 401
    exit_code = ExitCode.AUTH
    type = "invalid_request"
    anthropic_type = "authentication_error"


class MissingApiKeyError(AuthError):
    code = "missing_api_key"


class InvalidApiKeyError(AuthError):
    code = "invalid_api_key"


class ExpiredApiKeyError(AuthError):
    code = "expired_api_key"


class PermissionDeniedError(AuthError):
    code = "insufficient_permissions"
    status = 403
    anthropic_type = "permission_error"


class ModelNotAllowedError(PermissionDeniedError):
    code = "model_not_allowed"


class RateLimitedError(AuthError):
    code = "rate_limited"
    status = 429
    anthropic_type = "rate_limit_error"


# --- not found / conflict ----------------------------------------------------------------------


class NotFoundError(LmsError):
    code = "not_found"
    status = 404
    exit_code = ExitCode.NOT_FOUND
    type = "invalid_request"
    anthropic_type = "not_found_error"


class RouteNotFoundError(NotFoundError):
    code = "route_not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"
    type = "model_not_found"


class InstanceNotFoundError(NotFoundError):
    code = "instance_not_found"
    type = "model_not_found"


class PreviousResponseNotFoundError(NotFoundError):
    """A ``previous_response_id`` that does not exist (or belongs to another token)."""

    code = "previous_response_not_found"


class JobNotFoundError(NotFoundError):
    """No download job has this id (jobs live in the daemon's memory)."""

    code = "job_not_found"
    type = "job_not_found"


class MethodNotAllowedError(InvalidRequestError):
    code = "method_not_allowed"
    status = 405


class ConflictError(LmsError):
    code = "conflict"
    status = 409
    exit_code = ExitCode.CONFLICT
    type = "invalid_request"
    anthropic_type = "invalid_request_error"


class PortInUseError(ConflictError):
    code = "port_in_use"


class DaemonRunningError(ConflictError):
    """Another daemon holds the pid-file lock."""

    code = "daemon_already_running"


class ServerAlreadyRunningError(ConflictError):
    code = "server_already_running"


# --- daemon and server state -------------------------------------------------------------------


class NotRunningError(LmsError):
    code = "not_running"
    status = 503
    exit_code = ExitCode.NOT_RUNNING
    type = "unavailable"
    anthropic_type = "overloaded_error"


class DaemonNotRunningError(NotRunningError):
    code = "daemon_not_running"


class ServerNotRunningError(NotRunningError):
    code = "server_not_running"


class DaemonVersionError(LmsError):
    """The running daemon is another version than this CLI."""

    code = "daemon_version_mismatch"
    exit_code = ExitCode.FAILED


class ConfigBrokenError(LmsError):
    """config.toml or tokens.toml cannot be read: the daemon fails closed."""

    code = "configuration_broken"
    status = 503
    exit_code = ExitCode.FAILED
    type = "unavailable"
    anthropic_type = "api_error"


class ShuttingDownError(LmsError):
    code = "shutting_down"
    status = 503
    type = "unavailable"
    anthropic_type = "overloaded_error"


class ServerBusyError(LmsError):
    """An instance's queue is full: retry after ``Retry-After`` seconds (503)."""

    code = "server_busy"
    status = 503
    type = "unavailable"
    anthropic_type = "overloaded_error"


class StorageFullError(LmsError):
    """The data directory's disk is full (or over quota): nothing was stored (507).

    The CLI's message names the path; the HTTP body does not (it is the server's business).
    """

    code = "storage_full"
    status = 507
    type = "storage_full"
    anthropic_type = "api_error"


# --- models ------------------------------------------------------------------------------------


class ModelLoadError(LmsError):
    """A model file could not be loaded (corrupt GGUF, out of memory, ...)."""

    code = "model_load_failed"
    status = 500
    type = "model_load_failed"


class ContextOverflowError(InvalidRequestError):
    code = "context_length_exceeded"


class NotImplementedYetError(LmsError):
    """A documented feature this version of lms does not offer yet."""

    code = "not_implemented"
    status = 501
    type = "not_implemented"
    anthropic_type = "invalid_request_error"


# --- outbound connections and downloads ---------------------------------------------------------


class UrlNotAllowedError(ForbiddenRequestError):
    """An outbound URL refused by the outbound rule (scheme, private address, redirect)."""

    code = "url_not_allowed"


class UpstreamError(LmsError):
    """A server the daemon contacted for a client failed: DNS, connection, HTTP status."""

    code = "upstream_error"
    status = 502
    type = "upstream_error"


class RemoteUnavailableError(UpstreamError):
    """No replica of a remote engine could take the request (all down, or each failed before
    anything was sent to the client): retry after ``Retry-After`` seconds (503)."""

    code = "remote_unavailable"
    status = 503
    type = "unavailable"
    anthropic_type = "overloaded_error"


class RemoteTimeoutError(UpstreamError):
    """A remote engine took longer than its ``timeout`` or ``idle_timeout`` (504)."""

    code = "remote_timeout"
    status = 504


class RemoteRejectedError(InvalidRequestError):
    """A remote engine refused the request as invalid (its 4xx, message sanitised)."""

    code = "remote_rejected"


class RemoteUnsupportedError(InvalidRequestError):
    """What the request asks cannot be done on a remote model (load, tokenize, grammars...)."""

    code = "remote_unsupported"


class DownloadError(UpstreamError):
    """A download job failed (the server's answer, the disk)."""

    code = "download_failed"
    type = "download_failed"


class DownloadVerificationError(DownloadError):
    """The downloaded bytes are not what was promised: size, sha256, or not a GGUF model."""

    code = "download_verification_failed"


class DownloadStalledError(DownloadError):
    """The server sent nothing for longer than the stall timeout."""

    code = "download_stalled"
    status = 504


class DownloadCancelledError(DownloadError):
    """The job was cancelled (Ctrl-C in ``lms get``, daemon shutdown); its partial file stays."""

    code = "download_cancelled"
    status = 499
    exit_code = ExitCode.INTERRUPTED


# --- MCP integrations (README: MCP integrations) --------------------------------------------------


class McpAuthRequiredError(ForbiddenRequestError):
    """An MCP integration asked of a server whose authentication is off: refused, always."""

    code = "mcp_requires_auth"


class McpDisabledError(InvalidRequestError):
    """An MCP integration whose kind a setting turns off (``mcp.allow_mcp_json``,
    ``mcp.allow_remote``); the message names the setting."""

    code = "mcp_disabled"


class McpConfigError(LmsError):
    """mcp.json cannot be read or is malformed; the message names the file and the problem
    (never a value from it)."""

    code = "mcp_config_invalid"
    status = 500
    type = "plugin_connection_error"


class McpServerNotFoundError(NotFoundError):
    """``mcp/<name>`` names no server of mcp.json."""

    code = "mcp_server_not_found"
    type = "plugin_connection_error"


class McpConnectionError(UpstreamError):
    """A per-request (ephemeral) MCP server failed: cannot connect, broke off, or timed out."""

    code = "mcp_connection_error"
    type = "mcp_connection_error"


class PluginConnectionError(McpConnectionError):
    """An mcp.json server failed: does not start, crashed, or timed out."""

    code = "plugin_connection_error"
    type = "plugin_connection_error"


class InternalError(LmsError):
    """Anything unexpected: a generic message on the wire, the traceback in the log."""

    code = "internal_error"


def from_code(code: str, message: str, **kwargs: Any) -> LmsError:
    """Rebuild the error a daemon reported, by its code (unknown codes become LmsError)."""
    cls = LmsError._registry.get(code, LmsError)
    return cls(message, **kwargs)


def error_classes() -> list[builtins.type[LmsError]]:
    """Every registered error class, in declaration order (for docs and tests)."""
    return list(LmsError._registry.values())
