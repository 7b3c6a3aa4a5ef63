"""Tests of the torch shot network trained through the point-kernel dose (patent 002, eqs 3-6) and of the
projected subgradient step of eq. 9."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rtlab.dose.pointkernel as pk  # noqa: E402
from rtlab.methods.gk import isocentres as iso  # noqa: E402
from rtlab.methods.gk import shotnet as sn  # noqa: E402
from rtlab.methods.gk.problem import PlanningProblem, build_problem, plan_loss  # noqa: E402


def test_torch_dose_equals_numba_and_numpy_kernel():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-15, 15, (400, 3))
    shots = rng.uniform(-5, 5, (3, 3))
    times = rng.uniform(0, 1, (3, 8, 3))
    times[1, 2] = 0.0  # a blocked sector
    model = pk.GammaKnifeModel(flatness=(1.0, 1.5, 2.0), sector_asymmetry=0.2)
    for m in (None, model):
        D = sn.torch_dose(torch.tensor(pts), torch.tensor(shots), torch.tensor(times), m).numpy()
        np.testing.assert_allclose(D, pk.dose(pts, shots, times, m, backend="numpy"), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(D, pk.dose(pts, shots, times, m), rtol=1e-10, atol=1e-12)


def test_torch_gradient_equals_analytic_vjp():
    """Autograd through torch_dose gives the numba kernel's analytic vector-Jacobian product (eq. 10)."""
    rng = np.random.default_rng(1)
    pts = rng.uniform(-12, 12, (300, 3))
    shots = rng.uniform(-4, 4, (2, 3))
    times = rng.uniform(0.1, 1, (2, 8, 3))
    g = rng.normal(size=300)
    s = torch.tensor(shots, requires_grad=True)
    t = torch.tensor(times, requires_grad=True)
    (torch.tensor(g) * sn.torch_dose(torch.tensor(pts), s, t)).sum().backward()
    gp, gt = pk.dose_vjp(pts, g, shots, times)
    np.testing.assert_allclose(s.grad.numpy(), gp, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(t.grad.numpy(), gt, rtol=1e-8, atol=1e-10)


def test_plan_loss_torch_equals_eq8():
    cases = sn.make_target_set(1, seed=4, spacing=2.0)
    c = cases[0]
    rng = np.random.default_rng(2)
    shots = c.centroid + rng.normal(0, 2, (2, 3))
    times = rng.uniform(0, 0.8, (2, 8, 3))
    pts, tens = sn.problem_tensors(c.problem)
    L = sn.plan_loss_torch(c.problem, sn.torch_dose(pts, torch.tensor(shots), torch.tensor(times)),
                           torch.tensor(times), tens)
    assert float(L) == pytest.approx(plan_loss(c.problem, shots, times)[0], rel=1e-10)


def test_target_set_split_and_image():
    a = sn.make_target_set(6, seed=3, spacing=2.0)
    b = sn.make_target_set(6, seed=3, spacing=2.0)
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))  # seeded
    tr, te = sn.split(a, 2, seed=0)
    assert len(tr) == 4 and len(te) == 2
    assert not {id(x) for x in tr} & {id(x) for x in te}
    img = a[0].image
    assert img.shape == (5, 20, 20, 20) and img.dtype == np.float32
    # the mask channel at the centre voxels (the centroid) is inside an ellipsoid target
    assert img[0, 9:11, 9:11, 9:11].mean() > 0.5
    assert img[1].min() < 0 < img[1].max()
    with pytest.raises(ValueError, match="n_test"):
        sn.split(a, 6)
    with pytest.raises(ValueError, match="empty"):
        sn.target_image(a[0].grid, np.zeros(a[0].grid.shape, bool))


def test_reduced_training_lowers_the_dose_loss_and_weights_round_trip(tmp_path):
    """End-to-end training through the dose: the eq. 8 loss falls; the saved weights predict the same plan."""
    cases = sn.make_target_set(6, seed=5, spacing=2.0)
    net = sn.ShotNet(n_shots=2, width=4, seed=0)
    hist = sn.train(net, cases, epochs=8, batch=3, lr=5e-3, max_points=200, threads=1)
    assert len(hist) == 8
    assert hist[-1] < 0.7 * hist[0]
    sn.save(net, tmp_path, {"note": "test"})
    net2, info = sn.load(tmp_path)
    assert info["note"] == "test" and info["n_shots"] == 2
    s1, t1 = net.predict_raw(cases[0])
    s2, t2 = net2.predict_raw(cases[0])
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    plan = sn.predict(net2, cases[0])
    assert np.all(plan.times >= 0)
    # every shot within the target's bounding box grown by 1 mm
    c = cases[0]
    assert np.all(np.abs(plan.shots - c.centroid) <= c.half_extent + 1.0 + 1e-9)


