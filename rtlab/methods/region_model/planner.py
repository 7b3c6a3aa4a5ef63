"""The "historical plans" of the dose-region model and the warm start it feeds (patent 000, para. 130-136).

* :class:`ConformityPlanner` -- beamlet weights optimised with rtlab's dose engine and the
  conformity objective (:mod:`rtlab.methods.conformity`, eqs 3, 8);
* :class:`GaussianStandInPlanner` -- a fast physics-flavoured stand-in for tests;
* :func:`get_planner` -- a planner by name (any ``planner(case) -> PlanOutcome`` works);
* :func:`warm_start_weights`, :func:`compare_warm_start` -- a predicted region as the start of the
  conformity optimisation (para. 134-136, claim 7).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage
from tqdm.auto import tqdm

from ..._util import check_finite, check_positive
from ...core.case import Case
from ...core.selection import rows_for
from ...dose import build_influence
from ...optimize import MaxDose, Objective, SquaredOverdose, solve
from ..conformity import ConformityTerm, paddick_ci
from .cases import case_masks
from .metrics import dice


__all__ = ["PlanOutcome", "GaussianStandInPlanner", "ConformityPlanner", "get_planner", "warm_start_weights", "compare_warm_start", "paddick_ci_of"]


@dataclass
class PlanOutcome:
    """What a planner returns for one case.

    Attributes
    ----------
    dose : ndarray of float, shape ``case.grid.shape``
        Dose in Gy (zero outside the body).
    d_ref : float
        Reference isodose in Gy (the dose region is ``dose >= d_ref`` inside the body).
    info : dict
        JSON-serialisable planner details (iterations, objective, CI, ...).
    """

    dose: np.ndarray
    d_ref: float
    info: dict = field(default_factory=dict)


def paddick_ci_of(region, target) -> float:
    """Paddick CI ``TV_RI^2 / (TV * V_RI)`` of a dose region (bool) and a target (bool), same grid.

    :func:`rtlab.methods.conformity.paddick_ci` of the region as a 0/1 dose at level 0.5.
    """
    return paddick_ci(np.asarray(region, bool), np.asarray(target, bool), 0.5)


class GaussianStandInPlanner:
    """A fast stand-in for an optimised plan: blurred target minus blurred organ.

    Not a dose calculation. For target mask ``T``, organ mask ``O``, body ``B``::

        raw  = G_sigma * T  -  s * G_sigma * O          (G: Gaussian filter, mm -> voxels)
        dose = d_ref * raw / q    inside B, 0 outside, q = quantile_{T}(raw, 1 - coverage)

    with ``sigma = (sigma_z, sigma_xy, sigma_xy)`` mm, ``sigma_z = penumbra_mm`` (field-edge
    penumbra along the gantry axis) and ``sigma_xy = penumbra_mm + spread_mm / n_beams``
    (fewer beams spread the high dose further in the axial plane), and organ sparing
    ``s = 1 - organ_limit_frac`` (a tighter organ limit carves the region back further). The
    scaling puts ``coverage`` (default 95 %) of the target at or above ``d_ref``. It mimics
    the qualitative behaviour of an optimised plan (a dose region hugging the target, rounded
    at concavities, pulled back from the organ) in ~10 ms per case; it knows nothing about
    tissue density. Data sets made with it are for tests and quick experiments only: the
    model shipped with rtlab and any reported number must come from :class:`ConformityPlanner`
    data (regenerate with ``planner='conformity'``).
    """

    name = "gaussian-standin/1"

    def __init__(self, penumbra_mm: float = 3.0, spread_mm: float = 15.0, coverage: float = 0.95):
        (self.penumbra_mm,) = check_positive("penumbra_mm", penumbra_mm)
        (self.spread_mm,) = check_positive("spread_mm", spread_mm, allow_zero=True)
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
        self.coverage = float(coverage)

    def settings(self) -> dict:
        return {"penumbra_mm": self.penumbra_mm, "spread_mm": self.spread_mm, "coverage": self.coverage}

    def __call__(self, case: Case) -> PlanOutcome:
        t0 = time.perf_counter()
        target, organ, body = case_masks(case)
        p = case.meta.get("region_params", {})
        nb = int(p.get("n_beams", max(len(case.beams), 1)))
        s = 1.0 - float(p.get("organ_limit_frac", 0.7))
        sxy = self.penumbra_mm + self.spread_mm / nb
        sig = np.array([self.penumbra_mm, sxy, sxy]) / np.asarray(case.grid.spacing)
        raw = ndimage.gaussian_filter(target.astype(np.float64), sig, mode="constant")
        if organ.any():
            raw -= s * ndimage.gaussian_filter(organ.astype(np.float64), sig, mode="constant")
        q = float(np.quantile(raw[target], 1.0 - self.coverage))
        if not q > 0:
            raise ValueError("the stand-in dose is not positive in the target (organ sparing too strong)")
        d_ref = float(case.prescription or case.structures.targets[0].prescription or 1.0)
        dose = np.where(body, d_ref * raw / q, 0.0).clip(min=0.0)
        region = dose >= d_ref
        return PlanOutcome(dose, d_ref, {"planner": self.name, "ci": paddick_ci_of(region, target),
                                         "time_s": time.perf_counter() - t0})


class ConformityPlanner:
    """Plans with rtlab's dose engine and the patent's conformity objective (section A).

    Influence matrix: :func:`rtlab.dose.build_influence` on the case's beams (body voxels,
    ``cutoff_mm``, ``bixel_mm``). Objective (:mod:`rtlab.optimize`)::

        (f_C - 1)^2                                   conformity of PTV at d_ref (eq 8, steepness k)
      + w_oar   mean_{OAR} (d - limit)_+^2            organ limit = organ_limit_frac * d_ref
      + w_max   smooth max over the body vs hot * d_ref

    solved with L-BFGS-B from the uniform preliminary plan ``x0 = d_ref / mean_T(A 1)``
    (claim 6 stopping rule on the change of ``f``). The dose region is ``dose >= d_ref`` on
    the CT grid.
    """

    name = "conformity/1"

    def __init__(self, steepness: float = 20.0, w_oar: float = 1e-2, w_max: float = 1e-3, hot: float = 1.1,
                 max_iter: int = 150, change_threshold: float = 1e-4, change_window: int = 5,
                 cutoff_mm: float = 20.0, bixel_mm: float = 5.0):
        self.steepness = float(steepness)
        self.w_oar = float(w_oar)
        self.w_max = float(w_max)
        self.hot = float(hot)
        self.max_iter = int(max_iter)
        self.change_threshold = float(change_threshold)
        self.change_window = int(change_window)
        self.cutoff_mm = float(cutoff_mm)
        self.bixel_mm = float(bixel_mm)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ("steepness", "w_oar", "w_max", "hot", "max_iter",
                                              "change_threshold", "change_window", "cutoff_mm", "bixel_mm")}

    def influence(self, case: Case):
        """The case's influence matrix (:class:`rtlab.dose.InfluenceMatrix`)."""
        return build_influence(case, case.beams, cutoff_mm=self.cutoff_mm, bixel_mm=self.bixel_mm, progress=False)

    def objective(self, case: Case, inf, d_ref: float):
        """The conformity objective of the docstring on the rows of ``inf``."""
        target, organ, body = case_masks(case)
        vi = inf.voxel_index
        body_rows = rows_for(body, vi, missing="ignore")
        terms = [ConformityTerm(rows_for(target, vi), d_ref, domain_rows=body_rows, steepness=self.steepness,
                                name="PTV conformity")]
        if organ.any():
            limit = float(case.meta.get("region_params", {}).get("organ_limit_frac", 0.7)) * d_ref
            terms.append(SquaredOverdose(rows_for(organ, vi, missing="ignore"), limit, weight=self.w_oar,
                                         name="OAR overdose"))
        terms.append(MaxDose(body_rows, self.hot * d_ref, weight=self.w_max, name="max dose"))
        return Objective(terms)

    def uniform_start(self, case: Case, inf, d_ref: float) -> np.ndarray:
        """The preliminary plan: equal weights scaled to a mean target dose of ``d_ref``."""
        target, _, _ = case_masks(case)
        d1 = inf.matvec(np.ones(inf.shape[1]))
        m = float(np.mean(d1[rows_for(target, inf.voxel_index)]))
        if not m > 0:
            raise ValueError("the beams deliver no dose to the target; check the beam set-up")
        return np.full(inf.shape[1], d_ref / m)

    def solve(self, case: Case, inf, d_ref: float, x0=None):
        """Run the optimisation; returns :class:`rtlab.optimize.OptimizationResult`."""
        if x0 is None:
            x0 = self.uniform_start(case, inf, d_ref)
        return solve(inf.operator(), self.objective(case, inf, d_ref), x0, method="lbfgsb", max_iter=self.max_iter,
                     change_threshold=self.change_threshold, change_window=self.change_window,
                     report_every=10 ** 6)

    def __call__(self, case: Case) -> PlanOutcome:
        t0 = time.perf_counter()
        target, _, body = case_masks(case)
        d_ref = float(case.prescription or case.structures.targets[0].prescription)
        inf = self.influence(case)
        res = self.solve(case, inf, d_ref)
        dose = np.where(body, inf.dose(res.x), 0.0)
        return PlanOutcome(dose, d_ref, {
            "planner": self.name, "ci": paddick_ci_of(dose >= d_ref, target), "iterations": int(res.iterations),
            "status": res.status, "objective": float(res.objective), "n_beamlets": int(inf.shape[1]),
            "time_s": time.perf_counter() - t0,
        })


