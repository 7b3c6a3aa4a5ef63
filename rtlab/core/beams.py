"""Beams and bixel grids: where the fluence of a photon beam lives.

Coordinate conventions (IEC 61217, head-first supine patient, DICOM patient axes)
-------------------------------------------------------------------------------
World vectors are written ``(x, y, z)`` in the formulas below (x to the patient's left,
y posterior, z superior) and stored ``(z, y, x)`` in arrays, as everywhere in rtlab.

* Gantry rotation ``theta`` is a rotation about the patient's z axis (the gantry axis)::

      R_g(theta) = [[cos t, -sin t, 0],
                    [sin t,  cos t, 0],
                    [0,      0,     1]]

  The source direction (unit vector from isocentre to source) at gantry 0 is
  ``s0 = (0, -1, 0)`` (anterior); ``R_g(theta) s0 = (sin t, -cos t, 0)``, so gantry 90 puts
  the source at +x (patient's left), gantry 180 posterior, gantry 270 at the patient's right.
* Couch (patient support) rotation ``phi`` is about the vertical (y) axis, positive
  counter-clockwise seen from above. Turning the patient by ``phi`` turns the room, seen from
  the patient, by ``-phi`` about the vertical; expressed in patient coordinates::

      R_c(phi) = [[ cos p, 0, sin p],
                  [ 0,     1, 0    ],
                  [-sin p, 0, cos p]]

  and the source direction is ``s = R_c(phi) R_g(theta) s0``. Gantry 90 / couch 90 puts the
  source at ``-z`` (inferior): the couch swings the patient's head away from the gantry's
  right-hand side, so the beam enters from the feet end.
* Beam's-eye-view (fluence-plane) axes are the rotated patient axes
  ``e_u = R (1, 0, 0)`` and ``e_v = R (0, 0, 1)``: at gantry 0 / couch 0 the fluence map's
  columns run along +x and its rows along +z. The beam axis ``e_b = -s`` points from the
  source through the isocentre.
* A point ``P`` projects onto the isocentre plane at ``u = SAD (P - S).e_u / t``,
  ``v = SAD (P - S).e_v / t`` with ``t = (P - S).e_b`` its distance from the source along the
  beam axis.

Bixels are squares of side ``bixel_mm`` in the isocentre plane; bixel ``(r, c)`` of a
:class:`BixelGrid` has its centre at ``u = (c0 + c) h``, ``v = (r0 + r) h`` (the central axis
passes through a bixel centre, as in matRad).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from .._lazy import load
from .._util import check_positive
from .geometry import Grid
from .validate import check_bixels

# imported on first use (rtlab._lazy): scipy.ndimage is most of `import rtlab`'s time
ndimage = load("scipy.ndimage")

__all__ = ["Beam", "BixelGrid", "rotation_matrix", "fit_bixel_grid", "prepare_beams", "target_union"]


def rotation_matrix(gantry_deg: float, couch_deg: float = 0.0) -> np.ndarray:
    """``R = R_c(couch) @ R_g(gantry)`` in ``(x, y, z)`` component order (see module docstring)."""
    t = np.deg2rad(float(gantry_deg))
    p = np.deg2rad(float(couch_deg))
    rg = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    rc = np.array([[np.cos(p), 0.0, np.sin(p)], [0.0, 1.0, 0.0], [-np.sin(p), 0.0, np.cos(p)]])
    return rc @ rg


def _xyz_to_zyx(v):
    return np.asarray(v, float)[..., ::-1]


@dataclass(frozen=True)
class BixelGrid:
    """The active bixels of one beam on a regular grid in the isocentre plane.

    Parameters
    ----------
    bixel_mm : float
        Bixel side (mm) at the isocentre plane.
    r0, c0 : int
        Grid index of the first row (v) and column (u): bixel ``(r, c)`` is centred at
        ``v = (r0 + r) * bixel_mm``, ``u = (c0 + c) * bixel_mm``.
    mask : ndarray of bool, shape (n_rows, n_cols)
        Which bixels exist. Columns of the influence matrix follow row-major order of ``mask``.
    """

    bixel_mm: float
    r0: int
    c0: int
    mask: np.ndarray

    def __post_init__(self):
        m = np.asarray(self.mask, bool)
        if m.ndim != 2:
            raise ValueError(f"mask must be 2D (rows v, columns u), got shape {m.shape}")
        if not m.any():
            raise ValueError("the bixel grid has no bixels (zero field); check the target and the beam geometry")
        object.__setattr__(self, "mask", m)

    @property
    def n(self) -> int:
        """Number of bixels (beamlets)."""
        return int(self.mask.sum())

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    def index_map(self) -> np.ndarray:
        """int32 array ``(n_rows, n_cols)``: beamlet number within the beam, -1 where no bixel."""
        im = np.full(self.mask.shape, -1, np.int32)
        im[self.mask] = np.arange(self.n, dtype=np.int32)
        return im

    def centers(self) -> np.ndarray:
        """``(n, 2)`` array of bixel centres ``(v, u)`` in mm, in beamlet order."""
        r, c = np.nonzero(self.mask)
        return np.stack([(self.r0 + r) * self.bixel_mm, (self.c0 + c) * self.bixel_mm], axis=1)

    def to_map(self, weights) -> np.ndarray:
        """Scatter a beamlet vector ``(n,)`` into a 2D map ``(n_rows, n_cols)`` (0 where no bixel)."""
        w = np.asarray(weights, float).ravel()
        if w.size != self.n:
            raise ValueError(f"weights has {w.size} entries, this beam has {self.n} bixels")
        out = np.zeros(self.mask.shape)
        out[self.mask] = w
        return out

    def from_map(self, fmap) -> np.ndarray:
        """Gather a 2D map ``(n_rows, n_cols)`` into the beamlet vector."""
        f = np.asarray(fmap, float)
        if f.shape != self.mask.shape:
            raise ValueError(f"fluence map has shape {f.shape}, expected {self.mask.shape} (rows v, cols u)")
        return f[self.mask]

    def extent_mm(self) -> tuple[float, float, float, float]:
        """``(v_min, v_max, u_min, u_max)`` of the bixel edges in mm."""
        h = self.bixel_mm
        nr, nc = self.mask.shape
        return ((self.r0 - 0.5) * h, (self.r0 + nr - 0.5) * h, (self.c0 - 0.5) * h, (self.c0 + nc - 0.5) * h)


@dataclass(frozen=True)
class Beam:
    """One static photon beam.

    Parameters
    ----------
    gantry : float
        Gantry angle in degrees (IEC 61217).
    couch : float
        Couch angle in degrees.
    isocenter : tuple of float
        ``(z, y, x)`` in mm.
    bixel_mm : float
        Bixel size at the isocentre plane (mm), default 5.
    sad : float
        Source-axis distance (mm), default 1000.
    bixels : BixelGrid, optional
        Active bixels; fitted to the target by :func:`fit_bixel_grid` when omitted.
    """

    gantry: float
    couch: float = 0.0
    isocenter: tuple = (0.0, 0.0, 0.0)
    bixel_mm: float = 5.0
    sad: float = 1000.0
    bixels: BixelGrid | None = None

    def __post_init__(self):
        for nm in ("gantry", "couch"):
            v = getattr(self, nm)
            if not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
                raise ValueError(f"{nm} must be a finite angle in degrees, got {v!r}")
        iso = np.asarray(self.isocenter, float).ravel()
        if iso.shape != (3,) or not np.all(np.isfinite(iso)):
            raise ValueError(f"isocenter must be three finite numbers (z, y, x) in mm, got {self.isocenter!r}")
        object.__setattr__(self, "isocenter", tuple(iso.tolist()))
        (b,) = check_positive("bixel_mm", self.bixel_mm)
        (s,) = check_positive("sad", self.sad)
        object.__setattr__(self, "bixel_mm", b)
        object.__setattr__(self, "sad", s)
        if self.bixels is not None and abs(self.bixels.bixel_mm - b) > 1e-9:
            raise ValueError("bixels.bixel_mm differs from bixel_mm; build the bixel grid for this beam")

    # -- frame ------------------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:
        """Rotation matrix in (x, y, z) order, see the module docstring."""
        return rotation_matrix(self.gantry, self.couch)

    def frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors ``(e_u, e_v, e_b)`` in ``(z, y, x)`` order."""
        r = self.rotation
        eu = _xyz_to_zyx(r @ [1.0, 0.0, 0.0])
        ev = _xyz_to_zyx(r @ [0.0, 0.0, 1.0])
        eb = -_xyz_to_zyx(r @ [0.0, -1.0, 0.0])
        return eu, ev, eb

    @property
    def source(self) -> np.ndarray:
        """Source position ``(z, y, x)`` in mm."""
        _, _, eb = self.frame()
        return np.asarray(self.isocenter) - self.sad * eb

    def project(self, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project world points ``(..., 3)`` (z, y, x mm) to ``(u, v, t)``.

        ``u, v`` are isocentre-plane coordinates (mm), ``t`` the distance from the source
        along the beam axis (mm); points behind the source get ``t <= 0``.
        """
        p = np.asarray(points, float) - self.source
        eu, ev, eb = self.frame()
        t = p @ eb
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.sad * (p @ eu) / t
            v = self.sad * (p @ ev) / t
        return u, v, t

    def with_bixels(self, bixels: BixelGrid) -> "Beam":
        return replace(self, bixels=bixels)


def fit_bixel_grid(beam: Beam, grid, mask, margin: int = 1) -> BixelGrid:
    """Bixels covering the beam's-eye-view projection of ``mask`` plus ``margin`` bixels.

    Every voxel centre of ``mask`` (and the 8 corners of its voxel, so that small targets are
    covered) is projected onto the isocentre plane; the bixels containing a projection are
    active, then the set is dilated by ``margin`` bixels (square neighbourhood).

    Raises
    ------
    ValueError
        If ``mask`` is empty or projects behind the source.
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
    corners = _mask_corner_points(grid, grid.check_array("mask", mask).astype(bool))
    _check_margin(margin)
    return _fit_to_points(beam, corners, margin)


def _check_margin(margin) -> None:
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be a non-negative integer number of bixels, got {margin!r}")


def _mask_corner_points(grid, m) -> np.ndarray:
    """The 8 corners of every voxel of the bool mask ``m``, world ``(z, y, x)`` mm, (8 n, 3).

    Raises ValueError if ``m`` is empty (no target to fit bixels to).
    """
    idx = np.argwhere(m)
    if idx.size == 0:
        raise ValueError("mask is empty: no target to fit the bixel grid to (zero field); pass a non-empty target")
    pts = grid.index_to_world(idx)
    half = np.asarray(grid.spacing) / 2
    corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * half
    return (pts[:, None, :] + corners[None]).reshape(-1, 3)


def _fit_to_points(beam: Beam, allp: np.ndarray, margin: int) -> BixelGrid:
    """:func:`fit_bixel_grid` on the corner points of :func:`_mask_corner_points` (computed once per case)."""
    u, v, t = beam.project(allp)
    if np.any(t <= 0):
        raise ValueError("part of the target lies behind the source; check the isocenter and SAD")
    h = beam.bixel_mm
    cu = np.rint(u / h).astype(np.int64)
    cv = np.rint(v / h).astype(np.int64)
    c0, r0 = cu.min() - margin, cv.min() - margin
    nc, nr = cu.max() - c0 + 1 + margin, cv.max() - r0 + 1 + margin
    check_bixels((nr, nc), h, f"the bixel grid of the beam at gantry {beam.gantry:g} deg")
    mk = np.zeros((nr, nc), bool)
    mk[cv - r0, cu - c0] = True
    if margin:
        mk = ndimage.binary_dilation(mk, structure=np.ones((2 * margin + 1,) * 2, bool))
    return BixelGrid(h, int(r0), int(c0), mk)


def target_union(case) -> np.ndarray:
    """Union of the case's target masks (bool, CT grid): what bixel grids are fitted to.

    Raises
    ------
    ValueError
        The case has no target structure.
    """
    t = case.structures.targets
    if not t:
        raise ValueError("the case has no target structure to fit bixels to; give beams with explicit bixels "
                         "(rtlab.core.beams.fit_bixel_grid) or add a target")
    m = np.zeros(case.grid.shape, bool)
    for s in t:
        m |= s.mask
    return m


def prepare_beams(case, beams, bixel_mm: float = 5.0, margin: int = 1) -> list[Beam]:
    """Normalise ``beams`` to :class:`Beam` objects with bixel grids.

    Accepts :class:`Beam`, :class:`rtlab.core.case.BeamSpec` or plain gantry angles
    (degrees; isocentre = ``case.isocenter()``). Bixels are fitted to the union of the
    case's targets (:func:`target_union`) with ``margin`` bixels where a beam has none.

    Raises
    ------
    ValueError
        No beams, an isocentre outside the CT grid, or a zero field.
    """
    if beams is None or len(beams) == 0:
        raise ValueError("beams is empty; pass at least one gantry angle or Beam")
    _check_margin(margin)
    out = []
    corners = None  # the targets' voxel corners, computed once for all beams
    case_iso = None  # case.isocenter(), computed once (a centroid over the CT grid)

    def default_iso():
        nonlocal case_iso
        if case_iso is None:
            case_iso = tuple(case.isocenter())
        return case_iso

    for b in beams:
        if isinstance(b, Beam):
            beam = b
        elif hasattr(b, "gantry"):
            iso = default_iso() if getattr(b, "isocenter", None) is None else b.isocenter
            beam = Beam(float(b.gantry), float(getattr(b, "couch", 0.0)), tuple(iso), bixel_mm)
        elif np.isscalar(b):
            beam = Beam(float(b), 0.0, default_iso(), bixel_mm)
        else:
            raise TypeError(f"beams entries must be Beam, BeamSpec or gantry angles, got {type(b).__name__}")
        if not case.grid.contains(beam.isocenter):
            raise ValueError(f"isocenter {beam.isocenter} mm lies outside the CT grid "
                             f"(bounds z/y/x {case.grid.bounds.round(1).tolist()} mm); move it inside the patient")
        if beam.bixels is None:
            if corners is None:
                corners = _mask_corner_points(case.grid, target_union(case))
            beam = beam.with_bixels(_fit_to_points(beam, corners, int(margin)))
        out.append(beam)
    return out
