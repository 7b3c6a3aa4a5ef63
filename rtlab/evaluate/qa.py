"""Plan quality assurance: 3D gamma index and DVH differences (patent 001, claim 7).

Patent 001 verifies every converted (machine-specific) plan before treatment and, when the check
fails, regenerates the plan from the standard plan (claim 7). This module supplies the check:

* :func:`gamma` - the gamma index of Low et al., Med. Phys. 25 (1998) 656, between a reference
  dose and an evaluated dose, on regular (possibly anisotropic, possibly different) grids;
* :func:`dvh_differences` - per-structure differences of D95 / D50 / D2 / Dmean;
* :func:`qa_report` - both together, against pass-rate and DVH thresholds, with the reasons a
  plan failed (optionally a DVH tolerance consistent with the gamma's distance,
  :func:`dvh_shift_spread`).

Size: about 655 lines: the gamma kernel, its numpy reference, the DVH checks and the report
belong to one check, and its tests read them together.

Gamma definition
----------------
For a reference point ``r`` with dose ``D_r(r)`` and evaluated points ``e`` ::

    Gamma(r, e) = sqrt( |e - r|^2 / DTA^2 + (D_e(e) - D_r(r))^2 / dD^2 )      (Low 1998, eq. 4)
    gamma(r)    = min_e Gamma(r, e)                                              (Low 1998, eq. 5)

with ``dD = dose_criterion * D_norm`` (global: ``D_norm`` = the reference maximum, or
``global_dose``) or ``dD = dose_criterion * D_r(r)`` (local). A point passes when
``gamma <= 1``. The evaluated dose is a continuous function: trilinear interpolation of its
voxel values. The minimum is taken over a lattice of search points around ``r`` with isotropic
step ``dta_mm / interp_fraction`` (the convention of Wendling et al., Med. Phys. 34 (2007) 1647
and of pymedphys) inside a sphere of radius ``max_search_mm`` (default ``2 * dta_mm``).

The search visits the lattice points in order of increasing distance and stops as soon as the
distance term alone, ``|e - r| / DTA``, reaches the best ``Gamma`` found so far - no point
further away can do better. Hence a returned value ``g < max_search_mm / dta_mm`` is the exact
lattice minimum; a value ``g >= max_search_mm / dta_mm`` means the true gamma lies in
``[max_search_mm / dta_mm, g]`` (either way the point fails when ``max_search_mm >= dta_mm``).
Lattice points outside the evaluated grid (beyond its outermost voxel centres) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from numba import njit, prange
from scipy import ndimage

from .._lazy import load
from .._util import check_finite, check_shape
from ..core.case import Case
from ..core.geometry import Grid, Structure, StructureSet
from .metrics import evaluate

pd = load("pandas")  # the DVH-difference table only; imported on first use (rtlab._lazy)

__all__ = [
    "GammaResult",
    "QAReport",
    "gamma",
    "gamma_reference",
    "gamma_search_offsets",
    "dvh_shift_spread",
    "dvh_differences",
    "qa_report",
    "criterion_label",
    "DVH_METRICS",
]

#: Metrics compared by :func:`dvh_differences` (see :func:`rtlab.evaluate.metrics.evaluate`).
DVH_METRICS = ("D95", "D50", "D2", "Dmean")

_MAX_OFFSETS = 20_000_000


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class GammaResult:
    """Result of :func:`gamma`.

    Attributes
    ----------
    gamma : ndarray of float64, shape of the reference grid
        Gamma index per reference voxel; NaN where not evaluated (reference dose below the
        cutoff). Unpacking ``g, rate = gamma(...)`` gives ``(gamma, pass_rate)``.
    pass_rate : float
        Fraction (0..1) of evaluated voxels with ``gamma <= 1``; NaN if none was evaluated.
    n_evaluated : int
        Number of reference voxels evaluated.
    dose_criterion : float
        Dose criterion as a fraction (0.03 = 3 %).
    dta_mm : float
        Distance-to-agreement criterion (mm).
    local : bool
        Local (True) or global (False) dose criterion.
    norm_dose : float
        ``D_norm`` (Gy) of the global criterion (the reference maximum unless given).
    cutoff : float
        Fraction of the reference maximum below which reference voxels are not evaluated.
    max_search_mm : float
        Search radius (mm); values ``>= max_search_mm / dta_mm`` are bounds (see module doc).
    """

    gamma: np.ndarray
    pass_rate: float
    n_evaluated: int
    dose_criterion: float
    dta_mm: float
    local: bool
    norm_dose: float
    cutoff: float
    max_search_mm: float

    def __iter__(self):
        return iter((self.gamma, self.pass_rate))

    @property
    def label(self) -> str:
        """``'3%/3mm'`` style label (with ``' local'`` appended for the local criterion)."""
        return criterion_label(self.dose_criterion, self.dta_mm) + (" local" if self.local else "")

    def summary(self) -> dict:
        """Pass rate, mean / median / 95th percentile / max gamma of the evaluated voxels."""
        g = self.gamma[np.isfinite(self.gamma)]
        if g.size == 0:
            return dict(criterion=self.label, pass_rate=float("nan"), n_evaluated=0)
        return dict(
            criterion=self.label, pass_rate=self.pass_rate, n_evaluated=self.n_evaluated,
            mean=float(g.mean()), median=float(np.median(g)), p95=float(np.percentile(g, 95)),
            max=float(g.max()),
        )

    def __repr__(self) -> str:
        return (f"GammaResult({self.label}, pass_rate={self.pass_rate:.4f}, "
                f"n_evaluated={self.n_evaluated})")


def criterion_label(dose_criterion: float, dta_mm: float) -> str:
    """``criterion_label(0.03, 3) == '3%/3mm'``."""
    return f"{100 * float(dose_criterion):g}%/{float(dta_mm):g}mm"


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _dose_array(name: str, dose, grid: Grid, grid_name: str) -> np.ndarray:
    if not isinstance(grid, Grid):
        raise TypeError(f"{grid_name} must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
    a = np.asarray(dose)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric dose array in Gy, got dtype {a.dtype}")
    check_shape(name, a, grid.shape, f"it must be on {grid_name}")
    check_finite(name, a)
    return np.ascontiguousarray(a, dtype=np.float64)


def _fraction(name: str, value, lo_open=True, hi=1.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number (a fraction, e.g. 0.03 for 3 %), got {value!r}") from None
    ok = np.isfinite(v) and (v > 0 if lo_open else v >= 0) and v < hi
    if not ok:
        rng = "(0, 1)" if lo_open else "[0, 1)"
        raise ValueError(f"{name} must be a fraction in {rng} (e.g. 0.03 for 3 %), got {value!r}")
    return v


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


def gamma_search_offsets(dta_mm: float, interp_fraction: int, max_search_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Search lattice of :func:`gamma`: offsets (mm) sorted by distance.

    Parameters
    ----------
    dta_mm : float
        Distance criterion (mm).
    interp_fraction : int
        The lattice step is ``dta_mm / interp_fraction`` (mm) along z, y and x.
    max_search_mm : float
        Radius of the search sphere (mm).

    Returns
    -------
    offsets : ndarray, shape (m, 3)
        ``(dz, dy, dx)`` in mm, first row ``(0, 0, 0)``, sorted by increasing distance.
    dist2 : ndarray, shape (m,)
        ``|offset|^2 / dta_mm^2`` (the squared distance term of Gamma).
    """
    step = dta_mm / interp_fraction
    n = int(np.floor(max_search_mm / step + 1e-9))
    if (2 * n + 1) ** 3 > 4 * _MAX_OFFSETS:
        raise ValueError(
            f"max_search_mm={max_search_mm:g} with step {step:g} mm gives too many search points; "
            "lower max_search_mm or interp_fraction"
        )
    k = np.arange(-n, n + 1, dtype=np.float64) * step
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    off = np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)
    d2 = np.einsum("ij,ij->i", off, off)
    keep = d2 <= max_search_mm ** 2 * (1 + 1e-12)
    off, d2 = off[keep], d2[keep]
    order = np.lexsort((off[:, 2], off[:, 1], off[:, 0], d2))
    return np.ascontiguousarray(off[order]), np.ascontiguousarray(d2[order] / dta_mm ** 2)


