"""What an interactive dose shaping session reports (:class:`IDSEvent`) and returns (:class:`IDSResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["IDSEvent", "IDSResult"]


@dataclass
class IDSEvent:
    """What a session reports to its callbacks after every modification / recovery step.

    Attributes
    ----------
    kind : str
        ``'request'``, ``'recovery'``, ``'recovery_done'``, ``'undo'``, ``'redo'``, ``'reset'``.
    step : int
        Recovery step number (1-based) within the current :meth:`IDSSession.recover` call, else 0.
    n_steps : int
        Steps requested in that call.
    voxel : tuple or None
        ``(z, y, x)`` index of the voxel the step acted on.
    goal_gy, dose_gy : float
        Wanted and achieved dose of that voxel (Gy).
    n_disturbed : int
        Tracked voxels still disturbed after the step.
    disturbance_gy : float
        Sum of ``|dose - goal|`` over the disturbed voxels (Gy).
    """

    kind: str
    step: int = 0
    n_steps: int = 0
    voxel: tuple | None = None
    goal_gy: float = float("nan")
    dose_gy: float = float("nan")
    n_disturbed: int = 0
    disturbance_gy: float = 0.0


@dataclass
class IDSResult:
    """A plan-like result that :func:`rtlab.evaluate.compare.score` accepts (``.dose`` Gy, ``.mu``, ``.grid``)."""

    dose: np.ndarray
    mu: np.ndarray
    grid: object
    fluence: list = field(default_factory=list)
