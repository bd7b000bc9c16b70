"""Completion's cache of model types (``model-types.json`` in the data folder): which model files
are embedding models, so that shell completion keys them (``text-embedding-``, docs/MODELS.md)
without parsing a GGUF header on every TAB. Standard library and base modules only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lms import paths

#: The cache's file name, in the data folder.
TYPE_CACHE_NAME = "model-types.json"
#: The most entries the cache keeps (entries of files no longer seen are dropped first).
MAX_TYPE_CACHE_ENTRIES = 4096


class TypeCache:
    """Model types by path, kept in a small JSON file and checked by (size, mtime_ns): what
    completion uses to key embedding models without parsing a header on every TAB.

    Best effort: an unreadable or broken cache file counts as empty, a failed save is ignored,
    and a file whose header cannot be read has no type (it is keyed as a text model; the daemon,
    which reads every header, leaves such a file out anyway).
    """

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._entries: dict[str, list[int | str]] = {}
        self._seen: set[str] = set()
        self._changed = False
        if file is not None:
            try:
                doc = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                doc = None
            if isinstance(doc, dict):
                self._entries = {
                    k: v
                    for k, v in doc.items()
                    if isinstance(v, list) and len(v) == 3 and v[2] in ("llm", "embedding")
                }

    @classmethod
    def default(cls) -> TypeCache:
        """The cache in the data folder (none kept when that folder does not exist yet)."""
        folder = paths.data_dir()
        return cls(folder / TYPE_CACHE_NAME if folder.is_dir() else None)

    def __call__(self, path: Path) -> str | None:
        from lms.errors import ModelLoadError
        from lms.ggufheader import parse_header

        name = str(path.absolute())
        self._seen.add(name)
        try:
            st = path.stat()
        except OSError:
            return None
        entry = self._entries.get(name)
        if entry is not None and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return str(entry[2])
        try:
            kind = parse_header(path, st.st_size).type
        except (OSError, ModelLoadError):
            return None
        self._entries[name] = [st.st_size, st.st_mtime_ns, kind]
        self._changed = True
        return kind

    def save(self) -> None:
        """Write the cache back if it changed (atomically; errors ignored)."""
        if self.file is None or not self._changed:
            return
        keep = sorted(self._entries, key=lambda name: name not in self._seen)
        doc = {name: self._entries[name] for name in keep[:MAX_TYPE_CACHE_ENTRIES]}
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.file.name}.", dir=self.file.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out)
            os.replace(tmp, self.file)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
