"""Monitor-unit calibration of the pencil-beam engine.

Reference condition (the usual linac calibration, e.g. IAEA TRS-398 / AAPM TG-51 practice
of setting the machine to 1 cGy/MU at d_max): **1 MU delivers 1 cGy (0.01 Gy) at d_max on
the central axis of a 10 x 10 cm field (defined at the isocentre plane) at SSD 1000 mm in
water.** The engine calibrates itself: :func:`reference_dose` computes, with the
fluence-map engine on a water phantom (isocentre at the surface, gantry 0), the central-axis
depth dose of a unit-fluence 10 x 10 cm field and takes its maximum. Hence

    MU per unit fluence = D_ref(d_max) / 0.01 Gy.

The result is cached per machine (:meth:`Machine.key`).

MU of a modulated beam: a fluence map in units of the reference fluence converts to MU
pixel-wise; the beam's MU reported here is the open-field-equivalent MU of its peak fluence,
``max(psi) * MU per unit fluence`` — a lower bound of the delivered MU; leaf sequencing
(paper 003, TNMU) gives the delivered value.
"""

from __future__ import annotations

import numpy as np

from ..core.beams import Beam, BixelGrid
from ..core.case import Case
from ..core.geometry import Grid, Structure, StructureSet
from ._testcases import water_box
from .fluence import FluenceDose
from .machine import Machine, generic_6mv

__all__ = ["reference_dose", "mu_per_unit_fluence", "fluence_to_mu", "beam_mu", "GY_PER_MU_REF"]

#: Dose per MU at the reference condition (Gy).
GY_PER_MU_REF = 0.01

_CACHE: dict = {}


def reference_dose(machine: Machine | None = None, return_curve: bool = False):
    """Dose (Gy) at d_max for unit fluence, 10 x 10 cm, SSD 1000 mm, water (computed by the engine).

    Parameters
    ----------
    machine : Machine, optional
    return_curve : bool
        Also return ``(depth_mm, dose_Gy)`` of the central axis.
    """
    machine = generic_6mv() if machine is None else machine
    key = machine.key()
    if key in _CACHE and not return_curve:
        return _CACHE[key][0]
    # water from y = 0 (surface at the isocentre) to 300 mm; thin in z and x around the axis
    case = water_box(shape=(5, 341, 5), spacing=(1.0, 1.0, 1.0), surface_y=0.0)
    case = _shift(case)
    # 21 x 21 bixels of 5 mm (edges -52.5..52.5 mm); the 10 x 10 cm field is set on 0.5 mm pixels
    bx = BixelGrid(5.0, -10, -10, np.ones((21, 21), bool))
    beam = Beam(0.0, 0.0, (0.0, 0.0, 0.0), 5.0, machine.sad, bx)
    fd = FluenceDose(case, [beam], machine, voxels="all", fluence_mm=0.5)
    psi = np.zeros(fd.map_shape(0))
    # exact 10 x 10 cm centred on the axis: pixels whose centre lies in [-50, 50]
    vv, uu = fd.pixel_centres(0)
    psi[np.ix_(np.abs(vv) < 50, np.abs(uu) < 50)] = 1.0
    fd.set_fluence(0, psi)
    fd.compute()
    dose = fd.dose(on="dose")[2, :, 2]
    depth = case.grid.axes()[1]
    inside = depth >= 0
    dref = float(dose[inside].max())
    _CACHE[key] = (dref,)
    if return_curve:
        return dref, (depth[inside], dose[inside])
    return dref


def _shift(case):
    # grid centred so that y spans [-20, 320] mm: surface at y=0 is the isocentre plane (SSD = SAD)
    g0 = case.grid
    g = Grid(g0.shape, g0.spacing, (g0.origin[0], -20.0, g0.origin[2]))
    ss = StructureSet(g)
    for s in case.structures.values():
        ss.add(Structure(s.name, s.mask, g, s.kind, s.prescription, allow_empty=True))
    y = g.axes()[1]
    rho = np.broadcast_to((y >= 0)[None, :, None], g.shape).astype(np.float32) * 0.999 + 0.001
    return Case(case.name, g, case.ct, ss, density=rho)


def mu_per_unit_fluence(machine: Machine | None = None) -> float:
    """MU that deliver unit fluence: ``reference_dose / 0.01 Gy`` (cached)."""
    return reference_dose(machine) / GY_PER_MU_REF


def fluence_to_mu(fluence, machine: Machine | None = None) -> np.ndarray:
    """Convert a fluence map (or beamlet weights) in engine units to MU."""
    return np.asarray(fluence, float) * mu_per_unit_fluence(machine)


def beam_mu(fluence_maps, machine: Machine | None = None) -> np.ndarray:
    """Open-field-equivalent MU per beam: ``max(psi_b) * MU per unit fluence`` (see module docstring)."""
    k = mu_per_unit_fluence(machine)
    return np.array([float(np.max(f)) * k if np.size(f) else 0.0 for f in fluence_maps])
