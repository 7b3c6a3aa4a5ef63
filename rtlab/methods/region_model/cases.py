"""Reproducible random planning cases for the dose-region model (patent 000, para. 144: "200 historical plans").

:func:`random_case` makes a water cylinder, sometimes with a lung- or bone-like insert, a target
of 1-3 overlapping ellipsoids and an organ at risk next to it, one per integer seed;
:func:`case_masks` gives its target, organ and body masks.
"""

from __future__ import annotations

import numpy as np

from ..._util import check_positive, is_int
from ...core.case import BeamSpec, Case
from ...core.geometry import Grid, Structure, StructureSet

__all__ = ["random_case", "case_masks", "HU_LUNG", "HU_BONE_INSERT"]


#: CT numbers (HU) of the random inserts.
HU_LUNG = -700.0
HU_BONE_INSERT = 700.0


def _grid(shape, spacing) -> Grid:
    shp = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shp) == 1:
        shp = shp * 3
    if len(shp) != 3 or min(shp) < 8:
        raise ValueError(f"shape must be (nz, ny, nx) with every axis >= 8 voxels, got {shape!r}")
    sp = check_positive("spacing (mm)", spacing)
    if len(sp) == 1:
        sp = sp * 3
    if len(sp) != 3:
        raise ValueError(f"spacing must be one number or (dz, dy, dx) in mm, got {spacing!r}")
    return Grid(shp, sp)


def _ellipsoid(grid: Grid, center, radii) -> np.ndarray:
    z, y, x = grid.mesh(sparse=True)
    q = ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2
    return np.broadcast_to(q < 1.0, grid.shape).copy()


