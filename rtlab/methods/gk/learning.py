"""Learning shot parameters through the differentiable dose (patent 002, "learning use", eqs 3-6).

A small numpy MLP ``f_theta`` maps a target's feature vector ``x`` (centroid and semi-axes)
to Gamma-Knife shot parameters ``y = (shot positions, times)``. It is trained with a
**dose-based loss**: the dose of the predicted parameters, computed by the analytic point
kernel of :mod:`rtlab.dose.pointkernel`, enters the loss, and the gradient flows back by the
chain rule (patent 002, eq. 5)::

    dL/dtheta = dL/dD . dD/dy . dy/dtheta

``dL/dD`` is elementwise, ``dD/dy`` is the point kernel's analytic vector-Jacobian product
(:func:`rtlab.dose.pointkernel.dose_vjp`) and ``dy/dtheta`` is ordinary back-propagation
through the MLP. Two training modes (patent 002, FIG. 3):

* ``'supervised'``: the loss compares the predicted dose with the dose of reference
  parameters (plans from the iterative optimiser :func:`rtlab.methods.gk.plan_gamma_knife`)
  at the planning samples: ``L = sum_r wv (D_pred(r) - D_ref(r))^2 / (rx^2 sum wv)``;
* ``'unsupervised'``: the loss is the plan loss of eq. 8 of the predicted dose only.

Model output (our parametrisation): ``K`` shots; shot ``k`` at ``centroid + 0.8 a * tanh(o_k)``
(``a`` = the target's semi-axes, so shots stay inside the target's bounding box); one time per
shot and collimator, shared by the 8 sectors, ``t_kc = t_scale * softplus(o_kc)`` (so ``t >= 0``
without a projection).

Synthetic target family (:func:`make_targets`): axis-aligned ellipsoids with random centre and
random semi-axes, on a small grid; features = centroid (mm, relative to the grid centre) and
the semi-axes ``sqrt(5 var)`` estimated from the mask's second moments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ...core.geometry import Grid
from ...dose import pointkernel as pk
from .isocentres import blas_single_thread
from .plan import plan_gamma_knife
from .problem import GKPlan, PlanningProblem, build_problem, evaluate_plan, loss_from_dose, normalize_coverage

__all__ = [
    "TargetSample",
    "target_features",
    "make_targets",
    "add_reference",
    "ShotMLP",
    "sample_loss",
    "train",
    "predict_plan",
    "evaluate_model",
    "compare_with_optimizer",
]


@dataclass
class TargetSample:
    """One training / test target: grid, mask, prescription, features, eq. 8 problem.

    ``ref_dose`` (Gy at ``problem.points``) and ``ref_plan`` are filled by
    :func:`add_reference` for supervised training.
    """

    grid: Grid
    mask: np.ndarray
    rx: float
    features: np.ndarray
    problem: PlanningProblem
    ref_dose: np.ndarray | None = None
    ref_plan: GKPlan | None = None
    ref_metrics: dict | None = None
    ref_seconds: float | None = None


def target_features(grid: Grid, mask) -> np.ndarray:
    """Feature vector of a target: ``[cz, cy, cx, az, ay, ax]`` in mm.

    ``c`` = centroid relative to the grid centre; ``a = sqrt(5 * variance)`` along each axis
    (the semi-axis of a solid ellipsoid with the same second moment).
    """
    m = grid.check_array("mask", mask).astype(bool)
    if not m.any():
        raise ValueError("mask is empty; a target needs at least one voxel")
    pts = grid.index_to_world(np.argwhere(m))
    c = pts.mean(axis=0) - grid.center
    a = np.sqrt(5.0 * pts.var(axis=0) + 1e-12)
    return np.concatenate([c, a])


def make_targets(n: int, seed: int = 0, spacing: float = 1.0, size_mm: float = 40.0,
                 radii=(5.0, 9.0), shift_mm: float = 4.0, rx: float = 20.0,
                 problem_kw=None) -> list[TargetSample]:
    """A family of random axis-aligned ellipsoidal targets in a water cube.

    Parameters
    ----------
    n : int
        Number of targets.
    seed : int
    spacing : float
        Voxel size (mm).
    size_mm : float
        Edge of the cubic grid (mm).
    radii : (float, float)
        Range of the semi-axes (mm).
    shift_mm : float
        Centres uniform in ``[-shift, shift]`` mm around the grid centre on each axis.
    rx : float
        Prescription (Gy).
    problem_kw : dict, optional
        Passed to :func:`rtlab.methods.gk.build_problem`.
    """
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of targets, got {n!r}")
    rng = np.random.default_rng(seed)
    nvox = int(round(size_mm / spacing))
    grid = Grid((nvox,) * 3, (spacing,) * 3)
    Z, Y, X = grid.mesh()
    out = []
    while len(out) < n:
        c = rng.uniform(-shift_mm, shift_mm, 3)
        a = rng.uniform(radii[0], radii[1], 3)
        m = ((Z - c[0]) / a[0]) ** 2 + ((Y - c[1]) / a[1]) ** 2 + ((X - c[2]) / a[2]) ** 2 <= 1.0
        if m.sum() < 8:
            continue
        prob = build_problem(grid, m, rx, **(problem_kw or {}))
        out.append(TargetSample(grid, m, float(rx), target_features(grid, m), prob))
    return out


def add_reference(samples, max_shots: int = 4, n_iter: int = 20, model=None) -> None:
    """Plan every sample with the iterative optimiser and store its dose at the samples' points."""
    for s in samples:
        t0 = time.perf_counter()
        res = plan_gamma_knife(s.grid, s.mask, s.rx, model=model, max_shots=max_shots, n_iter=n_iter,
                                   max_rounds=1)
        s.ref_seconds = time.perf_counter() - t0
        s.ref_plan = res.plan
        s.ref_metrics = res.metrics
        s.ref_dose = pk.dose(s.problem.points, res.plan.shots, res.plan.times, model)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class ShotMLP:
    """Two-layer perceptron (tanh hidden layer) from target features to shot parameters.

    Parameters
    ----------
    n_shots : int
        Number of shots ``K`` the model places.
    n_hidden : int
    seed : int
    t_scale : float
        Time scale (min) of the softplus time outputs.
    feature_center, feature_scale : array_like (6,)
        Input normalisation ``(x - center) / scale``.
    """

    def __init__(self, n_shots: int = 3, n_hidden: int = 32, seed: int = 0, t_scale: float = 1.0,
                 feature_center=(0, 0, 0, 7, 7, 7), feature_scale=(4, 4, 4, 2, 2, 2)):
        if int(n_shots) < 1 or int(n_hidden) < 1:
            raise ValueError("n_shots and n_hidden must be positive integers")
        rng = np.random.default_rng(seed)
        self.K = int(n_shots)
        self.n_in = 6
        self.n_out = self.K * 6
        self.t_scale = float(t_scale)
        self.fc = np.asarray(feature_center, float)
        self.fs = np.asarray(feature_scale, float)
        H = int(n_hidden)
        self.params = [
            rng.normal(0, 1.0 / np.sqrt(self.n_in), (H, self.n_in)),
            np.zeros(H),
            rng.normal(0, 0.1 / np.sqrt(H), (self.n_out, H)),
            np.zeros(self.n_out),
        ]
        # spread the initial shots a little so they are not all at the centroid
        init = rng.normal(0, 0.3, (self.K, 3))
        self.params[3][: 3 * self.K] = init.ravel()

    # -- forward / backward ------------------------------------------------------------------
    def forward(self, features, offset=None):
        """Shot positions (K, 3) mm, times (K, 8, 3) min, and a cache for :meth:`backward`.

        ``offset`` (mm, z/y/x) is added to the positions: the world position of the frame the
        centroid feature is measured in (the grid centre, see :func:`target_features`).
        """
        x = np.asarray(features, float)
        if x.shape != (6,):
            raise ValueError(f"features must have shape (6,) [cz, cy, cx, az, ay, ax], got {x.shape}")
        W1, b1, W2, b2 = self.params
        xn = (x - self.fc) / self.fs
        h = np.tanh(W1 @ xn + b1)
        o = W2 @ h + b2
        op = o[: 3 * self.K].reshape(self.K, 3)
        ot = o[3 * self.K:].reshape(self.K, 3)
        c, a = x[:3], x[3:]
        shots = c + 0.8 * a * np.tanh(op)
        if offset is not None:
            shots = shots + np.asarray(offset, float)
        tau = self.t_scale * _softplus(ot)
        times = np.repeat(tau[:, None, :], pk.N_SECTORS, axis=1)
        return shots, times, (x, xn, h, op, ot)

    def backward(self, cache, g_shots, g_times):
        """Gradients of the loss w.r.t. the parameters given dL/dshots and dL/dtimes."""
        x, xn, h, op, ot = cache
        W1, b1, W2, b2 = self.params
        a = x[3:]
        g_op = np.asarray(g_shots) * 0.8 * a * (1.0 - np.tanh(op) ** 2)
        g_tau = np.asarray(g_times).sum(axis=1)  # times are shared by the 8 sectors
        g_ot = g_tau * self.t_scale * _sigmoid(ot)
        go = np.concatenate([g_op.ravel(), g_ot.ravel()])
        gW2 = np.outer(go, h)
        gb2 = go
        gh = W2.T @ go
        gz = gh * (1.0 - h**2)
        gW1 = np.outer(gz, xn)
        gb1 = gz
        return [gW1, gb1, gW2, gb2]

    def get_flat(self) -> np.ndarray:
        return np.concatenate([p.ravel() for p in self.params])

    def set_flat(self, v) -> None:
        v = np.asarray(v, float)
        i = 0
        for k, p in enumerate(self.params):
            self.params[k] = v[i:i + p.size].reshape(p.shape).copy()
            i += p.size


