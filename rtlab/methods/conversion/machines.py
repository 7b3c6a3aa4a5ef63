"""Treatment machines (source + MLC) for plan conversion (patent 001): the machine registry.

Patent 001 plans every patient once on a **standard machine model** and converts the plan to the
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
:class:`rtlab.core.mlc.MLC`. Built-in models (generic, not vendors' data):

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

Their coincidence check (claims 10-12) is :mod:`rtlab.methods.conversion.coincidence`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from ...core.mlc import MLC, get_mlc
from ...dose.machine import FWHM_TO_SIGMA, GENERIC_6MV, Machine, generic_6mv

__all__ = ["TreatmentMachine", "make_source", "get_machine", "list_machines", "register_machine", "STANDARD_MACHINE"]


#: Name of the standard machine model of patent 001.
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
    mlc : rtlab.core.mlc.MLC or str
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
