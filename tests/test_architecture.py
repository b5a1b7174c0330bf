"""The package's layers, read from the source with ``ast``: no import cycles (a package's
``__init__`` counts as imported with any of its modules), no private names imported across
modules, no private module imported from outside the package that owns it (the core's internals
stay in the core), each layer reaching only the layers below it, analysis below the lab, reports
drawn from saved folders, modules of at most 600 lines, short functions in the lab."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "switchema"

# The library's own import cycles (averaging <-> distributed, and what they share), fixed on
# their own branch; remove these lines when it is merged.
KNOWN_LIBRARY_CYCLES: list[set[str]] = []
KNOWN_LIBRARY_PRIVATE: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, str | None]]:
    """``(imported module, name or None)`` for every switchema import in ``module``, anywhere."""
    path, is_pkg = MODULES[module]
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("switchema")]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.startswith("switchema"):
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    out.append((sub, None) if sub in MODULES else (target, a.name))
    return out


def _edges(module: str, target: str) -> set[str]:
    """What importing ``target`` from ``module`` runs: ``target`` and the ``__init__`` of every
    package above it that ``module`` is not already inside (``from .tasks.base import X`` in
    ``lab.probe`` runs ``lab/tasks/__init__.py`` first, and everything it imports)."""
    parts = target.split(".")
    above = {".".join(parts[:i]) for i in range(1, len(parts))}
    outside = {a for a in above if a in MODULES and not f"{module}.".startswith(f"{a}.")}
    return ({target} | outside) - {module}


@functools.cache
def _graph() -> dict[str, frozenset[str]]:
    return {
        m: frozenset().union(*(_edges(m, t) for t, _ in _imports(m) if t in MODULES))
        for m in MODULES
    }


def _cycles(graph: dict[str, frozenset[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_import_graph_is_acyclic():
    cycles = [c for c in _cycles(_graph()) if c not in KNOWN_LIBRARY_CYCLES]
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    found = [
        (m, t, name)
        for m in MODULES
        for t, name in _imports(m)
        if name and name.startswith("_") and not name.startswith("__")
    ]
    assert set(found) <= KNOWN_LIBRARY_PRIVATE, set(found) - KNOWN_LIBRARY_PRIVATE


# Private modules that any layer may import, each with its reason; keep this list short.
SHARED_PRIVATE = {
    # The one wording of usage errors ("decay must be in [0, 1), got 1.5", "... got True
    # (bool)"): the lab, the analysis tools and the integrations check their arguments with the
    # core's checks so that every message reads the same. It imports nothing from switchema
    # (checked below), so it pulls in no other internal, and staying private keeps these
    # helpers out of the public API.
    "switchema._checks",
}
# Imports that cross into a private module while another change removes them (none today).
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


def _owner(module: str) -> str | None:
    """The package whose own modules may import ``module``, or None if it is public.

    A private module (a name starting with ``_``) belongs to the package that holds it:
    ``analysis._grid`` to ``analysis``, ``integrations._common`` to ``integrations``. The private
    modules at the top (``_kernels``, ``_checks``, ``_binding``, ``_dtensor``, ``_views``,
    ``_profiles``) are the library core's internals: they belong to the core, the top-level
    modules other than the command line, not to the lab, the analysis tools, the integrations or
    the command line, which use the core's public modules.
    """
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _layer(module: str) -> str:
    """``switchema.lab``, ``switchema.analysis``, ... for a subpackage's modules; ``cli`` for
    the command line; ``switchema`` for the core (the other top-level modules)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "switchema"
    top = ".".join(parts[:2])
    if MODULES.get(top, (None, False))[1]:
        return top
    return "cli" if parts[1] in ("cli", "cli_reports", "cli_average", "__main__") else "switchema"


def _may_import(module: str, target: str) -> bool:
    owner = _owner(target)
    if owner is None or target in SHARED_PRIVATE:
        return True
    if owner == "switchema":  # the core's internals
        return _layer(module) == "switchema"
    return f"{module}.".startswith(f"{owner}.")


def _private_crossings() -> set[tuple[str, str]]:
    return {(m, t) for m in MODULES for t, _ in _imports(m) if not _may_import(m, t)}


def test_the_private_module_rule():
    # the rule itself, on examples (whether or not the modules exist)
    assert not _may_import("switchema.lab.probe", "switchema.analysis._objective")
    assert not _may_import("switchema.lab.config", "switchema._profiles")
    assert not _may_import("switchema.integrations._common", "switchema._binding")
    assert not _may_import("switchema.cli", "switchema._kernels")
    assert not _may_import("switchema.lab.report.tables", "switchema.lab.tasks._x")
    assert _may_import("switchema.averaging", "switchema._kernels")
    assert _may_import("switchema.posthoc", "switchema._profiles")
    assert _may_import("switchema.analysis.basin", "switchema.analysis._grid")
    assert _may_import("switchema.integrations.lightning", "switchema.integrations._common")
    assert _may_import("switchema.lab.tasks.split", "switchema.lab.tasks._x")
    assert _may_import("switchema.lab.probe", "switchema.analysis.objective")
    assert _may_import("switchema.lab.config", "switchema._checks")  # shared, see above
    # ... and the modules it names exist
    assert {t for _, t in KNOWN_PRIVATE_IMPORTS} | SHARED_PRIVATE <= set(MODULES)


def test_no_private_module_is_imported_from_outside_its_package():
    found = _private_crossings()
    assert found <= KNOWN_PRIVATE_IMPORTS, sorted(found - KNOWN_PRIVATE_IMPORTS)
    for shared in SHARED_PRIVATE:  # a shared internal pulls in no other
        assert not _graph()[shared], (shared, sorted(_graph()[shared]))


