"""Treatment machines (source + MLC) and their parameter coincidence (seed 001, claims 10-12).

Seed 001 plans every patient once on a **standard machine model** and converts the plan to the
**specific machine** that will treat. Before converting it compares the two machines (claim 10):
if their parameters coincide within a predetermined threshold the standard plan is used as is.
The compared parameters are (claims 11-12) those of the **source**, "obtained by comparing dose
measurement characteristic data of the source in a uniform or non-uniform medium", and of the
**multi-leaf collimator**: leaf size and pair number, maximum open field and whether leaves may
interdigitate ("staggering").

Machines
--------
A :class:`TreatmentMachine` is a source (an :class:`rtlab.dose.Machine`, the SVD pencil-beam
model: depth parameters ``b_i``, ``mu`` and lateral Gaussian kernels) plus an
:class:`rtlab.mlc.MLC`. Built-in models (generic, not vendors' data):

=====================  ============================================  ==============================
name                   source                                        MLC
=====================  ============================================  ==============================
``standard``           ``generic_6mv`` (commissioned 6 MV: mu        ``generic_5mm_60`` (5 mm, 60
                       0.0047 /mm, 5 mm primary FWHM, head scatter)  pairs, interdigitation)
``linac_10mm_hard``    harder: the standard with mu x 0.908          ``generic_10mm_40_noid`` (10 mm,
                       (0.00427 /mm), b_1 x 0.923, same kernels      40 pairs, no interdigitation)
``linac_5mm_soft``     softer: mu x 1.105 (0.00520 /mm), b_1 x       ``generic_5mm_60``
                       1.076, 7 mm primary FWHM, near scatter
                       width x 1.167, weight x 1.08
=====================  ============================================  ==============================

The specific machines are defined relative to the standard source (same ratios as when the
standard was the hand-tuned ``generic_6mv(version=1)``: 0.0046 and 0.0056 against 0.005066 /mm).
Every source is normalised like ``generic_6mv``: a unit-fluence 10 x 10 cm field at SSD 1000 mm
gives 1 Gy at d_max on the axis (closed form), so a fluence means about the same MU on each.

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
  standard's by the 1D gamma index (:func:`rtlab.qa.gamma` on a one-voxel-thick grid, global
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
from scipy.special import erf

from ..mlc import MLC, get_mlc
from .machine import FWHM_TO_SIGMA, GENERIC_6MV, Machine, generic_6mv

__all__ = [
    "TreatmentMachine",
    "make_source",
    "get_machine",
    "list_machines",
    "register_machine",
    "STANDARD_MACHINE",
    "DoseCurves",
    "dose_curves",
    "CoincidenceThresholds",
    "ParameterCheck",
    "CoincidenceReport",
    "compare_machines",
]

#: Name of the standard machine model of seed 001.
STANDARD_MACHINE = "standard"


# ---------------------------------------------------------------------------------------------
# machines
# ---------------------------------------------------------------------------------------------
@dataclass
class TreatmentMachine:
    """A treatment machine: a photon source model and an MLC.

    Parameters
    ----------
    name : str
        Identifier (unique in the registry).
    source : rtlab.dose.Machine
        Pencil-beam source model (depth-dose and lateral kernel parameters).
    mlc : rtlab.mlc.MLC or str
        MLC model or the name of a built-in one.
    description : str
        One line for tables.
    """

    name: str
    source: Machine
    mlc: MLC
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.source, Machine):
            raise TypeError(f"source must be an rtlab.dose.Machine (pencil-beam model), got {type(self.source).__name__}")
        self.mlc = get_mlc(self.mlc)

    def copy(self) -> "TreatmentMachine":
        """A deep copy (sources are mutable dataclasses)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        """JSON-friendly summary of the parameters compared by :func:`compare_machines`."""
        s = self.source
        return dict(name=self.name, description=self.description, sad_mm=s.sad, betas_per_mm=list(s.betas),
                    mu_per_mm=s.mu, penumbra_fwhm_mm=s.penumbra_fwhm, mlc=self.mlc.to_dict())


