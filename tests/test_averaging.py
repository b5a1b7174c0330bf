import copy
import gc
import io

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from switchema import EMA, SWA, LinearWarmup
from switchema.schedules import EMAWarmup, PowerWarmup


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def perturb(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype))


def param_names(model):
    return [n for n, _ in model.named_parameters()]


def reference_ema(model, decays, steps, warmup=None, update_every=1, start_step=0, seed=1):
    """A hand-written per-tensor EMA that follows the docstring's recurrence literally."""
    gen = torch.Generator().manual_seed(seed)
    avgs = [{n: p.detach().double().clone() for n, p in model.named_parameters()} for _ in decays]
    n_updates = 0
    for step in range(1, steps + 1):
        perturb(model, gen)
        if step <= start_step:
            for a in avgs:
                for n, p in model.named_parameters():
                    a[n] = p.detach().double().clone()
            continue
        if (step - start_step) % update_every:
            continue
        for a, d in zip(avgs, decays):
            dt = warmup(d, n_updates) if warmup else d
            for n, p in model.named_parameters():
                a[n] = dt * a[n] + (1 - dt) * p.detach().double()
        n_updates += 1
    return avgs


def run_ema(model, steps, seed=1, **kw):
    ema = EMA(model, **kw)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        perturb(model, gen)
        ema.update()
    return ema


@pytest.mark.parametrize(
    "kw",
    [
        dict(decay=0.9),
        dict(decay=(0.9, 0.5, 0.99)),
        dict(decay=0.95, warmup=EMAWarmup()),
        dict(decay=(0.95, 0.8), warmup=PowerWarmup(power=0.75)),
        dict(decay=0.9, warmup=LinearWarmup(steps=5, ratio=0.5)),
        dict(decay=0.9, update_every=3, start_step=4),
        dict(decay=(0.9, 0.99), update_every=2, start_step=3, warmup=EMAWarmup()),
    ],
)
def test_ema_matches_hand_written_loop(kw):
    decays = kw["decay"] if isinstance(kw["decay"], tuple) else (kw["decay"],)
    ema = run_ema(make_model(), 17, **kw)
    ref = reference_ema(
        make_model(),
        decays,
        17,
        warmup=kw.get("warmup"),
        update_every=kw.get("update_every", 1),
        start_step=kw.get("start_step", 0),
    )
    for k in range(len(decays)):
        sd = ema.averaged_state_dict(k)
        for n in ref[k]:
            torch.testing.assert_close(sd[n].double(), ref[k][n], rtol=1e-5, atol=1e-5)
    expected_updates = (17 - kw.get("start_step", 0)) // kw.get("update_every", 1)
    assert ema.n_updates == expected_updates and ema.step == 17


def test_ema_matches_torch_averaged_model():
    model = make_model()
    ema = EMA(model, decay=0.97)
    torch_avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.97))
    torch_avg.update_parameters(model)  # torch's first update copies: our avg_0 = x_0
    gen = torch.Generator().manual_seed(3)
    for _ in range(25):
        perturb(model, gen)
        ema.update()
        torch_avg.update_parameters(model)
    sd = ema.averaged_state_dict()
    for n, p in torch_avg.module.named_parameters():
        torch.testing.assert_close(sd[n], p.detach(), rtol=1e-6, atol=1e-6)


def test_k_decays_equal_k_separate_averagers_bitwise():
    decays = (0.968, 0.984, 0.992, 0.996, 0.998)
    model = make_model()
    together = EMA(model, decay=decays, warmup="ema_paper")
    separate = [EMA(model, decay=d, warmup="ema_paper") for d in decays]
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        perturb(model, gen)
        together.update()
        for e in separate:
            e.update()
    for k, e in enumerate(separate):
        a, b = together.averaged_state_dict(k), e.averaged_state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_bf16_model_average_moves_where_bf16_average_is_stuck():
    model = nn.Linear(64, 64).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    fp32 = EMA(model, decay=0.999)
    bf16 = EMA(model, decay=0.999, dtype=None)
    start = model.weight.detach().float().clone()
    with torch.no_grad():
        model.weight.add_(0.5)  # a step far away, then stay there
    for _ in range(200):
        fp32.update()
        bf16.update()
    avg32 = fp32.state_dict()["averages"]["weight"][0]  # the stored average, in float32
    assert avg32.dtype == torch.float32
    moved32 = (avg32 - start).abs().mean()
    moved16 = (bf16.averaged_state_dict()["weight"].float() - start).abs().mean()
    # 200 steps of decay 0.999 move the exact average 1 - 0.999**200 = 18% of the way (0.09);
    # a bf16 average at 1.0 rounds each 0.0005 increment away (bf16 spacing at 1.0 is 2**-7)
    assert moved32.item() == pytest.approx(0.5 * (1 - 0.999**200), rel=1e-3)
    assert moved16.item() == 0.0
    assert fp32.averaged_state_dict()["weight"].dtype == torch.bfloat16  # exported in model dtype


