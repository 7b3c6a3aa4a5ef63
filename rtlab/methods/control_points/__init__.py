"""Dose control points near the target boundary (patent 000, paragraphs 154-197, FIGs 11-18).

The seed finds spots where the target boundary is strongly curved (convex corners, concave
notches) and gives those voxels their own dose targets, because a plain conformity objective
tends to round such spots off. The steps are:

1. **Sampling points** (para. 159-164, FIG. 12): grid points in a band around the target
   boundary, inside up to ``r_in`` mm and outside up to ``r_out`` mm.
2. **Filters** (para. 167-175, FIGs 13, 17, 18): a ring (two concentric closed boundaries, inner
   radius ``a`` < outer radius ``b``; circles in 2D, spherical shells in 3D) or a single closed
   boundary (disk/ball, ``a = 0``), centred on the sampling point. Points inside the target and
   points outside may use filters of different sizes.
3. **Contour parameters** (para. 185-187, 193-195) of the piece of target boundary lying in
   the filter region ``a <= |x - c| <= b``.
4. **Decision** (para. 188-192, 196): a point is a control point when a parameter exceeds its
   threshold (absolute, or relative to the chord of the boundary piece, x1.0 ... x1.3). A
   point whose filter region holds no boundary is too far away and is never a control point.
5. **Dose targets** (para. 179-181): control points inside the target get "dose >= D1",
   those outside get "dose <= D2" (:func:`control_point_targets`, :class:`ControlPointTerm`).

Geometry used here (the seed leaves these choices open; they are fixed as follows)
-----------------------------------------------------------------------------------
All lengths are in mm and honour anisotropic voxel spacing. Filters are centred on voxel
centres. Two modes: ``"3d"`` (spheres/shells on a 3D mask) and ``"2d"`` (circles/rings on a
2D mask, or on every axial slice of a 3D mask separately, with in-plane spacing ``(dy, dx)``).

* **Sampling band.** With ``s = rtlab.core.geometry.signed_distance(mask, spacing)`` (centre-to-centre
  distance to the nearest voxel of the other class; voxels next to the boundary have
  ``|s| = spacing``), inside points are ``mask & (-s <= r_in)``, outside points are
  ``~mask & (s <= r_out)``. In ``"2d"`` mode the distance is computed in-plane per slice.
* **Smoothed boundary.** A binary mask has a staircase boundary whose length exceeds that of the
  surface it samples (up to 8 % for marching squares on a slanted straight line), which would
  make flat-but-slanted edges look curved. The boundary is therefore the 0.5 iso-line (2D,
  marching squares, ``skimage.measure.find_contours``) or iso-surface (3D, marching cubes) of
  the mask smoothed by a Gaussian of ``smooth_mm`` (default: sigma of one voxel along each
  axis, in-plane only in ``"2d"`` mode; pass 0 to use the raw mask). Corners are rounded on that
  scale only; a straight boundary stays straight (its 0.5 iso-line stays midway between voxel
  centres).
* **length** (2D, mm) / **area** (3D, mm^2): measure of the boundary inside the filter region.
  2D: exact clipping of every contour segment against both circles. 3D: each marching-cubes
  triangle is integrated with a 9-point sub-triangle rule (triangles fully inside the region
  count whole).
* **enclosed** (mm^2 in 2D, mm^3 in 3D): target measure inside the filter region,
  ``sum_{v in target} |voxel_v ∩ region|`` over the voxels of the raw mask, the voxel/region
  overlap from 5 sub-samples per axis (a precomputed stencil, since filters sit on voxel
  centres). The raw mask is used here because its voxel-edge boundary is unbiased on average,
  whereas Gaussian blurring moves target measure across the curved edge of the filter.
  ``enclosed_fraction = enclosed / |region|``.
* **count**: number of *boundary grid points* inside the region: target voxels of the raw mask
  with at least one 6-connected (3D) / 4-connected (2D, in-plane) neighbour outside the target,
  whose centre lies in ``a <= r <= b``.
* **distance** ``p`` (mm): distance from the filter centre to the nearest boundary point
  (2D: exact to the contour segments; 3D: to the triangle quadrature points).
* **reference** (the chord, para. 196): 2D: the boundary inside the outer circle splits into
  pieces; each piece enters the outer circle at ``P`` and leaves at ``Q``; the reference is the
  length of the straight chords ``PQ`` inside the filter region, summed over pieces (a piece that
  is a closed loop inside the disk has no chord). For a straight boundary the piece *is* its
  chord, so ``length == reference``. 3D: the area of a flat plane at the same distance ``p``
  inside the region, ``pi (b^2 - max(p, a)^2)`` (``pi (b^2 - a^2)`` for a plane cutting the
  inner ball, ``pi b^2`` for a plane through the centre of a ball filter).
* **ratio** = ``max(length / reference, reference / length)`` >= 1: how far the boundary piece
  departs from a flat one. It is symmetric because a ring hides the middle of a bent piece
  (a 90-degree corner at the centre of a ring with ``a = b/2`` gives ``length/chord = 0.71``).
  For a circular arc of turning angle ``theta`` in a disk filter, ``ratio = theta / (2 sin(theta/2))``.
* **bulge** (the curvature parameter, dimensionless, signed): ``f_flat(p) - enclosed_fraction``,
  where ``f_flat(p)`` is the fraction of the region on the target side of a flat boundary at
  distance ``p`` (circular-segment / spherical-cap formulas). A flat boundary gives 0, a convex
  spot (target bulging outwards) > 0, a concave spot < 0, for inside and outside points alike.
  For a disk filter centred on a boundary of small curvature ``kappa``:
  ``bulge ~ kappa b / (3 pi)`` (2D) and ``~ 3 kappa b / 16`` (3D, sphere of radius 1/kappa).

Decision rule (``Thresholds``): a sampling point with boundary in its filter region
(``length > 0``) is a control point if **any** enabled test passes: ``ratio > thresholds.ratio``
(the chord-relative test, x1.0 ... x1.3 of the chord), ``|bulge| > thresholds.bulge``,
``length > thresholds.length``, ``enclosed > thresholds.enclosed``, ``count > thresholds.count``.

Parallelism (para. 175): the per-point filter work runs in numba kernels with
``parallel=True`` over sampling points (inside and outside filters in one pass); every kernel
has a pure-numpy reference (``backend="numpy"``) that the tests compare against.

Modules: :mod:`~.filters` (filters, thresholds, results), :mod:`~.kernels` (the per-point work),
:mod:`~.find` (:func:`sampling_points`, :func:`find_control_points`), :mod:`~.terms` (dose
targets). The dose-grid spacing of a plan does not enter here: the search runs on the target mask.
"""

from .filters import ControlPoints, RingFilter, Thresholds
from .find import find_control_points, sampling_points
from .terms import ControlPointTerm, control_point_targets

__all__ = [
    "RingFilter",
    "Thresholds",
    "ControlPoints",
    "sampling_points",
    "find_control_points",
    "control_point_targets",
    "ControlPointTerm",
]
