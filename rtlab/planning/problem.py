"""A planning problem: influence matrix, evaluation operator, objective and start point.

:func:`prepare_plan` makes a :class:`PlanProblem` (the expensive part: ray tracing and the
operators); :meth:`PlanProblem.with_objective` derives another objective on the same influence
matrix without rebuilding it (what the panels do when the user changes weights, ``w1``/``w2``,
the steepness or the falloff); :func:`rtlab.planning.optimise_plan` solves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from ..core.case import Case
from ..dose import build_influence, resolve_machine
from ..dose.operator import PlanOperator
from ..methods.conformity import ConformityTerm
from ..optimize import SquaredDeviation
from .recipes import build_objective, guard_mask, region_of_interest, targets_with_rx
from .intent import matrad_structures_mask
from .settings import OBJECTIVES, PlanSettings

__all__ = ["PlanProblem", "prepare_plan", "angles_for"]


def angles_for(case, angles=None) -> list[float]:
    """Gantry angles (deg): ``angles`` checked, else the case's suggested beams, else 0:72:288."""
    if angles is None:
        if case.beams:
            return [float(b.gantry) for b in case.beams]
        return [0.0, 72.0, 144.0, 216.0, 288.0]
    if np.isscalar(angles):
        raise TypeError("angles must be a sequence of gantry angles in degrees, e.g. [0, 72, 144, 216, 288]")
    a = [float(v) for v in angles]
    if not a:
        raise ValueError("angles is empty; pass at least one gantry angle (degrees)")
    if not all(np.isfinite(a)):
        raise ValueError(f"angles must be finite numbers (degrees), got {angles!r}")
    return a


_KEEP = object()  # "keep the problem's current value" in PlanProblem.with_objective


@dataclass
class PlanProblem:
    """A planning problem ready to optimise: influence matrix, operator, objective, start point.

    Made by :func:`prepare_plan` (the expensive part: ray tracing and the operators); solved by
    :func:`optimise_plan`. :meth:`with_objective` derives a problem with another objective on
    the same influence matrix and operator (no rebuild), e.g. after the user changes weights,
    ``w1``/``w2``, the sigmoid steepness or the falloff gradient.

    Attributes
    ----------
    case : Case
    angles : list of float
        Gantry angles (deg).
    influence : rtlab.dose.InfluenceMatrix
    operator : PlanOperator
    objective : rtlab.optimize.Objective
    info : dict
        ``levels``, ``control_points`` and ``recipe`` from :func:`build_objective`.
    x0 : ndarray
        Preliminary beamlet weights: uniform, scaled so that the median dose of the first
        target is its prescription (Gy).
    settings : PlanSettings
        Everything the problem was made with (objective, falloff, control points, bixel and
        dose-grid sizes, recipe overrides, term weights, ``w1``/``w2``, ...); ``settings.recipe``
        is the full recipe used.
    build_s : float
        Wall time of :func:`prepare_plan` (s); a derived problem adds its objective build time.
    """

    case: object
    angles: list
    influence: object
    operator: PlanOperator
    objective: object
    info: dict
    x0: np.ndarray
    settings: PlanSettings
    build_s: float

    def target_terms(self) -> list[str]:
        """Names of the per-target terms: conformity terms (conformity recipe, including the
        falloff levels and ring), else the targets' deviation terms (quadratic recipe)."""
        kind = ConformityTerm if self.settings.objective == "conformity" else SquaredDeviation
        return [t.name for t in self.objective if isinstance(t, kind)]

    def with_objective(self, objective=_KEEP, falloff=_KEEP, control_points=_KEEP, recipe=_KEEP, *,
                       weights=_KEEP, w1=_KEEP, w2=_KEEP) -> "PlanProblem":
        """A new problem with another objective on the same influence matrix and operator.

        Arguments left out keep this problem's values, except that switching the recipe
        (``objective``) drops the recipe overrides, term weights and ``w1``/``w2``, and switching to
        ``'quadratic'`` turns ``falloff`` and ``control_points`` off (conformity only).

        Parameters
        ----------
        objective : {'conformity', 'quadratic'}
        falloff : float or None
            Dose falloff gradient ``G`` (Gy/mm, patent 000 eqs 16-17); ``None`` = off.
        control_points : bool
        recipe : mapping or None
            Overrides of the recipe entries (e.g. ``{'steepness': 30, 'coverage_weight': 0.2}``),
            relative to :data:`CONFORMITY_RECIPE` / :data:`QUADRATIC_RECIPE`; e.g.
            ``{'control_point_find': {'mode': '3d'}}`` finds the control points with spheres.
        weights : mapping term name -> float, or None
            Importance weights of individual terms set after the recipe, e.g.
            ``{'PTV conformity': 2.0}`` (the per-target weights ``w_I`` of eq 6).
        w1, w2 : float or None
            Split conformity objective ``w1 (F - C1)^2 + w2 (S - C2)^2`` (patent 000 eq 7) for
            every conformity term; both ``None`` = the product form of eq 8. One given alone
            pairs with 1.

        Returns
        -------
        PlanProblem
            Shares ``case``, ``angles``, ``influence``, ``operator`` and ``x0`` with this one.
        """
        s = self.settings
        same = objective is _KEEP or objective == s.objective
        obj = s.objective if objective is _KEEP else objective
        if obj not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {obj!r}")
        conf = obj == "conformity"
        fo = (s.falloff_gy_per_mm if conf else None) if falloff is _KEEP else falloff
        cp = (s.control_points if conf else False) if control_points is _KEEP else bool(control_points)
        rec = (s.recipe_overrides if same else None) if recipe is _KEEP else recipe
        tw = (s.term_weights if same else None) if weights is _KEEP else weights
        a = (s.w1 if same else None) if w1 is _KEEP else w1
        b = (s.w2 if same else None) if w2 is _KEEP else w2
        t0 = time.perf_counter()
        settings = replace(s, objective=obj, falloff_gy_per_mm=fo, control_points=cp, recipe_overrides=rec or None,
                           term_weights=tw or None, w1=a, w2=b)
        objective_, info = build_objective(self.case, self.operator, settings=settings)
        return PlanProblem(case=self.case, angles=self.angles, influence=self.influence, operator=self.operator,
                           objective=objective_, info=info, x0=self.x0, settings=settings,
                           build_s=self.build_s + (time.perf_counter() - t0))

    def __repr__(self) -> str:
        s = self.settings
        return (f"PlanProblem({self.case.name!r}, {len(self.angles)} beams, {self.operator.shape[1]} beamlets, "
                f"objective={s.objective!r}, falloff={s.falloff_gy_per_mm}, terms={len(self.objective)}, "
                f"build {self.build_s:.2f} s)")


