"""The Python blocks of the project's Markdown files (README.md, docs/**/*.md), for the tests
that run them.

Each ```python block is preceded by ``<!-- test: NAME -->``: NAME says which test runs it and
what is checked after it. ``excerpt PATH`` blocks are excerpts of a file that another test
runs: their code lines must appear in that file, in order. Code that is not meant to run goes
in a fence without a language (or ```text), never in a ```python one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- test: (?P<tag>[^>]*?) -->\n)?```python\n(?P<code>.*?)\n```", re.S)


def pages() -> list[Path]:
    """README.md and every Markdown page of the documentation."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[tuple[str | None, str]]:
    """(tag, code) of every ```python block of one file, in order."""
    return [(m["tag"], m["code"]) for m in BLOCK.finditer(path.read_text())]


def all_blocks() -> list[tuple[Path, str | None, str]]:
    return [(path, tag, code) for path in pages() for tag, code in blocks(path)]


def block(tag: str) -> tuple[Path, str]:
    """The one block tagged ``tag`` anywhere in the README or the docs, with its file."""
    found = [(path, code) for path, t, code in all_blocks() if t == tag]
    assert len(found) == 1, f"{len(found)} blocks tagged {tag!r} (want exactly one)"
    return found[0]


def run(tag: str, namespace: dict | None = None) -> dict:
    """Execute the block tagged ``tag`` in ``namespace`` (a copy) and return the namespace."""
    path, code = block(tag)
    namespace = dict(namespace or {})
    exec(compile(code, str(path.relative_to(ROOT)), "exec"), namespace)
    return namespace


def code_line(line: str) -> str:
    """A line without indentation and trailing comment ('' for comments and blank lines)."""
    return line.split("  #")[0].split("# ")[0].strip() if not line.strip().startswith("#") else ""


def check_excerpt(path: Path, code: str, source: Path) -> None:
    """Every code line of ``code`` appears in ``source``, in the same order."""
    lines = [code_line(line) for line in source.read_text().splitlines()]
    pos = 0
    for line in code.splitlines():
        want = code_line(line)
        if not want or want == "...":
            continue
        where = f"{path.relative_to(ROOT)}: excerpt line {want!r} not found in {source.name}"
        assert want in lines[pos:], where
        pos = lines.index(want, pos) + 1
