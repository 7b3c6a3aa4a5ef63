"""Travelling-path information and request geometry of interactive dose shaping (paper 004).

* :func:`tpi_maps` -- ``TPI^T`` and ``TPI^O`` per beam and control point (eq 1);
* :func:`rasterize_polyline` -- the voxels of a dragged isodose line;
* :func:`isodose_surface_request` -- the voxels of a moved isodose-surface region (3D).

The patch rule itself (eqs 2-3, Algorithm 1) is :meth:`rtlab.methods.ids.IDSSession.unit_patch`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion

from ...dose.fluence_kernels import OUT_OF_REACH

__all__ = ["tpi_maps", "rasterize_polyline", "in_reach", "isodose_surface_request"]


def in_reach(pixel_u):
    """Whether a beam reaches a voxel, from its fluence-pixel coordinate (engine: ``OUT_OF_REACH`` if not)."""
    return pixel_u > OUT_OF_REACH / 10


def tpi_maps(session) -> tuple[list, list]:
    """Travelling-path information maps ``TPI^T`` and ``TPI^O`` per beam (paper 004, eq 1).

    ``TPI(b, s) = sum over target (OAR) voxels whose centre projects into control point s of
    beam b of D_1(l)``, ``D_1`` the machine's first depth component at the radiological
    depth ``l`` (mm). Control points are the beam's bixels.

    Returns
    -------
    (list of ndarray, list of ndarray)
        Maps of shape ``beam.bixels.shape`` per beam.
    """
    PU, PV, D1, is_target = session.tpi_inputs()
    sub = session.sub
    out_t, out_o = [], []
    for b, bm in enumerate(session.beams):
        R, Cc = bm.bixels.shape
        for sel, out in ((is_target, out_t), (~is_target, out_o)):
            pu, pv = PU[sel, b], PV[sel, b]
            ok = in_reach(pu)
            r = np.rint(pv[ok]).astype(np.int64) // sub
            c = np.rint(pu[ok]).astype(np.int64) // sub
            d1 = D1[sel, b][ok]
            keep = (r >= 0) & (r < R) & (c >= 0) & (c < Cc)
            out.append(np.bincount(r[keep] * Cc + c[keep], weights=d1[keep], minlength=R * Cc).reshape(R, Cc))
    return out_t, out_o


def rasterize_polyline(path, shape) -> np.ndarray:
    """Voxels ``(n, 3)`` along a polyline of ``(z, y, x)`` vertices lying in one slice (same z).

    Segments are sampled at 1/4 voxel steps and rounded; duplicates removed (order kept).
    """
    p = np.asarray(path, float)
    if p.size == 0:
        raise ValueError("path is empty; give at least one (z, y, x) vertex")
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"path must be a sequence of (z, y, x) voxel coordinates, got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("path is empty; give at least one (z, y, x) vertex")
    if not np.all(np.isfinite(p)):
        raise ValueError("path contains NaN or infinite coordinates")
    if np.ptp(p[:, 0]) > 1e-9:
        raise ValueError("path vertices must lie in one slice (equal z); use request_surface for 3D regions")
    pts = [p[:1]]
    for a, b in zip(p[:-1], p[1:]):
        n = max(1, int(np.ceil(4 * np.abs(b - a).max())))
        pts.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    q = np.rint(np.concatenate(pts)).astype(np.int64)
    if np.any(q < 0) or np.any(q >= np.asarray(shape)):
        raise ValueError(f"path leaves the grid {tuple(shape)}; keep the line inside")
    _, first = np.unique(q, axis=0, return_index=True)
    return q[np.sort(first)]


def isodose_surface_request(dose, grid, level_gy: float, point_mm, shift_mm: float, radius_mm: float = 10.0,
                            snap_mm: float = 10.0) -> dict:
    """The voxels of an isodose-surface region moved in 3D (paper 004, section 3.2: "shaping an isodose surface").

    The planner picks a point on the ``level_gy`` isodose surface (in a 3D view or on a slice)
    and pushes the surface there by ``shift_mm`` along its normal. The region is the surface
    voxels (inner boundary of ``dose >= level_gy``) within ``radius_mm`` of the picked point;
    it moves by ``shift_mm`` along the surface's outward normal (the direction in which the dose
    falls: ``-grad d / |grad d|``, averaged over the region); the moved positions, rounded to
    voxels, are the request's voxels (each to get ``level_gy``, :meth:`IDSSession.request_surface`).
    ``shift_mm > 0`` grows the volume enclosed by the surface, ``< 0`` shrinks it.

    Parameters
    ----------
    dose : ndarray ``grid.shape``
        Current dose (Gy).
    grid : rtlab.core.geometry.Grid
    level_gy : float
        Isodose level (Gy); must lie strictly between the dose's minimum and maximum.
    point_mm : (3,) float
        Picked point, world ``(z, y, x)`` in mm; snapped to the nearest surface voxel, which must
        lie within ``snap_mm``.
    shift_mm : float
        Displacement along the outward normal (mm).
    radius_mm : float
        Radius of the moved region around the picked point (mm, > 0).
    snap_mm : float
        Largest distance (mm) between ``point_mm`` and the surface.

    Returns
    -------
    dict
        ``voxels`` ((n, 3) int, unique, inside the grid), ``picked_index`` (the surface voxel the
        point snapped to), ``picked_mm`` (its world position), ``normal`` (unit outward normal,
        world ``(z, y, x)``), ``region`` ((m, 3) int: the surface voxels before the move).

    Raises
    ------
    ValueError
        Shape mismatch, a non-finite dose / point / shift, a level outside the dose range, a
        point farther than ``snap_mm`` from the surface, a moved region entirely outside the grid.
    """
    d = np.asarray(dose, float)
    if d.shape != tuple(grid.shape):
        raise ValueError(f"dose has shape {d.shape}, expected the grid shape {tuple(grid.shape)}")
    if not np.all(np.isfinite(d)):
        raise ValueError("dose contains NaN or infinite values")
    pt = np.asarray(point_mm, float).ravel()
    if pt.size != 3 or not np.all(np.isfinite(pt)):
        raise ValueError(f"point_mm must be three finite world coordinates (z, y, x) in mm, got {point_mm!r}")
    for nm, v in (("level_gy", level_gy), ("shift_mm", shift_mm), ("radius_mm", radius_mm), ("snap_mm", snap_mm)):
        if not np.isfinite(float(v)):
            raise ValueError(f"{nm} must be finite, got {v!r}")
    if radius_mm <= 0 or snap_mm <= 0:
        raise ValueError(f"radius_mm and snap_mm must be > 0, got {radius_mm!r}, {snap_mm!r}")
    if not d.min() < level_gy < d.max():
        raise ValueError(f"level_gy={level_gy:g} has no isodose surface: the dose spans "
                         f"{d.min():.3g}..{d.max():.3g} Gy")
    inside = d >= level_gy
    surf = np.argwhere(inside & ~binary_erosion(inside, border_value=0))
    w = grid.index_to_world(surf)
    dist = np.linalg.norm(w - pt, axis=1)
    i0 = int(np.argmin(dist))
    if dist[i0] > snap_mm:
        raise ValueError(f"point_mm {tuple(np.round(pt, 1))} lies {dist[i0]:.1f} mm from the {level_gy:g} Gy "
                         f"isodose surface (more than snap_mm={snap_mm:g}); pick a point on the surface")
    p0 = w[i0]
    sel = np.linalg.norm(w - p0, axis=1) <= radius_mm
    region, wr = surf[sel], w[sel]
    sp = np.asarray(grid.spacing, float)
    g = np.stack(np.gradient(d, *sp), axis=-1)  # dGy/dmm along (z, y, x)
    gm = g[tuple(region.T)].mean(axis=0)
    nrm = float(np.linalg.norm(gm))
    if nrm == 0:
        raise ValueError("the dose has no gradient at the picked region; the surface normal is undefined")
    n = -gm / nrm
    moved = grid.world_to_index(wr + shift_mm * n)
    q = np.rint(moved).astype(np.int64)
    ok = np.all((q >= 0) & (q < np.asarray(grid.shape)), axis=1)
    if not ok.any():
        raise ValueError("the moved region lies outside the grid; use a smaller shift_mm")
    _, first = np.unique(q[ok], axis=0, return_index=True)
    return {"voxels": q[ok][np.sort(first)], "picked_index": tuple(int(c) for c in surf[i0]),
            "picked_mm": p0, "normal": n, "region": region}
