"""A whole Gamma-Knife plan (patent 002, FIG. 9): :func:`plan_gamma_knife` (shots, times, quality check,
re-planning with the shots fixed) and :func:`gk_summary` (the ``rtlab gk`` command).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from ...core.case import Case
from ...core.geometry import Grid
from ...core.validate import PlausibilityWarning, gk_plausibility
from ...dose import pointkernel as pk
from ...phantoms import get_phantom
from .isocentres import initial_shots, optimize_pgd, optimize_smooth, optimize_times
from .problem import GKPlan, build_problem, evaluate_plan, normalize_coverage, target_as_mask

__all__ = ["GKResult", "plan_gamma_knife", "crop_to_target", "gk_summary"]


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
                     max_rounds: int = 3, problem_kw=None, callback=None, pgd_step: str = "adam") -> GKResult:
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
    pgd_step : {'adam', 'subgradient'}
        Step rule of ``method='pgd'`` (:func:`~rtlab.methods.gk.optimize_pgd`): Adam-scaled
        steps, or the plain projected subgradient step of eq. 9.

    Returns
    -------
    GKResult
        ``metrics["warnings"]`` lists what makes the plan implausible for a Gamma Knife
        (:func:`rtlab.core.validate.gk_plausibility`: a prescription isodose below
        :data:`~rtlab.core.validate.GK_MIN_ISODOSE_PCT` %, more than
        :data:`~rtlab.core.validate.GK_MAX_BEAM_ON_MIN` minutes beam-on); each is also issued
        as a :class:`~rtlab.core.validate.PlausibilityWarning`.
    """
    if method not in ("pgd", "smooth", "times"):
        raise ValueError(f"method must be 'pgd', 'smooth' or 'times', got {method!r}")
    m = target_as_mask(target, grid)
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
        shots, times, history = optimize_pgd(prob, shots, times, model=model, n_iter=n_iter, callback=cb,
                                              step=pgd_step)
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
    mt = dict(mt)
    mt["warnings"] = gk_plausibility(mt["isodose_pct"], mt["beam_on_min"], float(m.sum()) * grid.voxel_volume_cc)
    for w in mt["warnings"]:
        warnings.warn(f"Gamma-Knife plan: {w}", PlausibilityWarning, stacklevel=2)
    return GKResult(plan=plan, metrics=mt, history=history, timings=timings, rounds=rounds, dose=dose)


def crop_to_target(grid: Grid, target_mask, margin_mm: float = 15.0):
    """Sub-grid around the target (its bounding box plus ``margin_mm``) and the index slices.

    Returns
    -------
    (Grid, tuple of slice)
    """
    m = target_as_mask(target_mask, grid)
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
        :class:`rtlab.core.case.Case` with a target (and optionally a body and OARs with ``Dmax``
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
        ``rounds``, ``warnings`` (plausibility warnings, see :func:`plan_gamma_knife`; empty for a
        plausible plan).
    """
    if isinstance(case_or_phantom_name, str):
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
    out = {k: mt[k] for k in ("coverage", "selectivity", "ci_paddick", "gi", "beam_on_min", "n_shots", "isodose_pct",
                              "warnings")}
    out.update(optimize_s=res.timings["optimize_s"], rx=float(rx), case=case.name, method=method,
               collimator_min=res.plan.collimator_use(), rounds=res.rounds, grid_shape=list(sub.shape))
    dose = res.dose
    for g in case.goals:
        if g.metric == "Dmax" and g.structure in case.structures and case.structures[g.structure].kind != "target":
            om = case.structures[g.structure].mask[sl]
            out[f"{g.structure}_Dmax_Gy"] = float(dose[om].max()) if om.any() else 0.0
    return out
