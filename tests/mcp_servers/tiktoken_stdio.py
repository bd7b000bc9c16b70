"""The test documentation server over stdio: ``python tiktoken_stdio.py [NAME]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from docs import build

if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else "tiktoken").run("stdio")
