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

* **Sampling band.** With ``s = rtlab.geometry.signed_distance(mask, spacing)`` (centre-to-centre
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np
from scipy import ndimage

from .._util import check_finite, check_positive
from ..core.geometry import Structure, signed_distance

__all__ = [
    "RingFilter",
    "Thresholds",
    "ControlPoints",
    "sampling_points",
    "find_control_points",
    "control_point_targets",
    "ControlPointTerm",
]

_N_SUB = 5  # sub-samples per axis for the voxel/region overlap of the enclosed measure


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RingFilter:
    """A filter of two concentric closed boundaries (patent 000, para. 167, FIG. 13).

    Parameters
    ----------
    outer_mm : float
        Outer radius ``b`` in mm (circle in 2D, sphere in 3D); > 0.
    inner_mm : float, optional
        Inner radius ``a`` in mm, ``0 <= a < b``. ``a = 0`` is the single-boundary filter
        (disk/ball, FIGs 16 and 18).
    """

    outer_mm: float
    inner_mm: float = 0.0

    def __post_init__(self):
        for name, v in (("outer_mm", self.outer_mm), ("inner_mm", self.inner_mm)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"RingFilter.{name} must be a number in mm, got {v!r}")
            if not np.isfinite(v):
                raise ValueError(f"RingFilter.{name} must be finite, got {v!r}")
        if self.outer_mm <= 0:
            raise ValueError(f"RingFilter.outer_mm (b) must be positive, got {self.outer_mm!r} mm")
        if self.inner_mm < 0:
            raise ValueError(f"RingFilter.inner_mm (a) must be >= 0 (0 = disk/ball filter), got {self.inner_mm!r} mm")
        if self.inner_mm >= self.outer_mm:
            raise ValueError(
                f"RingFilter needs inner_mm (a) < outer_mm (b), got a={self.inner_mm!r}, b={self.outer_mm!r} mm; "
                "swap them or use inner_mm=0 for a single-boundary filter"
            )
        object.__setattr__(self, "outer_mm", float(self.outer_mm))
        object.__setattr__(self, "inner_mm", float(self.inner_mm))

    def region_measure(self, ndim: int) -> float:
        """Area (mm^2, 2D) or volume (mm^3, 3D) of the region ``a <= r <= b``."""
        a, b = self.inner_mm, self.outer_mm
        return math.pi * (b * b - a * a) if ndim == 2 else 4.0 / 3.0 * math.pi * (b**3 - a**3)


@dataclass(frozen=True)
class Thresholds:
    """Control-point tests (patent 000, para. 190-192, 196); ``None`` disables a test.

    A sampling point whose filter region holds boundary is a control point if any enabled
    test passes (strict ``>``).

    Parameters
    ----------
    ratio : float or None
        Chord-relative threshold on ``ratio`` (>= 1.0; the seed's x1.0, 1.1, 1.2, 1.3). Values
        below 1.1 flag discretisation noise on flat boundaries.
    bulge : float or None
        Threshold on ``|bulge|`` (dimensionless curvature parameter), e.g. 0.06.
    length : float or None
        Absolute threshold on the boundary length (mm, 2D) or area (mm^2, 3D) in the region.
    enclosed : float or None
        Absolute threshold on the enclosed target area (mm^2) / volume (mm^3) in the region.
    count : float or None
        Threshold on the number of boundary grid points in the region.
    """

    ratio: float | None = 1.1
    bulge: float | None = 0.06
    length: float | None = None
    enclosed: float | None = None
    count: float | None = None

    def __post_init__(self):
        vals = {k: getattr(self, k) for k in ("ratio", "bulge", "length", "enclosed", "count")}
        if all(v is None for v in vals.values()):
            raise ValueError("Thresholds: enable at least one test (ratio, bulge, length, enclosed or count)")
        for k, v in vals.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise TypeError(f"Thresholds.{k} must be a finite number or None, got {v!r}")
            if v < 0:
                raise ValueError(f"Thresholds.{k} must be >= 0, got {v!r}")
        if self.ratio is not None and self.ratio < 1.0:
            raise ValueError(
                f"Thresholds.ratio must be >= 1.0 (ratio is always >= 1; the seed uses 1.0-1.3), got {self.ratio!r}"
            )


@dataclass
class ControlPoints:
    """Sampling points, their contour parameters and the control-point decision.

    All per-point arrays have length ``n`` (number of sampling points). Indices are into the
    mask passed to :func:`find_control_points` (``(z, y, x)`` for 3D, ``(y, x)`` for 2D).

    Attributes
    ----------
    index : ndarray of int, shape (n, ndim)
    inside : ndarray of bool — sampling point lies in the target.
    length : boundary length (mm, 2D) or area (mm^2, 3D) inside the filter region.
    reference : chord reference (mm, 2D) or flat-plane reference area (mm^2, 3D).
    ratio : ``max(length/reference, reference/length)`` (nan where there is no boundary).
    enclosed : target area (mm^2) / volume (mm^3) inside the filter region.
    enclosed_fraction : ``enclosed`` divided by the region's measure.
    count : number of boundary grid points inside the region.
    distance : distance (mm) from the point to the nearest boundary point (inf if > b).
    bulge : signed curvature parameter (> 0 convex, < 0 concave).
    has_boundary : the filter region holds boundary.
    is_control : the point is a dose control point.
    """

    index: np.ndarray
    inside: np.ndarray
    length: np.ndarray
    reference: np.ndarray
    ratio: np.ndarray
    enclosed: np.ndarray
    enclosed_fraction: np.ndarray
    count: np.ndarray
    distance: np.ndarray
    bulge: np.ndarray
    has_boundary: np.ndarray
    is_control: np.ndarray
    shape: tuple
    spacing: tuple
    mode: str
    inside_filter: RingFilter
    outside_filter: RingFilter
    thresholds: Thresholds
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __repr__(self) -> str:
        return (
            f"ControlPoints(mode={self.mode!r}, {len(self)} sampling points, "
            f"{int(self.is_control.sum())} control points "
            f"({int((self.is_control & self.inside).sum())} inside, {int((self.is_control & ~self.inside).sum())} outside))"
        )

    @property
    def n_control(self) -> int:
        return int(self.is_control.sum())

    def flat_index(self, control_only: bool = True) -> np.ndarray:
        """Flat (C-order) indices into an array of ``shape`` (e.g. a raveled dose grid)."""
        idx = self.index[self.is_control] if control_only else self.index
        return np.ravel_multi_index(tuple(idx.T), self.shape).astype(np.int64)

    def as_mask(self, which: str = "control") -> np.ndarray:
        """Boolean map of ``shape``: ``which`` in {'control', 'sampling', 'inside', 'outside'}."""
        sel = {
            "control": self.is_control,
            "sampling": np.ones(len(self), bool),
            "inside": self.is_control & self.inside,
            "outside": self.is_control & ~self.inside,
        }
        if which not in sel:
            raise ValueError(f"which must be one of {sorted(sel)}, got {which!r}")
        m = np.zeros(self.shape, bool)
        idx = self.index[sel[which]]
        m[tuple(idx.T)] = True
        return m


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------
def _cap(p: np.ndarray, r: float, ndim: int) -> np.ndarray:
    """Measure of the part of a disk/ball of radius ``r`` beyond a plane at distance ``p >= 0``.

    2D: circular segment ``r^2 acos(p/r) - p sqrt(r^2 - p^2)``; 3D: spherical cap
    ``pi h^2 (3r - h) / 3`` with ``h = r - p``. Zero for ``p >= r``.
    """
    p = np.minimum(np.asarray(p, float), r)
    if r <= 0:
        return np.zeros_like(p)
    if ndim == 2:
        return r * r * np.arccos(p / r) - p * np.sqrt(np.maximum(r * r - p * p, 0.0))
    h = r - p
    return np.pi * h * h * (3 * r - h) / 3.0


def _flat_fraction(p, inside, flt: RingFilter, ndim: int) -> np.ndarray:
    """Fraction of the filter region on the target side of a flat boundary at distance ``p``."""
    beyond = (_cap(p, flt.outer_mm, ndim) - _cap(p, flt.inner_mm, ndim)) / flt.region_measure(ndim)
    return np.where(inside, 1.0 - beyond, beyond)


def _flat_area_3d(p, flt: RingFilter) -> np.ndarray:
    """Area (mm^2) of a plane at distance ``p`` from the centre inside the shell ``a <= r <= b``."""
    a, b = flt.inner_mm, flt.outer_mm
    q = np.maximum(np.asarray(p, float), a)
    return np.where(q < b, np.pi * (b * b - q * q), 0.0)


# ---------------------------------------------------------------------------------------------
# numba kernels and their numpy references
# ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, parallel=True)
def _stencil_sum_kernel(values, points, which, offsets, weights, out):  # pragma: no cover - jit
    """out[n] = sum_m weights[which[n], m] * values[points[n] + offsets[which[n], m]]."""
    for n in numba.prange(points.shape[0]):
        f = which[n]
        acc = 0.0
        for m in range(offsets.shape[1]):
            w = weights[f, m]
            if w != 0.0:
                acc += w * values[points[n, 0] + offsets[f, m, 0], points[n, 1] + offsets[f, m, 1],
                                  points[n, 2] + offsets[f, m, 2]]
        out[n] = acc


def _stencil_sum_numpy(values, points, which, offsets, weights):
    """Reference for :func:`_stencil_sum_kernel` (fancy indexing)."""
    out = np.zeros(points.shape[0])
    for f in np.unique(which):
        sel = np.nonzero(which == f)[0]
        idx = points[sel][:, None, :] + offsets[f][None, :, :]
        out[sel] = (values[idx[..., 0], idx[..., 1], idx[..., 2]] * weights[f][None, :]).sum(axis=1)
    return out


@numba.njit(cache=True, inline="always")
def _disk_interval(ux, uy, dx, dy, cx, cy, r):  # pragma: no cover - jit
    """Parameters (t0, t1) where segment u + t d is inside the circle (c, r); t0 > t1 if none."""
    wx = ux - cx
    wy = uy - cy
    dd = dx * dx + dy * dy
    dw = dx * wx + dy * wy
    ww = wx * wx + wy * wy
    disc = dw * dw - dd * (ww - r * r)
    if r <= 0.0 or dd <= 0.0 or disc <= 0.0:
        return 1.0, 0.0
    s = math.sqrt(disc)
    return (-dw - s) / dd, (-dw + s) / dd


@numba.njit(cache=True, inline="always")
def _ring_len(ux, uy, vx, vy, cx, cy, a, b):  # pragma: no cover - jit
    """Length of segment u-v inside the ring a <= |x - c| <= b."""
    dx = vx - ux
    dy = vy - uy
    L = math.sqrt(dx * dx + dy * dy)
    t0, t1 = _disk_interval(ux, uy, dx, dy, cx, cy, b)
    lb = max(0.0, min(t1, 1.0) - max(t0, 0.0))
    la = 0.0
    if a > 0.0:
        s0, s1 = _disk_interval(ux, uy, dx, dy, cx, cy, a)
        la = max(0.0, min(s1, 1.0) - max(s0, 0.0))
    return L * max(lb - la, 0.0)


@numba.njit(cache=True, parallel=True)
def _contour_kernel(points, pslice, radii, verts, cont_ptr, slice_ptr, out):  # pragma: no cover - jit
    """Per sampling point: boundary length in the ring, chord reference, distance to boundary.

    ``points`` (n, 2) mm; ``pslice`` slice id per point; ``radii`` (n, 2) = (a, b);
    ``verts`` (V, 2) mm, contour c holds vertices ``cont_ptr[c]:cont_ptr[c+1]`` (closed, last
    vertex == first); slice s holds contours ``slice_ptr[s]:slice_ptr[s+1]``.
    out[:, 0] length, out[:, 1] reference, out[:, 2] distance.
    """
    for n in numba.prange(points.shape[0]):
        cy = points[n, 0]
        cx = points[n, 1]
        a = radii[n, 0]
        b = radii[n, 1]
        b2 = b * b
        s = pslice[n]
        length = 0.0
        ref = 0.0
        pmin = np.inf
        for c in range(slice_ptr[s], slice_ptr[s + 1]):
            v0 = cont_ptr[c]
            nseg = cont_ptr[c + 1] - v0 - 1
            if nseg < 1:
                continue
            # start the walk at a vertex outside the outer circle (none: loop inside the disk)
            start = -1
            for k in range(nseg):
                ddy = verts[v0 + k, 0] - cy
                ddx = verts[v0 + k, 1] - cx
                if ddy * ddy + ddx * ddx >= b2:
                    start = k
                    break
            state = False
            py = 0.0
            px = 0.0
            for kk in range(nseg):
                k = (kk + max(start, 0)) % nseg
                uy = verts[v0 + k, 0]
                ux = verts[v0 + k, 1]
                vy = verts[v0 + k + 1, 0]
                vx = verts[v0 + k + 1, 1]
                # distance to the segment
                dy = vy - uy
                dx = vx - ux
                dd = dx * dx + dy * dy
                t = 0.0
                if dd > 0.0:
                    t = ((cy - uy) * dy + (cx - ux) * dx) / dd
                    t = min(1.0, max(0.0, t))
                qy = uy + t * dy - cy
                qx = ux + t * dx - cx
                dist = math.sqrt(qy * qy + qx * qx)
                if dist < pmin:
                    pmin = dist
                if dist >= b:
                    continue  # wholly outside the outer circle: no length, no crossing
                length += _ring_len(uy, ux, vy, vx, cy, cx, a, b)
                if start < 0:
                    continue
                t0, t1 = _disk_interval(uy, ux, dy, dx, cy, cx, b)
                if (not state) and t0 >= 0.0 and t0 < 1.0:
                    state = True
                    py = uy + t0 * dy
                    px = ux + t0 * dx
                if state and t1 >= 0.0 and t1 < 1.0:
                    state = False
                    qy2 = uy + t1 * dy
                    qx2 = ux + t1 * dx
                    ref += _ring_len(py, px, qy2, qx2, cy, cx, a, b)
        out[n, 0] = length
        out[n, 1] = ref
        out[n, 2] = pmin


def _contour_numpy(points, pslice, radii, verts, cont_ptr, slice_ptr):
    """Reference for :func:`_contour_kernel`: vectorised over segments, events paired in order."""
    out = np.zeros((points.shape[0], 3))
    for n in range(points.shape[0]):
        c = points[n]
        a, b = radii[n]
        s = pslice[n]
        length = ref = 0.0
        pmin = np.inf
        for ci in range(slice_ptr[s], slice_ptr[s + 1]):
            V = verts[cont_ptr[ci]:cont_ptr[ci + 1]]
            if len(V) < 2:
                continue
            U, W = V[:-1], V[1:]
            D = W - U
            dd = (D * D).sum(1)
            t = np.clip(np.einsum("ij,ij->i", c - U, D) / np.where(dd > 0, dd, 1.0), 0, 1)
            dist = np.linalg.norm(U + t[:, None] * D - c, axis=1)
            pmin = min(pmin, dist.min())

            def interval(P, Q, r):
                Dl = Q - P
                d2 = (Dl * Dl).sum(-1)
                w = P - c
                dw = (Dl * w).sum(-1)
                disc = dw * dw - d2 * ((w * w).sum(-1) - r * r)
                ok = (disc > 0) & (d2 > 0) & (r > 0)
                sq = np.sqrt(np.where(ok, disc, 0.0))
                d2s = np.where(d2 > 0, d2, 1.0)
                return np.where(ok, (-dw - sq) / d2s, 1.0), np.where(ok, (-dw + sq) / d2s, 0.0)

            def ring_length(P, Q):
                t0, t1 = interval(P, Q, b)
                s0, s1 = interval(P, Q, a)
                lb = np.clip(np.minimum(t1, 1) - np.maximum(t0, 0), 0, None)
                la = np.clip(np.minimum(s1, 1) - np.maximum(s0, 0), 0, None)
                return np.linalg.norm(Q - P, axis=-1) * np.clip(lb - la, 0, None)

            near = dist < b
            length += ring_length(U[near], W[near]).sum()
            outside = np.nonzero(((U - c) ** 2).sum(1) >= b * b)[0]
            if outside.size == 0:
                continue  # a closed loop inside the outer circle: no chord
            order = np.roll(np.arange(len(U)), -outside[0])
            t0, t1 = interval(U[order], W[order], b)
            events = []  # (position along walk, kind, point)
            for j, (k, e0, e1) in enumerate(zip(order, t0, t1)):
                if not near[k]:
                    continue
                if 0 <= e0 < 1:
                    events.append((j + e0, +1, U[k] + e0 * D[k]))
                if 0 <= e1 < 1:
                    events.append((j + e1, -1, U[k] + e1 * D[k]))
            events.sort(key=lambda e: e[0])
            P = None
            for _, kind, pt in events:
                if kind > 0 and P is None:
                    P = pt
                elif kind < 0 and P is not None:
                    ref += float(ring_length(P[None], pt[None])[0])
                    P = None
        out[n] = (length, ref, pmin)
    return out



@numba.njit(cache=True, inline="always")
def _tri_dist(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):  # pragma: no cover - jit
    """Exact distance from point p to triangle abc (closest-point case analysis)."""
    abx, aby, abz = bx - ax, by - ay, bz - az
    acx, acy, acz = cx - ax, cy - ay, cz - az
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:
        qx, qy, qz = ax, ay, az
    else:
        bpx, bpy, bpz = px - bx, py - by, pz - bz
        d3 = abx * bpx + aby * bpy + abz * bpz
        d4 = acx * bpx + acy * bpy + acz * bpz
        cpx, cpy, cpz = px - cx, py - cy, pz - cz
        d5 = abx * cpx + aby * cpy + abz * cpz
        d6 = acx * cpx + acy * cpy + acz * cpz
        vc = d1 * d4 - d3 * d2
        vb = d5 * d2 - d1 * d6
        va = d3 * d6 - d5 * d4
        if d3 >= 0.0 and d4 <= d3:
            qx, qy, qz = bx, by, bz
        elif d6 >= 0.0 and d5 <= d6:
            qx, qy, qz = cx, cy, cz
        elif vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
            v = d1 / (d1 - d3)
            qx, qy, qz = ax + v * abx, ay + v * aby, az + v * abz
        elif vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
            w = d2 / (d2 - d6)
            qx, qy, qz = ax + w * acx, ay + w * acy, az + w * acz
        elif va <= 0.0 and (d4 - d3) >= 0.0 and (d5 - d6) >= 0.0:
            w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
            qx, qy, qz = bx + w * (cx - bx), by + w * (cy - by), bz + w * (cz - bz)
        else:
            den = 1.0 / (va + vb + vc)
            v = vb * den
            w = vc * den
            qx, qy, qz = ax + abx * v + acx * w, ay + aby * v + acy * w, az + abz * v + acz * w
    ex, ey, ez = px - qx, py - qy, pz - qz
    return math.sqrt(ex * ex + ey * ey + ez * ez)

@numba.njit(cache=True, parallel=True)
def _surface_kernel(points, radii, tri, cent, rad, area, qpts, qw, cell_start, cell_items, cell_shape,
                    cell_size, reach, out):  # pragma: no cover - jit
    """Per sampling point: surface area inside the shell a <= r <= b and distance to surface.

    Triangles are binned by centroid into cubic cells of ``cell_size`` mm (CSR
    ``cell_start``/``cell_items``); ``reach`` = largest outer radius + largest triangle radius.
    out[:, 0] area (mm^2), out[:, 1] distance (mm).
    """
    for n in numba.prange(points.shape[0]):
        c0 = points[n, 0]
        c1 = points[n, 1]
        c2 = points[n, 2]
        a = radii[n, 0]
        b = radii[n, 1]
        lo0 = max(int(math.floor((c0 - reach) / cell_size)), 0)
        hi0 = min(int(math.floor((c0 + reach) / cell_size)), cell_shape[0] - 1)
        lo1 = max(int(math.floor((c1 - reach) / cell_size)), 0)
        hi1 = min(int(math.floor((c1 + reach) / cell_size)), cell_shape[1] - 1)
        lo2 = max(int(math.floor((c2 - reach) / cell_size)), 0)
        hi2 = min(int(math.floor((c2 + reach) / cell_size)), cell_shape[2] - 1)
        acc = 0.0
        pmin = np.inf
        for i0 in range(lo0, hi0 + 1):
            for i1 in range(lo1, hi1 + 1):
                for i2 in range(lo2, hi2 + 1):
                    cell = (i0 * cell_shape[1] + i1) * cell_shape[2] + i2
                    for q in range(cell_start[cell], cell_start[cell + 1]):
                        t = cell_items[q]
                        e0 = cent[t, 0] - c0
                        e1 = cent[t, 1] - c1
                        e2 = cent[t, 2] - c2
                        d = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)
                        R = rad[t]
                        if d - R > b:
                            continue
                        if d - R < pmin:
                            dt = _tri_dist(c0, c1, c2, tri[t, 0, 0], tri[t, 0, 1], tri[t, 0, 2],
                                           tri[t, 1, 0], tri[t, 1, 1], tri[t, 1, 2],
                                           tri[t, 2, 0], tri[t, 2, 1], tri[t, 2, 2])
                            if dt < pmin:
                                pmin = dt
                        if d + R <= b and d - R >= a:
                            acc += area[t]
                            continue
                        for j in range(qpts.shape[1]):
                            f0 = qpts[t, j, 0] - c0
                            f1 = qpts[t, j, 1] - c1
                            f2 = qpts[t, j, 2] - c2
                            r = math.sqrt(f0 * f0 + f1 * f1 + f2 * f2)
                            if r >= a and r <= b:
                                acc += qw[t]
        out[n, 0] = acc
        out[n, 1] = pmin


