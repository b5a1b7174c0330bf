"""``switchema nqm``: compute the noisy-quadratic-model study, save its numbers, report them.

The numbers come from :func:`switchema.analysis.nqm_study.nqm_study`; this module saves them
as ``nqm.json`` (trajectories rounded to 6 significant digits to keep the file small) and has
:func:`switchema.lab.report.write_nqm_report` draw ``nqm.md`` and the plots from that file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.nqm_study import check_nqm_arguments, nqm_study
from .errors import RunExistsError, UsageError
from .preflight import check_writable
from .report import Figures, write_nqm_report

__all__ = ["run_nqm"]


def run_nqm(
    out_dir: str | Path,
    *,
    eta: float = 0.5,
    h: float = 1.0,
    s2: float = 1.0,
    decay: float = 0.99,
    k: int = 10,
    steps: int = 4000,
    chains: int = 2000,
    seed: int = 0,
    m0: float = 1.0,
    grid: Mapping[str, Any] | None = None,
    burn_in: int | None = None,
    figures: Figures | None = None,
) -> Path:
    """Run the NQM study and write ``nqm.json``, ``nqm.md``, ``nqm_variance.png`` and
    ``nqm_bias.png`` to ``out_dir`` (created); returns ``out_dir``. Arguments as for
    :func:`~switchema.analysis.nqm_study.nqm_study`; every one is checked before anything is
    written (a bad one raises :class:`~switchema.lab.errors.UsageError` naming it), and a
    folder that already holds an NQM study is never overwritten
    (:class:`~switchema.lab.errors.RunExistsError`).
    """
    args = dict(eta=eta, h=h, s2=s2, decay=decay, k=k, steps=steps, chains=chains, seed=seed)
    args.update(m0=m0, grid=grid, burn_in=burn_in)
    try:
        check_nqm_arguments(**args)
    except (TypeError, ValueError) as e:  # the caller's mistake, named; not a bug
        raise UsageError(str(e).replace("pass burn_in", "pass --burn-in STEPS")) from e
    out = Path(out_dir)
    if (out / "nqm.json").exists():
        raise RunExistsError(
            f"{out} already holds an NQM study (nqm.json); choose another --out (results are "
            f"never overwritten)"
        )
    check_writable(out, "output folder")
    data = nqm_study(**args)
    data["trajectories"] = {
        m: {key: [_sig(x) for x in values] for key, values in d.items()}
        for m, d in data["trajectories"].items()
    }
    data = json.loads(_dumps(data))  # the tables and plots are drawn from what is saved
    out.mkdir(parents=True, exist_ok=True)
    (out / "nqm.json").write_text(_dumps(data))
    write_nqm_report(out, figures)
    return out


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _dumps(data: dict[str, Any]) -> str:
    """JSON with one line per list of numbers (the trajectories are long)."""
    text = json.dumps(data, indent=1, default=_json_default)
    return re.sub(r"\[[-0-9.eE+,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text) + "\n"


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
