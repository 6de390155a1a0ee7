"""``python -m zoo COMMAND ...``: the same commands as the installed ``bone-zoo``."""

import sys

from zoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
