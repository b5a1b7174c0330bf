"""Does ``EMA(model, flat_params=True)`` slow down training? A training step, timed in parts.

``flat_params=True`` makes the model's averaged parameters views into one contiguous buffer
(the parameter objects are unchanged). That turns ``update()``/``switch()`` into one flat op,
but the forward, backward and optimizer step then run on views: this measures whether they
pay for it, on two small real models trained on random data:

* ``cnn``: a CIFAR-style ResNet (two stages of basic blocks with BatchNorm), 32x32 inputs;
* ``gpt``: a nanoGPT-shaped character transformer (4 layers, width 256, context 64).

Each model is built twice from the same seed (``flat_params`` off and on) with the same
optimizer (SGD with momentum for the CNN, AdamW for the transformer, both ``foreach``). Steps
alternate between the two copies; each part (forward + backward, ``optimizer.step()``,
``ema.update()``) is timed separately, and the table gives medians over steps and the paired
ratio on/off (median over steps of on / off in the same round). One torch thread.

    python benchmarks/bench_flat_params.py [--steps 40] [--output benchmarks/results_flat_params.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from switchema import EMA

HERE = Path(__file__).resolve().parent


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


def resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Block(32, 32, 1),
        Block(32, 64, 2),
        Block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


class GPT(nn.Module):
    def __init__(self, vocab: int = 96, width: int = 256, layers: int = 4, ctx: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(ctx, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.head(self.blocks(x, mask=self.mask, is_causal=True))


def make(kind: str, flat: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = resnet() if kind == "cnn" else GPT()
    if kind == "cnn":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=True)
    ema = EMA(model, decay=0.999, flat_params=flat)
    return model, opt, ema


def batch(kind: str, gen: torch.Generator):
    if kind == "cnn":
        return torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    idx = torch.randint(0, 96, (16, 65), generator=gen)
    return idx[:, :-1], idx[:, 1:]


def loss_of(kind: str, model: nn.Module, x, y):
    out = model(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def step(kind, model, opt, ema, x, y) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    loss = loss_of(kind, model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t1 = time.perf_counter()
    opt.step()
    t2 = time.perf_counter()
    ema.update()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def run(kind: str, steps: int, warmup: int = 3) -> dict:
    copies = {flat: make(kind, flat) for flat in (False, True)}
    times: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    gen = torch.Generator().manual_seed(1)
    for i in range(warmup + steps):
        x, y = batch(kind, gen)
        order = (False, True) if i % 2 == 0 else (True, False)
        for flat in order:
            t = step(kind, *copies[flat], x, y)
            if i >= warmup:
                times[flat].append(t)
    same = all(
        torch.equal(a, b)
        for a, b in zip(copies[False][0].parameters(), copies[True][0].parameters())
    )
    n = sum(p.numel() for p in copies[False][0].parameters())
    parts = ["forward + backward", "optimizer.step()", "ema.update()", "whole step"]
    rows = []
    for j, part in enumerate(parts):
        off = [sum(t) if j == 3 else t[j] for t in times[False]]
        on = [sum(t) if j == 3 else t[j] for t in times[True]]
        rows.append(
            {
                "part": part,
                "off_ms": statistics.median(off) * 1e3,
                "on_ms": statistics.median(on) * 1e3,
                "ratio": statistics.median(a / b for a, b in zip(on, off)),
            }
        )
    return {"kind": kind, "params": n, "identical": same, "rows": rows}


def render(results: list[dict], args: argparse.Namespace) -> str:
    out = [
        "# Training step with and without `flat_params=True`",
        "",
        f"- date: {dt.datetime.now():%Y-%m-%d %H:%M}; command: "
        f"`python benchmarks/bench_flat_params.py --steps {args.steps}`",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} logical CPUs, torch threads: {torch.get_num_threads()}; 1-minute "
        f"load average at the end: {os.getloadavg()[0]:.2f}",
        f"- {args.steps} timed steps per copy after 3 warm-up steps, the two copies alternating; "
        "ratio: median over steps of (flat on / flat off) in the same round",
        "",
        "| model | parameters | part | off (ms) | on (ms) | on / off |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for res in results:
        name = {"cnn": "CIFAR ResNet, SGD momentum, batch 64", "gpt": "char GPT, AdamW, 16 x 64"}
        for row in res["rows"]:
            out.append(
                f"| {name[res['kind']]} | {res['params'] / 1e6:.2f}M | {row['part']} | "
                f"{row['off_ms']:.2f} | {row['on_ms']:.2f} | {row['ratio']:.3f} |"
            )
    out.append("")
    for res in results:
        same = "bit-identical" if res["identical"] else "NOT identical"
        out.append(f"- {res['kind']}: the two copies' weights after training are {same}.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per copy (default 40)")
    parser.add_argument("--models", nargs="+", default=["cnn", "gpt"], choices=["cnn", "gpt"])
    parser.add_argument("--output", type=Path, default=HERE / "results_flat_params.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [run(kind, args.steps) for kind in args.models]
    text = render(results, args)
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
