"""The averaged weights as a model: ``averaged_model()`` and ``forward()`` (EMA teachers)."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from switchema import EMA


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x, scale=1.0):
        return self.head(self.body(x)) * scale


def make(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return Net().to(dtype)


def data(n=4, seed=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 6, generator=g).to(dtype) for _ in range(n)]


def teacher_student_steps(use_view, steps=4):
    """BYOL-style: the student regresses the EMA teacher's output on the same batch."""
    student = make()
    ema = EMA(student, decay=0.9)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    outs, grads = [], []
    for x in data(steps):
        if use_view == "module":
            target = ema.averaged_model()(x)
        elif use_view == "forward":
            target = ema.forward(x)
        else:  # the reference: a deep-copied teacher loaded from the averaged state dict
            teacher = copy.deepcopy(student)
            teacher.load_state_dict(ema.averaged_state_dict())
            target = teacher(x).detach()
        loss = (student(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in student.parameters()])
        outs.append(target.detach().clone())
        opt.step()
        ema.update()
    return student, ema, outs, grads


@pytest.mark.parametrize("use_view", ["module", "forward"])
def test_teacher_forward_and_student_backward_match_a_deep_copied_teacher(use_view):
    s_ref, ema_ref, outs_ref, grads_ref = teacher_student_steps("copy")
    s, ema, outs, grads = teacher_student_steps(use_view)
    for a, b in zip(outs, outs_ref):
        assert torch.equal(a, b)
    for ga, gb in zip(grads, grads_ref):  # the student's gradients are unaffected
        assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    assert all(
        torch.equal(a, b) for a, b in zip(s.state_dict().values(), s_ref.state_dict().values())
    )
    assert not any(o.requires_grad for o in outs)


def test_module_view_shares_the_average_and_costs_only_its_buffers():
    model = make()
    ema = EMA(model, decay=(0.9, 0.5))
    view = ema.averaged_model(1)
    flat = ema._store.groups[0].flat
    lo = flat.untyped_storage().data_ptr()
    hi = lo + flat.untyped_storage().nbytes()
    for p in view.parameters():
        assert lo <= p.data_ptr() < hi and not p.requires_grad
    own = {b.untyped_storage().data_ptr(): b.untyped_storage().nbytes() for b in view.buffers()}
    assert sum(own.values()) == sum(b.numel() * b.element_size() for b in model.buffers())
    assert view is ema.averaged_model(1)  # cached per index
    # always current: the average moves, the view follows without being asked again
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update()
    assert torch.equal(view.head.weight, ema.averaged_state_dict(1)["head.weight"])
    # its state dict is the averaged state dict, also after the online statistics moved
    view(data(1)[0])
    model(data(1, seed=9)[0])
    ema.update()
    sd = view.state_dict()
    exported = ema.averaged_state_dict(1)
    assert sd.keys() == exported.keys() and all(torch.equal(sd[k], exported[k]) for k in sd)


def test_train_mode_teacher_never_touches_the_online_statistics_or_the_average():
    model = make()
    ema = EMA(model, decay=0.9, buffers="average")
    stats = model.body[1].running_mean.clone()
    avg_stats = ema.averaged_state_dict()["body.1.running_mean"]
    teacher = ema.averaged_model()
    teacher.train()
    for x in data(3):
        teacher(x)
        ema.forward(x)
    assert torch.equal(model.body[1].running_mean, stats)
    assert torch.equal(ema.averaged_state_dict()["body.1.running_mean"], avg_stats)
    assert not torch.equal(teacher.body[1].running_mean, avg_stats)  # its own buffers moved


def test_bf16_model_view_is_a_cast_of_the_float32_average_refreshed_on_change():
    model = make(dtype=torch.bfloat16)
    ema = EMA(model, decay=0.9)
    view = ema.averaged_model().eval()
    x = data(1, dtype=torch.bfloat16)[0]
    with torch.no_grad():
        model.head.weight.add_(0.5)
    ema.update()
    ref = copy.deepcopy(model).eval()
    ref.load_state_dict(ema.averaged_state_dict())
    assert view.head.weight.dtype == torch.bfloat16
    assert torch.equal(view(x), ref(x))
    assert ema.averaged_state_dict(dtype="average")["head.weight"].dtype == torch.float32
    assert ema.averaged_state_dict(dtype=torch.float64)["head.weight"].dtype == torch.float64
    assert ema.averaged_state_dict()["head.weight"].dtype == torch.bfloat16


