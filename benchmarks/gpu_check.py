"""The training-step cost of an average kept in host memory, on a GPU (``device="cpu"``).

A GPT-2-small-sized language model (124M parameters, bf16 autocast, fused AdamW) is trained for
a few steps in each configuration, and the median step time is reported:

* ``none``: no average;
* ``on-device``: ``EMA(model)``, float32 averages on the GPU;
* ``offloaded``: ``EMA(model, device="cpu")`` (and with ``update_every=4``): pinned host
  averages; ``update()`` copies the weights to a device snapshot and then to pinned memory on a
  side stream, and the host averages that copy at the next ``update()``;
* ``timm-cpu``: timm ``ModelEmaV3(model, device="cpu")`` when timm is importable (the host
  update at once, a blocking copy per tensor);
* ``copy-in-out``: the pattern of torchtitan's EMA, written here: the pinned host average is
  copied to the GPU on a side stream, updated there and copied back, the next step waiting for
  the previous round trip only when it starts the next one.

The offloaded averages are checked against the on-device ones before timing. The target: an
offloaded average costs at most 5% of a step where the link (PCIe / NVLink-C2C) bandwidth and
the host's memory bandwidth allow; the table prints the measured link bandwidth and the
averaging's share of the step so the two can be told apart.

Run: ``python benchmarks/gpu_check.py [--steps 20] [--batch 8] [--seq 512]``. Without a GPU it
says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn

from switchema import EMA


class GPT(nn.Module):
    """A GPT-2-small-sized decoder (tied embeddings), enough to time a real step."""

    def __init__(self, vocab=50257, dim=768, layers=12, heads=12, seq=1024):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


class CopyInOut:
    """torchtitan's pattern, our code: pinned host average <-> GPU buffer around a GPU lerp."""

    def __init__(self, model, decay=0.999):
        self.params = [p for p in model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in self.params)
        self.host = torch.empty(n, dtype=torch.float32, pin_memory=True)
        self.dev = torch.empty(n, dtype=torch.float32, device="cuda")
        torch.cat([p.detach().float().flatten() for p in self.params], out=self.dev)
        self.host.copy_(self.dev)
        self.views = list(torch.split(self.dev, [p.numel() for p in self.params]))
        self.views = [v.view_as(p) for v, p in zip(self.views, self.params)]
        self.stream, self.event, self.decay = torch.cuda.Stream(), None, decay

    def update(self):
        if self.event is not None:
            torch.cuda.current_stream().wait_event(self.event)  # the buffer is free again
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            self.dev.copy_(self.host, non_blocking=True)
            torch._foreach_lerp_(self.views, [p.detach() for p in self.params], 1 - self.decay)
            self.host.copy_(self.dev, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(self.stream)
        current.wait_event(self.event)  # the next optimizer step must not race the reads


def timed_steps(model, averager, steps, batch, seq, vocab):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    times = []
    for i in range(steps + 3):
        idx = torch.randint(0, vocab, (batch, seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(idx[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if averager is not None:
            averager()
        loss.item()  # a training loop's usual sync once per step
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def link_bandwidth(nbytes=512 * 2**20):
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t0) / 1e9


def check_agreement(base):
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ea, eb = EMA(a, decay=0.9), EMA(b, decay=0.9, device="cpu")
    for step in range(3):
        for m in (a, b):
            torch.manual_seed(step)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 1e-2)
        ea.update(), eb.update()
    sa, sb = ea.averaged_state_dict(dtype="average"), eb.averaged_state_dict(dtype="average")
    worst = max(float((sa[k].float().cpu() - sb[k].float()).abs().max()) for k in sa)
    assert worst < 1e-5, f"offloaded average differs from the on-device one by {worst}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; run it on a GPU machine (nothing timed)")
        return 0
    torch.manual_seed(0)
    base = GPT().cuda()
    vocab = base.tok.num_embeddings
    n = sum(p.numel() for p in base.parameters())
    check_agreement(base)
    configs = {
        "none": lambda m: None,
        "on-device": lambda m: EMA(m, decay=0.999).update,
        "offloaded": lambda m: EMA(m, decay=0.999, device="cpu").update,
        "offloaded, update_every=4": lambda m: (
            EMA(m, decay=0.999, device="cpu", update_every=4).update
        ),
        "copy-in-out (torchtitan's pattern)": lambda m: CopyInOut(m).update,
    }
    try:
        from timm.utils import ModelEmaV3

        def timm_cpu(m):
            ema = ModelEmaV3(m, decay=0.999, device="cpu")
            return lambda: ema.update(m)

        configs["timm ModelEmaV3(device='cpu')"] = timm_cpu
    except ImportError:
        pass
    rows = []
    for name, make in configs.items():
        model = copy.deepcopy(base)
        ms = timed_steps(model, make(model), args.steps, args.batch, args.seq, vocab)
        rows.append((name, ms))
        del model
        torch.cuda.empty_cache()
    gbps = link_bandwidth()
    print(
        f"{torch.cuda.get_device_name()}: GPT {n / 1e6:.0f}M parameters, batch {args.batch} x "
        f"{args.seq}, bf16 autocast, fused AdamW; device-to-host {gbps:.1f} GB/s "
        f"(float32 average {4 * n / 1e9:.2f} GB, bf16/fp32 weights copied per update)"
    )
    base_ms = rows[0][1]
    print(f"| {'configuration':<36} | step ms | vs none |")
    print(f"|{'-' * 38}|---------|---------|")
    for name, ms in rows:
        print(f"| {name:<36} | {ms:7.1f} | {100 * (ms / base_ms - 1):+6.1f}% |")
    off = dict(rows)["offloaded"]
    verdict = "met" if off <= 1.05 * base_ms else "not met"
    print(f"target (offloaded <= +5% of a step): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
