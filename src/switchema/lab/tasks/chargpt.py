"""``chargpt``: a nanoGPT-shaped character transformer on the ``charlm`` text, trained with
AdamW, the Switch EMA paper's language-model row at toy scale.

The model follows karpathy/nanoGPT's ``model.py`` at a size a CPU trains in minutes: token and
learned position embeddings, ``layers`` pre-LayerNorm blocks ``h = h + attn(ln1(h))``,
``h = h + mlp(ln2(h))`` (causal multi-head self-attention through
:func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal=True``; an MLP
``dim -> 4 dim -> dim`` with GELU), a final LayerNorm and a head tied to the token embedding
(``logits = ln_f(h) @ W_tok^T``: one parameter, so averages and state dicts hold it once).
Initialisation as nanoGPT's: weights ``N(0, 0.02)``, the residual projections
``N(0, 0.02 / sqrt(2 layers))``, biases zero. No dropout. With the defaults (``dim=48``,
``heads=4``, ``layers=2``) and the ``charlm`` text (context 64, 161 characters) it has 67,440
parameters.

The data are ``charlm``'s (:func:`~switchema.lab.tasks.data.charlm_data`, the same options),
so the two language models' bits per character compare directly.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import check_int
from .base import TaskData, expect_kind, keyword_options, task_defaults
from .data import charlm_data
from .registry import register_task

__all__ = ["CausalSelfAttention", "CharGPT", "chargpt_model"]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees only positions ``<= t``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape  # (batch, time, dim)
        q, k, v = self.qkv(x).split(d, dim=2)
        # (n, heads, t, d / heads) each
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: attention, then an MLP, each a residual branch."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(fc=nn.Linear(dim, 4 * dim), gelu=nn.GELU(), proj=nn.Linear(4 * dim, dim))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A small GPT over characters: ``forward(x)`` maps ``(n, T)`` int64 with ``T <= context``
    to logits ``(n, T, vocab_size)``; the head is the token embedding (weight tying).

    >>> _ = torch.manual_seed(0)
    >>> model = CharGPT(vocab_size=10, context=8, dim=16, heads=2, layers=1)
    >>> tuple(model(torch.zeros(3, 5, dtype=torch.int64)).shape)
    (3, 5, 10)
    """

    def __init__(
        self, vocab_size: int, context: int, dim: int = 48, heads: int = 4, layers: int = 2
    ) -> None:
        super().__init__()
        self.context = check_int(context, "context", minimum=1)
        self.tok = nn.Embedding(check_int(vocab_size, "vocab_size", minimum=2), dim)
        self.pos = nn.Embedding(self.context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:  # residual projections scaled down as in GPT-2 / nanoGPT
                residual = name.endswith("proj.weight")
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if residual else 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"sequences of {t} characters exceed the context of {self.context}")
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))  # (n, t, dim)
        for block in self.blocks:
            h = block(h)
        return F.linear(self.ln_f(h), self.tok.weight)  # the tied head: (n, t, vocab)


# AdamW with nanoGPT's weight decay for its character model (0.1), a larger rate for this much
# smaller model, and batch 32: at equal compute, 960 steps of 32 sequences reached 2.92 test bpc
# where 480 steps of 64 reached 3.16 (lr 3e-3; 3.59 at 6e-3). 6 epochs of ~160 steps train in
# about a minute on one core (experiments/07_regression_lm.sh).
@register_task(
    "chargpt",
    kind="lm",
    description="character LM on standard-library source, 2-block causal transformer "
    "(nanoGPT-shaped, tied head)",
    data=charlm_data,
    defaults=task_defaults(epochs=6, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.1),
    units={
        "n_chars": "characters, None: the whole corpus",
        "seq_len": "characters per sequence, the model's context",
        "train_fraction": "fraction for training",
        "dim": "dimensions of the embeddings and blocks",
        "heads": "attention heads",
        "layers": "transformer blocks",
    },
)
@keyword_options
def chargpt_model(data: TaskData, *, dim: int = 48, heads: int = 4, layers: int = 2) -> nn.Module:
    expect_kind(data, "lm", "chargpt")
    heads = check_int(heads, "heads", minimum=1)
    return CharGPT(
        data.num_classes,
        data.input_shape[-1],
        dim=check_int(dim, "dim", minimum=heads),
        heads=heads,
        layers=check_int(layers, "layers", minimum=1),
    )