def _seg_dist_numpy(p, A, B):
    D = B - A
    dd = np.einsum("ij,ij->i", D, D)
    t = np.clip(np.einsum("ij,ij->i", p - A, D) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
    return np.linalg.norm(A + t[:, None] * D - p, axis=1)


def _tri_dist_numpy(p, tri):
    """Distance from ``p`` to every triangle: plane distance if the foot point lies inside the
    triangle (barycentric test), else the nearest of the three edges."""
    A, B, C = tri[:, 0], tri[:, 1], tri[:, 2]
    nrm = np.cross(B - A, C - A)
    nn = np.linalg.norm(nrm, axis=1)
    ok = nn > 0
    u = nrm / np.where(ok, nn, 1.0)[:, None]
    h = np.einsum("ij,ij->i", p - A, u)
    foot = p - h[:, None] * u
    inside = ok.copy()
    for P, Q in ((A, B), (B, C), (C, A)):
        inside &= np.einsum("ij,ij->i", np.cross(Q - P, foot - P), nrm) >= 0
    edge = np.minimum(np.minimum(_seg_dist_numpy(p, A, B), _seg_dist_numpy(p, B, C)), _seg_dist_numpy(p, C, A))
    return np.where(inside, np.abs(h), edge)


def _surface_numpy(points, radii, tri, qpts, qw):
    """Brute-force reference for :func:`_surface_kernel` (all triangles, no binning)."""
    Q = qpts.reshape(-1, 3)
    W = np.repeat(qw, qpts.shape[1])
    out = np.zeros((points.shape[0], 2))
    for n in range(points.shape[0]):
        r = np.linalg.norm(Q - points[n], axis=1)
        a, b = radii[n]
        out[n, 0] = W[(r >= a) & (r <= b)].sum()
        out[n, 1] = _tri_dist_numpy(points[n], tri).min()
    return out


# ---------------------------------------------------------------------------------------------
# geometry preparation
# ---------------------------------------------------------------------------------------------
def _check_mask(mask, spacing):
    if isinstance(mask, Structure):
        if spacing is None:
            spacing = mask.grid.spacing
        mask = mask.mask
    if spacing is None:
        raise TypeError("spacing (mm per axis) is required when mask is an array (or pass an rtlab Structure)")
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must be a 2D (y, x) or 3D (z, y, x) array, got {m.ndim} dimension(s)")
    if m.dtype != bool:
        if m.dtype.kind not in "biuf":
            raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
        check_finite("mask", m)
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("mask holds values other than 0 and 1; pass a boolean mask (e.g. labels == 3)")
        m = m.astype(bool)
    if not m.any():
        raise ValueError("mask (the target) is empty; control points need a non-empty target")
    if m.all():
        raise ValueError("mask fills the whole grid, so the target has no boundary in it; use a larger grid")
    sp = check_positive("spacing", spacing)
    if len(sp) == 1:
        sp = sp * m.ndim
    if len(sp) != m.ndim:
        raise ValueError(f"spacing has {len(sp)} entries but mask has {m.ndim} dimensions; give one per axis in mm")
    return m, sp


def _boundary_points(m3: np.ndarray, in_plane: bool) -> np.ndarray:
    """Target voxels with a 6-connected (3D) or in-plane 4-connected (2D) neighbour outside."""
    st = ndimage.generate_binary_structure(3, 1)
    if in_plane:
        st[0] = False
        st[2] = False
    er = ndimage.binary_erosion(m3, structure=st, border_value=0)
    return m3 & ~er


def _stencil(flt: RingFilter, sp3, in_plane: bool):
    """Offsets (m, 3) and (overlap weight mm^k, centre-membership) for a filter on voxel centres."""
    b, a = flt.outer_mm, flt.inner_mm
    half = [0 if (in_plane and ax == 0) else int(math.ceil(b / sp3[ax] + 0.5)) for ax in range(3)]
    g = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    sub = (np.arange(_N_SUB) + 0.5) / _N_SUB - 0.5
    axes_sub = [np.zeros(1) if (in_plane and ax == 0) else sub * sp3[ax] for ax in range(3)]
    S = np.stack(np.meshgrid(*axes_sub, indexing="ij"), -1).reshape(-1, 3)
    centres = g * np.asarray(sp3)
    r = np.linalg.norm(centres[:, None, :] + S[None, :, :], axis=-1)
    frac = ((r >= a) & (r <= b)).mean(axis=1)
    vox = sp3[1] * sp3[2] if in_plane else sp3[0] * sp3[1] * sp3[2]
    rc = np.linalg.norm(centres, axis=1)
    memb = ((rc >= a) & (rc <= b)).astype(float)
    keep = (frac > 0) | (memb > 0)
    return g[keep].astype(np.int64), frac[keep] * vox, memb[keep]


def _pack_stencils(st_list):
    m = max(s[0].shape[0] for s in st_list)
    offs = np.zeros((len(st_list), m, 3), np.int64)
    wv = np.zeros((len(st_list), m))
    wc = np.zeros((len(st_list), m))
    for f, (o, w, c) in enumerate(st_list):
        offs[f, : len(o)] = o
        wv[f, : len(o)] = w
        wc[f, : len(o)] = c
    return offs, wv, wc


def _triangle_quadrature(verts, faces):
    """Centroid, bounding radius, area and a 9-point sub-triangle rule per triangle."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(v1 - v0, v2 - v0), axis=1)
    cent = (v0 + v1 + v2) / 3.0
    rad = np.max(np.stack([np.linalg.norm(v - cent, axis=1) for v in (v0, v1, v2)], 1), axis=1)
    nsub = 3
    bary = []
    for i in range(nsub):
        for j in range(nsub - i):
            bary.append(((i + 1 / 3) / nsub, (j + 1 / 3) / nsub))
            if i + j <= nsub - 2:
                bary.append(((i + 2 / 3) / nsub, (j + 2 / 3) / nsub))
    B = np.asarray(bary)  # (9, 2) barycentric (s, t): x = v0 + s (v1 - v0) + t (v2 - v0)
    q = v0[:, None, :] + B[None, :, 0:1] * (v1 - v0)[:, None, :] + B[None, :, 1:2] * (v2 - v0)[:, None, :]
    return cent, rad, area, q, area / len(B)


def sampling_points(mask, spacing=None, r_in: float = 10.0, r_out: float = 10.0, mode: str | None = None):
    """Grid points in a band around the target boundary (patent 000, para. 160-164, FIG. 12).

    Parameters
    ----------
    mask : ndarray of bool (2D or 3D) or rtlab.geometry.Structure
        The target.
    spacing : sequence of float, optional
        Voxel size in mm per axis (taken from the Structure's grid if omitted).
    r_in, r_out : float
        Band half-widths in mm inside and outside the target (>= 0, not both 0), measured with
        :func:`rtlab.geometry.signed_distance` (centre-to-centre to the nearest voxel of the
        other class, so boundary voxels are at one voxel size).
    mode : {'3d', '2d'}, optional
        ``'2d'`` on a 3D mask measures the distance in-plane per axial slice. Default: the
        mask's dimensionality.

    Returns
    -------
    index : ndarray of int, shape (n, ndim)
        Point indices into ``mask``, C-order sorted.
    inside : ndarray of bool, shape (n,)
    """
    m, sp = _check_mask(mask, spacing)
    mode = _check_mode(mode, m.ndim)
    r_in, r_out = _check_band(r_in, r_out)
    return _sampling(m, sp, r_in, r_out, mode)


def _check_mode(mode, ndim):
    if mode is None:
        return "3d" if ndim == 3 else "2d"
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    if mode == "3d" and ndim == 2:
        raise ValueError("mode='3d' needs a 3D mask (z, y, x); use mode='2d' for a 2D mask")
    return mode


def _check_band(r_in, r_out):
    (r_in,) = check_positive("r_in (mm)", r_in, allow_zero=True)
    (r_out,) = check_positive("r_out (mm)", r_out, allow_zero=True)
    if r_in == 0 and r_out == 0:
        raise ValueError("r_in and r_out are both 0 mm; give a band width inside and/or outside the target")
    return r_in, r_out


def _sampling(m, sp, r_in, r_out, mode):
    def band(mm, spp):
        pad = int(math.ceil(max(r_in, r_out) / min(spp))) + 2
        if mm.all():
            return np.zeros_like(mm)  # no boundary in this slice
        # edge padding: the grid edge is not a target boundary
        s = signed_distance(np.pad(mm, pad, mode="edge"), spp)[tuple(slice(pad, pad + n) for n in mm.shape)]
        return (mm & (-s <= r_in)) | (~mm & (s <= r_out))

    if mode == "3d" or m.ndim == 2:
        sel = band(m, sp)
    else:
        sel = np.zeros_like(m)
        for k in range(m.shape[0]):
            if m[k].any():
                sel[k] = band(m[k], sp[1:])
    idx = np.argwhere(sel)
    return idx, m[tuple(idx.T)]


# ---------------------------------------------------------------------------------------------
# main entry point
# ---------------------------------------------------------------------------------------------
def find_control_points(
    mask,
    spacing=None,
    *,
    r_in: float = 10.0,
    r_out: float = 10.0,
    inside_filter: RingFilter | None = None,
    outside_filter: RingFilter | None = None,
    thresholds: Thresholds | None = None,
    mode: str | None = None,
    smooth_mm: float | None = None,
    backend: str = "numba",
    callback: Callable[[str], None] | None = None,
) -> ControlPoints:
    """Find dose control points with ring/disk filters (patent 000, FIGs 11-18, para. 154-197).

    See the module docstring for the exact definitions of every parameter.

    Parameters
    ----------
    mask : ndarray of bool (2D ``(y, x)`` or 3D ``(z, y, x)``) or rtlab.geometry.Structure
        The target.
    spacing : sequence of float, optional
        Voxel size in mm per axis (default: the Structure's grid).
    r_in, r_out : float
        Sampling band inside / outside the target in mm (para. 161).
    inside_filter, outside_filter : RingFilter, optional
        Filters for points inside / outside the target (para. 173-174). Defaults:
        ``RingFilter(8.0)`` for both (a disk/ball of radius 8 mm).
    thresholds : Thresholds, optional
        Decision tests (default ``Thresholds()``: ratio > 1.1 or |bulge| > 0.06).
    mode : {'3d', '2d'}, optional
        ``'2d'`` on a 3D mask filters every axial slice with circles (in-plane spacing).
    smooth_mm : float, optional
        Gaussian sigma (mm, isotropic) applied to the mask before the iso-contour is extracted.
        Default: one voxel along each axis (in-plane only in ``'2d'`` mode); 0 disables it.
    backend : {'numba', 'numpy'}
        ``'numpy'`` runs the pure-numpy reference (slow; for tests and small cases).
    callback : callable, optional
        Called with a short stage name as the work proceeds (for progress displays).

    Returns
    -------
    ControlPoints
    """
    import time

    from skimage import measure

    m, sp = _check_mask(mask, spacing)
    mode = _check_mode(mode, m.ndim)
    r_in, r_out = _check_band(r_in, r_out)
    fin = inside_filter if inside_filter is not None else RingFilter(8.0)
    fout = outside_filter if outside_filter is not None else RingFilter(8.0)
    for name, f in (("inside_filter", fin), ("outside_filter", fout)):
        if not isinstance(f, RingFilter):
            raise TypeError(f"{name} must be a RingFilter, got {type(f).__name__}")
    thr = thresholds if thresholds is not None else Thresholds()
    if not isinstance(thr, Thresholds):
        raise TypeError(f"thresholds must be a Thresholds, got {type(thr).__name__}")
    if backend not in ("numba", "numpy"):
        raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
    in_plane = mode == "2d"
    sp3 = (1.0,) + tuple(sp) if m.ndim == 2 else tuple(sp)
    m3 = m[None] if m.ndim == 2 else m
    if smooth_mm is None:
        sig_mm = list(sp3)  # one voxel per axis
    else:
        (smooth_mm,) = check_positive("smooth_mm", smooth_mm, allow_zero=True)
        sig_mm = [smooth_mm] * 3
    if in_plane:
        sig_mm[0] = 0.0
    note = callback or (lambda stage: None)
    timings = {}

    t = time.perf_counter()
    note("sampling points")
    idx, inside = _sampling(m, sp, r_in, r_out, mode)
    idx3 = np.concatenate([np.zeros((len(idx), 1), np.int64), idx], 1) if m.ndim == 2 else idx.astype(np.int64)
    timings["sampling"] = time.perf_counter() - t

    # pad so every stencil and contour stays inside the array
    bmax = max(fin.outer_mm, fout.outer_mm)
    pads = []
    for ax in range(3):
        if in_plane and ax == 0:
            pads.append(0)
        else:
            pads.append(int(math.ceil((bmax + 4 * sig_mm[ax]) / sp3[ax])) + 2)
    mp = np.pad(m3, [(p, p) for p in pads], mode="edge")  # the grid edge is not a boundary
    sigma = [sig_mm[ax] / sp3[ax] for ax in range(3)]
    ms = ndimage.gaussian_filter(mp.astype(np.float64), sigma) if any(sigma) else mp.astype(np.float64)
    bnd = _boundary_points(mp, in_plane).astype(np.float64)
    menc = mp.astype(np.float64)
    pts = idx3 + np.asarray(pads)
    which = np.where(inside, 0, 1).astype(np.int64)
    radii = np.array([[fin.inner_mm, fin.outer_mm], [fout.inner_mm, fout.outer_mm]])[which]
    n = len(pts)

    # enclosed measure and boundary-point count (stencil sums)
    t = time.perf_counter()
    note("enclosed measure and boundary-point count")
    offs, wv, wc = _pack_stencils([_stencil(fin, sp3, in_plane), _stencil(fout, sp3, in_plane)])
    if backend == "numba":
        enclosed = np.zeros(n)
        count = np.zeros(n)
        _stencil_sum_kernel(menc, pts, which, offs, wv, enclosed)
        _stencil_sum_kernel(bnd, pts, which, offs, wc, count)
    else:
        enclosed = _stencil_sum_numpy(menc, pts, which, offs, wv)
        count = _stencil_sum_numpy(bnd, pts, which, offs, wc)
    region_disc = wv.sum(axis=1)[which]
    timings["stencils"] = time.perf_counter() - t

    # boundary length / area, reference, distance
    t = time.perf_counter()
    ndim_geo = 2 if in_plane else 3
    if in_plane:
        note("marching squares")
        verts_l, cont_ptr, slice_ptr = [], [0], [0]
        slice_of = {}
        for k in np.unique(idx3[:, 0]):
            slice_of[int(k)] = len(slice_ptr) - 1
            for cnt in measure.find_contours(ms[k], 0.5):
                if len(cnt) < 2:
                    continue
                verts_l.append(cnt * np.asarray(sp3[1:]))
                cont_ptr.append(cont_ptr[-1] + len(cnt))
            slice_ptr.append(len(cont_ptr) - 1)
        verts = np.concatenate(verts_l) if verts_l else np.zeros((0, 2))
        cont_ptr = np.asarray(cont_ptr, np.int64)
        slice_ptr = np.asarray(slice_ptr, np.int64)
        pslice = np.array([slice_of[int(k)] for k in idx3[:, 0]], np.int64)
        pmm = pts[:, 1:] * np.asarray(sp3[1:])
        note("ring filters (contours)")
        if backend == "numba":
            geo = np.zeros((n, 3))
            _contour_kernel(pmm, pslice, radii, verts, cont_ptr, slice_ptr, geo)
        else:
            geo = _contour_numpy(pmm, pslice, radii, verts, cont_ptr, slice_ptr)
        length, reference, dist = geo[:, 0], geo[:, 1], geo[:, 2]
    else:
        note("marching cubes")
        verts, faces, _, _ = measure.marching_cubes(ms, 0.5, spacing=sp3)
        cent, rad, area, qpts, qw = _triangle_quadrature(verts, faces)
        tri = np.ascontiguousarray(verts[faces], dtype=np.float64)
        pmm = pts * np.asarray(sp3)
        note("ring filters (surface)")
        if backend == "numba":
            cell = float(bmax)
            hi = np.asarray(ms.shape) * np.asarray(sp3)
            cshape = np.maximum(np.ceil(hi / cell).astype(np.int64), 1)
            ci = np.clip(np.floor(cent / cell).astype(np.int64), 0, cshape - 1)
            flat = (ci[:, 0] * cshape[1] + ci[:, 1]) * cshape[2] + ci[:, 2]
            order = np.argsort(flat, kind="stable").astype(np.int64)
            cstart = np.zeros(int(np.prod(cshape)) + 1, np.int64)
            np.add.at(cstart, flat + 1, 1)
            cstart = np.cumsum(cstart)
            reach = bmax + (float(rad.max()) if len(rad) else 0.0)
            geo = np.zeros((n, 2))
            _surface_kernel(pmm, radii, tri, cent, rad, area, qpts, qw, cstart, order, cshape, cell, reach, geo)
        else:
            geo = _surface_numpy(pmm, radii, tri, qpts, qw)
        length, dist = geo[:, 0], geo[:, 1]
        flt_p = np.where(inside, 0, 1)
        reference = np.where(
            flt_p == 0, _flat_area_3d(dist, fin), _flat_area_3d(dist, fout)
        )
    timings["filters"] = time.perf_counter() - t

    has = length > 1e-9 * bmax ** (ndim_geo - 1)
    dist = np.where(dist < radii[:, 1], dist, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(has, np.maximum(length / reference, reference / length), np.nan)
    ratio = np.where(has & (reference <= 0), np.inf, ratio)
    frac = enclosed / region_disc
    fflat = np.where(
        inside,
        _flat_fraction(np.where(np.isfinite(dist), dist, bmax), True, fin, ndim_geo),
        _flat_fraction(np.where(np.isfinite(dist), dist, bmax), False, fout, ndim_geo),
    )
    bulge = np.where(has, fflat - frac, 0.0)

    ctrl = np.zeros(n, bool)
    if thr.ratio is not None:
        ctrl |= np.nan_to_num(ratio, nan=0.0, posinf=np.inf) > thr.ratio
    if thr.bulge is not None:
        ctrl |= np.abs(bulge) > thr.bulge
    if thr.length is not None:
        ctrl |= length > thr.length
    if thr.enclosed is not None:
        ctrl |= enclosed > thr.enclosed
    if thr.count is not None:
        ctrl |= count > thr.count
    ctrl &= has

    return ControlPoints(
        index=idx.astype(np.int64), inside=inside.astype(bool), length=length, reference=reference,
        ratio=ratio, enclosed=enclosed, enclosed_fraction=frac, count=np.rint(count).astype(np.int64),
        distance=dist, bulge=bulge, has_boundary=has, is_control=ctrl, shape=tuple(m.shape),
        spacing=tuple(sp), mode=mode, inside_filter=fin, outside_filter=fout, thresholds=thr,
        timings=timings,
    )


# ---------------------------------------------------------------------------------------------
# dose targets for the optimiser (para. 179-181)
# ---------------------------------------------------------------------------------------------
def control_point_targets(points: ControlPoints, dose_inside: float, dose_outside: float):
    """Dose targets of the control points (patent 000, para. 180).

    Parameters
    ----------
    points : ControlPoints
    dose_inside : float
        First dose threshold D1 (Gy): control points inside the target should get >= D1.
    dose_outside : float
        Second dose threshold D2 (Gy): control points outside should get <= D2.

    Returns
    -------
    voxel_index : ndarray of int64, shape (k,)
        Flat C-order indices into a dose array of ``points.shape``.
    inside : ndarray of bool, shape (k,)
        True: lower bound (raise dose to >= bound); False: upper bound.
    bound : ndarray of float64, shape (k,)
        The bound in Gy.
    """
    if not isinstance(points, ControlPoints):
        raise TypeError(f"points must be a ControlPoints (from find_control_points), got {type(points).__name__}")
    (d1,) = check_positive("dose_inside (Gy)", dose_inside, allow_zero=True)
    (d2,) = check_positive("dose_outside (Gy)", dose_outside, allow_zero=True)
    vi = points.flat_index(control_only=True)
    ins = points.inside[points.is_control].copy()
    bound = np.where(ins, d1, d2).astype(np.float64)
    return vi, ins, bound


class ControlPointTerm:
    """Quadratic penalty on control-point dose-bound violations (patent 000, para. 180).

    ``value(d) = weight / k * sum_i v_i^2`` with ``v_i = max(0, bound_i - d[idx_i])`` for lower
    bounds (inside points) and ``v_i = max(0, d[idx_i] - bound_i)`` for upper bounds (outside
    points), ``k`` the number of control points.

    Interface (duck-type compatible with ``rtlab.optimize`` terms): ``value(dose) -> float`` and
    ``gradient(dose) -> ndarray`` of ``dose``'s shape, where ``dose`` is the full dose over the
    grid (flat vector or grid-shaped array, Gy) and ``voxel_index`` holds flat C-order indices.

    Parameters
    ----------
    voxel_index : array of int, shape (k,)
    inside : array of bool, shape (k,)
        True: lower bound ("raise to >= bound"); False: upper bound ("lower to <= bound").
    bound : array of float, shape (k,) or scalar
        Dose bounds in Gy.
    weight : float
        Term weight (>= 0).
    name : str
    """

    def __init__(self, voxel_index, inside, bound, weight: float = 1.0, name: str = "control points"):
        vi = np.asarray(voxel_index)
        if vi.ndim != 1 or vi.dtype.kind not in "iu":
            raise TypeError(f"voxel_index must be a 1-D integer array of flat voxel indices, got {vi.dtype} shape {vi.shape}")
        if vi.size and vi.min() < 0:
            raise ValueError("voxel_index holds negative indices; pass flat C-order indices into the dose grid")
        ins = np.asarray(inside)
        if ins.shape != vi.shape or ins.dtype != bool:
            raise ValueError(f"inside must be a boolean array of shape {vi.shape} (one flag per voxel_index)")
        bd = np.broadcast_to(np.asarray(bound, dtype=np.float64), vi.shape).copy()
        check_finite("bound", bd)
        (w,) = check_positive("weight", weight, allow_zero=True)
        self.voxel_index = vi.astype(np.int64)
        self.inside = ins
        self.bound = bd
        self.weight = w
        self.name = name

    @classmethod
    def from_control_points(cls, points: ControlPoints, dose_inside: float, dose_outside: float,
                            weight: float = 1.0) -> "ControlPointTerm":
        """Build the term from :func:`find_control_points` output and the two dose thresholds."""
        vi, ins, bd = control_point_targets(points, dose_inside, dose_outside)
        return cls(vi, ins, bd, weight=weight)

    def __repr__(self) -> str:
        return (f"ControlPointTerm({self.voxel_index.size} points, {int(self.inside.sum())} lower / "
                f"{int((~self.inside).sum())} upper bounds, weight={self.weight:g})")

    def _violation(self, dose):
        d = np.asarray(dose, dtype=np.float64).ravel()
        if self.voxel_index.size and self.voxel_index.max() >= d.size:
            raise ValueError(
                f"dose has {d.size} voxels but voxel_index reaches {int(self.voxel_index.max())}; "
                "pass the full dose grid (flat or shaped) the control points were found on"
            )
        x = d[self.voxel_index]
        return np.where(self.inside, np.maximum(self.bound - x, 0.0), np.maximum(x - self.bound, 0.0))

    def value(self, dose) -> float:
        """Penalty value (Gy^2 times weight)."""
        if self.voxel_index.size == 0:
            return 0.0
        v = self._violation(dose)
        return float(self.weight * np.mean(v * v))

    def gradient(self, dose) -> np.ndarray:
        """d value / d dose, same shape as ``dose`` (Gy)."""
        d = np.asarray(dose)
        g = np.zeros(d.size)
        if self.voxel_index.size:
            v = self._violation(d)
            sign = np.where(self.inside, -1.0, 1.0)
            np.add.at(g, self.voxel_index, 2.0 * self.weight / v.size * v * sign)
        return g.reshape(d.shape)
