"""Conversion of a standard plan to specific machines, with QA and regeneration (seed 001).

Seed 001 computes one **standard plan** on a standard machine model (step 3) and converts it
to the **specific machine** that will treat (step 4, claims 5, 6, 10-13), then verifies the
converted plan before treatment and regenerates it from the standard plan when the check fails
(claim 7). :func:`convert_plan` implements step 4 and the QA loop for one machine,
:func:`convert_to_machines` for several (claim 13: "one or more specific radiotherapy plans").

Steps of :func:`convert_plan`
-----------------------------
0. **Coincidence** (claim 10): :func:`rtlab.dose.machines.compare_machines` compares the MLCs
   and the sources' water dose curves. If they coincide the standard plan is returned as is
   (``method='as_is'``, no QA needed: the plan and dose are unchanged).
1. **Resampling to the target MLC** ("based on field parameters of the standard plan", claim 5).
   The beams (gantry, couch, isocentre, bixel grid) are kept. Each beam's fluence map (rows =
   BEV v, across the leaves) is resampled onto the target MLC's leaf pairs with
   :func:`rtlab.methods.sequencing.fluence_to_leaf_rows` (area-weighted mean over each leaf;
   ``leaf_alignment='isocentre'``: the MLC's own geometry, the central axis on a leaf boundary
   for an even number of pairs; ``'grid'``: a leaf boundary on the first bixel edge). From here
   on the plan's variables are the **leaf-row fluences** ``y`` (one per leaf pair and bixel
   column); a bixel's weight is the overlap-weighted mean of the leaf rows over it,
   ``x = P y`` (:func:`rtlab.methods.sequencing.leaf_rows_to_fluence`), so every plan the
   optimiser can reach has the target leaf width's resolution across the leaves. A field wider
   than the target MLC's pairs or maximum field raises ``ValueError``.
2. **Dose recalculation** (claim 6, "dose computation") on the target source: the influence
   matrix ``A_t`` is rebuilt with the target :class:`rtlab.dose.Machine` on the same voxels and
   dose grid, and ``A_t P y_0`` (``y_0`` the resampled standard fluence) is the recalculated
   dose; it is QA-checked and reported (``recalc_qa``). ``method='recalc'`` stops here.
3. **Re-optimisation** (claim 6, "reverse optimisation", fluence-map variant) of ``y >= 0`` on
   ``A_t P`` from ``y_0`` (L-BFGS-B, :mod:`rtlab.optimize`), with the standard plan's **DVH
   points and isodose lines as constraints** (claim 5), as quadratic penalties
   (:func:`conversion_objective`):

   * isodose lines: for each level ``L`` (default 95 % and 50 % of the prescription), voxels
     inside the standard plan's ``L`` region keep ``d >= L Rx`` (:class:`SquaredUnderdose`) and
     voxels outside it keep ``d <= L Rx`` (:class:`SquaredOverdose`), so the line stays where
     it was;
   * DVH points of the standard plan: per target ``D95`` (:class:`DVHMin`) and ``D2``
     (:class:`DVHMax`); per organ at risk ``D10`` (:class:`DVHMax`) and ``Dmean``
     (:class:`MeanDose` limit).

   ``method='dao'`` adds a simple **direct-aperture** stage (claim 6, "direct subfield
   optimisation"): each beam's optimised leaf-row map is sequenced into step-and-shoot
   apertures on the target MLC (:func:`rtlab.methods.sequencing.step_and_shoot`, ``'sweep'``,
   honouring interdigitation), then the aperture (segment) weights are re-optimised with the same
   objective (shapes fixed), so the result is exactly deliverable by those apertures.
4. **QA** (claim 7): :func:`rtlab.qa.qa_report` against the standard dose (gamma 3 %/3 mm >= 95 %
   and 2 %/2 mm >= 90 % by default, and |DVH difference| of D95 / D50 / D2 / Dmean of every
   structure <= 3 % of the prescription). On failure the plan is **regenerated with tightened
   constraints** (at most ``max_attempts`` optimisations, warm-started): a failed gamma
   multiplies the isodose terms' weights by ``tighten`` and adds (then tightens) a voxel-wise
   fidelity term to the standard dose (:class:`DoseFidelity`, the limit of many isodose lines);
   a failed DVH metric adds a term pinning that metric at the standard plan's value (from the
   side it failed on) or tightens it if present. The result keeps the best attempt (the passing
   one, else the one with the fewest failures and the highest 3 %/3 mm rate); ``reasons`` lists
   the final QA's reasons and the attempt history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..dose.machines import (STANDARD_MACHINE, CoincidenceReport, CoincidenceThresholds, TreatmentMachine,
                             compare_machines, get_machine, list_machines)
from ..optimize import DVHMax, DVHMin, MeanDose, Objective, Solver, SquaredOverdose, SquaredUnderdose, Term
from . import sequencing as sq

__all__ = [
    "ConversionResult",
    "DoseFidelity",
    "MeanDoseMin",
    "conversion_objective",
    "leaf_row_parameterisation",
    "convert_plan",
    "convert_to_machines",
    "METHODS",
]

#: Accepted ``method`` values of :func:`convert_plan`.
METHODS = ("fluence", "dao", "recalc")

_DVH_FRACTIONS = {"D95": 0.95, "D50": 0.50, "D2": 0.02, "D10": 0.10, "D98": 0.98, "D5": 0.05}


# ---------------------------------------------------------------------------------------------
# extra terms
# ---------------------------------------------------------------------------------------------
class DoseFidelity(Term):
    """Voxel-wise fidelity to a reference dose, ``w / n * sum_i (d_i - r_i)^2`` (Gy^2).

    Parameters
    ----------
    rows : array of int
        Influence-matrix rows.
    reference : ndarray (len(rows),)
        Reference dose (Gy) of those rows (e.g. the standard plan's).
    weight, name : see :class:`rtlab.optimize.Term`.
    """

    def __init__(self, rows, reference, weight: float = 1.0, name: str | None = None):
        super().__init__(rows, weight, name)
        r = np.asarray(reference, np.float64).ravel()
        if r.size != self.rows.size or not np.all(np.isfinite(r)):
            raise ValueError(f"reference must hold one finite dose per row ({self.rows.size}), got {r.size} values")
        self.reference = r

    def _eval_sub(self, d):
        e = d - self.reference
        return float(np.mean(e * e)), 2.0 * e / d.size


class MeanDoseMin(Term):
    """Lower mean-dose limit ``w * max(D - mean(d), 0)^2`` (Gy^2); ``D`` (Gy) the minimum mean."""

    def __init__(self, rows, min_mean: float, weight: float = 1.0, name: str | None = None):
        super().__init__(rows, weight, name)
        v = float(min_mean)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"min_mean must be a finite dose >= 0 Gy, got {min_mean!r}")
        self._limit = v

    @property
    def dose_level(self):
        return self._limit

    @dose_level.setter
    def dose_level(self, value):
        self._limit = float(value)

    def _eval_sub(self, d):
        n = d.size
        e = max(self._limit - float(np.mean(d)), 0.0)
        return e * e, np.full(n, -2.0 * e / n)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _dvh_point(d: np.ndarray, fraction: float) -> float:
    """Dose (Gy) received by at least ``fraction`` of the voxels (voxel-count DVH of a row set)."""
    s = np.sort(np.asarray(d, float))[::-1]
    k = max(int(np.ceil(fraction * s.size - 1e-9)) - 1, 0)
    return float(s[k])


def _structure_rows(case, im) -> dict:
    """``name -> rows`` of ``im`` whose voxel centre lies in the structure (nearest CT voxel)."""
    pts = im.grid.index_to_world(np.stack(np.unravel_index(im.voxel_index, im.grid.shape), axis=1))
    idx = np.rint(case.grid.world_to_index(pts)).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(case.grid.shape)), axis=1)
    idx = np.clip(idx, 0, np.asarray(case.grid.shape) - 1)
    out = {}
    for s in case.structures.values():
        inside = ok & s.mask[idx[:, 0], idx[:, 1], idx[:, 2]]
        out[s.name] = np.flatnonzero(inside).astype(np.int64)
    return out


def _check_inputs(case, x, im):
    from ..case import Case
    from ..dose.influence import InfluenceMatrix

    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.case.Case, got {type(case).__name__}")
    if not isinstance(im, InfluenceMatrix):
        raise TypeError(f"im must be the standard plan's rtlab.dose.InfluenceMatrix (build_influence), got {type(im).__name__}")
    if not im.ct_grid.is_same(case.grid):
        raise ValueError("im was built on a different CT grid than case; pass the case the standard plan was made on")
    w = np.asarray(x, dtype=float).ravel()
    if w.size != im.shape[1]:
        raise ValueError(f"x has {w.size} entries but the standard influence matrix has {im.shape[1]} beamlets; "
                         "pass the standard plan's optimised weights")
    if not np.all(np.isfinite(w)):
        raise ValueError("x contains NaN or inf; pass finite beamlet weights")
    if np.any(w < 0):
        raise ValueError(f"x has negative weights (min {w.min():.3g}); beamlet weights must be >= 0")
    if not np.any(w > 0):
        raise ValueError("x is zero everywhere; there is no standard plan to convert")
    return w


def leaf_row_parameterisation(im, x, mlc, leaf_alignment: str = "isocentre"):
    """Leaf-row variables of every beam on ``mlc`` and the map ``x = P y`` back to the bixels.

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
        Gives the beams' bixel grids and the column order.
    x : ndarray (n_beamlets,)
        Standard beamlet weights (resampled to ``y0``).
    mlc : rtlab.mlc.MLC or str
    leaf_alignment : {'isocentre', 'grid'}
        Leaf boundaries at the MLC's own positions (``-n_pairs w / 2 + k w``), or a boundary on each
        beam's first bixel edge.

    Returns
    -------
    P : scipy.sparse.csr_matrix (n_beamlets, n_vars)
        ``P[j, k]`` = fraction of bixel ``j``'s area covered by leaf-row cell ``k``.
    y0 : ndarray (n_vars,)
        Area-weighted leaf-row means of ``x`` (:func:`~rtlab.methods.sequencing.fluence_to_leaf_rows`).
    layout : list of dict
        Per beam: ``var`` (n_leaf_rows, n_cols) variable index or -1, ``leaf_edges`` (mm),
        ``x0`` (first bixel edge along the travel, mm), ``dx`` (bixel width, mm).

    Raises
    ------
    ValueError
        If a beam's field needs more leaf pairs or a longer travel than ``mlc`` offers.
    """
    from ..mlc import get_mlc

    mlc = get_mlc(mlc)
    if leaf_alignment not in ("isocentre", "grid"):
        raise ValueError(f"leaf_alignment must be 'isocentre' or 'grid', got {leaf_alignment!r}")
    rows_i, cols_i, vals, y0, layout = [], [], [], [], []
    nv = 0
    for b, sl in zip(im.beams, im.beamlet_slices):
        bx = b.bixels
        h = bx.bixel_mm
        nr, nc = bx.shape
        if nc * h > mlc.max_field_mm + 1e-9:
            raise ValueError(f"beam at gantry {b.gantry:g} deg spans {nc * h:g} mm along the leaf travel, more than "
                             f"MLC {mlc.name!r}'s maximum field {mlc.max_field_mm:g} mm; the target machine cannot "
                             "deliver this field")
        y_first = (bx.r0 - 0.5) * h
        if leaf_alignment == "grid":
            edge0 = -mlc.field_length_mm / 2
            k = int(np.clip(np.round((y_first - edge0) / mlc.leaf_width_mm), 0, mlc.n_pairs))
            y_first = edge0 + k * mlc.leaf_width_mm
        try:
            lr, le, W = sq.fluence_to_leaf_rows(bx.to_map(x[sl]), h, mlc, y_first)
        except ValueError as exc:
            raise ValueError(f"beam at gantry {b.gantry:g} deg: {exc}; the target machine cannot deliver this field") from None
        idx = bx.index_map()
        var = np.full(lr.shape, -1, np.int64)
        for ll in range(lr.shape[0]):
            wr = np.flatnonzero(W[:, ll] > 1e-12)
            for c in range(nc):
                rr = wr[idx[wr, c] >= 0]
                if rr.size == 0:
                    continue
                var[ll, c] = nv
                y0.append(lr[ll, c])
                rows_i += (sl.start + idx[rr, c]).tolist()
                cols_i += [nv] * rr.size
                vals += W[rr, ll].tolist()
                nv += 1
        layout.append(dict(var=var, leaf_edges=le, x0=(bx.c0 - 0.5) * h, dx=h, gantry=float(b.gantry)))
    P = sp.csr_matrix((np.asarray(vals, float), (np.asarray(rows_i), np.asarray(cols_i))), shape=(im.shape[1], nv))
    return P, np.asarray(y0, float), layout


def conversion_objective(case, im, standard_dose_rows, rx: float | None = None, isodose_levels=(0.95, 0.5),
                         isodose_weight: float = 1.0, dvh_weight: float = 1.0, structure_rows: dict | None = None):
    """The standard plan's isodose lines and DVH points as penalty terms (seed 001, claim 5).

    Parameters
    ----------
    case : Case
    im : InfluenceMatrix
        Rows of the terms (the target influence matrix shares them with the standard one).
    standard_dose_rows : ndarray (n_rows,)
        Standard plan's dose (Gy) per row.
    rx : float, optional
        Reference dose of the isodose levels (Gy); default the case prescription, else the
        standard dose maximum.
    isodose_levels : sequence of float
        Fractions of ``rx``; each gives ``iso_in_<L>`` (inside the standard ``L`` region:
        ``d >= L rx``) and ``iso_out_<L>`` (outside: ``d <= L rx``).
    isodose_weight, dvh_weight : float
        Weights of the two groups.
    structure_rows : dict, optional
        ``name -> rows`` (computed when omitted).

    Returns
    -------
    objective : Objective
    points : list of dict
        The DVH points and isodose levels used (structure, metric, value in Gy, term name).
    """
    d = np.asarray(standard_dose_rows, float).ravel()
    if d.size != im.shape[0]:
        raise ValueError(f"standard_dose_rows has {d.size} entries, the influence matrix has {im.shape[0]} rows")
    srows = _structure_rows(case, im) if structure_rows is None else structure_rows
    if rx is None:
        rx = case.prescription if case.prescription else float(d.max())
    rx = float(rx)
    if not np.isfinite(rx) or rx <= 0:
        raise ValueError(f"rx must be a positive dose in Gy, got {rx!r}")
    levels = [float(v) for v in isodose_levels]
    for v in levels:
        if not 0 < v <= 1.5:
            raise ValueError(f"isodose_levels are fractions of the prescription in (0, 1.5], got {v!r}")
    body = next((srows[s.name] for s in case.structures.values() if s.kind == "body"), None)
    if body is None or body.size == 0:
        body = np.arange(d.size)
    terms, points = [], []
    for v in levels:
        lvl = v * rx
        inside, outside = body[d[body] >= lvl], body[d[body] < lvl]
        tag = f"{100 * v:g}%"
        if inside.size:
            terms.append(SquaredUnderdose(inside, lvl, isodose_weight, f"iso_in_{tag}"))
            points.append(dict(structure="(isodose)", metric=f"inside {tag}", value=lvl, term=f"iso_in_{tag}"))
        if outside.size:
            terms.append(SquaredOverdose(outside, lvl, isodose_weight, f"iso_out_{tag}"))
            points.append(dict(structure="(isodose)", metric=f"outside {tag}", value=lvl, term=f"iso_out_{tag}"))
    for s in case.structures.values():
        r = srows.get(s.name)
        if r is None or r.size == 0 or s.kind == "body":
            continue
        if s.kind == "target":
            spec = [("D95", DVHMin), ("D2", DVHMax)]
        else:
            spec = [("D10", DVHMax), ("Dmean", MeanDose)]
        for metric, cls in spec:
            name = f"{s.name}_{metric}"
            if metric == "Dmean":
                val = float(d[r].mean())
                terms.append(MeanDose(r, max_mean=val, weight=dvh_weight, name=name))
            else:
                val = _dvh_point(d[r], _DVH_FRACTIONS[metric])
                terms.append(cls(r, val, _DVH_FRACTIONS[metric], weight=dvh_weight, name=name))
            points.append(dict(structure=s.name, metric=metric, value=val, term=name))
    if not terms:
        raise ValueError("no term could be built (empty structures and no dose above the isodose levels)")
    return Objective(terms), points


def _tighten(obj: Objective, qa, case, srows, d_std, tighten: float, fidelity_weight: float, body_rows, log: list):
    """Tighten ``obj`` in place after a failed QA (see the module docstring, step 4)."""
    gamma_failed = any(not (qa.pass_rates[k] >= thr) for k, thr in qa.thresholds.items())
    if gamma_failed:
        for t in obj:
            if t.name.startswith("iso_"):
                t.weight = t.weight * tighten
        if "fidelity" in obj.names:
            obj["fidelity"].weight = obj["fidelity"].weight * tighten
            log.append(f"gamma failed: isodose and fidelity weights x{tighten:g}")
        else:
            obj.add(DoseFidelity(body_rows, d_std[body_rows], fidelity_weight, "fidelity"))
            log.append(f"gamma failed: isodose weights x{tighten:g}, voxel-wise fidelity term added")
    tol = qa.max_dvh_diff_gy
    for row in qa.dvh.itertuples(index=False):
        if not (np.isfinite(row.diff) and abs(row.diff) > tol):
            continue
        r = srows.get(row.structure)
        if r is None or r.size == 0:
            continue
        high = row.diff > 0
        name = f"pin_{row.structure}_{row.metric}_{'max' if high else 'min'}"
        if name in obj.names:
            obj[name].weight = obj[name].weight * tighten
            log.append(f"{row.structure} {row.metric} {'high' if high else 'low'}: {name} weight x{tighten:g}")
            continue
        w0 = max([t.weight for t in obj if not t.name.startswith("iso_") and t.name != "fidelity"] + [1.0]) * tighten
        if row.metric == "Dmean":
            val = float(d_std[r].mean())
            term = MeanDose(r, max_mean=val, weight=w0, name=name) if high else MeanDoseMin(r, val, w0, name)
        elif row.metric in _DVH_FRACTIONS:
            f = _DVH_FRACTIONS[row.metric]
            val = _dvh_point(d_std[r], f)
            term = (DVHMax if high else DVHMin)(r, val, f, weight=w0, name=name)
        else:
            continue
        obj.add(term)
        log.append(f"{row.structure} {row.metric} {'high' if high else 'low'} by {row.diff:+.2f} Gy: "
                   f"{type(term).__name__} at {val:.2f} Gy added (weight {w0:g})")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class ConversionResult:
    """Outcome of :func:`convert_plan`.

    Attributes
    ----------
    machine, standard : str
        Target and standard machine names.
    coincidence : CoincidenceReport
    method : str
        ``'as_is'`` (coincidence shortcut), ``'recalc'``, ``'fluence'`` or ``'dao'``.
    x : ndarray
        Beamlet weights on ``influence`` (the target machine's; the standard's for ``'as_is'``).
    influence : rtlab.dose.InfluenceMatrix
    dose, standard_dose : ndarray (z, y, x)
        Converted and standard dose on the CT grid (Gy).
    qa : rtlab.qa.QAReport or None
        QA of the returned plan (None for ``'as_is'`` or ``qa=False``).
    recalc_qa : QAReport or None
        QA of the plain dose recalculation of the resampled fluence (step 2).
    passed : bool or None
        QA passed (True for ``'as_is'``; None when QA was switched off).
    reasons : list of str
        Why the conversion failed: the final QA's reasons and the attempt history (empty on success).
    attempts : list of dict
        Per optimisation attempt: ``attempt``, ``passed``, ``pass_rates``, ``max_abs_dvh_diff_gy``,
        ``reasons``, ``changes`` (the tightening applied before it), ``objective``, ``iterations``, ``time_s``.
    leaf_fluence : list of ndarray
        Per beam, the leaf-row fluence map (n_leaf_rows, n_cols) in weight units.
    leaf_edges : list of ndarray
        Per beam, the leaf pairs' y edges (mm).
    segments : list of list of Segment or None
        ``'dao'``: per beam the apertures with their optimised weights in ``mu`` (weight units;
        multiply by :func:`rtlab.dose.mu_per_unit_fluence` of the target source for MU).
    dvh_points : list of dict
        The standard plan's DVH points and isodose levels used as constraints.
    timings : dict
        Seconds: ``coincidence_s``, ``influence_s``, ``optimise_s``, ``qa_s``, ``total_s``.
    """

    machine: str
    standard: str
    coincidence: CoincidenceReport
    method: str
    x: np.ndarray
    influence: object
    dose: np.ndarray
    standard_dose: np.ndarray
    qa: object = None
    recalc_qa: object = None
    passed: bool | None = None
    reasons: list = field(default_factory=list)
    attempts: list = field(default_factory=list)
    leaf_fluence: list = field(default_factory=list)
    leaf_edges: list = field(default_factory=list)
    segments: list | None = None
    dvh_points: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def converted(self) -> bool:
        """False when the standard plan was used as is (machines coincide)."""
        return self.method != "as_is"

    @property
    def n_attempts(self) -> int:
        return len(self.attempts)

    def summary(self) -> dict:
        """JSON-ready numbers."""
        out = dict(machine=self.machine, standard=self.standard, method=self.method,
                   coincide=self.coincidence.coincide, passed=self.passed, attempts=self.n_attempts,
                   reasons=list(self.reasons), timings={k: round(float(v), 3) for k, v in self.timings.items()})
        if self.qa is not None:
            out["qa"] = self.qa.to_dict()
        if self.recalc_qa is not None:
            out["recalc_pass_rates"] = dict(self.recalc_qa.pass_rates)
        if self.segments is not None:
            out["segments"] = int(sum(len(s) for s in self.segments))
        return out

    def __repr__(self) -> str:
        rates = "" if self.qa is None else ", " + ", ".join(f"{k}={100 * v:.1f}%" for k, v in self.qa.pass_rates.items())
        return (f"ConversionResult({self.standard!r} -> {self.machine!r}, method={self.method!r}, "
                f"passed={self.passed}, attempts={self.n_attempts}{rates})")


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def _segment_matrix(y, layout, mlc, n_levels):
    """Step-and-shoot apertures of every beam's leaf-row map ``y``; columns = apertures on the variables."""
    cols_r, cols_c, seg_list, w0 = [], [], [], []
    k = 0
    for lay in layout:
        var = lay["var"]
        fmap = np.where(var >= 0, y[np.maximum(var, 0)], 0.0)
        fmap = np.maximum(fmap, 0.0)
        if fmap.max() <= 0:
            seg_list.append([])
            continue
        seq = sq.step_and_shoot(fmap, mlc, dx=lay["dx"], x0=lay["x0"], n_levels=n_levels, method="sweep")
        segs = []
        for s in seq.segments:
            v = var[s.open & (var >= 0)]
            if v.size == 0:
                continue
            cols_r += v.tolist()
            cols_c += [k] * v.size
            w0.append(s.mu)
            segs.append(s)
            k += 1
        seg_list.append(segs)
    n_vars = int(sum((lay["var"] >= 0).sum() for lay in layout))
    S = sp.csr_matrix((np.ones(len(cols_r)), (np.asarray(cols_r, int), np.asarray(cols_c, int))), shape=(n_vars, k))
    return S, np.asarray(w0, float), seg_list


def _qa_rank(qa):
    if qa is None:
        return (0, 0.0)
    return (len(qa.reasons), -min(qa.pass_rates.values()) if qa.pass_rates else 0.0)


def convert_plan(case, x, im, machine, standard=STANDARD_MACHINE, *, method: str = "fluence",
                 thresholds: CoincidenceThresholds | None = None, isodose_levels=(0.95, 0.5), rx: float | None = None,
                 isodose_weight: float = 1.0, dvh_weight: float = 1.0, fidelity_weight: float = 0.1,
                 qa: bool = True, qa_kwargs: dict | None = None, max_attempts: int = 3, tighten: float = 4.0,
                 max_iter: int = 100, leaf_alignment: str = "isocentre", n_levels: int = 10,
                 callback: Callable | None = None) -> ConversionResult:
    """Convert a standard plan to a specific machine (seed 001, step 4 and claims 5-7, 10-12).

    Parameters
    ----------
    case : rtlab.case.Case
        The case the standard plan was made on.
    x : ndarray (n_beamlets,)
        Standard plan's optimised beamlet weights (>= 0).
    im : rtlab.dose.InfluenceMatrix
        Standard plan's influence matrix (built with the standard machine's source).
    machine : str or TreatmentMachine
        Target machine.
    standard : str or TreatmentMachine
        The standard machine (its source must be the one ``im`` was built with).
    method : {'fluence', 'dao', 'recalc'}
        Re-optimise the leaf-row fluence (default); also optimise step-and-shoot aperture weights;
        or only recalculate the dose of the resampled fluence.
    thresholds : CoincidenceThresholds, optional
        Coincidence tolerances (:func:`rtlab.dose.machines.compare_machines`).
    isodose_levels : sequence of float
        Isodose lines kept as constraints, fractions of ``rx``.
    rx : float, optional
        Reference dose (Gy) of the isodose levels; default the case prescription.
    isodose_weight, dvh_weight, fidelity_weight : float
        Initial weights of the isodose terms, DVH-point terms, and of the fidelity term added on a
        gamma failure.
    qa : bool
        Run :func:`rtlab.qa.qa_report` after each attempt (and retry on failure).
    qa_kwargs : dict, optional
        Passed to :func:`rtlab.qa.qa_report` (``criteria``, ``thresholds``, ``max_dvh_diff_gy``, ...).
    max_attempts : int
        Optimisations at most (>= 1): the first plus ``max_attempts - 1`` regenerations.
    tighten : float
        Weight factor (> 1) applied on each regeneration.
    max_iter : int
        L-BFGS-B iterations per attempt (and per DAO stage).
    leaf_alignment : {'isocentre', 'grid'}
        See :func:`leaf_row_parameterisation`.
    n_levels : int
        Intensity levels per beam for the DAO sequencing.
    callback : callable, optional
        ``callback(attempt_record)`` after each attempt.

    Returns
    -------
    ConversionResult

    Raises
    ------
    ValueError / TypeError
        Bad inputs (sizes, NaN, negative weights, mismatched grids or machines, unknown method,
        a field the target MLC cannot cover).
    """
    from ..dose.influence import build_influence

    t_all = time.perf_counter()
    w = _check_inputs(case, x, im)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(max_attempts) != max_attempts or max_attempts < 1:
        raise ValueError(f"max_attempts must be a positive integer, got {max_attempts!r}")
    if not (np.isfinite(tighten) and tighten > 1):
        raise ValueError(f"tighten must be a factor > 1, got {tighten!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    std = get_machine(standard)
    tgt = get_machine(machine)
    if im.machine.key()[1:] != std.source.key()[1:]:
        raise ValueError(f"im was computed with source {im.machine.name!r}, which is not the standard machine "
                         f"{std.name!r}'s source {std.source.name!r}; pass standard= the machine of the standard plan")
    qa_kwargs = dict(qa_kwargs or {})
    timings = {}
    t0 = time.perf_counter()
    coin = compare_machines(std, tgt, thresholds)
    timings["coincidence_s"] = time.perf_counter() - t0
    d_std = im.dose_vector(w)
    D_std = im.to_grid(d_std)
    if coin.coincide:
        timings["total_s"] = time.perf_counter() - t_all
        return ConversionResult(tgt.name, std.name, coin, "as_is", w.copy(), im, D_std, D_std, passed=True,
                                timings=timings)

    from ..qa import qa_report

    P, y0, layout = leaf_row_parameterisation(im, w, tgt.mlc, leaf_alignment)
    t0 = time.perf_counter()
    im_t = build_influence(case, im.beams, machine=tgt.source, dose_grid=im.grid, cutoff_mm=im.cutoff_mm,
                           voxels=im.ct_mask, progress=False)
    if not np.array_equal(im_t.voxel_index, im.voxel_index):  # pragma: no cover - same inputs, same rows
        raise RuntimeError("the target influence matrix selected other voxels than the standard one")
    B = (im_t.matrix @ P).tocsr()
    timings["influence_s"] = time.perf_counter() - t0
    timings["optimise_s"] = 0.0
    timings["qa_s"] = 0.0

    def run_qa(xb):
        t = time.perf_counter()
        r = qa_report(D_std, im_t.dose(xb), case, **qa_kwargs) if qa else None
        timings["qa_s"] += time.perf_counter() - t
        return r

    def leaf_maps(y):
        return [np.where(lay["var"] >= 0, y[np.maximum(lay["var"], 0)], 0.0) for lay in layout]

    recalc_qa = run_qa(P @ y0)
    edges = [lay["leaf_edges"] for lay in layout]
    if method == "recalc":
        res = ConversionResult(tgt.name, std.name, coin, "recalc", P @ y0, im_t, im_t.dose(P @ y0), D_std,
                               qa=recalc_qa, recalc_qa=recalc_qa, passed=None if recalc_qa is None else recalc_qa.passed,
                               reasons=[] if recalc_qa is None else list(recalc_qa.reasons),
                               leaf_fluence=leaf_maps(y0), leaf_edges=edges, timings=timings)
        timings["total_s"] = time.perf_counter() - t_all
        return res

    srows = _structure_rows(case, im)
    obj, points = conversion_objective(case, im, d_std, rx, isodose_levels, isodose_weight, dvh_weight, srows)
    body_rows = next((srows[s.name] for s in case.structures.values() if s.kind == "body"), np.arange(d_std.size))
    body_rows = body_rows[d_std[body_rows] >= 0.1 * d_std.max()]
    attempts, best = [], None
    y = y0.copy()
    changes: list = []
    for a in range(int(max_attempts)):
        t0 = time.perf_counter()
        r = Solver(B, obj, max_iter=max_iter).run(y)
        y = r.x
        segs = None
        xb = P @ y
        yb = y.copy()
        if method == "dao":
            S, s0, segs = _segment_matrix(y, layout, tgt.mlc, n_levels)
            if S.shape[1]:
                r2 = Solver((B @ S).tocsr(), obj, max_iter=max_iter).run(s0)
                for beam_segs, in_beam in zip(segs, _split(r2.x, segs)):
                    for s, wv in zip(beam_segs, in_beam):
                        s.mu = float(wv)
                yb = S @ r2.x
                xb = P @ yb
                r = r2
        timings["optimise_s"] += time.perf_counter() - t0
        q = run_qa(xb)
        rec = dict(attempt=a + 1, passed=None if q is None else bool(q.passed),
                   pass_rates={} if q is None else dict(q.pass_rates),
                   max_abs_dvh_diff_gy=None if q is None else q.to_dict()["max_abs_dvh_diff_gy"],
                   reasons=[] if q is None else list(q.reasons), changes=list(changes),
                   objective=float(r.objective), iterations=int(r.iterations), time_s=time.perf_counter() - t0)
        attempts.append(rec)
        if callback is not None:
            callback(rec)
        cand = (q, xb, yb, segs)
        if best is None or _qa_rank(q) < _qa_rank(best[0]):
            best = cand
        if q is None or q.passed:
            break
        if a + 1 < max_attempts:
            changes = []
            _tighten(obj, q, case, srows, d_std, tighten, fidelity_weight, body_rows, changes)
    q, xb, yb, segs = best
    passed = None if q is None else bool(q.passed)
    reasons = []
    if q is not None and not q.passed:
        reasons = list(q.reasons) + [f"QA failed in all {len(attempts)} attempt(s) (best attempt kept):"]
        for rec in attempts:
            rates = ", ".join(f"{k} {100 * v:.2f} %" for k, v in rec["pass_rates"].items())
            reasons.append(f"attempt {rec['attempt']}: {rates}; " + ("; ".join(rec["reasons"]) or "passed")
                           + (f" [after: {'; '.join(rec['changes'])}]" if rec["changes"] else ""))
    timings["total_s"] = time.perf_counter() - t_all
    return ConversionResult(tgt.name, std.name, coin, method, xb, im_t, im_t.dose(xb), D_std, qa=q,
                            recalc_qa=recalc_qa, passed=passed, reasons=reasons, attempts=attempts,
                            leaf_fluence=leaf_maps(yb), leaf_edges=edges, segments=segs, dvh_points=points,
                            timings=timings)


def _split(w, segs):
    out, k = [], 0
    for s in segs:
        out.append(w[k:k + len(s)])
        k += len(s)
    return out


def convert_to_machines(case, x, im, machines=None, standard=STANDARD_MACHINE, progress: bool = False,
                        **options) -> dict:
    """Convert one standard plan for several machines (seed 001, claim 13).

    Parameters
    ----------
    case, x, im, standard
        As in :func:`convert_plan`.
    machines : sequence of str or TreatmentMachine, optional
        Target machines; default every registered machine except ``standard``.
    progress : bool
        Show a tqdm bar over the machines.
    **options
        Passed to :func:`convert_plan`.

    Returns
    -------
    dict
        ``machine name -> ConversionResult``, in the given order.
    """
    std = get_machine(standard)
    if machines is None:
        machines = [n for n in list_machines() if n != std.name]
    if isinstance(machines, (str, TreatmentMachine)):
        machines = [machines]
    machines = list(machines)
    if not machines:
        raise ValueError("machines is empty; pass at least one target machine name or TreatmentMachine")
    tms = [get_machine(m) for m in machines]
    names = [m.name for m in tms]
    if len(set(names)) != len(names):
        raise ValueError(f"machines holds duplicate names {names}; each target machine once")
    it = tms
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tms, desc="converting", leave=False)
    return {m.name: convert_plan(case, x, im, m, std, **options) for m in it}
