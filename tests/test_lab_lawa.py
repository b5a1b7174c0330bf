"""The lab's ``lawa`` method: the uniform average of the last k epoch ends, evaluated every epoch."""

import json

import torch
from torch import nn

from switchema.cli import main
from switchema.lab.methods import SPECS, LawaMethod


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_lawa_is_the_mean_of_the_last_k_epoch_ends():
    torch.manual_seed(0)
    model = _model()
    method = LawaMethod("lawa", None, ["avg"], model=model, k=3)
    ends = []
    for epoch in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(8, 3))  # moves the BatchNorm statistics and its step counter
        ends.append({k: v.clone() for k, v in model.state_dict().items()})
        assert method.after_epoch(epoch, None) is False  # never switches
        (ev,) = method.evaluated(last=epoch == 7)
        window = ends[-3:]
        for k, v in ev.state.items():
            if v.is_floating_point():
                mean = sum(sd[k].double() for sd in window) / len(window)
                torch.testing.assert_close(v.double(), mean, rtol=0, atol=1e-6)
            else:  # num_batches_tracked: the latest epoch's
                assert torch.equal(v, ends[-1][k])
        assert ev.label == "avg" and set(ev.state) == set(model.state_dict())
    # a checkpoint keeps the window: a restored method gives the same average
    again = LawaMethod("lawa", None, ["avg"], model=_model(), k=3)
    again.load_state_dict(method.state_dict())
    (a,), (b,) = method.evaluated(True), again.evaluated(True)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert SPECS["lawa"].passive  # shares its seed's training run with baseline, ema, swa


def test_lawa_in_a_compare_run(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "compare", "--task", "circles", "--methods", "baseline", "lawa",
            "--lawa-k", "2", "--seeds", "0", "--epochs", "3", "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by = {(r["method"], r["model"], r["epoch"]): r for r in rows}
    assert {m for m, _, _ in by} == {"baseline", "lawa"}
    for epoch in (1, 2, 3):
        base, online = by["baseline", "online", epoch], by["lawa", "online", epoch]
        assert online["test_acc"] == base["test_acc"]  # one shared training run
        assert ("lawa", "avg", epoch) in by
    # after one epoch the window holds one state: the average is the model itself
    assert by["lawa", "avg", 1]["test_loss"] == by["lawa", "online", 1]["test_loss"]
    assert by["lawa", "avg", 3]["test_loss"] != by["lawa", "online", 3]["test_loss"]
    assert '"lawa_k": 2' in (out / "config.json").read_text()  # saved with the run
