"""The noisy quadratic model: closed forms against an exact moment recursion and against
Monte-Carlo simulation at fixed seeds, the ordering grid, input checks and ``switchema nqm``."""

import json

import numpy as np
import pytest

from switchema.analysis import nqm
from switchema.cli import main


def moment_recursion(a, b, k, s2, steps, m0):
    """Exact means and variances by propagating the 2x2 mean/covariance of (x, e) step by step:
    a reference that shares no formula with the closed forms."""
    r = 1 - a
    A = np.array([[r, 0.0], [(1 - b) * r, b]])  # (x, e) <- A (x, e) + B c
    B = np.array([a, (1 - b) * a])
    S = np.array([[0.0, 1.0], [0.0, 1.0]])  # the switch: x <- e
    mu = [np.array([m0, m0], float), np.array([m0, m0], float)]  # plain run, SEMA run
    P = [np.zeros((2, 2)), np.zeros((2, 2))]
    out = {m: ([], []) for m in nqm.METHODS}

    def record():
        for m, run, i in (("sgd", 0, 0), ("ema", 0, 1), ("sema", 1, 1), ("sema_online", 1, 0)):
            out[m][0].append(mu[run][i])
            out[m][1].append(P[run][i, i])

    record()
    for t in range(1, steps + 1):
        for run in (0, 1):
            mu[run] = A @ mu[run]
            P[run] = A @ P[run] @ A.T + s2 * np.outer(B, B)
        if t % k == 0:
            mu[1], P[1] = S @ mu[1], S @ P[1] @ S.T
        record()
    return {m: (np.array(x), np.array(v)) for m, (x, v) in out.items()}


# (eta*h, b, k): r > 0, r = 0, r < 0 with the ordering failing, b == r, b == 0, b == -r
CASES = [(0.5, 0.9, 10), (1.0, 0.7, 3), (1.5, 0.9, 4), (0.3, 0.7, 5), (1.2, 0.0, 2), (1.9, 0.9, 3)]


