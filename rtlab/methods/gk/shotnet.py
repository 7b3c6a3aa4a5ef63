"""A torch network from the target's image to Gamma-Knife shots, trained through the dose (patent 002, eqs 3-6).

Patent 002's "learning use": a model ``f_theta`` maps treatment-planning information ``x`` (here the
target's **mask and signed distance map**, the patent's "segmentation map and distance map") to
machine parameters ``y`` (shot positions, collimator-sector times); it is trained by minimising a
**dose-based loss** (eq. 3: ``min_theta sum_i L(f_theta(x_i), y_i)``; eq. 4/6: the loss compares
doses, ``L = || D(f_theta(x)) - D(y) ||^2``), whose derivative passes through the dose calculation by
the chain rule (eq. 5: ``dL/dtheta = dL/dD . dD/dy . dy/dtheta``). The dose is the analytic point
kernel of :mod:`rtlab.dose.pointkernel`, written again here in torch (:func:`torch_dose`) so that
autograd gives ``dD/dy``; :func:`torch_dose` equals the numba/numpy kernel to rounding (tested).

Losses (``mode`` of :func:`train`):

* ``'unsupervised'`` (the patent's unsupervised training, only the predicted dose enters): the plan
  loss of eq. 8 of the predicted dose, ``w_T/|V_T| sum max(0, d_T - D)^2 + w_O/|V_O| sum max(0, D -
  d_O)^2 + lam sum t`` (doses in units of ``rx``, the samples and weights of
  :func:`rtlab.methods.gk.build_problem`);
* ``'supervised'`` (eq. 6): ``sum wv (D_pred - D_ref)^2 / (rx^2 sum wv)`` against the dose of the
  iterative optimiser's plan (:func:`rtlab.methods.gk.plan_gamma_knife`), plus the eq. 8 loss.

Model (:class:`ShotNet`, ours): input 5 channels on a ``20^3`` grid of 2 mm voxels centred on the
target's centroid -- mask fraction, signed distance / 10 mm (clipped to +-1), and the z/y/x offsets
from the centroid / 10 mm; three 3x3x3 convolutions (16, 32, 32 channels, ReLU, 2x average pooling
between them), adaptive average pooling to ``3^3``, two linear layers (64 hidden). Outputs for ``K``
shots: position ``centroid + (half extent + 1 mm) * tanh(o)`` (each shot inside the target's
bounding box grown by 1 mm, so no projection is needed) and 24 times per shot (8 sectors x 4/8/16 mm)
``t = t_scale * softplus(o)`` (``t >= 0``). At use the predicted plan is normalised to the same
coverage as the optimiser's (:func:`rtlab.methods.gk.normalize_coverage`).

Target family (:func:`make_target_set`): on a 40 mm cube at 1 mm, one axis-aligned ellipsoid
(semi-axes 5-9 mm) or, with probability ``p_two``, the union of two (a second lobe 3.5-6.5 mm,
offset 5-9 mm in a random direction); centres within +-3 mm of the grid centre; seeded, and split
into training and held-out targets by a seeded permutation (:func:`split`).

Shipped weights: ``rtlab/data/gk_shotnet.pt`` (with ``gk_shotnet.json``: the training command, seed,
settings and loss history); :func:`load_shipped` reads them. Retrain with
``python -m rtlab.methods.gk.shotnet --out rtlab/data`` (the defaults of :func:`train_default`).

Units: mm, minutes, Gy.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..._lazy import load
from ..._util import atomic_path
from ...core.geometry import Grid
from ...dose import pointkernel as pk
from . import learning
from .isocentres import optimize_times
from .plan import plan_gamma_knife
from .problem import GKPlan, PlanningProblem, build_problem, evaluate_plan, normalize_coverage, plan_loss

torch = load("torch", extra="ml", purpose="the Gamma-Knife shot network (patent 002 learning)")

__all__ = ["TargetCase", "make_target_set", "split", "target_image", "torch_dose", "ShotNet", "plan_loss_torch",
           "problem_tensors", "train", "predict", "plan_metrics", "compare", "train_mlp", "load_shipped", "save", "load", "train_default", "DATA_DIR", "WEIGHTS", "INFO"]

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
WEIGHTS = "gk_shotnet.pt"
INFO = "gk_shotnet.json"
_IMG_N = 20
_IMG_MM = 2.0


@dataclass
class TargetCase:
    """One target of the family: grid, mask, prescription, eq. 8 problem and the network input."""

    grid: Grid
    mask: np.ndarray
    rx: float
    problem: PlanningProblem
    image: np.ndarray      # (5, 20, 20, 20) float32
    centroid: np.ndarray   # world mm (z, y, x)
    half_extent: np.ndarray  # mm (z, y, x)


def target_image(grid: Grid, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network input of a target: ``(image (5, 20, 20, 20), centroid (3,), half extent (3,))``.

    Channels on 2 mm voxels centred on the centroid: mask fraction, signed distance / 10 mm
    (negative inside, clipped to +-1), z/y/x offset from the centroid / 10 mm. Sampled from the
    1 mm maps by trilinear interpolation (:func:`scipy.ndimage.map_coordinates`).
    """
    m = grid.check_array("mask", mask).astype(bool)
    if not m.any():
        raise ValueError("mask is empty; a target needs at least one voxel")
    idx = np.argwhere(m)
    pts = grid.index_to_world(idx)
    c = pts.mean(axis=0)
    sp = np.asarray(grid.spacing)
    half = (idx.max(0) - idx.min(0)) * sp / 2.0 + 0.5 * sp
    sd = ndimage.distance_transform_edt(~m, sampling=grid.spacing) - ndimage.distance_transform_edt(m, sampling=grid.spacing)
    off = (np.arange(_IMG_N) - (_IMG_N - 1) / 2.0) * _IMG_MM
    Z, Y, X = np.meshgrid(off, off, off, indexing="ij")
    w = np.stack([Z + c[0], Y + c[1], X + c[2]])
    ijk = (w - np.asarray(grid.origin)[:, None, None, None]) / sp[:, None, None, None]
    fm = ndimage.map_coordinates(m.astype(np.float32), ijk, order=1, mode="constant", cval=0.0)
    fs = ndimage.map_coordinates(sd.astype(np.float32), ijk, order=1, mode="nearest")
    img = np.stack([fm, np.clip(fs / 10.0, -1, 1), Z / 10.0, Y / 10.0, X / 10.0]).astype(np.float32)
    return img, c, half