def test_half_life_sets_decay():
    ema = EMA(make_model(), half_life=100, update_every=4)
    assert ema.decay == ema.decays[0] == pytest.approx(0.5 ** (4 / 100))
    with pytest.raises(ValueError, match="not both"):
        EMA(make_model(), decay=0.9, half_life=10)


# ---------------------------------------------------------------- switch and swap
def test_switch_copies_average_and_leaves_it_unchanged():
    model = make_model()
    ema = run_ema(model, 10, decay=(0.9, 0.5))
    avg1 = ema.averaged_state_dict(1)
    ema.switch(1)
    for n, p in model.named_parameters():
        assert torch.equal(p, avg1[n])
    after = ema.averaged_state_dict(1)
    assert all(torch.equal(after[n], avg1[n]) for n in avg1)


def test_switch_resets_optimizer_state():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = EMA(model, decay=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    assert len(opt.state) == len(list(model.parameters()))
    ema.update()
    ema.switch()
    assert len(opt.state) == 6  # switch without an optimizer leaves its state alone
    ema.switch(optimizer=opt)
    assert len(opt.state) == 0


def test_periodic_switch_inside_update():
    model = make_model()
    ema = EMA(model, decay=0.9, switch="5s")
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 11):
        perturb(model, gen)
        ema.update()
        avg = ema.averaged_state_dict()
        same = all(torch.equal(p, avg[n]) for n, p in model.named_parameters())
        assert same == (step % 5 == 0)


def test_swapped_exchanges_and_restores_exactly():
    model = make_model()
    ema = run_ema(model, 7, decay=0.8)
    online = {n: p.detach().clone() for n, p in model.named_parameters()}
    avg = ema.averaged_state_dict()
    with ema.swapped() as m:
        assert m is model
        for n, p in model.named_parameters():
            assert torch.equal(p, avg[n])
    for n, p in model.named_parameters():
        assert torch.equal(p, online[n])
    assert all(torch.equal(ema.averaged_state_dict()[n], avg[n]) for n in avg)


def test_swapped_restores_when_body_raises():
    model = make_model()
    ema = run_ema(model, 3, decay=0.5)
    online = copy.deepcopy(model.state_dict())
    with pytest.raises(KeyError), ema.swapped():
        raise KeyError("boom")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in online.items())


def test_swapped_with_wider_average_restores_bf16_model():
    torch.manual_seed(0)
    model = nn.Linear(8, 8).to(torch.bfloat16)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    online = model.weight.detach().clone()
    avg = ema.averaged_state_dict()["weight"]
    with ema.swapped():
        assert torch.equal(model.weight, avg)
    assert torch.equal(model.weight, online)
    assert ema._store.groups[0].flat.dtype == torch.float32


def test_misuse_inside_swapped_is_an_error():
    model = make_model()
    ema = EMA(model)
    with ema.swapped():
        with pytest.raises(RuntimeError, match="inside swapped"):
            ema.update()
        with pytest.raises(RuntimeError, match="inside swapped"):
            ema.switch()
        with pytest.raises(RuntimeError, match="inside swapped"):
            with ema.swapped():
                pass


# ---------------------------------------------------------------- SWA
def test_swa_is_uniform_mean_of_iterates_from_start_step():
    model = make_model()
    swa = SWA(model, start_step=3, update_every=2)
    gen = torch.Generator().manual_seed(0)
    snapshots = []
    for step in range(1, 12):
        perturb(model, gen)
        swa.update()
        if step > 3 and (step - 3) % 2 == 0:
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert swa.n_averaged == len(snapshots) == 4
    sd = swa.averaged_state_dict()
    for n in snapshots[0]:
        mean = torch.stack([s[n] for s in snapshots]).mean(0)
        torch.testing.assert_close(sd[n], mean, rtol=1e-5, atol=1e-6)


