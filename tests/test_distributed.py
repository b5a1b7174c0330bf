"""Averagers under torch.distributed: DDP, FSDP2 (fully_shard) and DCP checkpoints.

Each distributed test runs its worker in 2 fresh CPU processes (gloo, file:// rendezvous in
tmp_path, no network port). Workers only compute and save what they saw; the parent compares
it with a single-process reference run on the same global batches (each rank gets half of
each batch, DDP / FSDP average the gradients). A worker's exception fails the test with the
worker's traceback; a hang fails it after a timeout, and the workers are killed.
"""

from __future__ import annotations

import datetime
import gc
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from switchema import EMA, SWA
from switchema.distributed import (
    full_averaged_state_dict,
    is_sharded,
    load_averager,
    save_averager,
)

WORLD = 2
DECAYS = (0.9, 0.6)
STEPS = 6  # training steps before the checkpoint
MORE = 2  # steps after switch()
GLOBAL_BATCH = 8
TIMEOUT_S = 180
CLOSE = dict(rtol=1e-5, atol=1e-6)  # float32 tolerance: 2-rank vs 1-process gradients
# dcp.save / dcp.load without a process group say that they assume a single process
NO_PG = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed/gloo"
)


# ---------------------------------------------------------------- model, data, reference
class Net(nn.Module):
    """Uneven shards on 2 ranks (10, 5 and 1 rows: rank 1 holds empty shards) and a root
    parameter (FSDP2 keeps the root unsharded after a forward without backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.b = nn.Linear(10, 5)
        self.c = nn.Linear(5, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x))))) * self.scale


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(step: int, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch ``step``; with ``rank``, that rank's half of it."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 6, generator=gen)
    y = torch.randn(GLOBAL_BATCH, 1, generator=gen)
    if rank is None:
        return x, y
    per = GLOBAL_BATCH // WORLD
    return x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


EVAL_X = torch.linspace(-1, 1, 18).view(3, 6)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int, rank=None) -> None:
    x, y = batch(step, rank)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def make_opt(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def make_averagers(model: nn.Module, decays=DECAYS) -> tuple[EMA, SWA]:
    return EMA(model, decay=decays), SWA(model, start_step=2)


def averages(ema: EMA, swa: SWA) -> dict[str, dict[str, torch.Tensor]]:
    out = {f"ema{k}": ema.averaged_state_dict(k) for k in range(ema.num_averages)}
    out["swa"] = swa.averaged_state_dict()
    return out


def reference() -> dict:
    """One process, full global batches: averages after STEPS, and after switch + MORE steps."""
    model = make_net()
    opt = make_opt(model)
    ema, swa = make_averagers(model)
    for step in range(1, STEPS + 1):
        train_step(model, opt, step)
        ema.update()
        swa.update()
    at_ckpt = averages(ema, swa)
    state = ema.state_dict()
    with torch.no_grad():
        online_out = model(EVAL_X)
        with ema.swapped(1):
            swapped_out = model(EVAL_X)
    ema.switch(0, optimizer=opt)
    for step in range(STEPS + 1, STEPS + MORE + 1):
        train_step(model, opt, step)
        ema.update()
        swa.update()
    return {
        "ckpt": at_ckpt,
        "state": state,
        "online_out": online_out,
        "swapped_out": swapped_out,
        "final": averages(ema, swa),
        "nbytes": ema.nbytes,
    }


def assert_sd_close(got: dict, want: dict, what: str, exact: bool = False) -> None:
    assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for name in want:
        if exact:
            assert torch.equal(got[name], want[name]), f"{what}: {name!r} differs"
        else:
            torch.testing.assert_close(got[name], want[name], **CLOSE, msg=f"{what}: {name!r}")


def assert_all_close(got: dict, want: dict, what: str, exact: bool = False) -> None:
    for key in want:
        assert_sd_close(got[key], want[key], f"{what} [{key}]", exact)


@pytest.fixture(scope="module")
def ref() -> dict:
    return reference()


# ---------------------------------------------------------------- process harness
def _entry(rank: int, fn, world: int, tmp: str, store: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        fn(rank, world, Path(tmp), *args)
        # A DDP reducer that outlives the group would destroy it while holding the GIL
        # that gloo's worker thread may need: a rare hang at exit (pytorch/pytorch#56297).
        gc.collect()
        dist.barrier()  # no rank tears down its connections while another still needs them
    finally:
        dist.destroy_process_group()


def run_workers(fn, tmp_path: Path, *args, world: int = WORLD) -> list[dict]:
    """Run ``fn(rank, world, tmp_path, *args)`` on ``world`` processes; return what each saved."""
    store = tmp_path / f"store-{uuid.uuid4().hex}"
    ctx = mp.start_processes(
        _entry,
        args=(fn, world, str(tmp_path), str(store), args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"{fn.__name__} did not finish in {TIMEOUT_S} s (hung collective?)")
    except mp.ProcessRaisedException as err:
        pytest.fail(f"a {fn.__name__} worker failed:\n{err}", pytrace=False)
    except mp.ProcessExitedException as err:
        pytest.fail(f"a {fn.__name__} worker died: {err}", pytrace=False)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join()
    return [
        torch.load(tmp_path / f"{fn.__name__}_r{r}.pt", weights_only=True) for r in range(world)
    ]


def save_result(fn_name: str, rank: int, tmp: Path, result: dict) -> None:
    torch.save(result, tmp / f"{fn_name}_r{rank}.pt")


class NoCollectives(TorchDispatchMode):
    """Fails on any c10d collective (what an all-gather of a DTensor dispatches to)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("c10d", "_c10d_functional", "c10d_functional"):
            raise AssertionError(f"unexpected collective {func}")
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- DDP
def ddp_worker(rank: int, world: int, tmp: Path) -> None:
    model = make_net()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = make_opt(ddp)
    ema, swa = make_averagers(ddp)  # no special call: the wrapper is unwrapped by name
    for step in range(1, STEPS + 1):
        train_step(ddp, opt, step, rank)
        with NoCollectives():
            ema.update()
            swa.update()
    save_result(
        "ddp_worker",
        rank,
        tmp,
        {"avg": averages(ema, swa), "sharded": is_sharded(ema), "nbytes": ema.nbytes},
    )


