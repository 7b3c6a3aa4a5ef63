"""Gamma-Knife isocentre (shot) and time optimisation through the differentiable dose (patent 002).

Implements the Gamma Knife example of patent 002 (eqs 7-11, FIG. 9) on the analytic point
kernel of :mod:`rtlab.dose.pointkernel`:

1. **Heuristic initial shots** (FIG. 9, op. 910-912): greedy sphere packing on the target's
   inside distance map (the medial-axis point with the largest inscribed sphere that is not yet
   covered gets a shot), collimator chosen by that local thickness.
2. **Loss (eq. 8)**, doses in units of the prescription ``rx`` so the weights do not depend on
   it::

       L(r', t) = w_T / |V_T| sum_{r in V_T} max(0, d_T - D(r))^2
                + w_O / |V_O| sum_{r in V_O} max(0, D(r) - d_O(r))^2 + lam * sum t

   ``V_T`` = target voxels; ``V_O`` = a shell around the target (``0 < distance <= shell_mm``)
   plus any organ at risk. Our choice for ``d_O`` (the patent's scalar ``d_O`` generalised to
   one value per voxel): ``d_O(r) = rx * max(floor, 1 - 0.5 * dist(r) / falloff_mm)``, i.e. the
   shell asks for 50 % of the prescription ``falloff_mm`` outside the target, which is what
   drives the conformity (Paddick CI) and the gradient index; organs at risk get their own
   scalar ``d_O`` (their dose limit). ``d_T = rx``. ``|t|`` is the L1 norm: the sum of all
   sector-collimator times (min). The sums are volume-weighted quadratures: voxels more than
   ``band_mm`` from the target surface are sampled every ``stride`` voxels with weight
   ``stride^3``.
3. **Projected subgradient descent (eq. 9)**: ``theta <- proj(theta - eta g)``, ``g`` from the
   analytic kernel gradient (eq. 10, :func:`rtlab.dose.pointkernel.dose_vjp`); the projection
   clips ``t >= 0`` and keeps each shot inside the target's bounding box. Steps are scaled per
   coordinate (Adam moments), with separate step sizes for positions (mm) and times (min).
4. **Smooth reformulation (eq. 11)**: auxiliary ``s_T >= 0, s_T >= d_T - D`` and
   ``s_O >= 0, s_O >= D - d_O`` turn the hinges into smooth constraints; the problem
   ``min w_T/|V_T| sum s_T^2 + w_O/|V_O| sum s_O^2 + lam sum t`` is solved by scipy's
   ``trust-constr`` (interior point) on a subsample of the voxels (:func:`optimize_smooth`).
5. **Quality check and re-planning with the shots fixed** (FIG. 9, op. 940-950): after the
   joint optimisation the times are polished once with the shots fixed; then the plan is
   normalised so that ``coverage_goal`` of the target receives ``rx``; if Paddick CI or GI miss
   their goals, the times alone are re-optimised (convex in ``t``: L-BFGS-B on the exact
   influence matrix) with a heavier shell weight, and the best plan is kept.

Prescription convention: ``rx`` is the absolute prescription dose (Gy); like Gamma-Knife plans
it usually ends near the 50 % isodose of the plan maximum (reported as ``isodose_pct``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize, sparse

from .._util import check_positive
from ..core.geometry import Grid, Structure
from ..evaluate.metrics import conformity_report
from ..dose import pointkernel as pk

__all__ = [
    "GKPlan",
    "PlanningProblem",
    "build_problem",
    "plan_loss",
    "initial_shots",
    "optimize_times",
    "optimize_pgd",
    "optimize_smooth",
    "normalize_coverage",
    "evaluate_plan",
    "plan_gamma_knife",
    "GKResult",
    "crop_to_target",
    "gk_summary",
    "blas_single_thread",
]


# ---------------------------------------------------------------------------------------------
# BLAS threads: OpenBLAS's worker threads spin-wait, which makes the many small mat-vecs of
# these solvers 10-100x slower on a busy 2-core machine. The solvers run with one BLAS thread.
# ---------------------------------------------------------------------------------------------
_BLAS_FUNCS = None


def _blas_funcs():
    global _BLAS_FUNCS
    if _BLAS_FUNCS is not None:
        return _BLAS_FUNCS
    import ctypes

    funcs = []
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ln.strip().endswith(".so")})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, put in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                         ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                         ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                         ("openblas_get_num_threads", "openblas_set_num_threads")):
            if hasattr(lib, get) and hasattr(lib, put):
                g, p = getattr(lib, get), getattr(lib, put)
                g.restype = ctypes.c_int
                p.argtypes = [ctypes.c_int]
                funcs.append((g, p))
                break
    _BLAS_FUNCS = funcs
    return funcs


class blas_single_thread:
    """Context manager: run the block with one OpenBLAS thread (no-op where none is found)."""

    def __enter__(self):
        self._saved = []
        for g, p in _blas_funcs():
            try:
                self._saved.append((p, g()))
                p(1)
            except Exception:  # pragma: no cover - exotic BLAS builds
                pass
        return self

    def __exit__(self, *exc):
        for p, n in self._saved:
            p(n)
        return False


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class GKPlan:
    """A Gamma-Knife-like plan: shot positions (S, 3) mm and sector-collimator times (S, 8, 3) min."""

    shots: np.ndarray
    times: np.ndarray

    def __post_init__(self):
        self.shots, self.times = pk.check_shots(self.shots, self.times)

    @property
    def n_shots(self) -> int:
        return int(self.shots.shape[0])

    @property
    def beam_on_min(self) -> float:
        """Beam-on time in minutes (:func:`rtlab.dose.pointkernel.beam_on_time`)."""
        return pk.beam_on_time(self.times)

    def dose(self, grid: Grid, indices=None, model=None) -> np.ndarray:
        """Dose (Gy) on ``grid`` (optionally only at ``indices``)."""
        return pk.dose(grid, self.shots, self.times, model, indices=indices)

    def scaled(self, factor: float) -> "GKPlan":
        return GKPlan(self.shots.copy(), self.times * float(factor))

    def collimator_use(self) -> dict:
        """Minutes summed over sectors per collimator (mm -> min)."""
        return {f"{c}mm": float(self.times[:, :, k].sum()) for k, c in enumerate(pk.COLLIMATORS_MM)}


@dataclass
class PlanningProblem:
    """The voxel sets and parameters of eq. 8 (see the module docstring).

    Attributes
    ----------
    pts_T, pts_O : ndarray (N, 3)
        World points (z, y, x) mm of target and organ/shell samples.
    wv_T, wv_O : ndarray (N,)
        Quadrature weights (voxels represented by each sample).
    d_T : float or ndarray
        Target lower dose (Gy).
    d_O : ndarray (N_O,)
        Upper dose per organ/shell sample (Gy).
    rx : float
        Prescription (Gy); doses enter the loss divided by ``rx``.
    w_T, w_O, lam : float
        Weights; ``lam`` in 1/min.
    bbox : ndarray (3, 2)
        Allowed shot positions ``[min, max]`` per axis (mm).
    """

    pts_T: np.ndarray
    pts_O: np.ndarray
    wv_T: np.ndarray
    wv_O: np.ndarray
    d_T: float
    d_O: np.ndarray
    rx: float
    w_T: float = 1.0
    w_O: float = 1.0
    lam: float = 1e-4
    bbox: np.ndarray = field(default_factory=lambda: np.array([[-np.inf, np.inf]] * 3))

    @property
    def points(self) -> np.ndarray:
        return np.concatenate([self.pts_T, self.pts_O])

    def with_weights(self, **kw) -> "PlanningProblem":
        d = dict(self.__dict__)
        d.update(kw)
        return PlanningProblem(**d)


def _target_mask(target, grid: Grid) -> np.ndarray:
    if isinstance(target, Structure):
        grid.require_same(target.grid, f"target {target.name!r}")
        m = target.mask
    else:
        m = grid.check_array("target mask", target)
        if m.dtype != bool:
            raise TypeError(f"target mask must be boolean, got dtype {m.dtype}; use e.g. `labels == 1`")
    if not m.any():
        raise ValueError("target is empty (no voxel inside it); check the mask or the grid")
    if m.all():
        raise ValueError("target fills the whole grid; pad the grid so there is room for the dose fall-off")
    return m


def build_problem(grid: Grid, target, rx: float, oars=(), shell_mm: float = 8.0,
                  falloff_mm: float = 3.0, floor: float = 0.2, band_mm: float = 3.0,
                  stride: int = 2, w_T: float = 1.0, w_O: float = 1.0, lam: float = 1e-4,
                  d_T_factor: float = 1.0) -> PlanningProblem:
    """Sample the voxels of eq. 8 and set its parameters.

    Parameters
    ----------
    grid : Grid
    target : Structure or ndarray of bool
    rx : float
        Prescription dose, Gy.
    oars : sequence of (mask or Structure, limit_Gy)
        Organs at risk with their dose limit ``d_O`` (Gy).
    shell_mm : float
        Outer radius of the shell around the target (mm).
    falloff_mm : float
        Distance (mm) outside the target at which the shell asks for 50 % of ``rx``.
    floor : float
        Lowest shell objective as a fraction of ``rx``.
    band_mm : float
        Voxels within this distance of the target surface are all used; farther ones every
        ``stride`` voxels (weight ``stride**3``).
    w_T, w_O, lam : float
        Weights of eq. 8 (``lam`` per minute).
    d_T_factor : float
        ``d_T = d_T_factor * rx``.
    """
    (rx,) = _check_pos("rx (Gy)", rx)
    for nm, v in (("shell_mm", shell_mm), ("falloff_mm", falloff_mm), ("w_T", w_T), ("w_O", w_O)):
        _check_pos(nm, v)
    if lam < 0 or not np.isfinite(lam):
        raise ValueError(f"lam must be >= 0 (1/min), got {lam!r}")
    if int(stride) < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    m = _target_mask(target, grid)
    sd = _signed_distance(m, grid.spacing)
    kji = np.indices(grid.shape)
    sub = np.ones(grid.shape, bool)
    st = int(stride)
    if st > 1:
        sub = (kji[0] % st == 0) & (kji[1] % st == 0) & (kji[2] % st == 0)
    near = np.abs(sd) <= band_mm
    take = near | sub
    w = np.where(near, 1.0, float(st) ** 3)
    selT = m & take
    shell = (~m) & (sd <= shell_mm) & take
    pts_T = grid.index_to_world(np.argwhere(selT))
    wv_T = w[selT]
    dist = sd[shell]
    d_O = rx * np.maximum(floor, 1.0 - 0.5 * dist / falloff_mm)
    pts_O = [grid.index_to_world(np.argwhere(shell))]
    wv_O = [w[shell]]
    dO = [d_O]
    for item in oars:
        try:
            om, lim = item
        except (TypeError, ValueError):
            raise TypeError("oars must be a sequence of (mask or Structure, limit_Gy) pairs") from None
        om = om.mask if isinstance(om, Structure) else grid.check_array("OAR mask", om).astype(bool)
        om = om & ~m & sub
        if om.any():
            pts_O.append(grid.index_to_world(np.argwhere(om)))
            wv_O.append(np.full(int(om.sum()), float(st) ** 3))
            dO.append(np.full(int(om.sum()), float(lim)))
    idx = np.argwhere(m)
    lo = grid.index_to_world(idx.min(0))
    hi = grid.index_to_world(idx.max(0))
    return PlanningProblem(
        pts_T=np.ascontiguousarray(pts_T), pts_O=np.ascontiguousarray(np.concatenate(pts_O)),
        wv_T=wv_T.astype(float), wv_O=np.concatenate(wv_O).astype(float), d_T=d_T_factor * rx,
        d_O=np.concatenate(dO), rx=rx, w_T=float(w_T), w_O=float(w_O), lam=float(lam),
        bbox=np.stack([lo, hi], axis=1),
    )


def _check_pos(name, v):
    return check_positive(name, v)


def _signed_distance(mask, spacing):
    out = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return out - inside


# ---------------------------------------------------------------------------------------------
# eq. 8 and its gradient (eq. 10)
# ---------------------------------------------------------------------------------------------
def _loss_from_dose(prob: PlanningProblem, DT, DO, t):
    """Loss value and dL/dD per sample (doses in Gy)."""
    rx = prob.rx
    uT = np.maximum(0.0, prob.d_T - DT) / rx
    oO = np.maximum(0.0, DO - prob.d_O) / rx
    VT, VO = prob.wv_T.sum(), max(prob.wv_O.sum(), 1e-12)
    L = prob.w_T / VT * np.sum(prob.wv_T * uT**2) + prob.w_O / VO * np.sum(prob.wv_O * oO**2) + prob.lam * t.sum()
    gT = -2.0 * prob.w_T / VT * prob.wv_T * uT / rx
    gO = 2.0 * prob.w_O / VO * prob.wv_O * oO / rx
    return float(L), gT, gO


def plan_loss(prob: PlanningProblem, shots, times, model=None, backend: str = "numba"):
    """Eq. 8 and its gradient with respect to shot positions and times (eq. 10).

    Returns
    -------
    L : float
    grad_shots : ndarray (S, 3), per mm
    grad_times : ndarray (S, 8, 3), per minute (includes ``lam``)
    """
    s, t = pk.check_shots(shots, times)
    pts = prob.points
    D = pk.dose(pts, s, t, model, backend=backend)
    nT = prob.pts_T.shape[0]
    L, gT, gO = _loss_from_dose(prob, D[:nT], D[nT:], t)
    gp, gt = pk.dose_vjp(pts, np.concatenate([gT, gO]), s, t, model, backend=backend)
    return L, gp, gt + prob.lam


# ---------------------------------------------------------------------------------------------
# heuristic initial shots
# ---------------------------------------------------------------------------------------------
def initial_shots(grid: Grid, target, max_shots: int = 12, cover: float = 0.9, model=None,
                  min_sep_mm: float = 3.0):
    """Greedy medial-axis sphere packing (patent 002, FIG. 9 op. 910: heuristic isocentres).

    Repeatedly take the uncovered target voxel with the largest inside distance ``R`` (the
    radius of the largest inscribed sphere there, plus half a voxel), put a shot there, and mark the target voxels
    within ``R`` of it as covered, until ``cover`` of the target is covered or ``max_shots``.
    The collimator of a shot is the largest whose half-maximum radius does not exceed
    ``1.15 R`` (4 mm otherwise).

    Returns
    -------
    shots : ndarray (S, 3) mm
    collimators : ndarray (S,) int, index into ``COLLIMATORS_MM``
    """
    m = _target_mask(target, grid)
    mdl = pk._model(model)
    inside = ndimage.distance_transform_edt(m, sampling=grid.spacing)
    covered = np.zeros_like(m)
    shots, cols = [], []
    Z, Y, X = grid.mesh(sparse=True)
    n_t = m.sum()
    rho = mdl.rho50
    while len(shots) < max_shots and covered[m].sum() < cover * n_t:
        cand = np.where(m & ~covered, inside, -1.0)
        k = np.unravel_index(np.argmax(cand), m.shape)
        # the surface lies half a voxel beyond the last inside voxel centre
        R = float(inside[k]) + 0.5 * min(grid.spacing)
        p = grid.index_to_world(np.array(k))
        if shots and np.min(np.linalg.norm(np.asarray(shots) - p, axis=1)) < min_sep_mm:
            covered[k] = True
            continue
        c = 0
        for j in range(3):
            if rho[j] <= 1.15 * R:
                c = j
        shots.append(p)
        cols.append(c)
        covered |= m & (((Z - p[0]) ** 2 + (Y - p[1]) ** 2 + (X - p[2]) ** 2) <= (1.1 * R) ** 2)
    return np.asarray(shots, float), np.asarray(cols, int)


# ---------------------------------------------------------------------------------------------
# times only (shots fixed): convex; L-BFGS-B on the influence matrix
# ---------------------------------------------------------------------------------------------
def optimize_times(prob: PlanningProblem, shots, times0=None, model=None, max_iter: int = 300,
                   A=None, ftol: float = 1e-9):
    """Inverse planning with the isocentres fixed (patent 002, FIG. 9 op. 950).

    Minimises eq. 8 over ``t >= 0`` only (convex: squared hinges of linear functions plus a
    linear term) with L-BFGS-B on the exact influence matrix.

    Returns
    -------
    times : ndarray (S, 8, 3)
    info : dict (``loss``, ``n_iter``)
    """
    s, _ = pk.check_shots(shots)
    if A is None:
        A = pk.influence_matrix(prob.points, s, model)
    nT = prob.pts_T.shape[0]
    n = A.shape[1]
    x0 = np.zeros(n) if times0 is None else np.asarray(times0, float).ravel().copy()
    if times0 is None:
        # start: every column at the same time so the target mean reaches rx
        x0[:] = prob.rx / max(A[:nT].sum(axis=1).mean(), 1e-12)

    # float32 copies for the mat-vecs (several times faster; L-BFGS-B needs no more accuracy)
    A32 = np.ascontiguousarray(A, dtype=np.float32)
    A32T = np.ascontiguousarray(A32.T)

    def f(x):
        D = (A32 @ x.astype(np.float32)).astype(np.float64)
        L, gT, gO = _loss_from_dose(prob, D[:nT], D[nT:], x)
        g = (A32T @ np.concatenate([gT, gO]).astype(np.float32)).astype(np.float64) + prob.lam
        return L, g

    with blas_single_thread():
        res = optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * n,
                                options=dict(maxiter=max_iter, ftol=ftol, gtol=1e-10))
    return res.x.reshape(s.shape[0], pk.N_SECTORS, 3), dict(loss=float(res.fun), n_iter=int(res.nit))


# ---------------------------------------------------------------------------------------------
# projected subgradient descent (eq. 9)
# ---------------------------------------------------------------------------------------------
def optimize_pgd(prob: PlanningProblem, shots, times, model=None, n_iter: int = 60,
                 lr_mm: float = 0.25, lr_rel: float = 0.05, callback=None):
    """Projected subgradient descent on eq. 8 over shot positions and times (patent 002, eq. 9).

    ``theta <- proj(theta - eta * g)`` with ``g`` the (sub)gradient of eq. 8 from the analytic
    kernel derivative (eq. 10); the projection clips ``t >= 0`` and each shot into
    ``prob.bbox``. Steps are per-coordinate normalised (Adam moments, beta1 0.9, beta2 0.999):
    about ``lr_mm`` mm for positions and ``lr_rel`` times the mean positive time for times. The
    best iterate is returned.

    Parameters
    ----------
    callback : callable, optional
        ``callback(iteration, loss)`` after every iteration.

    Returns
    -------
    shots, times, history (list of loss values)
    """
    s, t = pk.check_shots(shots, times)
    s, t = s.copy(), t.copy()
    lr_t = lr_rel * max(t[t > 0].mean() if np.any(t > 0) else prob.rx / 10.0, 1e-6)
    ms, vs = np.zeros_like(s), np.zeros_like(s)
    mt, vt = np.zeros_like(t), np.zeros_like(t)
    b1, b2, eps = 0.9, 0.999, 1e-12
    hist = []
    best = (np.inf, s.copy(), t.copy())
    lo, hi = prob.bbox[:, 0], prob.bbox[:, 1]
    for k in range(1, n_iter + 1):
        L, gp, gt = plan_loss(prob, s, t, model)
        hist.append(L)
        if L < best[0]:
            best = (L, s.copy(), t.copy())
        if callback is not None:
            callback(k, L)
        ms = b1 * ms + (1 - b1) * gp
        vs = b2 * vs + (1 - b2) * gp**2
        mt = b1 * mt + (1 - b1) * gt
        vt = b2 * vt + (1 - b2) * gt**2
        c1, c2 = 1 - b1**k, 1 - b2**k
        s = s - lr_mm * (ms / c1) / (np.sqrt(vs / c2) + eps)
        t = t - lr_t * (mt / c1) / (np.sqrt(vt / c2) + eps)
        t = np.maximum(t, 0.0)
        s = np.clip(s, lo, hi)
    L = plan_loss(prob, s, t, model)[0]
    hist.append(L)
    if L < best[0]:
        best = (L, s, t)
    return best[1], best[2], hist


# ---------------------------------------------------------------------------------------------
# smooth reformulation with auxiliary variables (eq. 11)
# ---------------------------------------------------------------------------------------------
def _dose_jacobian(pts, shots, times, model):
    """dD/dshots (N, S, 3) by the analytic kernel gradient, and dD/dt (N, S*24)."""
    mdl = pk._model(model)
    A = pk.influence_matrix(pts, shots, mdl)
    S = shots.shape[0]
    Jp = np.zeros((pts.shape[0], S, 3))
    for i in range(S):
        u = pts - shots[i]
        for s in range(pk.N_SECTORS):
            for c, col in enumerate(pk.COLLIMATORS_MM):
                tt = times[i, s, c]
                if tt != 0.0:
                    Jp[:, i] -= tt * pk.kernel_gradient(u, col, s, mdl)
    return Jp, A


def optimize_smooth(prob: PlanningProblem, shots, times, model=None, max_samples: int = 600,
                    max_iter: int = 150, seed: int = 0, move_shots: bool = True):
    """Eq. 11: auxiliary-variable smooth reformulation solved by ``trust-constr``.

    Variables ``x = (shots, t, s_T, s_O)``::

        min  w_T/|V_T| sum wv s_T^2 + w_O/|V_O| sum wv s_O^2 + lam sum t
        s.t. s_T + D_T(shots, t)/rx >= d_T/rx,   s_O - D_O(shots, t)/rx >= -d_O/rx,
             s >= 0, t >= 0, shots in bbox

    At the optimum ``s_T = max(0, d_T - D_T)/rx`` etc., so its value equals eq. 8. The
    constraint Jacobian is analytic (sparse: dense in the plan variables, identity in ``s``);
    the constraint Hessian is neglected (a Gauss-Newton-like SQP model; the objective Hessian is
    exact). Runs on at most ``max_samples`` target and ``max_samples`` organ samples (random,
    reweighted to the same volume).

    Returns
    -------
    shots, times, info (``loss_eq8`` on the full problem, ``status``, ``n_iter``, ``message``)
    """
    s0, t0 = pk.check_shots(shots, times)
    rng = np.random.default_rng(seed)

    def pick(n):
        if n <= max_samples:
            return np.arange(n)
        return np.sort(rng.choice(n, max_samples, replace=False))

    iT, iO = pick(prob.pts_T.shape[0]), pick(prob.pts_O.shape[0])
    pts = np.concatenate([prob.pts_T[iT], prob.pts_O[iO]])
    wT = prob.wv_T[iT] * prob.wv_T.sum() / prob.wv_T[iT].sum()
    wO = prob.wv_O[iO] * prob.wv_O.sum() / max(prob.wv_O[iO].sum(), 1e-12)
    dT = np.broadcast_to(prob.d_T, prob.pts_T.shape[0])[iT] / prob.rx
    dO = prob.d_O[iO] / prob.rx
    nT, nO = iT.size, iO.size
    S = s0.shape[0]
    np_ = 3 * S if move_shots else 0
    nt = S * pk.N_SECTORS * 3
    VT, VO = prob.wv_T.sum(), max(prob.wv_O.sum(), 1e-12)
    cT, cO = prob.w_T / VT * wT, prob.w_O / VO * wO

    def unpack(x):
        sh = x[:np_].reshape(S, 3) if move_shots else s0
        t = x[np_:np_ + nt].reshape(S, pk.N_SECTORS, 3)
        return sh, t, x[np_ + nt:np_ + nt + nT], x[np_ + nt + nT:]

    def fun(x):
        _, t, sT, sO = unpack(x)
        return float(np.sum(cT * sT**2) + np.sum(cO * sO**2) + prob.lam * t.sum())

    def grad(x):
        _, t, sT, sO = unpack(x)
        return np.concatenate([np.zeros(np_), np.full(nt, prob.lam), 2 * cT * sT, 2 * cO * sO])

    hdiag = np.concatenate([np.zeros(np_ + nt), 2 * cT, 2 * cO])
    hess = sparse.diags(hdiag)

    def cons(x):
        sh, t, sT, sO = unpack(x)
        D = pk.dose(pts, sh, np.maximum(t, 0.0), model) / prob.rx
        return np.concatenate([sT + D[:nT] - dT, sO - D[nT:] + dO])

    def cons_jac(x):
        sh, t, _, _ = unpack(x)
        Jp, A = _dose_jacobian(pts, sh, np.maximum(t, 0.0), model)
        sign = np.concatenate([np.ones(nT), -np.ones(nO)])[:, None] / prob.rx
        blocks = []
        if move_shots:
            blocks.append(sparse.csr_matrix(Jp.reshape(nT + nO, -1) * sign))
        blocks.append(sparse.csr_matrix(A * sign))
        blocks.append(sparse.identity(nT + nO, format="csr"))
        return sparse.hstack(blocks, format="csr")

    n = np_ + nt + nT + nO

    def cons_hess(x, v):
        return sparse.csr_matrix((n, n))

    D0 = pk.dose(pts, s0, t0, model) / prob.rx
    x0 = np.concatenate([s0.ravel() if move_shots else np.zeros(0), t0.ravel(),
                         np.maximum(0, dT - D0[:nT]), np.maximum(0, D0[nT:] - dO)])
    lb = np.concatenate([np.tile(prob.bbox[:, 0], S) if move_shots else np.zeros(0), np.zeros(nt + nT + nO)])
    ub = np.concatenate([np.tile(prob.bbox[:, 1], S) if move_shots else np.zeros(0), np.full(nt + nT + nO, np.inf)])
    x0 = np.clip(x0, lb, ub)
    nlc = optimize.NonlinearConstraint(cons, 0.0, np.inf, jac=cons_jac, hess=cons_hess)
    res = optimize.minimize(fun, x0, jac=grad, hess=lambda x: hess, method="trust-constr",
                            constraints=[nlc], bounds=optimize.Bounds(lb, ub),
                            options=dict(maxiter=max_iter, verbose=0))
    sh, t, _, _ = unpack(res.x)
    t = np.maximum(t, 0.0)
    sh = np.clip(sh, prob.bbox[:, 0], prob.bbox[:, 1])
    L = plan_loss(prob, sh, t, model)[0]
    return sh.copy(), t.copy(), dict(loss_eq8=L, status=int(res.status), n_iter=int(res.nit),
                                     message=str(res.message), constr_violation=float(res.constr_violation))


# ---------------------------------------------------------------------------------------------
# normalisation, evaluation, the full pipeline
# ---------------------------------------------------------------------------------------------
def normalize_coverage(plan: GKPlan, dose_target: np.ndarray, rx: float, coverage: float = 0.97):
    """Scale all times so that a fraction ``coverage`` of the target voxels gets ``>= rx``.

    ``dose_target`` holds the plan's dose (Gy) at every target voxel. Returns the scaled plan
    and the factor.
    """
    d = np.asarray(dose_target, float)
    if d.size == 0:
        raise ValueError("dose_target is empty")
    q = np.quantile(d, 1.0 - coverage, method="lower")
    if q <= 0:
        raise ValueError("the plan gives no dose to part of the target; cannot normalise")
    f = rx / q * (1.0 + 1e-9)
    return plan.scaled(f), f


def evaluate_plan(plan: GKPlan, grid: Grid, target, rx: float, body=None, model=None,
                  dose=None) -> dict:
    """Plan quality via :func:`rtlab.metrics.conformity_report` plus beam-on time.

    Returns a dict with ``coverage``, ``selectivity``, ``ci_paddick``, ``gi``, ``beam_on_min``,
    ``n_shots``, ``isodose_pct`` (rx as % of the maximum dose), ``dmax`` (Gy) and the report's
    volumes.
    """
    m = _target_mask(target, grid)
    if dose is None:
        dose = plan.dose(grid, model=model)
    st = Structure("Target", m, grid, kind="target", prescription=rx)
    rep = conformity_report(dose, st, rx=rx, body=body)
    dmax = float(dose.max())
    return dict(
        coverage=float(rep["coverage"]), selectivity=float(rep["selectivity"]),
        ci_paddick=float(rep["ci_paddick"]), gi=float(rep["gi"]), beam_on_min=plan.beam_on_min,
        n_shots=plan.n_shots, isodose_pct=100.0 * rx / dmax if dmax > 0 else float("nan"), dmax=dmax,
        tv_cc=float(rep["tv_cc"]), piv_cc=float(rep["piv_cc"]), piv50_cc=float(rep["piv50_cc"]),
    )


@dataclass
class GKResult:
    """Output of :func:`plan_gamma_knife`."""

    plan: GKPlan
    metrics: dict
    history: list
    timings: dict
    rounds: list
    dose: np.ndarray | None = None


def _score(mt, ci_goal, gi_goal):
    return mt["ci_paddick"] - max(0.0, mt["gi"] - gi_goal) - 0.5 * max(0.0, ci_goal - mt["ci_paddick"])


def plan_gamma_knife(grid: Grid, target, rx: float, oars=(), body=None, model=None,
                     method: str = "pgd", max_shots: int = 6, n_iter: int = 40,
                     coverage_goal: float = 0.96, ci_goal: float = 0.80, gi_goal: float = 3.0,
                     max_rounds: int = 3, problem_kw=None, callback=None) -> GKResult:
    """Plan shots and times for one target (patent 002, FIG. 9).

    Steps: heuristic shots -> times with shots fixed -> joint optimisation of eq. 8
    (``method='pgd'``: projected subgradient descent, eq. 9; ``'smooth'``: eq. 11 with
    trust-constr; ``'times'``: keep the heuristic shots) -> normalisation to
    ``coverage_goal`` -> quality check (Paddick CI >= ``ci_goal``, GI <= ``gi_goal``) and, if
    needed, inverse planning again with the shots fixed and a doubled shell weight, up to
    ``max_rounds`` times; the best plan wins.

    Parameters
    ----------
    grid : Grid
        Dose / evaluation grid (keep it modest: e.g. 1 mm voxels in a 60 mm box).
    target : Structure or ndarray of bool
    rx : float
        Prescription (Gy).
    oars : sequence of (mask, limit_Gy)
    body : Structure or ndarray of bool, optional
        Region for the prescription isodose volume (default the whole grid).
    callback : callable, optional
        ``callback(stage, iteration, loss)``.

    Returns
    -------
    GKResult
    """
    if method not in ("pgd", "smooth", "times"):
        raise ValueError(f"method must be 'pgd', 'smooth' or 'times', got {method!r}")
    m = _target_mask(target, grid)
    t_start = time.perf_counter()
    prob = build_problem(grid, m, rx, oars=oars, **(problem_kw or {}))
    timings = {}
    t0 = time.perf_counter()
    shots, cols = initial_shots(grid, m, max_shots=max_shots, model=model)
    timings["initial_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    times, _ = optimize_times(prob, shots, model=model)
    timings["times_s"] = time.perf_counter() - t0
    history = []
    t0 = time.perf_counter()
    if method == "pgd":
        cb = None if callback is None else (lambda k, L: callback("pgd", k, L))
        shots, times, history = optimize_pgd(prob, shots, times, model=model, n_iter=n_iter, callback=cb)
    elif method == "smooth":
        shots, times, info = optimize_smooth(prob, shots, times, model=model)
        history = [info["loss_eq8"]]
    timings["joint_s"] = time.perf_counter() - t0
    tgt_idx = np.flatnonzero(m.ravel())
    rounds = []
    best = None
    A = None
    t0 = time.perf_counter()
    w_O = prob.w_O
    for r in range(max_rounds):
        if r > 0 or method != "times":
            # re-plan with the shots fixed (FIG. 9 op. 950)
            if A is None:
                A = pk.influence_matrix(prob.points, shots, model)
            times, _ = optimize_times(prob.with_weights(w_O=w_O), shots, times0=times, model=model, A=A)
        plan = GKPlan(shots, times)
        plan, _ = normalize_coverage(plan, plan.dose(grid, indices=tgt_idx, model=model), rx, coverage_goal)
        dose = plan.dose(grid, model=model)
        mt = evaluate_plan(plan, grid, m, rx, body=body, dose=dose)
        rounds.append(dict(round=r, w_O=w_O, **{k: mt[k] for k in ("coverage", "ci_paddick", "gi", "beam_on_min")}))
        if callback is not None:
            callback("check", r, mt["ci_paddick"])
        if best is None or _score(mt, ci_goal, gi_goal) > _score(best[1], ci_goal, gi_goal):
            best = (plan, mt, dose)
        if mt["ci_paddick"] >= ci_goal and mt["gi"] <= gi_goal and mt["coverage"] >= coverage_goal - 1e-9:
            break
        w_O *= 2.0
    timings["check_s"] = time.perf_counter() - t0
    timings["optimize_s"] = time.perf_counter() - t_start
    plan, mt, dose = best
    return GKResult(plan=plan, metrics=mt, history=history, timings=timings, rounds=rounds, dose=dose)


def crop_to_target(grid: Grid, target_mask, margin_mm: float = 15.0):
    """Sub-grid around the target (its bounding box plus ``margin_mm``) and the index slices.

    Returns
    -------
    (Grid, tuple of slice)
    """
    m = _target_mask(target_mask, grid)
    idx = np.argwhere(m)
    pad = np.ceil(margin_mm / np.asarray(grid.spacing)).astype(int)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, np.asarray(grid.shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = Grid(tuple(int(b - a) for a, b in zip(lo, hi)), grid.spacing, tuple(grid.index_to_world(lo)))
    return sub, sl


def gk_summary(case_or_phantom_name="head", spacing: float = 1.0, target: str = "sphere",
               method: str = "pgd", margin_mm: float = 15.0, model=None, **plan_kw) -> dict:
    """Plan a Gamma-Knife case end to end and summarise it (for ``rtlab gk --json``).

    Parameters
    ----------
    case_or_phantom_name : str or Case
        A phantom name for :func:`rtlab.phantoms.get_phantom` (default ``'head'``) or a
        :class:`rtlab.case.Case` with a target (and optionally a body and OARs with ``Dmax``
        goals).
    spacing : float
        Voxel size (mm) when building a phantom.
    target : str
        ``'sphere'`` or ``'irregular'`` for the head phantom.
    method : {'pgd', 'smooth', 'times'}
    margin_mm : float
        The dose is computed in the target's bounding box plus this margin.

    Returns
    -------
    dict
        ``coverage``, ``selectivity``, ``ci_paddick``, ``gi``, ``beam_on_min``, ``n_shots``,
        ``optimize_s``, ``isodose_pct``, ``rx``, ``case``, ``method``, ``collimator_min``,
        ``rounds``.
    """
    from ..core.case import Case

    if isinstance(case_or_phantom_name, str):
        from ..phantoms import get_phantom

        kw = {"target": target} if case_or_phantom_name == "head" else {}
        case = get_phantom(case_or_phantom_name, spacing=spacing, **kw)
    elif isinstance(case_or_phantom_name, Case):
        case = case_or_phantom_name
    else:
        raise TypeError(f"case_or_phantom_name must be a phantom name or a Case, got {type(case_or_phantom_name).__name__}")
    tg = case.structures.targets
    if not tg:
        raise ValueError(f"case {case.name!r} has no target structure")
    tgt = tg[0]
    rx = tgt.prescription or case.prescription
    if rx is None:
        raise ValueError(f"target {tgt.name!r} has no prescription")
    sub, sl = crop_to_target(case.grid, tgt.mask, margin_mm)
    m = tgt.mask[sl]
    body = case.structures.body
    body_m = body.mask[sl] if body is not None else None
    oars = []
    for g in case.goals:
        if g.metric == "Dmax" and g.comparator == "<=" and g.structure in case.structures:
            om = case.structures[g.structure].mask[sl]
            if om.any():
                oars.append((om, float(g.value)))
    res = plan_gamma_knife(sub, m, rx, oars=oars, body=body_m, model=model, method=method, **plan_kw)
    mt = res.metrics
    out = {k: mt[k] for k in ("coverage", "selectivity", "ci_paddick", "gi", "beam_on_min", "n_shots", "isodose_pct")}
    out.update(optimize_s=res.timings["optimize_s"], rx=float(rx), case=case.name, method=method,
               collimator_min=res.plan.collimator_use(), rounds=res.rounds, grid_shape=list(sub.shape))
    dose = res.dose
    for g in case.goals:
        if g.metric == "Dmax" and g.structure in case.structures and case.structures[g.structure].kind != "target":
            om = case.structures[g.structure].mask[sl]
            out[f"{g.structure}_Dmax_Gy"] = float(dose[om].max()) if om.any() else 0.0
    return out
