"""Label noise: flip a fraction of the training labels to another class."""

from __future__ import annotations

import torch

from ..._checks import check_int, is_real

__all__ = ["apply_label_noise"]


def apply_label_noise(
    y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(fraction * n)`` randomly chosen labels to another class.

    Each flipped label moves to a class drawn uniformly among the
    ``num_classes - 1`` others, so a "flip" always changes the label.

    Args:
        y: integer labels of shape ``(n,)`` in ``[0, num_classes)``.
        fraction: share of labels to flip, in ``[0, 1)``.
        num_classes: number of classes (at least 2).
        generator: the torch RNG to draw from (CPU generator).

    Returns:
        ``(noisy_labels, flipped_mask)``: a new label tensor (``y`` is left
        unchanged) and a bool mask of the flipped positions, both on ``y``'s device.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(
            f"y must be a 1-D integer tensor, got shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    if not is_real(fraction):
        raise TypeError(f"fraction must be a float, got {type(fraction).__name__} {fraction!r}")
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n = y.shape[0]
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]"
        )

    n_flip = round(fraction * n)
    # Draw on the generator's device, then move: torch refuses mixed-device generators.
    perm = torch.randperm(n, generator=generator, device=generator.device)[:n_flip]
    # An offset in [1, C-1] added modulo C is uniform over the other C-1 classes.
    offsets = torch.randint(1, num_classes, (n_flip,), generator=generator, device=generator.device)
    perm, offsets = perm.to(y.device), offsets.to(y.device, y.dtype)
    noisy = y.clone()
    noisy[perm] = (y[perm] + offsets) % num_classes
    mask = torch.zeros(n, dtype=torch.bool, device=y.device)
    mask[perm] = True
    return noisy, mask
