"""Tasks for the lab: data + model + the loss and metrics of their kind.

* :mod:`.base`: :class:`TaskData`, :class:`Task`, option checking, the loss of each kind;
* :mod:`.registry`: :func:`register_task`, :func:`get_task`, plugins (entry-point group
  ``switchema.tasks``);
* :mod:`.data`, :mod:`.models`: the built-in tasks' data sets and networks;
* :mod:`.noise`: label noise;
* :mod:`.split`: the validation split carved from the training data;
* :mod:`.builtin`: the built-in tasks, registered on import (and :mod:`.teacher`,
  :mod:`.chargpt`, :mod:`.flows`, :mod:`.transfer`, likewise).
"""

from . import (
    builtin,  # noqa: F401  (registers the built-in tasks)
    teacher,  # noqa: F401  (registers mnist1d-meanteacher)
)
from .base import KINDS, Task, TaskData, task_loss
from .chargpt import chargpt_model  # noqa: F401  (registers chargpt)
from .data import CHARLM_SOURCES, load_cifar
from .flows import FLOW_TASKS  # noqa: F401  (registers the generative tasks)
from .noise import apply_label_noise
from .registry import ENTRY_POINT_GROUP, TASKS, get_task, load_plugins, register_task, task_names
from .split import split_validation
from .transfer import transfer_data  # noqa: F401  (registers mnist1d-transfer)

__all__ = [
    "CHARLM_SOURCES",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "TASKS",
    "Task",
    "TaskData",
    "apply_label_noise",
    "get_task",
    "load_cifar",
    "load_plugins",
    "register_task",
    "split_validation",
    "task_loss",
    "task_names",
]
