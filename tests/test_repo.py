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
        d
        for d in ("src", "tests", "benchmarks", "experiments", "examples", "docs/_hooks.py")
        if (ROOT / d).exists()
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
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci
    assert "python -m mypy" in ci.split(tests, 1)[1], ".ci/run type-checks after the tests"


#: what must not appear in the project's files: this machine's paths, and issue numbers (a
#: file says what and why in its own words; the tracker's numbers mean nothing in a clone)
PRIVATE = re.compile(r"(?i)\bissues?[ -]#?\d+|/(?:work|home|Users)/\w")
#: files allowed to name them (none: the claims spec says what it tests in its own words)
PRIVATE_EXEMPT: set[str] = set()


def test_no_machine_paths_or_issue_numbers():
    r = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    found = []
    for name in r.stdout.splitlines():
        path = ROOT / name
        if name in PRIVATE_EXEMPT or not path.is_file() or path.suffix in {".png", ".pdf"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if PRIVATE.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
