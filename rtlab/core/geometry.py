"""Voxel grids, structures and signed distance maps.

Conventions (used everywhere in rtlab)
--------------------------------------
* Arrays are indexed ``(z, y, x)``.
* Lengths are in mm; volumes are reported in cc (1 cc = 1000 mm^3).
* World coordinates are also given in ``(z, y, x)`` order, in mm. ``Grid.origin`` is the world
  position of the *centre* of voxel ``(0, 0, 0)`` (the DICOM ``ImagePositionPatient``
  convention); voxel ``(k, j, i)`` has its centre at ``origin + (k, j, i) * spacing``.
* Grids are axis-aligned. DICOM series with flipped axes are reordered on import
  (:mod:`rtlab.io`), so that spacing is always positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np
from .._lazy import load
from .._util import check_positive, check_shape
from .validate import check_spacing, check_voxels

# imported on first use (rtlab._lazy): scipy.ndimage and scipy.sparse were most of `import rtlab`'s
# time (issue #18: `import rtlab` under 0.3 s)
ndimage = load("scipy.ndimage")
sp = load("scipy.sparse")

__all__ = [
    "Grid",
    "Structure",
    "StructureSet",
    "signed_distance",
    "resample",
    "trilinear_matrix",
    "STRUCTURE_KINDS",
]

STRUCTURE_KINDS = ("target", "oar", "body")


@dataclass(frozen=True)
class Grid:
    """A regular, axis-aligned voxel grid.

    Parameters
    ----------
    shape : tuple of int
        Number of voxels ``(nz, ny, nx)``.
    spacing : tuple of float
        Voxel size ``(dz, dy, dx)`` in mm; finite, between
        :data:`~rtlab.core.validate.MIN_SPACING_MM` and :data:`~rtlab.core.validate.MAX_SPACING_MM`.
        At most :func:`~rtlab.core.validate.max_voxels` voxels in all (``ValueError`` otherwise).
    origin : tuple of float, optional
        World position ``(z, y, x)`` in mm of the centre of voxel ``(0, 0, 0)``. Default: the
        grid is centred on the world origin.

    Examples
    --------
    >>> g = Grid((10, 20, 30), (2.5, 3.0, 3.0))
    >>> g.index_to_world((0, 0, 0)).tolist()
    [-11.25, -28.5, -43.5]
    >>> g.world_to_index(g.index_to_world((3, 4, 5))).tolist()
    [3.0, 4.0, 5.0]
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] | None = None

    def __post_init__(self):
        shape = tuple(np.atleast_1d(self.shape).tolist())
        if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(
                f"shape must be three positive integers (nz, ny, nx), got {self.shape!r}"
            )
        shape = tuple(int(s) for s in shape)
        spacing = check_spacing("spacing", self.spacing)
        if len(spacing) == 1:
            spacing = spacing * 3
        if len(spacing) != 3:
            raise ValueError(f"spacing must be (dz, dy, dx) in mm, got {self.spacing!r}")
        check_voxels(shape, f"a grid of {' x '.join(f'{d:g}' for d in spacing)} mm voxels")
        if self.origin is None:
            origin = tuple(-(n - 1) * d / 2.0 for n, d in zip(shape, spacing))
        else:
            origin = tuple(float(o) for o in np.atleast_1d(self.origin))
            if len(origin) != 3 or not all(np.isfinite(origin)):
                raise ValueError(f"origin must be three finite numbers (z, y, x) in mm, got {self.origin!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))
        object.__setattr__(self, "origin", origin)

    # -- sizes ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Total number of voxels."""
        return int(np.prod(self.shape))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(np.prod(self.spacing))

    @property
    def voxel_volume_cc(self) -> float:
        """Volume of one voxel in cc (cm^3)."""
        return self.voxel_volume_mm3 / 1000.0

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size ``(z, y, x)`` in mm, voxel edge to voxel edge."""
        return tuple(n * d for n, d in zip(self.shape, self.spacing))

    @property
    def center(self) -> np.ndarray:
        """World position ``(z, y, x)`` in mm of the grid's geometric centre."""
        return np.asarray(self.origin) + (np.asarray(self.shape) - 1) * np.asarray(self.spacing) / 2

    @property
    def bounds(self) -> np.ndarray:
        """``(3, 2)`` array of ``[min, max]`` world coordinates of the voxel *edges* in mm."""
        o = np.asarray(self.origin)
        d = np.asarray(self.spacing)
        n = np.asarray(self.shape)
        return np.stack([o - d / 2, o + (n - 0.5) * d], axis=1)

    # -- coordinates ---------------------------------------------------------------------
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates of voxel centres along z, y and x (mm)."""
        return tuple(o + d * np.arange(n) for o, d, n in zip(self.origin, self.spacing, self.shape))

    def mesh(self, sparse: bool = True):
        """``np.meshgrid`` of the voxel-centre coordinates ``(Z, Y, X)`` in mm (ij indexing)."""
        return np.meshgrid(*self.axes(), indexing="ij", sparse=sparse)

    def index_to_world(self, index) -> np.ndarray:
        """Convert voxel indices ``(..., 3)`` in ``(k, j, i)`` order to world mm ``(z, y, x)``.

        Fractional indices are allowed (continuous index space).
        """
        idx = np.asarray(index, dtype=float)
        if idx.shape[-1:] != (3,):
            raise ValueError(f"index must have a last axis of length 3 (k, j, i), got shape {idx.shape}")
        return np.asarray(self.origin) + idx * np.asarray(self.spacing)

    def world_to_index(self, point) -> np.ndarray:
        """Convert world positions ``(..., 3)`` in mm ``(z, y, x)`` to continuous voxel indices."""
        p = np.asarray(point, dtype=float)
        if p.shape[-1:] != (3,):
            raise ValueError(f"point must have a last axis of length 3 (z, y, x) in mm, got shape {p.shape}")
        return (p - np.asarray(self.origin)) / np.asarray(self.spacing)

    def nearest_index(self, point) -> tuple[int, int, int]:
        """Index of the voxel containing world point ``(z, y, x)`` mm; ``ValueError`` if outside."""
        idx = np.rint(self.world_to_index(point)).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.asarray(self.shape)):
            raise ValueError(
                f"point {tuple(np.asarray(point, float))} mm lies outside the grid "
                f"(bounds z/y/x: {self.bounds.round(2).tolist()} mm)"
            )
        return tuple(int(i) for i in idx)

    def contains(self, point) -> bool:
        """True if world point ``(z, y, x)`` mm lies inside the grid's voxel edges."""
        p = np.asarray(point, dtype=float)
        b = self.bounds
        return bool(np.all(p >= b[:, 0]) and np.all(p <= b[:, 1]))

    # -- comparisons ---------------------------------------------------------------------
    def is_same(self, other: "Grid", atol: float = 1e-4) -> bool:
        """True if ``other`` has the same shape, and spacing/origin within ``atol`` mm."""
        return (
            isinstance(other, Grid)
            and self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol, rtol=0)
            and np.allclose(self.origin, other.origin, atol=atol, rtol=0)
        )

    def require_same(self, other: "Grid", what: str = "array", atol: float = 1e-4) -> None:
        """Raise ``ValueError`` describing the difference if ``other`` is not the same grid."""
        if not self.is_same(other, atol=atol):
            raise ValueError(
                f"{what} is on a different grid: {other!r} vs {self!r}; resample it first "
                "(rtlab.core.geometry.resample) or build both on the same grid"
            )

    def check_array(self, name: str, array) -> np.ndarray:
        """Return ``np.asarray(array)`` after checking it has this grid's shape."""
        a = np.asarray(array)
        check_shape(name, a, self.shape, "it must be defined on the same grid (z, y, x)")
        return a

    def with_spacing(self, spacing) -> "Grid":
        """A grid covering the same physical box with another voxel size (mm).

        The number of voxels is ``round(extent / spacing)`` (at least 1) and the new grid is
        centred on the old grid's centre, as used for coarser dose grids.
        """
        sp = check_spacing("spacing", spacing)
        if len(sp) == 1:
            sp = sp * 3
        shape = tuple(max(1, int(round(e / s))) for e, s in zip(self.extent_mm, sp))
        c = self.center
        origin = tuple(c - (np.asarray(shape) - 1) * np.asarray(sp) / 2)
        return Grid(shape, sp, origin)

    def to_dict(self) -> dict:
        """Plain-Python representation (for JSON and npz metadata)."""
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Grid":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]))


