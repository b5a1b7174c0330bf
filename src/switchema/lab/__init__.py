"""The lab: tasks, training loop, metrics and reports that rerun the papers' studies.

One way through, each step importing only what is below it::

    cli -> flags (settings -> StudyConfig) -> resolve (-> Study, once)
        -> runner (compare: one cell; sweep: a grid of cells) -> jobs / executors
        -> train.train_run -> methods (EMA, SWA, SwitchRule)

and, reading saved folders only, ``report`` (tables and plots), ``analyze`` and ``nqm``.
"""