def _prepare(reference, evaluated, grid, dose_criterion, dta_mm, cutoff, interp_fraction,
             max_search_mm, local, evaluated_grid, global_dose):
    ref = _dose_array("reference", reference, grid, "grid")
    egrid = grid if evaluated_grid is None else evaluated_grid
    ev = _dose_array("evaluated", evaluated, egrid, "evaluated_grid" if evaluated_grid is not None else "grid")
    dc = _fraction("dose_criterion", dose_criterion)
    dta = _positive("dta_mm", dta_mm)
    co = _fraction("cutoff", cutoff, lo_open=False)
    if isinstance(interp_fraction, bool) or int(interp_fraction) != interp_fraction or interp_fraction < 1:
        raise ValueError(f"interp_fraction must be a positive integer (search step = dta_mm / interp_fraction), got {interp_fraction!r}")
    interp_fraction = int(interp_fraction)
    rmax = 2.0 * dta if max_search_mm is None else _positive("max_search_mm", max_search_mm)
    ref_max = float(ref.max())
    if ref_max <= 0:
        raise ValueError("reference has no positive dose; gamma is undefined for an all-zero reference")
    norm = ref_max if global_dose is None else _positive("global_dose", global_dose)
    if local and co <= 0:
        raise ValueError("the local dose criterion needs cutoff > 0 (dD = dose_criterion * reference dose is 0 at zero dose)")
    eval_mask = ref >= co * ref_max
    if local:
        eval_mask &= ref > 0
    return ref, ev, egrid, dc, dta, co, interp_fraction, rmax, norm, eval_mask


