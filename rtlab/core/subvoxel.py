"""Structures resolved below the voxel: exact slab overlaps along z, sub-samples in the plane.

A structure drawn as a stack of axial contours is a stack of prisms: contour plane ``p`` at
height ``z_p`` stands for the slab ``|z - z_p| <= t/2`` (``t`` the plane spacing). On an axial
:class:`~rtlab.core.geometry.Grid` a :class:`SubvoxelMask` records it as

* one in-plane raster per contour plane on a lattice ``s`` times finer than the grid's
  (sub-pixel ``(J, I)`` has its centre at the continuous voxel index
  ``j + (a + 1/2)/s - 1/2`` for ``J = j s + a``; for odd ``s`` the middle one sits on the voxel
  centre), True where the centre lies inside the plane's polygons;
* a list of *layers* ``(k, p, w, z_mid)``: grid slice ``k`` overlaps plane ``p``'s slab over the
  fraction ``w`` of its thickness, exactly (interval intersection), with ``z_mid`` the continuous
  voxel index of the middle of that overlap.

The volume is ``sum_layers w * (inside sub-pixels of p) * voxel volume / s**2``: exact along z,
with the in-plane error of an ``s``-times finer raster. :meth:`SubvoxelMask.fraction` gives the
partial-volume map (the fraction of every voxel inside the structure). A dose is sampled at the
points ``(z_mid, sub-pixel centre)`` of every layer, each worth its volume
(:meth:`rtlab.evaluate.dose_volume.DoseVolume.from_subvoxels`); with trilinear interpolation the
sample at ``z_mid`` is the exact mean along the overlap when the dose is linear there.

:mod:`rtlab.io.dicom.contours` builds these from RTSTRUCT contours. The rasters are stored
packed (``numpy.packbits`` along x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Grid

__all__ = ["SubvoxelMask"]


@dataclass(eq=False)
class SubvoxelMask:
    """A structure as in-plane sub-pixel rasters and exact z overlaps (see the module docstring).

    Parameters
    ----------
    grid : Grid
    factor : int
        In-plane sub-pixels per voxel and axis (``s``).
    start : tuple of int
        First voxel ``(j0, i0)`` of the in-plane box.
    box_shape : tuple of int
        ``(nj, ni)`` voxels of the in-plane box.
    rasters : list of ndarray of uint8
        ``numpy.packbits(inside, axis=1)`` of each plane's ``(nj s, ni s)`` boolean raster.
    layers : ndarray, shape (n, 4)
        Rows ``(k, p, w, z_mid)``: grid slice, raster index, overlap fraction (0, 1], middle of
        the overlap (continuous voxel index along z).
    """

    grid: Grid
    factor: int
    start: tuple
    box_shape: tuple
    rasters: list
    layers: np.ndarray

    def __post_init__(self):
        self.layers = np.asarray(self.layers, float).reshape(-1, 4)
        if self.layers.size and (self.layers[:, 1].max() >= len(self.rasters) or self.layers[:, 0].min() < 0
                                 or self.layers[:, 0].max() >= self.grid.shape[0]):
            raise ValueError("layers name a raster or a grid slice that does not exist")
        self._counts = [int(np.unpackbits(r, axis=1, count=self.fine_shape[1]).sum(dtype=np.int64))
                        for r in self.rasters]

    @classmethod
    def from_rasters(cls, grid: Grid, factor: int, start, rasters, layers) -> "SubvoxelMask":
        """From unpacked boolean rasters ``(nj s, ni s)`` (one per plane) and layers ``(k, p, w, z_mid)``."""
        s = int(factor)
        rs = [np.asarray(r, bool) for r in rasters]
        if not rs:
            raise ValueError("at least one raster is needed")
        shp = rs[0].shape
        if any(r.shape != shp for r in rs) or len(shp) != 2 or shp[0] % s or shp[1] % s:
            raise ValueError(f"rasters must share one 2-D shape that is a multiple of factor={s}")
        box = (shp[0] // s, shp[1] // s)
        st = tuple(int(v) for v in start)
        if any(v < 0 for v in st) or st[0] + box[0] > grid.shape[1] or st[1] + box[1] > grid.shape[2]:
            raise ValueError(f"the in-plane box {st} + {box} does not fit the grid {grid.shape}")
        return cls(grid, s, st, box, [np.packbits(r, axis=1) for r in rs], layers)

    @property
    def fine_shape(self) -> tuple[int, int]:
        """``(nj s, ni s)``: the shape of one raster."""
        return self.box_shape[0] * self.factor, self.box_shape[1] * self.factor

    def raster(self, p: int) -> np.ndarray:
        """Plane ``p``'s boolean raster ``(nj s, ni s)``."""
        return np.unpackbits(self.rasters[int(p)], axis=1, count=self.fine_shape[1]).astype(bool)

    @property
    def subpixel_cc(self) -> float:
        """Volume (cc) of one sub-pixel over a whole voxel thickness."""
        return self.grid.voxel_volume_cc / self.factor**2

    @property
    def volume_cc(self) -> float:
        """Inside volume (cc)."""
        if not self.layers.size:
            return 0.0
        cnt = np.asarray(self._counts, float)[self.layers[:, 1].astype(int)]
        return float(np.sum(self.layers[:, 2] * cnt)) * self.subpixel_cc

    def fine_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Continuous voxel indices ``(y of raster rows, x of raster columns)``."""
        s = self.factor
        y = self.start[0] + (np.arange(self.fine_shape[0]) + 0.5) / s - 0.5
        x = self.start[1] + (np.arange(self.fine_shape[1]) + 0.5) / s - 0.5
        return y, x

    def fraction(self) -> np.ndarray:
        """Fraction (float32, 0..1) of each voxel of the grid inside the structure (a partial-volume map)."""
        s = self.factor
        nj, ni = self.box_shape
        out = np.zeros(self.grid.shape, np.float32)
        j0, i0 = self.start
        blocks = {}
        for k, p, w, _ in self.layers:
            p = int(p)
            if p not in blocks:
                blocks[p] = self.raster(p).reshape(nj, s, ni, s).sum(axis=(1, 3), dtype=np.int32) / float(s * s)
            out[int(k), j0:j0 + nj, i0:i0 + ni] += np.float32(w) * blocks[p].astype(np.float32)
        return np.minimum(out, 1.0)

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        """Voxels (bool, grid shape) with at least ``threshold`` of their volume inside."""
        return self.fraction() >= threshold - 1e-6
