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
