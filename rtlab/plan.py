"""Moved: beams and bixel grids to :mod:`rtlab.core.beams`, :class:`Plan` to :mod:`rtlab.dose.plan`.

This module re-exports them for one release (removed in 0.3).
"""

from .core.beams import Beam, BixelGrid, fit_bixel_grid, prepare_beams, rotation_matrix
from .dose.plan import Plan

__all__ = ["Beam", "BixelGrid", "Plan", "rotation_matrix", "fit_bixel_grid", "prepare_beams"]