# ---------------------------------------------------------------------------------------------
# numba kernel
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _trilinear(ev, cz, cy, cx):
    """Trilinear value of ``ev`` at continuous index (cz, cy, cx); (value, inside)."""
    nz, ny, nx = ev.shape
    eps = 1e-9
    if cz < -eps or cy < -eps or cx < -eps or cz > nz - 1 + eps or cy > ny - 1 + eps or cx > nx - 1 + eps:
        return 0.0, False
    cz = min(max(cz, 0.0), nz - 1.0)
    cy = min(max(cy, 0.0), ny - 1.0)
    cx = min(max(cx, 0.0), nx - 1.0)
    k0 = min(int(np.floor(cz)), max(nz - 2, 0))
    j0 = min(int(np.floor(cy)), max(ny - 2, 0))
    i0 = min(int(np.floor(cx)), max(nx - 2, 0))
    k1 = min(k0 + 1, nz - 1)
    j1 = min(j0 + 1, ny - 1)
    i1 = min(i0 + 1, nx - 1)
    fz = cz - k0
    fy = cy - j0
    fx = cx - i0
    c00 = ev[k0, j0, i0] * (1 - fx) + ev[k0, j0, i1] * fx
    c01 = ev[k0, j1, i0] * (1 - fx) + ev[k0, j1, i1] * fx
    c10 = ev[k1, j0, i0] * (1 - fx) + ev[k1, j0, i1] * fx
    c11 = ev[k1, j1, i0] * (1 - fx) + ev[k1, j1, i1] * fx
    c0 = c00 * (1 - fy) + c01 * fy
    c1 = c10 * (1 - fy) + c11 * fy
    return c0 * (1 - fz) + c1 * fz, True


