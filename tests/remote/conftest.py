"""Fixtures for the remote-engine tests: upstream servers a gate forwards to (see upstreams.py).

Each fixture is a factory: call it (with the upstream's settings) as often as the test needs
upstreams; every one it started is stopped when the test ends, its processes gone. The real
upstreams use the default model, so their tests carry ``@pytest.mark.model``.

* ``make_fake_upstream(**settings) -> FakeUpstream`` (async tests): ``await`` it;
* ``make_threaded_fake_upstream(**settings) -> FakeUpstream`` (sync tests): served from a thread
  with its own event loop, for a gate that runs in another process;
* ``make_llama_cpp_server(api_key=None, alias=None, ..., start=True) -> LlamaCppServer``
  (``start=False``: not started, for ``server.start(wait=False)``; stopped all the same);
* ``make_lms_upstream(perms=None, settings={}, ...) -> LmsUpstream``.

To use them from another test folder, write the same few lines there with the classes from
``remote.upstreams`` (conftest fixtures reach only this folder).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .upstreams import FakeUpstream, LlamaCppServer, LmsUpstream


@pytest.fixture
async def make_fake_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**settings: Any) -> FakeUpstream:
            return await stack.enter_async_context(FakeUpstream(**settings))

        yield make


@pytest.fixture
def make_threaded_fake_upstream() -> Iterator[Callable[..., FakeUpstream]]:
    with contextlib.ExitStack() as stack:

        def make(**settings: Any) -> FakeUpstream:
            return stack.enter_context(FakeUpstream(**settings).in_thread())

        yield make


@pytest.fixture
def make_llama_cpp_server(default_model_path: Path) -> Iterator[Callable[..., LlamaCppServer]]:
    with contextlib.ExitStack() as stack:

        def make(*, start: bool = True, **settings: Any) -> LlamaCppServer:
            server = LlamaCppServer(default_model_path, **settings)
            if not start:  # the test starts it (e.g. start(wait=False)); stopped all the same
                stack.callback(server.stop)
                return server
            return stack.enter_context(server)

        yield make


@pytest.fixture
def make_lms_upstream(default_models_dir: Path) -> Iterator[Callable[..., LmsUpstream]]:
    with contextlib.ExitStack() as stack:

        def make(**settings: Any) -> LmsUpstream:
            return stack.enter_context(LmsUpstream(default_models_dir, **settings))

        yield make