def test_forward_passes_keyword_arguments_and_picks_the_average():
    model = make()
    ema = EMA(model, decay=(0.5, 0.99))
    with torch.no_grad():
        model.head.bias.add_(1.0)
    ema.update()
    x = data(1)[0]
    model.eval()
    out = ema.forward(x, index=1, scale=2.0)
    ref = copy.deepcopy(model)
    ref.load_state_dict(ema.averaged_state_dict(1))
    assert torch.equal(out, ref(x, scale=2.0))
    with pytest.raises(ValueError, match="out of range"):
        ema.forward(x, index=2)


@pytest.mark.slow
def test_module_view_compiles_and_exports():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2))
    ema = EMA(model, decay=0.9)
    view = ema.averaged_model()
    x = torch.randn(5, 6)
    compiled = torch.compile(view)
    assert torch.allclose(compiled(x), view(x), atol=1e-6)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    assert torch.allclose(compiled(x), view(x), atol=1e-6)  # still the current average
    exported = torch.export.export(view, (x,))
    assert torch.allclose(exported.module()(x), view(x), atol=1e-6)


def test_views_refuse_inside_swapped():
    ema = EMA(make())
    with ema.swapped(), pytest.raises(RuntimeError, match="inside swapped"):
        ema.averaged_model()


def _torch_save(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    assert b"switchema" not in buf.getvalue()  # loads where this package is not installed
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _pickle(module):
    return pickle.loads(pickle.dumps(module))


def _trained_ema(dtype):
    """An EMA (float32 averages) whose average and online BatchNorm statistics have moved."""
    model = make(dtype=dtype)
    ema = EMA(model, decay=0.9)
    view = ema.averaged_model()
    for x in data(2, dtype=dtype):
        model(x)  # train mode: the running statistics move
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        ema.update()
    return model, ema, view


@pytest.mark.parametrize("how", [_torch_save, _pickle, copy.deepcopy])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_saved_view_loads_as_a_plain_module_holding_the_average(dtype, how):
    model, ema, view = _trained_ema(dtype)  # saved with no forward since the last update
    loaded = how(view)
    assert type(loaded) is type(model)
    sd, exported = loaded.state_dict(), ema.averaged_state_dict()
    assert sd.keys() == exported.keys()
    assert all(sd[k].dtype == exported[k].dtype and torch.equal(sd[k], exported[k]) for k in sd)
    x = data(1, seed=7, dtype=dtype)[0]
    assert torch.equal(loaded.eval()(x), view.eval()(x))
    # plain: its own tensors, no hooks, nothing tied to the averager
    views = {t.untyped_storage().data_ptr() for t in [*view.parameters(), *view.buffers()]}
    assert not views & {t.untyped_storage().data_ptr() for t in loaded.state_dict().values()}
    assert not loaded._forward_pre_hooks and not loaded._state_dict_pre_hooks
    assert "__reduce_ex__" not in vars(loaded)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_a_copied_view_is_a_snapshot_and_the_view_stays_live():
    model, ema, view = _trained_ema(torch.bfloat16)
    snapshot = copy.deepcopy(view)
    _torch_save(view)
    before = ema.averaged_state_dict()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update()
    assert torch.equal(snapshot.head.weight, before["head.weight"])
    x = data(1, seed=7, dtype=torch.bfloat16)[0]
    ref = copy.deepcopy(model).eval()
    ref.load_state_dict(ema.averaged_state_dict())
    assert torch.equal(view.eval()(x), ref(x))  # still refreshed before its forward


def test_a_saved_view_keeps_tied_parameters_tied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight
    ema = EMA(model, decay=0.9, dtype=torch.float64)  # a wider average: a cast copy
    loaded = _torch_save(ema.averaged_model())
    assert loaded[1].weight is loaded[0].weight
    assert torch.equal(loaded[0].weight, ema.averaged_state_dict()["0.weight"])
