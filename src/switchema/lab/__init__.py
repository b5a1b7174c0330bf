"""The lab: tasks, training loop, metrics and reports that rerun the papers' studies.

One way through, each step importing only what is below it::

    cli -> flags (settings -> StudyConfig, each field a Setting) -> resolve (-> Study, once)
        -> runner (preflight checks; compare: one cell; sweep: a grid of cells)
        -> jobs / executors (progress; data with its validation split) -> train.train_run
        -> methods (EMA, SWA, SwitchRule: every averaging setting through averager_options)

and, reading saved folders only, ``state`` (which jobs are done, failed, running or
interrupted), ``report`` (tables, plots, exports, diff, the claims table and the results
document), ``analyze`` and ``nqm``. Usage errors
and the command line's exit statuses are in ``errors``; the names of a run's models
(``ema/avg@0.999/0``), which training writes and every reader reads, are in ``keys``.
"""
