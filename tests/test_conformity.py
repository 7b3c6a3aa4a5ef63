"""Tests for rtlab.methods.conformity (patent 000, eqs 1-15)."""

import numpy as np
import pytest
import scipy.sparse as sp

from rtlab.geometry import Grid, Structure, StructureSet
from rtlab.methods.conformity import (
    ConformityTerm, conformity_parameters, conformity_terms, paddick_ci, sigmoid,
)
from rtlab.optimize import MaxDose, Objective, SquaredUnderdose, rows_for, solve


def test_sigmoid_is_stable_and_matches_formula():
    x = np.array([-800.0, -3.0, 0.0, 2.5, 800.0])
    s = sigmoid(x)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s[1:4], 1 / (1 + np.exp(-x[1:4])))
    assert s[0] == pytest.approx(0.0) and s[-1] == 1.0


def test_exact_parameters_hand_example():
    # target = rows 0..9; domain = 20 rows; dose >= 50 on rows 0..7 (target) and 10, 11 (outside)
    d = np.full(20, 10.0)
    d[:8] = 55.0
    d[10:12] = 50.0  # exactly at the reference counts (>=)
    p = conformity_parameters(d, np.arange(10), 50.0)
    assert (p["TV"], p["TV_RI"], p["V_RI"]) == (10, 8, 10)
    assert p["F"] == pytest.approx(0.8) and p["S"] == pytest.approx(0.8)
    assert p["f_C"] == pytest.approx(0.64)
    # domain restricted: rows 10, 11 outside it no longer count
    p2 = conformity_parameters(d, np.arange(10), 50.0, domain_rows=np.arange(10))
    assert p2["F"] == 1.0 and p2["f_C"] == pytest.approx(0.8)
    # unequal voxel volumes (patent para. 65): the volumes are sums of grid volumes
    vol = np.ones(20)
    vol[10] = 3.0
    p3 = conformity_parameters(d, np.arange(10), 50.0, voxel_volumes=vol)
    assert p3["V_RI"] == 12 and p3["F"] == pytest.approx(8 / 12)
    # paddick_ci on a grid agrees
    assert paddick_ci(d.reshape(4, 5), np.arange(20).reshape(4, 5) < 10, 50.0) == pytest.approx(0.64)
    # no dose region: F = f_C = 0
    assert conformity_parameters(np.zeros(20), np.arange(10), 50.0)["f_C"] == 0.0


def test_relaxed_tends_to_exact_for_steep_sigmoid():
    rng = np.random.default_rng(3)
    d = rng.uniform(20, 80, 500)
    d = d[np.abs(d - 50) > 0.5]
    t = np.arange(0, d.size, 3)
    ex = conformity_parameters(d, t, 50.0)
    for k in (50, 200):
        rel = conformity_parameters(d, t, 50.0, steepness=k)
        assert abs(rel["f_C"] - ex["f_C"]) < (0.05 if k == 50 else 0.01)
    rel = conformity_parameters(d, t, 50.0, steepness=5000)
    for key in ("F", "S", "f_C", "V_RI", "TV_RI"):
        assert rel[key] == pytest.approx(ex[key], rel=1e-9)


def _near_threshold_dose(rng, n=40, d_ref=50.0):
    return d_ref + rng.normal(0, 1.5, n)


@pytest.mark.parametrize("split", [False, True])
def test_value_and_gradient_fd(split, fd_grad):
    rng = np.random.default_rng(11)
    d = _near_threshold_dose(rng)
    vol = rng.uniform(0.5, 2.0, d.size)
    t_rows = np.arange(5, 20)
    dom = np.arange(2, 38)
    kw = dict(w1=0.7, w2=1.9, C1=0.95, C2=1.0) if split else dict(C=0.98)
    term = ConformityTerm(t_rows, 50.0, dom, weight=1.7, steepness=40, voxel_volumes=vol, **kw)
    # value vs conformity_parameters (independent evaluation of eqs 1-3 and 7/8)
    p = conformity_parameters(d, t_rows, 50.0, dom, steepness=40, voxel_volumes=vol)
    ref = (0.7 * (p["F"] - 0.95) ** 2 + 1.9 * (p["S"] - 1.0) ** 2) if split else (p["f_C"] - 0.98) ** 2
    assert term.value(d) == pytest.approx(1.7 * ref, rel=1e-12)
    g = term.gradient(d)
    np.testing.assert_allclose(g, fd_grad(term.value, d, h=1e-5), rtol=1e-5, atol=1e-10)
    # the term's fast report path agrees with the stand-alone function, relaxed and exact
    for key, val in p.items():
        assert term.parameters(d)[key] == pytest.approx(val, rel=1e-12)
    pe = conformity_parameters(d, t_rows, 50.0, dom, voxel_volumes=vol)
    for key, val in pe.items():
        assert term.parameters(d, exact=True)[key] == pytest.approx(val, rel=1e-12)
        if key != "TV":
            assert term.report(d)[key + "_exact"] == pytest.approx(val, rel=1e-12)
    assert np.all(g[:2] == 0) and np.all(g[38:] == 0)


