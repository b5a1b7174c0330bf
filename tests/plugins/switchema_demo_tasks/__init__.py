"""A task defined outside switchema, the way a user's own package defines one.

Found by the entry point in ``switchema_demo_tasks-0.1.dist-info/entry_points.txt`` (what
``pip install`` writes for a package that declares
``[project.entry-points."switchema.tasks"] demo = "switchema_demo_tasks"``).
"""

import torch
from torch import nn

from switchema.lab.tasks import TaskData, register_task


def ring_data(seed: int, *, n_train: int = 40, n_test: int = 60, noise: float = 0.1) -> TaskData:
    """Points on two rings (radius 1 and 2), the class is the ring."""
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.arange(n) % 2
    angle = torch.rand(n, generator=gen) * 6.283
    radius = 1.0 + y.float() + noise * torch.randn(n, generator=gen)
    x = torch.stack([radius * angle.cos(), radius * angle.sin()], 1)
    return TaskData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "classification", 2)


@register_task(
    "demo-ring",
    kind="classification",
    description="two rings, a 2-8-2 MLP (a plugin task for the tests)",
    data=ring_data,
    defaults=dict(epochs=3, batch_size=10, optimizer="adamw", lr=1e-2),
    units={"n_train": "examples", "n_test": "examples", "noise": "std", "hidden": "units"},
)
def ring_mlp(data: TaskData, *, hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