def _as_mask(mask, grid: Grid, name: str) -> np.ndarray:
    m = np.asarray(mask)
    check_shape(f"mask of structure {name!r}", m, grid.shape, "masks must be on the structure set's grid")
    if m.dtype != bool:
        if m.dtype.kind not in "biuf":
            raise TypeError(f"mask of structure {name!r} must be boolean, got dtype {m.dtype}")
        if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
            raise ValueError(f"mask of structure {name!r} contains NaN; masks must be 0/1 or boolean")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(
                f"mask of structure {name!r} holds values other than 0 and 1; pass a boolean mask "
                "(e.g. `labels == 3`)"
            )
        m = m.astype(bool)
    return m


@dataclass(eq=False)
class Structure:
    """A delineated volume: a boolean mask on a grid with a name, a kind and a prescription.

    Parameters
    ----------
    name : str
        Structure name (unique within a :class:`StructureSet`).
    mask : ndarray of bool, shape ``grid.shape``
        Voxels belonging to the structure (voxel-centre inclusion).
    grid : Grid
        The grid the mask lives on.
    kind : {'target', 'oar', 'body'}
        Role in planning.
    prescription : float, optional
        Prescribed dose in Gy (targets only).
    color : tuple of float, optional
        RGB in [0, 1] for display.
    allow_empty : bool
        Empty masks raise ``ValueError`` unless this is True.
    """

    name: str
    mask: np.ndarray
    grid: Grid
    kind: str = "oar"
    prescription: float | None = None
    color: tuple[float, float, float] | None = None
    allow_empty: bool = False
    _sdf: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"structure name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.grid, Grid):
            raise TypeError(f"grid of structure {self.name!r} must be an rtlab.core.geometry.Grid, got {type(self.grid).__name__}")
        if self.kind not in STRUCTURE_KINDS:
            raise ValueError(f"kind of structure {self.name!r} must be one of {STRUCTURE_KINDS}, got {self.kind!r}")
        self.mask = _as_mask(self.mask, self.grid, self.name)
        if not self.allow_empty and not self.mask.any():
            raise ValueError(
                f"structure {self.name!r} is empty (no voxel centre inside it); check its "
                "delineation or the grid, or pass allow_empty=True"
            )
        if self.prescription is not None:
            (rx,) = check_positive(f"prescription of structure {self.name!r} (Gy)", self.prescription)
            self.prescription = rx

    def __repr__(self) -> str:
        rx = f", prescription={self.prescription:g} Gy" if self.prescription else ""
        return f"Structure({self.name!r}, kind={self.kind!r}, {self.volume_cc:.2f} cc{rx})"

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the mask."""
        return int(np.count_nonzero(self.mask))

    @property
    def volume_cc(self) -> float:
        """Volume in cc (voxel count times voxel volume)."""
        return self.n_voxels * self.grid.voxel_volume_cc

    @property
    def is_target(self) -> bool:
        return self.kind == "target"

    def centroid(self) -> np.ndarray:
        """World position ``(z, y, x)`` mm of the mask's centre of mass."""
        if not self.mask.any():
            raise ValueError(f"structure {self.name!r} is empty; it has no centroid")
        return self.grid.index_to_world(np.argwhere(self.mask).mean(axis=0))

    def bounding_box(self) -> tuple[slice, slice, slice]:
        """Index slices ``(z, y, x)`` of the smallest box holding the mask."""
        idx = np.argwhere(self.mask)
        if idx.size == 0:
            raise ValueError(f"structure {self.name!r} is empty; it has no bounding box")
        lo, hi = idx.min(0), idx.max(0) + 1
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def signed_distance(self) -> np.ndarray:
        """Signed distance map in mm (negative inside, positive outside); cached.

        See :func:`signed_distance` for the definition.
        """
        if self._sdf is None:
            self._sdf = signed_distance(self.mask, self.grid.spacing)
        return self._sdf

    def copy(self, **changes) -> "Structure":
        """A copy with some fields replaced (e.g. ``name=``, ``mask=``, ``prescription=``)."""
        kw = dict(
            name=self.name, mask=self.mask.copy(), grid=self.grid, kind=self.kind,
            prescription=self.prescription, color=self.color, allow_empty=self.allow_empty,
        )
        kw.update(changes)
        return Structure(**kw)


