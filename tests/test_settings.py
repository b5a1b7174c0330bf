"""The averagers' settings are written once: every option round-trips everywhere it goes.

``EXAMPLES`` gives every option of every averager a value other than its default; a new
option without an example fails ``test_every_option_has_an_example``, so it cannot be added
without being checked through ``state_dict``, ``deepcopy``, pickling and the lab's builders.
"""

import copy
import pickle
from dataclasses import fields

import pytest
import torch
from torch import nn

from switchema import BEMA, EMA, SWA, PowerEMA
from switchema.schedules import EMAWarmup
from switchema.settings import (
    BEMASettings,
    EMASettings,
    Options,
    PowerSettings,
    SWASettings,
    option_names,
)
from switchema.switching import SwitchRule

EXAMPLES = {
    "update_every": 3,
    "start_step": 2,
    "switch": SwitchRule("2s", start="1e", reset_optimizer=False),
    "dtype": torch.float64,
    "buffers": {"*running*": "average"},
    "params": {"0.*": "average"},
    "frozen": "average",
    "flat_params": True,
    "device": torch.device("cpu"),
    "offload": "staged",
    "avg_fn": None,  # set below: a module-level function, so copies pickle it by name
    "min_decay": 0.1,
    "decay": (0.9, 0.5),
    "warmup": EMAWarmup(),
    "gamma": (3.0, 7.0),
    "time": "samples",
    "kappa": (0.4, 0.6),
    "eta": (0.1, 0.3),
    "rho": 5.0,
}


def halfway(average, x, step):
    return average + 0.5 * (x - average)


EXAMPLES["avg_fn"] = halfway

BUILD = {
    EMASettings: lambda m, o: EMA(m, decay=o.pop("decay", None), **o),
    SWASettings: lambda m, o: SWA(m, **o),
    PowerSettings: lambda m, o: PowerEMA(m, gamma=o.pop("gamma", 1.0), **o),
    BEMASettings: lambda m, o: BEMA(m, **o),
}
ALL = [EMASettings, SWASettings, PowerSettings, BEMASettings]


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def examples(cls):
    out = {name: EXAMPLES[name] for name in option_names(cls)}
    if cls is PowerSettings:
        out["start_step"] = 0  # a power profile starts at step 0
    if cls is BEMASettings:
        out["gamma"] = 2.0  # BEMA's gamma is the multiplier of t, one number
    return out


@pytest.mark.parametrize("cls", ALL)
def test_every_option_has_an_example_that_differs_from_its_default(cls):
    defaults, examples_of_cls = cls(), examples(cls)
    for f in fields(cls):
        assert f.name in EXAMPLES, f"option {f.name!r} of {cls.__name__} has no example"
        if not (cls is PowerSettings and f.name == "start_step"):
            assert getattr(defaults, f.name) != examples_of_cls[f.name], f.name


@pytest.mark.parametrize("cls", ALL)
def test_every_option_round_trips_through_state_dict_copies_and_pickles(cls):
    opts = examples(cls)
    averager = BUILD[cls](model(), dict(opts))
    expected = cls(**opts)
    assert averager.settings == expected
    for name in option_names(Options):  # the options read as attributes, from one place
        if name != "switch":  # averager.switch() is the method; the rule is switch_rule
            assert getattr(averager, name) == getattr(expected, name)
    assert averager.switch_rule == expected.switch
    state = averager.state_dict()
    assert cls.from_dict(state["config"], avg_fn=halfway) == expected
    # every default (a callable is never saved, so it is given again): the state's settings win
    fresh = BUILD[cls](model(), {"avg_fn": halfway})
    with pytest.warns(UserWarning, match="settings differ"):
        fresh.load_state_dict(state)
    # where the averages live is the loading averager's (a GPU run's state loads offloaded)
    assert fresh.settings == expected.replace(device=None, offload="auto")
    for copied in (copy.deepcopy(averager), pickle.loads(pickle.dumps(averager))):
        assert copied.settings == expected and copied.model is not averager.model


def test_unknown_options_are_refused_naming_the_closest():
    with pytest.raises(
        TypeError, match=r"unexpected option 'update_evry'; did you mean 'update_every'"
    ):
        EMA(nn.Linear(2, 2), update_evry=2)
    with pytest.raises(TypeError, match="takes switch= .* not switch_every="):
        EMA(nn.Linear(2, 2), switch_every=5)


