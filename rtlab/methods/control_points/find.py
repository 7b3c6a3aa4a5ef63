"""Finding control points (patent 000, para. 154-197): sampling points, filters, contour parameters,
decision (see :mod:`rtlab.methods.control_points` for the geometry).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
from scipy import ndimage
from skimage import measure

from ..._util import check_finite, check_positive
from ...core.geometry import Structure, signed_distance
from .filters import N_SUB, ControlPoints, RingFilter, Thresholds, flat_area_3d, flat_fraction
from .kernels import (contour_geometry, contour_geometry_numpy, stencil_sum, stencil_sum_numpy, surface_geometry,
                      surface_geometry_numpy)

__all__ = ["sampling_points", "find_control_points"]


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
    sub = (np.arange(N_SUB) + 0.5) / N_SUB - 0.5
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
    mask : ndarray of bool (2D or 3D) or rtlab.core.geometry.Structure
        The target.
    spacing : sequence of float, optional
        Voxel size in mm per axis (taken from the Structure's grid if omitted).
    r_in, r_out : float
        Band half-widths in mm inside and outside the target (>= 0, not both 0), measured with
        :func:`rtlab.core.geometry.signed_distance` (centre-to-centre to the nearest voxel of the
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
    mask : ndarray of bool (2D ``(y, x)`` or 3D ``(z, y, x)``) or rtlab.core.geometry.Structure
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
        stencil_sum(menc, pts, which, offs, wv, enclosed)
        stencil_sum(bnd, pts, which, offs, wc, count)
    else:
        enclosed = stencil_sum_numpy(menc, pts, which, offs, wv)
        count = stencil_sum_numpy(bnd, pts, which, offs, wc)
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
            contour_geometry(pmm, pslice, radii, verts, cont_ptr, slice_ptr, geo)
        else:
            geo = contour_geometry_numpy(pmm, pslice, radii, verts, cont_ptr, slice_ptr)
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
            surface_geometry(pmm, radii, tri, cent, rad, area, qpts, qw, cstart, order, cshape, cell, reach, geo)
        else:
            geo = surface_geometry_numpy(pmm, radii, tri, qpts, qw)
        length, dist = geo[:, 0], geo[:, 1]
        flt_p = np.where(inside, 0, 1)
        reference = np.where(
            flt_p == 0, flat_area_3d(dist, fin), flat_area_3d(dist, fout)
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
        flat_fraction(np.where(np.isfinite(dist), dist, bmax), True, fin, ndim_geo),
        flat_fraction(np.where(np.isfinite(dist), dist, bmax), False, fout, ndim_geo),
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
