"""``python -m lms``: the ``lms`` command."""

from lms.launcher import main

if __name__ == "__main__":
    main()