def make_target_set(n: int, seed: int = 0, p_two: float = 0.5, size_mm: float = 40.0, spacing: float = 1.0,
                    rx: float = 20.0, problem_kw=None, progress: bool = False) -> list[TargetCase]:
    """``n`` random targets (module docstring): ellipsoids and two-lobed unions, seeded."""
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of targets, got {n!r}")
    if not 0.0 <= p_two <= 1.0:
        raise ValueError(f"p_two must be a probability in [0, 1], got {p_two!r}")
    rng = np.random.default_rng(seed)
    nv = int(round(size_mm / spacing))
    grid = Grid((nv,) * 3, (spacing,) * 3)
    Z, Y, X = grid.mesh()
    out = []
    it = tqdm(total=int(n), desc="targets", disable=not progress, leave=False)
    while len(out) < int(n):
        c = rng.uniform(-3.0, 3.0, 3)
        a = rng.uniform(5.0, 9.0, 3)
        m = ((Z - c[0]) / a[0]) ** 2 + ((Y - c[1]) / a[1]) ** 2 + ((X - c[2]) / a[2]) ** 2 <= 1.0
        if rng.uniform() < p_two:
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            c2 = c + d * rng.uniform(5.0, 9.0)
            b = rng.uniform(3.5, 6.5, 3)
            m = m | (((Z - c2[0]) / b[0]) ** 2 + ((Y - c2[1]) / b[1]) ** 2 + ((X - c2[2]) / b[2]) ** 2 <= 1.0)
        if m.sum() < 30:
            continue
        prob = build_problem(grid, m, rx, **(problem_kw or {}))
        img, cen, half = target_image(grid, m)
        out.append(TargetCase(grid, m, float(rx), prob, img, cen, half))
        it.update(1)
    it.close()
    return out