# ---------------------------------------------------------------------------------------------
# loss through the dose
# ---------------------------------------------------------------------------------------------
def sample_loss(model: ShotMLP, sample: TargetSample, mode: str = "unsupervised", kernel_model=None,
                backend: str = "numba"):
    """Dose-based loss of one sample and its gradient w.r.t. the model parameters.

    ``dL/dtheta = dL/dD . dD/dy . dy/dtheta`` (patent 002, eq. 5): ``dL/dD`` here,
    ``dD/dy`` by :func:`rtlab.dose.pointkernel.dose_vjp`, ``dy/dtheta`` by
    :meth:`ShotMLP.backward`.

    Parameters
    ----------
    mode : {'unsupervised', 'supervised'}
        Eq. 8 plan loss, or the dose difference to ``sample.ref_dose``.

    Returns
    -------
    (float, list of ndarray)
    """
    if mode not in ("unsupervised", "supervised"):
        raise ValueError(f"mode must be 'unsupervised' or 'supervised', got {mode!r}")
    prob = sample.problem
    shots, times, cache = model.forward(sample.features, sample.grid.center)
    pts = prob.points
    D = pk.dose(pts, shots, times, kernel_model, backend=backend)
    nT = prob.pts_T.shape[0]
    if mode == "unsupervised":
        L, gT, gO = loss_from_dose(prob, D[:nT], D[nT:], times)
        gD = np.concatenate([gT, gO])
        extra_t = prob.lam
    else:
        if sample.ref_dose is None:
            raise ValueError("supervised training needs sample.ref_dose; call add_reference(samples) first")
        w = np.concatenate([prob.wv_T, prob.wv_O])
        r = (D - sample.ref_dose) / prob.rx
        L = float(np.sum(w * r**2) / w.sum())
        gD = 2.0 * w * r / (w.sum() * prob.rx)
        extra_t = 0.0
    gp, gt = pk.dose_vjp(pts, gD, shots, times, kernel_model, backend=backend)
    return float(L), model.backward(cache, gp, gt + extra_t)


