"""switchema.checkpoints: averaged saved checkpoints against hand-computed averages (float64),
every reader format against the same state dicts in memory, the choice of the last N, each
refusal, and ``switchema average`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from switchema import PowerEMA
from switchema.checkpoints import (
    CheckpointReadError,
    average,
    average_state_dicts,
    checkpoint_weights,
    select_checkpoints,
)
from switchema.cli import main

SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4)}


def _states(n, dtype=torch.float64, seed=0):
    """``n`` state dicts with float tensors, an int step counter and a bool mask."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        sd = {
            k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in SHAPES.items()
        }
        sd["bn.num_batches_tracked"] = torch.tensor(10 * (i + 1))
        sd["mask"] = torch.tensor([i % 2 == 0, True])
        out.append(sd)
    return out


def _weighted(states, weights):
    """``sum_i w_i x_i`` in float64, by hand, for the float tensors."""
    return {
        k: sum(w * sd[k].double() for w, sd in zip(weights, states))
        for k in states[0]
        if states[0][k].is_floating_point()
    }


def _assert_average(result, states, weights, atol=1e-12):
    expected = _weighted(states, weights)
    assert set(result) == set(states[0])
    for k, v in expected.items():
        assert result[k].dtype == states[0][k].dtype
        torch.testing.assert_close(result[k].double(), v, rtol=0, atol=atol)
    # integer and bool tensors: the last checkpoint's, never averaged
    assert torch.equal(result["bn.num_batches_tracked"], states[-1]["bn.num_batches_tracked"])
    assert torch.equal(result["mask"], states[-1]["mask"])


def _save_all(states, folder, name="step={}.pt", steps=None):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(states):
        p = folder / name.format((steps or range(100, 100 * (len(states) + 1), 100))[i])
        torch.save(sd, p)
        paths.append(p)
    return paths


# -- weights ------------------------------------------------------------------------------


def test_uniform_weights_and_average():
    states = _states(5)
    assert checkpoint_weights(5) == (0.2,) * 5
    _assert_average(average_state_dicts(states, accumulate=torch.float64), states, [0.2] * 5)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_ema_weights_are_the_ema_of_the_checkpoint_sequence(decay):
    states = _states(6)
    # the EMA run over the checkpoints in float64, started at the first one
    ema = {k: v.clone() for k, v in states[0].items() if v.is_floating_point()}
    for sd in states[1:]:
        for k in ema:
            ema[k] = decay * ema[k] + (1 - decay) * sd[k]
    result = average_state_dicts(states, "ema", decay=decay, accumulate=torch.float64)
    for k, v in ema.items():
        torch.testing.assert_close(result[k], v, rtol=0, atol=1e-13)
    n = 6
    closed = [decay ** (n - 1)] + [(1 - decay) * decay ** (n - i) for i in range(2, n + 1)]
    assert checkpoint_weights(n, "ema", decay=decay) == pytest.approx(closed, abs=1e-15)
    assert sum(checkpoint_weights(n, "ema", decay=decay)) == pytest.approx(1.0, abs=1e-15)


def test_power_weights_are_the_profile_integrals_and_match_power_ema():
    steps = [40, 100, 130, 250, 400]
    g = 3.0
    closed = [
        (t ** (g + 1) - (prev ** (g + 1))) / steps[-1] ** (g + 1)
        for prev, t in zip([0] + steps[:-1], steps)
    ]
    w = checkpoint_weights(5, "power", gamma=g, steps=steps)
    assert w == pytest.approx(closed, rel=1e-12)
    # PowerEMA updated at the checkpoints' steps, in float64, gives the same average
    states = _states(5)
    model = torch.nn.Sequential()
    model.a = torch.nn.Linear(3, 4).double()
    model.b = torch.nn.Linear(4, 2, bias=False).double()
    ema = PowerEMA(model, gamma=g, dtype=torch.float64)
    for sd, t in zip(states, steps):
        model.load_state_dict({k: v for k, v in sd.items() if k in model.state_dict()})
        ema.update(step=t)
    tracked = ema.averaged_state_dict()
    result = average_state_dicts(states, "power", gamma=g, steps=steps, accumulate=torch.float64)
    for k in tracked:
        torch.testing.assert_close(result[k], tracked[k], rtol=0, atol=1e-12)
    # sigma_rel is converted by the same profile math as PowerEMA's
    assert checkpoint_weights(5, "power", sigma_rel=0.1, steps=steps) == pytest.approx(
        checkpoint_weights(5, "power", gamma=PowerEMA(model, sigma_rel=0.1).gammas[0], steps=steps)
    )