def test_swa_matches_torch_averaged_model():
    model = make_model()
    swa = SWA(model)
    ref = AveragedModel(model)
    gen = torch.Generator().manual_seed(5)
    for _ in range(9):
        perturb(model, gen)
        swa.update()
        ref.update_parameters(model)
    sd = swa.averaged_state_dict()
    for n, p in ref.module.named_parameters():
        torch.testing.assert_close(sd[n], p.detach(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- buffers and special parameters
def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


def test_buffer_policies():
    model = _bn_model()
    ema = EMA(model, decay=0.5, buffers={"*.running_mean": "average", "*.running_var": "skip"})
    bn = model[1]
    mean0 = bn.running_mean.clone()
    model.train()
    model(torch.randn(16, 4) + 3.0)
    ema.update()
    sd = ema.averaged_state_dict()
    torch.testing.assert_close(sd["1.running_mean"], 0.5 * mean0 + 0.5 * bn.running_mean)
    assert "1.running_var" not in sd
    # integer counter with policy "copy" (default) is the model's own value, still an integer
    assert sd["1.num_batches_tracked"].dtype == torch.long
    assert sd["1.num_batches_tracked"].item() == 1


def test_integer_buffers_never_averaged():
    model = _bn_model()
    ema = EMA(model, decay=0.5, buffers="average")
    model(torch.randn(8, 4))
    model(torch.randn(8, 4))
    ema.update()
    sd = ema.averaged_state_dict()
    assert (
        sd["1.num_batches_tracked"].dtype == torch.long and sd["1.num_batches_tracked"].item() == 2
    )
    assert "1.num_batches_tracked" not in ema.state_dict()["names"]


def test_default_buffers_are_the_models_own():
    model = _bn_model()
    ema = EMA(model)
    model(torch.randn(8, 4) * 5)
    assert torch.equal(ema.averaged_state_dict()["1.running_var"], model[1].running_var)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight


def test_tied_parameters_averaged_once_and_exported_under_both_names():
    model = Tied()
    ema = EMA(model, decay=0.5)
    assert ema.state_dict()["names"].count("emb.weight") == 1
    assert "head.weight" not in ema.state_dict()["names"]
    with torch.no_grad():
        model.emb.weight.add_(2.0)
    ema.update()
    sd = ema.averaged_state_dict()
    assert torch.equal(sd["emb.weight"], sd["head.weight"])
    # averaged once: halfway, not 3/4 of the way
    torch.testing.assert_close(sd["emb.weight"], model.emb.weight - 1.0)


def test_frozen_parameters_copied_unless_asked():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[0].requires_grad_(False)
    ema = EMA(model, decay=0.5)
    assert ema.state_dict()["names"] == ["1.weight", "1.bias"]
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(ema.averaged_state_dict()["0.weight"], model[0].weight)
    ema_all = EMA(model, decay=0.5, frozen="average")
    assert "0.weight" in ema_all.state_dict()["names"]


def test_names_ignore_wrappers_and_no_deepcopy():
    class NoCopy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def __deepcopy__(self, memo):
            raise AssertionError("the averager must not deepcopy the model")

    model = NoCopy()
    compiled = torch.compile(model)
    ema = EMA(compiled)
    assert ema.state_dict()["names"] == ["lin.weight", "lin.bias"]
    plain = EMA(nn.Module.__new__(nn.Module) if False else model)
    plain.load_state_dict(ema.state_dict())


def test_ddp_wrapper_names(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = nn.Linear(3, 2)
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = EMA(ddp, decay=0.5)
        assert ema.state_dict()["names"] == ["weight", "bias"]
        ddp(torch.randn(4, 3)).sum().backward()
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update()
        other = EMA(nn.Linear(3, 2), decay=0.5)
        other.load_state_dict(ema.state_dict())
        assert torch.equal(
            other.averaged_state_dict()["weight"], ema.averaged_state_dict()["weight"]
        )
        # The reducer must not outlive the group (see examples/distributed.py).
        del ddp, ema
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_channels_last_model():
    model = make_model().to(memory_format=torch.channels_last)
    ema = run_ema(model, 5, decay=0.7)
    ref = reference_ema(make_model().to(memory_format=torch.channels_last), (0.7,), 5)[0]
    sd = ema.averaged_state_dict()
    for n in ref:
        torch.testing.assert_close(sd[n].double(), ref[n], rtol=1e-5, atol=1e-5)
    with ema.swapped():
        assert torch.equal(model[0].weight, sd["0.weight"])


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "cls_kw", [(EMA, dict(decay=(0.9, 0.99), warmup="ema_paper")), (SWA, dict(start_step=2))]
)
def test_save_reload_continue_is_bit_identical(cls_kw):
    cls, kw = cls_kw
    model_a = make_model()
    a = cls(model_a, **kw)
    gen_a = torch.Generator().manual_seed(9)
    for _ in range(20):
        perturb(model_a, gen_a)
        a.update()

    model_b = make_model()
    b = cls(model_b, **kw)
    gen_b = torch.Generator().manual_seed(9)
    for _ in range(8):
        perturb(model_b, gen_b)
        b.update()
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "avg": b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model_c = make_model(seed=123)  # fresh process: different init, restored from checkpoint
    model_c.load_state_dict(ckpt["model"])
    c = cls(model_c, **({} if cls is SWA else {"decay": 0.5}))  # config comes from the state
    with pytest.warns(UserWarning, match="settings differ from this averager's and are used"):
        c.load_state_dict(ckpt["avg"])
    for _ in range(12):
        perturb(model_c, gen_b)
        c.update()
    assert c.step == a.step and c.n_updates == a.n_updates
    for k in range(a.num_averages):
        sa, sc = a.averaged_state_dict(k), c.averaged_state_dict(k)
        assert all(torch.equal(sa[n], sc[n]) for n in sa)


def test_load_mismatch_names_the_first_difference():
    ema = EMA(make_model())
    state = ema.state_dict()
    other = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3, bias=False)
    )
    with pytest.raises(ValueError, match="4.bias"):
        EMA(other).load_state_dict(state)
    bigger = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)
    )
    with pytest.raises(ValueError, match=r"shape mismatch for '4.weight'"):
        EMA(bigger).load_state_dict(state)
    renamed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="'3.weight'.*'4.weight'"):
        EMA(renamed).load_state_dict(state)
    with pytest.raises(ValueError, match="'swa'"):
        SWA(make_model()).load_state_dict(state)


