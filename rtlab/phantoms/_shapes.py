"""Building blocks of the phantom generators: spacing parsing, grids, shape masks, assembly.

Inclusion rule (voxel-centre inclusion)
---------------------------------------
A voxel belongs to a shape when its *centre* lies inside the shape. Shapes are open sets
(``r < R``, ``|x| < a``), and a centre lying exactly on a boundary -- which happens often,
since round dimensions (15 mm, 40 mm) fall on the voxel centres of round spacings (2.5, 3,
5 mm) -- is decided by testing the point ``centre + TIE_SHIFT`` instead, with the fixed
sub-nanometre shift :data:`TIE_SHIFT` ``= (1.1, 1.3, 1.7) * 1e-6`` mm along ``(z, y, x)``.
Consequences:

* axial extents behave as half-open intervals ``z0 <= z < z1``: cylinders stacked at a shared
  face share no voxel and leave no gap, and a slab of length ``L`` holds exactly ``L / dz``
  slices whenever that is an integer;
* about half of the centres lying exactly on a curved surface count as inside, so coarse
  grids do not systematically inflate or shrink volumes (always-in or always-out rules bias a
  6 mm radius cylinder on a 3 mm grid by +4 % or -28 %); the price is that mirror-symmetric
  shapes may differ by a few boundary voxels.

All positions are world coordinates ``(z, y, x)`` in mm (DICOM patient axes: x to the
patient's left, y posterior, z superior). Every phantom is built with its body centred on the
world origin; grids have an odd number of voxels per axis so that a voxel centre sits at the
origin.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .._util import check_positive, is_int
from ..core.case import BeamSpec, Case, Goal
from ..core.geometry import Grid, Structure, StructureSet

__all__ = [
    "parse_spacing",
    "phantom_grid",
    "ellipsoid_mask",
    "cylinder_mask",
    "annulus_mask",
    "distance_to_ellipsoid",
    "offset_ellipsoid_mask",
    "equispaced_beams",
    "assemble_case",
    "HU_AIR",
    "HU_WATER",
    "HU_BONE",
    "HU_BRAIN",
    "TIE_SHIFT",
    "centres",
]

#: CT numbers used by the phantoms (HU).
HU_AIR = -1000.0
HU_WATER = 0.0
HU_BONE = 1000.0
HU_BRAIN = 35.0

#: Tie-break shift (mm, (z, y, x)) added to voxel centres before testing inclusion.
TIE_SHIFT = (1.1e-6, 1.3e-6, 1.7e-6)

_COLORS = {
    "body": (0.6, 0.6, 0.6),
    "target": [(1.0, 0.0, 0.0), (1.0, 0.55, 0.0), (1.0, 0.85, 0.0), (0.85, 0.0, 0.55)],
    "oar": [(0.0, 0.45, 1.0), (0.0, 0.75, 0.3), (0.6, 0.2, 0.9), (0.0, 0.8, 0.8), (0.55, 0.35, 0.1)],
}


def parse_spacing(spacing, default: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size ``(dz, dy, dx)`` in mm from a user value.

    Parameters
    ----------
    spacing : None, float or sequence of 3 floats
        ``None`` takes ``default``; one number is isotropic; three are ``(dz, dy, dx)`` mm.
    default : sequence of 3 floats
        The phantom's default spacing (mm).

    Returns
    -------
    tuple of 3 floats

    Raises
    ------
    ValueError
        If a value is not positive and finite, or the count is not 1 or 3.
    TypeError
        If ``spacing`` is not numeric.
    """
    if spacing is None:
        spacing = default
    if isinstance(spacing, (str, bytes)):
        raise TypeError(f"spacing must be a number (mm) or a sequence (dz, dy, dx) in mm, got the string {spacing!r}")
    vals = check_positive("spacing (mm)", spacing)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(
            f"spacing must be one number (isotropic, mm) or three numbers (dz, dy, dx) in mm, got {spacing!r}"
        )
    return tuple(float(v) for v in vals)


