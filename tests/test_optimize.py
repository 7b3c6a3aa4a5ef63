"""Tests for rtlab.optimize: terms (values vs numpy formulas, gradients vs finite differences),
solvers (vs scipy's NNLS), stopping rules (patent 000, claim 6), cancel, history, review."""

import threading

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

from rtlab.optimize import (
    DVHMax, DVHMin, MaxDose, MeanDose, Objective, PlanSession, Solver, SquaredDeviation,
    SquaredOverdose, SquaredUnderdose, rows_for, smooth_max, solve,
)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_problem(rng, n_vox=60, n_b=12, density=0.4):
    A = sp.random(n_vox, n_b, density=density, random_state=rng, format="csr", dtype=np.float32)
    A.data = (A.data + 0.1).astype(np.float32)
    return A


# ------------------------------------------------------------------------------------ rows
def test_rows_for_without_and_with_voxel_index():
    mask = np.zeros((2, 3, 4), bool)
    mask[1, 2, 1:3] = True
    flat = np.flatnonzero(mask.ravel())
    np.testing.assert_array_equal(rows_for(mask), flat)
    vi = np.array([5, flat[1], 0, flat[0], 7])  # rows of A -> grid voxels
    np.testing.assert_array_equal(rows_for(mask, vi), [1, 3])
    vi2 = np.array([5, flat[1], 0])
    with pytest.raises(ValueError, match="no row in the influence matrix"):
        rows_for(mask, vi2)
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(rows_for(mask, vi2, missing="warn"), [1])
    np.testing.assert_array_equal(rows_for(mask, vi2, missing="ignore"), [1])
    with pytest.raises(ValueError, match="empty"):
        rows_for(np.zeros((2, 2, 2), bool))
    with pytest.raises(TypeError, match="boolean"):
        rows_for(np.zeros((2, 2, 2), int))
    with pytest.raises(ValueError, match="outside"):
        rows_for(mask, np.array([100]))


# ------------------------------------------------------------------------------------ terms
def _terms(rows):
    return [
        SquaredUnderdose(rows, 50.0, weight=2.0, name="under"),
        SquaredOverdose(rows, 45.0, weight=0.5, name="over"),
        SquaredDeviation(rows, 48.0, name="dev"),
        MeanDose(rows, name="mean"),
        MeanDose(rows, max_mean=40.0, weight=3.0, name="mean_lim"),
        MaxDose(rows, 52.0, name="max_lse", softness=1.0),
        MaxDose(rows, 40.0, name="max_pnorm", method="pnorm", p=8),
        DVHMax(rows, 47.0, 0.3, name="dvhmax"),
        DVHMin(rows, 51.0, 0.8, name="dvhmin"),
    ]


def test_term_values_match_numpy_formulas(rng):
    d = rng.uniform(40, 60, 30)
    rows = np.arange(5, 25)
    s = d[rows]
    ref = {
        "under": 2.0 * np.mean(np.maximum(50 - s, 0) ** 2),
        "over": 0.5 * np.mean(np.maximum(s - 45, 0) ** 2),
        "dev": np.mean((s - 48) ** 2),
        "mean": s.mean(),
        "mean_lim": 3.0 * max(s.mean() - 40, 0) ** 2,
        "max_lse": max(np.log(np.sum(np.exp(s))) - 52, 0) ** 2,
        "max_pnorm": max(np.mean(s ** 8) ** (1 / 8) - 40, 0) ** 2,
    }
    srt = np.sort(s)[::-1]
    k = int(np.floor(0.3 * s.size))
    ref["dvhmax"] = np.sum(np.maximum(srt[k:] - 47, 0) ** 2) / s.size
    m = int(np.ceil(0.8 * s.size))
    ref["dvhmin"] = np.sum(np.maximum(51 - srt[:m], 0) ** 2) / s.size
    for t in _terms(rows):
        assert t.value(d) == pytest.approx(ref[t.name], rel=1e-10), t.name


def test_dvh_terms_hand_example():
    d = np.array([10.0, 20, 30, 40, 50])
    # at most 40 % above 25 Gy: the two hottest are allowed, 30 Gy is penalised by 5 Gy
    assert DVHMax(None, 25.0, 0.4).value(d) == pytest.approx(25 / 5)
    # at least 60 % at >= 45 Gy: 50, 40, 30 must reach 45 -> 40 and 30 penalised
    assert DVHMin(None, 45.0, 0.6).value(d) == pytest.approx((25 + 225) / 5)
    # satisfied constraints cost nothing
    assert DVHMax(None, 25.0, 0.6).value(d) == 0.0
    assert DVHMin(None, 30.0, 0.6).value(d) == 0.0


def test_term_gradients_match_finite_differences(rng, fd_grad):
    d = rng.uniform(40, 60, 30)
    rows = np.arange(5, 25)
    for t in _terms(rows):
        g = t.gradient(d)
        assert g.shape == d.shape
        assert np.all(g[:5] == 0) and np.all(g[25:] == 0), t.name
        np.testing.assert_allclose(g, fd_grad(t.value, d), rtol=1e-5, atol=1e-7, err_msg=t.name)


