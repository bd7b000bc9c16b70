"""How a request's ``model`` picks an instance or a model (:meth:`ModelManager.choose`).

- An identifier of a loaded instance of the kind the request needs (``llm`` or ``embedding``) is
  that instance.
- An identifier of an instance of the other kind is refused (400), unless it is also the model
  key: then it means the model, like any other name.
- Any other name resolves among the downloaded models (:func:`lms.inference.catalog.resolve`) to
  the loaded instance of that kind of that model, or to the model to load. To an embedding
  request ``<key>:embedding`` (the identifier of an embedding instance of an llm model) means
  ``<key>``, so it loads again after an idle unload. An embedding model cannot serve an llm
  request (400).
- A caller's allowlist limits what a name may mean: anything outside it is not found, exactly
  like a missing one, and only the caller's hook hears that it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def loaded(
    instances: dict[str, Instance], query: str, kind: InstanceType, allowed: ModelFilter | None
) -> Instance | None:
    """The loaded instance ``query`` names, when it serves ``kind`` (None: resolve the name)."""
    instance = instances.get(query)
    if instance is not None and allowed is not None and not allowed(instance.model.key):
        return None
    if instance is not None and instance.type != kind:
        if query != instance.model.key:
            raise InvalidRequestError(
                f'"{query}" is loaded in {instance.type} mode; this route needs a'
                f" {kind} instance (use the model key {instance.model.key!r})",
                param="model",
            )
        return None
    return instance


def downloaded(
    every: list[ModelFile],
    query: str,
    shown: str,
    allowed: ModelFilter | None,
    hidden: HiddenHook | None,
    *,
    named: bool = False,
) -> ModelFile:
    """The model ``query`` names among the allowed ones of ``every``; errors say ``shown`` (the
    name the client used). ``named`` says ``shown`` is the identifier of a loaded instance:
    outside the allowlist, that is hidden too."""
    models = every if allowed is None else [m for m in every if allowed(m.key)]
    try:
        return catalog.resolve(query, models)
    except ModelNotFoundError as err:
        if allowed is not None and hidden is not None and (named or _names_any(shown, every)):
            hidden()
        if "ambiguous" in err.message or query == shown:
            raise
        visible = [m.key for m in models]
        raise ModelNotFoundError(
            f'model "{shown}" not found. Available models: {", ".join(visible) or "(none)"}',
            param="model",
            hint=err.hint,
            data={"available_models": visible},
        ) from None


def check_serves(model: ModelFile, kind: InstanceType) -> None:
    """Refuse (400) an embedding model for an llm request."""
    if kind == "llm" and model.type == "embedding":
        raise InvalidRequestError(
            f'"{model.key}" is an embedding model: it serves /v1/embeddings only', param="model"
        )


def _names_any(query: str, every: list[ModelFile]) -> bool:
    try:
        catalog.resolve(query, every)
    except ModelNotFoundError:
        return False
    return True


def model_query(query: str, kind: InstanceType) -> str:
    """The model a request names: ``<key>:embedding`` (the identifier of an embedding instance
    of an llm model) means ``<key>`` to an embedding request, so it loads again after an idle
    unload."""
    if kind == "embedding" and query.endswith(EMBEDDING_SUFFIX):
        return query[: -len(EMBEDDING_SUFFIX)]
    return query
