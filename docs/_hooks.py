"""MkDocs hook: publish the lab's generated findings as pages of the site.

``experiments/CLAIMS.md``, ``experiments/RESULTS.md`` and the figures and tables they link
(``experiments/results/``) are generated from saved runs and never edited by hand. The site
shows those files themselves, at ``experiments/...``, so its findings cannot drift from them
and their relative links keep working.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ("experiments/CLAIMS.md", "experiments/RESULTS.md", "experiments/results")


def on_files(files: Files, config) -> Files:
    for name in PUBLISHED:
        path = ROOT / name
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            files.append(
                File(
                    str(p.relative_to(ROOT)),
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files
