"""A plan: a case, beams and beamlet weights, with its dose from the influence matrix.

:class:`Plan` is the smallest object that holds a deliverable-looking plan and gives its dose
(Gy, CT grid) and MU; optimisers return beamlet weights, which a ``Plan`` turns into a dose
through :func:`rtlab.dose.build_influence` (built on first use, cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..core.beams import Beam, prepare_beams
from .influence import build_influence
from .machine import generic_6mv
from .mu import beam_mu

__all__ = ["Plan"]


@dataclass
class Plan:
    """A photon plan: a case, a machine, beams and beamlet weights, with a cached dose.

    Parameters
    ----------
    case : rtlab.core.case.Case
    beams : sequence of Beam
        Beams; those without bixels get a grid fitted to the case's targets.
    machine : Machine, optional
        Default :func:`rtlab.dose.generic_6mv`.
    weights : array_like, optional
        Beamlet weights (unit fluence per bixel), concatenated over beams; default ones.
    dose_grid_mm : float or Grid, optional
        Dose-grid spacing (mm) passed to :func:`rtlab.dose.build_influence`; default the CT grid.
    cutoff_mm : float, optional
        Lateral cut-off passed to :func:`rtlab.dose.build_influence`.
    """

    case: object
    beams: Sequence[Beam]
    machine: object = None
    weights: np.ndarray | None = None
    dose_grid_mm: object = None
    cutoff_mm: float | None = None
    _influence: object = field(default=None, init=False, repr=False)
    _dose_cache: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.machine is None:
            self.machine = generic_6mv()
        self.beams = prepare_beams(self.case, self.beams)
        n = sum(b.bixels.n for b in self.beams)
        if self.weights is None:
            self.weights = np.ones(n)
        self.set_weights(self.weights)

    @property
    def n_beamlets(self) -> int:
        return sum(b.bixels.n for b in self.beams)

    def set_weights(self, weights) -> None:
        """Replace the beamlet weights (checked: finite, non-negative, right length)."""
        w = np.asarray(weights, float).ravel()
        if w.size != self.n_beamlets:
            raise ValueError(f"weights has {w.size} entries, the plan has {self.n_beamlets} beamlets")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
        self.weights = w
        self._dose_cache = None

    def fluence_maps(self) -> list[np.ndarray]:
        """Per-beam 2D fluence maps (rows v, columns u) from the weights."""
        out, i = [], 0
        for b in self.beams:
            out.append(b.bixels.to_map(self.weights[i : i + b.bixels.n]))
            i += b.bixels.n
        return out

    @property
    def influence(self):
        """The :class:`rtlab.dose.InfluenceMatrix` (built on first use)."""
        if self._influence is None:
            kw = {} if self.cutoff_mm is None else {"cutoff_mm": self.cutoff_mm}
            self._influence = build_influence(self.case, self.beams, self.machine, dose_grid_mm=self.dose_grid_mm,
                                              progress=False, **kw)
        return self._influence

    def dose(self) -> np.ndarray:
        """Dose on the CT grid (Gy, ``(z, y, x)``), cached until the weights change."""
        if self._dose_cache is None:
            self._dose_cache = (self.influence.dose(self.weights, on="ct"),)
        return self._dose_cache[0]

    def mu(self) -> np.ndarray:
        """Open-field-equivalent MU per beam (see :func:`rtlab.dose.mu.beam_mu`)."""
        return beam_mu(self.fluence_maps(), self.machine)
