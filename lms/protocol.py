"""Route paths and wire shapes shared by the daemon, the client and the CLI (stdlib only).

Two planes:

* the **control plane**: HTTP/1.1 with JSON bodies over the Unix socket, spoken by ``lms`` to the
  daemon (``CONTROL_*`` routes). Errors come back as ``{"error": {"code", "message", "hint"}}``
  with the HTTP status of the error table, and the client rebuilds the same error from ``code``.
* the **API**: HTTP on TCP for clients (``API_*`` routes), with OpenAI-shaped error envelopes,
  and Anthropic-shaped ones on ``/v1/messages``.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict
from urllib.parse import quote

from lms.errors import LmsError

# --- control plane (Unix socket) --------------------------------------------------------------

CONTROL_STATUS = "/status"
CONTROL_SHUTDOWN = "/shutdown"
CONTROL_SERVER = "/server"
CONTROL_SERVER_START = "/server/start"
CONTROL_SERVER_STOP = "/server/stop"
CONTROL_MODELS = "/models"
CONTROL_INSTANCES = "/instances"
CONTROL_LOAD = "/instances/load"
CONTROL_UNLOAD = "/instances/unload"
CONTROL_AUTH = "/auth"
CONTROL_LOGS = "/logs"
CONTROL_CHAT = "/chat"
CONTROL_IMPORT = "/models/import"
CONTROL_DOWNLOADS = "/downloads"
CONTROL_DOWNLOAD = "/downloads/{job_id}"
CONTROL_DOWNLOAD_CANCEL = "/downloads/{job_id}/cancel"
CONTROL_MCP = "/mcp/servers"
CONTROL_REMOTES = "/remotes"

# --- API (TCP) ---------------------------------------------------------------------------------

API_HEALTH = "/health"
API_GREETING = "/lmstudio-greeting"
API_OPENAI_MODELS = "/v1/models"
API_OPENAI_CHAT = "/v1/chat/completions"
API_OPENAI_COMPLETIONS = "/v1/completions"
API_OPENAI_EMBEDDINGS = "/v1/embeddings"
API_OPENAI_RESPONSES = "/v1/responses"
API_ANTHROPIC_MESSAGES = "/v1/messages"
API_ANTHROPIC_COUNT_TOKENS = "/v1/messages/count_tokens"
#: Routes that speak Anthropic's shapes (its error envelope, ``x-api-key``).
ANTHROPIC_PATHS = frozenset({API_ANTHROPIC_MESSAGES, API_ANTHROPIC_COUNT_TOKENS})
API_NATIVE_MODELS = "/api/v1/models"
API_NATIVE_CHAT = "/api/v1/chat"
API_NATIVE_LOAD = "/api/v1/models/load"
API_NATIVE_UNLOAD = "/api/v1/models/unload"
API_NATIVE_DOWNLOAD = "/api/v1/models/download"
API_NATIVE_DOWNLOAD_STATUS = "/api/v1/models/download/status/{job_id}"

MAX_BODY_BYTES = 32 * 1024 * 1024


class ServerStatus(TypedDict):
    running: bool
    host: str | None
    port: int | None
    url: str | None
    cors: bool
    auth_required: bool
    tls: bool


class DaemonStatus(TypedDict):
    version: str
    pid: int
    socket: str
    started_at: float
    uptime_seconds: float
    server: ServerStatus


class ModelEntry(TypedDict):
    key: str
    type: Literal["llm", "embedding"]
    publisher: str
    display_name: str
    architecture: str | None
    params_string: str | None
    quantization: str | None
    bits_per_weight: float | None
    size_bytes: int
    path: str
    relative_path: str  # under the models folder: LM Studio's model path (docs/MODELS.md)
    format: str
    max_context_length: int | None
    trained_for_tool_use: bool
    vision: bool
    loaded_instances: list[str]
    #: The remote engine serving it (``lms remote``); absent for a model in the models folder.
    remote: NotRequired[str]


class InstanceEntry(TypedDict):
    identifier: str
    model_key: str
    type: Literal["llm", "embedding"]
    status: str
    queued: int
    context_length: int
    parallel: int | None  # None for an embedding instance
    ttl_seconds: int | None
    ttl_left_seconds: float | None
    jit: bool
    loaded_at: float
    last_used_at: float
    load_time_seconds: float
    size_bytes: int  # the model's file, plus its attached draft models'
    draft_model: NotRequired[str | None]  # the default draft model (lms load --draft-model)
    draft_models: NotRequired[list[str]]  # every attached draft model's key


class DownloadJob(TypedDict, total=False):
    """A download job as ``POST /api/v1/models/download`` and its status route show it
    (docs/API.md, Downloads), plus lms's own keys.

    ``status`` is ``downloading``, ``completed``, ``failed`` or ``already_downloaded`` (lms never
    pauses a job). ``job_id``, ``total_size_bytes`` and ``started_at`` are absent for
    ``already_downloaded``; ``bytes_per_second`` and ``estimated_completion`` appear only while
    downloading, ``completed_at`` only when completed. lms adds ``model_key`` (the catalog key of
    the file once it is in place), ``file_name``, ``error`` (``{"type", "code", "message",
    "hint"?}``, only when failed) and, on the control socket only, ``path``.
    ``total_size_bytes`` is null while the server has not said how big the file is.
    """

    job_id: str
    status: Literal["downloading", "completed", "failed", "already_downloaded"]
    total_size_bytes: int | None
    downloaded_bytes: int
    started_at: str
    completed_at: str
    bytes_per_second: float
    estimated_completion: str
    model_key: str
    file_name: str
    error: dict[str, str]
    path: str


class ImportResult(TypedDict):
    """What ``lms import`` did: where the file went and under which key."""

    model_key: str
    path: str
    source: str
    mode: Literal["copy", "move", "symlink"]
    size_bytes: int


def control_download_path(job_id: str, *, cancel: bool = False) -> str:
    """The control route of one download job (``job_id`` is quoted for the URL)."""
    pattern = CONTROL_DOWNLOAD_CANCEL if cancel else CONTROL_DOWNLOAD
    return pattern.replace("{job_id}", quote(job_id, safe=""))


def control_error_body(err: LmsError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.hint:
        body["hint"] = err.hint
    if err.data:
        body["data"] = err.data
    return {"error": body}


def api_error_body(err: LmsError) -> dict[str, Any]:
    """The error envelope of the native and OpenAI-compatible APIs."""
    body: dict[str, Any] = {"type": err.type, "code": err.code, "message": err.message}
    if err.param:
        body["param"] = err.param
    return {"error": body}


def anthropic_error_body(err: LmsError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}
