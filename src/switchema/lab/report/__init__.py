"""Tables and plots drawn from saved folders only; nothing here trains or computes a measure.

* :mod:`.run`: a ``compare`` run folder (``summary.md``, curves, reliability, boundaries);
* :mod:`.sweep`: a sweep folder (``sweep.md``, ``sweep_<axis>.png``);
* :mod:`.analysis`: ``switchema analyze`` (``analysis.md``, interpolation, landscapes);
* :mod:`.nqm`: ``switchema nqm`` (``nqm.md``, variance and bias plots);
* :mod:`.style`: the one plot style and the methods' colours.
"""

from . import style  # noqa: F401  (first: the Agg backend before any figure)
from .analysis import write_analysis_report
from .nqm import write_nqm_report
from .run import PRIMARY, has_results, load_run, main_label, summarise, write_report
from .sweep import write_sweep_report

__all__ = [
    "PRIMARY",
    "has_results",
    "load_run",
    "main_label",
    "summarise",
    "write_analysis_report",
    "write_nqm_report",
    "write_report",
    "write_sweep_report",
]
