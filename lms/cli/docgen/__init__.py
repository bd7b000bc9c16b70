"""Generated documentation of the ``lms`` command, written from its Typer app.

``python -m lms.cli.docgen`` writes the shell completion scripts (``completions/lms.bash``,
``completions/_lms``, ``completions/lms.fish``), the man pages (``man/lms.1``,
``man/lms-<group>.1``), and the command reference and settings table of ``README.md`` (between
their markers). All are
committed; ``--check`` (and a test) fails when they differ from what the code would write.

Not imported by ``lms.cli``: only the generator and the tests pay for it.
"""

from __future__ import annotations

from pathlib import Path

from lms.cli.docgen import bash, fish, manpage, reference, settings, tree, zsh

__all__ = ["COMPLETIONS_DIR", "MAN_DIR", "README", "generate", "stale"]

COMPLETIONS_DIR = "completions"
MAN_DIR = "man"
README = "README.md"


def generate(root_dir: Path) -> dict[Path, str]:
    """Every generated file (README.md with its generated blocks replaced) under ``root_dir``."""
    root = tree.build()
    files = {
        Path(COMPLETIONS_DIR, "lms.bash"): bash.render(root),
        Path(COMPLETIONS_DIR, "_lms"): zsh.render(root),
        Path(COMPLETIONS_DIR, "lms.fish"): fish.render(root),
    }
    for name, text in manpage.render_pages(root).items():
        files[Path(MAN_DIR, name)] = text
    readme = root_dir / README
    if readme.exists():
        text = reference.replace(readme.read_text(), reference.render(root))
        files[Path(README)] = settings.replace(text)
    return {root_dir / path: text for path, text in files.items()}


def stale(root_dir: Path) -> list[Path]:
    """Files that differ from what :func:`generate` writes, are missing, or are man pages it no
    longer writes (relative to ``root_dir``)."""
    files = generate(root_dir)
    found = [path for path, text in files.items() if _read(path) != text]
    found += [p for p in sorted((root_dir / MAN_DIR).glob("*.1")) if p not in files]
    return [path.relative_to(root_dir) for path in found]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