def get_planner(planner) -> Callable:
    """``'standin'`` / ``'conformity'`` / a callable ``planner(case) -> PlanOutcome``."""
    if planner is None or planner == "standin":
        return GaussianStandInPlanner()
    if planner == "conformity":
        return ConformityPlanner()
    if callable(planner):
        return planner
    raise ValueError(f"planner must be 'standin', 'conformity' or a callable case -> PlanOutcome, got {planner!r}")


def warm_start_weights(A, region, d_ref: float, voxel_index=None, *, inside_level: float = 1.05,
                       outside_weight: float = 1.0, n_iter: int = 50, x0=None, tol: float = 1e-6) -> np.ndarray:
    """Initial beamlet weights whose dose region resembles a predicted region.

    Non-negative weighted least squares (projected gradient with Barzilai-Borwein steps)::

        min_{x >= 0}  1/n_in  sum_{i in R}  (d_i - inside_level * d_ref)^2
                    + w/n_out sum_{i not in R} d_i^2                  d = A x

    i.e. ``A x ~ d_ref * region`` (with ``inside_level = 1``), where ``R`` is the predicted
    region on the rows of ``A`` (a probability map is thresholded at 0.5). The default
    ``inside_level = 1.05`` aims 5 % above ``d_ref`` so that the ``d_ref`` isodose encloses
    the region rather than cutting through it (with 1.0 about half of the region ends up
    below ``d_ref``: on two 32^3 cases the start's exact CI was 0.37-0.43 with 1.0 and
    0.73-0.92 with 1.05, against 0.27-0.32 for the uniform start). The two
    parts are averaged separately so a small region is not swamped by the many outside rows.

    Parameters
    ----------
    A : InfluenceMatrix, linear operator, scipy.sparse matrix or ndarray, shape ``(n_rows, n_beamlets)``
        Influence matrix (Gy per unit weight): an object with ``shape``, ``matvec`` and
        ``rmatvec`` (:class:`rtlab.dose.InfluenceMatrix`, its :meth:`~rtlab.dose.InfluenceMatrix.operator`)
        or a matrix.
    region : ndarray
        Predicted region: bool/probability on the grid (with ``voxel_index``) or one value per
        row of ``A``.
    d_ref : float
        Reference isodose (Gy).
    voxel_index : ndarray of int, optional
        Flat grid index of each row of ``A`` (needed when ``region`` is a grid).
    inside_level : float
        Target dose inside the region as a multiple of ``d_ref`` (default 1.05).
    outside_weight : float
        ``w`` above.
    n_iter : int
        Projected-gradient iterations.
    x0 : ndarray, optional
        Start (default: uniform weights giving a mean dose ``d_ref`` in the region).
    tol : float
        Stop when the relative change of the objective is below ``tol``.

    Returns
    -------
    ndarray of float64, shape ``(n_beamlets,)``, non-negative.
    """
    if not hasattr(A, "shape") or len(A.shape) != 2:
        raise TypeError("A must be an InfluenceMatrix, a linear operator, or a 2-D scipy.sparse matrix or ndarray "
                        "(rows = voxels, columns = beamlets)")
    n_rows, n_cols = A.shape
    r = np.asarray(region)
    if voxel_index is not None:
        vi = np.asarray(voxel_index)
        if vi.ndim != 1 or vi.size != n_rows or vi.dtype.kind not in "iu":
            raise ValueError(f"voxel_index must be a 1-D integer array with one entry per row of A ({n_rows})")
        flat = r.ravel()
        if vi.size and vi.max() >= flat.size:
            raise ValueError(f"voxel_index reaches {int(vi.max())} but region has only {flat.size} voxels")
        r = flat[vi]
    elif r.shape != (n_rows,):
        raise ValueError(f"region has shape {r.shape}; give one value per row of A ({n_rows}) or pass voxel_index")
    check_finite("region", r.astype(np.float64))
    inside = r.astype(np.float64) >= 0.5
    if not inside.any():
        raise ValueError("the predicted region holds no row of A; nothing to aim the dose at")
    (d_ref,) = check_positive("d_ref (Gy)", d_ref)
    (outside_weight,) = check_positive("outside_weight", outside_weight, allow_zero=True)
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    w = np.where(inside, 1.0 / n_in, outside_weight / max(n_out, 1))
    t = np.where(inside, inside_level * d_ref, 0.0)
    if callable(getattr(A, "matvec", None)) and callable(getattr(A, "rmatvec", None)) and not sp.issparse(A):
        fwd = lambda v: np.asarray(A.matvec(v), np.float64).ravel()  # noqa: E731
        adj = lambda g: np.asarray(A.rmatvec(g), np.float64).ravel()  # noqa: E731
    else:
        At = A.T.tocsr() if hasattr(A, "tocsr") else np.asarray(A).T
        fwd = lambda v: np.asarray(A @ v).ravel()  # noqa: E731
        adj = lambda g: np.asarray(At @ g).ravel()  # noqa: E731

    def fg(x):
        d = fwd(x)
        res = d - t
        return float(np.sum(w * res * res)), 2.0 * adj(w * res)

    if x0 is None:
        d1 = fwd(np.ones(n_cols))
        m = float(d1[inside].mean())
        if not m > 0:
            raise ValueError("A delivers no dose inside the predicted region")
        x = np.full(n_cols, d_ref / m)
    else:
        x = np.maximum(np.asarray(x0, np.float64).ravel(), 0.0)
        if x.size != n_cols:
            raise ValueError(f"x0 has {x.size} entries, A has {n_cols} columns")
    f, g = fg(x)
    alpha = 1.0 / max(float(np.abs(g).max()), 1e-300) * float(x.max()) * 0.1
    for _ in range(int(n_iter)):
        for _bt in range(40):  # Armijo backtracking on the projection arc
            xn = np.maximum(x - alpha * g, 0.0)
            fn, gn = fg(xn)
            if fn <= f + 1e-4 * float(g @ (xn - x)):
                break
            alpha *= 0.5
        s, yv = xn - x, gn - g
        done = abs(f - fn) <= tol * max(abs(f), 1e-300)
        x, f, g = xn, fn, gn
        if done:
            break
        sy = float(s @ yv)
        alpha = float(s @ s) / sy if sy > 1e-300 else alpha * 2.0
    return x