@njit(parallel=True, cache=True)
def _gamma_kernel(ref, pts, r_origin, r_spacing, ev, e_origin, e_spacing, offs, d2, dc, norm, local, out):
    """gamma (Low 1998, eq. 5) at reference voxels ``pts`` with an early-exit distance search."""
    n = pts.shape[0]
    m = offs.shape[0]
    for p in prange(n):
        k = pts[p, 0]
        j = pts[p, 1]
        i = pts[p, 2]
        dr = ref[k, j, i]
        dd = dc * dr if local else dc * norm
        inv = 1.0 / (dd * dd)
        wz = r_origin[0] + k * r_spacing[0]
        wy = r_origin[1] + j * r_spacing[1]
        wx = r_origin[2] + i * r_spacing[2]
        best = np.inf
        for q in range(m):
            if d2[q] >= best:
                break
            cz = (wz + offs[q, 0] - e_origin[0]) / e_spacing[0]
            cy = (wy + offs[q, 1] - e_origin[1]) / e_spacing[1]
            cx = (wx + offs[q, 2] - e_origin[2]) / e_spacing[2]
            v, inside = _trilinear(ev, cz, cy, cx)
            if not inside:
                continue
            diff = v - dr
            g2 = d2[q] + diff * diff * inv
            if g2 < best:
                best = g2
        out[p] = np.sqrt(best)


def _finish(gvals, eval_mask, shape, dc, dta, local, norm, co, rmax) -> GammaResult:
    g = np.full(shape, np.nan)
    g[eval_mask] = gvals
    n = int(gvals.size)
    rate = float(np.count_nonzero(gvals <= 1.0) / n) if n else float("nan")
    return GammaResult(g, rate, n, dc, dta, bool(local), norm, co, rmax)


def gamma(reference, evaluated, grid: Grid, dose_criterion: float = 0.03, dta_mm: float = 3.0,
          cutoff: float = 0.1, interp_fraction: int = 10, max_search_mm: float | None = None,
          local: bool = False, evaluated_grid: Grid | None = None,
          global_dose: float | None = None) -> GammaResult:
    """3D gamma index (Low et al. 1998, eqs. 4-5) of ``evaluated`` against ``reference``.

    Numba-parallel; :func:`gamma_reference` is the pure-numpy reference implementation.

    Parameters
    ----------
    reference : ndarray, shape ``grid.shape``, Gy
        Reference dose (e.g. the standard plan's, or a measurement).
    evaluated : ndarray, Gy
        Evaluated dose (e.g. the converted plan's), on ``grid`` or on ``evaluated_grid``;
        interpolated trilinearly between its voxel centres.
    grid : Grid
        Grid of ``reference`` (may be anisotropic).
    dose_criterion : float
        Dose criterion as a fraction (0.03 = 3 %).
    dta_mm : float
        Distance-to-agreement criterion (mm).
    cutoff : float
        Reference voxels with dose ``< cutoff * max(reference)`` are not evaluated (NaN).
    interp_fraction : int
        Search step is ``dta_mm / interp_fraction`` mm (isotropic).
    max_search_mm : float, optional
        Search radius in mm; default ``2 * dta_mm``. Gamma values ``>= max_search_mm / dta_mm``
        are upper bounds of a true gamma that is at least that large.
    local : bool
        Local dose criterion ``dD = dose_criterion * D_ref(r)`` instead of the global
        ``dD = dose_criterion * global_dose``.
    evaluated_grid : Grid, optional
        Grid of ``evaluated`` when it differs from ``grid`` (positions are compared in world mm).
    global_dose : float, optional
        Normalisation dose (Gy) of the global criterion; default ``max(reference)``.

    Returns
    -------
    GammaResult
        ``.gamma`` (NaN where not evaluated), ``.pass_rate`` (fraction with gamma <= 1), ...
        Unpacks as ``gamma_map, pass_rate``.

    Examples
    --------
    >>> g = Grid((4, 5, 6), (2.0, 2.0, 2.0))
    >>> d = np.ones(g.shape)
    >>> gamma(d, d * 1.015, g).pass_rate
    1.0
    """
    ref, ev, egrid, dc, dta, co, ifr, rmax, norm, mask = _prepare(
        reference, evaluated, grid, dose_criterion, dta_mm, cutoff, interp_fraction,
        max_search_mm, local, evaluated_grid, global_dose)
    offs, d2 = gamma_search_offsets(dta, ifr, rmax)
    pts = np.ascontiguousarray(np.argwhere(mask).astype(np.int64))
    out = np.empty(pts.shape[0])
    if pts.shape[0]:
        _gamma_kernel(ref, pts, np.asarray(grid.origin, float), np.asarray(grid.spacing, float),
                      ev, np.asarray(egrid.origin, float), np.asarray(egrid.spacing, float),
                      offs, d2, dc, norm, bool(local), out)
    return _finish(out, mask, grid.shape, dc, dta, local, norm, co, rmax)


