"""The documentation site builds offline with warnings as errors, and its API reference covers
the public API.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from the navigation,
a snippet that is not found, or a docstring mkdocstrings cannot render.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import switchema

ROOT = Path(__file__).resolve().parents[1]

#: modules split out of a larger one by concept, whose public names the original module
#: (``landscape``, ``sharpness``, ``nqm``) re-exports and the reference documents there
FACADE_PARTS = {
    "switchema.analysis.basin",
    "switchema.analysis.directions",
    "switchema.analysis.interpolation",
    "switchema.analysis.hessian",
    "switchema.analysis.worst_case",
    "switchema.analysis.nqm_closed_forms",
    "switchema.analysis.nqm_simulation",
}

#: the public modules whose ``__all__`` the API reference documents, besides ``switchema``
PUBLIC_MODULES = (
    "switchema.policies",
    "switchema.schedules",
    "switchema.switching",
    "switchema.settings",
    "switchema.events",
    "switchema.batchnorm",
    "switchema.profiles",
    "switchema.checkpoints",
    "switchema.power",
    "switchema.posthoc",
    "switchema.distributed",
    "switchema.integrations.lightning",
    "switchema.integrations.transformers",
    "switchema.analysis.sharpness",
    "switchema.analysis.landscape",
    "switchema.analysis.distance",
    "switchema.analysis.nqm",
    "switchema.analysis.objective",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: install the docs extra (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return out


def _ids(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in (site / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(switchema\.[\w.]+)"', page.read_text()))
    return ids


def test_every_public_name_has_its_reference(site):
    ids = _ids(site)
    missing = [name for name in switchema.__all__ if f"switchema.{name}" not in ids]
    assert not missing, f"in switchema.__all__ but not in docs/api: {missing}"
    for module_name in PUBLIC_MODULES:
        source = (ROOT / "src" / Path(*module_name.split("."))).with_suffix(".py")
        names = re.search(r"^__all__ = \[(.*?)\]", source.read_text(), re.S | re.M)
        assert names, module_name
        for name in re.findall(r'"(\w+)"', names[1]):
            assert f"{module_name}.{name}" in ids, f"{module_name}.{name} is not in docs/api"


def test_every_public_module_is_documented():
    """A new public module gets a page: the reference lists every module without an
    underscore, except the lab's implementation (the lab's API is its command line, and
    ``switchema.lab.tasks`` for plugins)."""
    api = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: (switchema[\w.]*)", api, re.M))
    internal = ("switchema.lab", "switchema.cli", "switchema.analysis.nqm_study")
    for path in sorted((ROOT / "src" / "switchema").rglob("*.py")):
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        if any(p.startswith("_") and p != "__init__" for p in parts) or name.startswith(internal):
            continue
        if name in (
            "switchema",
            "switchema.analysis",
            "switchema.integrations",
            "switchema.averaging",
            "switchema.bema",
        ):
            continue  # packages re-exporting their modules' names; averaging's are switchema's
        if name in FACADE_PARTS:
            continue  # its names are documented on the page of the module that re-exports them
        assert name in documented or any(d.startswith(name + ".") for d in documented), name
    assert "switchema.lab.tasks" in documented


def test_the_findings_pages_are_the_generated_files(site):
    """The site publishes experiments/CLAIMS.md and RESULTS.md themselves, with their figures."""
    claims = (site / "experiments" / "CLAIMS" / "index.html").read_text()
    counts = re.search(
        r"\d+ claims measured: [^.;<]*", (ROOT / "experiments" / "CLAIMS.md").read_text()
    )
    assert counts and counts[0] in claims
    results = (site / "experiments" / "RESULTS" / "index.html").read_text()
    for figure in re.findall(
        r"\]\((results/[\w.-]+\.png)\)", (ROOT / "experiments" / "RESULTS.md").read_text()
    ):
        assert (site / "experiments" / figure).is_file(), figure
        assert figure in results


def test_getting_started_includes_the_readme(site):
    """The two commands and the quick start are written once, in the README."""
    html = (site / "getting-started" / "index.html").read_text()
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", html))
    readme = (ROOT / "README.md").read_text()
    for command in re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]:
        assert command in text
    quickstart = re.search(r"<!-- test: quickstart -->\n```python\n(.*?)\n```", readme, re.S)[1]
    assert all(line in text for line in quickstart.splitlines())