def train(model: ShotMLP, samples, mode: str = "unsupervised", epochs: int = 50, lr: float = 3e-3,
          kernel_model=None, callback=None, seed: int = 0, progress: bool = False) -> list[float]:
    """Train ``model`` with Adam on the dose-based loss; returns the mean loss per epoch.

    Parameters
    ----------
    mode : {'unsupervised', 'supervised'}
        See :func:`sample_loss`.
    epochs : int
        Passes over ``samples`` (one Adam step per sample).
    lr : float
        Adam step size.
    callback : callable, optional
        ``callback(epoch, mean_loss)`` after every epoch.
    progress : bool
        Show a ``tqdm.auto`` progress bar over the epochs.
    """
    if not samples:
        raise ValueError("samples is empty; pass at least one TargetSample")
    rng = np.random.default_rng(seed)
    m = [np.zeros_like(p) for p in model.params]
    v = [np.zeros_like(p) for p in model.params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    hist = []
    epochs_it = range(int(epochs))
    if progress:
        epochs_it = tqdm(epochs_it, desc=f"train ({mode})")
    with blas_single_thread():
        for ep in epochs_it:
            tot = 0.0
            for j in rng.permutation(len(samples)):
                L, grads = sample_loss(model, samples[j], mode, kernel_model)
                tot += L
                step += 1
                for k, g in enumerate(grads):
                    m[k] = b1 * m[k] + (1 - b1) * g
                    v[k] = b2 * v[k] + (1 - b2) * g * g
                    model.params[k] = model.params[k] - lr * (m[k] / (1 - b1**step)) / (np.sqrt(v[k] / (1 - b2**step)) + eps)
            hist.append(tot / len(samples))
            if callback is not None:
                callback(ep, hist[-1])
    return hist


def predict_plan(model: ShotMLP, sample: TargetSample, coverage: float = 0.96, kernel_model=None):
    """The model's plan for a target, normalised to ``coverage`` (as the optimiser's plans are)."""
    shots, times, _ = model.forward(sample.features, sample.grid.center)
    plan = GKPlan(shots, times)
    idx = np.flatnonzero(sample.mask.ravel())
    plan, _ = normalize_coverage(plan, plan.dose(sample.grid, indices=idx, model=kernel_model), sample.rx, coverage)
    return plan


def evaluate_model(model: ShotMLP, samples, coverage: float = 0.96, kernel_model=None) -> list[dict]:
    """Metrics (:func:`rtlab.methods.gk.evaluate_plan`) of the model's plans, plus
    ``predict_s`` (seconds for the forward pass and normalisation)."""
    out = []
    for s in samples:
        t0 = time.perf_counter()
        plan = predict_plan(model, s, coverage, kernel_model)
        dt = time.perf_counter() - t0
        mt = evaluate_plan(plan, s.grid, s.mask, s.rx, model=kernel_model)
        mt["predict_s"] = dt
        out.append(mt)
    return out


def compare_with_optimizer(model: ShotMLP, samples, kernel_model=None) -> dict:
    """Mean CI, coverage, GI, beam-on time and seconds: model vs iterative optimiser.

    Samples without a reference plan get one (:func:`add_reference`).
    """
    need = [s for s in samples if s.ref_metrics is None]
    if need:
        add_reference(need, model=kernel_model)
    ml = evaluate_model(model, samples, kernel_model=kernel_model)

    def mean(rows, k):
        return float(np.mean([r[k] for r in rows]))

    keys = ("ci_paddick", "coverage", "gi", "beam_on_min")
    return {
        "model": {**{k: mean(ml, k) for k in keys}, "seconds": mean(ml, "predict_s")},
        "optimizer": {**{k: mean([s.ref_metrics for s in samples], k) for k in keys},
                      "seconds": float(np.mean([s.ref_seconds for s in samples]))},
        "n_targets": len(samples),
    }
