"""The models folder as the file system shows it, without reading any GGUF header.

For ``lms ls`` without a daemon and for shell completion of model keys: both must stay cheap and
may not import ``lms.inference`` (which reads GGUF metadata and belongs to the daemon's side).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lms import paths

_PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".download", ".crdownload")
_LOCAL_PUBLISHER = "local"


def scan_model_files(root: Path | None = None) -> list[dict[str, Any]]:
    """The GGUF files under the models folder, described from the file system only.

    Keys follow the daemon's layout rule (``<publisher>/<name>/<file>.gguf`` is
    ``publisher/name``; a file one level deep is ``<publisher>/<stem>``; at the top,
    ``local/<stem>``). When a folder holds several files they get ``@<stem>``; the daemon may
    name such variants by quantization instead. Metadata fields are null: reading them needs
    the daemon.
    """
    root = root or paths.models_dir()
    groups: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            lowered = filename.lower()
            if filename.startswith(".") or lowered.endswith(_PARTIAL_SUFFIXES):
                continue
            if not lowered.endswith(".gguf") or lowered.startswith("mmproj"):
                continue
            file = Path(dirpath) / filename
            parts = file.relative_to(root).parts
            if len(parts) == 1:
                base = f"{_LOCAL_PUBLISHER}/{file.stem}"
            elif len(parts) == 2:
                base = f"{parts[0]}/{file.stem}"
            else:
                base = f"{parts[0]}/{parts[1]}"
            groups.setdefault(base, []).append(file)
    entries: list[dict[str, Any]] = []
    for base, files in groups.items():
        for file in files:
            try:
                size = file.stat().st_size
            except OSError:
                continue
            key = base if len(files) == 1 else f"{base}@{file.stem.lower()}"
            publisher, _, rest = base.partition("/")
            entries.append(
                {
                    "key": key,
                    "type": None,
                    "publisher": publisher,
                    "display_name": rest,
                    "architecture": None,
                    "params_string": None,
                    "quantization": None,
                    "bits_per_weight": None,
                    "size_bytes": size,
                    "path": str(file),
                    "format": "gguf",
                    "max_context_length": None,
                    "trained_for_tool_use": None,
                    "vision": None,
                    "loaded_instances": [],
                }
            )
    return sorted(entries, key=lambda e: e["key"])