class StructureSet(Mapping[str, Structure]):
    """An ordered collection of :class:`Structure` objects sharing one :class:`Grid`.

    Behaves like a read-only ``dict`` from name to structure, plus :meth:`add`.

    Parameters
    ----------
    grid : Grid
        The grid every structure must live on.
    structures : iterable of Structure, optional
        Initial members.
    """

    def __init__(self, grid: Grid, structures: Iterable[Structure] = ()):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
        self.grid = grid
        self._items: dict[str, Structure] = {}
        for s in structures:
            self.add(s)

    def add(self, structure: Structure) -> Structure:
        """Add ``structure``; its grid must equal the set's and its name must be new."""
        if not isinstance(structure, Structure):
            raise TypeError(f"expected an rtlab.core.geometry.Structure, got {type(structure).__name__}")
        self.grid.require_same(structure.grid, f"structure {structure.name!r}")
        if structure.name in self._items:
            raise ValueError(f"a structure named {structure.name!r} is already in the set; names must be unique")
        self._items[structure.name] = structure
        return structure

    def __getitem__(self, name: str) -> Structure:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"no structure named {name!r}; available: {list(self._items)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        body = ", ".join(f"{s.name}:{s.kind}" for s in self._items.values())
        return f"StructureSet({self.grid.shape}, [{body}])"

    @property
    def names(self) -> list[str]:
        return list(self._items)

    @property
    def targets(self) -> list[Structure]:
        """Targets, highest prescription first (those without one last)."""
        t = [s for s in self._items.values() if s.kind == "target"]
        return sorted(t, key=lambda s: -(s.prescription or 0.0))

    @property
    def oars(self) -> list[Structure]:
        return [s for s in self._items.values() if s.kind == "oar"]

    @property
    def body(self) -> Structure | None:
        """The body structure, or ``None`` if there is none."""
        for s in self._items.values():
            if s.kind == "body":
                return s
        return None

    def body_mask(self) -> np.ndarray:
        """The body mask, or the union of all structures when no body is defined."""
        b = self.body
        if b is not None:
            return b.mask
        m = np.zeros(self.grid.shape, bool)
        for s in self._items.values():
            m |= s.mask
        return m

    def label_map(self) -> np.ndarray:
        """Integer map: 0 background, ``i + 1`` for the i-th structure (later ones win)."""
        lab = np.zeros(self.grid.shape, np.int16)
        for i, s in enumerate(self._items.values()):
            lab[s.mask] = i + 1
        return lab


