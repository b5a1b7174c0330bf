"""What makes a study cost its arithmetic, checked to change no number: the data cache (key,
concurrent writers, damaged files), evaluations reused for bit-identical states, ``--jobs auto``
and the per-phase timing record."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from switchema.cli import main
from switchema.lab import train as train_module
from switchema.lab.config import StudyConfig
from switchema.lab.errors import UsageError
from switchema.lab.jobs import build_study_data
from switchema.lab.options import AUTO_JOBS_ENV, RunOptions
from switchema.lab.resolve import resolve
from switchema.lab.tasks import TaskData, cache
from switchema.lab.tasks.data import mnist1d_data
from switchema.lab.train import same_state, train_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


def _counting_builder(calls: list[int], version: int = 1):
    @cache.cached_data(version=version, packages=("numpy",))
    def build(seed: int, *, n: int = 4, scale: float = 1.0) -> TaskData:
        calls.append(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, generator=g) * scale
        return TaskData(x, x.sum(1), x, x.sum(1), "regression", None, meta={"n": n})

    return build


def _files(folder):
    return sorted(p.name for p in folder.glob("*.pt"))


# -- the data cache ----------------------------------------------------------------------


def test_cached_data_is_the_generated_data_bit_for_bit(cache_dir):
    calls: list[int] = []
    build = _counting_builder(calls)
    first, again = build(3), build(3)
    assert calls == [3] and len(_files(cache_dir)) == 1  # generated once, then read
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert again.meta == {"n": 4} and again.kind == "regression"


def test_real_mnist1d_from_the_cache_equals_a_fresh_generation(cache_dir, monkeypatch):
    cached_first = mnist1d_data(5, n_total=100)
    cached = mnist1d_data(5, n_total=100)
    monkeypatch.setenv(cache.CACHE_ENV, "none")
    fresh = mnist1d_data(5, n_total=100)
    assert len(_files(cache_dir)) == 1
    for d in (cached_first, cached):
        assert torch.equal(d.x_train, fresh.x_train) and torch.equal(d.y_test, fresh.y_test)


def test_the_key_changes_with_every_setting_and_version(cache_dir, monkeypatch):
    calls: list[int] = []
    build = _counting_builder(calls)
    build(0)
    build(0, n=4)  # the default given explicitly: the same entry
    build(0, scale=1.0)
    assert len(_files(cache_dir)) == 1
    build(1)  # the seed
    build(0, n=5)  # an option
    build(0, scale=2.0)  # another option
    build(0, scale=1)  # the same number of another type is another setting
    _counting_builder(calls, version=2)(0)  # the builder's version
    assert len(_files(cache_dir)) == 6
    monkeypatch.setattr(cache, "_version", lambda package: "9.9")  # a package's version
    build(0)
    assert len(_files(cache_dir)) == 7 and len(calls) == 7


def test_concurrent_workers_generate_once_and_all_read_the_same_data(cache_dir):
    calls: list[int] = []
    build = _counting_builder(calls)
    barrier = threading.Barrier(4)
    results: list[TaskData] = []

    def worker():
        barrier.wait()
        results.append(build(7, n=50))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the lock file serialises the misses: one generation, the others read what it wrote
    assert calls == [7] and len(results) == 4
    assert all(torch.equal(r.x_train, results[0].x_train) for r in results)
    assert not list(cache_dir.glob("*.tmp"))  # every temporary file renamed into place


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign"])
def test_a_damaged_or_foreign_entry_is_ignored_and_written_again(cache_dir, damage):
    calls: list[int] = []
    build = _counting_builder(calls)
    good = build(0)
    (path,) = cache_dir.glob("*.pt")
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # another entry's file under this name: its stored key does not match
        build(1)
        other = next(p for p in cache_dir.glob("*.pt") if p != path)
        path.write_bytes(other.read_bytes())
    again = build(0)
    assert calls.count(0) == 2 and torch.equal(again.x_train, good.x_train)
    assert build(0) is not None and calls.count(0) == 2  # the rewritten entry is used


def test_cache_location_env_xdg_home_and_off(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "switchema"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "switchema"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    with cache.using_cache_dir("none"):
        assert cache.cache_dir() is None
        calls: list[int] = []
        _counting_builder(calls)(0)
        _counting_builder(calls)(0)
        assert calls == [0, 0]  # no cache: generated every time
    assert cache.cache_dir() == tmp_path / "mine"  # put back


def test_cli_cache_dir_flag_puts_the_data_there(tmp_path):
    folder = tmp_path / "flagcache"
    argv = ["compare", "--task", "mnist1d-mlp", "--data-opt", "n_total=200", "--epochs", "1"]
    argv += ["--seeds", "0", "--methods", "baseline", "--no-progress", "--jobs", "1"]
    argv += ["--cache-dir", str(folder), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert len(_files(folder)) == 1


# -- evaluations reused for identical states --------------------------------------------


def _rows_with_and_without_reuse(monkeypatch, cfg: StudyConfig, methods: list[str]):
    study = resolve(cfg)
    data, y, flipped = build_study_data(study)
    evaluated = []
    real = train_module.evaluate

    def counting(model, *a, **kw):
        evaluated.append(1)
        return real(model, *a, **kw)

    monkeypatch.setattr(train_module, "evaluate", counting)
    reused = train_run(study, data, methods, 0, y_train=y, flipped=flipped)
    n_reused = len(evaluated)
    monkeypatch.setattr(train_module._Seen, "find", lambda self, model: None)
    evaluated.clear()
    every = train_run(study, data, methods, 0, y_train=y, flipped=flipped)
    return reused, every, n_reused, len(evaluated)


def _same_results(a, b) -> None:
    strip = [{k: v for k, v in r.items() if k != "train_time_s"} for r in a[0]]
    assert strip == [{k: v for k, v in r.items() if k != "train_time_s"} for r in b[0]]
    assert a[1].keys() == b[1].keys()
    assert all((a[1][k] == b[1][k]).all() for k in a[1])
    assert all(same_state(a[2][k], b[2][k]) for k in a[2])


@pytest.mark.parametrize(
    ("settings", "methods", "saved"),
    [
        # SEMA switches every epoch: the average is the model just switched, every epoch
        ({"methods": ("sema",)}, ["sema"], 4),
        # SWA copies the model until swa_start (epoch 3 of 4), and its first average, of one
        # model, is the model too (4 saved); an EMA that starts late copies it until then (2)
        ({"methods": ("baseline", "ema", "swa"), "ema_start": "2e"}, ["baseline", "ema", "swa"], 6),
    ],
)
def test_reused_evaluations_give_the_rows_of_evaluating_every_model(
    monkeypatch, settings, methods, saved
):
    cfg = StudyConfig(task="circles", epochs=4, seeds=(0,), **settings)
    reused, every, n_reused, n_every = _rows_with_and_without_reuse(monkeypatch, cfg, methods)
    _same_results(reused, every)
    assert n_every - n_reused == saved  # and the evaluations were in fact saved


def test_batchnorm_averages_with_recomputed_statistics_are_still_evaluated(monkeypatch):
    # a late-starting EMA copies the weights, but with --bn-recompute its BatchNorm statistics
    # are its own: never the online model's, so nothing is reused; without it, they are
    base = {"task": "mnist1d-cnnbn", "epochs": 2, "seeds": (0,), "methods": ("baseline", "ema")}
    base |= {"data_options": {"n_total": 300}, "ema_start": "5e", "batch_size": 50}
    for recompute, saved in ((True, 0), (False, 2)):
        cfg = StudyConfig(**base, bn_recompute=recompute)
        reused, every, n_reused, n_every = _rows_with_and_without_reuse(
            monkeypatch, cfg, ["baseline", "ema"]
        )
        _same_results(reused, every)
        assert n_every - n_reused == saved
        monkeypatch.undo()


def test_same_state_is_bit_for_bit():
    a = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3)}
    assert same_state(a, {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3)})
    assert not same_state(a, {"w": torch.tensor([-0.0, 1.0]), "n": torch.tensor(3)})  # -0 != 0
    assert not same_state(a, {"w": torch.tensor([0.0, 1.0], dtype=torch.float64), "n": a["n"]})
    assert not same_state(a, {"w": a["w"]})
    nan = {"w": torch.tensor([float("nan"), 1.0]), "n": a["n"]}
    assert not same_state(nan, nan)  # NaN is never "the same": the model is evaluated


# -- --jobs auto ---------------------------------------------------------------------------


def test_jobs_auto_uses_the_available_cores_at_most_one_per_job(monkeypatch):
    monkeypatch.delenv(AUTO_JOBS_ENV, raising=False)
    monkeypatch.setattr("switchema.lab.options.available_cores", lambda: 8)
    auto = RunOptions(workers="auto")
    assert auto.workers_for(jobs=10) == 8
    assert auto.workers_for(jobs=3) == 3
    assert auto.workers_for(jobs=10, threads=2) == 4  # --threads 2: four jobs of two
    assert auto.workers_for(jobs=10, threads=16) == 1
    assert RunOptions(workers=3).workers_for(jobs=10) == 3  # a number is taken as given
    monkeypatch.setenv(AUTO_JOBS_ENV, "2")
    assert auto.workers_for(jobs=10) == 2
    monkeypatch.setenv(AUTO_JOBS_ENV, "zero")
    with pytest.raises(UsageError, match=f"{AUTO_JOBS_ENV} must be a positive int, got 'zero'"):
        RunOptions(workers="auto")
    with pytest.raises(UsageError, match="positive int or 'auto', got 'all'"):
        RunOptions(workers="all")


def test_cli_jobs_defaults_to_auto_and_prints_its_choice(tmp_path, capsys):
    argv = ["compare", "--task", "circles", "--epochs", "1", "--seeds", "0", "1"]
    argv += ["--methods", "baseline", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 0  # SWITCHEMA_AUTO_JOBS=1 in the tests: one job at a time
    assert "--jobs auto: 1 job(s) at once (2 to run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--jobs", "0"])
    assert "must be a positive int or 'auto', got '0'" in capsys.readouterr().err


# -- what a run cost, by phase -------------------------------------------------------------


def test_every_job_and_cell_records_its_wall_time_by_phase(tmp_path):
    out = tmp_path / "run"
    argv = ["compare", "--task", "circles", "--epochs", "2", "--seeds", "0", "--methods"]
    argv += ["baseline", "sema", "--no-progress", "--jobs", "1", "--out", str(out)]
    assert main(argv) == 0
    statuses = [json.loads(p.read_text()) for p in sorted(out.glob("jobs/*/status.json"))]
    assert len(statuses) == 2
    for st in statuses:
        phases = st["phases_s"]
        assert set(phases) == {"data", "setup", "train", "evaluate", "checkpoint", "other"}
        assert all(v >= 0 for v in phases.values())
        # the phases and the rest add up to the job's wall time (to their rounding)
        assert sum(phases.values()) == pytest.approx(st["wall_s"], abs=1e-3)
    timing = json.loads((out / "timing.json").read_text())
    for name in ("train", "evaluate", "checkpoint"):
        total = sum(st["phases_s"][name] for st in statuses)
        assert timing["phases_s"][name] == pytest.approx(total, abs=2e-3)
    assert timing["wall_s"] == pytest.approx(sum(st["wall_s"] for st in statuses))
    assert timing["report_s"] > 0
