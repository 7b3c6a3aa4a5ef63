"""Fluence smoothing penalties, filters and metrics (paper 003)."""

import numpy as np
import pytest

from rtlab.methods import smoothing as sm
from rtlab.methods.sequencing import TNMUPenalty, tnmu

SHAPES = [(4, 6), (3, 5)]


@pytest.mark.parametrize(
    "term",
    [sm.CurvaturePenalty(SHAPES, 0.7), sm.L1Penalty(SHAPES, 1.3, eps=0.05), sm.L2Penalty(SHAPES, 0.9),
     sm.ExplicitSmoothingPenalty(np.linspace(0, 1, 39), weights=np.linspace(0.5, 2, 39))],
)
def test_penalty_gradients_match_finite_differences(term, fd_grad):
    rng = np.random.default_rng(3)
    x = rng.random(39) * 2
    assert np.allclose(term.gradient(x), fd_grad(term.value, x), rtol=1e-5, atol=1e-6)


def test_l2_penalty_closed_form():
    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    # pairs: vertical (0-2)^2+(1-4)^2 = 13, horizontal (0-1)^2+(2-4)^2 = 5,
    # diagonal (0-4)^2/2 = 8, anti-diagonal (1-2)^2/2 = 0.5
    assert sm.L2Penalty([(2, 2)]).value(m.ravel()) == pytest.approx(26.5)


def test_curvature_zero_on_linear_ramp_and_positive_on_peak():
    ramp = np.tile(np.arange(6.0), (3, 1))
    assert sm.CurvaturePenalty([(3, 6)]).value(ramp.ravel()) == pytest.approx(0.0)
    peak = np.zeros((1, 5))
    peak[0, 2] = 1
    # curvature at the peak: 2 / (1 + 0)^2 = 2; at its neighbours -1 / (1 + 1/4)^2
    expect = 2.0**2 + 2 * (1 / 1.25**2) ** 2
    assert sm.CurvaturePenalty([(1, 5)]).value(peak.ravel()) == pytest.approx(expect)


def test_tnmu_penalty_gradient_and_bound(fd_grad):
    rng = np.random.default_rng(4)
    x = rng.random(39) * 3
    pen = TNMUPenalty(SHAPES, tnmu0=1.0, mu_per_unit=[2.0, 0.5], s=0.1, tau=0.3)
    maps = sm.split_maps(x, SHAPES)
    assert pen.exact_tnmu(x) == pytest.approx(tnmu([2 * maps[0], 0.5 * maps[1]]))
    assert pen.smooth_tnmu(x) >= pen.exact_tnmu(x) - 1e-9
    assert np.allclose(pen.gradient(x), fd_grad(pen.value, x), rtol=1e-4, atol=1e-5)
    loose = TNMUPenalty(SHAPES, tnmu0=1e6)
    assert loose.value(x) == 0 and not loose.gradient(x).any()


def test_convolution_preserves_flat_maps_and_total():
    flat = np.full((3, 8), 2.0)
    assert np.allclose(sm.convolve_along_leaves(flat), flat)
    rng = np.random.default_rng(5)
    f = rng.random((5, 12))
    out = sm.convolve_along_leaves(f, (0.25, 0.5, 0.25))
    # only the leaf direction is smoothed: rows stay independent
    assert np.allclose(out[2], sm.convolve_along_leaves(f[2:3])[0])
    assert np.abs(np.diff(out, axis=1)).sum() < np.abs(np.diff(f, axis=1)).sum()
    with pytest.raises(ValueError, match="odd"):
        sm.convolve_along_leaves(f, (0.5, 0.5))


def test_eta_closed_forms():
    one_peak = np.zeros((2, 6))
    one_peak[:, 1:5] = 1.0  # projection 0,2,2,2,2,0: rise 2, integral 8
    assert sm.smoothness_eta(one_peak) == pytest.approx(2 / 8)
    two_peaks = np.zeros((2, 6))
    two_peaks[:, [1, 2, 4]] = 1.0  # projection 0,2,2,0,2,0: rises 2+2, integral 6
    assert sm.smoothness_eta(two_peaks) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="zero"):
        sm.smoothness_eta(np.zeros((2, 2)))


def test_theta_is_zero_for_symmetric_and_scales_with_total():
    sq = np.ones((6, 6))
    assert sm.tongue_groove_theta(sq) == pytest.approx(0.0)
    stripe = np.zeros((6, 6))
    stripe[:, 2:4] = 1.0
    t = sm.tongue_groove_theta(stripe)
    assert t > 0 and sm.tongue_groove_theta(3 * stripe) == pytest.approx(3 * t)


def test_anisotropic_diffusion_smooths_along_leaves_more():
    rng = np.random.default_rng(6)
    f = 5 + rng.random((20, 20))
    out = sm.anisotropic_diffusion(f, n_iter=40, prior="input", beta=0.0)
    assert np.all(out >= 0)
    rough = lambda m, ax: np.abs(np.diff(m, axis=ax)).mean()
    assert rough(out, 1) < 0.5 * rough(f, 1)
    assert rough(out, 1) / rough(f, 1) < rough(out, 0) / rough(f, 0)
    # a flat map is a fixed point
    flat = np.full((8, 8), 3.0)
    assert np.allclose(sm.anisotropic_diffusion(flat, n_iter=10), flat)
    with pytest.raises(ValueError, match="dt"):
        sm.anisotropic_diffusion(f, dt=1.0)