def split(cases, n_test: int, seed: int = 0):
    """Seeded split into ``(train, held_out)`` (a permutation of the indices)."""
    n = len(cases)
    if not 0 < int(n_test) < n:
        raise ValueError(f"n_test must lie in 1..{n - 1} for {n} cases, got {n_test!r}")
    p = np.random.default_rng(seed).permutation(n)
    return [cases[i] for i in p[int(n_test):]], [cases[i] for i in p[:int(n_test)]]


# ---------------------------------------------------------------------------------------------
# the point kernel in torch
# ---------------------------------------------------------------------------------------------
def _kernel_consts(model, dtype):
    """Per (sector, collimator) column ``k = 3 s + c``: the 6 quadratic-form coefficients and ``A, p, w, k``."""
    m = pk.as_model(model)
    M = m.matrices()  # (3, 8, 3, 3)
    par = m.params()  # (3, 4)
    coef = np.zeros((6, pk.N_SECTORS * 3))
    cols = np.zeros((4, pk.N_SECTORS * 3))
    for s in range(pk.N_SECTORS):
        for c in range(3):
            q = M[c, s]
            coef[:, 3 * s + c] = [q[0, 0], q[1, 1], q[2, 2], 2 * q[0, 1], 2 * q[0, 2], 2 * q[1, 2]]
            cols[:, 3 * s + c] = par[c]
    return torch.as_tensor(coef, dtype=dtype), torch.as_tensor(cols, dtype=dtype)


def torch_dose(points, shots, times, model=None, consts=None):
    """Point-kernel dose (Gy) in torch, differentiable in ``shots`` and ``times`` (patent 002, eq. 7).

    The same model as :func:`rtlab.dose.pointkernel.dose`:
    ``D(r) = sum_{i,s,c} t[i,s,c] A_c [(1-w_c) exp(-ln2 Q^p_c) + w_c exp(-k_c (sqrt(Q+1) - 1))]``,
    ``Q = u^T M_{c,s} u``, ``u = r - r'_i`` (the quadratic form as the 6 monomials of ``u`` times
    the coefficients of each sector/collimator column, one matrix product).

    Parameters
    ----------
    points : tensor (N, 3) mm
    shots : tensor (S, 3) mm
    times : tensor (S, 8, 3) min
    model : GammaKnifeModel, optional
    consts : tensors from ``_kernel_consts``, optional (saves rebuilding them)

    Returns
    -------
    tensor (N,) Gy
    """
    coef, cols = consts if consts is not None else _kernel_consts(model, points.dtype)
    u = points[None, :, :] - shots[:, None, :]  # (S, N, 3)
    uz, uy, ux = u[..., 0], u[..., 1], u[..., 2]
    mono = torch.stack([uz * uz, uy * uy, ux * ux, uz * uy, uz * ux, uy * ux], dim=-1)  # (S, N, 6)
    Q = (mono @ coef).clamp_min(0.0)  # (S, N, 24)
    A, p, w, k = cols[0], cols[1], cols[2], cols[3]
    core = torch.exp(-math.log(2.0) * (Q + 1e-30) ** p)
    tail = torch.exp(-k * (torch.sqrt(Q + 1.0) - 1.0))
    phi = A * ((1.0 - w) * core + w * tail)
    return torch.einsum("snk,sk->n", phi, times.reshape(times.shape[0], -1))


def plan_loss_torch(prob: PlanningProblem, D, times, tensors=None):
    """Eq. 8 of a dose ``D`` (Gy at the sample points) and times, in torch (doses in units of ``rx``).

    ``tensors`` = ``(n_T, wv_T, wv_O, d_O)`` of a subsample of ``prob``'s points (from
    :func:`problem_tensors`); default all of ``prob.points``.
    """
    nT, wT, wO, dO = tensors if tensors is not None else problem_tensors(prob, D.dtype)[1]
    uT = torch.clamp(prob.d_T - D[..., :nT], min=0.0) / prob.rx
    oO = torch.clamp(D[..., nT:] - dO, min=0.0) / prob.rx
    return (prob.w_T * (wT * uT**2).sum(-1) / wT.sum() + prob.w_O * (wO * oO**2).sum(-1) / wO.sum().clamp_min(1e-12)
            + prob.lam * times.sum(dim=(-1, -2, -3)))


def _subsample(prob, max_points, seed):
    rng = np.random.default_rng(seed)

    def pick(n):
        if max_points is None or n <= int(max_points):
            return np.arange(n)
        return np.sort(rng.choice(n, int(max_points), replace=False))

    return pick(prob.pts_T.shape[0]), pick(prob.pts_O.shape[0])