def make_source(name: str, betas, mu: float, primary_fwhm_mm: float = 5.0, scatter_sigmas=(12.0, 30.0),
                scatter_weights=(0.25, 0.10), sad: float = 1000.0, head_scatter=(0.0, 0.0)) -> Machine:
    """A one-Gaussian-per-component SVD source normalised like :func:`rtlab.dose.generic_6mv`.

    Parameters
    ----------
    name : str
    betas : 3 floats
        Build-up rates ``b_i`` (1/mm).
    mu : float
        Attenuation coefficient (1/mm); smaller is a harder (more penetrating) beam.
    primary_fwhm_mm : float
        Primary penumbra FWHM at the isocentre (mm): sigma of component 1 = FWHM / 2.3548.
    scatter_sigmas, scatter_weights : 2 floats each
        Width (mm) and weight of the near and far scatter Gaussians (components 2 and 3).
    sad : float
        Source-axis distance (mm).
    head_scatter : (weight, sigma_mm)
        Head-scatter (extra-focal) source, :attr:`rtlab.dose.Machine.head_scatter_weight` and
        ``head_scatter_sigma`` (default none).

    Returns
    -------
    Machine
        ``norm`` set so that a unit-fluence 10 x 10 cm field at SSD 1000 mm gives 1 Gy at d_max
        on the axis (closed form ``sum_g c_g D_i(g)(d) erf(50/(sqrt2 s_g))^2 (SAD/(SAD+d))^2``).
    """
    sig = (float(primary_fwhm_mm) * FWHM_TO_SIGMA, float(scatter_sigmas[0]), float(scatter_sigmas[1]))
    wts = (1.0, float(scatter_weights[0]), float(scatter_weights[1]))
    m = Machine(name=name, betas=tuple(betas), mu=mu, sad=sad, kernel_sigmas=[[np.array([s]) for s in sig]],
                kernel_weights=[[np.array([w]) for w in wts]], kernel_ssds=(float(sad),), norm=1.0,
                penumbra_fwhm=float(primary_fwhm_mm), head_scatter_weight=float(head_scatter[0]),
                head_scatter_sigma=float(head_scatter[1]))
    d = np.arange(0.0, 60.0, 0.1)
    comp, gs, gw = m.gaussians(sad)
    c = gw * erf(50.0 / (np.sqrt(2) * gs)) ** 2
    dd = (m.depth_dose(d)[:, comp] * c).sum(-1) * (sad / (sad + d)) ** 2
    m.norm = float(1.0 / dd.max())
    return m


def _standard():
    return TreatmentMachine(STANDARD_MACHINE, generic_6mv(), get_mlc("generic_5mm_60"),
                            "standard model: generic 6 MV, 5 mm leaves x 60 pairs, interdigitation")


def _variant(name, b1_scale, mu_scale, primary_fwhm_mm=5.0, near_scale=(1.0, 1.0)):
    """The standard source with scaled ``b_1``, ``mu`` and near-scatter width/weight (same head scatter)."""
    p = GENERIC_6MV
    b = p["betas"]
    return make_source(name, betas=(b[0] * b1_scale, b[1], b[2]), mu=p["mu"] * mu_scale, primary_fwhm_mm=primary_fwhm_mm,
                       scatter_sigmas=(p["sigmas"][1] * near_scale[0], p["sigmas"][2]),
                       scatter_weights=(p["weights"][1] * near_scale[1], p["weights"][2]), sad=p["sad"],
                       head_scatter=p["head_scatter"])


def _hard_10mm():
    # as before relative to the standard: mu x 0.908 (0.0046 / 0.005066), b_1 x 0.923 (0.30 / 0.3252)
    src = _variant("hard_6MV", 0.30 / 0.3252, 0.0046 / 0.005066)
    return TreatmentMachine("linac_10mm_hard", src, get_mlc("generic_10mm_40_noid"),
                            f"harder 6 MV (mu {src.mu:.5f}/mm), 10 mm leaves x 40 pairs, no interdigitation")


def _soft_5mm():
    # mu x 1.105, b_1 x 1.076, 7 mm primary penumbra, near scatter 14/12 wider and 0.27/0.25 heavier
    src = _variant("soft_6MV", 0.35 / 0.3252, 0.0056 / 0.005066, primary_fwhm_mm=7.0,
                   near_scale=(14.0 / 12.0, 0.27 / 0.25))
    return TreatmentMachine("linac_5mm_soft", src, get_mlc("generic_5mm_60"),
                            f"softer 6 MV (mu {src.mu:.5f}/mm), 7 mm primary penumbra, 5 mm leaves x 60 pairs")


_FACTORIES = {STANDARD_MACHINE: _standard, "linac_10mm_hard": _hard_10mm, "linac_5mm_soft": _soft_5mm}
_REGISTERED: dict[str, TreatmentMachine] = {}


def list_machines() -> list[str]:
    """Names of the built-in and registered treatment machines (the standard one first)."""
    return list(_FACTORIES) + [n for n in _REGISTERED if n not in _FACTORIES]


