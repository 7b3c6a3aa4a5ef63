"""The planning case: image, structures, prescription, goals and suggested beams.

A :class:`Case` is what a phantom generator (:mod:`rtlab.phantoms`) or a loader
(:mod:`rtlab.io`) returns and what the dose engine, optimisers and the comparison harness
consume.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
import numpy as np

from .geometry import Grid, StructureSet
from .materials import hu_to_density
from .validate import check_density, check_hu

__all__ = ["Case", "Goal", "BeamSpec"]

_COMPARATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Goal:
    """One planning goal, as data.

    Parameters
    ----------
    structure : str
        Structure name.
    metric : str
        A metric understood by :func:`rtlab.evaluate.metrics.evaluate` : ``"D95"`` (dose in Gy received
        by 95 % of the volume), ``"D0.03cc"`` (by 0.03 cc), ``"Dmean"``, ``"Dmax"``, ``"Dmin"``,
        ``"V20Gy"`` (percent of volume receiving >= 20 Gy), ``"V20Gy_cc"`` (cc).
    comparator : {'>=', '<=', '>', '<'}
    value : float
        Threshold in the metric's unit (Gy for D-metrics, % or cc for V-metrics).
    """

    structure: str
    metric: str
    comparator: str
    value: float

    def __post_init__(self):
        if self.comparator not in _COMPARATORS:
            raise ValueError(f"comparator must be one of {list(_COMPARATORS)}, got {self.comparator!r}")

    def passed(self, measured: float) -> bool:
        """True if ``measured`` satisfies the goal."""
        return bool(_COMPARATORS[self.comparator](measured, self.value))

    def __str__(self) -> str:
        return f"{self.structure} {self.metric} {self.comparator} {self.value:g}"


@dataclass(frozen=True)
class BeamSpec:
    """A suggested beam direction.

    Angles follow IEC 61217 for a head-first supine patient, with world axes as in DICOM
    patient coordinates (x to the patient's left, y posterior, z superior): gantry 0 deg
    irradiates from anterior (source at -y), gantry 90 deg from the patient's left (source at
    +x); the couch rotates about the vertical (y) axis.

    Parameters
    ----------
    gantry : float
        Gantry angle in degrees.
    couch : float
        Couch angle in degrees.
    isocenter : tuple of float, optional
        ``(z, y, x)`` in mm; ``None`` means the case's default (:meth:`Case.isocenter`).
    """

    gantry: float
    couch: float = 0.0
    isocenter: tuple[float, float, float] | None = None


@dataclass
class Case:
    """A planning case.

    Parameters
    ----------
    name : str
        Short identifier (e.g. ``"tg119_cshape_easy"``).
    grid : Grid
        The CT grid.
    ct : ndarray of float32, shape ``grid.shape``
        CT numbers in HU, finite and within :data:`rtlab.core.validate.HU_RANGE`.
    structures : StructureSet
        Delineated structures on ``grid``.
    prescription : float, optional
        Primary prescription in Gy (the first target's, by default).
    goals : list of Goal
        Planning goals as data.
    beams : list of BeamSpec
        Suggested beam arrangement.
    density : ndarray of float32, optional
        Relative electron density (finite, 0 .. :data:`rtlab.core.validate.MAX_DENSITY`); derived
        from ``ct`` with the default table if omitted.
    description : str
        One paragraph on what the case is and where its geometry is approximate.
    """

    name: str
    grid: Grid
    ct: np.ndarray
    structures: StructureSet
    prescription: float | None = None
    goals: list[Goal] = field(default_factory=list)
    beams: list[BeamSpec] = field(default_factory=list)
    density: np.ndarray | None = None
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ct = np.asarray(check_hu("ct", self.grid.check_array("ct", self.ct)), dtype=np.float32)
        self.grid.require_same(self.structures.grid, "structures")
        if self.density is None:
            self.density = hu_to_density(self.ct)
        else:
            self.density = np.asarray(check_density("density", self.grid.check_array("density", self.density)),
                                      dtype=np.float32)
        if self.prescription is None:
            t = self.structures.targets
            if t and t[0].prescription:
                self.prescription = t[0].prescription
        names = set(self.structures)
        for g in self.goals:
            if g.structure not in names:
                raise ValueError(f"goal {g} names structure {g.structure!r}, which is not in the case ({sorted(names)})")

    def __repr__(self) -> str:
        rx = f", rx={self.prescription:g} Gy" if self.prescription else ""
        return f"Case({self.name!r}, grid={self.grid.shape} @ {self.grid.spacing} mm, {list(self.structures)}{rx})"

    @property
    def targets(self):
        return self.structures.targets

    def gantry_angles(self) -> list[float]:
        return [b.gantry for b in self.beams]

    def isocenter(self) -> np.ndarray:
        """Default isocentre ``(z, y, x)`` mm: the first beam's, else the targets' centre of mass.

        The centre of mass is that of the union of all target voxels (each voxel counted once),
        matRad's default (``matRad_getIsoCenter``); for one target it is its centroid. A case
        without targets gets the grid centre.
        """
        for b in self.beams:
            if b.isocenter is not None:
                return np.asarray(b.isocenter, float)
        t = [s for s in self.structures.targets if s.mask.any()]
        if t:
            if len(t) == 1:
                return t[0].centroid()
            m = np.zeros(self.grid.shape, bool)
            for s in t:
                m |= s.mask
            return self.grid.index_to_world(np.argwhere(m).mean(axis=0))
        return self.grid.center

    def summary(self) -> str:
        """A multi-line text summary (structures with volumes, prescription, goals)."""
        lines = [repr(self)]
        for s in self.structures.values():
            rx = f"  rx {s.prescription:g} Gy" if s.prescription else ""
            lines.append(f"  {s.name:<16} {s.kind:<6} {s.volume_cc:9.2f} cc{rx}")
        if self.goals:
            lines.append("  goals: " + "; ".join(str(g) for g in self.goals))
        return "\n".join(lines)