def test_supervised_mode_pulls_towards_the_reference_dose():
    cases = sn.make_target_set(2, seed=6, spacing=2.0)
    teacher = sn.ShotNet(n_shots=2, width=4, seed=3)
    refs = []
    for c in cases:
        s, t = teacher.predict_raw(c)
        refs.append(pk.dose(c.problem.points, s, t * 3.0))
    net = sn.ShotNet(n_shots=2, width=4, seed=0)
    hist = sn.train(net, cases, epochs=6, batch=2, lr=5e-3, mode="supervised", ref_doses=refs, max_points=200,
                    threads=1)
    assert hist[-1] < hist[0]
    with pytest.raises(ValueError, match="ref_doses"):
        sn.train(net, cases, mode="supervised")
    with pytest.raises(ValueError, match="shape"):
        sn.train(net, cases, mode="supervised", ref_doses=[np.zeros(3), np.zeros(3)])


def test_shipped_weights_load_and_document_their_training():
    net, info = sn.load_shipped()
    assert info["command"].startswith("python -m rtlab.methods.gk.shotnet")
    assert info["settings"]["set_seed"] == sn.DEFAULT["set_seed"]
    h = info["loss_history"]
    assert h[-1] < 0.5 * h[0]
    assert net.K == info["settings"]["n_shots"]


def test_load_rejects_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gk_shotnet"):
        sn.load(tmp_path)
    (tmp_path / sn.WEIGHTS).write_bytes(b"not a torch file")
    (tmp_path / sn.INFO).write_text(json.dumps({"n_shots": 2, "width": 4, "t_scale": 0.3}))
    with pytest.raises(ValueError, match="state dict"):
        sn.load(tmp_path)
    (tmp_path / sn.INFO).write_text("{")
    with pytest.raises(ValueError, match="not a shot-network"):
        sn.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# eq. 9: projected subgradient
# ---------------------------------------------------------------------------------------------
def _one_point_problem(lam=0.02, rx=20.0):
    """One target point at the shot, no organ samples: the optimum is known in closed form."""
    return PlanningProblem(pts_T=np.zeros((1, 3)), pts_O=np.zeros((0, 3)), wv_T=np.ones(1), wv_O=np.zeros(0),
                           d_T=rx, d_O=np.zeros(0), rx=rx, w_T=1.0, w_O=1.0, lam=lam,
                           bbox=np.array([[-2.0, 2.0]] * 3))


def test_subgradient_reaches_the_closed_form_optimum():
    """min (d_T - a T)^2 / rx^2 + lam T over the total 16 mm time T summed over sectors (a = A_16, the best
    dose rate of one sector at its focus):
    T* = (d_T - lam rx^2 / (2 a)) / a; the 4/8 mm columns give less dose per minute and stay at 0."""
    rx, lam = 20.0, 0.02
    prob = _one_point_problem(lam, rx)
    a = pk.default_model().params()[2, 0]  # Gy/min per minute of one 16 mm sector
    T = (rx - lam * rx**2 / (2 * a)) / a
    L_star = (rx - a * T) ** 2 / rx**2 + lam * T
    shots = np.zeros((1, 3))
    t0 = np.full((1, 8, 3), 0.5)
    s, t, hist = iso.optimize_pgd(prob, shots, t0, n_iter=100, lr_rel=1.0, step="subgradient")
    assert min(hist) == pytest.approx(L_star, rel=2e-3)
    assert hist[-1] < hist[0]
    assert t[0, :, 2].sum() == pytest.approx(T, rel=0.02)
    assert t[0, :, :2].sum() < 0.02 * T
    assert np.all(t >= 0)
    np.testing.assert_allclose(s, 0.0, atol=1e-6)  # the focus is a stationary point of the kernel


def test_subgradient_projection_keeps_constraints_and_decreases_loss():
    from rtlab.core.geometry import Grid

    g = Grid((24, 24, 24), (1.5, 1.5, 1.5))
    z, y, x = g.mesh()
    m = (z / 7) ** 2 + (y / 6) ** 2 + (x / 5) ** 2 <= 1
    prob = build_problem(g, m, 20.0, stride=3)
    shots, cols = iso.initial_shots(g, m, max_shots=3)
    shots = shots + 1.5  # push towards the bounding box so that the projection acts
    times = np.zeros((len(shots), 8, 3))
    times[np.arange(len(shots)), :, cols] = 0.5
    s, t, hist = iso.optimize_pgd(prob, shots, times, n_iter=30, lr_mm=2.0, step="subgradient")
    assert min(hist) < 0.7 * hist[0]  # slower than the Adam variant (0.5 in test_isocentres), but descending
    assert iso.plan_loss(prob, s, t)[0] == pytest.approx(min(hist))
    assert np.all(t >= 0)
    assert np.all(s >= prob.bbox[:, 0] - 1e-12) and np.all(s <= prob.bbox[:, 1] + 1e-12)
    with pytest.raises(ValueError, match="step"):
        iso.optimize_pgd(prob, shots, times, n_iter=2, step="newton")
