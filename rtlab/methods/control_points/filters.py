"""Filters, thresholds and results of the control-point search (patent 000, para. 167-196).

:class:`RingFilter` (a ring or disk/ball around a sampling point), :class:`Thresholds` (the
decision rule), :class:`ControlPoints` (what :func:`~rtlab.methods.control_points.find_control_points`
returns), and the measures of a flat boundary that the bulge parameter compares against
(:func:`flat_fraction`, :func:`flat_area_3d`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


__all__ = ["RingFilter", "Thresholds", "ControlPoints", "flat_fraction", "flat_area_3d", "N_SUB"]


#: Sub-samples per axis for the voxel/region overlap of the enclosed measure.
N_SUB = 5


@dataclass(frozen=True)
class RingFilter:
    """A filter of two concentric closed boundaries (patent 000, para. 167, FIG. 13).

    Parameters
    ----------
    outer_mm : float
        Outer radius ``b`` in mm (circle in 2D, sphere in 3D); > 0.
    inner_mm : float, optional
        Inner radius ``a`` in mm, ``0 <= a < b``. ``a = 0`` is the single-boundary filter
        (disk/ball, FIGs 16 and 18).
    """

    outer_mm: float
    inner_mm: float = 0.0

    def __post_init__(self):
        for name, v in (("outer_mm", self.outer_mm), ("inner_mm", self.inner_mm)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"RingFilter.{name} must be a number in mm, got {v!r}")
            if not np.isfinite(v):
                raise ValueError(f"RingFilter.{name} must be finite, got {v!r}")
        if self.outer_mm <= 0:
            raise ValueError(f"RingFilter.outer_mm (b) must be positive, got {self.outer_mm!r} mm")
        if self.inner_mm < 0:
            raise ValueError(f"RingFilter.inner_mm (a) must be >= 0 (0 = disk/ball filter), got {self.inner_mm!r} mm")
        if self.inner_mm >= self.outer_mm:
            raise ValueError(
                f"RingFilter needs inner_mm (a) < outer_mm (b), got a={self.inner_mm!r}, b={self.outer_mm!r} mm; "
                "swap them or use inner_mm=0 for a single-boundary filter"
            )
        object.__setattr__(self, "outer_mm", float(self.outer_mm))
        object.__setattr__(self, "inner_mm", float(self.inner_mm))

    def region_measure(self, ndim: int) -> float:
        """Area (mm^2, 2D) or volume (mm^3, 3D) of the region ``a <= r <= b``."""
        a, b = self.inner_mm, self.outer_mm
        return math.pi * (b * b - a * a) if ndim == 2 else 4.0 / 3.0 * math.pi * (b**3 - a**3)


@dataclass(frozen=True)
class Thresholds:
    """Control-point tests (patent 000, para. 190-192, 196); ``None`` disables a test.

    A sampling point whose filter region holds boundary is a control point if any enabled
    test passes (strict ``>``).

    Parameters
    ----------
    ratio : float or None
        Chord-relative threshold on ``ratio`` (>= 1.0; the seed's x1.0, 1.1, 1.2, 1.3). Values
        below 1.1 flag discretisation noise on flat boundaries.
    bulge : float or None
        Threshold on ``|bulge|`` (dimensionless curvature parameter), e.g. 0.06.
    length : float or None
        Absolute threshold on the boundary length (mm, 2D) or area (mm^2, 3D) in the region.
    enclosed : float or None
        Absolute threshold on the enclosed target area (mm^2) / volume (mm^3) in the region.
    count : float or None
        Threshold on the number of boundary grid points in the region.
    """

    ratio: float | None = 1.1
    bulge: float | None = 0.06
    length: float | None = None
    enclosed: float | None = None
    count: float | None = None

    def __post_init__(self):
        vals = {k: getattr(self, k) for k in ("ratio", "bulge", "length", "enclosed", "count")}
        if all(v is None for v in vals.values()):
            raise ValueError("Thresholds: enable at least one test (ratio, bulge, length, enclosed or count)")
        for k, v in vals.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise TypeError(f"Thresholds.{k} must be a finite number or None, got {v!r}")
            if v < 0:
                raise ValueError(f"Thresholds.{k} must be >= 0, got {v!r}")
        if self.ratio is not None and self.ratio < 1.0:
            raise ValueError(
                f"Thresholds.ratio must be >= 1.0 (ratio is always >= 1; the seed uses 1.0-1.3), got {self.ratio!r}"
            )


@dataclass
class ControlPoints:
    """Sampling points, their contour parameters and the control-point decision.

    All per-point arrays have length ``n`` (number of sampling points). Indices are into the
    mask passed to :func:`find_control_points` (``(z, y, x)`` for 3D, ``(y, x)`` for 2D).

    Attributes
    ----------
    index : ndarray of int, shape (n, ndim)
    inside : ndarray of bool — sampling point lies in the target.
    length : boundary length (mm, 2D) or area (mm^2, 3D) inside the filter region.
    reference : chord reference (mm, 2D) or flat-plane reference area (mm^2, 3D).
    ratio : ``max(length/reference, reference/length)`` (nan where there is no boundary).
    enclosed : target area (mm^2) / volume (mm^3) inside the filter region.
    enclosed_fraction : ``enclosed`` divided by the region's measure.
    count : number of boundary grid points inside the region.
    distance : distance (mm) from the point to the nearest boundary point (inf if > b).
    bulge : signed curvature parameter (> 0 convex, < 0 concave).
    has_boundary : the filter region holds boundary.
    is_control : the point is a dose control point.
    """

    index: np.ndarray
    inside: np.ndarray
    length: np.ndarray
    reference: np.ndarray
    ratio: np.ndarray
    enclosed: np.ndarray
    enclosed_fraction: np.ndarray
    count: np.ndarray
    distance: np.ndarray
    bulge: np.ndarray
    has_boundary: np.ndarray
    is_control: np.ndarray
    shape: tuple
    spacing: tuple
    mode: str
    inside_filter: RingFilter
    outside_filter: RingFilter
    thresholds: Thresholds
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __repr__(self) -> str:
        return (
            f"ControlPoints(mode={self.mode!r}, {len(self)} sampling points, "
            f"{int(self.is_control.sum())} control points "
            f"({int((self.is_control & self.inside).sum())} inside, {int((self.is_control & ~self.inside).sum())} outside))"
        )

    @property
    def n_control(self) -> int:
        return int(self.is_control.sum())

    def flat_index(self, control_only: bool = True) -> np.ndarray:
        """Flat (C-order) indices into an array of ``shape`` (e.g. a raveled dose grid)."""
        idx = self.index[self.is_control] if control_only else self.index
        return np.ravel_multi_index(tuple(idx.T), self.shape).astype(np.int64)

    def as_mask(self, which: str = "control") -> np.ndarray:
        """Boolean map of ``shape``: ``which`` in {'control', 'sampling', 'inside', 'outside'}."""
        sel = {
            "control": self.is_control,
            "sampling": np.ones(len(self), bool),
            "inside": self.is_control & self.inside,
            "outside": self.is_control & ~self.inside,
        }
        if which not in sel:
            raise ValueError(f"which must be one of {sorted(sel)}, got {which!r}")
        m = np.zeros(self.shape, bool)
        idx = self.index[sel[which]]
        m[tuple(idx.T)] = True
        return m


def _cap(p: np.ndarray, r: float, ndim: int) -> np.ndarray:
    """Measure of the part of a disk/ball of radius ``r`` beyond a plane at distance ``p >= 0``.

    2D: circular segment ``r^2 acos(p/r) - p sqrt(r^2 - p^2)``; 3D: spherical cap
    ``pi h^2 (3r - h) / 3`` with ``h = r - p``. Zero for ``p >= r``.
    """
    p = np.minimum(np.asarray(p, float), r)
    if r <= 0:
        return np.zeros_like(p)
    if ndim == 2:
        return r * r * np.arccos(p / r) - p * np.sqrt(np.maximum(r * r - p * p, 0.0))
    h = r - p
    return np.pi * h * h * (3 * r - h) / 3.0


def flat_fraction(p, inside, flt: RingFilter, ndim: int) -> np.ndarray:
    """Fraction of the filter region on the target side of a flat boundary at distance ``p``."""
    beyond = (_cap(p, flt.outer_mm, ndim) - _cap(p, flt.inner_mm, ndim)) / flt.region_measure(ndim)
    return np.where(inside, 1.0 - beyond, beyond)


def flat_area_3d(p, flt: RingFilter) -> np.ndarray:
    """Area (mm^2) of a plane at distance ``p`` from the centre inside the shell ``a <= r <= b``."""
    a, b = flt.inner_mm, flt.outer_mm
    q = np.maximum(np.asarray(p, float), a)
    return np.where(q < b, np.pi * (b * b - q * q), 0.0)
