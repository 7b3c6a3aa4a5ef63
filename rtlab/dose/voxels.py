"""Where the voxels are for a beam: the dose grid, the voxel selection, projections and depths.

Shared by the two photon engines (:mod:`rtlab.dose.influence` and :mod:`rtlab.dose.fluence`):

* :func:`resolve_dose_grid` -- the dose grid of a case for a spacing ``dose_grid_mm``;
* :func:`select_voxels` -- the voxels that get dose (body, all, or a mask), on the dose grid;
* :func:`beam_voxels` -- per beam: each voxel's projection ``(u, v)`` on the isocentre plane,
  distance ``t`` from the source, radiological depth (one fan of Siddon rays) and the depth
  factors ``(SAD/t)^2 D_k(d_rad)`` of the machine's components (:class:`BeamVoxels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._util import check_positive
from ..core.beams import Beam
from ..core.geometry import Grid
from . import kernels as K
from .machine import Machine
from .raytrace import fan_depth

__all__ = ["resolve_dose_grid", "select_voxels", "BeamVoxels", "beam_voxels"]


def resolve_dose_grid(case, dose_grid_mm=None) -> Grid:
    """The dose grid of ``case`` for a spacing ``dose_grid_mm`` (mm), a :class:`Grid`, or None (the CT grid).

    Raises
    ------
    ValueError
        A spacing that is not positive and finite.
    """
    if dose_grid_mm is None:
        return case.grid
    if isinstance(dose_grid_mm, Grid):
        return dose_grid_mm
    check_positive("dose_grid_mm", dose_grid_mm)
    return case.grid.with_spacing(dose_grid_mm)


def select_voxels(case, grid: Grid, voxels="body"):
    """Rows of the influence matrix: ``(flat indices on grid, mask on grid, mask on CT grid)``."""
    if isinstance(voxels, str):
        if voxels == "body":
            ct_mask = case.structures.body_mask().astype(bool)
        elif voxels == "all":
            ct_mask = np.ones(case.grid.shape, bool)
        else:
            raise ValueError(f"voxels must be 'body', 'all' or a boolean mask on the CT grid, got {voxels!r}")
    else:
        ct_mask = case.grid.check_array("voxels", voxels).astype(bool)
    if not ct_mask.any():
        raise ValueError("no voxels selected (empty body/mask); pass voxels='all' or a non-empty mask")
    if grid.is_same(case.grid):
        mask = ct_mask
    else:
        pts = case.grid.index_to_world(np.argwhere(ct_mask))
        f = grid.world_to_index(pts)
        base = np.floor(f).astype(np.int64)
        mask = np.zeros(grid.shape, bool)
        shp = np.asarray(grid.shape)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    idx = np.clip(base + [dz, dy, dx], 0, shp - 1)
                    mask[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return np.flatnonzero(mask.ravel()).astype(np.int64), mask, ct_mask


def _ssd(case, beam) -> float:
    """Source-surface distance (mm) along the central axis (first body voxel hit)."""
    body = case.structures.body_mask()
    _, _, eb = beam.frame()
    s = np.arange(0.0, beam.sad + 0.5 * max(case.grid.extent_mm), 1.0)
    p = beam.source[None] + s[:, None] * eb[None]
    idx = np.rint(case.grid.world_to_index(p)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(case.grid.shape)), axis=1)
    hit = np.zeros(len(s), bool)
    hit[ok] = body[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
    return float(s[np.argmax(hit)]) if hit.any() else beam.sad


@dataclass
class BeamVoxels:
    """Per-beam geometry of the selected voxels (NaN ``u`` where the voxel is out of reach).

    ``w[i, k] = (SAD/t)^2 D_k(d_rad)``; ``depth`` radiological depth (mm).
    """

    u: np.ndarray
    v: np.ndarray
    t: np.ndarray
    depth: np.ndarray
    w: np.ndarray
    ssd: float


def beam_voxels(case, beam: Beam, machine: Machine, points, margin_mm: float, ray_mm=None) -> BeamVoxels:
    """Project ``points`` (n, 3) for ``beam``, trace its fan and evaluate the depth factors.

    Voxels whose projection lies more than ``margin_mm`` outside the bixel grid's edges, or
    behind the source, get NaN coordinates and zero factors. The fan covers the projections of
    the voxels in reach (not the whole band). Projection, fan look-up and
    depth factors run in parallel numba kernels (:func:`rtlab.dose.kernels.beam_geometry`,
    :func:`rtlab.dose.kernels.lookup_depth_factors`).
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    n = len(pts)
    u = np.empty(n)
    v = np.empty(n)
    t = np.empty(n)
    depth = np.full(n, np.nan)
    w = np.zeros((n, 3))
    vmin, vmax, umin, umax = beam.bixels.extent_mm()
    eu, ev, eb = beam.frame()
    f64 = lambda a: np.ascontiguousarray(a, np.float64)  # noqa: E731
    n_in, tmin, tmax = K.beam_geometry(pts, f64(beam.source), f64(eu), f64(ev), f64(eb), float(beam.sad),
                                       umin - margin_mm, umax + margin_mm, vmin - margin_mm, vmax + margin_mm,
                                       u, v, t)
    if n_in:
        # the fan covers the in-band voxels' projections only (its lattice is anchored at the
        # central axis, so the depths do not depend on the extent)
        fan = fan_depth(case.density, case.grid, beam, (np.nanmin(u), np.nanmax(u)), (np.nanmin(v), np.nanmax(v)),
                        (tmin, tmax), ray_mm=ray_mm)
        K.lookup_depth_factors(fan.fan, fan.u0, fan.du, fan.v0, fan.dv, fan.t0, fan.dt, u, v, t,
                               f64(machine.betas), float(machine.mu), float(beam.sad), depth, w)
    return BeamVoxels(u, v, t, depth, w, _ssd(case, beam))
