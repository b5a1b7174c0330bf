"""The package as users install it: a wheel that builds offline, passes ``twine check``, ships
its ``py.typed`` marker and nothing but the package, at the version the code reports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import switchema

ROOT = Path(__file__).resolve().parents[1]


def _tool(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: install the dev extra (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    _tool("build")
    out = tmp_path_factory.mktemp("dist")
    egg_info = ROOT / "src" / "switchema.egg-info"
    had_egg_info = egg_info.exists()  # an editable install keeps its metadata there
    had_build = (ROOT / "build").exists()
    # --no-isolation: build with the installed setuptools, so nothing is downloaded
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if not had_build:
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder
    if not had_egg_info:
        shutil.rmtree(egg_info, ignore_errors=True)
    (found,) = out.glob("switchema-*.whl")
    return found


def test_wheel_passes_twine_check(wheel):
    _tool("twine")
    r = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout


def test_wheel_ships_the_package_and_its_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "switchema/py.typed" in names
    assert "switchema/averaging.py" in names and "switchema/lab/tasks/__init__.py" in names
    tops = {name.split("/")[0] for name in names}
    assert tops == {"switchema", f"switchema-{switchema.__version__}.dist-info"}, tops
    metadata = (
        zipfile.ZipFile(wheel)
        .read(f"switchema-{switchema.__version__}.dist-info/METADATA")
        .decode()
    )
    assert "Classifier: Typing :: Typed" in metadata
    assert "Provides-Extra: docs" in metadata and "Provides-Extra: dev" in metadata
    assert "Description-Content-Type: text/markdown" in metadata


def test_version_is_the_same_everywhere():
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and version[1] == switchema.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(
        rf"^## \[{re.escape(switchema.__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M
    )
    assert "## [Unreleased]" in changelog
