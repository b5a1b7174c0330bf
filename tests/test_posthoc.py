"""Post-hoc EMA: snapshots and synthesis against directly tracked profiles and closed forms."""

import warnings

import pytest
import torch
from torch import nn

from switchema import PowerEMA
from switchema import _profiles as P
from switchema.posthoc import FolderStore, MemoryStore, synthesize


class Walker(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def walk(steps, seed=0):
    """A drifting random walk: the iterates of a noisy optimiser approaching a moving target."""
    g = torch.Generator().manual_seed(seed)
    drift = torch.randn(64, generator=g)
    x = torch.zeros(64)
    for t in range(1, steps + 1):
        x = x + 0.02 * drift / t**0.3 + 0.05 * torch.randn(64, generator=g)
        yield x


def tracked(steps=1000, every=10, direct=(0.07,), store=None, snap_dtype=None):
    model = Walker()
    ema = PowerEMA(model, sigma_rel=(0.05, 0.10))
    refs = [PowerEMA(model, sigma_rel=s) for s in direct]
    store = MemoryStore() if store is None else store
    ema.snapshot_every(store, every, dtype=snap_dtype)
    for x in walk(steps):
        model.w.data.copy_(x)
        ema.update()
        for r in refs:
            r.update()
    return ema, refs, store


def rel_error(a, b, scale):
    return float((a - b).norm() / scale)


NARROW, INSIDE, WIDE = (0.01, 0.02, 0.03), 0.07, (0.15, 0.2, 0.25)


@pytest.fixture(scope="module")
def run():
    return tracked(direct=(*NARROW, INSIDE, *WIDE))


def errors(run, targets):
    ema, refs, store = run
    scale = (ema.averaged_state_dict(0)["w"] - ema.averaged_state_dict(1)["w"]).norm()
    ref = dict(zip((*NARROW, INSIDE, *WIDE), refs))
    out = {}
    for s in targets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = synthesize(store, sigma_rel=s)
        err = rel_error(result.state_dict["w"], ref[s].averaged_state_dict()["w"], scale)
        out[s] = (result, err, caught)
    return out


def test_synthesis_reproduces_a_directly_tracked_profile(run):
    result, err, caught = errors(run, [INSIDE])[INSIDE]
    # 100 snapshots of two profiles: the profile fit is nearly exact, and so is the average
    assert result.fit.residual < 1e-3 and not result.fit.outside and not caught
    assert err < 1e-4, err  # of the distance between the two tracked averages
    assert result.time == 1000.0 and result.sigma_rel == pytest.approx(0.07)


def test_synthesis_degrades_as_documented_when_extrapolating(run):
    """Further outside the tracked widths (0.05-0.10), the fit and the average get worse, with a
    warning; the numbers the synthesize docstring quotes come from this setting."""
    out = errors(run, [*NARROW, INSIDE, *WIDE])
    for side in (NARROW[::-1], WIDE):  # moving away from the tracked range
        residuals = [out[INSIDE][0].fit.residual] + [out[s][0].fit.residual for s in side]
        errs = [out[INSIDE][1]] + [out[s][1] for s in side]
        assert residuals == sorted(residuals) and errs == sorted(errs), (residuals, errs)
        for s in side:
            result, _, caught = out[s]
            assert result.fit.outside
            assert any("extrapolates beyond the tracked profiles" in str(w.message) for w in caught)
    assert out[0.01][0].fit.residual > 100 * out[INSIDE][0].fit.residual
    assert out[0.01][1] > 100 * out[INSIDE][1]


def test_residual_is_the_profile_fit_error_computed_numerically():
    import numpy as np

    sources = [(6.94, 60.0), (16.97, 60.0), (6.94, 100.0), (16.97, 100.0)]
    fit = P.solve_coefficients(sources, (10.0, 100.0))
    tau = np.linspace(0, 100, 400_001)[1:]

    def p(g, t):
        return np.where(tau <= t, (g + 1) * tau**g / t ** (g + 1), 0.0)

    mix = sum(x * p(g, t) for x, (g, t) in zip(fit.coefficients, sources))
    target = p(10.0, 100.0)
    numeric = np.sqrt(np.trapezoid((mix - target) ** 2, tau) / np.trapezoid(target**2, tau))
    assert fit.residual == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_folder_store_equals_memory_store_and_chunks_do_not_matter(tmp_path):
    folder = FolderStore(tmp_path / "snaps")
    ema, _, _ = tracked(steps=200, every=20, direct=(), store=folder)
    mem = MemoryStore()
    ema2, _, _ = tracked(steps=200, every=20, direct=(), store=mem)
    assert len(folder) == len(mem) == 10
    a = synthesize(folder, sigma_rel=0.08)
    b = synthesize(mem, sigma_rel=0.08, chunk=7)
    assert torch.equal(a.state_dict["w"], b.state_dict["w"])
    # an interrupted snapshot (data without its .json) is ignored
    (tmp_path / "snaps" / "snapshot-0000000999.bin").write_bytes(b"\x00" * 12)
    assert len(folder) == 10
    both = synthesize(folder, sigma_rel=[0.08, 0.06])
    assert torch.equal(both[0].state_dict["w"], a.state_dict["w"])
    assert set(a.state_dict) == {"w"}  # averaged tensors only; the buffer is the model's


def test_smaller_snapshots_cost_half_and_stay_close(tmp_path):
    full, half = FolderStore(tmp_path / "f32"), FolderStore(tmp_path / "bf16")
    tracked(steps=300, every=30, direct=(), store=full)
    tracked(steps=300, every=30, direct=(), store=half, snap_dtype=torch.bfloat16)
    size = {s: sum(p.stat().st_size for p in s.path.glob("*.bin")) for s in (full, half)}
    assert size[half] * 2 == size[full] == 10 * 2 * 64 * 4
    a, b = synthesize(full, sigma_rel=0.07), synthesize(half, sigma_rel=0.07)
    assert float((a.state_dict["w"] - b.state_dict["w"]).abs().max()) < 0.05


def test_synthesis_loads_into_a_model_and_needs_snapshots(tmp_path):
    ema, _, store = tracked(steps=100, every=10, direct=())
    model = Walker()
    result = synthesize(store, sigma_rel=0.09, model=model)
    assert torch.equal(model.w.detach(), result.state_dict["w"])
    with pytest.raises(ValueError, match="no snapshots"):
        synthesize(FolderStore(tmp_path / "empty"), sigma_rel=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synthesize(store, sigma_rel=0.09)  # inside the tracked widths: no warning


def test_a_second_run_into_the_same_folder_fails_loudly(tmp_path):
    # The newcomer's scenario: a 1000-step run, then a 500-step run into the same folder.
    # Before, the second overwrote steps 50..500 and left the first's 550..1000, and synthesize
    # returned the first run's average at time 1000 without a word.
    path = tmp_path / "snapshots"
    first = FolderStore(path)
    tracked(steps=1000, every=50, direct=(), store=first)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(
        FileExistsError, match=r"20 snapshot\(s\), steps 50 to 1000.*overwrite=True"
    ):
        tracked(steps=500, every=50, direct=(), store=FolderStore(path))
    # refused before a single snapshot: the folder is exactly as the first run left it
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    # a plain path is a new store too (PowerEMA.snapshot_every(path, ...))
    with pytest.raises(FileExistsError, match=f"run {first.run_id!r}"):
        PowerEMA(Walker(), sigma_rel=(0.05, 0.10)).snapshot_every(path, every=50)


def test_overwrite_replaces_and_run_id_continues(tmp_path):
    path = tmp_path / "snapshots"
    tracked(steps=1000, every=50, direct=(), store=FolderStore(path))
    second = FolderStore(path, overwrite=True)
    ema, _, _ = tracked(steps=500, every=50, direct=(), store=second)
    metas = second.metas()
    assert [m["step"] for m in metas] == list(range(50, 501, 50))  # the first run's are gone
    assert synthesize(path, sigma_rel=0.07).time == 500.0
    # the same run id continues the run (e.g. after a restart): its snapshots are kept
    again = FolderStore(path, run_id=second.run_id)
    again.claim()
    assert len(again) == 10 and again.owner() == second.run_id
    # an old folder with snapshots but no recorded run id is refused as well
    (path / "run.json").unlink()
    with pytest.raises(FileExistsError, match="recorded no id"):
        FolderStore(path).claim()
    with pytest.raises(TypeError, match="run_id"):
        FolderStore(path, run_id="")
