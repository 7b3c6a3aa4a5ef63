"""Objective terms and solvers for beamlet-weight (fluence) optimisation.

``d = A @ x`` (Gy) with ``A`` the influence matrix of :mod:`rtlab.dose`; terms give a value and
a gradient with respect to voxel dose; solvers chain it to the weights (``A.T @ grad_d``) and
keep ``x >= 0``. See ``docs/methods/conformity.md`` for an end-to-end example.
"""

from .terms import (
    DVHMax,
    DVHMin,
    MaxDose,
    MeanDose,
    Objective,
    SquaredDeviation,
    SquaredOverdose,
    SquaredUnderdose,
    Term,
    rows_for,
    smooth_max,
)
from .solver import STATUSES, History, OptimizationResult, Solver, solve
from .review import PlanSession

__all__ = [
    "Term", "Objective", "rows_for", "smooth_max",
    "SquaredUnderdose", "SquaredOverdose", "SquaredDeviation", "MeanDose", "MaxDose",
    "DVHMin", "DVHMax",
    "Solver", "solve", "History", "OptimizationResult", "STATUSES",
    "PlanSession",
]
