"""Plan-quality metrics: DVH, Dx / Vx, mean / max / min dose, conformity and homogeneity.

Every metric is computed on the **structure grid** from the voxel doses inside a structure's
boolean mask (voxel-centre inclusion, each voxel weighted by the voxel volume). There is no
sub-voxel interpolation anywhere in this module.

Definitions (stated once here, repeated in each docstring)
-----------------------------------------------------------
Let the structure hold ``N`` voxels of volume ``v`` cc (total ``V = N v``) and let
``d_1 >= d_2 >= ... >= d_N`` be its voxel doses sorted in *descending* order.

* **Cumulative DVH** ``V(d)`` = volume of voxels with dose ``>= d`` (exact step function).
* **Dx** (dose to volume): for a requested volume ``u`` (``u = x/100 * V`` for ``D<x>``, or
  ``u`` cc for ``D<x>cc``) let the continuous rank be ``r = u / v``. Then ::

      Dx = d_1                               if r <= 1
      Dx = d_k + (r - k) * (d_{k+1} - d_k)   with k = floor(r), if 1 < r < N
      Dx = d_N                               if r == N

  i.e. at an integer rank ``r = k`` Dx is *the minimum dose received by the hottest k voxels*
  (the largest dose level that at least ``k v`` cc receive), with linear interpolation in rank
  between consecutive voxels. Consequences: ``D0 = Dmax``, ``D100 = Dmin``, Dx is continuous
  and non-increasing in x. Requested volumes above the structure volume raise ``ValueError``.
* **Vx** (volume at dose): volume of voxels with dose ``>= x`` Gy, in % of ``V`` or in cc. No
  interpolation.
* **Dmean** = voxel-volume-weighted mean dose (plain mean on a regular grid); **Dmax** /
  **Dmin** = largest / smallest voxel dose. ICRU 83 recommends the near-maximum ``D2`` (or
  ``D0.03cc`` for small serial organs) instead of the single-voxel Dmax; both are available.
* **PIV(L)** (prescription isodose volume at level ``L`` Gy) = volume of voxels with dose
  ``>= L`` within the ``body`` mask if one is given, otherwise within the whole grid.
  ``TV`` = target volume, ``TV_PIV`` = target volume receiving ``>= L``.

  - Paddick CI = ``TV_PIV**2 / (TV * PIV)`` (Paddick 2000; patent 000, ``f_C = F * S``), in
    [0, 1]; 0 when no voxel reaches ``L``.
  - RTOG CI = ``PIV / TV`` (Shaw et al. 1993).
  - coverage = ``TV_PIV / TV`` (patent 000's second conformity parameter ``S``).
  - selectivity = ``TV_PIV / PIV`` (patent 000's first parameter ``F``); NaN when ``PIV = 0``.
  - gradient index GI = ``PIV(0.5 L) / PIV(L)`` (Paddick & Lippitz 2006); NaN if ``PIV(L) = 0``.
  - homogeneity index (ICRU 83) HI = ``(D2 - D98) / D50`` of the target; NaN if ``D50 = 0``.

Dose on another grid
--------------------
Every function takes ``grid=``: the :class:`~rtlab.core.geometry.Grid` of ``dose`` when it differs
from the structure grid. The dose is then resampled onto the structure grid with trilinear
interpolation (:func:`rtlab.core.geometry.resample`, ``order=1``; structure voxels outside the dose
grid get 0 Gy) and the result says so: scalar metrics return a :class:`MetricValue` (a ``float``
with ``.resampled`` and ``.unit``), :class:`DVH` has ``resampled``, and the dict reports have a
``"resampled"`` key. Without ``grid=`` the dose must already have the structure grid's shape.

Size: over 600 lines on purpose: every metric follows the definitions stated once above and
shares the sorted-dose kernels; about a third of the file is those definitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

import numpy as np

from .._lazy import load
from .._util import check_shape
from ..core.geometry import Grid, Structure, StructureSet, resample
from ..core.validate import check_dose

# imported on first use (rtlab._lazy): metrics themselves need neither
pd = load("pandas")
mpl_figure = load("matplotlib.figure")

__all__ = [
    "MetricValue",
    "DVH",
    "MetricSpec",
    "METRIC_GRAMMAR",
    "dvh",
    "dose_on_grid",
    "dose_at_volume",
    "volume_at_dose",
    "mean_dose",
    "max_dose",
    "min_dose",
    "parse_metric",
    "metric_unit",
    "evaluate",
    "paddick_ci",
    "rtog_ci",
    "coverage",
    "selectivity",
    "gradient_index",
    "homogeneity_index",
    "conformity_report",
    "structure_stats",
]

METRIC_GRAMMAR = (
    "metrics are: 'Dmean', 'Dmax', 'Dmin' (Gy); 'D<x>' with x in percent of the volume, e.g. "
    "'D95', 'D2', 'D0.5' (Gy); 'D<x>cc' with x in cc, e.g. 'D0.03cc' (Gy); 'V<x>Gy' = percent "
    "of the volume receiving >= x Gy, e.g. 'V20Gy'; 'V<x>Gy_cc' = the same in cc, e.g. 'V20Gy_cc'"
)


class MetricValue(float):
    """A metric value: a plain ``float`` that also carries provenance.

    Attributes
    ----------
    resampled : bool
        True if the dose was resampled (trilinear) onto the structure grid first.
    unit : str
        ``'Gy'``, ``'%'``, ``'cc'`` or ``''`` (dimensionless indices).

    Arithmetic on it gives ordinary floats; ``json`` and ``pandas`` see a float.
    """

    def __new__(cls, value, resampled: bool = False, unit: str = ""):
        obj = super().__new__(cls, value)
        obj.resampled = bool(resampled)
        obj.unit = unit
        return obj

    def __getnewargs__(self):
        return (float(self),)

    def __repr__(self) -> str:
        return float.__repr__(self)


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def _check_structure(structure, name: str = "structure") -> Structure:
    if not isinstance(structure, Structure):
        raise TypeError(
            f"{name} must be an rtlab.core.geometry.Structure, got {type(structure).__name__}; "
            "wrap a mask with Structure(name, mask, grid)"
        )
    if not structure.mask.any():
        raise ValueError(
            f"{name} {structure.name!r} is empty (no voxel inside it); metrics are undefined for an "
            "empty structure - check its delineation or leave it out"
        )
    return structure


def dose_on_grid(dose, target: Grid, grid: Grid | None = None) -> tuple[np.ndarray, bool]:
    """Return ``dose`` on grid ``target`` (float64) and whether it had to be resampled.

    Parameters
    ----------
    dose : array_like of float, Gy
        Dose on ``grid`` (or on ``target`` when ``grid`` is None); checked by
        :func:`rtlab.core.validate.check_dose` (numeric, not boolean, finite, >= 0), so every
        metric refuses the same doses. The scores (:mod:`rtlab.evaluate.compare`) also apply its
        plausibility cap :data:`~rtlab.core.validate.MAX_DOSE_GY`.
    target : Grid
        The grid the metrics are computed on (the structure grid).
    grid : Grid, optional
        The dose's own grid. When it differs from ``target`` the dose is resampled with
        trilinear interpolation (:func:`rtlab.core.geometry.resample`); voxels of ``target`` outside
        the dose grid get 0 Gy.

    Returns
    -------
    (ndarray of float64, bool)
        The dose on ``target`` and the ``resampled`` flag.
    """
    if isinstance(dose, DVH):
        raise TypeError("dose must be a dose array (Gy), got a DVH")
    a = np.asarray(dose)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"dose must be a numeric array in Gy, got dtype {a.dtype}")
    if grid is not None:
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be the rtlab.core.geometry.Grid of the dose, got {type(grid).__name__}")
        check_shape("dose", a, grid.shape, "it must match the `grid` argument (the dose's own grid)")
        check_dose("dose", a, max_gy=None)
        if grid.is_same(target):
            return a.astype(np.float64, copy=False), False
        return resample(a, grid, target, order=1, fill=0.0), True
    check_shape(
        "dose", a, target.shape,
        "it must be on the structure grid, or pass grid=<the dose's Grid> to resample it (trilinear)",
    )
    check_dose("dose", a, max_gy=None)
    return a.astype(np.float64, copy=False), False


def _prep(dose, structure, grid, name="structure"):
    s = _check_structure(structure, name)
    d, res = dose_on_grid(dose, s.grid, grid)
    return s, d, res


def region_mask(body, grid: Grid) -> np.ndarray | None:
    """``body`` as a boolean mask on ``grid`` (None -> None = the whole grid)."""
    if body is None:
        return None
    if isinstance(body, Structure):
        grid.require_same(body.grid, f"body structure {body.name!r}")
        return body.mask
    m = np.asarray(body)
    check_shape("body", m, grid.shape, "pass a Structure or a boolean mask on the structure grid")
    if m.dtype != bool:
        raise TypeError(f"body mask must be boolean, got dtype {m.dtype}; use e.g. `mask > 0`")
    return m


def check_level(name: str, value) -> float:
    """``value`` as a positive, finite dose level (Gy); ``ValueError``/``TypeError`` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a dose in Gy (a number), got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive, finite dose in Gy, got {value!r}")
    return v


