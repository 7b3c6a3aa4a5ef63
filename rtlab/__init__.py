"""rtlab: a Jupyter-native laboratory for radiotherapy treatment-planning algorithms.

Arrays are ``(z, y, x)``, lengths in mm, dose in Gy. The folders follow the data (see
``docs/architecture.md``): :mod:`rtlab.core` (the patient and the beams) -> :mod:`rtlab.dose`
-> :mod:`rtlab.optimize` -> :mod:`rtlab.planning` -> :mod:`rtlab.evaluate`, with
:mod:`rtlab.methods` (one module per source document), :mod:`rtlab.io`, :mod:`rtlab.phantoms`,
:mod:`rtlab.batch` and :mod:`rtlab.widgets` around them. Subpackages are imported on first use
(``rtlab.dose``, ``rtlab.widgets``, ...).
"""

from ._lazy import attach
from ._util import VERSION as __version__
from .core.geometry import Grid, Structure, StructureSet, resample, signed_distance

_SUBMODULES = [
    "core", "dose", "optimize", "planning", "evaluate", "methods", "io", "phantoms", "batch", "widgets", "cli",
    # moved modules, kept as aliases for one release
    "geometry", "case", "materials", "mlc", "plan", "metrics", "compare", "qa",
]

__getattr__, __dir__, _lazy_names = attach(__name__, _SUBMODULES)

__all__ = ["Grid", "Structure", "StructureSet", "signed_distance", "resample", "__version__"]
