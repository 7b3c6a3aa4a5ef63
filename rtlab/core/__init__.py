"""The ground floor: the patient as data, and the beams that look at it.

* :mod:`~rtlab.core.geometry` -- :class:`Grid` (``(z, y, x)``, mm), :class:`Structure`,
  :class:`StructureSet`, signed distances, resampling and its sparse matrix;
* :mod:`~rtlab.core.case` -- :class:`Case` (CT, density, structures, prescription, goals, beams);
* :mod:`~rtlab.core.materials` -- HU to relative electron density;
* :mod:`~rtlab.core.mlc` -- multileaf collimators as data;
* :mod:`~rtlab.core.selection` -- rows of a dose vector that belong to a structure;
* :mod:`~rtlab.core.beams` -- :class:`Beam` (IEC 61217 geometry), :class:`BixelGrid`, fitting
  bixels to targets.

Nothing here computes dose; everything above (dose, optimisation, planning, methods) builds on it.
"""

from .beams import Beam, BixelGrid, fit_bixel_grid, prepare_beams, rotation_matrix, target_union
from .selection import as_rows, rows_for
from .case import BeamSpec, Case, Goal
from .geometry import Grid, Structure, StructureSet, resample, signed_distance, trilinear_matrix
from .materials import density_to_hu, hu_to_density
from .mlc import MLC, get_mlc, list_mlcs

__all__ = [
    "Grid", "Structure", "StructureSet", "signed_distance", "resample", "trilinear_matrix",
    "Case", "Goal", "BeamSpec",
    "hu_to_density", "density_to_hu",
    "MLC", "get_mlc", "list_mlcs",
    "Beam", "BixelGrid", "rotation_matrix", "fit_bixel_grid", "prepare_beams", "target_union",
    "rows_for", "as_rows",
]
