"""Linac geometry gradients (patent 002, eq. 10 for the pencil-beam engine) against the numba engine."""

import dataclasses

import numpy as np
import pytest

from rtlab.dose.influence import build_influence, prepare_beams
from rtlab.methods import beam_angles as ba
from rtlab.methods import geometry_gradients as gg
from rtlab.phantoms import get_phantom

CUT = 220.0  # holds the whole lateral kernel (4 x the widest Gaussian, 51.5 mm), so the cut-off adds no steps


@pytest.fixture(scope="module")
def water():
    """A water box (density 1 everywhere, all voxels): the entry surface is the grid's flat face."""
    c = get_phantom("sphere", spacing=5.0, radius=12.0)
    return dataclasses.replace(c, ct=np.zeros(c.grid.shape, np.float32), density=np.ones(c.grid.shape, np.float32))


@pytest.fixture(scope="module")
def sphere():
    return get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)


def _beam(case, gantry, seed=0):
    b = prepare_beams(case, [gantry])[0]
    return b, np.random.default_rng(seed).uniform(0.5, 1.5, b.bixels.n)


def test_analytic_dose_is_the_engine_dose(water):
    b, w = _beam(water, 30.0)
    # every Gaussian in the sparse matrix: the same truncated model, entry by entry
    ig = gg.dose_iso_gradient(water, b, w, voxels="all", cutoff_mm=40.0, broad_sigma_mm=None)
    de = gg.engine_beam_dose(water, b, w, voxels="all", cutoff_mm=40.0, broad_sigma_mm=None)
    assert de.max() > 0
    np.testing.assert_allclose(ig.dose, de, rtol=0, atol=1e-5 * de.max())
    # the default split: broad Gaussians untruncated on both sides, the engine's through node grids
    ig = gg.dose_iso_gradient(water, b, w, voxels="all")
    de = gg.engine_beam_dose(water, b, w, voxels="all")
    assert np.abs(ig.dose - de).max() < 2e-3 * de.max()


@pytest.mark.parametrize("gantry", [0.0, 30.0])
def test_iso_gradient_matches_engine_finite_differences(water, gantry):
    b, w = _beam(water, gantry, seed=1)
    ig = gg.dose_iso_gradient(water, b, w, voxels="all", cutoff_mm=CUT)
    deep = ig.depth >= 5.0  # beyond the build-up (see the module docstring)
    assert deep.sum() > 1000
    for a, p in enumerate("zyx"):
        fd = gg.dose_geometry_fd(water, b, w, p, h=0.5, voxels="all", cutoff_mm=CUT)
        sc = np.abs(fd).max()
        assert sc > 0
        err = np.abs(ig.grad[deep, a] - fd[deep]).max() / sc
        rms = np.sqrt(np.mean((ig.grad[deep, a] - fd[deep]) ** 2) / np.mean(fd[deep] ** 2))
        assert err < 0.04 and rms < 0.03, (p, err, rms)
        # the gradient is not trivially small: it carries the field edges
        assert np.abs(ig.grad[:, a]).max() > 0.5 * sc


def test_objective_iso_gradient_analytic_vs_fd(sphere):
    beams = prepare_beams(sphere, [0.0, 120.0, 240.0])
    im = build_influence(sphere, beams, cutoff_mm=CUT, voxels="body", progress=False, gpu=False)
    obj = ba.default_objective(sphere, im, "quadratic")
    x, _ = ba.optimise_beams(im, obj, max_iter=20)
    # a set-up error of a few mm: the gradient must point the isocentre back
    off = np.array([4.0, 3.0, -5.0])
    moved = [gg.shifted_beam(b, off) for b in beams]
    f_a, g_a = gg.objective_iso_gradient(sphere, moved, x, obj, cutoff_mm=CUT)
    f_f, g_f = gg.objective_iso_gradient(sphere, moved, x, obj, cutoff_mm=CUT, method="fd", h=0.5)
    assert g_a @ off > 0.5 * np.linalg.norm(g_a) * np.linalg.norm(off)
    assert f_a == pytest.approx(f_f)
    assert np.linalg.norm(g_f) > 0
    assert np.linalg.norm(g_a - g_f) <= 0.05 * np.linalg.norm(g_f)


