"""``python -m switchema``: the same command line as ``switchema``."""

import sys

from .cli import main

sys.exit(main())