def test_smooth_max_bounds(rng, fd_grad):
    d = rng.uniform(0, 60, 200)
    m, g = smooth_max(d, "lse", softness=0.5)
    assert d.max() <= m <= d.max() + 0.5 * np.log(d.size) + 1e-12
    assert g.sum() == pytest.approx(1.0)
    m2, _ = smooth_max(d, "pnorm", p=30)
    assert d.max() * d.size ** (-1 / 30) - 1e-12 <= m2 <= d.max() + 1e-12
    np.testing.assert_allclose(smooth_max(d, "pnorm", p=30)[1],
                               fd_grad(lambda v: smooth_max(v, "pnorm", p=30)[0], d), rtol=1e-5, atol=2e-8)
    with pytest.raises(ValueError, match="method"):
        smooth_max(d, "max")


def test_objective_sums_terms_and_rejects_bad_input(rng):
    d = rng.uniform(40, 60, 30)
    ts = _terms(np.arange(30))
    obj = Objective(ts)
    v, g = obj.value_and_gradient(d)
    assert v == pytest.approx(sum(t.value(d) for t in ts))
    np.testing.assert_allclose(g, sum(t.gradient(d) for t in ts))
    assert obj.evaluate(d)["dev"] == pytest.approx(ts[2].value(d))
    obj2 = ts[0] + ts[1] + ts[2]
    assert obj2.names == ["under", "over", "dev"]
    with pytest.raises(ValueError, match="unique"):
        Objective([ts[0], ts[0]])
    with pytest.raises(ValueError, match="weight"):
        SquaredUnderdose([0, 1], 50, weight=-1)
    with pytest.raises(ValueError, match="duplicate"):
        SquaredUnderdose([0, 0], 50)
    with pytest.raises(ValueError, match="dose"):
        SquaredUnderdose([0, 1], float("nan"))
    with pytest.raises(ValueError, match="rows"):
        SquaredUnderdose([0, 99], 50).value(d)
    with pytest.raises(ValueError, match="volume_fraction"):
        DVHMax([0], 50, 1.5)


# ------------------------------------------------------------------------------------ solvers
@pytest.mark.parametrize("method", ["lbfgsb", "pg"])
def test_solver_matches_scipy_nnls(rng, method):
    A = random_problem(rng)
    b = 50.0
    obj = Objective([SquaredDeviation(None, b, name="dev")])
    res = solve(A, obj, np.ones(A.shape[1]), method=method, max_iter=3000, gtol=1e-12)
    x_ref, _ = scipy.optimize.nnls(A.toarray().astype(np.float64), np.full(A.shape[0], b))
    f_ref = np.mean((A.toarray() @ x_ref - b) ** 2)
    assert np.all(res.x >= 0)
    assert res.objective == pytest.approx(f_ref, rel=1e-5, abs=1e-8)
    assert res.objective <= res.history.objective[0]
    np.testing.assert_allclose(res.dose, A @ res.x, rtol=1e-6)


def test_beamlet_gradient_is_At_grad_d(rng, fd_grad):
    A = random_problem(rng, n_vox=40, n_b=8)
    obj = Objective([SquaredUnderdose(np.arange(20), 50, name="u"), MaxDose(np.arange(20, 40), 10, name="m")])
    s = Solver(A, obj)
    s._n_evals, s._best_f, s._best_x = 0, np.inf, None
    x = rng.uniform(1, 20, 8)
    f, g = s._fg(x)
    np.testing.assert_allclose(g, fd_grad(lambda v: s._fg(v)[0], x, h=1e-5), rtol=1e-4, atol=1e-8)


def _toy():
    rng = np.random.default_rng(7)
    return random_problem(rng, n_vox=80, n_b=15), Objective([SquaredDeviation(None, 50.0, name="dev")])


@pytest.mark.parametrize("method", ["lbfgsb", "pg"])
def test_stopping_rule_objective_threshold(method):
    A, obj = _toy()
    full = solve(A, obj, method=method, max_iter=500)
    thr = full.history.objective[0] * 0.2
    res = solve(A, obj, method=method, max_iter=500, objective_threshold=thr)
    assert res.status == "objective_threshold"
    f = res.history.objective
    assert f[-1] < thr and np.all(f[1:-1] >= thr)
    assert res.objective == pytest.approx(f.min())


@pytest.mark.parametrize("method", ["lbfgsb", "pg"])
def test_stopping_rule_change_over_k_iterations(method):
    A, obj = _toy()
    k, thr = 3, 1e-3
    res = solve(A, obj, method=method, max_iter=2000, change_threshold=thr, change_window=k)
    assert res.status == "objective_change"
    f = res.history.objective
    assert np.ptp(f[-(k + 1):]) < thr
    # no earlier window of k iterations satisfied the rule
    for j in range(k + 1, f.size):
        assert np.ptp(f[j - k - 1:j]) >= thr


def test_max_iter_status_and_iterations():
    A, obj = _toy()
    res = solve(A, obj, method="pg", max_iter=4)
    assert res.status == "max_iter" and res.iterations == 4 and len(res.history) == 5


