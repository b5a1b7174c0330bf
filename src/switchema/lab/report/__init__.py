"""Tables and plots drawn from saved folders only; nothing here trains or computes a measure.

* :mod:`.run`: a ``compare`` run folder read and summarised (p-values Holm-corrected);
* :mod:`.summary`: its ``summary.md`` and plots (curves, reliability, boundaries);
* :mod:`.sweep`, :mod:`.sweep_plots`: a sweep folder (``sweep.md``, ``sweep_<axis>.png``);
* :mod:`.notes`: what ``summary.md`` says around its tables (data used, warnings, legend);
* :mod:`.export`: ``metrics.csv`` and TensorBoard event files;
* :mod:`.diff`: two runs side by side (``switchema diff``);
* :mod:`.analysis`: ``switchema analyze`` (``analysis.md``, interpolation, landscapes);
* :mod:`.nqm`: ``switchema nqm`` (``nqm.md``, variance and bias plots);
* :mod:`.style`: the one plot style, the methods' colours, the figures' format and dpi;
* :mod:`.points`, :mod:`.measures`: per-seed numbers at the final or validation-best epoch, and
  the registry of measures a claim can use;
* :mod:`.claims`: the claims table (``switchema claims``), with :mod:`.provenance`;
* :mod:`.tables`, :mod:`.results`: the results document filled from a template
  (``switchema results``).
"""

from . import style  # noqa: F401  (first: the Agg backend before any figure)
from .analysis import write_analysis_report
from .diff import diff_runs
from .export import CSV_COLUMNS, tensorboard_writer, write_csv, write_tensorboard
from .nqm import write_nqm_report
from .run import PRIMARY, has_results, load_run, main_label, summarise
from .style import Figures
from .summary import write_report
from .sweep import write_sweep_report

__all__ = [
    "CSV_COLUMNS",
    "Figures",
    "PRIMARY",
    "diff_runs",
    "tensorboard_writer",
    "write_csv",
    "write_tensorboard",
    "has_results",
    "load_run",
    "main_label",
    "summarise",
    "write_analysis_report",
    "write_nqm_report",
    "write_report",
    "write_sweep_report",
]
