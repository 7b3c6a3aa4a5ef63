"""rtlab's widget library: views and controls over the library (needs the ``[lab]`` extra).

Widgets hold no algorithm: they cut slices, call :mod:`rtlab.evaluate.metrics` and
:func:`skimage.measure` functions, and draw.

* :class:`SliceViewer` - CT, structure contours, dose colourwash and isodose lines on a canvas
  (anywidget); click a voxel, drag an isodose line.
* :class:`View3D` - structure surfaces, dose isosurfaces and beam axes (ipyvolume figure).
* :class:`DVHPlot` - DVHs that redraw on ``update(dose)``.

Panels (thin layers over library calls, imported on first use), all :class:`Panel` objects
(:mod:`rtlab.widgets.panel`: ``on(event, fn)``, one background-job runner, ``status``, ``out``,
and one meaning of ``wait()``):

* :class:`DoseEnginePanel`, :class:`OptimizerPanel`, :class:`ReviewPanel`,
  :class:`FalloffPanel`, :class:`ControlPointsPanel` and :class:`PlanLab`, which composes them
  with the viewer, the DVH and the score table;
* method panels: :class:`IDSPanel` (paper 004), :class:`SequencingPanel` and :class:`BeamAnglePanel` (paper 003),
  :class:`GKPanel` (patent 002), :class:`RegionPanel` (patent 000 C), :class:`BatchPanel`
  (patent 001);
* :class:`DicomPanel` - a planning system's RTDOSE + RTSTRUCT: dose, contours, DVH, score.

See ``docs/widgets.md``.
"""

from .._lazy import attach
from .dvh import DVHPlot
from .slice_viewer import ORIENTATIONS, SliceViewer, asset_path, slice_of, slice_to_index
from .view3d import Mesh, View3D, beam_source, enclosed_volume, isodose_mesh, structure_mesh

__all__ = [
    "SliceViewer",
    "View3D",
    "DVHPlot",
    "Mesh",
    "structure_mesh",
    "isodose_mesh",
    "enclosed_volume",
    "beam_source",
    "slice_of",
    "slice_to_index",
    "asset_path",
    "ORIENTATIONS",
]

#: Panel submodule -> the panel it defines; imported on first use so ``import rtlab.widgets`` stays quick.
PANELS = {
    "dose_panel": ["DoseEnginePanel"],
    "optimizer_panel": ["OptimizerPanel"],
    "review_panel": ["ReviewPanel"],
    "falloff_panel": ["FalloffPanel"],
    "control_points_panel": ["ControlPointsPanel"],
    "planlab": ["PlanLab"],
    "ids_panel": ["IDSPanel"],
    "sequencing_panel": ["SequencingPanel"],
    "beam_angle_panel": ["BeamAnglePanel"],
    "gk_panel": ["GKPanel"],
    "region_panel": ["RegionPanel"],
    "batch_panel": ["BatchPanel"],
    "dicom_panel": ["DicomPanel"],
    "panel": ["Panel"],
}

__getattr__, __dir__, _lazy_names = attach(__name__, PANELS, PANELS)
__all__ += [n for names in PANELS.values() for n in names]