def gamma_reference(reference, evaluated, grid: Grid, dose_criterion: float = 0.03, dta_mm: float = 3.0,
                    cutoff: float = 0.1, interp_fraction: int = 10, max_search_mm: float | None = None,
                    local: bool = False, evaluated_grid: Grid | None = None,
                    global_dose: float | None = None) -> GammaResult:
    """Pure-numpy reference of :func:`gamma` (small cases only; same arguments and result).

    Brute force: for every evaluated reference voxel, every lattice point of the search sphere
    is interpolated with ``scipy.ndimage.map_coordinates(order=1)`` (an interpolator independent
    of the numba kernel's) and ``gamma = min sqrt(dist^2/DTA^2 + dose^2/dD^2)`` without early exit.
    """
    ref, ev, egrid, dc, dta, co, ifr, rmax, norm, mask = _prepare(
        reference, evaluated, grid, dose_criterion, dta_mm, cutoff, interp_fraction,
        max_search_mm, local, evaluated_grid, global_dose)
    offs, d2 = gamma_search_offsets(dta, ifr, rmax)
    pts = np.argwhere(mask)
    ro, rs = np.asarray(grid.origin), np.asarray(grid.spacing)
    eo, es = np.asarray(egrid.origin), np.asarray(egrid.spacing)
    hi = np.asarray(egrid.shape) - 1
    out = np.empty(len(pts))
    for p, idx in enumerate(pts):
        dr = ref[tuple(idx)]
        dd = dc * dr if local else dc * norm
        c = (ro + idx * rs + offs - eo) / es
        inside = np.all((c >= -1e-9) & (c <= hi + 1e-9), axis=1)
        c = np.clip(c[inside], 0, hi)
        v = ndimage.map_coordinates(ev, c.T, order=1, mode="nearest")
        g2 = d2[inside] + (v - dr) ** 2 / dd ** 2
        out[p] = np.sqrt(g2.min()) if g2.size else np.inf
    return _finish(out, mask, grid.shape, dc, dta, local, norm, co, rmax)


# ---------------------------------------------------------------------------------------------
# DVH differences
# ---------------------------------------------------------------------------------------------
def _structure_list(structures) -> list[Structure]:
    if isinstance(structures, Case):
        structures = structures.structures
    if isinstance(structures, Structure):
        return [structures]
    if isinstance(structures, StructureSet):
        return list(structures.values())
    if isinstance(structures, Mapping):
        items = list(structures.values())
    elif isinstance(structures, Iterable) and not isinstance(structures, (str, bytes)):
        items = list(structures)
    else:
        raise TypeError(
            f"structures must be a Case, StructureSet, Structure or a list of Structures, got {type(structures).__name__}"
        )
    for s in items:
        if not isinstance(s, Structure):
            raise TypeError(f"structures must hold rtlab.core.geometry.Structure objects, got {type(s).__name__}")
    if not items:
        raise ValueError("structures is empty; pass at least one Structure")
    return items


