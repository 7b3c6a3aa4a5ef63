"""Fluence smoothing penalties, filters and metrics (paper 003)."""

import numpy as np
import pytest

from rtlab.methods import smoothing as sm
from rtlab.methods.sequencing import TNMUPenalty, tnmu

SHAPES = [(4, 6), (3, 5)]


def _fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize(
    "term",
    [sm.CurvaturePenalty(SHAPES, 0.7), sm.L1Penalty(SHAPES, 1.3, eps=0.05), sm.L2Penalty(SHAPES, 0.9),
     sm.ExplicitSmoothingPenalty(np.linspace(0, 1, 39), weights=np.linspace(0.5, 2, 39))],
)
def test_penalty_gradients_match_finite_differences(term):
    rng = np.random.default_rng(3)
    x = rng.random(39) * 2
    assert np.allclose(term.gradient(x), _fd_grad(term.value, x), rtol=1e-5, atol=1e-6)


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


def test_tnmu_penalty_gradient_and_bound():
    rng = np.random.default_rng(4)
    x = rng.random(39) * 3
    pen = TNMUPenalty(SHAPES, tnmu0=1.0, mu_per_unit=[2.0, 0.5], s=0.1, tau=0.3)
    maps = sm.split_maps(x, SHAPES)
    assert pen.exact_tnmu(x) == pytest.approx(tnmu([2 * maps[0], 0.5 * maps[1]]))
    assert pen.smooth_tnmu(x) >= pen.exact_tnmu(x) - 1e-9
    assert np.allclose(pen.gradient(x), _fd_grad(pen.value, x), rtol=1e-4, atol=1e-5)
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