def problem_tensors(prob: PlanningProblem, dtype=None, max_points: int | None = None, seed: int = 0):
    """``(points (N, 3), (n_T, wv_T, wv_O, d_O))`` as tensors, optionally a subsample.

    With ``max_points``, at most that many target and that many organ/shell samples are drawn
    (seeded, without replacement) and reweighted so each set keeps its total volume (as
    :func:`rtlab.methods.gk.optimize_smooth` does).
    """
    dtype = torch.float64 if dtype is None else dtype
    iT, iO = _subsample(prob, max_points, seed)
    wT = prob.wv_T[iT] * prob.wv_T.sum() / prob.wv_T[iT].sum()
    wO = prob.wv_O[iO] * prob.wv_O.sum() / max(prob.wv_O[iO].sum(), 1e-12)
    pts = np.concatenate([prob.pts_T[iT], prob.pts_O[iO]])
    T = lambda a: torch.as_tensor(np.asarray(a, float), dtype=dtype)  # noqa: E731
    return T(pts), (int(iT.size), T(wT), T(wO), T(prob.d_O[iO]))


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
def _build_net(n_shots: int, width: int):
    nn = torch.nn
    w = int(width)
    return nn.Sequential(
        nn.Conv3d(5, w, 3, padding=1), nn.ReLU(), nn.AvgPool3d(2),
        nn.Conv3d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.AvgPool3d(2),
        nn.Conv3d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(3),
        nn.Flatten(), nn.Linear(2 * w * 27, 64), nn.ReLU(), nn.Linear(64, int(n_shots) * 27),
    )


class ShotNet:
    """The image-to-shots network (module docstring) with its forward map to plans.

    Parameters
    ----------
    n_shots : int
        Shots ``K`` per plan.
    width : int
        Channels of the first convolution (then ``2 width``).
    t_scale : float
        Minutes per unit of the softplus time outputs.
    seed : int
        torch seed for the initial weights.
    """

    def __init__(self, n_shots: int = 4, width: int = 8, t_scale: float = 0.3, seed: int = 0):
        if int(n_shots) < 1 or int(width) < 1:
            raise ValueError(f"n_shots and width must be positive integers, got {n_shots!r}, {width!r}")
        if not (np.isfinite(t_scale) and t_scale > 0):
            raise ValueError(f"t_scale must be a positive time in minutes, got {t_scale!r}")
        self.K, self.width, self.t_scale = int(n_shots), int(width), float(t_scale)
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(int(seed))
            self.net = _build_net(self.K, self.width)
            last = self.net[-1]
            torch.nn.init.normal_(last.weight, std=0.01)
            with torch.no_grad():
                last.bias.zero_()
                b = last.bias.view(self.K, 27)
                b[:, :3] = 0.6 * torch.randn(self.K, 3)  # spread the shots
                b[:, 3:] = -1.0

    def n_params(self) -> int:
        return int(sum(p.numel() for p in self.net.parameters()))

    def forward(self, images, centroids, halves):
        """Shots ``(B, K, 3)`` mm and times ``(B, K, 8, 3)`` min (torch) for a batch of target inputs."""
        o = self.net(images.float()).double().view(-1, self.K, 27)
        shots = centroids[:, None, :] + (halves[:, None, :] + 1.0) * torch.tanh(o[..., :3])
        times = self.t_scale * torch.nn.functional.softplus(o[..., 3:]).view(-1, self.K, pk.N_SECTORS, 3)
        return shots, times

    def predict_raw(self, case: TargetCase, threads: int | None = 1):
        """Unnormalised ``(shots (K, 3), times (K, 8, 3))`` numpy arrays for one target.

        ``threads``: torch CPU threads for the forward pass (restored afterwards); one is fastest
        for a single small input (no thread start-up, no contention with other work).
        """
        old = torch.get_num_threads()
        change = threads is not None and int(threads) != old
        if change:
            torch.set_num_threads(int(threads))
        try:
            with torch.no_grad():
                s, t = self.forward(*_batch([case]))
        finally:
            if change:
                torch.set_num_threads(old)
        return s[0].numpy().copy(), t[0].numpy().copy()


