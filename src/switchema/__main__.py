"""``python -m switchema``: the same command line as ``switchema``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