def dvh_differences(reference, evaluated, structures, grid: Grid | None = None,
                    evaluated_grid: Grid | None = None, metrics: Sequence[str] = DVH_METRICS):
    """Per-structure DVH metric differences ``evaluated - reference`` (Gy).

    Metrics follow :func:`rtlab.evaluate.metrics.evaluate` (D95, D50, D2: dose to 95 / 50 / 2 % of the
    volume; Dmean), computed on each structure's grid from voxel doses.

    Parameters
    ----------
    reference, evaluated : ndarray, Gy
        Doses on the structure grid, or on ``grid`` / ``evaluated_grid`` (then resampled
        trilinearly onto the structure grid, as in :mod:`rtlab.evaluate.metrics`).
    structures : Case, StructureSet, Structure or list of Structure
        Empty structures are listed with NaN values.
    grid, evaluated_grid : Grid, optional
        Grids of ``reference`` and ``evaluated`` when they differ from the structure grid
        (``evaluated_grid`` defaults to ``grid``).
    metrics : sequence of str
        Metrics to compare.

    Returns
    -------
    pandas.DataFrame
        One row per (structure, metric): ``structure``, ``kind``, ``metric``, ``reference``,
        ``evaluated``, ``diff`` (evaluated - reference, Gy) and ``diff_pct`` (100 diff /
        reference; NaN when the reference is 0).
    """
    items = _structure_list(structures)
    egrid = grid if evaluated_grid is None else evaluated_grid
    rows = []
    for s in items:
        for m in metrics:
            if not s.mask.any():
                r = e = float("nan")
            else:
                r = float(evaluate(reference, s, m, grid=grid))
                e = float(evaluate(evaluated, s, m, grid=egrid))
            rows.append(dict(structure=s.name, kind=s.kind, metric=m, reference=r, evaluated=e,
                             diff=e - r, diff_pct=(100.0 * (e - r) / r) if r else float("nan")))
    return pd.DataFrame(rows, columns=["structure", "kind", "metric", "reference", "evaluated", "diff", "diff_pct"])


# ---------------------------------------------------------------------------------------------
# QA report
# ---------------------------------------------------------------------------------------------
@dataclass
class QAReport:
    """Result of :func:`qa_report`.

    Attributes
    ----------
    passed : bool
        True when every gamma pass rate meets its threshold and every DVH difference is within
        ``max_dvh_diff_gy``.
    pass_rates : dict
        Criterion label (``'3%/3mm'``) -> pass rate (fraction).
    thresholds : dict
        Criterion label -> required pass rate (fraction).
    gamma : dict
        Criterion label -> :class:`GammaResult`.
    dvh : pandas.DataFrame
        :func:`dvh_differences` table.
    max_dvh_diff_gy : float
        Tolerance on ``|diff|`` of every DVH metric (Gy); with ``dvh_dta_mm`` the floor of the
        per-row tolerance (``dvh['tolerance_gy']``).
    reasons : list of str
        Why the plan failed (empty when it passed).
    dvh_dta_mm : float or None
        The distance of the distance-consistent DVH tolerance (:func:`qa_report`), or None.
    """

    passed: bool
    pass_rates: dict
    thresholds: dict
    gamma: dict
    dvh: object
    max_dvh_diff_gy: float
    reasons: list = field(default_factory=list)
    dvh_dta_mm: float | None = None

    def to_dict(self) -> dict:
        """JSON-friendly summary (no arrays)."""
        return dict(passed=self.passed, pass_rates=dict(self.pass_rates), thresholds=dict(self.thresholds),
                    max_dvh_diff_gy=self.max_dvh_diff_gy, dvh_dta_mm=self.dvh_dta_mm, reasons=list(self.reasons),
                    max_abs_dvh_diff_gy=float(np.nanmax(np.abs(self.dvh["diff"].to_numpy()))) if len(self.dvh) else 0.0)

    def summary(self) -> str:
        """A few lines of text."""
        lines = [f"QA {'PASSED' if self.passed else 'FAILED'}"]
        for k, v in self.pass_rates.items():
            thr = self.thresholds.get(k)
            lines.append(f"  gamma {k}: {100 * v:.2f} %" + (f" (required {100 * thr:.1f} %)" if thr is not None else ""))
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)

    def __repr__(self) -> str:
        rates = ", ".join(f"{k}={v:.3f}" for k, v in self.pass_rates.items())
        return f"QAReport(passed={self.passed}, {rates}, reasons={len(self.reasons)})"


