"""``python -m switchema``: the same command line as ``switchema``."""

from .cli import entry

if __name__ == "__main__":
    entry()
