"""Repository hygiene: lint and format, and CI running the README's test command."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff():
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: install the dev extra (pip install -e '.[dev]')")
    return exe


def _code_dirs():
    return [
        d for d in ("src", "tests", "benchmarks", "experiments", "examples") if (ROOT / d).is_dir()
    ]


def test_ruff_lint():
    r = subprocess.run([_ruff(), "check", *_code_dirs()], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format():
    r = subprocess.run(
        [_ruff(), "format", "--check", *_code_dirs()],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, re.S)


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) >= 2, "README must open with the main-job and test commands"
    main_job, tests = commands[0].strip(), commands[1].strip()
    assert main_job.endswith("switchema compare")
    assert "pytest" in tests and "torch==2.13.0" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_no_machine_paths_or_issue_numbers_in_project_files():
    # A reader elsewhere has neither this machine's folders nor the tracker's numbering.
    home = "/" + "(home|work|root)/"
    pattern = re.compile(home + r"|\b[Ii]ssues? #?\d")
    files = [ROOT / "README.md", *(ROOT / "experiments").glob("*.sh")]
    for folder in ("src", "tests", "benchmarks", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".sh")]
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in files
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