def test_explicit_weights_are_divided_by_their_sum():
    states = _states(3)
    assert checkpoint_weights(3, [1, 1, 2]) == (0.25, 0.25, 0.5)
    result = average_state_dicts(states, [1.0, 0.0, 3.0], accumulate=torch.float64)
    _assert_average(result, states, [0.25, 0.0, 0.75])


def test_bf16_checkpoints_are_averaged_in_float32_and_rounded_once():
    states = _states(8, dtype=torch.bfloat16, seed=1)
    result = average_state_dicts(states)  # float32 accumulation by default
    for k in SHAPES:
        exact = sum(sd[k].double() for sd in states) / 8
        assert result[k].dtype == torch.bfloat16
        # one rounding of the float32 sum: within half a bf16 ulp (plus float32 error)
        ulp = torch.finfo(torch.bfloat16).eps * exact.abs().clamp_min(2**-126)
        assert ((result[k].double() - exact).abs() <= 0.5 * ulp + 1e-6).all()
        assert (result[k] == exact.to(torch.bfloat16)).float().mean() > 0.95
        # a running bf16 sum (what averaging in the model's dtype does) is measurably worse
        running = torch.zeros_like(states[0][k])
        for sd in states:
            running += sd[k] / 8
        assert (running.double() - exact).abs().sum() > (result[k].double() - exact).abs().sum()
    f64 = average_state_dicts(states, accumulate=torch.float64)
    for k in SHAPES:
        exact = sum(sd[k].double() for sd in states) / 8
        assert torch.equal(f64[k], exact.to(torch.bfloat16))


# -- readers ------------------------------------------------------------------------------


def _check_files(paths, states, **kwargs):
    result = average(paths, accumulate=torch.float64, **kwargs)
    _assert_average(result.state_dict, states, [1 / len(states)] * len(states))
    return result


@pytest.mark.parametrize("wrap", ["flat", "model", "module", "lightning", "nested"])
def test_torch_files_with_the_state_dict_where_trainers_put_it(tmp_path, wrap):
    states = _states(3)
    paths = []
    for i, sd in enumerate(states):
        obj = {
            "flat": sd,
            "model": {"model": sd, "args": {"lr": 0.1}, "step": i},  # fairseq
            "module": {"module": sd, "global_steps": i},  # DeepSpeed
            "lightning": {
                "epoch": i,
                "global_step": 10 * i,
                "state_dict": sd,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
                "hyper_parameters": {"lr": 0.1},
            },
            "nested": {"model": {"module": sd}, "optimizer": {"state": {}}},
        }[wrap]
        paths.append(tmp_path / f"epoch={i}.{'ckpt' if wrap == 'lightning' else 'pt'}")
        torch.save(obj, paths[-1])
    _check_files(paths, states)


def test_key_names_the_state_dict(tmp_path):
    states, others = _states(2), _states(2, seed=5)
    paths = []
    for i, (sd, other) in enumerate(zip(states, others)):
        paths.append(tmp_path / f"{i}.pt")
        torch.save({"model": other, "ema": {"module": sd}}, paths[-1])
    _check_files(paths, states, key="ema/module")
    with pytest.raises(ValueError, match="has no entry 'emma'"):
        average(paths, key="emma")


