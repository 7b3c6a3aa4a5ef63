"""Small synthetic cases used by the dose engine's calibration, tests and benchmarks.

These are deliberately simple (numpy only) so that the engine does not depend on
:mod:`rtlab.phantoms`: a water box and a TG-119-like C-shape in a water ellipse.
"""

from __future__ import annotations

import numpy as np

from ..core.case import Case
from ..core.geometry import Grid, Structure, StructureSet

__all__ = ["water_box", "cshape_case"]


def water_box(shape=(41, 81, 41), spacing=(2.0, 2.0, 2.0), surface_y=-60.0, target_halfwidth=None,
              density=None) -> Case:
    """A water box; y < ``surface_y`` is air (density 0.001).

    The grid is centred at the origin. The target (for bixel fitting) is a box of half-width
    ``target_halfwidth`` (z, x) mm around the axis spanning the water depth, default none (then
    a single central voxel column 10 mm deep).
    """
    g = Grid(shape, spacing)
    Z, Y, X = g.mesh(sparse=False)
    water = Y >= surface_y
    rho = np.where(water, 1.0, 0.001).astype(np.float32) if density is None else np.asarray(density, np.float32)
    hu = np.where(water, 0.0, -1000.0).astype(np.float32)
    ss = StructureSet(g)
    ss.add(Structure("body", water, g, "body"))
    if target_halfwidth is None:
        t = (np.abs(Z) <= spacing[0] / 2) & (np.abs(X) <= spacing[2] / 2) & water & (Y <= surface_y + 10)
    else:
        hz, hx = target_halfwidth
        t = (np.abs(Z) <= hz) & (np.abs(X) <= hx) & water & (Y <= surface_y + 20)
    ss.add(Structure("target", t, g, "target", prescription=2.0))
    return Case("water_box", g, hu, ss, density=rho)


def cshape_case(spacing=(2.5, 3.0, 3.0), length_z=160.0) -> Case:
    """TG-119 C-shape-like case: water ellipse 300 x 200 mm (x, y), C target, core cylinder.

    C-shape: a 270-degree annulus (inner radius 15 mm... outer 37 mm) opening anteriorly, 80 mm
    long in z; core: cylinder of radius 10 mm, same length, in the C's centre.
    """
    ext = np.array([length_z + 40.0, 220.0, 320.0])
    shape = tuple(int(round(e / s)) for e, s in zip(ext, spacing))
    g = Grid(shape, spacing)
    Z, Y, X = g.mesh(sparse=True)
    body = (X / 150.0) ** 2 + (Y / 100.0) ** 2 <= 1.0
    body = np.broadcast_to(body & (np.abs(Z) <= length_z / 2), g.shape).copy()
    R = np.sqrt(X**2 + (Y - 10.0) ** 2)
    zin = np.abs(Z) <= 40.0
    ang = np.arctan2(X, -(Y - 10.0))  # 0 towards anterior (-y)
    c = (R >= 15.0) & (R <= 37.0) & (np.abs(ang) >= np.deg2rad(45)) & zin
    core = (R <= 10.0) & zin
    c = np.broadcast_to(c, g.shape).copy()
    core = np.broadcast_to(core, g.shape).copy()
    hu = np.where(body, 0.0, -1000.0).astype(np.float32)
    ss = StructureSet(g)
    ss.add(Structure("body", body, g, "body"))
    ss.add(Structure("ptv_c", c, g, "target", prescription=50.0))
    ss.add(Structure("core", core, g, "oar"))
    return Case("cshape_test", g, hu, ss)
