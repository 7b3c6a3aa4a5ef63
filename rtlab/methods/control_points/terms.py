"""Control points as dose targets (patent 000, para. 179-181): inside ``dose >= D1``, outside
``dose <= D2`` (:func:`control_point_targets`, :class:`ControlPointTerm`).
"""

from __future__ import annotations

import numpy as np

from ..._util import check_finite, check_positive
from .filters import ControlPoints

__all__ = ["control_point_targets", "ControlPointTerm"]


def control_point_targets(points: ControlPoints, dose_inside: float, dose_outside: float):
    """Dose targets of the control points (patent 000, para. 180).

    Parameters
    ----------
    points : ControlPoints
    dose_inside : float
        First dose threshold D1 (Gy): control points inside the target should get >= D1.
    dose_outside : float
        Second dose threshold D2 (Gy): control points outside should get <= D2.

    Returns
    -------
    voxel_index : ndarray of int64, shape (k,)
        Flat C-order indices into a dose array of ``points.shape``.
    inside : ndarray of bool, shape (k,)
        True: lower bound (raise dose to >= bound); False: upper bound.
    bound : ndarray of float64, shape (k,)
        The bound in Gy.
    """
    if not isinstance(points, ControlPoints):
        raise TypeError(f"points must be a ControlPoints (from find_control_points), got {type(points).__name__}")
    (d1,) = check_positive("dose_inside (Gy)", dose_inside, allow_zero=True)
    (d2,) = check_positive("dose_outside (Gy)", dose_outside, allow_zero=True)
    vi = points.flat_index(control_only=True)
    ins = points.inside[points.is_control].copy()
    bound = np.where(ins, d1, d2).astype(np.float64)
    return vi, ins, bound


class ControlPointTerm:
    """Quadratic penalty on control-point dose-bound violations (patent 000, para. 180).

    ``value(d) = weight / k * sum_i v_i^2`` with ``v_i = max(0, bound_i - d[idx_i])`` for lower
    bounds (inside points) and ``v_i = max(0, d[idx_i] - bound_i)`` for upper bounds (outside
    points), ``k`` the number of control points.

    Interface (duck-type compatible with ``rtlab.optimize`` terms): ``value(dose) -> float`` and
    ``gradient(dose) -> ndarray`` of ``dose``'s shape, where ``dose`` is the full dose over the
    grid (flat vector or grid-shaped array, Gy) and ``voxel_index`` holds flat C-order indices.

    Parameters
    ----------
    voxel_index : array of int, shape (k,)
    inside : array of bool, shape (k,)
        True: lower bound ("raise to >= bound"); False: upper bound ("lower to <= bound").
    bound : array of float, shape (k,) or scalar
        Dose bounds in Gy.
    weight : float
        Term weight (>= 0).
    name : str
    """

    def __init__(self, voxel_index, inside, bound, weight: float = 1.0, name: str = "control points"):
        vi = np.asarray(voxel_index)
        if vi.ndim != 1 or vi.dtype.kind not in "iu":
            raise TypeError(f"voxel_index must be a 1-D integer array of flat voxel indices, got {vi.dtype} shape {vi.shape}")
        if vi.size and vi.min() < 0:
            raise ValueError("voxel_index holds negative indices; pass flat C-order indices into the dose grid")
        ins = np.asarray(inside)
        if ins.shape != vi.shape or ins.dtype != bool:
            raise ValueError(f"inside must be a boolean array of shape {vi.shape} (one flag per voxel_index)")
        bd = np.broadcast_to(np.asarray(bound, dtype=np.float64), vi.shape).copy()
        check_finite("bound", bd)
        (w,) = check_positive("weight", weight, allow_zero=True)
        self.voxel_index = vi.astype(np.int64)
        self.inside = ins
        self.bound = bd
        self.weight = w
        self.name = name

    @classmethod
    def from_control_points(cls, points: ControlPoints, dose_inside: float, dose_outside: float,
                            weight: float = 1.0) -> "ControlPointTerm":
        """Build the term from :func:`find_control_points` output and the two dose thresholds."""
        vi, ins, bd = control_point_targets(points, dose_inside, dose_outside)
        return cls(vi, ins, bd, weight=weight)

    def __repr__(self) -> str:
        return (f"ControlPointTerm({self.voxel_index.size} points, {int(self.inside.sum())} lower / "
                f"{int((~self.inside).sum())} upper bounds, weight={self.weight:g})")

    def _violation(self, dose):
        d = np.asarray(dose, dtype=np.float64).ravel()
        if self.voxel_index.size and self.voxel_index.max() >= d.size:
            raise ValueError(
                f"dose has {d.size} voxels but voxel_index reaches {int(self.voxel_index.max())}; "
                "pass the full dose grid (flat or shaped) the control points were found on"
            )
        x = d[self.voxel_index]
        return np.where(self.inside, np.maximum(self.bound - x, 0.0), np.maximum(x - self.bound, 0.0))

    def value(self, dose) -> float:
        """Penalty value (Gy^2 times weight)."""
        if self.voxel_index.size == 0:
            return 0.0
        v = self._violation(dose)
        return float(self.weight * np.mean(v * v))

    def gradient(self, dose) -> np.ndarray:
        """d value / d dose, same shape as ``dose`` (Gy)."""
        d = np.asarray(dose)
        g = np.zeros(d.size)
        if self.voxel_index.size:
            v = self._violation(d)
            sign = np.where(self.inside, -1.0, 1.0)
            np.add.at(g, self.voxel_index, 2.0 * self.weight / v.size * v * sign)
        return g.reshape(d.shape)