def qa_report(reference, evaluated, case, criteria=((0.03, 3.0), (0.02, 2.0)),
              thresholds: Mapping[str, float] | None = None, max_dvh_diff_gy: float | None = None,
              cutoff: float = 0.1, local: bool = False, evaluated_grid: Grid | None = None,
              interp_fraction: int = 10, dvh_dta_mm: float | None = None) -> QAReport:
    """Pre-treatment QA of a converted plan (patent 001, claim 7): gamma and DVH checks.

    Parameters
    ----------
    reference : ndarray, Gy
        Reference dose on the case grid (e.g. the standard plan's dose).
    evaluated : ndarray, Gy
        Dose to verify (e.g. the machine-specific plan's), on the case grid or ``evaluated_grid``.
    case : Case or StructureSet
        Provides the grid and the structures.
    criteria : sequence of (fraction, mm)
        Gamma criteria, e.g. ``[(0.03, 3), (0.02, 2)]`` for 3 %/3 mm and 2 %/2 mm (global).
    thresholds : dict, optional
        Criterion label -> minimum pass rate (fraction); default
        ``{'3%/3mm': 0.95, '2%/2mm': 0.90}``. Criteria without a threshold are reported only.
    max_dvh_diff_gy : float, optional
        Tolerance (Gy) on ``|evaluated - reference|`` of D95, D50, D2 and Dmean of every
        structure; default 3 % of the case prescription (of the reference maximum if the case
        has none).
    cutoff, local, evaluated_grid, interp_fraction
        Passed to :func:`gamma`.
    dvh_dta_mm : float, optional
        Distance-consistent DVH tolerance (rtlab's, not a published rule): each structure's
        metric may differ by ``max(max_dvh_diff_gy, s)``, where ``s`` (Gy) is the largest change
        of that metric of the reference dose shifted by ``dvh_dta_mm`` along +-z, +-y, +-x
        (:func:`dvh_shift_spread`). A structure a few voxels big in a steep gradient changes its
        D2/D50 by far more than 3 % under a shift the gamma's distance criterion accepts; this
        tolerance accepts on the DVH what the gamma accepts in space. Default None: the fixed
        ``max_dvh_diff_gy`` on every row.

    Returns
    -------
    QAReport
    """
    if isinstance(case, Case):
        grid, structures, rx = case.grid, case.structures, case.prescription
    elif isinstance(case, StructureSet):
        grid, structures, rx = case.grid, case, None
    else:
        raise TypeError(f"case must be an rtlab Case or StructureSet (for the grid and structures), got {type(case).__name__}")
    if thresholds is None:
        thresholds = {"3%/3mm": 0.95, "2%/2mm": 0.90}
    thresholds = {str(k): float(v) for k, v in dict(thresholds).items()}
    for k, v in thresholds.items():
        if not 0 <= v <= 1:
            raise ValueError(f"thresholds[{k!r}] must be a pass-rate fraction in [0, 1], got {v!r}")
    crit = []
    for c in criteria:
        try:
            dc, mm = c
        except (TypeError, ValueError):
            raise TypeError(f"criteria must be (dose fraction, mm) pairs like (0.03, 3), got {c!r}") from None
        crit.append((float(dc), float(mm)))
    labels = [criterion_label(dc, mm) for dc, mm in crit]
    unknown = set(thresholds) - set(labels)
    if unknown:
        raise ValueError(f"thresholds name criteria {sorted(unknown)} that are not in criteria {labels}")
    ref = _dose_array("reference", reference, grid, "the case grid")
    if max_dvh_diff_gy is None:
        max_dvh_diff_gy = 0.03 * (rx if rx else float(ref.max()))
    max_dvh_diff_gy = _positive("max_dvh_diff_gy", max_dvh_diff_gy)

    results, rates, reasons = {}, {}, []
    for (dc, mm), lab in zip(crit, labels):
        r = gamma(ref, evaluated, grid, dose_criterion=dc, dta_mm=mm, cutoff=cutoff, local=local,
                  evaluated_grid=evaluated_grid, interp_fraction=interp_fraction)
        results[lab], rates[lab] = r, r.pass_rate
        thr = thresholds.get(lab)
        if thr is not None and not (r.pass_rate >= thr):
            reasons.append(f"gamma {lab}{' local' if local else ''} pass rate {100 * r.pass_rate:.2f} % "
                           f"< required {100 * thr:.1f} %")
    dvh = dvh_differences(ref, evaluated, structures, grid=None,
                          evaluated_grid=evaluated_grid if evaluated_grid is not None else None)
    if dvh_dta_mm is not None:
        dvh_dta_mm = _positive("dvh_dta_mm", dvh_dta_mm)
        spread = dvh_shift_spread(ref, structures, grid, dvh_dta_mm)
        dvh = dvh.merge(spread, on=["structure", "metric"], how="left")
        dvh["tolerance_gy"] = np.fmax(dvh["shift_spread_gy"].to_numpy(float), max_dvh_diff_gy)
    else:
        dvh["tolerance_gy"] = max_dvh_diff_gy
    for row in dvh.itertuples(index=False):
        if np.isfinite(row.diff) and abs(row.diff) > row.tolerance_gy:
            reasons.append(f"{row.structure} {row.metric} differs by {row.diff:+.3f} Gy "
                           f"({row.reference:.3f} -> {row.evaluated:.3f} Gy), tolerance {row.tolerance_gy:.3f} Gy")
    return QAReport(passed=not reasons, pass_rates=rates, thresholds=thresholds, gamma=results, dvh=dvh,
                    max_dvh_diff_gy=max_dvh_diff_gy, reasons=reasons, dvh_dta_mm=dvh_dta_mm)


