"""Tests for rtlab.metrics: golden values on analytic cases, properties, resampling, errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from rtlab import metrics as m
from rtlab.geometry import Grid, Structure, StructureSet


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def box_structure(grid, sl, name="box", **kw):
    mask = np.zeros(grid.shape, bool)
    mask[sl] = True
    return Structure(name, mask, grid, **kw)


def ramp_case(nz=3, ny=4, nx=50, a=10.0, b=0.5):
    """Dose a + b*i along x index i, inside a box holding the whole ramp."""
    g = Grid((nz + 2, ny + 2, nx + 2), (2.0, 2.0, 2.0))
    i = np.arange(g.shape[2]) - 1  # ramp index 0..nx-1 inside the box
    dose = np.broadcast_to(a + b * i, g.shape).astype(float).copy()
    s = box_structure(g, (slice(1, nz + 1), slice(1, ny + 1), slice(1, nx + 1)), "ramp", kind="target", prescription=a + b * nx / 2)
    return g, dose, s


def brute_dx(values, k):
    """Minimum dose of the hottest k voxels (independent reference at integer ranks)."""
    v = np.sort(np.asarray(values).ravel())
    return v[v.size - k]


# ---------------------------------------------------------------------------------------------
# golden values
# ---------------------------------------------------------------------------------------------
def test_uniform_dose():
    g = Grid((8, 9, 10), (2.0, 2.5, 3.0))
    s = box_structure(g, (slice(2, 6), slice(2, 7), slice(3, 8)), kind="target", prescription=60.0)
    dose = np.full(g.shape, 0.0)
    dose[s.mask] = 60.0
    for x in (0, 2, 50, 95, 98, 100):
        assert m.dose_at_volume(dose, s, pct=x) == 60.0
    assert m.dose_at_volume(dose, s, cc=0.03) == 60.0
    assert m.mean_dose(dose, s) == m.max_dose(dose, s) == m.min_dose(dose, s) == 60.0
    assert m.volume_at_dose(dose, s, 60.0) == 100.0
    assert m.volume_at_dose(dose, s, 60.0001) == 0.0
    assert m.volume_at_dose(dose, s, 30.0, unit="cc") == pytest.approx(s.volume_cc)
    # isodose region == target: every conformity index is ideal
    assert m.paddick_ci(dose, s) == 1.0
    assert m.rtog_ci(dose, s) == 1.0
    assert m.coverage(dose, s) == 1.0
    assert m.selectivity(dose, s) == 1.0
    assert m.homogeneity_index(dose, s) == 0.0
    # the 50 % isodose is the same region as the 100 % one
    assert m.gradient_index(dose, s) == 1.0


def test_ramp_single_row_closed_form():
    # one voxel per dose level: Dx = a + b*n*(1 - x/100) for every x in [100/n, 100]
    n, a, b = 40, 5.0, 1.5
    g = Grid((3, 3, n), (1.0, 1.0, 1.0))
    dose = np.broadcast_to(a + b * np.arange(n), g.shape).copy()
    s = box_structure(g, (slice(1, 2), slice(1, 2), slice(None)))
    for x in np.linspace(100 / n, 100, 37):
        assert m.dose_at_volume(dose, s, pct=x) == pytest.approx(a + b * n * (1 - x / 100), abs=1e-12)
    assert m.dose_at_volume(dose, s, pct=0) == a + b * (n - 1)  # D0 = Dmax
    assert m.dose_at_volume(dose, s, pct=1.0) == a + b * (n - 1)  # below one voxel: clamped
    # HI = (D2 - D98)/D50 from the closed form, with D2 clamped to Dmax (2 % < 1 voxel)
    d2 = a + b * (n - 1)
    d98 = a + b * n * 0.02
    d50 = a + b * n * 0.5
    assert m.homogeneity_index(dose, s) == pytest.approx((d2 - d98) / d50, abs=1e-12)
    # cc variant: voxel volume 0.001 cc, so D0.01cc is the 10th hottest voxel
    assert m.evaluate(dose, s, "D0.01cc") == pytest.approx(a + b * (n - 10))


def test_ramp_box_closed_form_and_brute_force():
    nz, ny, nx, a, b = 3, 4, 50, 10.0, 0.5
    g, dose, s = ramp_case(nz, ny, nx, a, b)
    M = nz * ny  # voxels per dose level
    vals = dose[s.mask]
    # at x = 100 j / nx the rank is j*M: Dx = a + b*nx*(1 - x/100)
    for j in range(1, nx + 1):
        x = 100.0 * j / nx
        assert m.dose_at_volume(dose, s, pct=x) == pytest.approx(a + b * nx * (1 - x / 100), abs=1e-9)
    # every integer rank equals the brute-force minimum dose of the hottest k voxels
    n = vals.size
    for k in (1, 2, M - 1, M, M + 1, n // 2, n - 1, n):
        assert m.dose_at_volume(dose, s, pct=100.0 * k / n) == pytest.approx(brute_dx(vals, k), abs=1e-9)
    # linear between ranks: the hottest level's last voxel (rank M) to the next level's first
    r = M + 0.25
    assert m.dose_at_volume(dose, s, pct=100 * r / n) == pytest.approx(a + b * (nx - 1) - 0.25 * b, abs=1e-9)
    # HI of the ramp: D2, D98 and D50 at ranks 0.02n, 0.98n, 0.5n (n = 600 -> 12, 588, 300)
    d2 = brute_dx(vals, 12)
    d98 = brute_dx(vals, 588)
    d50 = brute_dx(vals, 300)
    assert m.homogeneity_index(dose, s) == pytest.approx((d2 - d98) / d50)
    st_ = m.structure_stats(dose, s)
    assert set(st_) == {"D95", "D98", "D2", "D10", "D50", "Dmean", "Dmax", "Dmin", "volume_cc", "resampled"}
    assert st_["Dmean"] == pytest.approx(a + b * (nx - 1) / 2)
    assert st_["Dmax"] == a + b * (nx - 1) and st_["Dmin"] == a
    assert st_["volume_cc"] == pytest.approx(n * 0.008)
    assert st_["resampled"] is False
    json.dumps(st_)  # the CLI prints it


def test_vx_against_counting():
    g, dose, s = ramp_case()
    vals = dose[s.mask]
    for gy in (0.0, 10.0, 17.25, 22.0, 34.5, 100.0):
        k = np.count_nonzero(vals >= gy)
        assert m.volume_at_dose(dose, s, gy) == pytest.approx(100 * k / vals.size)
        assert m.volume_at_dose(dose, s, gy, unit="cc") == pytest.approx(k * g.voxel_volume_cc)
        assert m.evaluate(dose, s, f"V{gy:g}Gy") == pytest.approx(100 * k / vals.size)
        assert m.evaluate(dose, s, f"V{gy:g}Gy_cc") == pytest.approx(k * g.voxel_volume_cc)


def _spheres(spacing=1.0, half=12):
    n = 2 * half + 1
    g = Grid((n, n, n), (spacing,) * 3)
    Z, Y, X = g.mesh()
    r = np.sqrt(Z**2 + Y**2 + X**2)
    return g, r


def test_nested_spheres_conformity():
    # target sphere R0 inside the prescription isodose sphere R1; 50 % isodose at 2*R1
    rx, R0, R1 = 20.0, 4.3, 5.2
    g, r = _spheres(half=12)
    dose = rx * R1 / np.maximum(r, 1e-3)
    target = Structure("PTV", r <= R0, g, kind="target", prescription=rx)
    tv = np.count_nonzero(r <= R0)
    piv = np.count_nonzero(r <= R1)
    piv50 = np.count_nonzero(r <= 2 * R1)
    # exact voxel counts
    assert m.paddick_ci(dose, target) == pytest.approx(tv / piv, rel=1e-12)
    assert m.rtog_ci(dose, target) == pytest.approx(piv / tv, rel=1e-12)
    assert m.coverage(dose, target) == 1.0
    assert m.selectivity(dose, target) == pytest.approx(tv / piv, rel=1e-12)
    assert m.gradient_index(dose, target) == pytest.approx(piv50 / piv, rel=1e-12)
    # continuum values within voxelisation tolerance
    assert m.paddick_ci(dose, target) == pytest.approx(R0**3 / R1**3, rel=0.06)
    assert m.gradient_index(dose, target) == pytest.approx(8.0, rel=0.06)
    # isodose inside the target: PIV = sphere R1 < R0, coverage R1^3/R0^3
    inner = Structure("big", r <= R1, g, kind="target", prescription=rx)
    dose2 = rx * R0 / np.maximum(r, 1e-3)
    assert m.coverage(dose2, inner) == pytest.approx(tv / piv, rel=1e-12)
    assert m.selectivity(dose2, inner) == 1.0
    assert m.paddick_ci(dose2, inner) == pytest.approx(tv / piv, rel=1e-12)
    # a body mask limits PIV
    body = Structure("body", r <= R0 + 0.5, g, kind="body")
    piv_b = np.count_nonzero((r <= R1) & (r <= R0 + 0.5))
    assert m.rtog_ci(dose, target, body=body) == pytest.approx(piv_b / tv)
    assert m.rtog_ci(dose, target, body=body.mask) == pytest.approx(piv_b / tv)
    # the report
    rep = m.conformity_report(dose, StructureSet(g, [target]))
    for k in ("ci_paddick", "ci_rtog", "gi", "hi", "coverage", "selectivity"):
        assert k in rep
    assert rep["ci_paddick"] == pytest.approx(tv / piv)
    assert rep["gi"] == pytest.approx(piv50 / piv)
    assert rep["rx"] == rx and rep["target"] == "PTV" and rep["resampled"] is False
    assert rep["tv_cc"] == pytest.approx(tv * g.voxel_volume_cc)
    # report at another isodose (R1 isodose level of rx*R1/R0 is the target surface)
    rep2 = m.conformity_report(dose, [target], rx=rx * R1 / R0)
    assert rep2["ci_paddick"] <= 1 and rep2["rx"] == pytest.approx(rx * R1 / R0)


def test_paddick_is_coverage_times_selectivity_and_no_piv():
    g, r = _spheres(half=6)
    t = Structure("t", r <= 3.2, g, kind="target", prescription=10.0)
    dose = 12.0 * np.exp(-((r - 1.0) ** 2) / 8.0)
    p, c, s_ = m.paddick_ci(dose, t), m.coverage(dose, t), m.selectivity(dose, t)
    assert p == pytest.approx(c * s_)
    zero = np.zeros(g.shape)
    assert m.paddick_ci(zero, t) == 0.0
    assert m.coverage(zero, t) == 0.0
    assert np.isnan(m.selectivity(zero, t))
    assert np.isnan(m.gradient_index(zero, t))
    assert np.isnan(m.homogeneity_index(zero, t))


def test_dvh_exact_and_binned():
    g, dose, s = ramp_case(nz=1, ny=2, nx=10, a=1.0, b=1.0)
    h = m.dvh(dose, s)
    assert h.exact and h.dose_gy[0] == 0.0 and h.volume_pct[0] == 100.0
    assert np.allclose(h.dose_gy[1:], np.arange(1.0, 11.0))
    assert np.allclose(h.volume_pct[1:], 100 * np.arange(10, 0, -1) / 10)
    assert np.allclose(h.volume_cc, h.volume_pct / 100 * s.volume_cc)
    assert h.total_cc == pytest.approx(s.volume_cc)
    hb = m.dvh(dose, s, bins=20)
    assert hb.dose_gy.size == 21 and hb.dose_gy[-1] == 10.0 and not hb.exact
    vals = dose[s.mask]
    for d_, v in zip(hb.dose_gy, hb.volume_pct):
        assert v == pytest.approx(100 * np.count_nonzero(vals >= d_) / vals.size)
    he = m.dvh(dose, s, bins=[0.0, 5.0, 5.5, 11.0])
    assert np.allclose(he.volume_pct, [100, 60, 50, 0])
    assert list(h.to_frame().columns) == ["dose_gy", "volume_pct", "volume_cc"]
    ax = h.plot()
    assert len(ax.lines) == 1


def test_dvh_consistent_with_dx():
    g, dose, s = ramp_case()
    h = m.dvh(dose, s)
    for x in (5.0, 50.0, 95.0):
        dx = m.dose_at_volume(dose, s, pct=x)
        # at least x % receives >= Dx (the DVH inverse)
        assert m.volume_at_dose(dose, s, dx) >= x - 1e-9
        assert np.interp(dx, h.dose_gy, h.volume_pct) >= x - 1e-9


# ---------------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------------
def test_resampled_linear_dose_is_exact():
    fine = Grid((12, 14, 16), (2.0, 2.0, 2.0))
    coarse = fine.with_spacing(4.0)
    coef = np.array([0.3, -0.2, 0.5])

    def lin(grid):
        Z, Y, X = grid.mesh()
        return 30.0 + coef[0] * Z + coef[1] * Y + coef[2] * X

    # a structure well inside the hull of coarse voxel centres
    s = box_structure(fine, (slice(3, 9), slice(3, 11), slice(2, 14)), kind="target", prescription=30.0)
    ref = lin(fine)
    dc = lin(coarse)
    h = m.dvh(dc, s, grid=coarse)
    assert h.resampled is True
    on_fine, flag = m.dose_on_grid(dc, fine, coarse)
    assert flag is True
    assert np.allclose(on_fine[s.mask], ref[s.mask], atol=1e-9, rtol=0)
    assert np.allclose(h.volume_pct, m.dvh(on_fine, s).volume_pct)
    v = m.mean_dose(dc, s, grid=coarse)
    assert v.resampled is True and v.unit == "Gy"
    assert v == pytest.approx(float(m.mean_dose(ref, s)), abs=1e-9)
    assert m.evaluate(dc, s, "D95", grid=coarse) == pytest.approx(m.evaluate(ref, s, "D95"), abs=1e-9)
    assert m.evaluate(ref, s, "D95").resampled is False
    assert m.structure_stats(dc, s, grid=coarse)["resampled"] is True
    assert m.conformity_report(dc, [s], grid=coarse)["resampled"] is True
    # PIV counted where trilinear interpolation is exact (inside the hull of coarse centres)
    inner = np.zeros(fine.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    # (level 30.05 Gy: no voxel centre lies on it, so float noise cannot flip a voxel)
    for f in (m.paddick_ci, m.gradient_index, m.rtog_ci):
        got = f(dc, s, rx=30.05, body=inner, grid=coarse)
        assert got.resampled and got == pytest.approx(f(ref, s, rx=30.05, body=inner), rel=1e-12)
    # same grid passed explicitly: no resampling
    assert m.mean_dose(ref, s, grid=fine).resampled is False


def test_metric_value_is_a_float():
    g, dose, s = ramp_case()
    v = m.evaluate(dose, s, "Dmean")
    assert isinstance(v, float) and v.unit == "Gy"
    assert json.loads(json.dumps({"v": v}))["v"] == float(v)
    w = pickle.loads(pickle.dumps(v))
    assert w == v and w.unit == "Gy" and w.resampled is False
    assert type(v + 1.0) is float


# ---------------------------------------------------------------------------------------------
# metric grammar
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "metric, spec",
    [
        ("Dmean", ("mean", None, "Gy")),
        ("dmax", ("max", None, "Gy")),
        ("Dmin", ("min", None, "Gy")),
        ("D95", ("d_pct", 95.0, "Gy")),
        ("D0.5", ("d_pct", 0.5, "Gy")),
        ("D0.03cc", ("d_cc", 0.03, "Gy")),
        ("V20Gy", ("v_pct", 20.0, "%")),
        ("V20.5Gy_cc", ("v_cc", 20.5, "cc")),
    ],
)
def test_parse_metric(metric, spec):
    got = m.parse_metric(metric)
    assert (got.kind, got.x, got.unit) == spec


@pytest.mark.parametrize("bad", ["D", "Dfoo", "V20", "V20cGy", "D101", "mean", "", "D-5"])
def test_unknown_metric_lists_grammar(bad):
    with pytest.raises(ValueError, match="Dmean"):
        m.parse_metric(bad)


def test_evaluate_matches_functions():
    g, dose, s = ramp_case()
    assert m.evaluate(dose, s, "Dmean") == m.mean_dose(dose, s)
    assert m.evaluate(dose, s, "Dmax") == m.max_dose(dose, s)
    assert m.evaluate(dose, s, "Dmin") == m.min_dose(dose, s)
    assert m.evaluate(dose, s, "D2") == m.dose_at_volume(dose, s, pct=2)
    assert m.evaluate(dose, s, "D0.03cc") == m.dose_at_volume(dose, s, cc=0.03)
    assert m.evaluate(dose, s, "V15Gy") == m.volume_at_dose(dose, s, 15.0)
    assert m.evaluate(dose, s, "V15Gy_cc") == m.volume_at_dose(dose, s, 15.0, unit="cc")


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_errors():
    g, dose, s = ramp_case()
    empty = Structure("empty", np.zeros(g.shape, bool), g, allow_empty=True)
    with pytest.raises(ValueError, match="empty"):
        m.mean_dose(dose, empty)
    with pytest.raises(ValueError, match="empty"):
        m.dvh(dose, empty)
    bad = dose.copy()
    bad[2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="dose contains 1 non-finite"):
        m.dose_at_volume(bad, s, pct=95)
    with pytest.raises(ValueError, match="grid="):
        m.mean_dose(dose[:, :, :-1], s)
    with pytest.raises(ValueError, match="grid"):
        m.mean_dose(dose, s, grid=Grid((2, 2, 2), (1, 1, 1)))
    with pytest.raises(TypeError, match="Structure"):
        m.mean_dose(dose, s.mask)
    with pytest.raises(TypeError, match="numeric"):
        m.mean_dose(np.full(g.shape, "a"), s)
    with pytest.raises(ValueError, match="exactly one"):
        m.dose_at_volume(dose, s)
    with pytest.raises(ValueError, match="exactly one"):
        m.dose_at_volume(dose, s, pct=5, cc=1)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        m.dose_at_volume(dose, s, pct=120)
    with pytest.raises(ValueError, match="holds only"):
        m.dose_at_volume(dose, s, cc=1e3)
    with pytest.raises(ValueError, match="unit"):
        m.volume_at_dose(dose, s, 10, unit="Gy")
    oar = box_structure(g, (slice(0, 1),), "oar")
    with pytest.raises(ValueError, match="no prescription"):
        m.paddick_ci(dose, oar)
    with pytest.raises(ValueError, match="rx"):
        m.paddick_ci(dose, s, rx=-1)
    with pytest.raises(ValueError, match="body"):
        m.paddick_ci(dose, s, body=np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="needs a target"):
        m.conformity_report(dose, [oar])
    with pytest.raises(ValueError, match="bins"):
        m.dvh(dose, s, bins=[3.0, 1.0])
    with pytest.raises(ValueError, match="fraction"):
        m.gradient_index(dose, s, fraction=1.5)


# ---------------------------------------------------------------------------------------------
# properties (small and quick)
# ---------------------------------------------------------------------------------------------
_G = Grid((3, 3, 3), (1.0, 2.0, 1.5))
_doses = hnp.arrays(np.float64, _G.shape, elements=st.floats(0, 80, allow_nan=False, allow_infinity=False))
_masks = hnp.arrays(np.bool_, _G.shape).filter(lambda a: a.any())


@settings(max_examples=30, deadline=None)
@given(dose=_doses, mask=_masks, rx=st.floats(0.5, 90))
def test_property_ci_in_unit_interval(dose, mask, rx):
    t = Structure("t", mask, _G, kind="target", prescription=rx)
    for f in (m.paddick_ci, m.coverage):
        v = f(dose, t)
        assert 0.0 <= v <= 1.0
    sel = m.selectivity(dose, t)
    assert np.isnan(sel) or 0.0 <= sel <= 1.0
    if not np.isnan(sel):
        assert m.paddick_ci(dose, t) == pytest.approx(m.coverage(dose, t) * sel)


@settings(max_examples=30, deadline=None)
@given(dose=_doses, mask=_masks, xs=st.lists(st.floats(0, 100), min_size=2, max_size=6))
def test_property_dvh_and_dx_monotone(dose, mask, xs):
    s = Structure("s", mask, _G)
    h = m.dvh(dose, s)
    assert np.all(np.diff(h.dose_gy) > 0)
    assert np.all(np.diff(h.volume_pct) <= 0)
    assert m.volume_at_dose(dose, s, 0.0) == 100.0
    xs = sorted(xs)
    dx = [m.dose_at_volume(dose, s, pct=x) for x in xs]
    assert all(a >= b - 1e-12 for a, b in zip(dx, dx[1:]))
    assert m.dose_at_volume(dose, s, pct=0) == dose[mask].max()
    assert m.dose_at_volume(dose, s, pct=100) == dose[mask].min()
    # integer ranks agree with the brute-force reference
    n = int(mask.sum())
    for k in range(1, n + 1):
        assert m.dose_at_volume(dose, s, pct=100.0 * k / n) == pytest.approx(brute_dx(dose[mask], k), abs=1e-9)
