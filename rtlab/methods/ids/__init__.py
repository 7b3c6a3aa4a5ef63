"""Interactive dose shaping: dose modification and recovery (paper 004, Ziegenhein et al. 2016).

The planner asks for a local dose feature (one voxel to a new dose, an isodose line dragged on
a slice, an isodose surface region moved in 3D); the *modification* module adds a fluence patch
to every beam that imposes it (Algorithm 1, eqs 1-3) and the *recovery* module then restores
the dose of the voxels the patch disturbed, furthest from the request first ("close in",
section 2.3), with the same patch rule.

Dose engine
-----------
The SVD pencil beam of :mod:`rtlab.dose` (paper 004 eqs 4-5) on fine fluence maps:
:class:`rtlab.dose.FluenceDose` (coordinate-space separable convolution per Gaussian on "sparse
control points", bilinear interpolation). A session's state is the engine's fluence maps and node
grids; a patch changes the node grids only near the patch (exact, by linearity), and the engine's
patch updates (:meth:`~rtlab.dose.FluenceDose.patch_update_many`) keep the *tracked* voxels
(targets and organs at risk) current; other voxels (a request's, the full dose cube) are read from
the node grids when asked (:meth:`~rtlab.dose.FluenceDose.evaluate`), and a candidate patch's
effect on a voxel from its own node boxes (:meth:`~rtlab.dose.FluenceDose.patch_effect`).

* :mod:`~rtlab.methods.ids.session` -- :class:`IDSSession` (requests, recovery, undo/redo), with the
  modification and recovery modules in :mod:`~rtlab.methods.ids.shaping` and its events in
  :mod:`~rtlab.methods.ids.events`;
* :mod:`~rtlab.methods.ids.patches` -- TPI maps (eq 1), rasterised isodose lines, moved isodose-surface
  regions (:func:`isodose_surface_request`);
* :mod:`~rtlab.methods.ids.figures` -- the paper's experiment and its isodose panels.

See ``docs/methods/ids.md`` for the definitions where the paper leaves a choice.
"""

from .figures import isodose_contours, plot_isodose_panels, reproduce_paper
from .patches import isodose_surface_request, rasterize_polyline, tpi_maps
from .events import IDSEvent, IDSResult
from .session import IDSSession

__all__ = ["IDSSession", "IDSEvent", "IDSResult", "tpi_maps", "isodose_contours", "reproduce_paper",
           "plot_isodose_panels", "rasterize_polyline", "isodose_surface_request"]