def test_state_dict_has_no_callables():
    state = EMA(make_model(), decay=0.9, warmup=LinearWarmup(steps=10)).state_dict()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            assert x is None or isinstance(x, (int, float, str, bool, torch.Tensor)), type(x)

    walk(state)
    assert state["config"]["warmup"] == {"name": "linear", "steps": 10, "ratio": 0.9}


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, float("nan")])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        EMA(make_model(), decay=decay)


def test_bad_arguments():
    with pytest.raises(TypeError, match="decay must be a float"):
        EMA(make_model(), decay="0.9")
    with pytest.raises(ValueError, match="update_every must be a positive int, got 0"):
        EMA(make_model(), update_every=0)
    with pytest.raises(ValueError, match="unknown buffer policy 'mean'"):
        EMA(make_model(), buffers="mean")
    with pytest.raises(ValueError, match="unknown buffer policy 'avg' for pattern"):
        EMA(make_model(), buffers={"*.running_mean": "avg"})
    with pytest.raises(ValueError, match="no floating-point parameters"):
        EMA(nn.ReLU())
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        EMA({"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="start_step"):
        SWA(make_model(), start_step=-1)
    with pytest.raises(ValueError, match="out of range"):
        EMA(make_model(), decay=(0.9, 0.99)).switch(2)


def test_update_after_parameters_replaced():
    model = make_model()
    ema = EMA(model)
    model[4].weight = nn.Parameter(torch.zeros_like(model[4].weight))
    with pytest.raises(ValueError, match=r"parameter '4.weight' was replaced"):
        ema.update()
    model2 = make_model()
    ema2 = EMA(model2)
    model2.double()
    with pytest.raises(ValueError, match=r"'0.weight' had its data replaced \(now torch.float64"):
        ema2.update()