def _reaches(module: str) -> set[str]:
    graph, seen, todo = _graph(), set(), [module]
    while todo:
        for t in graph[todo.pop()] - seen:
            seen.add(t)
            todo.append(t)
    return seen


def test_layers():
    below = {
        # the library's switch rule knows nothing of the lab or the averagers
        "switchema.switching": {"switchema._checks"},
    }
    for module, allowed in below.items():
        assert _reaches(module) <= allowed, module
    # core <- analysis <- lab <- cli, and core <- integrations: what each layer may reach
    may_reach = {
        "switchema": {"switchema"},
        "switchema.analysis": {"switchema", "switchema.analysis"},
        "switchema.integrations": {"switchema", "switchema.integrations"},
        "switchema.lab": {"switchema", "switchema.analysis", "switchema.lab"},
    }
    assert {_layer(m) for m in MODULES} == set(may_reach) | {"cli"}  # a new layer: place it
    for m in MODULES:
        reach = _reaches(m)
        if _layer(m) in may_reach:
            above = {r for r in reach if _layer(r) not in may_reach[_layer(m)]}
            assert not above, (m, sorted(above))
        if m.startswith("switchema.analysis"):  # analysis computes: no lab, no plotting
            assert not {r for r in reach if r.startswith("switchema.lab")}, m
        if m.startswith("switchema.lab.report"):  # reports draw from saved folders only
            forbidden = {"train", "jobs", "executors", "runner"}
            assert not {r for r in reach if r.rsplit(".", 1)[-1] in forbidden}, m
        if not m.startswith(("switchema.cli", "switchema.__main__")):
            assert "switchema.cli" not in reach, m
    for path, _ in MODULES.values():
        if "analysis" in path.parts:
            assert "matplotlib" not in path.read_text(), path


# Modules over the limit that another change is splitting; remove an entry when it lands.
KNOWN_LONG_MODULES: set[str] = set()


def test_modules_are_short():
    long = {
        str(path.relative_to(SRC))
        for path, _ in MODULES.values()
        if len(path.read_text().splitlines()) > 600
    }
    assert long <= KNOWN_LONG_MODULES, sorted(long - KNOWN_LONG_MODULES)


def test_lab_functions_are_short():
    long = []
    for path in sorted((PACKAGE / "lab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 85:
                long.append(f"{path.relative_to(SRC)}:{node.name}")
    assert not long, long


# How a model's name (``method/label/seed``, ``probs/...``, ``avg@0.99``) was built or taken
# apart by hand before switchema.lab.keys owned it; each with a line of the old code it caught.
AD_HOC_MODEL_NAMES = {
    "a split on '/' or '@'": (
        r"\.r?(?:split|partition)\(\s*['\"][/@]['\"]",
        'float(r["model"].split("@", 1)[1])',
    ),
    "a decay or width written into a label": (r"@\{", 'f"avg@{d:g}"'),
    "an array name spelled out": (
        r"\b(?:probs|val_probs|grid|samples)/\{",
        'arrays[f"samples/{method}/{model}/{seed}"]',
    ),
    "a name matched by its start": (
        r"startswith\(\s*\(?\s*f?['\"](?:online|avg|pow|tracked|posthoc|probs|val_probs|grid"
        r"|samples)[@/]",
        'k.startswith("samples/")',
    ),
    "a method's names matched by their start": (
        r"startswith\(\s*f['\"]\{[^}]*\}/",
        'k.startswith(f"{m}/")',
    ),
    "method/label/seed spelled out": (
        r"\{[^{}]*\}/\{[^{}]*\}/\{",
        'self.states[f"{m}/{self.labels[m]}/{s}"]',
    ),
    "method/label spelled out": (
        r"\{[^{}]*method[^{}]*\}/\{",
        "f\"{r['method']}/{r['model']}\"",
    ),
    "a label spelled into a name": (
        r"\}/(?:online|avg)\b",
        'out.states[f"{method.name}/online/{seed}"]',
    ),
}


def test_model_names_are_built_and_parsed_by_lab_keys_only():
    """The lab names its models through :mod:`switchema.lab.keys` (one format, one parse);
    no other module of the lab builds or splits such names by hand."""
    for what, (pattern, old) in AD_HOC_MODEL_NAMES.items():
        assert re.search(pattern, old), what  # the check would have caught the old code
    found = []
    for path in sorted((PACKAGE / "lab").rglob("*.py")):
        if path == PACKAGE / "lab" / "keys.py":
            continue
        text = path.read_text()
        for what, (pattern, _) in AD_HOC_MODEL_NAMES.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert not found, "use switchema.lab.keys (ModelKey, ModelLabel):\n" + "\n".join(found)


def test_python_dash_m_switchema(capsys):
    done = subprocess.run(
        [sys.executable, "-m", "switchema", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "usage: switchema" in done.stdout and "compare" in done.stdout
    from switchema.cli import main

    for command in ("compare", "sweep"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0 and "--decay" in capsys.readouterr().out


def test_usage_errors_exit_2_and_bugs_show_their_traceback(tmp_path, monkeypatch, capsys):
    from switchema.cli import main
    from switchema.lab import runner

    assert main(["compare", "--epochs", "0", "--out", str(tmp_path / "x")]) == 2
    assert "epochs must be a positive int, got 0" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise ValueError("a bug, not a usage error")

    monkeypatch.setattr(runner, "run_compare", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["compare", "--task", "circles", "--epochs", "1", "--out", str(tmp_path / "y")])
