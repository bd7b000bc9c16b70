"""Remote engines' models on the SDK sockets (docs/API.md, SDK endpoints).

A remote model (``NAME/<upstream id>`` of a ``[remotes.NAME]`` table) is always "loaded" on
``/llm``: its upstream keeps it ready, so ``listLoaded`` lists it, ``getOrLoad`` answers
``alreadyLoaded`` and ``predict`` sends the chat upstream (:func:`lms.pipeline.start`). What runs
only on a local engine (loading, unloading, tokenizing, prompt templates, embedding through the
SDK) is refused with ``remote_unsupported``.

Names resolve as on the HTTP routes (:func:`lms.api.instances.remote`): a name under a remote's
``NAME/`` never falls back to a local model, and a remote model outside the token's allowlist is
audited and answers exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

from lms.api.sdk import records, wire
from lms.api.sdk.calls import Call
from lms.api.state import REMOTES
from lms.errors import InstanceNotFoundError, ModelNotFoundError
from lms.remote.models import RemoteModel, unsupported


def visible(call: Call) -> list[RemoteModel]:
    """The remote models the token may use, by key (none on ``/embedding``: a remote model is
    an llm, and embeddings of remote models go through ``POST /v1/embeddings``)."""
    if call.namespace == "embedding":
        return []
    return [model for model in call.app[REMOTES].models() if call.allows(model.key)]


def named(call: Call, name: str) -> RemoteModel | None:
    """The remote model ``name`` names, or None when it names no remote. A name under a
    remote's ``NAME/`` that the remote does not list, or that only a model outside the token's
    allowlist answers to (audited), is ``generic.pathNotFound`` listing the remote models the
    token may use. On ``/embedding`` a remote model is ``remote_unsupported``."""
    try:
        found = call.app[REMOTES].resolve(name, call.allows, lambda: call.hidden(name))
    except ModelNotFoundError:
        raise wire.path_not_found(name, [model.key for model in visible(call)]) from None
    return None if found is None else _usable(call, found)


def queried(call: Call, query: dict[str, Any], *, any_loaded: bool) -> RemoteModel | None:
    """The remote model an SDK query (``{identifier?, path?, vision?}``) names (:func:`named`);
    a query without a name takes the first remote model when no instance is loaded
    (``any_loaded`` false): listings show remote models after the instances."""
    identifier, path = query.get("identifier"), query.get("path")
    name = identifier if isinstance(identifier, str) else path
    if isinstance(name, str):
        return named(call, name)
    if query.get("vision") is True or any_loaded:
        return None
    return next(iter(visible(call)), None)


def referenced(call: Call, reference: str, param: str) -> RemoteModel | None:
    """The remote model of an instance reference (:data:`records.REMOTE_REFERENCE` + key), or
    None when ``reference`` is not a remote one. A remote model gone from its remote, or
    outside the token's allowlist (audited), is "no longer loaded", as a local instance is."""
    if not reference.startswith(records.REMOTE_REFERENCE):
        return None
    key = reference.removeprefix(records.REMOTE_REFERENCE)
    found = call.app[REMOTES].find(key)
    if found is not None and call.allows(found.key):
        return _usable(call, found)
    if found is not None:
        call.hidden(key)
    raise InstanceNotFoundError(
        "that model instance is no longer loaded", param=param, hint="get a new handle"
    )


def _usable(call: Call, model: RemoteModel) -> RemoteModel:
    """``model``, found and allowed: checked as the gate checks any model (rate limits, audit);
    on ``/embedding`` it is ``remote_unsupported``."""
    call.check_model(model.key)
    if call.namespace == "embedding":
        err = unsupported("Embedding through the SDK", model.key)
        err.hint = "embed with POST /v1/embeddings, which passes the request to the remote engine"
        raise err
    return model