def _batch(cases):
    img = torch.as_tensor(np.stack([c.image for c in cases]), dtype=torch.float64)
    cen = torch.as_tensor(np.stack([c.centroid for c in cases]), dtype=torch.float64)
    half = torch.as_tensor(np.stack([c.half_extent for c in cases]), dtype=torch.float64)
    return img, cen, half


def train(net: ShotNet, cases, epochs: int = 40, batch: int = 8, lr: float = 2e-3, mode: str = "unsupervised",
          ref_doses=None, w_sup: float = 1.0, seed: int = 0, model=None, threads: int | None = None,
          max_points: int | None = 300,
          callback=None, progress: bool = False) -> list[float]:
    """Train ``net`` end to end through :func:`torch_dose` (Adam); returns the mean loss per epoch.

    Parameters
    ----------
    cases : list of TargetCase
        Training targets.
    mode : {'unsupervised', 'supervised'}
        Eq. 8 of the predicted dose, or eq. 8 plus ``w_sup`` times the dose difference of eq. 6 to
        ``ref_doses`` (one array of Gy at ``case.problem.points`` per case).
    threads : int, optional
        torch CPU threads during training (restored afterwards).
    max_points : int or None
        Target and shell samples per case in the loss (a seeded, reweighted subsample; None: all).
        The dose runs in float32.
    callback : callable, optional
        ``callback(epoch, mean_loss)``.
    """
    if mode not in ("unsupervised", "supervised"):
        raise ValueError(f"mode must be 'unsupervised' or 'supervised', got {mode!r}")
    if max_points is not None and int(max_points) < 1:
        raise ValueError(f"max_points must be a positive number of samples or None, got {max_points!r}")
    if not cases:
        raise ValueError("cases is empty; pass at least one TargetCase")
    if mode == "supervised":
        if ref_doses is None or len(ref_doses) != len(cases):
            raise ValueError("supervised training needs ref_doses: one dose array per case (Gy at case.problem.points)")
        for c, r in zip(cases, ref_doses):
            if np.shape(r) != (c.problem.points.shape[0],):
                raise ValueError(f"a reference dose has shape {np.shape(r)}, its case has {c.problem.points.shape[0]} points")
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    f32 = torch.float32
    consts = _kernel_consts(model, f32)
    per_case = [problem_tensors(c.problem, f32, max_points, seed=seed + j) for j, c in enumerate(cases)]
    if mode == "supervised":
        ref_t = []
        for j, (c, r) in enumerate(zip(cases, ref_doses)):
            iT, iO = _subsample(c.problem, max_points, seed + j)
            sel = np.concatenate([iT, c.problem.pts_T.shape[0] + iO])
            ref_t.append(torch.as_tensor(np.asarray(r, float)[sel], dtype=f32))
    opt = torch.optim.Adam(net.net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    hist = []
    try:
        for ep in tqdm(range(int(epochs)), desc="train shot net", disable=not progress, leave=False):
            order = rng.permutation(len(cases))
            tot = 0.0
            for a in range(0, len(order), int(batch)):
                ii = order[a:a + int(batch)]
                shots, times = net.forward(*_batch([cases[i] for i in ii]))
                shots, times = shots.float(), times.float()
                loss = 0.0
                for b, i in enumerate(ii):
                    pts, tens = per_case[i]
                    D = torch_dose(pts, shots[b], times[b], consts=consts)
                    li = plan_loss_torch(cases[i].problem, D, times[b], tens)
                    if mode == "supervised":
                        wv = torch.cat([tens[1], tens[2]])
                        li = li + w_sup * (wv * ((D - ref_t[i]) / cases[i].problem.rx) ** 2).sum() / wv.sum()
                    loss = loss + li
                opt.zero_grad()
                (loss / len(ii)).backward()
                opt.step()
                tot += float(loss.detach())
            hist.append(tot / len(cases))
            if callback is not None:
                callback(ep, hist[-1])
    finally:
        torch.set_num_threads(old)
    return hist


def predict(net: ShotNet, case: TargetCase, coverage: float = 0.96, model=None, polish_iter: int = 0) -> GKPlan:
    """The network's plan for a target, normalised so that ``coverage`` of it gets ``rx``.

    ``polish_iter > 0``: the times are then re-optimised with the predicted shots fixed (eq. 8, convex in
    ``t``; :func:`rtlab.methods.gk.optimize_times`, L-BFGS-B, at most ``polish_iter`` iterations, from the
    predicted times), as FIG. 9 op. 950 does after the optimiser.
    """
    s, t = net.predict_raw(case)
    if int(polish_iter) > 0:
        t, _ = optimize_times(case.problem, s, times0=t, model=model, max_iter=int(polish_iter))
    plan = GKPlan(s, t)
    idx = np.flatnonzero(case.mask.ravel())
    plan, _ = normalize_coverage(plan, plan.dose(case.grid, indices=idx, model=model), case.rx, coverage)
    return plan


def plan_metrics(plan: GKPlan, case: TargetCase, model=None) -> dict:
    """Eq. 8 objective (full problem), Paddick CI, GI, coverage and beam-on time of a plan for ``case``."""
    mt = evaluate_plan(plan, case.grid, case.mask, case.rx, model=model)
    obj = plan_loss(case.problem, plan.shots, plan.times, model)[0]
    return dict(objective=float(obj), ci_paddick=mt["ci_paddick"], gi=mt["gi"], coverage=mt["coverage"],
                beam_on_min=mt["beam_on_min"], n_shots=mt["n_shots"])


def compare(net: ShotNet, cases, optimizer_kw=None, mlp=None, model=None, progress: bool = False,
            polish=()) -> list[dict]:
    """Per held-out target: the network's plan, the iterative optimiser's and (optionally) the feature MLP's.

    Each entry has ``learned``, ``optimizer`` (and ``mlp``) dicts of :func:`plan_metrics` plus
    ``seconds`` (wall time to produce the normalised plan: forward pass + normalisation, or the
    whole :func:`rtlab.methods.gk.plan_gamma_knife`) and ``cpu_s`` (the process's CPU time for the
    same, all threads: less sensitive to other work on the machine). The metrics themselves are not
    timed. All plans are normalised to 96 % coverage.

    Parameters
    ----------
    optimizer_kw : dict, optional
        Passed to :func:`rtlab.methods.gk.plan_gamma_knife` (default its defaults).
    mlp : rtlab.methods.gk.learning.ShotMLP, optional
        The feature MLP to compare as well.
    polish : sequence of int
        Also the network's plan with its times re-optimised for that many L-BFGS-B iterations
        (:func:`predict` ``polish_iter``), entries ``learned+polish{n}``.
    """
    out = []
    for c in tqdm(cases, desc="compare", disable=not progress, leave=False):
        row = {}
        t0, c0 = time.perf_counter(), time.process_time()
        plan = predict(net, c, model=model)
        row["learned"] = dict(plan_metrics(plan, c, model), seconds=time.perf_counter() - t0,
                              cpu_s=time.process_time() - c0)
        for n in polish:
            t0, c0 = time.perf_counter(), time.process_time()
            plan = predict(net, c, model=model, polish_iter=n)
            row[f"learned+polish{int(n)}"] = dict(plan_metrics(plan, c, model), seconds=time.perf_counter() - t0,
                                                  cpu_s=time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = plan_gamma_knife(c.grid, c.mask, c.rx, model=model, **(optimizer_kw or {}))
        row["optimizer"] = dict(plan_metrics(res.plan, c, model), seconds=time.perf_counter() - t0,
                                cpu_s=time.process_time() - c0)
        if mlp is not None:
            t0, c0 = time.perf_counter(), time.process_time()
            feats = learning.target_features(c.grid, c.mask)
            shots, times, _ = mlp.forward(feats, c.grid.center)
            p = GKPlan(shots, times)
            idx = np.flatnonzero(c.mask.ravel())
            p, _ = normalize_coverage(p, p.dose(c.grid, indices=idx, model=model), c.rx, 0.96)
            row["mlp"] = dict(plan_metrics(p, c, model), seconds=time.perf_counter() - t0,
                              cpu_s=time.process_time() - c0)
        out.append(row)
    return out


def train_mlp(cases, n_shots: int = 4, epochs: int = 30, lr: float = 0.01, seed: int = 0, model=None):
    """The feature MLP of :mod:`rtlab.methods.gk.learning` trained (unsupervised, eq. 8) on the same targets."""
    samples = [learning.TargetSample(c.grid, c.mask, c.rx, learning.target_features(c.grid, c.mask), c.problem)
               for c in cases]
    mlp = learning.ShotMLP(n_shots=n_shots, n_hidden=16, seed=seed)
    hist = learning.train(mlp, samples, mode="unsupervised", epochs=epochs, lr=lr, kernel_model=model, seed=seed)
    return mlp, hist


# ---------------------------------------------------------------------------------------------
# weights on disk
# ---------------------------------------------------------------------------------------------
def save(net: ShotNet, directory, info: dict | None = None) -> Path:
    """Write ``gk_shotnet.pt`` (state dict, float32) and ``gk_shotnet.json`` (settings, ``info``) atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.float() for k, v in net.net.state_dict().items()}
    with atomic_path(d / WEIGHTS) as tmp:
        torch.save(state, tmp)
    meta = dict(n_shots=net.K, width=net.width, t_scale=net.t_scale, **(info or {}))
    with atomic_path(d / INFO) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    return d / WEIGHTS


def load(directory) -> tuple[ShotNet, dict]:
    """Read a network written by :func:`save`; ``(net, info)``."""
    d = Path(directory)
    for f in (WEIGHTS, INFO):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f} is missing; write it with rtlab.methods.gk.shotnet.save or retrain "
                                    "(python -m rtlab.methods.gk.shotnet --out DIR)")
    try:
        info = json.loads((d / INFO).read_text())
        net = ShotNet(info["n_shots"], info["width"], info["t_scale"])
    except (ValueError, KeyError) as e:
        raise ValueError(f"{d / INFO} is not a shot-network description ({e}); retrain to rewrite it") from None
    try:
        state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        net.net.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - a broken or foreign file
        raise ValueError(f"{d / WEIGHTS} is not a shot-network state dict ({type(e).__name__}: {e})") from None
    return net, info


def load_shipped() -> tuple[ShotNet, dict]:
    """The weights shipped in ``rtlab/data`` (trained by :func:`train_default`)."""
    return load(DATA_DIR)


#: The settings of the shipped weights (:func:`train_default`).
DEFAULT = dict(n_targets=64, n_test=16, set_seed=21, split_seed=0, net_seed=0, n_shots=4, width=8, t_scale=0.3,
               epochs=25, batch=4, lr=5e-3, train_seed=0, threads=2)


def train_default(out=None, progress: bool = True, **overrides) -> tuple[ShotNet, dict]:
    """Train the network with :data:`DEFAULT` settings (``overrides`` replace some) and optionally save it."""
    cfg = dict(DEFAULT, **overrides)
    cases = make_target_set(cfg["n_targets"], seed=cfg["set_seed"], progress=progress)
    tr, _ = split(cases, cfg["n_test"], seed=cfg["split_seed"])
    net = ShotNet(cfg["n_shots"], cfg["width"], cfg["t_scale"], seed=cfg["net_seed"])
    t0 = time.perf_counter()
    hist = train(net, tr, epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"], seed=cfg["train_seed"],
                 threads=cfg["threads"], progress=progress)
    info = dict(settings=cfg, loss_history=[round(h, 6) for h in hist], train_s=round(time.perf_counter() - t0, 1),
                torch=torch.__version__,
                command="python -m rtlab.methods.gk.shotnet --out rtlab/data" +
                "".join(f" --{k} {v}" for k, v in overrides.items()))
    if out is not None:
        save(net, out, info)
    return net, info


def _main(argv=None):
    ap = argparse.ArgumentParser(description="Train the Gamma-Knife shot network (patent 002 learning).")
    ap.add_argument("--out", default=None, help="directory for gk_shotnet.pt/.json (e.g. rtlab/data)")
    for k, v in DEFAULT.items():
        ap.add_argument(f"--{k}", type=type(v), default=None)
    a = ap.parse_args(argv)
    over = {k: getattr(a, k) for k in DEFAULT if getattr(a, k) is not None}
    _, info = train_default(a.out, **over)
    print(json.dumps({k: info[k] for k in ("train_s", "command")} | {"loss_first": info["loss_history"][0],
                                                                   "loss_last": info["loss_history"][-1]}))


if __name__ == "__main__":
    _main()
