"""Beam-angle selection by ant colony optimisation (paper 003, "Optimal angle combination", eq. 4).

The paper scores a fluence map by the pheromone

    phi = alpha * eta + beta * theta + gamma * objValue + lambda * TNMU          (paper 003, eq. 4)

with ``eta`` the smoothness along the leaf travel (:func:`rtlab.methods.smoothing.smoothness_eta`),
``theta`` the tongue-and-groove parameter (:func:`rtlab.methods.smoothing.tongue_groove_theta`),
``objValue`` the dose objective and ``TNMU`` the total monitor units; its experiments use
``alpha, beta, gamma, lambda = 0.2, 0.2, 0.5, 0.1``. All four are costs (lower is better).

How rtlab runs it
-----------------
* **Candidates.** Coplanar gantry angles on a regular grid (default ``n_beams * ceil(18 /
  n_beams)`` angles, so that the equispaced arrangements are candidates too). One influence
  matrix over all candidates is built once (:func:`candidate_influence`); the rows are the
  voxels that matter for the objective (targets, organs at risk and the body within
  ``margin_mm`` of a target, :func:`planning_voxels`), which keeps it small.
* **One ant = one beam set.** An ant picks ``n_beams`` candidates one after the other, with
  probability proportional to the pheromone ``tau`` of each allowed angle (angles closer than
  ``min_separation_deg`` to a chosen one are not allowed). Its plan is optimised on the chosen
  columns only (a few L-BFGS-B iterations, :func:`optimise_beams`, on a quadratic or
  conformity objective, :func:`default_objective`). Evaluations are memoised by beam set.
* **Normalisation (our choice; the paper does not say how the four quantities are made
  comparable).** Each quantity is divided by its mean over the *equispaced reference sets* (all
  rotations of the equispaced arrangement on the candidate grid), which are evaluated first:
  ``eta_hat = eta / eta_ref`` etc. So the reference sets score about 1 on every quantity and the
  weights are the quantities' shares of the cost. Per beam ``b`` of a plan,
  ``phi_b = alpha eta_b/eta_ref + beta theta_b/theta_ref + gamma f/f_ref + lambda MU_b/MU_ref``
  (``eta_ref``, ``theta_ref``, ``MU_ref`` per beam, ``f`` the plan's objective); the plan's cost
  is the mean of ``phi_b`` over its beams, i.e.
  ``Phi = alpha mean(eta_hat) + beta mean(theta_hat) + gamma f_hat + lambda TNMU/TNMU_ref``.
* **Pheromone update** (ant system with an elitist ant): ``tau <- (1 - rho) tau``; every ant
  deposits ``Q / phi_b`` on each of its angles, and the best set so far deposits
  ``elite / Phi_best`` on each of its angles; ``tau`` is kept within ``[tau_min, tau_max]`` (as in
  the MAX-MIN ant system) so no angle is ever ruled out for good.
* ``eta`` is computed with ``dx = 1`` (per bixel, dimensionless), ``theta`` and ``TNMU`` on the
  fluence maps in MU per fraction (engine calibration, ``fractions`` default
  ``round(prescription / 2 Gy)``), ``TNMU`` as the MU lower bound of paper 003, eq. 8
  (``sum_i max_j sum_k (x_ijk - x_ij(k-1))^+``, the MU of a sweep / infinitely fast sliding
  window).

Everything is seeded (``numpy.random.default_rng(seed)``) and deterministic.

Size: just over 600 lines: the candidate influence, the fixed-set optimiser and the ant
colony search of paper 003 share their helpers; splitting them would only move imports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from ..dose import build_influence
from ..dose.mu import mu_per_unit_fluence
from ..evaluate import metrics as M
from ..optimize import Objective, SquaredOverdose, SquaredUnderdose, rows_for, solve
from ..phantoms import get_phantom
from . import sequencing as sq
from . import smoothing as sm
from .conformity import ConformityTerm

__all__ = [
    "PAPER_WEIGHTS",
    "planning_voxels",
    "candidate_influence",
    "default_objective",
    "optimise_beams",
    "plan_quantities",
    "equispaced_sets",
    "ACOResult",
    "select_beam_angles",
    "compare_angle_sets",
    "rescore",
    "tg119_angle_study",
]

#: ``(alpha, beta, gamma, lambda)`` of paper 003, eq. 4, as used in its experiments.
PAPER_WEIGHTS = (0.2, 0.2, 0.5, 0.1)


# ----------------------------------------------------------------------------------------------
# problem set-up
# ----------------------------------------------------------------------------------------------
def planning_voxels(case, margin_mm: float = 20.0) -> np.ndarray:
    """Voxels an angle study needs: targets, organs at risk, and the body within ``margin_mm`` of a target.

    Returns a boolean mask on the CT grid (for ``build_influence(voxels=...)``).
    """

    if not margin_mm >= 0:
        raise ValueError(f"margin_mm must be >= 0 mm, got {margin_mm!r}")
    targets = [t for t in case.structures.targets if t.mask.any()]
    if not targets:
        raise ValueError("case has no non-empty target; beam-angle selection needs one")
    tmask = np.zeros(case.grid.shape, bool)
    for t in targets:
        tmask |= t.mask
    body = case.structures.body_mask().astype(bool)
    dist = ndimage.distance_transform_edt(~tmask, sampling=case.grid.spacing)
    out = tmask | (body & (dist <= margin_mm))
    for s in case.structures.values():
        if s.kind == "oar":
            out |= s.mask
    return out


def candidate_influence(case, angles, *, margin_mm: float = 15.0, cutoff_mm: float = 25.0, bixel_mm: float = 5.0,
                        machine=None, progress: bool = True):
    """One influence matrix over all candidate gantry angles (columns beam after beam).

    Parameters
    ----------
    case : rtlab.core.case.Case
    angles : sequence of float
        Candidate gantry angles (deg), couch 0, isocentre ``case.isocenter()``.
    margin_mm : float
        Body voxels within this distance of a target are rows (:func:`planning_voxels`).
    cutoff_mm : float
        Lateral cut-off of the pencil beams (mm).
    bixel_mm : float
        Bixel size (mm).
    machine : rtlab.dose.Machine, optional
    progress : bool

    Returns
    -------
    rtlab.dose.InfluenceMatrix
    """

    angles = [float(a) for a in angles]
    if len(angles) < 1:
        raise ValueError("angles is empty; pass candidate gantry angles in degrees")
    return build_influence(case, angles, machine, cutoff_mm=cutoff_mm, voxels=planning_voxels(case, margin_mm),
                           progress=progress, bixel_mm=bixel_mm)


def _oar_limit(case, s) -> float:
    rx = float(case.prescription or max(t.prescription or 0 for t in case.structures.targets))
    lims = [g.value for g in case.goals if g.structure == s.name and g.comparator in ("<=", "<")
            and g.metric.upper().startswith("D")]
    return float(min(lims)) if lims else 0.5 * rx


def default_objective(case, im, kind: str = "quadratic", nt_margin_mm: float = 5.0):
    """A small objective over ``im``'s rows built from the case's targets, organs and goals.

    ``'quadratic'``: per target ``SquaredUnderdose(rx)`` (weight 1) and ``SquaredOverdose(1.05 rx)``
    (1); per organ at risk ``SquaredOverdose(limit)`` (0.3; ``limit`` = the smallest ``<=`` dose
    goal of the organ, else rx / 2); normal tissue further than ``nt_margin_mm`` from every target
    ``SquaredOverdose(0.8 rx)`` (0.3). ``'conformity'``: per target a
    :class:`~rtlab.methods.conformity.ConformityTerm` (patent 000 eq. 8, steepness 20, domain all
    rows) plus ``SquaredUnderdose(rx)`` (0.01) and the organ terms (0.003).

    Returns
    -------
    rtlab.optimize.Objective
    """

    if kind not in ("quadratic", "conformity"):
        raise ValueError(f"kind must be 'quadratic' or 'conformity', got {kind!r}")
    vi = im.voxel_index
    if not im.grid.is_same(case.grid):
        raise ValueError("default_objective needs an influence matrix on the CT grid (dose_grid_mm=None)")
    terms = []
    tmask = np.zeros(case.grid.shape, bool)
    targets = [t for t in case.structures.targets if t.mask.any()]
    if not targets:
        raise ValueError("case has no non-empty target")
    for t in targets:
        rx = float(t.prescription if t.prescription is not None else case.prescription)
        rows = rows_for(t.mask, vi, missing="raise")
        tmask |= t.mask
        if kind == "quadratic":
            terms += [SquaredUnderdose(rows, rx, 1.0, name=f"{t.name} under"),
                      SquaredOverdose(rows, 1.05 * rx, 1.0, name=f"{t.name} over")]
        else:

            terms += [ConformityTerm(rows, rx, None, 1.0, steepness=20.0, n_rows=len(vi), name=f"{t.name} conformity"),
                      SquaredUnderdose(rows, rx, 0.01, name=f"{t.name} under")]
    w_oar = 0.3 if kind == "quadratic" else 0.003
    for s in case.structures.values():
        if s.kind == "oar" and s.mask.any():
            rows = rows_for(s.mask & ~tmask, vi, missing="ignore") if (s.mask & ~tmask).any() else None
            if rows is not None:
                terms.append(SquaredOverdose(rows, _oar_limit(case, s), w_oar, name=f"{s.name} over"))
    if kind == "quadratic":
        dist = ndimage.distance_transform_edt(~tmask, sampling=case.grid.spacing)
        nt = np.zeros(case.grid.size, bool)
        nt[vi] = True
        nt = nt.reshape(case.grid.shape) & (dist > nt_margin_mm)
        if nt.any():
            rx0 = float(case.prescription or targets[0].prescription)
            terms.append(SquaredOverdose(rows_for(nt, vi, missing="ignore"), 0.8 * rx0, 0.3, name="normal tissue"))
    return Objective(terms)


def _columns(im, beam_idx) -> np.ndarray:
    return np.concatenate([np.arange(im.beamlet_slices[b].start, im.beamlet_slices[b].stop) for b in beam_idx])


def optimise_beams(im, objective, beam_idx=None, *, max_iter: int = 30, x0=None, csc=None, callback=None):
    """Quick fluence optimisation of a subset of ``im``'s beams (L-BFGS-B, ``x >= 0``).

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
    objective : rtlab.optimize.Objective
    beam_idx : sequence of int, optional
        Beams (indices into ``im.beams``) to use; default all.
    max_iter : int
        L-BFGS-B iterations.
    x0 : ndarray, optional
        Start on the chosen columns; default uniform weights giving the first target term's
        prescription as mean target dose (a preliminary open-field plan).
    csc : optional
        Ignored (kept for existing calls): :meth:`rtlab.dose.InfluenceMatrix.select_beams` caches
        the column form on ``im``.

    Returns
    -------
    x : ndarray (n_beamlets,)
        Full-length weights (zero on the beams not used).
    result : rtlab.optimize.OptimizationResult
    """

    beam_idx = list(range(len(im.beams))) if beam_idx is None else [int(b) for b in beam_idx]
    if not beam_idx:
        raise ValueError("beam_idx is empty; choose at least one beam")
    if min(beam_idx) < 0 or max(beam_idx) >= len(im.beams):
        raise ValueError(f"beam_idx must index im.beams (0..{len(im.beams) - 1}), got {beam_idx}")
    cols = _columns(im, beam_idx)
    # the chosen beams' engine (narrow matrix and broad node path; columns cached on im)
    A = im.select_beams(beam_idx).operator()
    if x0 is None:
        t = next((t for t in objective.dose_terms if t.dose_level and t.rows is not None), None)
        d1 = np.asarray(A.matvec(np.ones(A.shape[1])), np.float64)
        if t is not None:
            ref = float(d1[t.rows].mean())
            level = t.dose_level
        else:
            ref, level = float(d1.max()), 1.0
        x0 = np.full(A.shape[1], level / ref if ref > 0 else 1.0)
    res = solve(A, objective, x0, method="lbfgsb", max_iter=max_iter, callback=callback)
    x = np.zeros(im.shape[1])
    x[cols] = res.x
    return x, res


def plan_quantities(im, x, beam_idx, fractions: int = 1) -> dict:
    """Per-beam ``eta``, ``theta`` and field MU (lower bound) of a plan (paper 003, eqs 4 and 8).

    Fluence maps are in MU per fraction (engine calibration).

    Returns
    -------
    dict
        ``eta``, ``theta``, ``mu`` (arrays over ``beam_idx``) and ``tnmu`` (MU per fraction).
    """

    k = mu_per_unit_fluence(im.machine) / int(fractions)
    eta, theta, mu = [], [], []
    for b in beam_idx:
        beam, sl = im.beams[b], im.beamlet_slices[b]
        m = beam.bixels.to_map(x[sl]) * k
        if m.max() <= 0:
            eta.append(0.0), theta.append(0.0), mu.append(0.0)
            continue
        eta.append(sm.smoothness_eta(m, dx=1.0))
        theta.append(sm.tongue_groove_theta(m))
        mu.append(sq.field_mu_lower_bound(m))
    mu = np.array(mu)
    return {"eta": np.array(eta), "theta": np.array(theta), "mu": mu, "tnmu": float(mu.sum())}


def equispaced_sets(angles, n_beams: int) -> list[tuple[int, ...]]:
    """Every rotation of the ``n_beams`` equispaced arrangement whose angles are all candidates.

    Returns tuples of candidate indices (sorted), one per start angle in ``[0, 360 / n_beams)``.
    """
    a = np.mod(np.asarray(angles, float), 360.0)
    out = []
    step = 360.0 / n_beams
    for i, start in enumerate(a):
        if start >= step - 1e-6:
            continue
        want = np.mod(start + step * np.arange(n_beams), 360.0)
        idx = []
        for w in want:
            d = np.abs((a - w + 180.0) % 360.0 - 180.0)
            j = int(np.argmin(d))
            if d[j] > 1e-6:
                break
            idx.append(j)
        else:
            out.append(tuple(sorted(idx)))
    return sorted(set(out))


# ----------------------------------------------------------------------------------------------
# ant colony
# ----------------------------------------------------------------------------------------------
@dataclass
class ACOResult:
    """Outcome of :func:`select_beam_angles`.

    Attributes
    ----------
    angles : list of float
        Best beam set found (deg, ascending).
    cost : float
        Its cost ``Phi`` (1 ~ the equispaced reference).
    candidates : ndarray
        Candidate angles (deg).
    weights : tuple
        ``(alpha, beta, gamma, lambda)``.
    reference : dict
        Normalisers ``eta``, ``theta``, ``mu`` (per beam), ``objective`` and ``tnmu`` (plan).
    history : pandas.DataFrame
        One row per iteration: ``iteration``, ``best_cost`` (so far), ``iteration_best``,
        ``iteration_mean``, ``best_angles``, ``n_evaluations``.
    pheromone : ndarray (n_iter + 1, n_candidates)
        ``tau`` after each iteration (row 0: after the reference deposit).
    evaluations : dict
        Beam set (tuple of candidate indices) -> dict of its quantities, cost and weights ``x``.
    equispaced : list of tuple
        The reference sets (candidate indices).
    im : InfluenceMatrix
        The candidate influence matrix (reuse it for further plans).
    objective : Objective
    fractions : int
    time_s : float
    """

    angles: list
    cost: float
    candidates: np.ndarray
    weights: tuple
    reference: dict
    history: object
    pheromone: np.ndarray
    evaluations: dict
    equispaced: list
    im: object
    objective: object
    fractions: int
    time_s: float = 0.0
    best_set: tuple = field(default=())

    def __repr__(self) -> str:
        return (f"ACOResult(angles={[round(a, 1) for a in self.angles]}, cost={self.cost:.4f}, "
                f"evaluations={len(self.evaluations)}, time={self.time_s:.1f} s)")


def _cost_parts(ev: dict, ref: dict, weights) -> tuple[float, np.ndarray]:
    a, b, g, l = weights
    phi_b = (a * ev["eta"] / ref["eta"] + b * ev["theta"] / ref["theta"] + g * ev["objective"] / ref["objective"]
             + l * ev["mu"] / ref["mu"])
    return float(phi_b.mean()), phi_b


def select_beam_angles(case, n_beams: int = 5, candidates=None, *, weights=PAPER_WEIGHTS, n_ants: int = 5,
                       n_iter: int = 4, rho: float = 0.3, q: float = 1.0, elite: float = 2.0,
                       tau_bounds=(0.2, 5.0), min_separation_deg: float = 20.0, objective="quadratic",
                       max_iter: int = 20, fractions: int | None = None, seed: int = 0, im=None,
                       margin_mm: float = 15.0, cutoff_mm: float = 25.0, progress: bool = True,
                       callback: Callable | None = None) -> ACOResult:
    """Choose ``n_beams`` coplanar gantry angles by ant colony optimisation (paper 003, eq. 4).

    Parameters
    ----------
    case : rtlab.core.case.Case
    n_beams : int
        Beams per plan.
    candidates : sequence of float or int, optional
        Candidate angles (deg), or their number on a regular grid; default
        ``n_beams * ceil(18 / n_beams)`` equispaced angles from 0.
    weights : (alpha, beta, gamma, lambda)
        Weights of eta, theta, objValue and TNMU (paper: 0.2, 0.2, 0.5, 0.1).
    n_ants, n_iter : int
        Ants per iteration and iterations.
    rho : float
        Evaporation rate in (0, 1).
    q, elite : float
        Deposit scale of every ant (``q / phi_b`` per beam) and of the best set (``elite / Phi``).
    tau_bounds : (float, float)
        Pheromone limits (initial pheromone 1).
    min_separation_deg : float
        Smallest angle between two beams of a set.
    objective : {'quadratic', 'conformity'} or Objective
        Dose objective over the candidate matrix's rows (:func:`default_objective`).
    max_iter : int
        L-BFGS-B iterations per ant.
    fractions : int, optional
        For MU per fraction; default ``round(prescription / 2 Gy)``.
    seed : int
        Random seed: the same seed gives the same result.
    im : InfluenceMatrix, optional
        A prebuilt candidate matrix (its beams' gantry angles are the candidates).
    margin_mm, cutoff_mm : float
        Passed to :func:`candidate_influence`.
    progress : bool
        tqdm.auto bar over iterations.
    callback : callable, optional
        ``callback(record)`` after each iteration with the history row (a dict); returning
        ``True`` stops early.

    Returns
    -------
    ACOResult
    """

    t_start = time.perf_counter()
    if int(n_beams) != n_beams or n_beams < 1:
        raise ValueError(f"n_beams must be a positive integer, got {n_beams!r}")
    n_beams = int(n_beams)
    w = tuple(float(v) for v in weights)
    if len(w) != 4 or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be four non-negative numbers (alpha, beta, gamma, lambda), got {weights!r}")
    if not 0 < rho < 1:
        raise ValueError(f"rho (evaporation) must lie in (0, 1), got {rho!r}")
    if int(n_ants) < 1 or int(n_iter) < 1:
        raise ValueError("n_ants and n_iter must be >= 1")
    tmin, tmax = (float(v) for v in tau_bounds)
    if not 0 < tmin <= 1 <= tmax:
        raise ValueError(f"tau_bounds must satisfy 0 < tau_min <= 1 <= tau_max, got {tau_bounds!r}")
    if im is None:
        if candidates is None:
            candidates = n_beams * math.ceil(18 / n_beams)
        if np.isscalar(candidates):
            nc = int(candidates)
            if nc < n_beams:
                raise ValueError(f"need at least n_beams={n_beams} candidates, got {nc}")
            candidates = np.arange(nc) * 360.0 / nc
        im = candidate_influence(case, candidates, margin_mm=margin_mm, cutoff_mm=cutoff_mm, progress=progress)
    cand = np.array([b.gantry for b in im.beams], float)
    nc = cand.size
    if nc < n_beams:
        raise ValueError(f"need at least n_beams={n_beams} candidates, the matrix has {nc} beams")
    if fractions is None:
        rx = float(case.prescription or max(t.prescription or 0 for t in case.structures.targets))
        fractions = max(1, int(round(rx / 2.0)))
    obj = default_objective(case, im, objective) if isinstance(objective, str) else objective
    evaluations: dict = {}

    def evaluate(subset):
        key = tuple(sorted(int(i) for i in subset))
        if key not in evaluations:
            x, res = optimise_beams(im, obj, key, max_iter=max_iter)
            ev = plan_quantities(im, x, key, fractions)
            ev.update({"objective": float(res.objective), "x": x, "angles": [float(cand[i]) for i in key]})
            evaluations[key] = ev
        return key, evaluations[key]

    refs = equispaced_sets(cand, n_beams)
    if not refs:
        raise ValueError(f"no equispaced {n_beams}-beam arrangement lies on the candidate angles; use "
                         f"{n_beams * math.ceil(18 / n_beams)} candidates (a multiple of n_beams)")
    ref_evs = [evaluate(r)[1] for r in refs]
    ref = {
        "eta": float(np.mean([e["eta"].mean() for e in ref_evs])) or 1.0,
        "theta": float(np.mean([e["theta"].mean() for e in ref_evs])) or 1.0,
        "mu": float(np.mean([e["mu"].mean() for e in ref_evs])) or 1.0,
        "objective": float(np.mean([e["objective"] for e in ref_evs])) or 1.0,
    }
    ref["tnmu"] = ref["mu"] * n_beams
    for key, ev in evaluations.items():
        ev["cost"], ev["phi"] = _cost_parts(ev, ref, w)

    rng = np.random.default_rng(seed)
    tau = np.ones(nc)
    sep = np.abs((cand[:, None] - cand[None, :] + 180.0) % 360.0 - 180.0)
    best_key = min(refs, key=lambda k: evaluations[k]["cost"])
    for key in refs:  # the references seed the pheromone like one iteration of ants
        ev = evaluations[key]
        tau[list(key)] += q / np.maximum(ev["phi"], 1e-12) / len(refs)
    np.clip(tau, tmin, tmax, out=tau)
    taus = [tau.copy()]
    rows = []
    bar = None
    if progress:

        bar = tqdm(total=int(n_iter), desc="ant colony", leave=False)
    try:
        for it in range(1, int(n_iter) + 1):
            costs, keys = [], []
            for _ in range(int(n_ants)):
                chosen: list[int] = []
                for _k in range(n_beams):
                    allowed = np.ones(nc, bool)
                    allowed[chosen] = False
                    if chosen:
                        ok = allowed & (sep[:, chosen].min(axis=1) >= min_separation_deg - 1e-9)
                        allowed = ok if ok.any() else allowed
                    p = np.where(allowed, tau, 0.0)
                    chosen.append(int(rng.choice(nc, p=p / p.sum())))
                key, ev = evaluate(chosen)
                if "cost" not in ev:
                    ev["cost"], ev["phi"] = _cost_parts(ev, ref, w)
                costs.append(ev["cost"])
                keys.append(key)
            i_best = int(np.argmin(costs))
            if costs[i_best] < evaluations[best_key]["cost"]:
                best_key = keys[i_best]
            tau *= 1.0 - rho
            for key in keys:
                tau[list(key)] += q / np.maximum(evaluations[key]["phi"], 1e-12) / int(n_ants)
            tau[list(best_key)] += elite / evaluations[best_key]["cost"] / n_beams
            np.clip(tau, tmin, tmax, out=tau)
            taus.append(tau.copy())
            rec = {"iteration": it, "best_cost": evaluations[best_key]["cost"], "iteration_best": float(costs[i_best]),
                   "iteration_mean": float(np.mean(costs)), "best_angles": [float(cand[i]) for i in best_key],
                   "n_evaluations": len(evaluations)}
            rows.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{rec['best_cost']:.4f}", refresh=False)
            if callback is not None and callback(rec):
                break
    finally:
        if bar is not None:
            bar.close()
    best = evaluations[best_key]
    return ACOResult([float(cand[i]) for i in best_key], float(best["cost"]), cand, w, ref, pd.DataFrame(rows),
                     np.array(taus), evaluations, refs, im, obj, int(fractions), time.perf_counter() - t_start,
                     best_key)


def rescore(result: ACOResult, weights=PAPER_WEIGHTS):
    """Re-weigh every beam set ``result`` evaluated with other ``(alpha, beta, gamma, lambda)``.

    No re-optimisation: the stored eta, theta, objective and MU are combined again with the same
    reference normalisation. Returns a pandas DataFrame sorted by cost (``angles``, ``cost``,
    ``equispaced``).
    """

    w = tuple(float(v) for v in weights)
    if len(w) != 4 or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be four non-negative numbers (alpha, beta, gamma, lambda), got {weights!r}")
    rows = [{"angles": " ".join(f"{a:g}" for a in ev["angles"]), "cost": _cost_parts(ev, result.reference, w)[0],
             "equispaced": key in result.equispaced} for key, ev in result.evaluations.items()]
    return pd.DataFrame(rows).sort_values(["cost", "angles"], ignore_index=True)


def compare_angle_sets(case, result: ACOResult):
    """ACO beam set vs every equispaced reference set: objective, TNMU, eta, theta, CI, D95, cost.

    Returns
    -------
    pandas.DataFrame
        One row per set (``set``: ``'ACO'`` or ``'equispaced@<start>'``), columns ``angles``,
        ``objective``, ``tnmu`` (MU per fraction, eq. 8 lower bound), ``eta``, ``theta`` (beam means),
        ``ci_paddick`` and ``d95`` (Gy) of the first target, ``cost`` (``Phi``).
    """

    im = result.im
    target = next(t for t in case.structures.targets if t.mask.any())
    rx = float(target.prescription if target.prescription is not None else case.prescription)
    body = next((s for s in case.structures.values() if s.kind == "body"), None)
    sets = [("ACO", result.best_set)] + [(f"equispaced@{result.candidates[k[0]]:g}", k) for k in result.equispaced]
    rows = []
    for name, key in sets:
        ev = result.evaluations[key]
        dose = im.dose(ev["x"], on="ct")
        rows.append({
            "set": name, "angles": " ".join(f"{a:g}" for a in ev["angles"]), "objective": ev["objective"],
            "tnmu": ev["tnmu"], "eta": float(ev["eta"].mean()), "theta": float(ev["theta"].mean()),
            "ci_paddick": float(M.paddick_ci(dose, target, rx=rx, body=body)),
            "d95": float(M.dose_at_volume(dose, target, pct=95)), "cost": ev["cost"],
        })
    return pd.DataFrame(rows)


def tg119_angle_study(phantoms: Sequence[str] = ("tg119_cshape_easy", "tg119_headneck"), spacing: float = 5.0,
                      n_beams: int = 5, seed: int = 0, progress: bool = True, **aco_kwargs):
    """Paper 003's Tables 2-3 experiment on TG-119 phantoms: ACO angles vs equispaced beams.

    For each phantom (at ``spacing`` mm voxels) runs :func:`select_beam_angles` and
    :func:`compare_angle_sets`, and adds the relative change of the ACO set against the mean and
    the worst equispaced set.

    Returns
    -------
    pandas.DataFrame
        :func:`compare_angle_sets` rows with a ``phantom`` column, plus ``objective_vs_mean`` and
        ``tnmu_vs_mean`` (ratio to the equispaced mean).
    """

    frames = []
    for name in phantoms:
        case = get_phantom(name, spacing=spacing)
        res = select_beam_angles(case, n_beams, seed=seed, progress=progress, **aco_kwargs)
        df = compare_angle_sets(case, res)
        eq = df[df["set"] != "ACO"]
        df["objective_vs_mean"] = df["objective"] / eq["objective"].mean()
        df["tnmu_vs_mean"] = df["tnmu"] / eq["tnmu"].mean()
        df.insert(0, "phantom", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