def test_configure_changes_what_keeps_the_storage_and_refuses_the_rest():
    ema = EMA(nn.Linear(2, 2), decay=0.9)
    ema.configure(switch="1e", update_every=2)
    assert ema.switch_rule == SwitchRule("1e") and ema.update_every == 2
    with pytest.raises(ValueError, match="create a new averager"):
        ema.configure(dtype=torch.float64)


def test_the_labs_builders_give_the_averager_the_studys_settings():
    from switchema.lab.config import StudyConfig
    from switchema.lab.methods import build_method
    from switchema.lab.resolve import resolve

    study = resolve(
        StudyConfig(
            task="circles",
            methods=["sema"],
            decay=[0.97],
            ema_update_every=2,
            ema_start="3s",
            ema_warmup="ema_paper",
            buffers="average",
            switch_every="5s",
            switch_start=1,
            reset_optimizer=True,
        )
    )
    method = build_method("sema", nn.Linear(2, 2), study, steps_per_epoch=10)
    s = method.averager.settings
    assert (s.decay, s.update_every, s.start_step, s.buffers) == ((0.97,), 2, 3, "average")
    assert s.warmup == EMAWarmup()
    assert s.switch == SwitchRule("5s", start="1e", reset_optimizer=True)
    openmixup = build_method(
        "sema-openmixup", nn.Linear(2, 2), resolve(study.config.replace(switch_every="2")), 10
    )
    assert openmixup.averager.switch_rule.inverted


# ---------------------------------------------------------------- one source of statistics
def _four_views(ema, x):
    """The average's output on ``x`` (eval mode) through swapped, averaged_state_dict,
    averaged_model and forward."""
    model = ema.model
    model.eval()
    with ema.swapped() as m:
        swapped = m(x)
    plain = copy.deepcopy(model)
    plain.load_state_dict(ema.averaged_state_dict())
    view = ema.averaged_model()
    view.eval()
    out = (swapped, plain(x), view(x), ema(x))
    model.train()
    return out


def test_a_train_mode_teacher_forward_never_changes_the_averages_statistics():
    """One documented choice for every view: what a train-mode forward writes into a view's
    statistics is discarded, as swapped() discards what its block writes."""
    torch.manual_seed(0)
    net = model()
    ema = EMA(net, decay=0.9)
    xs = [torch.randn(16, 3) + 2.0 for _ in range(3)]
    net[0].weight.data.add_(0.5)
    ema.update()
    ema.recompute_bn(xs)
    x = torch.randn(8, 3)
    with torch.no_grad():
        before = _four_views(ema, x)
        for a in before[1:]:
            torch.testing.assert_close(a, before[0], rtol=0, atol=1e-6)
        net.train()
        ema(torch.randn(32, 3) * 5)  # a teacher forward in train mode: batch statistics
        ema.averaged_model().train()(torch.randn(32, 3) * 5)
        after = _four_views(ema, x)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_timm_and_ema_pytorch_habits():
    net = nn.Linear(3, 2)
    ema = EMA(net, decay=0.5)
    with pytest.raises(TypeError, match="bound to its Linear when it was created"):
        ema.update(net)
    net.weight.data.add_(1.0)
    ema.update()
    x = torch.randn(4, 3)
    assert torch.equal(ema(x), ema.forward(x)) and torch.equal(ema.module(x), ema(x))
    assert ema.module is ema.averaged_model(0)
    assert ema.decay == 0.5 and ema.decays == (0.5,)
    with pytest.raises(ValueError, match=r"keeps 2 decays \(0.5, 0.9\); use ema.decays"):
        _ = EMA(net, decay=(0.5, 0.9)).decay
    expected = 0.5 * (net.weight - 1.0) + 0.5 * net.weight  # one update at decay 0.5
    torch.testing.assert_close(ema.module.weight, expected)


def test_a_ready_averager_with_several_decays_names_the_callbacks_state():
    """The framework callbacks key their state by the averager's settings; ema.decay is a
    float only for one decay, so they read the settings (an EMA of two decays is fine)."""
    from switchema.integrations._common import resolve_averager

    net = nn.Linear(2, 2)
    key = dict(resolve_averager(EMA(net, decay=(0.9, 0.99)), None).key)
    assert key == {"kind": "ema", "decay": (0.9, 0.99)}
    assert dict(resolve_averager(EMA(net, decay=0.9), None).key)["decay"] == (0.9,)