@pytest.mark.parametrize("a,b,k", CASES)
def test_closed_forms_match_exact_moment_recursion(a, b, k):
    steps, s2, m0 = 120, 0.7, 2.0
    ref = moment_recursion(a, b, k, s2, steps, m0)
    means = nqm.mean_trajectories(a, 1.0, b, k, steps, m0)
    variances = nqm.variance_trajectories(a, 1.0, s2, b, k, steps)
    for m in nqm.METHODS:
        np.testing.assert_allclose(means[m], ref[m][0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(variances[m], ref[m][1], rtol=1e-10, atol=1e-13)
    # the stationary limits: run the recursion to convergence (from the stationary mean 0)
    long = moment_recursion(a, b, k, s2, 3000 - 3000 % k, 0.0)
    np.testing.assert_allclose(nqm.v_sgd(a, 1.0, s2), long["sgd"][1][-1], rtol=1e-9)
    np.testing.assert_allclose(nqm.v_ema(a, 1.0, s2, b), long["ema"][1][-1], rtol=1e-9)
    np.testing.assert_allclose(nqm.v_sema(a, 1.0, s2, b, k), long["sema"][1][-1], rtol=1e-9)
    np.testing.assert_allclose(
        nqm.v_sema_step(a, 1.0, s2, b, k), long["sema"][1][-k:].mean(), rtol=1e-9
    )


def test_closed_forms_depend_on_eta_h_and_are_stable_near_b_equal_r():
    # eta and h enter only through eta*h
    assert np.isclose(nqm.v_sema(0.25, 2.0, 1.0, 0.9, 7), nqm.v_sema(0.5, 1.0, 1.0, 0.9, 7))
    # W(k) as b -> r: no cancellation, continuous into the b == r branch
    b = 0.6
    exact = sum((n * b ** (n - 1)) ** 2 for n in range(1, 41))
    assert np.isclose(nqm.w_sum(0.4, 1.0, b, 40), exact, rtol=1e-13)
    for eps in (1e-4, 1e-8, 1e-12):
        direct = sum(
            sum((b + eps) ** j * b ** (n - 1 - j) for j in range(n)) ** 2 for n in range(1, 41)
        )
        assert np.isclose(nqm.w_sum(0.4, 1.0, b + eps, 40), direct, rtol=1e-10)
    # vectorised: one call over a grid equals the scalar calls
    grid = nqm.v_sema(np.array([0.5, 1.5])[:, None], 1.0, 1.0, 0.9, np.array([[1, 10]]))
    assert grid.shape == (2, 2)
    assert np.isclose(grid[1, 1], nqm.v_sema(1.5, 1.0, 1.0, 0.9, 10))


@pytest.mark.parametrize(
    "a,b,k,steps",
    [
        (0.5, 0.9, 10, 800),  # the ordering holds
        (1.5, 0.9, 1, 800),  # fails: V_SEMA > V_EMA
        (1.5, 0.9, 5, 800),  # fails
    ],
)
def test_simulated_stationary_variances_match_closed_forms(a, b, k, steps):
    sim = nqm.simulate(a, 1.0, 2.0, b, k, steps=steps, chains=300, coords=4, seed=1)
    est = nqm.stationary_variances(sim)
    for m, d in est.items():
        assert abs(d["z"]) < 4, (m, d)
        assert d["se"] < 0.02 * d["closed_form"], (m, d)  # the check has power
    holds = nqm.v_sema(a, 1.0, 2.0, b, k) <= nqm.v_ema(a, 1.0, 2.0, b)
    gap = est["sema"]["estimate"] - est["ema"]["estimate"]
    noise = np.hypot(est["sema"]["se"], est["ema"]["se"])
    if holds:
        assert gap < 0
    else:  # the simulation itself shows SEMA's variance above EMA's at eta*h = 1.5
        assert gap > 4 * noise


@pytest.mark.parametrize("a,b,k", [(0.5, 0.9, 10), (1.5, 0.9, 5)])
def test_simulated_mean_and_variance_trajectories_match_closed_forms(a, b, k):
    sim = nqm.simulate(a, 1.0, 1.0, b, k, steps=300, chains=400, coords=4, seed=2, m0=3.0)
    traj = nqm.compare_trajectories(sim)
    checkpoints = [1, 2, k, 2 * k, 5 * k, 10 * k, 20 * k]
    for m, d in traj.items():
        assert np.all(np.abs(d["mean_z"][checkpoints]) < 4), (m, d["mean_z"][checkpoints])
        assert np.all(np.abs(d["var_z"][checkpoints]) < 4), (m, d["var_z"][checkpoints])
        assert np.abs(d["mean_z"]).max() < 5 and np.abs(d["var_z"]).max() < 5, m
        assert 0.6 < np.mean(d["mean_z"][1:] ** 2) < 1.6, m  # calibrated, not just bounded
    # SEMA's bias right after the n-th switch is rho(k)**n m0
    n = np.arange(1, 30 // k + 3)
    np.testing.assert_allclose(
        traj["sema"]["mean_closed"][n * k], 3.0 * nqm.rho(a, 1.0, b, k) ** n, rtol=1e-12
    )
    assert sim.switch_steps[0] == k and np.all(np.diff(sim.switch_steps) == k)


def test_bias_of_sema_decays_slower_than_ema_for_small_steps_and_faster_for_large():
    for a, slower in ((0.5, True), (1.5, False)):
        means = nqm.mean_trajectories(a, 1.0, 0.9, 10, 200)
        t = np.arange(20, 201, 10)  # right after switches 2..20
        assert np.all((np.abs(means["sema"][t]) > np.abs(means["ema"][t])) == slower)
        # both far above SGD's r**t when b > |r|
        assert np.all(np.abs(means["ema"][t]) > np.abs(means["sgd"][t]))


def test_simulation_is_deterministic_given_the_seed():
    kw = dict(steps=60, chains=50, coords=3, burn_in=20)
    one = nqm.simulate(0.5, [1.0, 0.5, 1.5], 1.0, 0.8, 4, seed=7, **kw)
    two = nqm.simulate(0.5, [1.0, 0.5, 1.5], 1.0, 0.8, 4, seed=7, **kw)
    other = nqm.simulate(0.5, [1.0, 0.5, 1.5], 1.0, 0.8, 4, seed=8, **kw)
    for m in nqm.METHODS:
        np.testing.assert_array_equal(one.mean[m], two.mean[m])
        np.testing.assert_array_equal(one.var[m], two.var[m])
        assert not np.array_equal(one.var[m][1:], other.var[m][1:])
    # per-coordinate curvature: not pooled, one estimate per coordinate
    assert not one.homogeneous
    est = nqm.stationary_variances(one)
    assert est["sgd"]["estimate"].shape == (3,)
    np.testing.assert_allclose(est["sgd"]["closed_form"], nqm.v_sgd(0.5, [1.0, 0.5, 1.5], 1.0))
    with pytest.raises(ValueError, match="pool=True"):
        nqm.stationary_variances(one, pool=True)
    assert one.burn_in == 20 and one.samples_per_unit["sema"] == 10


def test_ordering_grid_holds_up_to_eta_h_one_and_fails_at_one_and_a_half():
    g = nqm.ordering_grid([0.1, 0.5, 1.0, 1.5, 1.9], [0.0, 0.9, 0.99, 0.999], [1, 10, 100])
    assert g["holds"].shape == (5, 4, 3)
    assert g["holds_all"].tolist() == [True, True, True, False, False]
    assert g["ema_le_sgd"].all()  # the EMA never has more variance than SGD
    fails = [(f["eta_h"], f["decay"], f["k"]) for f in g["failures"]]
    assert (1.5, 0.9, 1) in fails and (1.5, 0.99, 10) in fails
    assert all(f["broken"] == ["V_SEMA <= V_EMA"] for f in g["failures"])
    assert all(f["eta_h"] > 1 and f["decay"] > f["eta_h"] - 1 + 1e-9 for f in g["failures"])
    # ties hold: b = 0, eta*h = 1, and b = eta*h - 1 (1.9 with 0.9)
    assert g["holds"][:, 0].all() and g["holds"][2].all() and g["holds"][4, 1].all()
    np.testing.assert_allclose(g["v_sema"][2], np.repeat(g["v_ema"][2][:, None], 3, 1), rtol=1e-12)
    json.dumps({k: v for k, v in g.items() if k == "failures"})  # plain data


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: nqm.v_sgd(1.0, 2.0, 1.0), ValueError, r"eta \* h must be in \(0, 2\).*2\.0"),
        (lambda: nqm.v_sgd(-0.1, 1.0, 1.0), ValueError, "eta .*positive.*-0.1"),
        (lambda: nqm.v_sgd(0.1, 1.0, -1.0), ValueError, "s2 .*positive"),
        (lambda: nqm.v_ema(0.5, 1.0, 1.0, 1.0), ValueError, r"decay b must be in \[0, 1\)"),
        (lambda: nqm.v_ema(0.5, 1.0, 1.0, [0.5, -0.1]), ValueError, "-0.1"),
        (lambda: nqm.v_sema(0.5, 1.0, 1.0, 0.9, 0), ValueError, "k .*>= 1"),
        (lambda: nqm.v_sema(0.5, 1.0, 1.0, 0.9, 2.5), TypeError, "k .*int"),
        (lambda: nqm.rho(0.5, 1.0, 0.9, True), TypeError, "k .*int"),
        (lambda: nqm.v_sgd("0.5", 1.0, 1.0), TypeError, "eta"),
        (lambda: nqm.v_sgd(float("nan"), 1.0, 1.0), ValueError, "finite"),
        (lambda: nqm.ordering_grid([0.5, 2.0], [0.9], [1]), ValueError, r"\(0, 2\)"),
        (lambda: nqm.ordering_grid([0.5], [0.9], [1.5]), TypeError, "int"),
        (lambda: nqm.simulate(0.5, 1, 1, 0.9, 5, 100, 1, 1, 0), ValueError, "chains"),
        (lambda: nqm.simulate(0.5, 1, 1, 0.9, 5, 100.0, 10, 1, 0), TypeError, "steps"),
        (lambda: nqm.simulate(0.5, [1, 2], 1, 0.9, 5, 100, 10, 3, 0), ValueError, "shape"),
        (lambda: nqm.simulate(0.5, 1, 1, 0.99, 5, 100, 10, 1, 0), ValueError, "too short"),
        (
            lambda: nqm.simulate(0.5, 1, 1, 0.9, 5, 100, 10, 1, 0, burn_in=100),
            ValueError,
            "< steps",
        ),
    ],
)
def test_input_errors_name_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_cli_nqm_writes_tables_plots_and_numbers(tmp_path, capsys):
    out = tmp_path / "nqm"
    argv = ["nqm", "--eta", "0.75", "--curvature", "2", "--noise", "0.5", "--decay", "0.9"]
    argv += ["--switch-every", "5s", "--steps", "300", "--chains", "200", "--seed", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Stationary variance: simulation vs closed form" in printed
    for name in ("nqm.md", "nqm.json", "nqm_variance.png", "nqm_bias.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "nqm.json").read_text())
    assert data["settings"]["k"] == 5 and data["eta_h"] == 1.5
    for d in data["stationary"].values():
        assert abs(d["z"]) < 4
    assert data["ordering"]["holds_all"] == [True, True, True, False, False]
    assert len(data["trajectories"]["sema"]["var"]) == 301
    # same seed, same numbers
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "nqm.json").read_text())
    assert again["stationary"] == data["stationary"]
    # misuse: one line on stderr, exit status 2, nothing written
    assert main(["nqm", "--eta", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "eta * h must be in (0, 2)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # an interval carries its unit, and the quadratic model has steps only
    for every, said in (("5", "has no unit: write '5e'"), ("2e", "has no epochs; give SGD steps")):
        assert main(["nqm", "--switch-every", every, "--out", str(tmp_path / "bad")]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