def signed_distance(mask, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Signed Euclidean distance map of a binary mask, in mm.

    Outside voxels get the distance from their centre to the nearest *inside* voxel centre
    (positive); inside voxels get minus the distance to the nearest *outside* voxel centre.
    The surface therefore lies between consecutive values, and a voxel one step outside along
    an axis has distance equal to that axis' spacing. Distances honour anisotropic spacing
    (exact Euclidean transform of scipy.ndimage, Maurer's algorithm).

    Parameters
    ----------
    mask : ndarray of bool, 2D or 3D
        The region.
    spacing : sequence of float
        Voxel size in mm per axis (same order as the array axes).

    Returns
    -------
    ndarray of float64
        Same shape as ``mask``. The map is undefined for an empty or a full mask, which raise
        ``ValueError``.
    """
    m = np.asarray(mask, dtype=bool)
    sp = check_positive("spacing", spacing)
    if len(sp) == 1:
        sp = sp * m.ndim
    if len(sp) != m.ndim:
        raise ValueError(f"spacing has {len(sp)} entries but mask has {m.ndim} dimensions")
    if not m.any():
        raise ValueError("mask is empty; the signed distance is undefined")
    if m.all():
        raise ValueError("mask fills the whole array; the signed distance is undefined (pad the array)")
    outside = ndimage.distance_transform_edt(~m, sampling=sp)
    inside = ndimage.distance_transform_edt(m, sampling=sp)
    return outside - inside


def resample(values, source: Grid, target: Grid, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample a volume from ``source`` grid onto ``target`` grid.

    ``order=1`` is trilinear interpolation between voxel centres; points of ``target`` outside
    the hull of ``source`` voxel centres are extrapolated to the nearest centre when within half
    a voxel, and set to ``fill`` beyond that.

    Parameters
    ----------
    values : ndarray, shape ``source.shape``
    source, target : Grid
    order : int
        Spline order (0 nearest, 1 trilinear).
    fill : float
        Value outside the source grid.

    Returns
    -------
    ndarray of float64 with shape ``target.shape``.
    """
    v = source.check_array("values", values).astype(np.float64, copy=False)
    if source.is_same(target):
        return v.copy()
    if order == 1 and v.ndim == 3:
        return _resample_linear_separable(v, source, target, fill)
    coords = []
    for ax_t, o, d, n in zip(target.axes(), source.origin, source.spacing, source.shape):
        c = (ax_t - o) / d
        # within half a voxel of the outermost centre: clamp (the voxel still covers the point)
        c = np.where((c < 0) & (c >= -0.5), 0.0, c)
        c = np.where((c > n - 1) & (c <= n - 0.5), n - 1.0, c)
        coords.append(c)
    cz, cy, cx = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(v, [cz, cy, cx], order=order, mode="constant", cval=fill)


def _linear_axis(c: np.ndarray, n: int):
    """1-D linear interpolation of fractional indices ``c`` on ``n`` samples: ``(i0, i1, w0, w1, inside)``.

    ``c`` is already clamped within half a voxel of the outermost centres (:func:`resample`);
    points outside ``[0, n - 1]`` get zero weights and ``inside`` False.
    """
    inside = (c >= 0) & (c <= n - 1)
    i0 = np.clip(np.floor(c), 0, max(n - 2, 0)).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    f = np.where(inside, c - i0, 0.0)
    return i0, i1, np.where(inside, 1.0 - f, 0.0), f, inside


def _resample_linear_separable(v: np.ndarray, source: Grid, target: Grid, fill: float) -> np.ndarray:
    """:func:`resample` with ``order=1`` as three 1-D passes (trilinear weights are a product of 1-D ones).

    The same value as ``ndimage.map_coordinates(..., order=1, mode='constant')`` on the
    clamped coordinates of :func:`resample` (up to rounding: the 8 corners are summed axis by
    axis), without the three full-size coordinate arrays: about 10x faster on a CT grid.
    """
    out = v
    inside_axes = []
    for axis, (ax_t, o, d, n) in enumerate(zip(target.axes(), source.origin, source.spacing, source.shape)):
        c = (ax_t - o) / d
        c = np.where((c < 0) & (c >= -0.5), 0.0, c)
        c = np.where((c > n - 1) & (c <= n - 0.5), n - 1.0, c)
        i0, i1, w0, w1, inside = _linear_axis(c, n)
        shape = [1, 1, 1]
        shape[axis] = -1
        out = np.take(out, i0, axis=axis) * w0.reshape(shape) + np.take(out, i1, axis=axis) * w1.reshape(shape)
        inside_axes.append(inside)
    if fill != 0.0:
        iz, iy, ix = inside_axes
        out[~(iz[:, None, None] & iy[None, :, None] & ix[None, None, :])] = fill
    return out


def trilinear_matrix(source: Grid, source_index, target: Grid, target_index) -> sp.csr_matrix:
    """Sparse trilinear interpolation from selected voxels of one grid to voxels of another.

    Row ``r`` gives the value at voxel ``target_index[r]`` (flat C-order index into
    ``target.shape``) as a weighted sum over the values at ``source_index`` (flat indices into
    ``source.shape``; column ``c`` = ``source_index[c]``). Same interpolation as
    :func:`resample` with ``order=1``: between voxel centres, clamped within half
    a voxel of the outermost centres, zero beyond. Source voxels that are not in
    ``source_index`` contribute zero.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape ``(len(target_index), len(source_index))``
    """
    src = np.asarray(source_index, np.int64).ravel()
    tgt = np.asarray(target_index, np.int64).ravel()
    if src.size and (src.min() < 0 or src.max() >= source.size):
        raise ValueError(f"source_index must hold flat indices into a grid of {source.size} voxels")
    if tgt.size and (tgt.min() < 0 or tgt.max() >= target.size):
        raise ValueError(f"target_index must hold flat indices into a grid of {target.size} voxels")
    lut = np.full(source.size, -1, np.int64)
    lut[src] = np.arange(src.size)
    idx = np.stack(np.unravel_index(tgt, target.shape), axis=1)
    world = target.index_to_world(idx)
    c = source.world_to_index(world)
    n = np.asarray(source.shape)
    c = np.where((c < 0) & (c >= -0.5), 0.0, c)
    c = np.where((c > n - 1) & (c <= n - 0.5), n - 1.0, c)
    base = np.floor(c).astype(np.int64)
    fr = c - base
    rows, cols, vals = [], [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                off = np.array([dz, dy, dx])
                w = np.prod(np.where(off == 1, fr, 1.0 - fr), axis=1)
                p = base + off
                ok = np.all((p >= 0) & (p < n), axis=1) & (w > 0)
                flat = np.ravel_multi_index(tuple(np.clip(p, 0, n - 1).T), source.shape)
                col = lut[flat]
                ok &= col >= 0
                rows.append(np.flatnonzero(ok))
                cols.append(col[ok])
                vals.append(w[ok])
    R = sp.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(tgt.size, src.size))
    R.sum_duplicates()
    R.sort_indices()
    return R