def random_case(seed: int, shape=(32, 32, 32), spacing=4.0, prescription: float = 60.0,
                n_beams: int | None = None, min_voxels: int = 8) -> Case:
    """A reproducible random planning case: water body, target, neighbouring organ at risk.

    Geometry drawn from ``numpy.random.default_rng(seed)`` (all lengths in mm, grid centred on
    the world origin):

    * body: an elliptic water cylinder (0 HU) along z over the whole grid length, semi-axes
      ``U(0.70, 0.92)`` (y) and ``U(0.80, 0.95)`` (x) of the grid's half extent; air outside;
    * with probability 0.3 an ellipsoidal insert of lung (-700 HU) or bone (+700 HU), radii
      ``U(8, 20)``, somewhere in the body (it may overlap the target; the masks stay as drawn);
    * target ``PTV``: 1-3 overlapping ellipsoids; the first has radii ``U(6, 16)`` per axis
      and its centre within 40 % (y, x) / 30 % (z) of the body half-axes; extra lobes have
      radii ``U(5, 12)`` and centres 0.5-1.0 lobe radii from the first along a random
      direction; clipped to the body;
    * organ ``OAR``: an ellipsoid with radii ``U(6, 14)`` placed along a random direction
      beyond the target's extent in that direction with a surface gap ``U(0, 8)``; target
      voxels are removed from it (so it may abut the target); clipped to the body;
    * plan parameters: ``n_beams`` from {5, 7, 9} (unless given), equispaced coplanar beams
      from gantry 0 about the target centroid; organ dose limit ``U(0.5, 0.85)`` times the
      prescription (stored in ``case.meta["region_params"]``).

    Draws repeat (with the same generator) until target and organ hold ``min_voxels`` voxels.

    Parameters
    ----------
    seed : int
        Non-negative integer; the same seed gives the same case.
    shape : int or (nz, ny, nx)
        Grid size in voxels (>= 8 per axis).
    spacing : float or (dz, dy, dx)
        Voxel size in mm.
    prescription : float
        Target prescription (Gy); the reference isodose of the dose region.
    n_beams : int, optional
        Number of beams; default drawn from {5, 7, 9}.
    min_voxels : int
        Minimum voxel count of target and organ.

    Returns
    -------
    Case
        Structures ``Body`` (body), ``PTV`` (target, prescription), ``OAR`` (oar).
    """
    if not is_int(seed) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    (rx,) = check_positive("prescription (Gy)", prescription)
    grid = _grid(shape, spacing)
    rng = np.random.default_rng(int(seed))
    half = np.asarray(grid.extent_mm) / 2.0
    z, y, x = grid.mesh(sparse=True)
    for _attempt in range(100):
        ry_b = rng.uniform(0.70, 0.92) * half[1]
        rx_b = rng.uniform(0.80, 0.95) * half[2]
        body = np.broadcast_to((y / ry_b) ** 2 + (x / rx_b) ** 2 < 1.0, grid.shape).copy()
        ct = np.where(body, 0.0, -1000.0).astype(np.float32)
        insert = None
        if rng.uniform() < 0.3:
            kind = "lung" if rng.uniform() < 0.5 else "bone"
            ic = (rng.uniform(-0.5, 0.5) * half[0], rng.uniform(-0.5, 0.5) * ry_b, rng.uniform(-0.5, 0.5) * rx_b)
            ir = tuple(rng.uniform(8.0, 20.0, 3))
            im = _ellipsoid(grid, ic, ir) & body
            ct[im] = HU_LUNG if kind == "lung" else HU_BONE_INSERT
            insert = {"kind": kind, "center": [float(v) for v in ic], "radii": [float(v) for v in ir]}
        c0 = np.array([rng.uniform(-0.3, 0.3) * half[0], rng.uniform(-0.4, 0.4) * ry_b,
                       rng.uniform(-0.4, 0.4) * rx_b])
        lobes = [(c0, rng.uniform(6.0, 16.0, 3))]
        for _ in range(int(rng.integers(0, 3))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            r = rng.uniform(5.0, 12.0, 3)
            lobes.append((c0 + u * rng.uniform(0.5, 1.0) * lobes[0][1], r))
        target = np.zeros(grid.shape, bool)
        for c, r in lobes:
            target |= _ellipsoid(grid, c, r)
        target &= body
        # organ along a random direction (mostly in the axial plane)
        u = rng.normal(size=3) * np.array([0.5, 1.0, 1.0])
        u /= np.linalg.norm(u)
        o_r = rng.uniform(6.0, 14.0, 3)
        gap = rng.uniform(0.0, 8.0)
        limit = rng.uniform(0.5, 0.85)
        nb = int(rng.choice([5, 7, 9])) if n_beams is None else int(n_beams)
        if target.sum() < min_voxels:
            continue
        pts = grid.index_to_world(np.argwhere(target))
        tc = pts.mean(axis=0)
        reach = float(np.max((pts - tc) @ u))
        o_reach = float(1.0 / np.sqrt(np.sum((u / o_r) ** 2)))  # ellipsoid support along u
        oc = tc + u * (reach + gap + o_reach)
        organ = _ellipsoid(grid, oc, o_r) & body & ~target
        if organ.sum() < min_voxels:
            continue
        break
    else:  # pragma: no cover - needs an absurd grid
        raise ValueError(f"could not place a target and an organ of >= {min_voxels} voxels on grid "
                         f"{grid.shape} @ {grid.spacing} mm; use a larger grid or finer spacing")
    if nb < 1:
        raise ValueError(f"n_beams must be >= 1, got {n_beams!r}")
    ss = StructureSet(grid, [
        Structure("Body", body, grid, "body"),
        Structure("PTV", target, grid, "target", prescription=rx),
        Structure("OAR", organ, grid, "oar"),
    ])
    iso = tuple(round(float(v), 6) for v in tc)
    beams = [BeamSpec(gantry=round(k * 360.0 / nb, 6), couch=0.0, isocenter=iso) for k in range(nb)]
    params = {
        "seed": int(seed), "shape": list(grid.shape), "spacing": list(grid.spacing),
        "prescription": rx, "body_radii_yx": [float(ry_b), float(rx_b)], "insert": insert,
        "target_lobes": [{"center": [float(v) for v in c], "radii": [float(v) for v in r]} for c, r in lobes],
        "organ": {"center": [float(v) for v in oc], "radii": [float(v) for v in o_r], "gap_mm": float(gap)},
        "organ_limit_frac": float(limit), "n_beams": nb,
    }
    return Case(name=f"region_{int(seed):06d}", grid=grid, ct=ct, structures=ss, prescription=rx,
                beams=beams, description="random synthetic case for the dose-region model (rtlab.methods.region_model)",
                meta={"region_params": params})


def case_masks(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")
    t = case.structures.targets
    if not t:
        raise ValueError("case has no target structure; the dose region is defined relative to a target")
    target = np.zeros(case.grid.shape, bool)
    for s in t:
        target |= s.mask
    organ = np.zeros(case.grid.shape, bool)
    for s in case.structures.oars:
        organ |= s.mask
    body = case.structures.body_mask().astype(bool) | target
    return target, organ, body
