"""Travelling-path information and request geometry of interactive dose shaping (paper 004).

* :func:`tpi_maps` -- ``TPI^T`` and ``TPI^O`` per beam and control point (eq 1);
* :func:`rasterize_polyline` -- the voxels of a dragged isodose line.

The patch rule itself (eqs 2-3, Algorithm 1) is :meth:`rtlab.methods.ids.IDSSession.unit_patch`.
"""

from __future__ import annotations

import numpy as np

from ...dose.fluence_kernels import OUT_OF_REACH

__all__ = ["tpi_maps", "rasterize_polyline", "in_reach"]


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
