"""The model catalog: the models folder's model files and their metadata.

Which files are models and their keys (LM Studio's rule, docs/MODELS.md) come from
:mod:`lms.modelfolder`, the one rule the CLI and shell completion use as well; this module only
adds what each file's header says, and gives the scan each file's ``type`` from the same cached
header read (an embedding model's key starts ``text-embedding-``). Files whose header cannot be
read are skipped with a warning; multimodal projectors (architecture ``clip``) not named
``mmproj*`` are left out. A split GGUF is one model: its first part, the sum of the parts' sizes.

Metadata is read from the GGUF header (:mod:`lms.ggufheader`: a memory map, no weights
are read) and cached in-process by (path, size, mtime_ns), so repeated discovery costs a ``stat``
per file. The bundled default model is :mod:`lms.inference.defaultmodel`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lms import modelfolder
from lms.errors import ModelLoadError, ModelNotFoundError
from lms.ggufheader import HeaderFacts, parse_header

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ModelFile(HeaderFacts):
    """One GGUF model file in the catalog, described by its metadata (no weights loaded).

    ``params_string`` is ``general.size_label`` when present, else the tensor parameter count
    written like ``270M`` or ``1.5B``. ``quantization`` is the name of ``general.file_type``
    (``Q4_K_M``, ``F16``), else the type holding most tensor bytes. ``trained_for_tool_use`` is
    true when the chat template reads a ``tools`` variable *and* renders tool calls
    (``tool_call``) or a ``"tool"``/``"ipython"`` role: a template that only mentions the word is
    not enough. ``vision`` is true only when the file itself carries a vision encoder
    (``clip.has_vision_encoder`` or ``<arch>.vision.*`` keys). ``type`` is ``embedding`` for
    encoder-only architectures (BERT family) or when ``<arch>.pooling_type`` asks for pooling.
    """

    key: str
    publisher: str
    name: str
    path: Path
    size_bytes: int
    display_name: str  # the header's general.name, else the name of the key
    #: ``path`` relative to the models folder (``/``-separated), LM Studio's model path.
    relative_path: str = ""

    @property
    def variant(self) -> str | None:
        """The part of the key after ``@``, when a folder holds several files."""
        return self.key.partition("@")[2] or None


_cache: dict[str, tuple[tuple[int, int], HeaderFacts]] = {}
_cache_lock = threading.Lock()


def read_metadata(
    path: Path, *, key: str | None = None, place: modelfolder.ModelPath | None = None
) -> ModelFile:
    """Describe the GGUF file at ``path`` from its header, without loading weights.

    ``place`` is where the models folder scan put it (key, publisher, name, split parts: the size
    is their sum); without it, ``key`` (default ``local/<file stem>``) gives the publisher and
    name. Raises ModelLoadError, naming the file, when it cannot be read or is not a complete
    GGUF file.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    signature = (st.st_size, st.st_mtime_ns)
    cache_key = str(path.absolute())
    with _cache_lock:
        cached = _cache.get(cache_key)
    if cached is not None and cached[0] == signature:
        facts = cached[1]
    else:
        facts = parse_header(path, st.st_size)
        with _cache_lock:
            _cache[cache_key] = (signature, facts)
    size = st.st_size
    if place is not None:
        key, publisher, name, relative = place.key, place.publisher, place.name, place.relative
        for part in place.parts[1:]:
            try:
                size += part.stat().st_size
            except OSError as exc:
                raise ModelLoadError(f"cannot read model file {part}: {exc.strerror}") from exc
    else:
        key = key or f"{modelfolder.LOCAL_PUBLISHER}/{path.stem}"
        publisher, _, rest = key.partition("/")
        name, relative = rest.partition("@")[0], ""
    return ModelFile(
        key=key,
        publisher=publisher,
        name=name,
        path=path,
        size_bytes=size,
        relative_path=relative,
        display_name=facts.general_name or name,
        **{f.name: getattr(facts, f.name) for f in dataclasses.fields(facts)},
    )


def discover(models_dir: Path | None = None) -> list[ModelFile]:
    """Every GGUF model under ``models_dir`` (default: the models folder), sorted by key.

    Files that cannot be read are skipped with a warning; discovery never fails because of one
    bad file. Keys are :func:`lms.modelfolder.scan`'s.
    """
    found = modelfolder.scan(models_dir, type_of=_type_of)
    modelfolder.remember_relative_paths(found.models)
    for problem in found.skipped:
        logger.warning("%s", problem)
    models: list[ModelFile] = []
    for entry in found.models:
        try:
            model = read_metadata(entry.path, place=entry)
        except ModelLoadError as exc:
            logger.warning("skipping model file %s: %s", entry.path, exc)
            continue
        if model.architecture == "clip":
            continue  # a multimodal projector: not a model of its own
        models.append(model)
    return models


def _type_of(path: Path) -> str | None:
    """The scan's question, answered from the cached header read (None: unreadable, which
    :func:`discover` then reports)."""
    try:
        return read_metadata(path).type
    except ModelLoadError:
        return None


def resolve(query: str, models: list[ModelFile]) -> ModelFile:
    """The model a client means by ``query``, by key (:func:`match_key`); no match raises
    ModelNotFoundError (``param="model"``) whose message lists the available keys.

    This is the key step of query resolution only: instance identifiers and path prefixes come
    before and after it in :mod:`lms.inference.choosing` (docs/IDENTIFIERS.md).
    """
    found = match_key(query, models)
    if found is not None:
        return found
    available = ", ".join(m.key for m in models) or "(none)"
    raise ModelNotFoundError(
        f'model "{query}" not found. Available models: {available}',
        param="model",
        data={"available_models": [m.key for m in models]},
    )


def match_key(query: str, models: list[ModelFile]) -> ModelFile | None:
    """The model whose key ``query`` is (None: no key matches).

    An exact key wins; then, case-insensitively and only when unique: the key, the key without its
    ``@variant``, the part after the publisher (``gemma-3-270m@q8_0``), the name
    (``gemma-3-270m``). Several matches at one step are ambiguous: ModelNotFoundError
    (``param="model"``) naming them.
    """
    for model in models:
        if model.key == query:
            return model
    lowered = query.lower()
    if not lowered:
        return None  # an empty name would match every key without a publisher
    candidates: list[Callable[[ModelFile], bool]] = [
        lambda m: m.key.lower() == lowered,
        lambda m: m.key.partition("@")[0].lower() == lowered,
        lambda m: m.key.partition("/")[2].lower() == lowered,
        lambda m: m.name.lower() == lowered,
    ]
    for matches in candidates:
        hits = [m for m in models if matches(m)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            keys = ", ".join(m.key for m in hits)
            raise ModelNotFoundError(
                f'model "{query}" is ambiguous: it matches {keys}',
                hint="use the full model key",
                param="model",
                data={"available_models": [m.key for m in models]},
            )
    return None