def compare_warm_start(cases, model, planner: ConformityPlanner | None = None, *,
                       threshold: float = 0.5, warm_iter: int = 50, progress: bool = True):
    """Optimise each case from the uniform preliminary plan and from the model's prediction.

    For each case: build the influence matrix and the conformity objective of ``planner``
    (:class:`ConformityPlanner`); run it from ``x0 = d_ref / mean_T(A 1)`` (uniform) and from
    :func:`warm_start_weights` of the predicted region (patent 000, para. 134-136, claim 7).

    Returns
    -------
    pandas.DataFrame
        One row per case and start (``'uniform'``, ``'predicted'``): ``case, start,
        iterations, n_evals, time_s`` (optimiser), ``prep_s`` (prediction + warm start),
        ``ci_initial``, ``ci_final`` (exact Paddick CI on the CT grid), ``objective_initial``,
        ``objective_final``, ``status``, ``dice_pred_vs_final`` (predicted region vs the
        uniform run's final region).
    """
    if isinstance(cases, Case):
        cases = [cases]
    cases = list(cases)
    if not cases:
        raise ValueError("cases is empty")
    pl = planner or ConformityPlanner()
    rows = []
    it = cases
    if progress:
        it = tqdm(cases, desc="warm-start comparison", leave=False)
    for case in it:
        target, _, body = case_masks(case)
        d_ref = float(case.prescription or case.structures.targets[0].prescription)
        inf = pl.influence(case)
        obj = pl.objective(case, inf, d_ref)
        t0 = time.perf_counter()
        pred = model.predict_case(case, threshold=threshold)
        x_pred = warm_start_weights(inf, pred, d_ref, inf.voxel_index, n_iter=warm_iter)
        prep = time.perf_counter() - t0
        starts = {"uniform": (pl.uniform_start(case, inf, d_ref), 0.0), "predicted": (x_pred, prep)}
        final_regions = {}
        for name, (x0, prep_s) in starts.items():
            d0 = np.where(body, inf.dose(x0), 0.0)
            res = pl.solve(case, inf, d_ref, x0=x0)
            d1 = np.where(body, inf.dose(res.x), 0.0)
            final_regions[name] = d1 >= d_ref
            rows.append({
                "case": case.name, "start": name, "iterations": int(res.iterations),
                "n_evals": int(res.meta.get("n_evals", -1)), "time_s": float(res.time), "prep_s": float(prep_s),
                "ci_initial": paddick_ci_of(d0 >= d_ref, target), "ci_final": paddick_ci_of(d1 >= d_ref, target),
                "objective_initial": float(obj.value(inf.matvec(x0))), "objective_final": float(res.objective),
                "status": res.status,
            })
        dp = dice(pred, final_regions["uniform"])
        rows[-1]["dice_pred_vs_final"] = dp
        rows[-2]["dice_pred_vs_final"] = dp
    return pd.DataFrame(rows)
