"""rtlab: a Jupyter-native laboratory for radiotherapy treatment-planning algorithms.

Arrays are ``(z, y, x)``, lengths in mm, dose in Gy. See ``docs/architecture.md``.
"""

from .geometry import Grid, Structure, StructureSet, signed_distance, resample

__version__ = "0.1.0"

__all__ = ["Grid", "Structure", "StructureSet", "signed_distance", "resample", "__version__"]
