"""``python -m lms.cli.docgen [--check] [--root DIR]``: write (or check) the generated docs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lms.cli.docgen import MAN_DIR, generate, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lms.cli.docgen",
        description="Write the completion scripts, man pages and README command reference "
        "from the lms Typer app.",
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="the project's root")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    root_dir: Path = args.root
    if not (root_dir / "pyproject.toml").exists():
        parser.error(f"{root_dir} is not the project's root (no pyproject.toml)")
    if args.check:
        drifted = stale(root_dir)
        for path in drifted:
            print(f"out of date: {path}", file=sys.stderr)
        if drifted:
            print("regenerate with: python -m lms.cli.docgen", file=sys.stderr)
        return 1 if drifted else 0
    files = generate(root_dir)
    for old in (root_dir / MAN_DIR).glob("*.1"):
        if old not in files:
            old.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(root_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
