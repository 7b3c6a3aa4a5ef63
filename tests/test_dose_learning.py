"""Tests of learning shot parameters through the differentiable dose (patent 002, eq. 5)."""

import numpy as np
import pytest

import rtlab.dose.pointkernel as pk
from rtlab.methods import dose_learning as dl


def _tiny():
    samples = dl.make_targets(2, seed=3, spacing=3.0, size_mm=33.0, problem_kw=dict(shell_mm=5.0))
    model = dl.ShotMLP(n_shots=2, n_hidden=4, seed=1)
    return samples, model


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_gradient_through_model_matches_finite_differences(mode):
    """dL/dtheta = dL/dD . dD/dy . dy/dtheta vs central differences on the flat parameters."""
    samples, model = _tiny()
    s = samples[0]
    if mode == "supervised":
        teacher = dl.ShotMLP(n_shots=2, n_hidden=4, seed=7)
        sh, t, _ = teacher.forward(s.features, s.grid.center)
        s.ref_dose = pk.dose(s.problem.points, sh, t)
    L, grads = dl.sample_loss(model, s, mode)
    g = np.concatenate([x.ravel() for x in grads])
    theta = model.get_flat()
    rng = np.random.default_rng(0)
    h = 1e-6
    for j in rng.choice(theta.size, 12, replace=False):
        e = np.zeros_like(theta)
        e[j] = h
        model.set_flat(theta + e)
        lp = dl.sample_loss(model, s, mode)[0]
        model.set_flat(theta - e)
        lm = dl.sample_loss(model, s, mode)[0]
        model.set_flat(theta)
        assert (lp - lm) / (2 * h) == pytest.approx(g[j], rel=1e-4, abs=1e-8 * max(1.0, abs(L)))


def test_unsupervised_training_lowers_the_plan_loss():
    samples = dl.make_targets(4, seed=5, spacing=2.0, size_mm=36.0)
    model = dl.ShotMLP(n_shots=2, n_hidden=16, seed=0)
    seen = []
    hist = dl.train(model, samples, mode="unsupervised", epochs=12, lr=1e-2, callback=lambda e, l: seen.append(l))
    assert seen == hist and len(hist) == 12
    assert hist[-1] < 0.3 * hist[0]
    assert min(hist[-3:]) <= min(hist[:3])


def test_supervised_training_recovers_reference_dose():
    """Reference parameters from a teacher model; the student's dose approaches the teacher's."""
    samples = dl.make_targets(4, seed=6, spacing=2.0, size_mm=36.0)
    teacher = dl.ShotMLP(n_shots=2, n_hidden=8, seed=11)
    for s in samples:
        sh, t, _ = teacher.forward(s.features, s.grid.center)
        s.ref_dose = pk.dose(s.problem.points, sh, t)
    student = dl.ShotMLP(n_shots=2, n_hidden=8, seed=2)
    hist = dl.train(student, samples, mode="supervised", epochs=15, lr=1e-2)
    assert hist[-1] < 0.2 * hist[0]


def test_features_of_an_ellipsoid():
    s = dl.make_targets(1, seed=8, spacing=1.0, size_mm=40.0)[0]
    z, y, x = s.grid.mesh()
    f = s.features
    # an axis-aligned ellipsoid: the features recover its semi-axes to within a voxel
    idx = np.argwhere(s.mask)
    ext = (idx.max(0) - idx.min(0) + 1) * np.asarray(s.grid.spacing) / 2
    np.testing.assert_allclose(f[3:], ext, atol=1.0)
    with pytest.raises(ValueError, match="empty"):
        dl.target_features(s.grid, np.zeros(s.grid.shape, bool))


def test_model_outputs_are_feasible():
    s = dl.make_targets(1, seed=9, spacing=2.0, size_mm=36.0)[0]
    m = dl.ShotMLP(n_shots=3, seed=4)
    shots, times, _ = m.forward(s.features, s.grid.center)
    assert shots.shape == (3, 3) and times.shape == (3, 8, 3)
    assert np.all(times >= 0)
    c, a = s.features[:3] + s.grid.center, s.features[3:]
    assert np.all(np.abs(shots - c) <= 0.8 * a + 1e-9)
    with pytest.raises(ValueError, match="mode"):
        dl.sample_loss(m, s, "reinforcement")
    with pytest.raises(ValueError, match="ref_dose"):
        dl.sample_loss(m, s, "supervised")