@pytest.mark.parametrize("method", ["lbfgsb", "pg"])
def test_cancel_from_callback_returns_best(method):
    A, obj = _toy()
    res = solve(A, obj, method=method, max_iter=500, callback=lambda rec: rec["iteration"] >= 3)
    assert res.status == "cancelled" and res.iterations == 3
    assert res.objective == pytest.approx(res.history.objective.min())


def test_cancel_from_another_thread():
    A, obj = _toy()
    solver = Solver(A, obj, method="pg", max_iter=10_000, change_threshold=None)

    def on_record(rec):
        if rec["iteration"] == 2:
            t = threading.Thread(target=solver.cancel)
            t.start()
            t.join()

    solver.history.subscribe(on_record)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("res", solver.run()))
    worker.start()
    worker.join(timeout=30)
    res = out["res"]
    assert res.status == "cancelled" and res.iterations <= 3
    # cancelled before starting: returns the (projected) start at once
    ev = threading.Event()
    ev.set()
    res2 = solve(A, obj, np.full(A.shape[1], -1.0), cancel_event=ev)
    assert res2.status == "cancelled" and np.all(res2.x == 0)


def test_history_records_and_dataframe():
    A, obj = _toy()
    seen = []
    s = Solver(A, obj, method="lbfgsb", max_iter=5, progress=True)
    s.history.subscribe(seen.append)
    res = s.run()
    assert len(seen) == len(res.history) == res.iterations + 1
    r = res.history[-1]
    assert set(r) >= {"iteration", "objective", "time", "terms", "reports", "n_evals"}
    assert np.all(np.diff(res.history.time) >= 0)
    df = res.history.to_dataframe()
    assert list(df["iteration"]) == list(range(len(res.history)))
    np.testing.assert_allclose(df["dev"], res.history.series("dev"))


def test_solver_bad_input():
    A, obj = _toy()
    with pytest.raises(ValueError, match="method"):
        Solver(A, obj, method="newton")
    with pytest.raises(ValueError, match="x0"):
        solve(A, obj, np.ones(3))
    bad = A.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Solver(bad, obj)
    with pytest.raises(TypeError, match="objective"):
        Solver(A, "dev")
    with pytest.raises(TypeError, match="A must"):
        Solver([[1.0]], obj)


def test_dose_grid_scatter():
    A, obj = _toy()
    res = solve(A, obj, max_iter=3)
    vi = np.arange(80) * 2
    g = res.dose_grid((4, 5, 8), vi)
    np.testing.assert_allclose(g.ravel()[vi], res.dose, rtol=1e-6)
    assert np.all(g.ravel()[1::2] == 0)


# ------------------------------------------------------------------------------------ review
def test_plan_session_accept_edit_reoptimise():
    A, _ = _toy()
    obj = Objective([SquaredDeviation(np.arange(40), 50.0, name="ptv"),
                     SquaredOverdose(np.arange(40, 80), 20.0, weight=0.1, name="oar")])
    x_pre = np.full(A.shape[1], 2.0)
    s = PlanSession(A, obj, x_pre, method="lbfgsb", max_iter=200)
    assert s.state == "preliminary" and s.preliminary.objective == pytest.approx(obj.value(A @ x_pre))
    r1 = s.optimise()
    assert s.state == "optimised" and r1.objective < s.preliminary.objective
    assert r1.history[0]["objective"] == pytest.approx(s.preliminary.objective)
    # edit objective weights and doses; the caller's objective is untouched
    e = s.edit(weights={"oar": 5.0}, doses={"ptv": 45.0})
    assert s.state == "edited" and obj["oar"].weight == 0.1 and s.objective["ptv"].dose_level == 45.0
    np.testing.assert_array_equal(e.x, r1.x)
    assert e.objective == pytest.approx(s.objective.value(A @ r1.x))
    # re-optimise from the optimised parameters: starts where the edit left off
    r2 = s.reoptimise(start="optimised")
    assert r2.history[0]["objective"] == pytest.approx(e.objective)
    assert r2.objective <= e.objective
    # ... or from the preliminary ones: same as a fresh solve of the edited objective
    r3 = s.reoptimise(start="preliminary")
    fresh = solve(A, s.objective, x_pre, method="lbfgsb", max_iter=200)
    assert r3.history[0]["objective"] == pytest.approx(s.objective.value(A @ x_pre))
    assert r3.objective == pytest.approx(fresh.objective, rel=1e-9)
    # edit the parameters themselves, then accept
    xe = r3.x * 0.9
    s.edit(x=xe)
    np.testing.assert_allclose(s.result.x, xe)
    acc = s.accept()
    assert s.accepted and acc is s.result
    assert [a["action"] for a in s.log] == ["reoptimise", "edit", "reoptimise", "reoptimise", "edit", "accept"]
    with pytest.raises(KeyError, match="available"):
        s.edit(weights={"nope": 1.0})
    with pytest.raises(ValueError, match="start"):
        s.reoptimise(start="middle")
    with pytest.raises(ValueError, match="at least one change"):
        s.edit()
    with pytest.raises(ValueError, match="non-negative"):
        s.edit(x=-np.ones(A.shape[1]))