def register_machine(machine: TreatmentMachine, overwrite: bool = False) -> TreatmentMachine:
    """Add a machine to the registry so :func:`get_machine` finds it by name.

    Raises
    ------
    ValueError
        If the name is taken (a built-in name always is) and ``overwrite`` is False.
    """
    if not isinstance(machine, TreatmentMachine):
        raise TypeError(f"machine must be a TreatmentMachine, got {type(machine).__name__}")
    if machine.name in _FACTORIES:
        raise ValueError(f"{machine.name!r} is a built-in machine name; choose another name")
    if machine.name in _REGISTERED and not overwrite:
        raise ValueError(f"a machine named {machine.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTERED[machine.name] = machine.copy()
    return machine


def get_machine(name) -> TreatmentMachine:
    """A treatment machine by name (a fresh copy); a :class:`TreatmentMachine` is returned unchanged.

    Raises
    ------
    ValueError
        Unknown name (the message lists the available ones).
    """
    if isinstance(name, TreatmentMachine):
        return name
    if not isinstance(name, str):
        raise TypeError(f"machine must be a name or a TreatmentMachine, got {type(name).__name__}")
    if name in _FACTORIES:
        return _FACTORIES[name]()
    if name in _REGISTERED:
        return _REGISTERED[name].copy()
    raise ValueError(f"unknown machine {name!r}; available: {list_machines()} (or register_machine your own)")


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


def _crossing(x, y, level):
    """Positions where the piecewise-linear ``y(x)`` crosses ``level`` (in increasing x)."""
    s = np.sign(y - level)
    idx = np.flatnonzero(s[:-1] * s[1:] < 0)
    return x[idx] + (level - y[idx]) * (x[idx + 1] - x[idx]) / (y[idx + 1] - y[idx])


def _penumbra(x, prof):
    c80, c20 = _crossing(x, prof, 80.0), _crossing(x, prof, 20.0)
    if len(c80) < 2 or len(c20) < 2:
        return float("nan")
    return float(((c80[0] - c20[0]) + (c20[-1] - c80[-1])) / 2)


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
    from ..case import Case
    from ..geometry import Grid, Structure, StructureSet
    from ..plan import Beam, BixelGrid
    from .influence import build_influence

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
    out = DoseCurves(depth, pdd, x.copy(), prof, dmax, pdd10, _penumbra(x, prof), field_mm, float(y[iy]))
    _CURVE_CACHE[key] = copy.deepcopy(out)
    return out


# ---------------------------------------------------------------------------------------------
# coincidence
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoincidenceThresholds:
    """Tolerances of :func:`compare_machines` (seed 001, claim 10: "predetermined threshold").

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
        import pandas as pd

        return pd.DataFrame([asdict(c) for c in self.checks])

    def summary(self) -> str:
        lines = [f"{self.specific} vs {self.standard}: {'coincide' if self.coincide else 'differ'}"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def _curve_gamma(x_ref, d_ref, x_ev, d_ev, dose_pct, dta_mm) -> float:
    """1D gamma pass rate (global, 10 % cut-off) with :func:`rtlab.qa.gamma` on a (1, 1, n) grid."""
    from ..geometry import Grid
    from ..qa import gamma

    dx_r = float(x_ref[1] - x_ref[0])
    dx_e = float(x_ev[1] - x_ev[0])
    gr = Grid((1, 1, len(x_ref)), (1.0, 1.0, dx_r), (0.0, 0.0, float(x_ref[0])))
    ge = Grid((1, 1, len(x_ev)), (1.0, 1.0, dx_e), (0.0, 0.0, float(x_ev[0])))
    r = gamma(np.asarray(d_ref, float)[None, None], np.asarray(d_ev, float)[None, None], gr,
              dose_criterion=dose_pct / 100.0, dta_mm=dta_mm, cutoff=0.1, evaluated_grid=ge)
    return float(r.pass_rate)


def compare_machines(standard, specific, thresholds: CoincidenceThresholds | None = None,
                     compare_source: bool = True) -> CoincidenceReport:
    """Compare two machines' MLC and source parameters (seed 001, claims 10-12).

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
            rate = _curve_gamma(xa, da, xb, db, th.curve_dose_pct, th.curve_dta_mm)
            checks.append(ParameterCheck("source", f"{what} {crit} gamma pass rate", 1.0, rate, rate - 1.0,
                                         th.curve_pass_rate, bool(rate >= th.curve_pass_rate - 1e-12), ""))
        num("source", "d_max", ca.dmax_mm, cb.dmax_mm, th.dmax_mm, "mm")
        num("source", "PDD(100 mm)", ca.pdd10, cb.pdd10, th.pdd10_pct, "%")
        num("source", "80-20% penumbra", ca.penumbra_mm, cb.penumbra_mm, th.penumbra_mm, "mm")
    reasons = [c.reason() for c in checks if not c.ok]
    return CoincidenceReport(not reasons, a.name, b.name, checks, reasons, curves)
