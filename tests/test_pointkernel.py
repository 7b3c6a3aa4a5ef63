"""Tests of the Gamma-Knife-like point-kernel dose (rtlab.dose.pointkernel, patent 002 eqs 7, 10)."""

import numpy as np
import pytest

import rtlab.dose.pointkernel as pk
from rtlab.geometry import Grid

RNG = np.random.default_rng(42)
GRID = Grid((17, 19, 21), (1.5, 1.5, 1.5))
SHOTS = np.array([[0.5, -1.0, 2.0], [-3.0, 2.5, -1.5]])
TIMES = RNG.uniform(0.0, 1.0, (2, 8, 3))
TIMES[0, 3, 1] = 0.0  # a blocked sector-collimator slot


def test_numba_matches_numpy_reference():
    d_nb = pk.dose(GRID, SHOTS, TIMES)
    d_np = pk.dose(GRID, SHOTS, TIMES, backend="numpy")
    assert d_nb.shape == GRID.shape
    np.testing.assert_allclose(d_nb, d_np, rtol=1e-12, atol=1e-12)


def test_vjp_numba_matches_numpy_and_influence():
    g = RNG.normal(size=GRID.shape)
    gp, gt = pk.dose_vjp(GRID, g, SHOTS, TIMES)
    gp2, gt2 = pk.dose_vjp(GRID, g, SHOTS, TIMES, backend="numpy")
    np.testing.assert_allclose(gp, gp2, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gt, gt2, rtol=1e-10, atol=1e-10)
    A = pk.influence_matrix(GRID, SHOTS)
    np.testing.assert_allclose(A @ TIMES.ravel(), pk.dose(GRID, SHOTS, TIMES).ravel(), rtol=1e-12)
    np.testing.assert_allclose(A, pk.influence_matrix(GRID, SHOTS, backend="numpy"), rtol=1e-12)
    # dL/dt of L = g . D is A^T g exactly (D is linear in t)
    np.testing.assert_allclose(gt.ravel(), A.T @ g.ravel(), rtol=1e-10)


def test_gradients_match_finite_differences():
    """Analytic dL/dr' and dL/dt (eq. 10) vs central differences of L = sum g D."""
    pts = pk.grid_points(GRID)[::7]
    g = RNG.normal(size=pts.shape[0])
    gp, gt = pk.dose_vjp(pts, g, SHOTS, TIMES)

    def L(s, t):
        return g @ pk.dose(pts, s, t)

    h = 1e-4
    for i in range(2):
        for a in range(3):
            e = np.zeros_like(SHOTS)
            e[i, a] = h
            fd = (L(SHOTS + e, TIMES) - L(SHOTS - e, TIMES)) / (2 * h)
            assert fd == pytest.approx(gp[i, a], rel=1e-5, abs=1e-6)
    for idx in [(0, 0, 0), (1, 5, 2), (1, 3, 1)]:
        e = np.zeros_like(TIMES)
        e[idx] = h
        fd = (L(SHOTS, TIMES + e) - L(SHOTS, TIMES - e)) / (2 * h)
        assert fd == pytest.approx(gt[idx], rel=1e-6)


