"""Resolve a :class:`~switchema.lab.config.StudyConfig` into a :class:`~switchema.lab.config.Study`, once.

Every setting is checked against its metadata (type, range, allowed values), then the rules
that tie settings together (label noise needs a classifier, the learning-rate warm-up fits in
the epochs, the task knows its options and their declared types and ranges, a switching method takes one decay). Every problem is
reported at once, each naming the bad value and what is allowed, before anything is written or
trained.
"""

from __future__ import annotations

from typing import Any

from ..schedules import DecaySchedule, LinearWarmup, resolve_schedule
from ..switching import SwitchRule
from .config import SETTINGS, Setting, Study, StudyConfig
from .errors import ConfigError, UsageError, did_you_mean
from .methods import check_methods, decay_problems, switch_problems
from .tasks import Task, get_task
from .tasks.base import option_problems
from .units import Duration, parse_duration, parse_interval

__all__ = ["resolve"]


def resolve(config: StudyConfig) -> Study:
    """Check ``config``, fill in the task's defaults and build the typed study.

    Raises:
        ConfigError: every problem, listed in ``problems`` and joined in the message.
    """
    problems: list[str] = []
    task = None
    try:
        task = get_task(config.task)
    except (TypeError, UsageError) as e:
        problems.append(str(e))
    try:
        check_methods(config.methods)
    except ConfigError as e:
        problems += e.problems
    if task is not None:
        missing = {k: v for k, v in task.defaults.items() if getattr(config, k) is None}
        config = config.replace(**missing)
    for name, s in SETTINGS.items():
        if name not in ("task", "methods") and not (task is None and s.task_default):
            problems += _value_problems(name, s, getattr(config, name))
    problems += _rules(config, task)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return Study(
        config=config,
        task=task,
        switch=SwitchRule(
            parse_interval(config.switch_every),
            start=Duration(config.switch_start, "epochs"),
            reset_optimizer=config.reset_optimizer,
        ),
        ema_warmup=_warmup(config),
        ema_start=parse_duration(config.ema_start),
        ema_warmup_length=parse_duration(config.ema_warmup_length),
    )


def _warmup(config: StudyConfig) -> DecaySchedule | None:
    if config.ema_warmup == "none":
        return None
    if config.ema_warmup == "linear":  # its length: Study.warmup_schedule(steps_per_epoch)
        return LinearWarmup(ratio=config.ema_warmup_ratio)
    return resolve_schedule(config.ema_warmup)


def _value_problems(name: str, s: Setting, value: Any) -> list[str]:
    if not s.several:
        problem = s.problem(name, value)
        return [problem] if problem else []
    if name == "seeds":
        ok = bool(value) and all(s.type_ok(v) for v in value) and len(set(value)) == len(value)
        return [] if ok else [f"seeds must be distinct integers, got {list(value)!r}"]
    if not value:
        return [f"give at least one EMA {name}"]
    problems = [p for p in (s.problem(name, v) for v in value) if p]
    if not problems and len(set(value)) != len(value):
        twice = sorted({v for v in value if value.count(v) > 1})
        problems.append(
            f"{name} values must be distinct; given more than once: {', '.join(map(str, twice))}"
        )
    return problems


def _rules(cfg: StudyConfig, task: Task | None) -> list[str]:
    """The checks that involve more than one setting."""
    problems = decay_problems(cfg.methods, cfg.decay) if isinstance(cfg.decay, tuple) else []
    problems += switch_problems(cfg.methods, cfg.switch_every)
    noise_ok = SETTINGS["label_noise"].problem("label_noise", cfg.label_noise) is None
    if task is not None and noise_ok and cfg.label_noise and task.kind != "classification":
        problems.append(f"label noise needs a classification task; {cfg.task!r} is {task.kind}")
    if SETTINGS["epochs"].problem("epochs", cfg.epochs) is None and cfg.epochs is not None:
        if not (isinstance(cfg.warmup_epochs, int) and 0 <= cfg.warmup_epochs < cfg.epochs):
            problems.append(
                f"warmup epochs must be in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs!r}"
            )
    if task is None:
        return problems
    for what, fn, given in (
        ("data", task.build_data, cfg.data_options),
        ("model", task.build_model, cfg.model_options),
    ):
        allowed = getattr(fn, "options", None)
        if not isinstance(given, dict) or allowed is None:
            continue
        unknown = sorted(set(given) - set(allowed))
        for name in unknown:
            hint = did_you_mean(name, allowed)
            problems.append(
                f"unknown {what} option {name!r} for task {cfg.task!r}{hint}; allowed: "
                f"{', '.join(allowed or ()) or 'none'}"
            )
        known = {k: v for k, v in given.items() if k in allowed}
        problems += option_problems(fn, known, f"{what} option")
    return problems