def _rx_for(target: Structure, rx, what: str) -> float:
    if rx is None:
        if target.prescription is None:
            raise ValueError(
                f"{what}: target {target.name!r} has no prescription; pass rx=<isodose level in Gy>"
            )
        rx = target.prescription
    return check_level("rx", rx)


# ---------------------------------------------------------------------------------------------
# sorted-dose kernels (pure numpy; these are the references)
# ---------------------------------------------------------------------------------------------
def sorted_desc(d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The doses (Gy) of ``mask``'s voxels, highest first (what the Dx/Vx/mean/max metrics read)."""
    return np.sort(d[mask])[::-1]


def _dx_from_sorted(ds: np.ndarray, rank: float) -> float:
    """Dose at continuous rank ``rank`` (in voxels) of descending-sorted doses ``ds``.

    ``rank <= 1`` gives ``ds[0]``; otherwise linear interpolation between ``ds[k-1]`` and
    ``ds[k]`` (1-based ``d_k`` and ``d_{k+1}``) with ``k = floor(rank)``.
    """
    n = ds.size
    if rank <= 1.0:
        return float(ds[0])
    if rank >= n:
        return float(ds[-1])
    k = int(np.floor(rank))
    f = rank - k
    return float(ds[k - 1] + f * (ds[k] - ds[k - 1]))


def _dx_pct(ds: np.ndarray, pct: float) -> float:
    return _dx_from_sorted(ds, pct / 100.0 * ds.size)


def _dx_cc(ds: np.ndarray, cc: float, voxel_cc: float, name: str) -> float:
    total = ds.size * voxel_cc
    if cc > total * (1 + 1e-9):
        raise ValueError(
            f"cannot take D{cc:g}cc of structure {name!r}: it holds only {total:.4g} cc; "
            "ask for a smaller volume or a percentage (D<x>)"
        )
    return _dx_from_sorted(ds, min(cc / voxel_cc, ds.size))


def _check_pct(name: str, x) -> float:
    x = float(x)
    if not np.isfinite(x) or x < 0 or x > 100:
        raise ValueError(f"{name} must be a percentage in [0, 100], got {x!r}")
    return x


# ---------------------------------------------------------------------------------------------
# DVH
# ---------------------------------------------------------------------------------------------
@dataclass
class DVH:
    """A cumulative dose-volume histogram.

    Attributes
    ----------
    name : str
        Structure name.
    dose_gy : ndarray
        Dose axis in Gy, increasing.
    volume_pct : ndarray
        ``volume_pct[i]`` = percent of the structure volume receiving ``>= dose_gy[i]``.
    volume_cc : ndarray
        The same in cc.
    total_cc : float
        Structure volume in cc.
    resampled : bool
        True if the dose was resampled onto the structure grid first.
    exact : bool
        True when ``dose_gy`` holds every distinct voxel dose (the full step function);
        False for a binned DVH (still exact *at* each ``dose_gy``).
    """

    name: str
    dose_gy: np.ndarray
    volume_pct: np.ndarray
    volume_cc: np.ndarray
    total_cc: float
    resampled: bool = False
    exact: bool = True

    def __len__(self) -> int:
        return int(self.dose_gy.size)

    def to_frame(self):
        """The DVH as a ``pandas.DataFrame`` with columns dose_gy, volume_pct, volume_cc."""
        return pd.DataFrame({"dose_gy": self.dose_gy, "volume_pct": self.volume_pct, "volume_cc": self.volume_cc})

    def plot(self, ax=None, unit: str = "%", **kwargs):
        """Draw the DVH as a step curve on ``ax`` (a new Figure if None); returns ``ax``.

        Between axis points the curve takes the value at the right end (``V(d)`` is constant on
        ``(dose_gy[i-1], dose_gy[i]]``) and drops to 0 after the largest dose.
        """
        if ax is None:
            ax = mpl_figure.Figure(figsize=(6, 4)).add_subplot()
        y = self.volume_pct if unit == "%" else self.volume_cc
        x = np.append(self.dose_gy, self.dose_gy[-1])
        y = np.append(y, 0.0)
        kwargs.setdefault("label", self.name)
        ax.plot(x, y, drawstyle="steps-pre", **kwargs)
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("volume (%)" if unit == "%" else "volume (cc)")
        return ax


def dvh(dose, structure: Structure, grid: Grid | None = None, bins=None) -> DVH:
    """Cumulative DVH of ``structure`` from its exact sorted voxel doses.

    Parameters
    ----------
    dose : ndarray, Gy
        Dose on the structure grid, or on ``grid``.
    structure : Structure
        The (non-empty) structure.
    grid : Grid, optional
        The dose's grid when it differs from ``structure.grid``; the dose is then resampled
        (trilinear) and ``DVH.resampled`` is True.
    bins : int or array_like, optional
        None (default): the exact step DVH - the dose axis is 0 Gy (if all doses are positive)
        followed by every distinct voxel dose, and ``V(d)`` = volume of voxels with dose ``>= d``.
        An int ``n``: ``n + 1`` equally spaced dose points from 0 to the maximum dose (for
        plotting). An increasing array: those dose points. In every case the volume at each
        dose point is exact (voxel counting with ``>=``, each voxel weighted by its volume).

    Returns
    -------
    DVH
    """
    s, d, res = _prep(dose, structure, grid)
    vals = np.sort(d[s.mask])  # ascending
    n = vals.size
    vcc = s.grid.voxel_volume_cc
    if bins is None:
        u, first = np.unique(vals, return_index=True)
        count = n - first
        if u[0] > 0:
            u = np.concatenate([[0.0], u])
            count = np.concatenate([[n], count])
        exact = True
    else:
        if np.isscalar(bins):
            if int(bins) != bins or bins < 1:
                raise ValueError(f"bins must be a positive integer or an increasing array of doses (Gy), got {bins!r}")
            u = np.linspace(0.0, max(vals[-1], 0.0), int(bins) + 1)
        else:
            u = np.asarray(bins, dtype=float)
            if u.ndim != 1 or u.size < 2 or not np.all(np.isfinite(u)) or np.any(np.diff(u) <= 0):
                raise ValueError("bins must be a 1-D, finite, strictly increasing array of doses in Gy")
        count = n - np.searchsorted(vals, u, side="left")
        exact = False
    return DVH(
        name=s.name,
        dose_gy=np.asarray(u, dtype=float),
        volume_pct=100.0 * count / n,
        volume_cc=count * vcc,
        total_cc=n * vcc,
        resampled=res,
        exact=exact,
    )


# ---------------------------------------------------------------------------------------------
# scalar dose metrics
# ---------------------------------------------------------------------------------------------
def dose_at_volume(dose, structure: Structure, pct=None, cc=None, grid: Grid | None = None) -> MetricValue:
    """Dx: dose (Gy) received by at least ``pct`` % (or ``cc`` cc) of the structure.

    With the structure's voxel doses sorted descending ``d_1 >= ... >= d_N`` (voxel volume
    ``v`` cc) and the continuous rank ``r = u / v`` of the requested volume ``u`` cc
    (``u = pct/100 * N v``): ``Dx = d_1`` for ``r <= 1``; ``Dx = d_k + (r - k)(d_{k+1} - d_k)``
    with ``k = floor(r)`` for ``1 < r < N``; ``Dx = d_N`` for ``r = N``. At integer ranks this is
    the minimum dose of the hottest ``k`` voxels; between ranks it is linear. ``D0 = Dmax``,
    ``D100 = Dmin``.

    Parameters
    ----------
    dose : ndarray, Gy
    structure : Structure
    pct : float, optional
        Volume in percent of the structure, in [0, 100].
    cc : float, optional
        Absolute volume in cc, at most the structure volume (else ``ValueError``).
        Exactly one of ``pct`` and ``cc`` must be given.
    grid : Grid, optional
        The dose's grid if it differs from the structure grid (then resampled, trilinear).

    Returns
    -------
    MetricValue
        Dose in Gy.
    """
    if (pct is None) == (cc is None):
        raise ValueError("give exactly one of pct= (percent of the volume) or cc= (absolute volume)")
    s, d, res = _prep(dose, structure, grid)
    ds = sorted_desc(d, s.mask)
    if pct is not None:
        v = _dx_pct(ds, _check_pct("pct", pct))
    else:
        cc = float(cc)
        if not np.isfinite(cc) or cc < 0:
            raise ValueError(f"cc must be a non-negative volume in cc, got {cc!r}")
        v = _dx_cc(ds, cc, s.grid.voxel_volume_cc, s.name)
    return MetricValue(v, res, "Gy")


def volume_at_dose(dose, structure: Structure, gy, unit: str = "%", grid: Grid | None = None) -> MetricValue:
    """Vx: volume of the structure receiving ``>= gy`` Gy (voxel counting, no interpolation).

    Parameters
    ----------
    dose : ndarray, Gy
    structure : Structure
    gy : float
        Dose level in Gy.
    unit : {'%', 'cc'}
        Percent of the structure volume, or cc.
    grid : Grid, optional
        The dose's grid if it differs from the structure grid (then resampled, trilinear).

    Returns
    -------
    MetricValue
    """
    if unit not in ("%", "cc"):
        raise ValueError(f"unit must be '%' or 'cc', got {unit!r}")
    gy = float(gy)
    if not np.isfinite(gy):
        raise ValueError(f"gy must be a finite dose in Gy, got {gy!r}")
    s, d, res = _prep(dose, structure, grid)
    return MetricValue(_vx(d[s.mask], gy, unit, s.grid.voxel_volume_cc), res, unit)


def _vx(vals: np.ndarray, gy: float, unit: str, voxel_cc: float) -> float:
    k = int(np.count_nonzero(vals >= gy))
    return 100.0 * k / vals.size if unit == "%" else k * voxel_cc


def mean_dose(dose, structure: Structure, grid: Grid | None = None) -> MetricValue:
    """Dmean: voxel-volume-weighted mean dose (Gy) in the structure (a plain mean on a regular grid)."""
    s, d, res = _prep(dose, structure, grid)
    return MetricValue(float(np.mean(d[s.mask])), res, "Gy")


def max_dose(dose, structure: Structure, grid: Grid | None = None) -> MetricValue:
    """Dmax: the largest voxel dose (Gy) in the structure.

    ICRU 83 prefers the near-maximum ``D2`` (or ``D0.03cc`` for small serial organs), see
    :func:`dose_at_volume`; the single-voxel maximum depends on the grid.
    """
    s, d, res = _prep(dose, structure, grid)
    return MetricValue(float(np.max(d[s.mask])), res, "Gy")


def min_dose(dose, structure: Structure, grid: Grid | None = None) -> MetricValue:
    """Dmin: the smallest voxel dose (Gy) in the structure (ICRU 83 near-minimum: ``D98``)."""
    s, d, res = _prep(dose, structure, grid)
    return MetricValue(float(np.min(d[s.mask])), res, "Gy")


# ---------------------------------------------------------------------------------------------
# metric strings
# ---------------------------------------------------------------------------------------------
class MetricSpec(NamedTuple):
    """A parsed metric string.

    ``kind`` is one of ``'mean'``, ``'max'``, ``'min'``, ``'d_pct'``, ``'d_cc'``, ``'v_pct'``,
    ``'v_cc'``; ``x`` the number in the string (or None); ``unit`` the result's unit.
    """

    kind: str
    x: float | None
    unit: str


_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_PATTERNS = [
    (re.compile(r"^d(mean|max|min)$", re.I), None),
    (re.compile(rf"^d{_NUM}cc$", re.I), ("d_cc", "Gy")),
    (re.compile(rf"^d{_NUM}%?$", re.I), ("d_pct", "Gy")),
    (re.compile(rf"^v{_NUM}gy_cc$", re.I), ("v_cc", "cc")),
    (re.compile(rf"^v{_NUM}gy%?$", re.I), ("v_pct", "%")),
]


def parse_metric(metric: str) -> MetricSpec:
    """Parse a metric string (see :data:`METRIC_GRAMMAR`) into a :class:`MetricSpec`.

    Examples
    --------
    >>> parse_metric("D95")
    MetricSpec(kind='d_pct', x=95.0, unit='Gy')
    >>> parse_metric("V20Gy_cc")
    MetricSpec(kind='v_cc', x=20.0, unit='cc')
    """
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a string; {METRIC_GRAMMAR}")
    m_str = metric.strip().replace(" ", "")
    for pat, kind in _PATTERNS:
        m = pat.match(m_str)
        if m:
            if kind is None:
                return MetricSpec(m.group(1).lower(), None, "Gy")
            x = float(m.group(1))
            if kind[0] == "d_pct" and x > 100:
                raise ValueError(f"metric {metric!r}: D<x> takes x in percent (0-100); for cc write 'D{x:g}cc'; {METRIC_GRAMMAR}")
            return MetricSpec(kind[0], x, kind[1])
    raise ValueError(f"unknown metric {metric!r}; {METRIC_GRAMMAR}")


def metric_unit(metric: str) -> str:
    """Unit of a metric string's value: ``'Gy'``, ``'%'`` or ``'cc'``."""
    return parse_metric(metric).unit


def evaluate_sorted(spec: MetricSpec, ds: np.ndarray, voxel_cc: float, name: str) -> float:
    """A parsed metric (:func:`parse_metric`) of doses sorted highest first (:func:`sorted_desc`).

    ``voxel_cc`` is the voxel volume (cm3) for the cc metrics; ``name`` the structure, for messages.
    Many metrics of one structure then sort its doses once (as :func:`rtlab.evaluate.compare.score` does).
    """
    if spec.kind == "mean":
        return float(np.mean(ds))
    if spec.kind == "max":
        return float(ds[0])
    if spec.kind == "min":
        return float(ds[-1])
    if spec.kind == "d_pct":
        return _dx_pct(ds, spec.x)
    if spec.kind == "d_cc":
        return _dx_cc(ds, spec.x, voxel_cc, name)
    if spec.kind == "v_pct":
        return _vx(ds, spec.x, "%", voxel_cc)
    return _vx(ds, spec.x, "cc", voxel_cc)


def evaluate(dose, structure: Structure, metric: str, grid: Grid | None = None) -> MetricValue:
    """Evaluate a metric string on ``structure``.

    Grammar (case-insensitive): ``"Dmean"``, ``"Dmax"``, ``"Dmin"`` (Gy); ``"D<x>"`` - dose to
    ``x`` % of the volume, e.g. ``"D95"``, ``"D2"``, ``"D0.5"`` (Gy); ``"D<x>cc"`` - dose to
    ``x`` cc, e.g. ``"D0.03cc"`` (Gy); ``"V<x>Gy"`` - percent of the volume receiving
    ``>= x`` Gy; ``"V<x>Gy_cc"`` - the same in cc. Dx and Vx follow :func:`dose_at_volume` and
    :func:`volume_at_dose`. Unknown strings raise ``ValueError`` listing the grammar.

    Returns
    -------
    MetricValue
        In the metric's unit (``.unit``), with ``.resampled``.
    """
    spec = parse_metric(metric)
    s, d, res = _prep(dose, structure, grid)
    v = evaluate_sorted(spec, sorted_desc(d, s.mask), s.grid.voxel_volume_cc, s.name)
    return MetricValue(v, res, spec.unit)


# ---------------------------------------------------------------------------------------------
# conformity
# ---------------------------------------------------------------------------------------------
def _counts(d, tmask, level, region):
    piv = d >= level
    if region is not None:
        piv &= region
    tv = int(np.count_nonzero(tmask))
    return tv, int(np.count_nonzero(piv)), int(np.count_nonzero(piv & tmask))


def _conf_prep(dose, target, rx, body, grid, what):
    s, d, res = _prep(dose, target, grid, "target")
    level = _rx_for(s, rx, what)
    region = region_mask(body, s.grid)
    return s, d, res, level, region


def paddick_ci(dose, target: Structure, rx=None, body=None, grid: Grid | None = None) -> MetricValue:
    """Paddick conformity index ``TV_PIV**2 / (TV * PIV)`` at isodose ``rx`` Gy.

    Paddick, J Neurosurg 93 (2000) 219; patent 000, ``f_C = F * S = TV_RI**2 / (V_RI * TV)``.
    ``PIV`` = volume with dose ``>= rx`` (``>=``, no sub-voxel interpolation) within ``body``
    (whole grid if None); ``TV_PIV`` = target volume with dose ``>= rx``. In [0, 1]; 1 only when
    the isodose volume is exactly the target; 0 when no voxel reaches ``rx``.

    Parameters
    ----------
    dose : ndarray, Gy
    target : Structure
    rx : float, optional
        Isodose level in Gy; default the target's prescription.
    body : Structure or ndarray of bool, optional
        Region in which PIV is counted; default the whole grid.
    grid : Grid, optional
        The dose's grid if it differs from the target grid (then resampled, trilinear).
    """
    s, d, res, level, region = _conf_prep(dose, target, rx, body, grid, "paddick_ci")
    tv, piv, tvpiv = _counts(d, s.mask, level, region)
    return MetricValue(0.0 if piv == 0 else tvpiv * tvpiv / (tv * piv), res, "")


def rtog_ci(dose, target: Structure, rx=None, body=None, grid: Grid | None = None) -> MetricValue:
    """RTOG conformity index ``PIV / TV`` at isodose ``rx`` Gy (Shaw et al. 1993).

    ``PIV`` counts voxels with dose ``>= rx`` within ``body`` (whole grid if None); no sub-voxel
    interpolation. 1 is ideal; it is blind to where the isodose lies. Parameters as
    :func:`paddick_ci`.
    """
    s, d, res, level, region = _conf_prep(dose, target, rx, body, grid, "rtog_ci")
    tv, piv, _ = _counts(d, s.mask, level, region)
    return MetricValue(piv / tv, res, "")


def coverage(dose, target: Structure, rx=None, body=None, grid: Grid | None = None) -> MetricValue:
    """Target coverage ``TV_PIV / TV`` at isodose ``rx`` Gy (patent 000's ``S``), in [0, 1].

    ``TV_PIV`` = target voxels with dose ``>= rx`` (within ``body`` if given). Parameters as
    :func:`paddick_ci`.
    """
    s, d, res, level, region = _conf_prep(dose, target, rx, body, grid, "coverage")
    tv, _, tvpiv = _counts(d, s.mask, level, region)
    return MetricValue(tvpiv / tv, res, "")


def selectivity(dose, target: Structure, rx=None, body=None, grid: Grid | None = None) -> MetricValue:
    """Selectivity ``TV_PIV / PIV`` at isodose ``rx`` Gy (patent 000's ``F``), in [0, 1].

    NaN when no voxel reaches ``rx`` (``PIV = 0``). Parameters as :func:`paddick_ci`.
    """
    s, d, res, level, region = _conf_prep(dose, target, rx, body, grid, "selectivity")
    _, piv, tvpiv = _counts(d, s.mask, level, region)
    return MetricValue(np.nan if piv == 0 else tvpiv / piv, res, "")


def gradient_index(dose, target: Structure, rx=None, body=None, grid: Grid | None = None,
                   fraction: float = 0.5) -> MetricValue:
    """Paddick gradient index ``GI = PIV(fraction * rx) / PIV(rx)`` (Paddick & Lippitz 2006).

    Both isodose volumes count voxels with dose ``>=`` the level within ``body`` (whole grid if
    None), without sub-voxel interpolation. ``target`` only supplies the grid and the default
    ``rx`` (its prescription). NaN when no voxel reaches ``rx``.

    Parameters
    ----------
    fraction : float
        The lower isodose as a fraction of ``rx`` (default 0.5, the standard GI).
    Other parameters as :func:`paddick_ci`.
    """
    s, d, res, level, region = _conf_prep(dose, target, rx, body, grid, "gradient_index")
    fraction = float(fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    _, piv_hi, _ = _counts(d, s.mask, level, region)
    _, piv_lo, _ = _counts(d, s.mask, fraction * level, region)
    return MetricValue(np.nan if piv_hi == 0 else piv_lo / piv_hi, res, "")


def homogeneity_index(dose, target: Structure, grid: Grid | None = None) -> MetricValue:
    """ICRU 83 homogeneity index ``HI = (D2 - D98) / D50`` of the target.

    D2, D98 and D50 follow :func:`dose_at_volume` (rank interpolation). 0 for a perfectly
    uniform dose; NaN when ``D50 = 0``.
    """
    s, d, res = _prep(dose, target, grid, "target")
    ds = sorted_desc(d, s.mask)
    return MetricValue(_hi(ds), res, "")


def _hi(ds):
    d50 = _dx_pct(ds, 50.0)
    return np.nan if d50 == 0 else (_dx_pct(ds, 2.0) - _dx_pct(ds, 98.0)) / d50


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def structures_of(obj) -> tuple[list[Structure], Structure | None, float | None]:
    """Normalise a Case / StructureSet / Mapping / Structure / iterable into
    ``(structures, body, case_prescription)``."""
    case_rx = None
    if hasattr(obj, "structures") and isinstance(getattr(obj, "structures"), StructureSet):
        case_rx = getattr(obj, "prescription", None)
        obj = obj.structures
    if isinstance(obj, Structure):
        items = [obj]
    elif isinstance(obj, Mapping):
        items = list(obj.values())
    elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, np.ndarray)):
        items = list(obj)
    else:
        raise TypeError(
            "structures must be a Case, a StructureSet, a mapping name -> Structure, a Structure "
            f"or a list of Structures, got {type(obj).__name__}"
        )
    for s in items:
        if not isinstance(s, Structure):
            raise TypeError(f"structures must hold rtlab.core.geometry.Structure objects, got {type(s).__name__}")
    if items:
        g = items[0].grid
        for s in items[1:]:
            g.require_same(s.grid, f"structure {s.name!r}")
    body = next((s for s in items if s.kind == "body"), None)
    return items, body, case_rx