def test_kernel_gradient_matches_finite_differences():
    u = RNG.normal(0, 6, (20, 3))
    u[0] = 0.0  # the focus: smooth there, gradient zero
    for col in pk.COLLIMATORS_MM:
        for s in (0, 5):
            gk = pk.kernel_gradient(u, col, s)
            h = 1e-5
            for a in range(3):
                e = np.zeros(3)
                e[a] = h
                fd = (pk.kernel(u + e, col, s) - pk.kernel(u - e, col, s)) / (2 * h)
                np.testing.assert_allclose(gk[:, a], fd, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(gk[0], 0.0, atol=1e-12)


def _fwhm(profile_fn, step=0.01, rmax=40.0):
    r = np.arange(0, rmax, step)
    v = profile_fn(r)
    return 2 * r[np.argmax(v < v[0] / 2)]


def test_kernel_physics_matches_documented_parameters():
    m = pk.default_model()
    t = np.zeros((1, 8, 3))
    t[0, :, 2] = 1.0  # 16 mm, all sectors, 1 minute
    assert pk.dose(np.zeros((1, 3)), [[0, 0, 0]], t)[0] == pytest.approx(3.0, rel=1e-12)  # Gy/min at the focus
    for c, (col, of) in enumerate(zip(pk.COLLIMATORS_MM, m.output_factors)):
        t = np.zeros((1, 8, 3))
        t[0, :, c] = 1.0
        assert pk.dose(np.zeros((1, 3)), [[0, 0, 0]], t)[0] == pytest.approx(3.0 * of)

        def along(axis):
            def f(r):
                p = np.zeros((r.size, 3))
                p[:, axis] = r
                return pk.dose(p, [[0, 0, 0]], t)
            return f
        fx, fy, fz = _fwhm(along(2)), _fwhm(along(1)), _fwhm(along(0))
        # the tail adds a little to the core's FWHM; the 8-sector sum is symmetric in x/y
        assert fx == pytest.approx(m.fwhm_xy[c], rel=0.08)
        assert fy == pytest.approx(fx, rel=0.01)
        assert fz / fx == pytest.approx(m.z_ratio[c], rel=0.05)
    # a single sector is elongated along its own beam direction (azimuth 22.5 deg)
    e = m.sector_directions()[0]
    perp = np.array([0.0, e[2], -e[1]])
    assert pk.kernel(5 * e, 8, 0) > pk.kernel(5 * perp, 8, 0)
    # monotone fall-off along a ray
    r = np.linspace(0, 40, 200)[:, None] * np.array([[0.3, 0.5, 0.8]])
    assert np.all(np.diff(pk.kernel(r, 16, 3)) < 0)


def test_indices_subset_matches_full_grid():
    full = pk.dose(GRID, SHOTS, TIMES)
    mask = full > np.percentile(full, 70)
    flat = np.flatnonzero(mask.ravel())
    np.testing.assert_allclose(pk.dose(GRID, SHOTS, TIMES, indices=flat), full[mask])
    np.testing.assert_allclose(pk.dose(GRID, SHOTS, TIMES, indices=mask), full[mask])
    np.testing.assert_allclose(pk.dose(GRID, SHOTS, TIMES, indices=np.argwhere(mask)), full[mask])


def test_beam_on_time():
    t = np.zeros((2, 8, 3))
    t[0, 2] = [1.0, 2.0, 0.0]  # sector 2 busiest: 3 min
    t[0, 5] = [0.5, 0.0, 0.0]
    t[1, :, 1] = 0.7
    assert pk.beam_on_time(t) == pytest.approx(3.7)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="times"):
        pk.dose(GRID, SHOTS, np.ones((2, 8, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        pk.dose(GRID, SHOTS, -TIMES)
    with pytest.raises(ValueError, match="shots"):
        pk.dose(GRID, [[np.nan, 0, 0]], np.ones((1, 8, 3)))
    with pytest.raises(ValueError, match="indices"):
        pk.dose(GRID, SHOTS, TIMES, indices=np.array([GRID.size + 3]))
    with pytest.raises(ValueError, match="backend"):
        pk.dose(GRID, SHOTS, TIMES, backend="cuda")
    with pytest.raises(ValueError, match="flatness"):
        pk.GammaKnifeModel(flatness=(0.5, 1, 1))
    with pytest.raises(ValueError, match="collimator"):
        pk.kernel(np.zeros(3), 10, 0)
    with pytest.raises(ValueError, match="grad_dose"):
        pk.dose_vjp(GRID, np.ones(5), SHOTS, TIMES)
    with pytest.raises(TypeError):
        pk.dose(GRID, SHOTS, TIMES, model="gk")
