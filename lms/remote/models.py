"""A remote engine's model as the rest of lms sees it (no HTTP here: the pipeline imports it).

A :class:`RemoteModel` stands where a loaded :class:`~lms.inference.manager.Instance` stands for a
local model: the API families read its ``model.key`` and ``identifier``, and the generation
pipeline hands it the request (:meth:`RemoteModel.generate`), which the remote engine turns into
a chat completion upstream. What cannot be done remotely (loading, unloading, tokenizing, draft
models, grammars) is refused with :class:`~lms.errors.RemoteUnsupportedError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lms.errors import RemoteUnsupportedError

if TYPE_CHECKING:
    from lms.inference.generation import Generation
    from lms.inference.sampling import SamplingParams
    from lms.inference.tools import Tool

#: What the MCP tool loop budgets for a result when the upstream does not say its context.
DEFAULT_CONTEXT_LENGTH = 32768


class Backend(Protocol):
    """The remote engine a model belongs to (:class:`lms.remote.engine.RemoteEngine`)."""

    async def generate(
        self,
        model: RemoteModel,
        messages: list[dict[str, Any]] | None,
        text: str | None,
        tools: Sequence[Tool],
        params: SamplingParams,
    ) -> Generation: ...


@dataclass(frozen=True)
class RemoteModelInfo:
    """The ``model`` of a remote model (the fields the API families read of a local one)."""

    key: str
    remote: str
    upstream_id: str
    owned_by: str = "remote"
    context_length: int | None = None
    #: Upstreams take OpenAI ``tools`` natively: never wrap them in prompt instructions.
    trained_for_tool_use: bool = True
    kind: str = "llm"


@dataclass(frozen=True)
class RemoteModel:
    """A model of a remote engine: ``NAME/<upstream id>``."""

    model: RemoteModelInfo
    backend: Backend = field(compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def identifier(self) -> str:
        return self.model.key

    @property
    def load_time(self) -> float:
        return 0.0

    @property
    def context_length(self) -> int:
        return self.model.context_length or DEFAULT_CONTEXT_LENGTH

    def touch(self) -> None:
        """Nothing to keep alive: the upstream decides what it keeps loaded."""

    def entry(self) -> dict[str, Any]:
        """How listings show it (``remote: NAME``)."""
        return {
            "key": self.model.key,
            "remote": self.model.remote,
            "upstream_id": self.model.upstream_id,
            "context_length": self.model.context_length,
        }

    async def generate(
        self,
        messages: list[dict[str, Any]] | None,
        text: str | None,
        tools: Sequence[Tool],
        params: SamplingParams,
    ) -> Generation:
        """Send the request upstream (a chat when ``messages``, else a text completion); the
        generation is returned once the upstream has started answering (errors before that
        raise here, after retrying other replicas)."""
        return await self.backend.generate(self, messages, text, tools, params)


def unsupported(what: str, key: str, *, param: str | None = None) -> RemoteUnsupportedError:
    """The error for ``what`` asked of the remote model ``key``."""
    return RemoteUnsupportedError(
        f"{what} is not available for the remote model {key!r}: its engine runs elsewhere",
        param=param,
    )