def dvh_shift_spread(reference, structures, grid: Grid, dta_mm: float) -> "pandas.DataFrame":
    """How much each DVH metric of ``reference`` changes when the dose moves by ``dta_mm``.

    The reference is shifted by ``+-dta_mm`` along each axis (linear interpolation,
    ``scipy.ndimage.shift``, edge values repeated) and :func:`dvh_differences` taken against
    the unshifted dose; the spread is the largest ``|diff|`` of the six shifts.

    Parameters
    ----------
    reference : ndarray, Gy
        Dose on ``grid`` (the structures' grid).
    structures : Case, StructureSet, Structure or list of Structure
    grid : Grid
    dta_mm : float
        Shift (mm), e.g. the gamma's distance criterion.

    Returns
    -------
    pandas.DataFrame
        ``structure``, ``metric``, ``shift_spread_gy`` (NaN for empty structures), ``n_voxels``.
    """
    ref = np.asarray(reference, np.float64)
    dta = _positive("dta_mm", dta_mm)
    table = None
    for ax in range(3):
        for sign in (-1.0, 1.0):
            sh = [0.0, 0.0, 0.0]
            sh[ax] = sign * dta / float(grid.spacing[ax])
            moved = ndimage.shift(ref, sh, order=1, mode="nearest")
            d = dvh_differences(ref, moved, structures)
            a = d["diff"].abs().to_numpy(float)
            table = d[["structure", "metric"]].assign(shift_spread_gy=a) if table is None else \
                table.assign(shift_spread_gy=np.fmax(table["shift_spread_gy"].to_numpy(float), a))
    counts = {s.name: int(np.count_nonzero(s.mask)) for s in _structure_list(structures)}
    return table.assign(n_voxels=table["structure"].map(counts).astype(int))
