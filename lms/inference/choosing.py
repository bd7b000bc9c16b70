"""Query resolution: what a model name in a request means (docs/IDENTIFIERS.md).

One order, on every surface (native REST, OpenAI, Anthropic, the SDK websocket, ``lms load``),
through :meth:`ModelManager.choose` (a request that needs an instance) and
:meth:`ModelManager.resolve` (a load, which needs a model):

1. **Instance identifier**, exact: the instance loaded under that name. An identifier of an
   instance of the other kind (``llm`` / ``embedding``) is refused (400), unless it is also the
   model key: then it means the model, like any other name. To a load, an identifier means the
   model of that instance.
2. **Model key**: an exact key first, then :func:`lms.inference.catalog.match_key`'s looser forms
   (case-insensitive, without ``@variant``, without the publisher, the name; each only when
   unique, else "ambiguous"). To an embedding request ``<key>:embedding`` and
   ``<key>:embedding:N`` (identifiers of embedding instances of an llm model) mean ``<key>``, so
   they load again after an idle unload.
3. **Path prefix**, case-insensitive, for a name holding a ``/``: the first model, in key order,
   whose path relative to the models folder starts with the name
   (``hugging-quants/llama-3.2-1b-instruct`` finds
   ``hugging-quants/Llama-3.2-1B-Instruct-Q8_0-GGUF/…``). The SDK's ``query.path`` uses this
   step only.

A model found by steps 2 and 3 is served by its first loaded instance of the kind the request needs
(in load order), or loaded. Steps 1 to 2 against loaded instances need no catalog; the catalog is
read once, and only when they find nothing. An embedding model cannot serve an llm request (400).

A caller's allowlist limits what a name may mean: anything outside it is not found, exactly like
a missing one; "not found" and "ambiguous" errors list only allowed models, and only the caller's
``hidden`` hook hears that the name exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lms.errors import InvalidRequestError, ModelNotFoundError
from lms.inference import catalog
from lms.inference.catalog import ModelFile
from lms.inference.instance import EMBEDDING_SUFFIX, Instance, InstanceType

#: Which model keys a caller may see and use (a token's allowlist); None: every model.
ModelFilter = Callable[[str], bool]
#: Told when a name was not found only because it is outside the caller's allowlist (for the
#: audit log: the caller gets the same 404 as for a missing model).
HiddenHook = Callable[[], None]


@dataclass(frozen=True)
class Choice:
    """What a request's ``model`` names (:meth:`ModelManager.choose`).

    ``key`` is the model key; ``instance`` the loaded instance that serves the request (None:
    it must be loaded); ``model`` the catalog entry, when choosing had to read the catalog.
    """

    key: str
    instance: Instance | None
    model: ModelFile | None


@dataclass(frozen=True)
class Query:
    """A model name as a request gives it.

    ``kind`` is the mode the request needs; ``path_only`` says the name is a path (the SDK's
    ``query.path``: step 3 only); ``vision`` keeps only models that carry a vision encoder.
    """

    text: str
    kind: InstanceType = "llm"
    path_only: bool = False
    vision: bool = False


def relative_path(model: ModelFile, root: Path) -> str:
    """``model``'s path relative to the models folder ``root`` (``/``-separated); a file outside
    it (the folder changed since it was loaded) counts as ``<publisher>/<name>/<file>``. The
    catalog's own ``relative_path`` (from the folder scan) wins when it has one."""
    if model.relative_path:
        return model.relative_path
    try:
        return model.path.relative_to(root).as_posix()
    except ValueError:
        return f"{model.publisher}/{model.name}/{model.path.name}"


def loaded(
    instances: Sequence[Instance], query: Query, allowed: ModelFilter | None
) -> Instance | None:
    """Steps 1 to 2 among loaded ``instances`` (in load order), without the catalog: the instance
    ``query`` names, or the first of its kind whose model key is exactly the name (None: read
    the catalog)."""
    if query.path_only:
        return None
    usable = [i for i in instances if _usable(i.model, query, allowed)]
    named = next((i for i in usable if i.identifier == query.text), None)
    if named is not None:
        if named.type == query.kind:
            return named
        if query.text != named.model.key:
            raise InvalidRequestError(
                f'"{query.text}" is loaded in {named.type} mode; this route needs a'
                f" {query.kind} instance (use the model key {named.model.key!r})",
                param="model",
            )
    key = model_query(query.text, query.kind)
    return next((i for i in usable if i.type == query.kind and i.model.key == key), None)


def downloaded(
    instances: Sequence[Instance],
    every: list[ModelFile],
    query: Query,
    root: Path,
    allowed: ModelFilter | None,
    hidden: HiddenHook | None,
) -> ModelFile:
    """Steps 1 to 3 over the catalog ``every`` (and the models of loaded ``instances``, should a
    file have left the folder): the model ``query`` names among the allowed ones.

    Not found: ModelNotFoundError (404, ``param="model"``) listing the allowed keys; ``hidden``
    hears when the name would have been found outside the allowlist.
    """
    found = _model(instances, every, query, root, allowed)
    if found is not None:
        return found
    if allowed is not None and hidden is not None:
        try:
            if _model(instances, every, query, root, None) is not None:
                hidden()
        except ModelNotFoundError:  # ambiguous among every model: not a hidden one's name
            pass
    visible = [m.key for m in _candidates(instances, every, Query(query.text), allowed)]
    raise ModelNotFoundError(
        f'model "{query.text}" not found. Available models: {", ".join(visible) or "(none)"}',
        param="model",
        data={"available_models": visible},
    )


def check_serves(model: ModelFile, kind: InstanceType) -> None:
    """Refuse (400) an embedding model for an llm request."""
    if kind == "llm" and model.type == "embedding":
        raise InvalidRequestError(
            f'"{model.key}" is an embedding model: it serves /v1/embeddings only', param="model"
        )


def model_query(query: str, kind: InstanceType) -> str:
    """The model a request names: ``<key>:embedding`` or ``<key>:embedding:N`` (identifiers of
    embedding instances of an llm model) mean ``<key>`` to an embedding request, so they load
    again after an idle unload."""
    if kind == "embedding":
        base, suffix, tail = query.rpartition(EMBEDDING_SUFFIX)
        if suffix and base and (not tail or (tail[0] == ":" and tail[1:].isdecimal())):
            return base
    return query


def _usable(model: ModelFile, query: Query, allowed: ModelFilter | None) -> bool:
    return (allowed is None or allowed(model.key)) and (not query.vision or model.vision)


def _candidates(
    instances: Sequence[Instance], every: list[ModelFile], query: Query, allowed: ModelFilter | None
) -> list[ModelFile]:
    models = {m.key: m for m in every}
    for instance in instances:
        models.setdefault(instance.model.key, instance.model)
    return sorted((m for m in models.values() if _usable(m, query, allowed)), key=lambda m: m.key)


def _model(
    instances: Sequence[Instance],
    every: list[ModelFile],
    query: Query,
    root: Path,
    allowed: ModelFilter | None,
) -> ModelFile | None:
    models = _candidates(instances, every, query, allowed)
    if not query.path_only:
        named = next(
            (
                i.model
                for i in instances
                if i.identifier == query.text and _usable(i.model, query, allowed)
            ),
            None,
        )
        if named is not None:
            return named
        found = catalog.match_key(model_query(query.text, query.kind), models)
        if found is not None or "/" not in query.text:
            return found
    prefix = query.text.lower()
    return next((m for m in models if relative_path(m, root).lower().startswith(prefix)), None)
