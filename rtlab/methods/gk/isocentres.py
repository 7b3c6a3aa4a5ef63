"""Shot (isocentre) and time optimisation through the differentiable point-kernel dose (patent 002,
eqs 9-11, FIG. 9): heuristic initial shots, projected subgradient descent, the smooth
reformulation, times with the shots fixed.
"""

from __future__ import annotations

import ctypes

import numpy as np
from scipy import ndimage, optimize, sparse

from ...core.geometry import Grid
from ...dose import pointkernel as pk
from .problem import PlanningProblem, loss_from_dose, plan_loss, target_as_mask

__all__ = ["initial_shots", "optimize_times", "optimize_pgd", "optimize_smooth", "blas_single_thread"]


_BLAS_FUNCS = None


def _blas_funcs():
    global _BLAS_FUNCS
    if _BLAS_FUNCS is not None:
        return _BLAS_FUNCS
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
    m = target_as_mask(target, grid)
    mdl = pk.as_model(model)
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
        L, gT, gO = loss_from_dose(prob, D[:nT], D[nT:], x)
        g = (A32T @ np.concatenate([gT, gO]).astype(np.float32)).astype(np.float64) + prob.lam
        return L, g

    with blas_single_thread():
        res = optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * n,
                                options=dict(maxiter=max_iter, ftol=ftol, gtol=1e-10))
    return res.x.reshape(s.shape[0], pk.N_SECTORS, 3), dict(loss=float(res.fun), n_iter=int(res.nit))


def optimize_pgd(prob: PlanningProblem, shots, times, model=None, n_iter: int = 60,
                 lr_mm: float = 0.25, lr_rel: float = 0.05, callback=None, step: str = "adam"):
    """Projected subgradient descent on eq. 8 over shot positions and times (patent 002, eq. 9).

    ``theta <- proj(theta - eta * g)`` with ``g`` the (sub)gradient of eq. 8 from the analytic
    kernel derivative (eq. 10); the projection clips ``t >= 0`` and each shot into
    ``prob.bbox``. Two step rules:

    * ``step='adam'`` (default): steps per-coordinate normalised by Adam moments (beta1 0.9,
      beta2 0.999): about ``lr_mm`` mm for positions and ``lr_rel`` times the mean positive time
      for times;
    * ``step='subgradient'``: the patent's plain projected subgradient step (eq. 9) with the
      classical diminishing, normalised step size (Shor):
      ``theta_k+1 = proj(theta_k - eta_k g_k / ||g_k||)``, ``eta_k = eta_0 / sqrt(k)``, one block
      for the positions (``eta_0 = lr_mm`` mm, ``g`` the (S, 3) position subgradient) and one for
      the times (``eta_0 = lr_rel`` times the mean positive time times ``sqrt(n_times)``, i.e.
      about ``lr_rel`` relative change per time). A subgradient method does not decrease the
      loss monotonically, so the best iterate is kept.

    The best iterate is returned.

    Parameters
    ----------
    step : {'adam', 'subgradient'}
    callback : callable, optional
        ``callback(iteration, loss)`` after every iteration.

    Returns
    -------
    shots, times, history (list of loss values)
    """
    if step not in ("adam", "subgradient"):
        raise ValueError(f"step must be 'adam' or 'subgradient' (eq. 9), got {step!r}")
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
        if step == "subgradient":
            eta = 1.0 / np.sqrt(k)
            s = s - eta * lr_mm * gp / max(np.linalg.norm(gp), 1e-300)
            t = t - eta * lr_t * np.sqrt(t.size) * gt / max(np.linalg.norm(gt), 1e-300)
        else:
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


def _dose_jacobian(pts, shots, times, model):
    """dD/dshots (N, S, 3) by the analytic kernel gradient, and dD/dt (N, S*24)."""
    mdl = pk.as_model(model)
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
