"""rtlab's widget library: views and controls over the library (needs the ``[lab]`` extra).

Widgets hold no algorithm: they cut slices, call :mod:`rtlab.metrics` and
:func:`skimage.measure` functions, and draw.

* :class:`SliceViewer` - CT, structure contours, dose colourwash and isodose lines on a canvas
  (anywidget); click a voxel, drag an isodose line.
* :class:`View3D` - structure surfaces, dose isosurfaces and beam axes (ipyvolume figure).
* :class:`DVHPlot` - DVHs that redraw on ``update(dose)``.

See ``docs/widgets.md``.
"""

from .dvh import DVHPlot
from .slice_viewer import ORIENTATIONS, SliceViewer, asset_path, slice_of, slice_to_index
from .view3d import Mesh, View3D, beam_source, isodose_mesh, structure_mesh

__all__ = [
    "SliceViewer",
    "View3D",
    "DVHPlot",
    "Mesh",
    "structure_mesh",
    "isodose_mesh",
    "beam_source",
    "slice_of",
    "slice_to_index",
    "asset_path",
    "ORIENTATIONS",
]