def phantom_grid(half_extent: Sequence[float], spacing: Sequence[float], margin: float = 5.0) -> Grid:
    """The smallest grid centred on the world origin that holds a box plus an air margin.

    Parameters
    ----------
    half_extent : sequence of 3 floats
        Half-size ``(hz, hy, hx)`` in mm of the body's bounding box (centred on the origin).
    spacing : sequence of 3 floats
        Voxel size ``(dz, dy, dx)`` in mm.
    margin : float
        Air margin in mm: the outermost voxel centres lie at least ``margin`` beyond the box.

    Returns
    -------
    Grid
        ``n = 2 * ceil((h + margin) / d) + 1`` voxels per axis (odd, so a voxel centre sits at
        the origin).
    """
    (margin,) = check_positive("margin (mm)", margin, allow_zero=True)
    shape = tuple(
        2 * int(math.ceil((float(h) + margin) / float(d) - 1e-9)) + 1 for h, d in zip(half_extent, spacing)
    )
    return Grid(shape, tuple(spacing))


# -- shape masks (voxel-centre inclusion) ---------------------------------------------------------


def centres(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse ``(Z, Y, X)`` meshes of the voxel-centre positions used for inclusion tests (mm).

    The positions are the voxel centres plus :data:`TIE_SHIFT` (see the module notes).
    """
    z, y, x = grid.mesh(sparse=True)
    return z + TIE_SHIFT[0], y + TIE_SHIFT[1], x + TIE_SHIFT[2]


def _rel(grid: Grid, center) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = centres(grid)
    c = np.asarray(center, float)
    return z - c[0], y - c[1], x - c[2]


def _zslab(z: np.ndarray, z_range) -> np.ndarray:
    z0, z1 = float(z_range[0]), float(z_range[1])
    if not z1 > z0:
        raise ValueError(f"z_range must be (z0, z1) with z1 > z0 in mm, got {tuple(z_range)}")
    return (z > z0) & (z < z1)


def ellipsoid_mask(grid: Grid, center, radii) -> np.ndarray:
    """Voxels whose centre lies strictly inside an axis-aligned ellipsoid.

    Parameters
    ----------
    grid : Grid
    center : sequence of 3 floats
        Centre ``(z, y, x)`` in mm.
    radii : float or sequence of 3 floats
        Semi-axes ``(rz, ry, rx)`` in mm (one number: a sphere).

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
        ``(dz/rz)^2 + (dy/ry)^2 + (dx/rx)^2 < 1``.
    """
    r = check_positive("radii (mm)", radii)
    r = r * 3 if len(r) == 1 else r
    z, y, x = _rel(grid, center)
    q = (z / r[0]) ** 2 + (y / r[1]) ** 2 + (x / r[2]) ** 2
    return np.broadcast_to(q < 1.0, grid.shape).copy()


def cylinder_mask(grid: Grid, center_yx, radii_yx, z_range) -> np.ndarray:
    """Voxels inside an elliptic cylinder with its axis along z.

    Parameters
    ----------
    grid : Grid
    center_yx : sequence of 2 floats
        Axis position ``(y, x)`` in mm.
    radii_yx : float or sequence of 2 floats
        Semi-axes ``(ry, rx)`` in mm of the cross-section (one number: circular).
    z_range : (float, float)
        Axial extent ``[z0, z1)`` in mm (half-open, see the module notes).

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
    """
    r = check_positive("radii_yx (mm)", radii_yx)
    r = r * 2 if len(r) == 1 else r
    z, y, x = _rel(grid, (0.0, center_yx[0], center_yx[1]))
    inside = ((y / r[0]) ** 2 + (x / r[1]) ** 2) < 1.0
    return np.broadcast_to(inside & _zslab(z, z_range), grid.shape).copy()


def annulus_mask(grid: Grid, center_yx, r_inner: float, r_outer: float, z_range) -> np.ndarray:
    """Voxels of a cylindrical shell ``r_inner <= r < r_outer`` around a z-parallel axis.

    Parameters
    ----------
    grid : Grid
    center_yx : sequence of 2 floats
        Axis position ``(y, x)`` in mm.
    r_inner, r_outer : float
        Radii in mm, ``0 <= r_inner < r_outer``.
    z_range : (float, float)
        Axial extent ``[z0, z1)`` in mm.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
    """
    if not 0.0 <= r_inner < r_outer:
        raise ValueError(f"need 0 <= r_inner < r_outer (mm), got r_inner={r_inner}, r_outer={r_outer}")
    z, y, x = _rel(grid, (0.0, center_yx[0], center_yx[1]))
    r2 = y**2 + x**2
    ring = (r2 >= r_inner**2) & (r2 < r_outer**2)
    return np.broadcast_to(ring & _zslab(z, z_range), grid.shape).copy()


def distance_to_ellipsoid(points, radii, tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """Euclidean distance (mm) from points outside an ellipsoid to its surface; 0 inside.

    The closest surface point of ``p`` on the ellipsoid ``sum(q_i^2 / a_i^2) = 1`` is
    ``q_i = a_i^2 p_i / (a_i^2 + t)`` where ``t >= 0`` is the root of the Lagrange condition
    ``g(t) = sum((a_i p_i / (a_i^2 + t))^2) - 1 = 0`` (Eberly, "Distance from a point to an
    ellipse, an ellipsoid, or a hyperellipsoid", 2013). For an outside point ``g(0) > 0`` and
    ``g`` is convex and decreasing on ``t >= 0``, so Newton's method started at ``t = 0``
    increases monotonically to the root without overshooting.

    Parameters
    ----------
    points : array_like, shape ``(..., 3)``
        Positions ``(z, y, x)`` in mm relative to the ellipsoid centre.
    radii : sequence of 3 floats
        Semi-axes ``(rz, ry, rx)`` in mm.
    tol : float
        Relative convergence tolerance on ``t``.
    max_iter : int
        Newton iteration cap.

    Returns
    -------
    ndarray of float64, shape ``points.shape[:-1]``
    """
    a = np.asarray(check_positive("radii (mm)", radii), float)
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.size != 3:
        raise ValueError(f"radii must be (rz, ry, rx) in mm, got {radii!r}")
    p = np.asarray(points, float)
    if p.shape[-1:] != (3,):
        raise ValueError(f"points must have a last axis of length 3 (z, y, x) in mm, got shape {p.shape}")
    flat = p.reshape(-1, 3)
    out = np.zeros(flat.shape[0])
    outside = np.sum((flat / a) ** 2, axis=1) > 1.0
    q = flat[outside]
    if q.size:
        a2 = a**2
        ap2 = (a * q) ** 2
        t = np.zeros(q.shape[0])
        for _ in range(max_iter):
            den = a2 + t[:, None]
            g = np.sum(ap2 / den**2, axis=1) - 1.0
            dg = -2.0 * np.sum(ap2 / den**3, axis=1)
            step = -g / dg
            t = t + step
            if np.all(np.abs(step) <= tol * np.maximum(t, 1.0)):
                break
        out[outside] = np.sqrt(np.sum((q * t[:, None] / (a2 + t[:, None])) ** 2, axis=1))
    return out.reshape(p.shape[:-1])


def offset_ellipsoid_mask(grid: Grid, center, radii, margin: float) -> np.ndarray:
    """Voxels within ``margin`` mm of an ellipsoid (the ellipsoid grown by an isotropic margin).

    The growth uses the exact point-to-ellipsoid distance of :func:`distance_to_ellipsoid`
    (a true parallel body, not an ellipsoid with enlarged semi-axes, and not a voxel-based
    distance transform). Inclusion: inside the ellipsoid, or at distance ``< margin``.

    Parameters
    ----------
    grid : Grid
    center : sequence of 3 floats
        Centre ``(z, y, x)`` in mm.
    radii : sequence of 3 floats
        Semi-axes ``(rz, ry, rx)`` in mm.
    margin : float
        Isotropic margin in mm (>= 0).

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
    """
    (margin,) = check_positive("margin (mm)", margin, allow_zero=True)
    r = np.asarray(check_positive("radii (mm)", radii), float)
    r = np.repeat(r, 3) if r.size == 1 else r
    mask = ellipsoid_mask(grid, center, r)
    if margin == 0:
        return mask
    # candidates: voxel centres in the axis-aligned box of the grown body, outside the ellipsoid
    # (the box is a superset; an ellipsoid with semi-axes r + margin would *not* be, since it
    # lies inside the parallel body)
    c = np.asarray(center, float)
    lo = np.ceil(grid.world_to_index(c - r - margin) - 1e-9).astype(int)
    hi = np.floor(grid.world_to_index(c + r + margin) + 1e-9).astype(int)
    lo = np.clip(lo, 0, np.asarray(grid.shape) - 1)
    hi = np.clip(hi, 0, np.asarray(grid.shape) - 1)
    sl = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))
    cand = np.argwhere(~mask[sl]) + lo
    if cand.size:
        pts = grid.index_to_world(cand) + np.asarray(TIE_SHIFT) - c
        d = distance_to_ellipsoid(pts, r)
        keep = cand[d < margin]
        mask[tuple(keep.T)] = True
    return mask


# -- beams and assembly ---------------------------------------------------------------------------


def equispaced_beams(n_beams: int, isocenter=None, start: float = 0.0) -> list[BeamSpec]:
    """``n_beams`` coplanar beams at gantry ``start + k * 360 / n_beams`` degrees, couch 0.

    Parameters
    ----------
    n_beams : int
        Number of beams (>= 1).
    isocenter : sequence of 3 floats, optional
        ``(z, y, x)`` in mm shared by all beams.
    start : float
        First gantry angle in degrees.
    """
    if not is_int(n_beams) or n_beams < 1:
        raise ValueError(f"n_beams must be a positive integer, got {n_beams!r}")
    iso = None if isocenter is None else tuple(float(v) for v in isocenter)
    return [BeamSpec(gantry=round((start + k * 360.0 / n_beams) % 360.0, 6), couch=0.0, isocenter=iso)
            for k in range(int(n_beams))]


def assemble_case(
    name: str,
    grid: Grid,
    ct: np.ndarray,
    parts: Sequence[tuple],
    goals: Sequence[Goal],
    n_beams: int,
    description: str,
    meta: dict,
    prescription: float | None = None,
) -> Case:
    """Turn masks into a :class:`~rtlab.core.case.Case`, checking that no structure is empty.

    Parameters
    ----------
    name : str
        Phantom name.
    grid : Grid
    ct : ndarray
        CT in HU on ``grid``.
    parts : sequence of tuples
        ``(structure_name, mask, kind, prescription_or_None)`` in display order (body first, so
        that :meth:`StructureSet.label_map` lets organs and targets win over the body).
    goals : sequence of Goal
    n_beams : int
        Number of equispaced coplanar beams; the isocentre is the centroid of the union of
        all target masks.
    description : str
    meta : dict
    prescription : float, optional
        Primary prescription (Gy); default: the highest target prescription.

    Raises
    ------
    ValueError
        If a structure holds no voxel centre at this spacing (advice: finer spacing).
    """
    structures = StructureSet(grid)
    n_t = n_o = 0
    target_union = np.zeros(grid.shape, bool)
    for sname, mask, kind, rx in parts:
        if not mask.any():
            raise ValueError(
                f"phantom {name!r}: structure {sname!r} ({kind}) contains no voxel centre at spacing "
                f"{grid.spacing} mm (z, y, x); use a finer spacing (e.g. spacing=1.0) or larger "
                "structure dimensions"
            )
        if kind == "target":
            color = _COLORS["target"][n_t % len(_COLORS["target"])]
            n_t += 1
            target_union |= mask
        elif kind == "oar":
            color = _COLORS["oar"][n_o % len(_COLORS["oar"])]
            n_o += 1
        else:
            color = _COLORS["body"]
        structures.add(Structure(sname, mask, grid, kind=kind, prescription=rx, color=color))
    iso = None
    if target_union.any():
        iso = tuple(round(float(v), 6) for v in grid.index_to_world(np.argwhere(target_union).mean(axis=0)))
    beams = equispaced_beams(n_beams, iso)
    return Case(
        name=name,
        grid=grid,
        ct=ct,
        structures=structures,
        prescription=prescription,
        goals=list(goals),
        beams=beams,
        description=description,
        meta=dict(meta),
    )