def test_angle_gradient_is_a_descent_direction_and_consistent(sphere):
    beams = prepare_beams(sphere, [10.0, 130.0, 250.0])
    im = build_influence(sphere, beams, cutoff_mm=25.0, voxels="body", progress=False, gpu=False)
    obj = ba.default_objective(sphere, im, "quadratic")
    x, _ = ba.optimise_beams(im, obj, max_iter=20)
    # the same fluence delivered from turned gantries: the gradient must turn them back
    turn = np.array([6.0, -6.0, 6.0])
    beams = [gg.shifted_beam(b, d_gantry=d) for b, d in zip(beams, turn)]
    f, g1 = gg.objective_angle_gradient(sphere, beams, x, obj, cutoff_mm=25.0, h=1.0)
    _, g2 = gg.objective_angle_gradient(sphere, beams, x, obj, cutoff_mm=25.0, h=2.0)
    assert g1 @ turn > 0
    assert np.linalg.norm(g1) > 0
    assert np.linalg.norm(g1 - g2) < 0.25 * np.linalg.norm(g1)
    # an independent evaluation: all beams turned a little along -g (same bixels), one engine build
    step = -1.0 * g1 / np.abs(g1).max()
    moved = [gg.shifted_beam(b, d_gantry=s) for b, s in zip(beams, step)]
    im2 = build_influence(sphere, moved, cutoff_mm=25.0, voxels="body", progress=False, gpu=False)
    f2 = obj.value(im2.matvec(x))
    assert f2 < f
    assert f2 - f == pytest.approx(g1 @ step, rel=0.5)


def test_refine_beam_angles_lowers_the_objective(sphere):
    rows = []
    r = gg.refine_beam_angles(sphere, [0.0, 30.0, 60.0], n_iter=2, fluence_iter=20, cutoff_mm=20.0,
                              callback=rows.append)
    assert len(rows) == len(r.history) >= 2
    obj = [h["objective"] for h in r.history]
    assert np.all(np.diff(obj) <= 1e-12)
    assert r.objective < r.objective0
    assert np.any(np.abs(r.angles - r.angles0) > 0.1)
    assert 0.0 < r.ci <= 1.0 and 0.0 < r.ci0 <= 1.0
    s = r.summary()
    assert s["objective_after"] == r.objective and len(s["angles_after"]) == 3
    assert list(r.table().columns)[:3] == ["iteration", "objective", "ci_paddick"]


def test_bad_input(water):
    b, w = _beam(water, 0.0)
    with pytest.raises(ValueError, match="iso_shift"):
        gg.shifted_beam(b, (1.0, 2.0))
    with pytest.raises(ValueError, match="param"):
        gg.dose_geometry_fd(water, b, w, "couch")
    with pytest.raises(ValueError, match="weights"):
        gg.engine_beam_dose(water, b, w[:-1])
    with pytest.raises(ValueError, match="NaN"):
        gg.dose_iso_gradient(water, b, np.full(w.size, np.nan))
    with pytest.raises(TypeError, match="Beam"):
        gg.dose_iso_gradient(water, 0.0, w)
    with pytest.raises(ValueError, match="method"):
        gg.objective_iso_gradient(water, [b], w, None, method="ad")
    with pytest.raises(ValueError, match="angles"):
        gg.refine_beam_angles(water, [np.nan])


@pytest.mark.parametrize("gantry", [0.0, 30.0])
def test_gantry_gradient_matches_engine_finite_differences(water, gantry):
    """Analytic dD/d(gantry) (rotation of the projection + depth change) against central differences of the engine."""
    b, w = _beam(water, gantry, seed=1)
    gr = gg.dose_gantry_gradient(water, b, w, voxels="all", cutoff_mm=CUT)
    np.testing.assert_allclose(gr.grad, gr.geometric + gr.depth_term)
    fd = gg.dose_geometry_fd(water, b, w, "gantry", h=0.5, voxels="all", cutoff_mm=CUT)
    deep = gr.depth >= 5.0
    sc = np.abs(fd).max()
    assert sc > 0 and np.abs(gr.grad).max() > 0.5 * sc
    err = np.abs(gr.grad[deep] - fd[deep]).max() / sc
    rms = np.sqrt(np.mean((gr.grad[deep] - fd[deep]) ** 2) / np.mean(fd[deep] ** 2))
    assert err < 0.06 and rms < 0.03, (err, rms)  # measured 0.006/0.005 at 0 deg, 0.048/0.017 at 30 deg


def test_gantry_gradient_depth_term_on_a_curved_surface():
    """Sphere phantom (air around a round body): the depth term brings the analytic derivative closer to the engine's."""
    c = get_phantom("sphere", spacing=5.0, radius=12.0)
    b, w = _beam(c, 30.0, seed=1)
    gr = gg.dose_gantry_gradient(c, b, w, voxels="all", cutoff_mm=CUT)
    fd = gg.dose_geometry_fd(c, b, w, "gantry", h=1.0, voxels="all", cutoff_mm=CUT)
    deep = gr.depth >= 10.0  # the fan look-up near a curved surface makes the engine's differences noisy
    sc = np.abs(fd).max()

    def rms(g):
        return np.sqrt(np.mean((g[deep] - fd[deep]) ** 2) / np.mean(fd[deep] ** 2))

    assert np.abs(gr.grad[deep] - fd[deep]).max() / sc < 0.07  # measured 0.044
    assert rms(gr.grad) < 0.08  # measured 0.051
    assert rms(gr.grad) < rms(gr.geometric)  # measured 0.051 against 0.066 without the depth term
    assert np.abs(gr.depth_term).max() > 0.01 * sc
    with pytest.raises(ValueError, match="step_mm"):
        gg.dose_gantry_gradient(c, b, w, step_mm=0.0)
