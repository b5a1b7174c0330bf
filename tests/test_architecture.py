"""The package's layers, read from the source with ``ast``: no import cycles, no private names
imported across modules, analysis below the lab, reports drawn from saved folders, short
functions in the lab."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "switchema"

# Known import cycles and private imports inside the library (averaging <-> distributed), kept
# here while they are being removed; both lists are empty now.
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


@functools.cache
def _graph() -> dict[str, frozenset[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


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
    for m in MODULES:
        reach = _reaches(m)
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


def test_lab_functions_are_short():
    long = []
    for path in sorted((PACKAGE / "lab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 85:
                long.append(f"{path.relative_to(SRC)}:{node.name}")
    assert not long, long


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
