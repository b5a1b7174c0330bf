"""A task with no entry point: found as ``--task switchema_demo_tasks.extra:demo-line``."""

import torch
from torch import nn

from switchema.lab.tasks import TaskData, register_task


def line_data(seed: int, *, n: int = 50) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(2 * n, generator=gen)
    return TaskData(x[:n], y[:n], x[n:], y[n:], "regression", None)


@register_task(
    "demo-line",
    kind="regression",
    description="a noisy linear function of 3 inputs (a plugin task for the tests)",
    data=line_data,
    defaults=dict(epochs=2, batch_size=10, optimizer="sgd", lr=0.05, momentum=0.9),
)
def line_model(data: TaskData) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))


def warning_data(seed: int) -> TaskData:
    import warnings

    warnings.warn("demo-warn: this data set is tiny", UserWarning, stacklevel=1)
    return line_data(seed)


@register_task(
    "demo-warn",
    kind="regression",
    description="demo-line whose data warns (a warning raised inside a worker process)",
    data=warning_data,
    defaults=dict(epochs=1, batch_size=10, optimizer="sgd", lr=0.05),
)
def warning_model(data: TaskData) -> nn.Module:
    return line_model(data)
