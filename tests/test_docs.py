"""Every docstring example in the package runs, and shows the state it claims."""

import doctest
import importlib
import pkgutil

import pytest

import switchema

OPTIONAL = ("switchema.integrations.lightning", "switchema.integrations.transformers")


def _modules():
    for info in pkgutil.walk_packages(switchema.__path__, "switchema."):
        yield info.name


@pytest.mark.parametrize("name", ["switchema", *_modules()])
def test_docstring_examples_run(name):
    if name in OPTIONAL:
        pytest.importorskip(name.rsplit(".", 1)[1])
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def _example_blocks():
    """(where, block) for every ``Example...::`` / ``Usage...::`` block of every docstring."""
    import ast
    import re
    from pathlib import Path

    root = Path(switchema.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)
        ]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            for m in re.finditer(r"(?im)^[^\n]*\b(example|usage)\b[^\n]*::[ \t]*$", doc):
                block = []
                for line in doc[m.end() :].split("\n")[1:]:
                    if line.strip() and not line.startswith(" "):
                        break
                    block.append(line)
                yield f"{path.relative_to(root)}:{getattr(node, 'name', 'module')}", block


def test_every_docstring_example_is_a_doctest():
    """An example that is not written with ``>>>`` would never run: refuse it."""
    found = list(_example_blocks())
    assert len(found) >= 8  # the blocks introduced as examples (others are plain doctests)
    bare = [
        where for where, block in found if not any(ln.strip().startswith(">>>") for ln in block)
    ]
    assert not bare, f"examples that doctest would not run: {bare}"