def test_safetensors_files(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    states = _states(3)
    paths = [tmp_path / f"ckpt-{i}.safetensors" for i in range(3)]
    for p, sd in zip(paths, states):
        save_file(sd, str(p))
    _check_files(paths, states)


def test_hugging_face_folders_single_sharded_and_bin(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    states = _states(3)
    folders = []
    for i, sd in enumerate(states):
        folder = tmp_path / f"checkpoint-{(i + 1) * 500}"
        folder.mkdir()
        if i == 0:
            save_file(sd, str(folder / "model.safetensors"))
        elif i == 1:  # two shards and the index that maps each tensor to its shard
            names = sorted(sd)
            shards = {"model-00001-of-00002.safetensors": names[:2]}
            shards["model-00002-of-00002.safetensors"] = names[2:]
            for file, keys in shards.items():
                save_file({k: sd[k] for k in keys}, str(folder / file))
            index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        else:
            torch.save(sd, folder / "pytorch_model.bin")
        (folder / "config.json").write_text("{}")
        folders.append(folder)
    result = _check_files(tmp_path, states)  # found as checkpoint folders, by their number
    assert result.checkpoints == tuple(folders) and result.selection.order == "number"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_distributed_checkpoint_folders(tmp_path):
    import torch.distributed.checkpoint as dcp

    states = _states(3)
    paths = []
    for i, sd in enumerate(states):
        paths.append(tmp_path / f"step_{i}")
        if i == 1:  # the model alone, flat
            dcp.save({k: v.clone() for k, v in sd.items()}, checkpoint_id=paths[-1], no_dist=True)
        else:  # a training state: the model under "model", next to the optimizer and step
            state = {
                "model": {k: v.clone() for k, v in sd.items()},
                "optimizer": {"state": {"a.weight": {"exp_avg": torch.ones(4, 3)}}, "lr": 0.1},
                "step": i,
            }
            dcp.save(state, checkpoint_id=paths[-1], no_dist=True)
    _check_files(paths, states)
    assert average(tmp_path).checkpoints == tuple(paths)


def test_pre_zip_torch_files_are_loaded_whole_with_a_warning(tmp_path):
    states = _states(2)
    paths = [tmp_path / f"{i}.pt" for i in range(2)]
    for p, sd in zip(paths, states):
        torch.save(sd, p, _use_new_zipfile_serialization=False)
    with pytest.warns(UserWarning, match="pre-1.6 format"):
        _check_files(paths, states)


def test_output_files_by_extension(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    states = _states(2, dtype=torch.float32)
    paths = _save_all(states, tmp_path / "run")
    for out in ("avg.safetensors", "avg.pt"):
        result = average(paths, out=tmp_path / out)
        saved = (
            load_file(tmp_path / out) if out.endswith("safetensors") else torch.load(tmp_path / out)
        )
        assert saved.keys() == result.state_dict.keys()
        for k, v in saved.items():
            assert torch.equal(v, result.state_dict[k])
    with pytest.raises(FileExistsError, match="exists"):
        average(paths, out=tmp_path / "avg.pt")
    average(paths, out=tmp_path / "avg.pt", overwrite=True, weights=[0, 1])
    assert torch.equal(torch.load(tmp_path / "avg.pt")["a.weight"], states[1]["a.weight"])
    with pytest.raises(ValueError, match="end it with .safetensors or .pt"):
        average(paths, out=tmp_path / "avg.npz")
    assert not list(tmp_path.glob(".*.tmp"))


# -- which checkpoints ---------------------------------------------------------------------


def _touch(folder, names):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        torch.save({"w": torch.zeros(1)}, folder / name)
        os.utime(folder / name, ns=(10**9 * (100 - i), 10**9 * (100 - i)))  # mtime: reversed


def test_last_n_by_step_then_epoch_then_natural_sort_then_mtime(tmp_path):
    _touch(
        tmp_path / "a",
        ["epoch=10-step=2000.ckpt", "epoch=9-step=1800.ckpt", "epoch=2-step=400.ckpt", "last.ckpt"],
    )
    s = select_checkpoints(tmp_path / "a", last=2)
    assert [p.name for p in s.paths] == ["epoch=9-step=1800.ckpt", "epoch=10-step=2000.ckpt"]
    assert s.order == "step" and s.steps == (1800, 2000)
    assert [p.name for p in s.left_out] == ["last.ckpt"]  # a copy of the last: not counted twice
    _touch(tmp_path / "b", ["model_epoch10.pt", "model_epoch9.pt"])
    s = select_checkpoints(tmp_path / "b")
    assert [p.name for p in s.paths] == [
        "model_epoch9.pt",
        "model_epoch10.pt",
    ] and s.order == "epoch"
    _touch(tmp_path / "c", ["ckpt-10.pt", "ckpt-9.pt", "ckpt-100.pt"])
    s = select_checkpoints(tmp_path / "c")
    assert [p.name for p in s.paths] == ["ckpt-9.pt", "ckpt-10.pt", "ckpt-100.pt"]
    assert s.order == "number" and s.steps == (9, 10, 100)
    _touch(tmp_path / "d", ["first.pt", "second.pt", "third.pt"])  # mtimes decrease
    s = select_checkpoints(tmp_path / "d")
    assert [p.name for p in s.paths] == ["third.pt", "second.pt", "first.pt"]
    assert s.order == "mtime" and s.steps is None


def test_power_weights_read_the_steps_from_the_names(tmp_path):
    states = _states(3)
    paths = _save_all(states, tmp_path, steps=[200, 500, 1000])
    result = average(tmp_path, weights="power", gamma=2.0, accumulate=torch.float64)
    w = checkpoint_weights(3, "power", gamma=2.0, steps=[200, 500, 1000])
    assert result.weights == w and result.checkpoints == tuple(paths)
    _assert_average(result.state_dict, states, w)


# -- refusals ------------------------------------------------------------------------------


def test_folder_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*nope does not exist"):
        average(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="no checkpoints in .*empty"):
        average(tmp_path / "empty")
    _touch(tmp_path / "two", ["step=1.pt", "step=2.pt"])
    with pytest.raises(
        ValueError, match=r"last=5 but there are only 2 checkpoints \(step=1.pt, step=2.pt\)"
    ):
        average(tmp_path / "two", last=5)
    _touch(tmp_path / "dup", ["step=1.pt", "step=1.safetensors.pt"])
    with pytest.raises(ValueError, match="same step number 1"):
        average(tmp_path / "dup")
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        average([tmp_path / "two" / "step=1.pt", tmp_path / "missing.pt"])


def test_mismatched_checkpoints_are_refused_naming_the_tensor_and_files(tmp_path):
    states = _states(2)
    bad = {k: v.clone() for k, v in states[1].items()}
    bad["a.weight"] = torch.zeros(3, 4, dtype=torch.float64)
    p0, p1 = _save_all([states[0], bad], tmp_path)
    with pytest.raises(
        ValueError, match=rf"'a.weight' has shape \[4, 3\] in {p0} but \[3, 4\] in {p1}"
    ):
        average([p0, p1])
    bad["a.weight"] = states[1]["a.weight"].float()
    torch.save(bad, p1)
    with pytest.raises(ValueError, match=rf"'a.weight' is float64 in {p0} but float32 in {p1}"):
        average([p0, p1])
    del bad["a.weight"]
    torch.save(bad, p1)
    with pytest.raises(ValueError, match=rf"different tensors; only in {p0}: 'a.weight'"):
        average([p0, p1])
    torch.save({**states[1], "note": "hello"}, p1)
    with pytest.raises(ValueError, match="not tensors \\('note'\\); name the state dict"):
        average([p0, p1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"weights": "emma"}, ValueError, "weights must be one of"),
        ({"weights": "ema"}, ValueError, "needs decay="),
        ({"weights": "ema", "decay": 1.0}, ValueError, r"decay must be a number in \[0.0, 1.0\)"),
        ({"weights": "uniform", "decay": 0.9}, ValueError, "decay applies to weights='ema'"),
        ({"weights": "power"}, ValueError, "sigma_rel= or gamma=, exactly one"),
        (
            {"weights": "power", "gamma": 1.0},
            ValueError,
            "power weights need each checkpoint's step",
        ),
        ({"weights": "power", "gamma": 1.0, "steps": [3, 2, 5]}, ValueError, "steps must increase"),
        ({"weights": [1, 2]}, ValueError, "2 weights given for 3 checkpoints"),
        ({"weights": [1, -1, 1]}, ValueError, "weights must be finite, >= 0"),
        ({"weights": [0, 0, 0]}, ValueError, "not all 0"),
        ({"weights": ["a", 1, 1]}, TypeError, "or a sequence of numbers"),
        ({"last": 0}, ValueError, "last must be a positive int"),
        ({"accumulate": torch.float16}, ValueError, "accumulate must be one of"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    _touch(tmp_path, ["a.pt", "b.pt", "c.pt"])  # no numbers: no steps
    with pytest.raises(error, match=message):
        average(tmp_path, **kwargs)


def test_safetensors_is_optional(tmp_path, monkeypatch):
    paths = _save_all(_states(2), tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs the safetensors package \(pip install"):
        average([tmp_path / "x.safetensors"] * 2)
    with pytest.raises(ImportError, match="needs the safetensors package"):
        average(paths, out=tmp_path / "avg.safetensors")
    assert not (tmp_path / "avg.safetensors").exists()
    average(paths, out=tmp_path / "avg.pt")  # torch files need nothing else


def test_unreadable_file(tmp_path):
    _touch(tmp_path, ["step=1.pt"])
    (tmp_path / "step=2.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointReadError, match="cannot read .*step=2.pt"):
        average(tmp_path)


# -- memory --------------------------------------------------------------------------------

_MEMORY = """
import sys, torch
from switchema.checkpoints import average
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
base = hwm()
average(sys.argv[1])
print(hwm() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_peak_memory_does_not_grow_with_the_number_of_checkpoints(tmp_path, suffix):
    mib = 1 << 20
    shapes = [(1024, 2048), (512, 2048), (2048,)]  # 8 MiB + 4 MiB + 8 KiB of float32
    for i in range(8):
        sd = {f"t{j}": torch.full(s, float(i)) for j, s in enumerate(shapes)}
        if suffix == ".pt":
            torch.save(sd, tmp_path / f"step={i}.pt")
        else:
            safetensors_torch = pytest.importorskip("safetensors.torch")
            safetensors_torch.save_file(sd, str(tmp_path / f"step={i}.safetensors"))
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    grew = int(done.stdout.split()[-1])
    model = 12 * mib + 8 * 1024
    # output + one accumulator (the output's own tensor: float32) + a 16 MiB piece at most;
    # without dropping the mapped pages it would be the 8 files, 96 MiB
    assert grew < model + 8 * mib + 16 * mib, grew / mib


# -- the command line ----------------------------------------------------------------------


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "switchema", "average", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_end_to_end(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    states = _states(4, dtype=torch.float32)
    paths = _save_all(states, tmp_path / "run", name="epoch={}.pt", steps=[1, 2, 3, 4])
    torch.save(states[-1], tmp_path / "run" / "last.pt")
    out = tmp_path / "avg.safetensors"
    done = _cli(
        "--dir", tmp_path / "run", "--last", 3, "--weights", "ema", "--decay", 0.5, "--out", out
    )
    assert done.returncode == 0, done.stderr
    saved = load_file(out)
    w = (0.25, 0.25, 0.5)
    for k, v in _weighted(states[1:], w).items():
        torch.testing.assert_close(saved[k].double(), v, rtol=0, atol=1e-6)
    assert torch.equal(saved["bn.num_batches_tracked"], states[-1]["bn.num_batches_tracked"])
    for p, wi in zip(paths[1:], w):
        assert f"{wi:.6f}  {p}" in done.stdout
    assert "ordered by the epoch number" in done.stdout
    assert f"left out (no number in its name): {tmp_path / 'run' / 'last.pt'}" in done.stderr
    again = _cli(*paths, "--out", out)  # exists: refused
    assert again.returncode == 2
    assert (
        again.stderr.strip()
        == f"switchema average: error: {out} exists; choose another name or allow overwriting it (--force overwrites it)"
    )
    assert _cli(*paths, "--out", out, "--force", "--float64").returncode == 0


def _main(capsys, *args):
    code = main(["average", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys):
    states = _states(3)
    paths = _save_all(states, tmp_path / "run")
    out = tmp_path / "avg.pt"
    cases = [
        ((tmp_path / "missing.pt", "--out", out), "does not exist"),
        (("--dir", tmp_path / "nothing", "--out", out), "folder"),
        (("--dir", tmp_path / "run", "--last", 7, "--out", out), "last=7 but there are only 3"),
        (
            (*paths, "--weights", "1,x", "--out", out),
            "--weights must be uniform, ema, power or numbers",
        ),
        ((*paths, "--weights", "1,2", "--out", out), "2 weights given for 3 checkpoints"),
        ((*paths, "--weights", "ema", "--out", out), "needs decay="),
        (
            (*paths, "--weights", "power", "--gamma", 1, "--out", out),
            None,
        ),  # steps from names: fine
        (("--out", out), "give the checkpoints (CKPT ...) or --dir FOLDER"),
        ((*paths, "--dir", tmp_path / "run", "--out", out), "one of the two"),
        ((*paths, "--out", tmp_path / "avg.txt"), "end it with .safetensors or .pt"),
    ]
    (tmp_path / "nothing").mkdir()
    for args, message in cases:
        code, err = _main(capsys, *args)
        if message is None:
            assert code == 0, err
            out.unlink()
            continue
        assert code == 2, (args, err)
        assert err.startswith("switchema average: error: ") and message in err, err
        assert len(err.splitlines()) == 1
    bad = {k: v.clone() for k, v in states[2].items()}
    bad["b.weight"] = torch.zeros(4, 2, dtype=torch.float64)
    torch.save(bad, paths[2])
    code, err = _main(capsys, *paths, "--out", out)
    assert code == 2 and "'b.weight' has shape [2, 4] in" in err and str(paths[2]) in err
    assert not out.exists()


def test_cli_unreadable_checkpoint_exits_3(tmp_path):
    _touch(tmp_path, ["step=1.pt"])
    (tmp_path / "step=2.pt").write_bytes(b"garbage")
    done = _cli("--dir", tmp_path, "--out", tmp_path / "avg.pt")
    assert done.returncode == 3
    assert done.stderr.startswith("switchema average: error: cannot read ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_help_lists_units_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["average", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for part in (
        "--last N",
        "default: all",
        "per checkpoint interval",
        "--float64",
        "--force",
        "exit status",
    ):
        assert part in text, part
