"""The lab's settings, listed once, and the resolved study they become.

:class:`StudyConfig` is the single list of everything that determines a study's numbers. Each
field carries a :class:`Setting` in its metadata: help text, unit, allowed values, which
methods it affects, other names it is read under. From that list are generated

* the flags of ``switchema compare`` and ``switchema sweep`` (:mod:`switchema.lab.flags`),
* the checks of grid files (:mod:`switchema.lab.sweep`) and of every setting
  (:mod:`switchema.lab.resolve`),
* a job's key, hence its id (:mod:`switchema.lab.jobs`),

so a new setting is added here, in one place. :func:`switchema.lab.resolve.resolve` turns a
config into a :class:`Study` once: task defaults filled in, every value checked, the interval
parsed into a :class:`~switchema.switching.SwitchRule`, the warm-up into a decay schedule and
the task looked up. The study is what travels to the jobs; JSON appears only where a folder is
written (``StudyConfig.to_dict``) or read (``StudyConfig.from_dict``, which also reads the
names older run folders used).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import is_int, is_real
from ..profiles import SIGMA_REL_MAX
from ..schedules import DecaySchedule, LinearWarmup
from ..switching import SwitchRule
from .errors import ConfigError, did_you_mean
from .setting import ALWAYS, Setting, setting
from .tasks import Task, get_task
from .units import Duration, parse_duration

__all__ = [
    "ALIASES",
    "ALWAYS",
    "SETTINGS",
    "Duration",
    "Setting",
    "Study",
    "StudyConfig",
    "resolve_device",
]

_AVERAGING = ("ema", "sema", "sema-openmixup")
#: Post-hoc EMA widths evaluated by default: from very short to the widest (uniform) profile.
POSTHOC_GRID = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.13, 0.17, 0.22, 0.28)
_SWITCHING = ("sema", "sema-openmixup")


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's numbers; saved as ``config.json``.

    ``data_seed`` fixes the data set, its train/validation/test split and the flipped labels; ``seeds``
    vary the initial weights and the batch order. ``None`` for a training setting means the
    task's recommended default. Lists are kept as tuples (``decay=0.99`` is ``(0.99,)``).
    """

    task: str = setting(
        "mnist1d-cnn",
        kind="str",
        help="task name, or module:name for a task registered in your own module",
        aliases=("tasks",),
    )
    methods: tuple[str, ...] = setting(
        ("baseline", "ema", "sema", "swa"),
        kind="str",
        several=True,
        per_cell=True,
        help="methods compared",
        aliases=("method",),
    )
    seeds: tuple[int, ...] = setting(
        (0, 1, 2, 3, 4),
        kind="int",
        several=True,
        per_cell=True,
        help="training seeds: initial weights and batch order",
        aliases=("seed",),
    )
    epochs: int | None = setting(
        None, kind="int", minimum=1, unit="epochs", task_default=True, help="training epochs"
    )
    batch_size: int | None = setting(
        None, kind="int", minimum=1, unit="examples", task_default=True, help="examples per step"
    )
    optimizer: str | None = setting(
        None, kind="str", choices=("sgd", "adamw"), task_default=True, help="optimizer"
    )
    lr: float | None = setting(
        None,
        kind="float",
        minimum=0.0,
        requirement="> 0",
        task_default=True,
        help="peak learning rate",
    )
    weight_decay: float | None = setting(
        None, kind="float", minimum=0.0, task_default=True, help="weight decay"
    )
    momentum: float | None = setting(
        None, kind="float", minimum=0.0, task_default=True, help="SGD momentum"
    )
    nesterov: bool | None = setting(None, kind="bool", task_default=True, help="SGD Nesterov")
    lr_schedule: str = setting(
        "cosine",
        kind="str",
        choices=("cosine", "constant", "step"),
        help="learning-rate schedule after warm-up",
        aliases=("schedule",),
    )
    lr_final: float = setting(
        0.0,
        kind="float",
        minimum=0.0,
        maximum=1.0,
        unit="fraction of the peak rate",
        label="lr final",
        requirement="a fraction in [0, 1]",
        help="where the cosine schedule ends (0: at zero; 1: a constant rate)",
        before=0.0,
    )
    warmup_epochs: int = setting(
        0, kind="int", minimum=0, unit="epochs", help="linear learning-rate warm-up"
    )
    decay: tuple[float, ...] | None = setting(
        None,
        kind="float",
        task_default=True,
        several=True,
        minimum=0.0,
        maximum=1.0,
        max_open=True,
        unit="per averaging update (one every --ema-update-every optimizer steps)",
        methods=_AVERAGING,
        help="EMA decay(s), the old average's weight; several are kept in parallel (ema only)",
        aliases=("decays",),
    )
    ema_warmup: str = setting(
        "none",
        kind="str",
        choices=("none", "ema_paper", "power", "linear"),
        methods=("ema", "sema"),
        label="EMA warm-up",
        help="EMA decay warm-up: 'ema_paper' min(d, (1+t)/(10+t)), 'power' (timm), 'linear' "
        "from --ema-warmup-ratio x d to d over --ema-warmup-length (the official Switch EMA "
        "code's; sema-openmixup always uses it, from 0.9 x d over 5 epochs)",
    )
    ema_warmup_length: str = setting(
        "1000s",
        kind="duration",
        unit="'5e': epochs, '1000s': optimizer steps",
        methods=("ema", "sema"),
        requires=("ema_warmup", ("linear",)),
        label="EMA warm-up length",
        help="length of the linear EMA warm-up (counted in averaging updates: with "
        "--ema-update-every N, the steps / N updates in it)",
        before="1000s",
    )
    ema_warmup_ratio: float = setting(
        0.9,
        kind="float",
        minimum=0.0,
        maximum=1.0,
        methods=("ema", "sema"),
        requires=("ema_warmup", ("linear",)),
        label="EMA warm-up ratio",
        help="the linear EMA warm-up starts at this fraction of the decay",
        before=0.9,
    )
    ema_start: str = setting(
        "0",
        kind="duration",
        unit="'6e': epochs, '500s': optimizer steps",
        methods=(*_AVERAGING, "bema"),
        label="EMA start",
        help="the EMA's start_step: until then the average copies the model (so it starts from "
        "the weights reached there); warm-ups count from it",
        before="0",
    )
    ema_update_every: int = setting(
        1,
        kind="int",
        minimum=1,
        unit="optimizer steps",
        methods=(*_AVERAGING, "bema"),
        label="EMA update interval",
        help="the EMA averages every N optimizer steps and --decay is per averaging update, as "
        "in the EMA paper (updates every 16 steps, decays 0.968 ... 0.998): the window is "
        "about N / (1 - decay) steps",
        aliases=("update_every",),
        before=1,
    )
    buffers: str = setting(
        "copy",
        kind="str",
        choices=("copy", "average", "skip"),
        methods=(*_AVERAGING, "swa", "bema"),
        label="buffer policy",
        help="what an average does with the model's buffers (BatchNorm running statistics): "
        "'copy' the model's (the official Switch EMA code), 'average' them as the weights, or "
        "'skip' them (evaluated with the initial model's); recomputed BatchNorm statistics "
        "(--bn-recompute, always for SWA) replace them either way",
        before="copy",
    )
    switch_every: str = setting(
        "1",
        kind="interval",
        unit="'5e': epochs, '50s': optimizer steps",
        methods=_SWITCHING,
        help="Switch EMA interval",
        aliases=("switch_interval", "switch_intervals"),
    )
    switch_start: int | None = setting(
        None,
        kind="int",
        task_default=True,
        minimum=0,
        unit="epochs",
        methods=_SWITCHING,
        help="first epoch at whose end SEMA may switch",
    )
    swa_start: float = setting(
        0.75,
        kind="float",
        minimum=0.0,
        maximum=1.0,
        max_open=True,
        unit="fraction of the epochs",
        methods=("swa",),
        label="swa start",
        requirement="a fraction of training in [0, 1)",
        help="SWA averages the epoch ends after this fraction of training",
    )
    swa_every: str = setting(
        "1e",
        kind="interval",
        unit="'1e': epochs, '50s': optimizer steps",
        methods=("swa",),
        label="swa interval",
        help="SWA adds the weights to its average every this many epochs (at epoch ends) or "
        "steps, from --swa-start on",
        before="1e",
    )
    reset_optimizer: bool = setting(
        False,
        kind="bool",
        methods=_SWITCHING,
        help="clear the optimizer state (momentum, Adam moments) of switched parameters at each switch",
    )
    posthoc_sigma_rel: tuple[float, ...] = setting(
        (0.05, 0.10),
        kind="float",
        several=True,
        minimum=0.0,
        maximum=SIGMA_REL_MAX,
        unit="relative width",
        methods=("posthoc",),
        label="posthoc sigma_rel",
        requirement=f"a relative width in (0, {SIGMA_REL_MAX:.4f}]",
        help="widths of the power EMAs tracked and snapshotted for post-hoc synthesis (EDM2: "
        "0.05 0.10)",
    )
    posthoc_snapshots: int = setting(
        32,
        kind="int",
        minimum=2,
        unit="snapshots per run",
        methods=("posthoc",),
        help="snapshots of the tracked power EMAs, evenly spaced in optimizer steps",
    )
    posthoc_grid: tuple[float, ...] = setting(
        POSTHOC_GRID,
        kind="float",
        several=True,
        minimum=0.0,
        maximum=SIGMA_REL_MAX,
        unit="relative width",
        methods=("posthoc",),
        label="posthoc grid",
        requirement=f"relative widths in (0, {SIGMA_REL_MAX:.4f}]",
        help="EMA widths synthesised from the snapshots after training and evaluated",
    )
    posthoc_check: tuple[float, ...] = setting(
        (0.03, 0.07, 0.15),
        kind="float",
        several=True,
        minimum=0.0,
        maximum=SIGMA_REL_MAX,
        unit="relative width",
        methods=("posthoc",),
        label="posthoc check",
        requirement=f"relative widths in (0, {SIGMA_REL_MAX:.4f}]",
        help="widths also tracked directly during training, to check the synthesis against",
    )
    lawa_k: int = setting(
        5,
        kind="int",
        minimum=1,
        unit="epoch ends",
        methods=("lawa",),
        label="lawa k",
        help="LAWA averages the weights at the last k epoch ends, uniformly",
    )
    bn_recompute: bool = setting(
        True,
        kind="bool",
        methods=(*_AVERAGING, "posthoc", "lawa", "bema"),
        help="recompute BatchNorm statistics for averaged models before evaluating (always for SWA)",
    )
    label_noise: float = setting(
        0.0,
        kind="float",
        minimum=0.0,
        maximum=1.0,
        max_open=True,
        unit="fraction",
        label="label noise",
        requirement="a fraction in [0, 1)",
        help="fraction of training labels flipped",
    )
    data_seed: int | None = setting(
        None,
        kind="int",
        minimum=0,
        task_default=True,
        help="seed of the data set, its train/validation/test split and the flipped labels "
        "(default: the task's canonical data set, e.g. 42 for MNIST-1D, the mnist1d package's "
        "own; config.json records the number)",
    )
    val_fraction: float = setting(
        0.2,
        kind="float",
        minimum=0.0,
        maximum=1.0,
        max_open=True,
        unit="fraction of the training data",
        label="validation fraction",
        requirement="a fraction in [0, 1)",
        help="held out of the training data as a validation split (stratified by class, fixed "
        "by the data seed; its labels are the training labels, noisy with --label-noise), on "
        "which every choice after seeing results is made: the early-stopping epoch, the best "
        "decay, the temperature. 0: no split (choices then use the test set, marked oracle)",
        before=0.0,
    )
    data_options: dict[str, Any] = setting(
        {}, kind="options", flag="--data-opt", help="task data option, e.g. n_total=2000"
    )
    model_options: dict[str, Any] = setting(
        {}, kind="options", flag="--model-opt", help="task model option, e.g. channels=32"
    )
    eval_batch_size: int = setting(
        1000, kind="int", minimum=1, unit="examples", help="examples per evaluation batch"
    )
    device: str = setting("auto", kind="str", help="'auto' (CUDA if available), 'cpu', 'cuda:0'")
    threads: int | None = setting(
        None,
        kind="int",
        minimum=1,
        requirement="a positive int or None",
        help="torch CPU threads per job (default: 1 on CPU, where the lab's models run fastest)",
    )

    def __post_init__(self) -> None:
        # Normalise the shape of values (lists -> tuples, one decay -> a tuple of one); bad
        # values are left as they are for resolve() to report, all of them at once.
        for name, s in SETTINGS.items():
            value = getattr(self, name)
            if s.several:
                if isinstance(value, list | tuple):
                    value = tuple(value)
                elif value is not None and not isinstance(value, Mapping):
                    value = (value,)
                if s.kind == "float" and isinstance(value, tuple):
                    value = tuple(float(v) if is_real(v) else v for v in value)
            elif s.kind == "float" and is_real(value):
                value = float(value)
            elif s.kind in ("interval", "duration") and is_int(value):
                value = str(value)
            elif s.kind == "options" and isinstance(value, Mapping):
                value = dict(value)
            if s.kind == "duration" and s.problem(name, value) is None:
                value = parse_duration(value).text  # one spelling: '0s' and '0' are one job
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON data (tuples become lists)."""
        out = {}
        for name in SETTINGS:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "settings") -> StudyConfig:
        """Read settings written by :meth:`to_dict`, or by older versions: older names
        (aliases) are read, and a setting added since reads as the value those versions used
        (``Setting.before``: an older run folder had no validation split)."""
        keys = canonical_keys(d, source)
        missing = {
            name: s.before
            for name, s in SETTINGS.items()
            if name not in keys and s.before is not ALWAYS
        }
        return cls(**keys, **missing)

    def applies(self, name: str) -> bool:
        """Whether setting ``name`` has an effect given the others (``Setting.requires``)."""
        need = SETTINGS[name].requires
        return need is None or getattr(self, need[0]) in need[1]

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)


SETTINGS: dict[str, Setting] = {
    f.name: f.metadata["setting"] for f in dataclasses.fields(StudyConfig)
}
#: Other names a setting is read under -> its name.
ALIASES: dict[str, str] = {a: name for name, s in SETTINGS.items() for a in s.aliases}


def canonical_keys(d: Mapping[str, Any], source: str = "settings") -> dict[str, Any]:
    """``d`` with every key under its setting's name ('-' read as '_', aliases resolved).

    A later key wins over an earlier one for the same setting; unknown keys fail by name.
    """
    out: dict[str, Any] = {}
    unknown = []
    for raw, value in d.items():
        key = str(raw).replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in SETTINGS:
            unknown.append(raw)
            continue
        out[key] = value
    if unknown:  # suggest and list the current names only (aliases are still read)
        names = sorted(SETTINGS)
        raise ConfigError(
            [
                f"{source}: unknown key {k!r}{did_you_mean(str(k).replace('-', '_'), names)}"
                for k in unknown
            ]
            + [f"settings: {', '.join(names)}"]
        )
    return out


def settings() -> Iterator[tuple[str, Setting, Any]]:
    """``(name, setting, default)`` of every field, in order."""
    defaults = StudyConfig()
    for name, s in SETTINGS.items():
        yield name, s, getattr(defaults, name)


def resolve_device(name: str) -> torch.device:
    """``'auto'``: CUDA if available, else the CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Study:
    """A resolved study: every setting checked and filled, and the typed objects they name.

    Built by :func:`switchema.lab.resolve.resolve`, once per run; what jobs carry. Pickled (to
    worker processes, Ray tasks) with its task's name and defining module, so a worker
    imports that module and finds the task again, wherever it was registered.
    """

    config: StudyConfig  # every setting, task defaults filled in (what config.json holds)
    task: Task
    switch: SwitchRule  # switch_every, switch_start, reset_optimizer
    # None: no warm-up. A linear warm-up's length is known once the run knows its steps per
    # epoch (it may be given in epochs): use warmup_schedule(), which sets it.
    ema_warmup: DecaySchedule | None
    ema_start: Duration = Duration(0)
    ema_warmup_length: Duration = Duration(1000, "steps")

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    def warmup_schedule(self, steps_per_epoch: int) -> DecaySchedule | None:
        """The EMA's decay warm-up for a run of ``steps_per_epoch``: a linear warm-up of
        ``ema_warmup_length`` optimizer steps lasts that many / ``ema_update_every``
        averaging updates (the count the schedule runs on), at least one."""
        if not isinstance(self.ema_warmup, LinearWarmup):
            return self.ema_warmup
        steps = self.ema_warmup_length.steps(steps_per_epoch)
        updates = max(1, math.ceil(steps / self.config.ema_update_every))
        return dataclasses.replace(self.ema_warmup, steps=updates)

    def __getstate__(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["task"] = (self.task.name, self.task.module)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        name, module = state["task"]
        for key, value in {**state, "task": get_task(name, module or None)}.items():
            object.__setattr__(self, key, value)