def test_gradient_matches_patent_eqs_11_12():
    """eq 11 (target voxel) and eq 12 (dose-region voxel outside the target), read with
    V_ptv-i = V_i-ext = v_i / TV."""
    rng = np.random.default_rng(5)
    d = _near_threshold_dose(rng, 30)
    t = np.arange(10)
    w, k, dref = 2.0, 30.0, 50.0
    term = ConformityTerm(t, dref, np.arange(30), weight=w, steepness=k)
    p = conformity_parameters(d, t, dref, steepness=k)
    s = sigmoid(k * (d - dref) / dref)
    der = s * (1 - s) * k / dref
    TV, TVRI, VRI, fc = p["TV"], p["TV_RI"], p["V_RI"], p["f_C"]
    eq11 = 2 * w * (fc - 1) * (2 * TVRI * VRI * der - TVRI ** 2 * der) / (VRI ** 2 * TV)
    eq12 = -2 * w * (fc - 1) * TVRI ** 2 * der / (VRI ** 2 * TV)
    g = term.gradient(d)
    np.testing.assert_allclose(g[:10], eq11[:10], rtol=1e-10)
    np.testing.assert_allclose(g[10:], eq12[10:], rtol=1e-10)


def test_n_targets_eq6_and_split_eq7(fd_grad):
    rng = np.random.default_rng(8)
    d = np.concatenate([60 + rng.normal(0, 2, 20), 54 + rng.normal(0, 2, 20), rng.uniform(0, 65, 20)])
    specs = [(np.arange(0, 20), 60.0, 2.0), (np.arange(20, 40), 54.0, 0.5)]
    terms = conformity_terms(specs, n_rows=60, steepness=30)
    obj = Objective(terms)
    ref = sum(w * (conformity_parameters(d, r, D, steepness=30)["f_C"] - 1) ** 2 for r, D, w in specs)
    assert obj.value(d) == pytest.approx(ref, rel=1e-12)
    split = conformity_terms([{"rows": r, "d_ref": D, "w1": 0.3, "w2": 2.0} for r, D, _ in specs],
                             n_rows=60, steepness=30, split=True)
    ref7 = 0.0
    for r, D, _ in specs:
        p = conformity_parameters(d, r, D, steepness=30)
        ref7 += 0.3 * (p["F"] - 1) ** 2 + 2.0 * (p["S"] - 1) ** 2
    assert Objective(split).value(d) == pytest.approx(ref7, rel=1e-12)
    np.testing.assert_allclose(Objective(split).gradient(d),
                               fd_grad(Objective(split).value, d, h=1e-5), rtol=1e-5, atol=1e-10)


def test_report_has_exact_and_relaxed_and_dose_level_edit():
    d = np.array([49.0, 51.0, 52.0, 10.0, 51.0])
    term = ConformityTerm([0, 1, 2], 50.0, n_rows=5, steepness=50)
    r = term.report(d)
    assert r["f_C_exact"] == pytest.approx(2 * 2 / (3 * 3))
    assert 0 < r["f_C"] < 1 and r["d_ref"] == 50.0
    assert {"F", "S", "F_exact", "S_exact", "V_RI_exact", "TV_RI_exact"} <= set(r)
    term.dose_level = 48.0
    assert term.report(d)["S_exact"] == 1.0
    with pytest.raises(ValueError, match="d_ref"):
        term.dose_level = 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="n_rows"):
        ConformityTerm([0, 1], 50.0)
    with pytest.raises(ValueError, match="steepness"):
        ConformityTerm([0, 1], 50.0, n_rows=4, steepness=0)
    with pytest.raises(ValueError, match="d_ref"):
        ConformityTerm([0, 1], -5.0, n_rows=4)
    with pytest.raises(ValueError, match="voxel_volumes"):
        ConformityTerm([0, 1], 50.0, n_rows=4, voxel_volumes=np.ones(1))
    with pytest.raises(ValueError, match="empty"):
        ConformityTerm([], 50.0, n_rows=4)
    with pytest.raises(ValueError, match="d_ref"):
        conformity_parameters(np.ones(4), [0], 0.0)
    with pytest.raises(ValueError, match="shape"):
        paddick_ci(np.ones((3, 3)), np.ones((2, 2), bool), 1.0)


