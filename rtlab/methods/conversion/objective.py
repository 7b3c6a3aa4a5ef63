"""Penalty terms of a plan conversion (patent 001, claims 5 and 7): the standard plan's isodose
lines and DVH points (:func:`conversion_objective`), a voxel-wise fidelity term
(:class:`DoseFidelity`) and their tightening after a failed QA (:func:`tighten_objective`).
"""

from __future__ import annotations

import numpy as np

from ...optimize import DVHMax, DVHMin, MeanDose, Objective, SquaredOverdose, SquaredUnderdose, Term

__all__ = ["DoseFidelity", "MeanDoseMin", "conversion_objective", "tighten_objective", "rows_of_structures", "dvh_point", "DVH_FRACTIONS"]


#: DVH metric -> volume fraction it is read at.
DVH_FRACTIONS = {"D95": 0.95, "D50": 0.50, "D2": 0.02, "D10": 0.10, "D98": 0.98, "D5": 0.05}


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


def dvh_point(d: np.ndarray, fraction: float) -> float:
    """Dose (Gy) received by at least ``fraction`` of the voxels (voxel-count DVH of a row set)."""
    s = np.sort(np.asarray(d, float))[::-1]
    k = max(int(np.ceil(fraction * s.size - 1e-9)) - 1, 0)
    return float(s[k])


def rows_of_structures(case, im) -> dict:
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


def conversion_objective(case, im, standard_dose_rows, rx: float | None = None, isodose_levels=(0.95, 0.5),
                         isodose_weight: float = 1.0, dvh_weight: float = 1.0, structure_rows: dict | None = None):
    """The standard plan's isodose lines and DVH points as penalty terms (patent 001, claim 5).

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
    srows = rows_of_structures(case, im) if structure_rows is None else structure_rows
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
                val = dvh_point(d[r], DVH_FRACTIONS[metric])
                terms.append(cls(r, val, DVH_FRACTIONS[metric], weight=dvh_weight, name=name))
            points.append(dict(structure=s.name, metric=metric, value=val, term=name))
    if not terms:
        raise ValueError("no term could be built (empty structures and no dose above the isodose levels)")
    return Objective(terms), points


def tighten_objective(obj: Objective, qa, case, srows, d_std, tighten: float, fidelity_weight: float, body_rows, log: list):
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
        elif row.metric in DVH_FRACTIONS:
            f = DVH_FRACTIONS[row.metric]
            val = dvh_point(d_std[r], f)
            term = (DVHMax if high else DVHMin)(r, val, f, weight=w0, name=name)
        else:
            continue
        obj.add(term)
        log.append(f"{row.structure} {row.metric} {'high' if high else 'low'} by {row.diff:+.2f} Gy: "
                   f"{type(term).__name__} at {val:.2f} Gy added (weight {w0:g})")
