"""Dose-volume statistics from weighted dose samples: sub-voxel structures and TPS DVHs.

:mod:`rtlab.evaluate.metrics` works on boolean masks, one sample per voxel. Scoring a dose that
came from a planning system on its own grid needs structures resolved below the voxel (a 4 cc
structure on a 3 mm dose grid is about 150 voxels, and which of its edge voxels count decides
its volume to several percent). A :class:`DoseVolume` is the dose distribution of one
structure as a fine histogram of weighted samples:

* :meth:`DoseVolume.from_subvoxels` samples the dose at the inside sub-pixels of every layer of a
  :class:`~rtlab.core.subvoxel.SubvoxelMask` (trilinear interpolation between the dose voxel
  centres, the value of the nearest border voxel beyond the outermost centres), each worth its
  share of the volume (exact slab overlap along z times ``1/s**2`` of a voxel's area);
* :meth:`DoseVolume.from_mask` takes one sample per voxel of a boolean mask (a structure on a CT
  grid, as :mod:`~rtlab.evaluate.metrics` does);
* :meth:`DoseVolume.from_cumulative` reads a cumulative DVH curve (a TPS's ``DVHSequence``).

Definitions
-----------
Volume ``V`` (cc) and mean dose ``Dmean = sum_i v_i d_i / V`` are exact sums over the samples;
``Dmin`` / ``Dmax`` the smallest / largest sample. The dose axis is cut into bins of width
``w`` (default ``max dose / 10000``), each holding the volume of its samples; within a bin the
volume is taken as spread evenly, so the cumulative DVH ``V(d)`` (volume receiving ``>= d``) is
piecewise linear and

    Dx = the dose d with V(d) = x  (x in cc, or x/100 * V for D<x>%),

clamped to ``[Dmin, Dmax]``; ``D0 = Dmax``, ``D100 = Dmin``; where ``V(d) = x`` over a dose
interval (a gap between discrete samples) ``Dx`` is its middle. The error against the exact sorted
samples is below one bin. ``D2cc`` is ``None`` for a structure smaller than 2 cc. Conformity at
an isodose ``L`` (:func:`score_volumes`): ``TV`` = target volume, ``TV_PIV`` = its volume with
``d >= L``, ``PIV`` = volume with ``d >= L`` of the body structure if there is one, else of the
whole dose grid (voxel counting); Paddick CI = ``TV_PIV**2 / (TV PIV)``, RTOG CI = ``PIV / TV``,
GI = ``PIV(L/2) / PIV(L)``, HI = ``(D2 - D98) / D50``; they are ``None`` without a target or a
prescription.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._util import check_finite, json_safe
from ..core.geometry import Grid
from ..core.subvoxel import SubvoxelMask

__all__ = ["DoseVolume", "trilinear_at", "score_volumes", "volume_stats", "STAT_KEYS", "compare_stats",
           "default_bin_width", "dose_volumes", "tps_dose_volumes", "score_dicom_rt"]

#: Statistics of every structure in :func:`score_volumes` (and ``rtlab score --json``).
STAT_KEYS = ("volume_cc", "Dmin", "Dmean", "Dmax", "D98", "D95", "D50", "D10", "D2", "D2cc")


def trilinear_at(dose: np.ndarray, z, y, x) -> np.ndarray:
    """Trilinear interpolation of ``dose`` at continuous voxel indices ``(z, y, x)`` (arrays).

    Indices beyond the outermost voxel centres are clamped to them (the border voxels' values
    extend to the grid's edges).
    """
    d = np.asarray(dose, float)
    out = []
    idx = []
    for c, n in zip((z, y, x), d.shape):
        c = np.clip(np.asarray(c, float), 0.0, n - 1)
        i0 = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        f = c - i0
        i1 = np.minimum(i0 + 1, n - 1)
        idx.append((i0, i1, f))
        out.append(c)
    (z0, z1, fz), (y0, y1, fy), (x0, x1, fx) = idx
    c00 = d[z0, y0, x0] * (1 - fx) + d[z0, y0, x1] * fx
    c01 = d[z0, y1, x0] * (1 - fx) + d[z0, y1, x1] * fx
    c10 = d[z1, y0, x0] * (1 - fx) + d[z1, y0, x1] * fx
    c11 = d[z1, y1, x0] * (1 - fx) + d[z1, y1, x1] * fx
    return (c00 * (1 - fy) + c01 * fy) * (1 - fz) + (c10 * (1 - fy) + c11 * fy) * fz


@dataclass
class DoseVolume:
    """The dose distribution of one structure: exact volume, mean, min, max and a fine histogram.

    Attributes
    ----------
    name : str
    kind : str
        'target', 'oar' or 'body'.
    volume_cc : float
    dmin, dmax, dmean : float
        Gy (or the dose file's units).
    bin_width : float
        Width of the histogram bins (same unit as the dose).
    hist_cc : ndarray
        Volume (cc) per bin ``[i w, (i + 1) w)``.
    outside_cc : float
        Volume of the structure outside the dose grid (not in the statistics).
    source : str
        'subvoxel', 'mask' or 'dvh'.
    """

    name: str
    kind: str
    volume_cc: float
    dmin: float
    dmax: float
    dmean: float
    bin_width: float
    hist_cc: np.ndarray
    outside_cc: float = 0.0
    source: str = "subvoxel"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, name: str, kind: str, doses, volume_cc: float | np.ndarray, bin_width: float,
                     source: str = "mask", outside_cc: float = 0.0) -> "DoseVolume":
        """From dose samples, each of volume ``volume_cc`` (a number or one per sample)."""
        d = np.asarray(doses, float).ravel()
        if d.size == 0:
            raise ValueError(f"structure {name!r} has no dose samples (empty on the dose grid)")
        check_finite(f"dose of structure {name!r}", d)
        v = np.broadcast_to(np.asarray(volume_cc, float), d.shape)
        w = _check_bin(bin_width)
        n_bins = int(np.floor(max(d.max(), 0.0) / w)) + 1
        b = np.clip(np.floor(d / w).astype(np.int64), 0, n_bins - 1)
        hist = np.bincount(b, weights=v, minlength=n_bins)
        vol = float(v.sum())
        return cls(name, kind, vol, float(d.min()), float(d.max()), float(np.dot(v, d) / vol), w, hist,
                   float(outside_cc), source)

    @classmethod
    def from_mask(cls, name: str, kind: str, dose, mask, grid: Grid, bin_width: float | None = None,
                  outside_cc: float = 0.0) -> "DoseVolume":
        """One sample per voxel of the boolean ``mask`` (dose and mask on ``grid``)."""
        d = grid.check_array("dose", dose)
        m = grid.check_array(f"mask of {name!r}", mask).astype(bool)
        w = bin_width if bin_width is not None else default_bin_width(d)
        return cls.from_samples(name, kind, d[m], grid.voxel_volume_cc, w, "mask", outside_cc)

    @classmethod
    def from_subvoxels(cls, name: str, kind: str, dose, sm: SubvoxelMask, bin_width: float | None = None,
                       outside_cc: float = 0.0) -> "DoseVolume":
        """Dose sampled (trilinear) at every inside sub-pixel of every layer of ``sm``.

        Each sample sits at the layer's ``z_mid`` and a sub-pixel centre and is worth
        ``w * voxel volume / s**2`` (:class:`~rtlab.core.subvoxel.SubvoxelMask`).
        """
        d = sm.grid.check_array("dose", dose).astype(float, copy=False)
        check_finite("dose", d)
        w = _check_bin(bin_width if bin_width is not None else default_bin_width(d))
        n_bins = int(np.floor(max(float(d.max()), 0.0) / w)) + 1
        hist = np.zeros(n_bins)
        vol = 0.0
        total = 0.0
        dmin, dmax = math.inf, -math.inf
        ys, xs = sm.fine_coordinates()
        cache = {}
        unit = sm.subpixel_cc
        for k, p, frac, zmid in sm.layers:
            p = int(p)
            if p not in cache:
                jj, ii = np.nonzero(sm.raster(p))
                cache = {p: (ys[jj], xs[ii])}
            yy, xx = cache[p]
            if yy.size == 0:
                continue
            vals = trilinear_at(d, np.full(yy.size, zmid), yy, xx)
            b = np.clip(np.floor(vals / w).astype(np.int64), 0, n_bins - 1)
            v = frac * unit
            hist += v * np.bincount(b, minlength=n_bins)
            vol += v * vals.size
            total += v * float(vals.sum())
            dmin, dmax = min(dmin, float(vals.min())), max(dmax, float(vals.max()))
        if vol <= 0:
            raise ValueError(f"structure {name!r} has no sub-voxel inside the dose grid")
        return cls(name, kind, vol, dmin, dmax, total / vol, w, hist, float(outside_cc), "subvoxel")

    @classmethod
    def from_cumulative(cls, name: str, kind: str, dose_edges, cum_volume,
                        dmin: float | None = None, dmax: float | None = None, dmean: float | None = None,
                        bin_width: float | None = None) -> "DoseVolume":
        """From a cumulative DVH: ``cum_volume[i]`` = volume (cc) receiving ``>= dose_edges[i]``.

        ``dose_edges`` increasing (the first usually 0). The histogram is rebinned onto bins of
        ``bin_width`` (default: the finest input bin) by linear interpolation of the cumulative
        curve. ``dmin``/``dmax``/``dmean`` are taken when given (a DVHSequence's
        DVHMinimumDose, ...), else from the curve (the first / last dose where the volume
        falls, and ``integral V(d) dd / V``).
        """
        e = np.asarray(dose_edges, float).ravel()
        c = np.asarray(cum_volume, float).ravel()
        if e.size != c.size or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ValueError(f"DVH of {name!r}: dose_edges must be increasing and as long as cum_volume "
                             f"(got {e.size} and {c.size})")
        check_finite(f"DVH of {name!r}", c)
        if e[0] > 0:  # V(d) for d below the first point is the whole volume
            e, c = np.r_[0.0, e], np.r_[c[0], c]
        c = np.minimum.accumulate(c)  # a cumulative DVH never increases
        total = float(c[0])
        if total <= 0:
            raise ValueError(f"DVH of {name!r} has no volume")
        e = np.r_[e, e[-1] + (e[-1] - e[-2])]
        c = np.r_[c, 0.0]
        w = _check_bin(bin_width if bin_width is not None else float(np.min(np.diff(e))))
        grid_d = np.arange(0.0, e[-1] + w, w)
        cum = np.interp(grid_d, e, c, right=0.0)
        hist = -np.diff(np.r_[cum, 0.0])  # volume per bin [g_i, g_i+1)
        falls = np.flatnonzero(np.diff(c) < 0)
        lo = float(e[falls[0]]) if falls.size else 0.0
        hi = float(e[falls[-1] + 1]) if falls.size else 0.0
        mean = float(np.sum(0.5 * (c[1:] + c[:-1]) * np.diff(e)) / c[0]) if c[0] > 0 else 0.0
        return cls(name, kind, total, float(lo if dmin is None else dmin), float(hi if dmax is None else dmax),
                   float(mean if dmean is None else dmean), w, hist, 0.0, "dvh")

    # -- read-outs ------------------------------------------------------------------------------
    def cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dose, volume_cc)``: the cumulative DVH at the bin edges (``V(edge_i)``)."""
        edges = np.arange(self.hist_cc.size + 1) * self.bin_width
        cum = np.r_[np.cumsum(self.hist_cc[::-1])[::-1], 0.0]
        return edges, cum

    def dose_at_cc(self, cc: float) -> float:
        """Dose (Gy) received by at least ``cc`` cc (linear within a bin; module docstring)."""
        cc = float(cc)
        if cc <= 0:
            return self.dmax
        if cc >= self.volume_cc:
            return self.dmin
        edges, cum = self.cumulative()
        # cum is non-increasing. Where it equals cc over several edges (a plateau between
        # discrete samples, e.g. exactly half of a symmetric structure) every dose there is
        # received by cc: take the middle, as a median of an even count does.
        tol = 1e-9 * self.volume_cc
        i_lo = int(np.searchsorted(-cum, -(cc + tol), side="left"))
        i_hi = int(np.searchsorted(-cum, -(cc - tol), side="right") - 1)
        if i_hi > i_lo:
            return float(min(max(0.5 * (edges[i_lo] + edges[i_hi]), self.dmin), self.dmax))
        # the last edge with cum >= cc
        i = int(np.searchsorted(-cum, -cc, side="right") - 1)
        i = min(max(i, 0), self.hist_cc.size - 1)
        h = self.hist_cc[i]
        d = edges[i] + (self.bin_width * (cum[i] - cc) / h if h > 0 else 0.0)
        return float(min(max(d, self.dmin), self.dmax))

    def dose_at_pct(self, pct: float) -> float:
        """``D<pct>``: dose (Gy) received by at least ``pct`` % of the volume."""
        return self.dose_at_cc(float(pct) / 100.0 * self.volume_cc)

    def volume_at_dose(self, level: float) -> float:
        """Volume (cc) receiving ``>= level`` (linear within a bin)."""
        level = float(level)
        if level <= self.dmin:
            return self.volume_cc
        if level > self.dmax:
            return 0.0
        edges, cum = self.cumulative()
        return float(np.interp(level, edges, cum))

    def stats(self) -> dict:
        """:data:`STAT_KEYS` (Gy and cc; ``D2cc`` None below 2 cc) plus ``outside_cc`` when > 0."""
        out = {
            "volume_cc": self.volume_cc,
            "Dmin": self.dmin,
            "Dmean": self.dmean,
            "Dmax": self.dmax,
            "D98": self.dose_at_pct(98),
            "D95": self.dose_at_pct(95),
            "D50": self.dose_at_pct(50),
            "D10": self.dose_at_pct(10),
            "D2": self.dose_at_pct(2),
            "D2cc": self.dose_at_cc(2.0) if self.volume_cc >= 2.0 else None,
        }
        if self.outside_cc > 1e-9:
            out["outside_cc"] = self.outside_cc
        return out


def default_bin_width(dose) -> float:
    """``max(dose) / 10000`` (at least 1e-6): the histogram bin of :class:`DoseVolume`."""
    m = float(np.max(dose)) if np.size(dose) else 0.0
    return max(m / 10000.0, 1e-6)


def _check_bin(w) -> float:
    w = float(w)
    if not np.isfinite(w) or w <= 0:
        raise ValueError(f"bin_width must be a positive dose, got {w!r}")
    return w


def volume_stats(dv: DoseVolume, ndigits: int | None = None) -> dict:
    """:meth:`DoseVolume.stats` with NaN/inf as None, rounded to ``ndigits`` when given."""
    out = {}
    for k, v in dv.stats().items():
        v = json_safe(v)
        out[k] = round(v, ndigits) if (ndigits is not None and isinstance(v, float)) else v
    return out


def compare_stats(ours: dict, theirs: dict) -> dict:
    """``ours - theirs`` for every numeric key both have (None where either is None)."""
    out = {}
    for k, v in ours.items():
        if k in theirs:
            w = theirs[k]
            out[k] = None if (v is None or w is None) else float(v) - float(w)
    return out


def _grid_piv(dose, grid: Grid, level: float) -> float:
    return float(np.count_nonzero(np.asarray(dose) >= level)) * grid.voxel_volume_cc


def score_volumes(volumes, dose=None, grid: Grid | None = None, rx: float | None = None, target: str | None = None,
                  tps: dict | None = None, dose_units: str = "GY", name: str = "plan") -> dict:
    """The JSON-ready score of a dose over structures given as :class:`DoseVolume` objects.

    Parameters
    ----------
    volumes : list of DoseVolume
        One per structure, in output order.
    dose, grid : ndarray and Grid, optional
        The dose on its grid, for PIV without a body structure (voxel counting).
    rx : float, optional
        Prescription (isodose level of CI/GI/coverage, same unit as the dose).
    target : str, optional
        Target structure for the conformity figures; default the first of kind 'target'.
    tps : dict name -> DoseVolume, optional
        The planning system's DVHs (e.g. an RTDOSE's ``DVHSequence``): reported under ``tps``
        with the differences rtlab - TPS under ``tps_difference``.
    dose_units : str
        'GY' or 'RELATIVE' (reported).
    name : str
        Reported as ``case``.

    Returns
    -------
    dict
        ``case``, ``dose_units``, ``target`` (or None), ``rx_gy`` (or None), ``ci_paddick``,
        ``ci_rtog``, ``gi``, ``hi``, ``coverage``, ``selectivity`` (None without target or rx),
        ``structures`` ``{name: {volume_cc, Dmin, Dmean, Dmax, D98, D95, D50, D10, D2, D2cc}}``,
        ``goals`` (empty), and with ``tps``: ``tps`` and ``tps_difference`` (same keys).
    """
    vols = list(volumes)
    by_name = {v.name: v for v in vols}
    if target is not None and target not in by_name:
        raise ValueError(f"target {target!r} is not among the structures {list(by_name)}")
    tv = by_name[target] if target is not None else next((v for v in vols if v.kind == "target"), None)
    body = next((v for v in vols if v.kind == "body"), None)
    conf = dict(ci_paddick=None, ci_rtog=None, gi=None, hi=None, coverage=None, selectivity=None)
    if tv is not None and rx is not None:
        L = float(rx)
        if not np.isfinite(L) or L <= 0:
            raise ValueError(f"rx must be a positive prescription dose, got {rx!r}")

        def piv(level):
            if body is not None:
                return body.volume_at_dose(level)
            if dose is None or grid is None:
                return None
            return _grid_piv(dose, grid, level)

        tv_cc = tv.volume_cc
        tv_piv = tv.volume_at_dose(L)
        p_hi, p_lo = piv(L), piv(0.5 * L)
        if p_hi is not None:
            conf["ci_paddick"] = 0.0 if p_hi == 0 else tv_piv**2 / (tv_cc * p_hi)
            conf["ci_rtog"] = p_hi / tv_cc
            conf["gi"] = None if p_hi == 0 else p_lo / p_hi
            conf["selectivity"] = None if p_hi == 0 else tv_piv / p_hi
        conf["coverage"] = tv_piv / tv_cc
        d50 = tv.dose_at_pct(50)
        conf["hi"] = None if d50 == 0 else (tv.dose_at_pct(2) - tv.dose_at_pct(98)) / d50
    out = {
        "case": name,
        "dose_units": dose_units,
        "target": tv.name if tv is not None else None,
        "rx_gy": float(rx) if rx is not None else None,
        **{k: json_safe(v) for k, v in conf.items()},
        "structures": {v.name: volume_stats(v) for v in vols},
        "goals": [],
    }
    if tps:
        out["tps"] = {}
        out["tps_difference"] = {}
        for nm, dv in tps.items():
            st = volume_stats(dv)
            out["tps"][nm] = st
            if nm in out["structures"]:
                out["tps_difference"][nm] = compare_stats(out["structures"][nm], st)
    return out


def dose_volumes(rt, bin_width: float | None = None, progress: bool = False) -> list[DoseVolume]:
    """:class:`DoseVolume` of every structure of a :class:`rtlab.io.dicom.rt.DicomRT` (sub-voxel sampling).

    ``progress`` shows a tqdm bar over the structures.
    """
    w = bin_width if bin_width is not None else default_bin_width(rt.score_dose)
    items = list(rt.structures)
    if progress:
        items = tqdm(items, desc="sampling the dose", leave=False)
    return [DoseVolume.from_subvoxels(s.name, s.kind, rt.score_dose, s.subvoxels, w, s.outside_cc) for s in items]


def tps_dose_volumes(rt, ours: list[DoseVolume] | None = None) -> dict:
    """The RTDOSE's own DVHs (``rt.tps_dvhs``) as :class:`DoseVolume` objects, by structure name.

    PERCENT volumes are converted with the structure's volume (``ours``: inside + outside the
    dose grid; computed when not given).
    """
    if not rt.tps_dvhs:
        return {}
    ours = {v.name: v for v in (ours if ours is not None else dose_volumes(rt))}
    out = {}
    for name, d in rt.tps_dvhs.items():
        mine = ours.get(name)
        total = None if mine is None else mine.volume_cc + mine.outside_cc
        edges, cum = d.cumulative_cc(total)
        kind = mine.kind if mine is not None else "oar"
        out[name] = DoseVolume.from_cumulative(name, kind, edges, cum, dmin=d.dmin, dmax=d.dmax, dmean=d.dmean)
    return out


def score_dicom_rt(rt, rx: float | None = None, target: str | None = None, bin_width: float | None = None,
                   progress: bool = False) -> dict:
    """Score a :class:`rtlab.io.dicom.rt.DicomRT` (what ``rtlab score --rtdose ... --json`` prints).

    The dose is sampled at the structures' inside sub-voxels (:func:`dose_volumes`); conformity
    at ``rx`` on ``target`` (default: the first target), None without either; with a DVHSequence
    in the RTDOSE the TPS's figures and the differences rtlab - TPS (:func:`score_volumes`).
    """
    vols = dose_volumes(rt, bin_width, progress)
    tps = tps_dose_volumes(rt, vols)
    name = Path(rt.files["rtdose"][0]).stem if rt.files.get("rtdose") else "rtdose"
    return score_volumes(vols, rt.score_dose, rt.score_grid, rx=rx, target=target, tps=tps or None,
                         dose_units=rt.units, name=name)
