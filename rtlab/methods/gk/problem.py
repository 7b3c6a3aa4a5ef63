"""The Gamma-Knife planning problem of patent 002 (eq. 8): target, shell and organs, the loss and its
evaluation (see :mod:`rtlab.methods.gk` for the method).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..._util import check_positive
from ...core.geometry import Grid, Structure
from ...dose import pointkernel as pk
from ...evaluate.metrics import conformity_report

__all__ = ["GKPlan", "PlanningProblem", "build_problem", "plan_loss", "normalize_coverage", "evaluate_plan", "target_as_mask", "loss_from_dose"]


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


def target_as_mask(target, grid: Grid) -> np.ndarray:
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
    m = target_as_mask(target, grid)
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


def loss_from_dose(prob: PlanningProblem, DT, DO, t):
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
    L, gT, gO = loss_from_dose(prob, D[:nT], D[nT:], t)
    gp, gt = pk.dose_vjp(pts, np.concatenate([gT, gO]), s, t, model, backend=backend)
    return L, gp, gt + prob.lam


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
    """Plan quality via :func:`rtlab.evaluate.metrics.conformity_report` plus beam-on time.

    Returns a dict with ``coverage``, ``selectivity``, ``ci_paddick``, ``gi``, ``beam_on_min``,
    ``n_shots``, ``isodose_pct`` (rx as % of the maximum dose), ``dmax`` (Gy) and the report's
    volumes.
    """
    m = target_as_mask(target, grid)
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
