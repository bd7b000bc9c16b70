"""What an endpoint handler gets: one RPC call or one channel of an SDK socket.

An RPC handler is ``async (call, parameter) -> result`` (None for a void endpoint); a channel
handler is ``async (channel, parameter) -> None`` that sends zero or more packets with
:meth:`Channel.send` and ends with exactly one terminal packet through :meth:`Channel.finish`.
The session answers ``rpcResult``/``rpcError`` and ``channelClose``/``channelError`` itself, and
turns any :class:`LmsError` raised by a handler into the SDK's error object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from lms.api.sdk.auth import Client, SocketAuth
from lms.api.state import MANAGER
from lms.auth.record import TokenRecord
from lms.errors import InternalError
from lms.inference.manager import ModelManager


class Sender(Protocol):
    async def __call__(self, frame: dict[str, Any]) -> None: ...


@dataclass
class Call:
    """One request on a socket: who asked (``record``: None with auth off) and for what."""

    auth: SocketAuth
    endpoint: str
    record: TokenRecord | None

    @property
    def app(self) -> web.Application:
        return self.auth.app

    @property
    def namespace(self) -> str:
        return self.auth.namespace

    @property
    def client(self) -> Client:
        return self.auth.client

    @property
    def manager(self) -> ModelManager:
        return self.app[MANAGER]

    def allows(self, model_key: str) -> bool:
        """Whether the token may see and use ``model_key`` (always, with auth off)."""
        return self.record is None or self.record.allows_model(model_key)

    def check_model(self, model_key: str) -> None:
        """Refuse (403 ``model_not_allowed``, audited) a resolved key outside the allowlist."""
        self.auth.check_model(self.record, self.endpoint, model_key)

    def record_tokens(self, prompt: int | None, completion: int | None) -> None:
        self.auth.record_tokens(self.record, prompt, completion)

    def hidden(self, query: str) -> None:
        """Audit that ``query`` named a model or instance the token may not see (the client
        is answered as if it did not exist)."""
        if self.record is not None:
            self.auth.hidden(self.record, self.endpoint, query)


@dataclass
class Channel(Call):
    """A channel: packets out, and the client's ``cancel``."""

    channel_id: int = 0
    sender: Sender | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    _on_cancel: list[Callable[[], None]] = field(default_factory=list)

    async def send(self, message: dict[str, Any]) -> None:
        """A non-terminal packet (progress, fragment...)."""
        if self.ended:
            raise InternalError(f"packet after the end of channel {self.channel_id}")
        assert self.sender is not None
        await self.sender({"type": "channelSend", "channelId": self.channel_id, "message": message})

    async def finish(self, message: dict[str, Any]) -> None:
        """The terminal packet (``success``, ``alreadyLoaded``, ``loadSuccess``)."""
        await self.send(message)
        self.ended = True

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the client cancels (at once if it already has)."""
        if self.cancelled.is_set():
            callback()
        else:
            self._on_cancel.append(callback)

    def cancel(self) -> None:
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        for callback in self._on_cancel:
            callback()


RpcHandler = Callable[[Call, Any], Awaitable[Any]]
ChannelHandler = Callable[[Channel, Any], Awaitable[None]]


@dataclass(frozen=True)
class RpcEndpoint:
    handler: RpcHandler


@dataclass(frozen=True)
class ChannelEndpoint:
    handler: ChannelHandler


#: A served endpoint: an RPC or a channel, and its handler.
Endpoint = RpcEndpoint | ChannelEndpoint


def rpc(handler: RpcHandler) -> Endpoint:
    return RpcEndpoint(handler)


def channel(handler: ChannelHandler) -> Endpoint:
    return ChannelEndpoint(handler)