def test_ddp_every_rank_holds_the_single_process_averages(tmp_path, ref):
    r0, r1 = run_workers(ddp_worker, tmp_path)
    assert_all_close(r1["avg"], r0["avg"], "rank 1 vs rank 0", exact=True)
    assert_all_close(r0["avg"], ref["ckpt"], "DDP vs single process")
    assert not r0["sharded"] and r0["nbytes"] == ref["nbytes"]


# ---------------------------------------------------------------- FSDP2
def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for m in (model.a, model.b, model.c):
        fully_shard(m)
    fully_shard(model)
    return model


@torch.no_grad()
def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor() for n, p in model.named_parameters()}


@torch.no_grad()
def local_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.to_local().clone() for n, p in model.named_parameters()}


def fsdp_worker(rank: int, world: int, tmp: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict
    from torch.distributed.tensor import DTensor

    res: dict = {}
    # Misuse: an averager built before fully_shard names the parameter and the fix.
    early = make_net()
    early_ema = EMA(early)
    shard(early)
    try:
        early_ema.update()
        res["early_error"] = ""
    except ValueError as err:
        res["early_error"] = str(err)

    # Misuse: converting the sharded model's dtype after building the averager.
    converted = shard(make_net())
    converted_ema = EMA(converted)
    converted.double()
    try:
        converted_ema.update()
        res["double_error"] = ""
    except ValueError as err:
        res["double_error"] = str(err)

    # Averages on another device (device=, offload=) are refused for sharded parameters.
    try:
        EMA(shard(make_net()), offload="staged")
        res["offload_error"] = ""
    except ValueError as err:
        res["offload_error"] = str(err)

    # FSDP2 re-creates (and re-pads) local shards in to_empty(): the averager follows the
    # parameter to its new shard, keeping its averages.
    moved = shard(make_net())
    moved_ema = EMA(moved, decay=0.5)
    saved = {n: p.detach().clone() for n, p in moved.state_dict().items()}
    moved.to_empty(device="cpu")
    moved.load_state_dict(saved)
    with torch.no_grad():
        for p in moved.parameters():
            p.to_local().add_(1.0)
    moved_ema.update()
    moved_ema.switch()
    res["followed"] = {n: p.detach().full_tensor() for n, p in moved.named_parameters()}

    # HSDP (replicate x shard mesh): Replicate placements are kept, the state loads plainly.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
    hsdp = fully_shard(make_net(), mesh=mesh)
    hsdp_ema = EMA(hsdp, decay=0.5)
    res["hsdp_placements"] = [
        (type(p).__name__, getattr(p, "dim", None))
        for p in hsdp_ema.state_dict()["averages"]["a.weight"].placements
    ]
    hsdp_plain = EMA(make_net())
    hsdp_plain.load_state_dict(hsdp_ema.state_dict())
    res["hsdp_to_plain"] = hsdp_plain.averaged_state_dict()

    model = shard(make_net())
    opt = make_opt(model)
    ema, swa = make_averagers(model)
    res["sharded"] = is_sharded(ema)
    res["nbytes"] = ema.nbytes
    res["shard_numel"] = sum(p.to_local().numel() for p in model.parameters())
    with NoCollectives():  # positive control: the detector sees an all-gather
        try:
            model.a.weight.full_tensor()
            res["detector_works"] = False
        except AssertionError:
            res["detector_works"] = True

    for step in range(1, STEPS + 1):
        if step == 3:
            # An evaluation forward between optimizer.step() and update(): FSDP2 keeps the
            # root's unsharded parameter registered; update() must still average the shard.
            x, y = batch(step, rank)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                model(EVAL_X)
            res["root_unsharded_at_update"] = not isinstance(model._parameters["scale"], DTensor)
        else:
            train_step(model, opt, step, rank)
        with NoCollectives():  # shard-local: no gather on update
            ema.update()
            swa.update()

    # Exports at the checkpoint step.
    res["ckpt"] = {
        f"ema{k}": full_averaged_state_dict(ema, k, rank0_only=False) for k in range(2)
    } | {"swa": full_averaged_state_dict(swa, rank0_only=False)}
    res["rank0_only_len"] = len(full_averaged_state_dict(ema, 1))
    sharded_sd = ema.averaged_state_dict(1)
    res["placements_match"] = all(
        isinstance(sharded_sd[n], DTensor)
        and sharded_sd[n].placements == p.placements
        and sharded_sd[n].device_mesh == p.device_mesh
        for n, p in model.named_parameters()
    )
    other = shard(make_net())
    set_model_state_dict(other, sharded_sd)
    res["set_model_state_dict"] = full_params(other)

    # In-memory state dicts across layouts: sharded -> plain (gather) and plain -> sharded.
    plain_ema = EMA(make_net(), decay=(0.5, 0.5))
    plain_ema.load_state_dict(ema.state_dict())
    res["sharded_to_plain"] = plain_ema.averaged_state_dict(0)
    ema_from_plain = EMA(shard(make_net()), decay=(0.5, 0.5))
    ema_from_plain.load_state_dict(torch.load(tmp / "ref_state.pt", weights_only=True))
    res["plain_to_sharded"] = full_averaged_state_dict(ema_from_plain, 0, rank0_only=False)

    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save(
        {"model": model_sd, "optim": optim_sd, "ema": ema, "swa": swa},
        checkpoint_id=tmp / "ckpt",
    )
    res["model_at_ckpt"] = full_params(model)

    # swapped(): shard-local exchange; the forward inside sees the average; exact restore.
    before = local_params(model)
    with torch.no_grad():
        res["online_out"] = model(EVAL_X)
    with NoCollectives():
        cm = ema.swapped(1)
        cm.__enter__()
    with torch.no_grad():
        res["swapped_out"] = model(EVAL_X)  # leaves the root unsharded (averaged weights)
    with NoCollectives():
        cm.__exit__(None, None, None)
    after = local_params(model)
    res["swap_restored"] = all(torch.equal(before[n], after[n]) for n in before)
    with torch.no_grad():
        res["online_out_after"] = model(EVAL_X)

    # switch(): shard-local copy; training continues from the average.
    with NoCollectives():
        ema.switch(0, optimizer=opt)
    res["switched"] = full_params(model)
    for step in range(STEPS + 1, STEPS + MORE + 1):
        train_step(model, opt, step, rank)
        ema.update()
        swa.update()
    res["final"] = {
        f"ema{k}": full_averaged_state_dict(ema, k, rank0_only=False) for k in range(2)
    } | {"swa": full_averaged_state_dict(swa, rank0_only=False)}
    save_result("fsdp_worker", rank, tmp, res)


def dcp_load_worker(rank: int, world: int, tmp: Path) -> None:
    """Fresh processes: load the 2-rank checkpoint into a sharded model, then continue."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = shard(make_net())
    opt = make_opt(model)
    # Different decays on purpose: configuration and counters come from the checkpoint.
    ema, swa = make_averagers(model, decays=(0.5, 0.5))
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd, "ema": ema, "swa": swa}
    dcp.load(state, checkpoint_id=tmp / "ckpt")
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    res = {
        "ckpt": {f"ema{k}": full_averaged_state_dict(ema, k, rank0_only=False) for k in range(2)}
        | {"swa": full_averaged_state_dict(swa, rank0_only=False)},
        "counters": (ema.step, ema.n_updates, ema.decays, swa.n_averaged),
    }
    ema.switch(0, optimizer=opt)
    for step in range(STEPS + 1, STEPS + MORE + 1):
        train_step(model, opt, step, rank)
        ema.update()
        swa.update()
    res["final"] = {
        f"ema{k}": full_averaged_state_dict(ema, k, rank0_only=False) for k in range(2)
    } | {"swa": full_averaged_state_dict(swa, rank0_only=False)}
    save_result("dcp_load_worker", rank, tmp, res)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, ref):
    tmp = tmp_path_factory.mktemp("fsdp")
    torch.save(ref["state"], tmp / "ref_state.pt")
    return tmp, run_workers(fsdp_worker, tmp)


def test_fsdp_averages_local_shards_only(fsdp_run, ref):
    _, (r0, r1) = fsdp_run
    for r in (r0, r1):
        assert r["sharded"] and r["detector_works"]
        # K=2 float32 averages of this rank's shard, nothing else
        assert r["nbytes"] == 2 * 4 * r["shard_numel"]
    assert r0["nbytes"] + r1["nbytes"] == ref["nbytes"]
    assert r0["nbytes"] < ref["nbytes"] and r1["nbytes"] < ref["nbytes"]
    assert r0["root_unsharded_at_update"]  # the case the binding check must tolerate


def test_fsdp_matches_single_process(fsdp_run, ref):
    _, (r0, r1) = fsdp_run
    assert_all_close(r0["ckpt"], r1["ckpt"], "rank 0 vs rank 1", exact=True)
    assert_all_close(r0["ckpt"], ref["ckpt"], "FSDP vs single process")
    assert r1["rank0_only_len"] == 0 and r0["rank0_only_len"] == len(ref["ckpt"]["ema1"])
    # the full state dict loads into a plain model
    plain = make_net()
    plain.load_state_dict(r0["ckpt"]["ema1"])
    assert_sd_close(dict(plain.state_dict()), r0["ckpt"]["ema1"], "plain model", exact=True)


def test_fsdp_averaged_state_dict_is_sharded_like_the_model(fsdp_run):
    _, (r0, r1) = fsdp_run
    for r in (r0, r1):
        assert r["placements_match"]
        assert_sd_close(r["set_model_state_dict"], r["ckpt"]["ema1"], "set_model_state_dict", True)


def test_fsdp_state_dict_across_layouts(fsdp_run, ref):
    _, (r0, r1) = fsdp_run
    for r in (r0, r1):
        assert_sd_close(r["sharded_to_plain"], r["ckpt"]["ema0"], "sharded -> plain", exact=True)
        assert_sd_close(r["plain_to_sharded"], ref["ckpt"]["ema0"], "plain -> sharded", exact=True)


def test_fsdp_swapped_and_switch_are_shard_local(fsdp_run, ref):
    _, (r0, r1) = fsdp_run
    for r in (r0, r1):
        assert r["swap_restored"]
        torch.testing.assert_close(r["swapped_out"], ref["swapped_out"], **CLOSE)
        torch.testing.assert_close(r["online_out"], ref["online_out"], **CLOSE)
        # the root's unsharded *averaged* weight left by the forward inside swapped() is gone
        assert torch.equal(r["online_out_after"], r["online_out"])
        assert_sd_close(r["switched"], r["ckpt"]["ema0"], "model after switch(0)", exact=True)
        assert_all_close(r["final"], ref["final"], "after switch and more steps")


def test_fsdp_averager_follows_fsdp_moving_its_shards(fsdp_run):
    _, (r0, r1) = fsdp_run
    net = make_net()
    want = {n: p.detach() + 0.5 for n, p in net.named_parameters()}
    for r in (r0, r1):
        assert_sd_close(r["followed"], want, "after to_empty + load + update + switch")


def test_hsdp_replicate_placements(fsdp_run):
    _, (r0, r1) = fsdp_run
    want = dict(make_net().state_dict())
    for r in (r0, r1):
        assert r["hsdp_placements"] == [("Replicate", None), ("Shard", 1)]
        assert_sd_close(r["hsdp_to_plain"], want, "HSDP state into a plain averager", exact=True)


def test_fsdp_misuse_errors(fsdp_run):
    _, (r0, _) = fsdp_run
    msg = r0["double_error"]  # model.double() after building the averager
    assert "parameter 'scale' had its local shard replaced (now (1,) torch.float64" in msg, msg
    msg = r0["early_error"]  # averager built before fully_shard
    assert "parameter 'scale' is now a DTensor" in msg, msg
    assert "create the averager after sharding the model" in msg, msg
    msg = r0["offload_error"]
    assert "device= (averages kept on another device) is not supported for sharded" in msg, msg


# ---------------------------------------------------------------- DCP
def test_dcp_checkpoint_loads_on_two_ranks_and_continues_identically(fsdp_run):
    tmp, (a0, _) = fsdp_run
    b0, b1 = run_workers(dcp_load_worker, tmp)
    for b in (b0, b1):
        assert_all_close(b["ckpt"], a0["ckpt"], "loaded on 2 ranks", exact=True)
        assert b["counters"] == (STEPS, STEPS, DECAYS, STEPS - 2)
        assert_all_close(b["final"], a0["final"], "continued after loading", exact=True)


def _load_plain(ckpt: Path) -> tuple[Net, EMA, SWA]:
    import torch.distributed.checkpoint as dcp

    model = make_net()
    ema, swa = make_averagers(model, decays=(0.5, 0.5))
    state = {"model": model.state_dict(), "ema": ema, "swa": swa}
    dcp.load(state, checkpoint_id=ckpt)
    model.load_state_dict(state["model"])
    return model, ema, swa


@NO_PG
def test_dcp_checkpoint_loads_into_one_plain_process(fsdp_run):
    tmp, (a0, _) = fsdp_run
    assert not dist.is_initialized()
    model, ema, swa = _load_plain(tmp / "ckpt")  # no process group at all
    assert not is_sharded(ema)
    assert ema.decays == DECAYS and ema.step == STEPS
    assert_all_close(averages(ema, swa), a0["ckpt"], "loaded in one plain process", exact=True)
    assert_sd_close(dict(model.named_parameters()), a0["model_at_ckpt"], "model", exact=True)


def test_dcp_checkpoint_loads_on_a_one_rank_mesh(fsdp_run, tmp_path):
    import torch.distributed.checkpoint as dcp

    tmp, (a0, _) = fsdp_run
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = shard(make_net())
        ema, swa = make_averagers(model, decays=(0.5, 0.5))
        assert is_sharded(ema)
        dcp.load({"ema": ema, "swa": swa}, checkpoint_id=tmp / "ckpt")
        got = {f"ema{k}": full_averaged_state_dict(ema, k) for k in range(2)}
        got["swa"] = full_averaged_state_dict(swa)
        assert_all_close(got, a0["ckpt"], "loaded on a 1-rank mesh", exact=True)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- helpers, single process
@NO_PG
def test_save_and_load_averager_helpers(tmp_path):
    model = make_net()
    ema = EMA(model, decay=DECAYS)
    with torch.no_grad():
        model.a.weight.add_(1.0)
    ema.update()
    save_averager(ema, tmp_path / "avg")
    fresh = EMA(make_net(), decay=(0.1, 0.2))
    with pytest.warns(UserWarning, match=r"decay: \(0.1, 0.2\) here"):  # the state's win
        load_averager(fresh, tmp_path / "avg")
    assert fresh.decays == DECAYS and fresh.n_updates == 1
    assert_sd_close(fresh.averaged_state_dict(1), ema.averaged_state_dict(1), "helper", True)
    with pytest.raises(ValueError, match="keeps 2 average.*this averager 1"):
        load_averager(EMA(make_net()), tmp_path / "avg")
    small = nn.Sequential(nn.Linear(6, 10))
    with pytest.raises(ValueError, match="no average for '0.weight'"):
        load_averager(EMA(small, decay=DECAYS), tmp_path / "avg")
    with pytest.raises(TypeError, match="switchema averager"):
        full_averaged_state_dict(model)


def test_plain_full_state_dict_is_the_averaged_state_dict():
    model = make_net()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.scale.mul_(3.0)
    ema.update()
    assert_sd_close(full_averaged_state_dict(ema), ema.averaged_state_dict(), "plain", True)


# ---------------------------------------------------------------- post-hoc EMA under FSDP2
def power_snapshot_worker(rank: int, world: int, tmp: Path) -> None:
    from switchema import PowerEMA
    from switchema.posthoc import FolderStore

    model = shard(make_net())
    opt = make_opt(model)
    ema = PowerEMA(model, sigma_rel=(0.05, 0.10))
    store = FolderStore(tmp / "snaps")
    for step in range(1, STEPS + 1):
        train_step(model, opt, step, rank)
        with NoCollectives():  # the per-step path stays shard-local
            ema.update()
        if step % 2 == 0:
            ema.snapshot(store)  # a collective (DCP): every rank writes its own shards
    save_result(
        "power_snapshot_worker",
        rank,
        tmp,
        {"nbytes": ema.nbytes, "final": full_averaged_state_dict(ema, 1, rank0_only=False)},
    )


@NO_PG
def test_fsdp_power_ema_snapshots_are_sharded_and_synthesis_reads_them(tmp_path):
    from switchema import PowerEMA
    from switchema.posthoc import MemoryStore, synthesize

    r0, r1 = run_workers(power_snapshot_worker, tmp_path)
    # the single-process reference on the same global batches
    model = make_net()
    opt = make_opt(model)
    ref = PowerEMA(model, sigma_rel=(0.05, 0.10))
    store = MemoryStore()
    ref.snapshot_every(store, every=2)
    for step in range(1, STEPS + 1):
        train_step(model, opt, step)
        ref.update()
    assert_sd_close(r0["final"], ref.averaged_state_dict(1), "FSDP vs single process")
    assert r0["nbytes"] + r1["nbytes"] == ref.nbytes  # each rank holds its shards only
    snaps = sorted(p for p in (tmp_path / "snaps").iterdir() if p.is_dir())
    assert len(snaps) == STEPS // 2
    for snap in snaps:  # every rank wrote its own shards, none the whole
        files = sorted(snap.glob("*.distcp"))
        assert len(files) == WORLD
    sharded = synthesize(tmp_path / "snaps", sigma_rel=0.07)
    plain = synthesize(store, sigma_rel=0.07)
    assert sharded.state_dict.keys() == plain.state_dict.keys()
    assert_sd_close(sharded.state_dict, plain.state_dict, "synthesis from FSDP2 snapshots")


def snapshot_claim_worker(rank: int, world: int, tmp: Path) -> None:
    from switchema import PowerEMA
    from switchema.posthoc import FolderStore

    model = shard(make_net())
    ema = PowerEMA(model, sigma_rel=(0.05, 0.10))
    ema.update()
    if rank == 0:
        time.sleep(0.5)  # the other rank reaches the save first (its shards must not be refused)
    ema.snapshot(FolderStore(tmp / "fresh"))
    refused = None
    try:  # a folder of another run: every rank refuses it, none is left waiting in the save
        ema.snapshot(FolderStore(tmp / "taken"))
    except FileExistsError as e:
        refused = str(e)
    save_result("snapshot_claim_worker", rank, tmp, {"refused": refused})


@NO_PG
def test_fsdp_snapshots_claim_the_folder_once_for_every_rank(tmp_path):
    from switchema.posthoc import FolderStore

    FolderStore(tmp_path / "taken", run_id="other").claim()
    (tmp_path / "taken" / "snapshot-0000000001.json").write_text('{"step": 1}')
    results = run_workers(snapshot_claim_worker, tmp_path)
    assert all("run 'other'" in (r["refused"] or "") for r in results), results
    assert FolderStore(tmp_path / "fresh").owner() is not None
    assert len(list((tmp_path / "fresh").glob("snapshot-*.json"))) == 1
