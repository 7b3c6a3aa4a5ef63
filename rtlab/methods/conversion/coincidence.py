"""Coincidence of two treatment machines' parameters (patent 001, claims 10-12).

Patent 001 plans every patient once on a **standard machine model** and converts the plan to the
**specific machine** that will treat. Before converting it compares the two machines (claim 10):
if their parameters coincide within a predetermined threshold the standard plan is used as is.
The compared parameters are (claims 11-12) those of the **source**, "obtained by comparing dose
measurement characteristic data of the source in a uniform or non-uniform medium", and of the
**multi-leaf collimator**: leaf size and pair number, maximum open field and whether leaves may
interdigitate ("staggering").

Dose curves ("measured" in water by the engine)
-----------------------------------------------
:func:`dose_curves` computes, with the beamlet engine (:func:`rtlab.dose.build_influence`, cut-off
150 mm so no kernel is truncated), a 10 x 10 cm field (21 x 21 bixels of 100/21 mm, edges at
+-50 mm) at SSD 1000 mm on a water phantom: the central-axis percentage depth dose (PDD, 0-300
mm, 1 mm steps, % of its maximum) and the cross-plane profile at 100 mm depth (-120..120 mm, %
of the central-axis value), plus d_max, PDD(100 mm) and the 80-20 % penumbra (mean of both
sides).

Coincidence (claim 10)
----------------------
:func:`compare_machines` checks, against :class:`CoincidenceThresholds`:

* MLC: ``|leaf width difference| <= leaf_width_mm`` (default 0.1 mm), ``|pair difference| <=
  n_pairs`` (default 0, exact), ``|maximum field difference| <= max_field_mm`` (default 1 mm),
  interdigitation equal;
* source: SAD within ``sad_mm``; the PDD and the profile of the specific machine against the
  standard's by the 1D gamma index (:func:`rtlab.evaluate.qa.gamma` on a one-voxel-thick grid, global
  ``curve_dose_pct`` % of the curve maximum / ``curve_dta_mm``, default 1 % / 1 mm, 10 % cut-off)
  with a required pass rate ``curve_pass_rate`` (default 100 %); and d_max, PDD(100 mm) and the
  penumbra within ``dmax_mm`` (2 mm), ``pdd10_pct`` (1 %), ``penumbra_mm`` (0.5 mm).

The report lists every parameter with both values, the difference, the tolerance and whether it
passed; ``reasons`` holds one readable line per failed parameter.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ...core.beams import Beam, BixelGrid
from ...core.case import Case
from ...core.geometry import Grid, Structure, StructureSet
from ...dose.commission import penumbra_80_20
from ...dose.influence import build_influence
from ...dose.machine import Machine
from ...evaluate.qa import gamma
from .machines import TreatmentMachine, get_machine

__all__ = ["DoseCurves", "dose_curves", "CoincidenceThresholds", "ParameterCheck", "CoincidenceReport", "compare_machines", "curve_gamma"]


# ---------------------------------------------------------------------------------------------
# dose curves in water
# ---------------------------------------------------------------------------------------------
@dataclass
class DoseCurves:
    """Water dose curves of a source (see the module docstring).

    Attributes
    ----------
    depth_mm, pdd : ndarray
        Central-axis depth (mm) and dose in % of its maximum.
    x_mm, profile : ndarray
        Cross-plane position (mm, at ``profile_depth_mm``) and dose in % of the axis value.
    dmax_mm : float
        Depth of the maximum (mm; parabolic refinement around the sampled maximum).
    pdd10 : float
        PDD at 100 mm depth (%).
    penumbra_mm : float
        80 %-20 % distance, mean of both sides (mm).
    field_mm, profile_depth_mm : float
    """

    depth_mm: np.ndarray
    pdd: np.ndarray
    x_mm: np.ndarray
    profile: np.ndarray
    dmax_mm: float
    pdd10: float
    penumbra_mm: float
    field_mm: float
    profile_depth_mm: float


_CURVE_CACHE: dict = {}


def dose_curves(source, field_mm: float = 100.0, profile_depth_mm: float = 100.0) -> DoseCurves:
    """PDD and profile of a ``field_mm`` square field at SSD = SAD in water, by the engine.

    Parameters
    ----------
    source : rtlab.dose.Machine or TreatmentMachine
    field_mm : float
        Square field side at the isocentre plane (mm), 20 to 200.
    profile_depth_mm : float
        Depth of the cross-plane profile (mm), 10 to 250.

    Returns
    -------
    DoseCurves
        Cached per source parameters (:meth:`rtlab.dose.Machine.key`).
    """
    if isinstance(source, TreatmentMachine):
        source = source.source
    if not isinstance(source, Machine):
        raise TypeError(f"source must be an rtlab.dose.Machine or a TreatmentMachine, got {type(source).__name__}")
    field_mm = float(field_mm)
    profile_depth_mm = float(profile_depth_mm)
    if not 20.0 <= field_mm <= 200.0:
        raise ValueError(f"field_mm must be between 20 and 200 mm, got {field_mm!r}")
    if not 10.0 <= profile_depth_mm <= 250.0:
        raise ValueError(f"profile_depth_mm must be between 10 and 250 mm, got {profile_depth_mm!r}")
    key = (source.key(), field_mm, profile_depth_mm)
    if key in _CURVE_CACHE:
        return copy.deepcopy(_CURVE_CACHE[key])
    half_x = field_mm / 2 * (source.sad + profile_depth_mm) / source.sad + 60.0
    nx = 2 * int(np.ceil(half_x)) + 1
    ny = 311  # y = -10 .. 300 mm, surface at y = 0
    g = Grid((5, ny, nx), (1.0, 1.0, 1.0), (-2.0, -10.0, -(nx - 1) / 2))
    y = g.axes()[1]
    x = g.axes()[2]
    water = np.broadcast_to((y >= 0)[None, :, None], g.shape)
    rho = np.where(water, 1.0, 0.001).astype(np.float32)
    ss = StructureSet(g)
    ss.add(Structure("body", water.copy(), g, "body"))
    case = Case("water", g, np.where(water, 0.0, -1000.0).astype(np.float32), ss, density=rho)
    n = 21
    h = field_mm / n
    beam = Beam(0.0, 0.0, (0.0, 0.0, 0.0), h, source.sad, BixelGrid(h, -(n // 2), -(n // 2), np.ones((n, n), bool)))
    iy = int(np.argmin(np.abs(y - profile_depth_mm)))
    sel = np.zeros(g.shape, bool)
    ix0 = int(np.argmin(np.abs(x)))
    sel[2, y >= 0, ix0] = True
    sel[2, iy, :] = True
    im = build_influence(case, [beam], machine=source, cutoff_mm=150.0, voxels=sel, progress=False, gpu=False)
    dose = im.dose(np.ones(im.shape[1]))
    cax = dose[2, y >= 0, ix0]
    depth = y[y >= 0]
    k = int(np.argmax(cax))
    dmax = float(depth[k])
    if 0 < k < len(cax) - 1:  # parabolic refinement of the maximum
        a, b, c = cax[k - 1], cax[k], cax[k + 1]
        den = a - 2 * b + c
        if den < 0:
            dmax = float(depth[k] + 0.5 * (a - c) / den * (depth[1] - depth[0]))
    pdd = 100.0 * cax / cax.max()
    prof_raw = dose[2, iy, :]
    prof = 100.0 * prof_raw / prof_raw[ix0]
    pdd10 = float(np.interp(100.0, depth, pdd))
    out = DoseCurves(depth, pdd, x.copy(), prof, dmax, pdd10, penumbra_80_20(x, prof), field_mm, float(y[iy]))
    _CURVE_CACHE[key] = copy.deepcopy(out)
    return out


# ---------------------------------------------------------------------------------------------
# coincidence
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoincidenceThresholds:
    """Tolerances of :func:`compare_machines` (patent 001, claim 10: "predetermined threshold").

    Attributes
    ----------
    leaf_width_mm, n_pairs, max_field_mm, sad_mm : float
        Largest accepted absolute differences (mm, pairs, mm, mm).
    curve_dose_pct, curve_dta_mm : float
        1D gamma criterion for the PDD and profile (global % of the curve maximum, mm).
    curve_pass_rate : float
        Required gamma pass rate (fraction) of each curve.
    dmax_mm, pdd10_pct, penumbra_mm : float
        Largest accepted differences of d_max (mm), PDD(100 mm) (percentage points) and the
        80-20 % penumbra at the profile depth (mm).
    """

    leaf_width_mm: float = 0.1
    n_pairs: int = 0
    max_field_mm: float = 1.0
    sad_mm: float = 1.0
    curve_dose_pct: float = 1.0
    curve_dta_mm: float = 1.0
    curve_pass_rate: float = 1.0
    dmax_mm: float = 2.0
    pdd10_pct: float = 1.0
    penumbra_mm: float = 0.5

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"threshold {k} must be a finite number >= 0, got {v!r}")
        if self.curve_pass_rate > 1:
            raise ValueError(f"curve_pass_rate is a fraction in [0, 1], got {self.curve_pass_rate!r}")
        if self.curve_dose_pct == 0 or self.curve_dta_mm == 0:
            raise ValueError("curve_dose_pct and curve_dta_mm must be > 0 (the gamma criterion)")


@dataclass
class ParameterCheck:
    """One compared parameter: ``standard`` and ``specific`` values, ``difference``, ``tolerance``, ``ok``."""

    group: str
    parameter: str
    standard: object
    specific: object
    difference: float
    tolerance: float
    ok: bool
    unit: str = ""

    def reason(self) -> str:
        if self.ok:
            return ""
        if isinstance(self.standard, bool):
            return (f"{self.group} {self.parameter}: standard {self.standard} vs specific {self.specific} "
                    "(must be equal)")
        if self.parameter.endswith("gamma pass rate"):
            return (f"{self.group} {self.parameter} {100 * self.specific:.1f} % < required {100 * self.tolerance:.1f} %")
        return (f"{self.group} {self.parameter}: standard {self.standard:.4g} vs specific {self.specific:.4g} {self.unit} "
                f"(difference {self.difference:+.3g} {self.unit}, tolerance {self.tolerance:g} {self.unit})")


@dataclass
class CoincidenceReport:
    """Result of :func:`compare_machines`.

    Attributes
    ----------
    coincide : bool
        Every parameter within its tolerance: the standard plan is used as is (claim 10).
    standard, specific : str
        Machine names.
    checks : list of ParameterCheck
    reasons : list of str
        One line per failed parameter (empty when they coincide).
    curves : dict
        ``'standard'`` and ``'specific'`` :class:`DoseCurves` (when the source was compared).
    """

    coincide: bool
    standard: str
    specific: str
    checks: list
    reasons: list = field(default_factory=list)
    curves: dict = field(default_factory=dict)

    @property
    def differences(self) -> dict:
        """``'group.parameter' -> difference`` for every check."""
        return {f"{c.group}.{c.parameter}": c.difference for c in self.checks}

    @property
    def mlc_coincide(self) -> bool:
        return all(c.ok for c in self.checks if c.group == "MLC")

    @property
    def source_coincide(self) -> bool:
        return all(c.ok for c in self.checks if c.group == "source")

    def to_frame(self):
        """The checks as a pandas DataFrame."""
        return pd.DataFrame([asdict(c) for c in self.checks])

    def summary(self) -> str:
        lines = [f"{self.specific} vs {self.standard}: {'coincide' if self.coincide else 'differ'}"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def curve_gamma(x_ref, d_ref, x_ev, d_ev, dose_pct, dta_mm) -> float:
    """1D gamma pass rate (global, 10 % cut-off) of two curves with :func:`rtlab.evaluate.qa.gamma` on a (1, 1, n) grid.

    Parameters
    ----------
    x_ref, d_ref : ndarray
        Positions (mm, equally spaced) and values of the reference curve.
    x_ev, d_ev : ndarray
        Positions (mm, equally spaced) and values of the evaluated curve.
    dose_pct, dta_mm : float
        Global dose criterion (% of the reference maximum) and distance to agreement (mm).

    Returns
    -------
    float
        Pass rate (fraction).
    """
    dx_r = float(x_ref[1] - x_ref[0])
    dx_e = float(x_ev[1] - x_ev[0])
    gr = Grid((1, 1, len(x_ref)), (1.0, 1.0, dx_r), (0.0, 0.0, float(x_ref[0])))
    ge = Grid((1, 1, len(x_ev)), (1.0, 1.0, dx_e), (0.0, 0.0, float(x_ev[0])))
    r = gamma(np.asarray(d_ref, float)[None, None], np.asarray(d_ev, float)[None, None], gr,
              dose_criterion=dose_pct / 100.0, dta_mm=dta_mm, cutoff=0.1, evaluated_grid=ge)
    return float(r.pass_rate)


def compare_machines(standard, specific, thresholds: CoincidenceThresholds | None = None,
                     compare_source: bool = True) -> CoincidenceReport:
    """Compare two machines' MLC and source parameters (patent 001, claims 10-12).

    Parameters
    ----------
    standard, specific : TreatmentMachine or str
        The standard machine and the machine to match (names are looked up with :func:`get_machine`).
    thresholds : CoincidenceThresholds, optional
        Defaults: see :class:`CoincidenceThresholds`.
    compare_source : bool
        Compute and compare the water dose curves (:func:`dose_curves`, a fraction of a second per
        machine, cached); False compares the MLCs and SADs only.

    Returns
    -------
    CoincidenceReport
    """
    a, b = get_machine(standard), get_machine(specific)
    th = CoincidenceThresholds() if thresholds is None else thresholds
    if not isinstance(th, CoincidenceThresholds):
        raise TypeError(f"thresholds must be a CoincidenceThresholds, got {type(th).__name__}")
    ma, mb = a.mlc, b.mlc
    checks = []

    def num(group, p, va, vb, tol, unit):
        d = float(vb) - float(va)
        checks.append(ParameterCheck(group, p, va, vb, d, float(tol), bool(abs(d) <= tol + 1e-12), unit))

    num("MLC", "leaf width", ma.leaf_width_mm, mb.leaf_width_mm, th.leaf_width_mm, "mm")
    num("MLC", "leaf pairs", int(ma.n_pairs), int(mb.n_pairs), th.n_pairs, "pairs")
    num("MLC", "maximum field", ma.max_field_mm, mb.max_field_mm, th.max_field_mm, "mm")
    checks.append(ParameterCheck("MLC", "interdigitation", bool(ma.interdigitation), bool(mb.interdigitation),
                                 float(ma.interdigitation != mb.interdigitation), 0.0,
                                 ma.interdigitation == mb.interdigitation))
    num("source", "SAD", a.source.sad, b.source.sad, th.sad_mm, "mm")
    curves = {}
    if compare_source:
        ca, cb = dose_curves(a.source), dose_curves(b.source)
        curves = {"standard": ca, "specific": cb}
        crit = f"{th.curve_dose_pct:g}%/{th.curve_dta_mm:g}mm"
        for what, xa, da, xb, db in (("PDD", ca.depth_mm, ca.pdd, cb.depth_mm, cb.pdd),
                                     (f"profile at {ca.profile_depth_mm:g} mm", ca.x_mm, ca.profile, cb.x_mm, cb.profile)):
            rate = curve_gamma(xa, da, xb, db, th.curve_dose_pct, th.curve_dta_mm)
            checks.append(ParameterCheck("source", f"{what} {crit} gamma pass rate", 1.0, rate, rate - 1.0,
                                         th.curve_pass_rate, bool(rate >= th.curve_pass_rate - 1e-12), ""))
        num("source", "d_max", ca.dmax_mm, cb.dmax_mm, th.dmax_mm, "mm")
        num("source", "PDD(100 mm)", ca.pdd10, cb.pdd10, th.pdd10_pct, "%")
        num("source", "80-20% penumbra", ca.penumbra_mm, cb.penumbra_mm, th.penumbra_mm, "mm")
    reasons = [c.reason() for c in checks if not c.ok]
    return CoincidenceReport(not reasons, a.name, b.name, checks, reasons, curves)
