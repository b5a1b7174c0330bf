"""Modules whose parameter sets are shaped like ResNet-50, ViT-S/16 and GPT-2 small.

They have no ``forward``: a weight averager only sees the parameters (and buffers), so what
matters for its speed is the number of tensors, their sizes and their layout. Names follow the
real models (torchvision's ResNet-50, timm's ``vit_small_patch16_224``, Hugging Face's
``GPT2LMHeadModel``), nested the same way, and the counts match them:

=============  =============  ===================  ======================================
shape          parameters     parameter tensors    notes
=============  =============  ===================  ======================================
resnet50       25,557,032     161                  + 159 BatchNorm buffers (106 float)
vit_s16        22,050,664     152                  many small tensors (LayerNorms, biases)
gpt2           124,439,808    148                  ``lm_head.weight`` *is* ``wte.weight``
=============  =============  ===================  ======================================

Run ``python benchmarks/shapes.py`` to print the counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["SHAPES", "build", "resnet50_like", "vit_s16_like", "gpt2_like", "describe"]


# --------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool) -> None:
        super().__init__()
        width = planes
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
            if downsample
            else None
        )


class ResNet50Like(nn.Module):
    """torchvision's ``resnet50()`` parameter and buffer set (names included)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
        ):
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                layers.append(Bottleneck(inplanes, planes, s, downsample=b == 0))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)


def resnet50_like() -> nn.Module:
    return ResNet50Like()


# --------------------------------------------------------------------------- ViT-S/16
class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class Block(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)


class ViTLike(nn.Module):
    """timm's ``vit_small_patch16_224`` parameter set (names included)."""

    def __init__(
        self,
        img: int = 224,
        patch: int = 16,
        dim: int = 384,
        depth: int = 12,
        mlp_ratio: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        n_tokens = (img // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.Sequential(*[Block(dim, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)


def vit_s16_like() -> nn.Module:
    return ViTLike()


# --------------------------------------------------------------------------- GPT-2 small
class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: a linear layer with its weight stored as (in, out)."""

    def __init__(self, n_out: int, n_in: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))


class GPT2Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_attn = Conv1D(3 * dim, dim)
        self.c_proj = Conv1D(dim, dim)


class GPT2MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(4 * dim, dim)
        self.c_proj = Conv1D(dim, 4 * dim)


class GPT2Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPT2MLP(dim)


class GPT2Model(nn.Module):
    def __init__(self, vocab: int, n_positions: int, dim: int, depth: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(n_positions, dim)
        self.h = nn.ModuleList([GPT2Block(dim) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        with torch.no_grad():
            self.wte.weight.normal_(0.0, 0.02)
            self.wpe.weight.normal_(0.0, 0.01)


class GPT2LMHeadLike(nn.Module):
    """Hugging Face's ``GPT2LMHeadModel`` (124M) parameter set, with the head tied to ``wte``."""

    def __init__(
        self, vocab: int = 50257, n_positions: int = 1024, dim: int = 768, depth: int = 12
    ) -> None:
        super().__init__()
        self.transformer = GPT2Model(vocab, n_positions, dim, depth)
        self.lm_head = nn.Linear(dim, vocab, bias=False, device="meta")
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in the real model


def gpt2_like() -> nn.Module:
    return GPT2LMHeadLike()


# --------------------------------------------------------------------------- registry
SHAPES: dict[str, Callable[[], nn.Module]] = {
    "resnet50": resnet50_like,
    "vit_s16": vit_s16_like,
    "gpt2": gpt2_like,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Build shape ``name`` (one of :data:`SHAPES`) with a fixed seed, in float32 on the CPU."""
    torch.manual_seed(seed)
    return SHAPES[name]()


def describe(model: nn.Module) -> dict[str, int]:
    """Parameter and buffer counts (tied parameters counted once, as ``parameters()`` does)."""
    params = list(model.parameters())
    buffers = list(model.buffers())
    return {
        "param_tensors": len(params),
        "params": sum(p.numel() for p in params),
        "param_names_in_state_dict": sum(
            1 for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter)
        ),
        "buffer_tensors": len(buffers),
        "float_buffer_elements": sum(b.numel() for b in buffers if b.is_floating_point()),
    }


if __name__ == "__main__":
    for shape_name in SHAPES:
        print(shape_name, describe(build(shape_name)))
