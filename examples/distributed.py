"""EMA under DDP or FSDP2, launched with torchrun; runs on CPU (gloo) or GPUs (nccl).

    torchrun --nproc-per-node 2 examples/distributed.py --mode ddp
    torchrun --nproc-per-node 2 examples/distributed.py --mode fsdp --out /tmp/ema-ckpt

Trains a small MLP on random regression data, keeps an EMA of its weights, evaluates with the
averaged weights, saves model + optimizer + EMA with torch.distributed.checkpoint (FSDP mode),
and on rank 0 exports a plain state dict of the average.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from switchema import EMA
from switchema.distributed import full_averaged_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--out", default=None, help="DCP checkpoint folder (fsdp mode)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        train(args, device)
        # The DDP wrapper's C++ reducer holds a reference to the process group. If the
        # wrapper outlives destroy_process_group, the group is destroyed from the reducer's
        # destructor, which joins gloo's worker thread while holding the GIL that thread may
        # need: an intermittent hang at exit (pytorch/pytorch#56297). So every wrapper is
        # gone (train returned, cycles collected) before the group is.
        gc.collect()
        # Leave together: a rank that tears down gloo while the other is still in a
        # collective can leave that rank hanging.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train(args: argparse.Namespace, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    model.to(device)
    if args.mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.95)  # after wrapping / sharding

    gen = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    w_true = torch.randn(16, 1, generator=torch.Generator().manual_seed(2))
    for _ in range(args.steps):
        x = torch.randn(32, 16, generator=gen)
        y = x @ w_true
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update()

    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(3))
    y = (x @ w_true).to(device)
    with torch.no_grad():
        online = nn.functional.mse_loss(model(x.to(device)), y)
        with ema.swapped():
            averaged = nn.functional.mse_loss(model(x.to(device)), y)
    if args.mode == "fsdp" and args.out:
        dcp.save({"ema": ema}, checkpoint_id=args.out)
    export = full_averaged_state_dict(ema)  # a collective: every rank calls it
    if rank == 0:
        print(
            f"{args.mode} on {world} ranks: test MSE online {online.item():.4f}, "
            f"EMA {averaged.item():.4f}; exported {len(export)} tensors, "
            f"average held per rank {ema.nbytes} bytes"
        )


if __name__ == "__main__":
    main()