def targets_of(items: list[Structure]) -> list[Structure]:
    """The targets among ``items``, highest prescription first."""
    t = [s for s in items if s.kind == "target"]
    return sorted(t, key=lambda s: -(s.prescription or 0.0))


def conformity_from(d, t: Structure, level: float, region) -> dict:
    """The conformity numbers of :func:`conformity_report` for one target ``t`` at isodose ``level`` (Gy).

    ``d`` is the dose on ``t``'s grid, ``region`` the mask where isodose volumes are counted
    (:func:`region_mask`; None = the whole grid).
    """
    tv, piv, tvpiv = _counts(d, t.mask, level, region)
    _, piv50, _ = _counts(d, t.mask, 0.5 * level, region)
    vcc = t.grid.voxel_volume_cc
    return {
        "ci_paddick": 0.0 if piv == 0 else tvpiv * tvpiv / (tv * piv),
        "ci_rtog": piv / tv,
        "gi": np.nan if piv == 0 else piv50 / piv,
        "hi": _hi(sorted_desc(d, t.mask)),
        "coverage": tvpiv / tv,
        "selectivity": np.nan if piv == 0 else tvpiv / piv,
        "tv_cc": tv * vcc,
        "piv_cc": piv * vcc,
        "tv_piv_cc": tvpiv * vcc,
        "piv50_cc": piv50 * vcc,
    }