def test_nlm_prior_constant_and_denoises():
    assert np.allclose(sm.nlm_prior(np.full((6, 7), 2.0)), 2.0)
    rng = np.random.default_rng(7)
    clean = np.zeros((16, 16))
    clean[4:12, 4:12] = 10
    noisy = clean + rng.normal(0, 1, clean.shape)
    den = sm.nlm_prior(noisy)
    assert np.abs(den - clean).mean() < 0.7 * np.abs(noisy - clean).mean()


def test_bad_maps():
    with pytest.raises(ValueError, match="2D"):
        sm.smoothness_eta(np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        sm.convolve_along_leaves(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="shapes"):
        sm.L2Penalty([(2, 2)]).value(np.ones(5))


# ------------------------------------------------------------------------------------------
# bridge to the optimiser: penalties as beamlet-space terms on a real influence matrix
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_im():
    from rtlab.dose import build_influence
    from rtlab.phantoms import get_phantom

    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    return case, build_influence(case, [0.0, 120.0, 240.0], progress=False, cutoff_mm=20.0)


def test_weights_maps_round_trip_and_zero_outside_masks(small_im):
    _, im = small_im
    x = np.random.default_rng(0).random(im.shape[1])
    flat = sm.weights_to_maps(im, x)
    assert flat.size == sum(r * c for r, c in sm.map_shapes(im))
    np.testing.assert_array_equal(sm.maps_to_weights(im, flat), x)
    masks = np.concatenate([b.bixels.mask.ravel() for b in im.beams])
    assert np.all(flat[~masks] == 0) and np.count_nonzero(flat[masks]) == x.size
    np.testing.assert_allclose(sm.apply_per_beam(im, lambda m: 2 * m, x), 2 * x)


@pytest.mark.parametrize("penalty", ["L2", "curvature", "L1", "TNMU", "explicit"])
def test_as_term_gradient_matches_finite_differences(small_im, penalty):
    _, im = small_im
    shapes = sm.map_shapes(im)
    n_flat = sum(r * c for r, c in shapes)
    pen = {"L2": lambda: sm.L2Penalty(shapes), "curvature": lambda: sm.CurvaturePenalty(shapes),
           "L1": lambda: sm.L1Penalty(shapes, eps=0.1), "TNMU": lambda: TNMUPenalty(shapes, tnmu0=1.0),
           "explicit": lambda: sm.ExplicitSmoothingPenalty(np.linspace(0.2, 1.0, n_flat),
                                                           np.linspace(0.5, 2.0, n_flat))}[penalty]()
    term = sm.as_term(pen, im, weight=0.7, name=penalty)
    assert term.space == "beamlet"
    rng = np.random.default_rng(1)
    x = rng.random(im.shape[1]) + 0.5
    v, g = term.value_and_gradient(x)
    # value equals the penalty on the scattered maps (an independent path)
    assert v == pytest.approx(0.7 * pen.value(sm.weights_to_maps(im, x)))
    for k in rng.choice(x.size, 6, replace=False):
        e = np.zeros_like(x); e[k] = 1e-5
        fd = (term.value(x + e) - term.value(x - e)) / 2e-5
        assert g[k] == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_as_term_in_an_objective_smooths_the_optimised_fluence(small_im):
    from rtlab.methods.beam_angles import default_objective, optimise_beams
    from rtlab.optimize import Objective

    case, im = small_im
    obj = default_objective(case, im, "quadratic")
    x0, _ = optimise_beams(im, obj, max_iter=40)
    term = sm.as_term(sm.L2Penalty(sm.map_shapes(im)), im, weight=1e-2, name="L2 (eq. 3)")
    x1, _ = optimise_beams(im, Objective(list(obj.terms) + [term]), max_iter=40)

    def eta(x):
        return np.mean([sm.smoothness_eta(m) for m in sm.split_maps(sm.weights_to_maps(im, x), sm.map_shapes(im))])

    assert term.value(x1) < term.value(x0)
    assert eta(x1) < eta(x0)
    # copying the objective copies the bixel grids, not the influence matrix
    assert not hasattr(term.copy().im, "matrix")


def test_as_term_rejects_mismatched_shapes_and_non_penalties(small_im):
    _, im = small_im
    with pytest.raises(ValueError, match="map_shapes"):
        sm.as_term(sm.L2Penalty([(3, 3)]), im)
    with pytest.raises(TypeError, match="value"):
        sm.as_term(object(), im)
    with pytest.raises(ValueError, match="beamlets"):
        sm.weights_to_maps(im, np.ones(3))
    with pytest.raises(TypeError, match="influence matrix"):
        sm.map_shapes(np.ones(3))
