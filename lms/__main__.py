"""``python -m lms``: the ``lms`` command."""

from lms.cli import main

if __name__ == "__main__":
    main()