def prepare_plan(case, angles: Sequence[float] | None = None, objective: str = "conformity",
                 falloff: float | None = None, control_points: bool = False, bixel_mm: float = 5.0,
                 dose_grid_mm: float | None = None, *, rx: float | None = None, roi_mm: float = 20.0,
                 recipe: Mapping | None = None, machine=None, cutoff_mm: float | None = None,
                 backend: str = "numba", progress: bool = False, influence=None,
                 settings: PlanSettings | None = None) -> PlanProblem:
    """First half of :func:`plan_case`: influence matrix, operator, objective and start point.

    Parameters are those of :func:`plan_case` without the solver settings, and:

    influence : rtlab.dose.InfluenceMatrix, optional
        An influence matrix already built for this case (e.g. per-beam matrices built by
        separate batch tasks and joined). Its beams give the angles and the bixel size, its grid
        the dose grid; ``angles``, ``bixel_mm``, ``dose_grid_mm``, ``machine`` and ``cutoff_mm``
        are then ignored.
    machine : rtlab.dose.Machine, str or path-like, optional
        The beam model: a Machine, a built-in name (:data:`rtlab.dose.BUILTIN_MACHINES`) or the
        path of a matRad photon machine file (:func:`rtlab.dose.resolve_machine`); default
        :func:`rtlab.dose.generic_6mv`.
    settings : PlanSettings, optional
        All settings at once (then ``objective`` ... ``backend`` are not used).

    Returns
    -------
    PlanProblem
        Solve it with :func:`optimise_plan`; derive other objectives on the same operator with
        :meth:`PlanProblem.with_objective`.
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.core.case.Case (e.g. rtlab.phantoms.get_phantom(...)), got {type(case).__name__}")
    if settings is None:
        settings = PlanSettings(objective=objective, falloff_gy_per_mm=falloff, control_points=control_points,
                                bixel_mm=bixel_mm, dose_grid_mm=dose_grid_mm, roi_mm=roi_mm, rx=rx,
                                recipe_overrides=recipe, cutoff_mm=cutoff_mm, backend=backend)
    elif not isinstance(settings, PlanSettings):
        raise TypeError(f"settings must be an rtlab.planning.PlanSettings, got {type(settings).__name__}")
    t0 = time.perf_counter()
    if influence is not None:
        im = influence
        if not hasattr(im, "ct_grid") or not hasattr(im, "beams"):
            raise TypeError(f"influence must be an rtlab.dose.InfluenceMatrix, got {type(im).__name__}")
        if not im.ct_grid.is_same(case.grid):
            raise ValueError("influence was built on another CT grid than case; build it from this case")
        angles = [float(b.gantry) for b in im.beams]
        settings = replace(settings, bixel_mm=float(im.beams[0].bixel_mm),
                           dose_grid_mm=None if im.grid.is_same(case.grid) else float(im.grid.spacing[0]))
        t0 -= float(im.timings.get("total_s", 0.0))  # count the (earlier) build in build_s
    else:
        angles = angles_for(case, angles)
        im = build_influence(case, angles, machine=resolve_machine(machine, "machine"), dose_grid_mm=settings.dose_grid_mm,
                             cutoff_mm=settings.cutoff_mm,
                             progress=progress, bixel_mm=settings.bixel_mm)
    roi = None if im.grid.is_same(case.grid) else region_of_interest(case, settings.roi_mm)
    if roi is not None and settings.objective == "matrad":
        roi |= matrad_structures_mask(case)  # matRad evaluates its objectives on every voxel of a structure
    op = PlanOperator(im, roi=roi, backend=settings.backend, dose_mask=None if roi is None else
                      guard_mask(im.grid, settings.recipe))
    obj, info = build_objective(case, op, settings=settings)
    targets = targets_with_rx(case, settings.rx)
    t_rows = op.ct_rows(targets[0][0].mask, missing="raise")
    d1 = op.matvec(np.ones(op.shape[1]))
    med = float(np.median(d1[t_rows]))
    if not med > 0:
        raise ValueError("the beams give no dose to the target; check the angles and the isocentre")
    x0 = np.full(op.shape[1], targets[0][1] / med)
    build_s = time.perf_counter() - t0
    return PlanProblem(case=case, angles=angles, influence=im, operator=op, objective=obj, info=info, x0=x0,
                       settings=settings, build_s=build_s)
