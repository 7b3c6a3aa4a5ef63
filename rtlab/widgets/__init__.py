"""rtlab's widget library: views and controls over the library (needs the ``[lab]`` extra).

Widgets hold no algorithm: they cut slices, call :mod:`rtlab.evaluate.metrics` and
:func:`skimage.measure` functions, and draw.

* :class:`SliceViewer` - CT, structure contours, dose colourwash and isodose lines on a canvas
  (anywidget); click a voxel, drag an isodose line.
* :class:`View3D` - structure surfaces, dose isosurfaces and beam axes (ipyvolume figure).
* :class:`DVHPlot` - DVHs that redraw on ``update(dose)``.

Panels (thin layers over library calls, imported on first use):

* :class:`DoseEnginePanel`, :class:`OptimizerPanel`, :class:`ReviewPanel`,
  :class:`FalloffPanel`, :class:`ControlPointsPanel` and :class:`PlanLab`, which composes them
  with the viewer, the DVH and the score table;
* method panels: :class:`IDSPanel` (paper 004), :class:`SequencingPanel` and :class:`BeamAnglePanel` (paper 003),
  :class:`GKPanel` (patent 002), :class:`RegionPanel` (patent 000 C), :class:`BatchPanel`
  (patent 001).

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

#: Panel name -> submodule; loaded lazily so ``import rtlab.widgets`` stays quick.
_LAZY = {
    "DoseEnginePanel": "dose_panel",
    "OptimizerPanel": "optimizer_panel",
    "ReviewPanel": "review_panel",
    "FalloffPanel": "falloff_panel",
    "ControlPointsPanel": "control_points_panel",
    "PlanLab": "planlab",
    "IDSPanel": "ids_panel",
    "SequencingPanel": "sequencing_panel",
    "BeamAnglePanel": "beam_angle_panel",
    "GKPanel": "gk_panel",
    "RegionPanel": "region_panel",
    "BatchPanel": "batch_panel",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
