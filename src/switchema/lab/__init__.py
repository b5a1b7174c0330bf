"""The lab: tasks, training loop, metrics and reports that rerun the papers' studies."""