# ------------------------------------------------------------------------------------ toy plans
def gaussian_problem(n=36, spacing=2, sigma=1.5):
    """2-D 'dose = A x' with Gaussian beamlets on a lattice (a point-kernel toy)."""
    yy, xx = np.mgrid[0:n, 0:n]
    cols = []
    for cy in range(3, n - 3, spacing):
        for cx in range(3, n - 3, spacing):
            cols.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)).ravel())
    A = np.stack(cols, 1)
    A[A < 1e-3] = 0
    return sp.csr_matrix(A.astype(np.float32)), yy, xx


def test_optimising_conformity_drives_exact_paddick_ci_high():
    A, yy, xx = gaussian_problem()
    grid = Grid((1, 36, 36), (3.0, 2.0, 2.0))
    r2 = (yy - 18) ** 2 + (xx - 17) ** 2
    ptv = Structure("PTV", (r2 <= 7.3 ** 2)[None], grid, kind="target", prescription=50.0)
    core = Structure("core", (r2 <= 5 ** 2)[None], grid, kind="target")
    body = Structure("body", np.ones((1, 36, 36), bool), grid, kind="body")
    ss = StructureSet(grid, [ptv, core, body])
    vi = np.arange(grid.size)  # one row per voxel
    conf = ConformityTerm.from_masks(ss["PTV"], 50.0, ss["body"], voxel_index=vi, steepness=20, name="PTV conformity")
    obj = Objective([conf,
                     SquaredUnderdose(rows_for(ss["core"], vi), 50.0, weight=1e-3, name="core underdose"),
                     MaxDose(rows_for(ss["PTV"], vi), 60.0, weight=1e-3, name="max dose")])
    x0 = np.full(A.shape[1], 50.0 / (A @ np.ones(A.shape[1])).max())
    d0 = A @ x0
    ci0 = paddick_ci(d0.reshape(36, 36), ptv.mask[0], 50.0)
    res = solve(A, obj, x0, method="lbfgsb", max_iter=250)
    ci = paddick_ci(res.dose.reshape(36, 36), ptv.mask[0], 50.0)
    assert ci0 < 0.6 and ci > 0.9
    rep = res.history[-1]["reports"]["PTV conformity"]
    assert rep["f_C_exact"] == pytest.approx(ci)
    assert res.dose.max() < 66.0  # the max-dose term keeps hot spots in check
    # the history carries F, S, f_C per iteration
    assert res.history.series("PTV conformity", "f_C").size == res.iterations + 1


def test_split_weights_trade_coverage_against_spill():
    """Para. 78: lowering w2 lets the dose region shrink into the target (F up, S down);
    lowering w1 lets it spill out (S up, F down). Wide beamlets make perfect conformity impossible."""
    A, yy, xx = gaussian_problem(n=30, spacing=5, sigma=2.0)
    tmask = ((yy - 15) ** 2 + (xx - 15.3) ** 2 <= 4.5 ** 2).ravel()
    t = np.flatnonzero(tmask)
    x0 = np.full(A.shape[1], 50.0 / (A @ np.ones(A.shape[1])).max())
    out = {}
    for label, (w1, w2) in {"low_w2": (1.0, 0.1), "low_w1": (0.1, 1.0)}.items():
        term = ConformityTerm(t, 50.0, n_rows=A.shape[0], w1=w1, w2=w2, steepness=20)
        res = solve(A, term, x0, max_iter=200)
        out[label] = term.report(res.dose)
    for suffix in ("", "_exact"):
        assert out["low_w2"]["F" + suffix] > out["low_w1"]["F" + suffix] + 0.05
        assert out["low_w2"]["S" + suffix] < out["low_w1"]["S" + suffix] - 0.05


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 60), st.floats(1.0, 80.0))
def test_property_exact_parameters_bounded_and_equal_paddick(seed, n, d_ref):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 100, n)
    tmask = rng.random(n) < 0.4
    tmask[rng.integers(n)] = True
    p = conformity_parameters(d, np.flatnonzero(tmask), d_ref)
    for key in ("F", "S", "f_C"):
        assert 0.0 <= p[key] <= 1.0
    assert p["f_C"] == pytest.approx(p["F"] * p["S"])
    assert p["f_C"] == pytest.approx(paddick_ci(d, tmask, d_ref))
    assert p["TV_RI"] <= min(p["TV"], p["V_RI"])
