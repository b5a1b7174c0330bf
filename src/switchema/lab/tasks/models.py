"""The lab's models: small networks for the built-in tasks (and for anyone's own tasks)."""

from __future__ import annotations

import torch
from torch import nn

from ..._checks import check_int

__all__ = ["MLP", "MNIST1DMLP", "MNIST1DCNN", "DigitsCNN", "CharGRU", "CifarResNet"]


class MLP(nn.Module):
    """Fully connected network ``in -> hidden... -> out`` with a chosen activation.

    Args:
        sizes: layer widths including input and output, e.g. ``(2, 32, 32, 2)``.
        activation: ``"relu"`` or ``"tanh"``.
        squeeze_output: drop a trailing output dimension of size 1 (regression).
    """

    def __init__(
        self, sizes: tuple[int, ...], activation: str = "relu", squeeze_output: bool = False
    ) -> None:
        super().__init__()
        acts: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least input and output widths, got {sizes!r}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(acts[activation]())
        self.net = nn.Sequential(*layers)
        self.squeeze_output = squeeze_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.squeeze_output else out


class MNIST1DMLP(nn.Module):
    """The MNIST-1D paper's MLP baseline (``MLPBase`` in greydanus/mnist1d).

    ``40 -> 100 -> 100 -> 10`` with ReLU; as in the published model the middle
    layer is residual (``h = h + relu(W2 h)``).
    """

    def __init__(self, input_size: int = 40, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


class MNIST1DCNN(nn.Module):
    """The MNIST-1D paper's CNN baseline (``ConvBase`` in greydanus/mnist1d).

    Three ``Conv1d`` layers with 25 channels, stride 2, padding 1 and kernel
    sizes 5, 3, 3 (as published), ReLU, then a linear classifier on the
    flattened ``25 x 5`` features. With ``batchnorm=True`` a ``BatchNorm1d``
    follows each convolution (before the ReLU).
    """

    def __init__(
        self,
        input_len: int = 40,
        channels: int = 25,
        num_classes: int = 10,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch, length = 1, input_len
        for kernel in (5, 3, 3):
            blocks.append(nn.Conv1d(in_ch, channels, kernel, stride=2, padding=1))
            if batchnorm:
                blocks.append(nn.BatchNorm1d(channels))
            blocks.append(nn.ReLU())
            in_ch = channels
            length = (length + 2 - kernel) // 2 + 1
        if length < 1:
            raise ValueError(f"input_len {input_len} is too short for three stride-2 convolutions")
        self.features = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(x.shape[0], 1, x.shape[-1]))
        return self.linear(h.flatten(1))


class DigitsCNN(nn.Module):
    """Small 2-D CNN with BatchNorm for the 8x8 scikit-learn digits."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, width),
            *block(width, width),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            *block(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).flatten(1))


class CharGRU(nn.Module):
    """Character language model: embedding -> single-layer GRU -> linear to vocabulary.

    ``forward(x)`` takes ``(n, T)`` int64 and returns logits ``(n, T, vocab)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.embed(x))
        return self.head(h)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            # 1x1 projection (He et al. option B) keeps the code short; the
            # parameter cost is negligible at these widths.
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6k + 2`` (ResNet-8, -20, -32, ...) with BatchNorm.

    Args:
        depth: total depth; must be ``6k + 2`` with ``k >= 1``.
        width: channels of the first stage (stages use ``w, 2w, 4w``).
        num_classes: output classes.
    """

    def __init__(self, depth: int = 8, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        depth = check_int(depth, "depth", minimum=8)
        width = check_int(width, "width", minimum=1)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6k + 2 (8, 14, 20, 32, ...), got {depth}")
        per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.linear(self.pool(h).flatten(1))


# ---------------------------------------------------------------------------
# circles
# ---------------------------------------------------------------------------