def conformity_report(dose, structures, rx=None, body=None, grid: Grid | None = None,
                      target: str | None = None) -> dict:
    """Conformity and homogeneity of one target.

    Parameters
    ----------
    dose : ndarray, Gy
    structures : Case, StructureSet, mapping or list of Structure, or a Structure
        Where the target is looked up.
    rx : float, optional
        Isodose level in Gy. Default: the target's prescription, else the case's.
    body : Structure or ndarray of bool, optional
        Region for PIV. Default: the set's ``kind='body'`` structure if there is one, else the
        whole grid.
    grid : Grid, optional
        The dose's grid if it differs from the structure grid (then resampled, trilinear).
    target : str, optional
        Name of the target; default the first target (highest prescription).

    Returns
    -------
    dict
        ``ci_paddick``, ``ci_rtog``, ``gi``, ``hi``, ``coverage``, ``selectivity`` (see the
        module docstring for definitions; ``>=`` at each isodose, no sub-voxel interpolation),
        ``tv_cc``, ``piv_cc``, ``tv_piv_cc``, ``piv50_cc``, ``target``, ``rx`` (Gy) and
        ``resampled``.
    """
    items, set_body, case_rx = structures_of(structures)
    if target is not None:
        found = [s for s in items if s.name == target]
        if not found:
            raise ValueError(f"target {target!r} not found; structures: {[s.name for s in items]}")
        t = found[0]
    else:
        ts = targets_of(items)
        if not ts:
            raise ValueError(
                "conformity_report needs a target (a Structure with kind='target'); none in "
                f"{[s.name for s in items]}"
            )
        t = ts[0]
    s, d, res = _prep(dose, t, grid, "target")
    if rx is None:
        rx = t.prescription if t.prescription is not None else case_rx
    level = _rx_for(s, rx, "conformity_report")
    region = region_mask(body if body is not None else set_body, s.grid)
    out = conformity_from(d, s, level, region)
    out.update(target=s.name, rx=level, resampled=res)
    return out


STATS_PCT = (("D95", 95.0), ("D98", 98.0), ("D2", 2.0), ("D10", 10.0), ("D50", 50.0))


def _stats_from_sorted(ds: np.ndarray, voxel_cc: float) -> dict:
    out = {k: _dx_pct(ds, x) for k, x in STATS_PCT}
    out.update(Dmean=float(np.mean(ds)), Dmax=float(ds[0]), Dmin=float(ds[-1]), volume_cc=ds.size * voxel_cc)
    return out


def structure_stats(dose, structure: Structure, grid: Grid | None = None) -> dict:
    """Standard dose statistics of one structure (Gy, volume in cc).

    Returns
    -------
    dict
        ``D95``, ``D98``, ``D2``, ``D10``, ``D50`` (Dx as in :func:`dose_at_volume`),
        ``Dmean``, ``Dmax``, ``Dmin`` (Gy), ``volume_cc`` and ``resampled`` (bool).
    """
    s, d, res = _prep(dose, structure, grid)
    out = _stats_from_sorted(sorted_desc(d, s.mask), s.grid.voxel_volume_cc)
    out["resampled"] = res
    return out
