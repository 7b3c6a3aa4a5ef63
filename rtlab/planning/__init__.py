"""Planning: a case and its settings in, an optimised, scored plan out.

``plan_case(case, ...)`` is ``optimise_plan(prepare_plan(case, ...), ...)``:

* :mod:`~rtlab.planning.settings` -- :class:`PlanSettings`, every setting of a plan (objective,
  falloff, control points, bixel size, ``dose_grid_mm``, recipe, weights, solver), frozen and
  checked once; the recipe tables :data:`CONFORMITY_RECIPE` and :data:`QUADRATIC_RECIPE`;
* :mod:`~rtlab.planning.recipes` -- :func:`build_objective`: the objective terms of a recipe on a
  plan's evaluation operator (:class:`rtlab.dose.PlanOperator`);
* :mod:`~rtlab.planning.problem` -- :func:`prepare_plan` -> :class:`PlanProblem` (influence
  matrix, operator, objective, start point); :meth:`PlanProblem.with_objective`;
* :mod:`~rtlab.planning.pipeline` -- :func:`optimise_plan` -> :class:`PlanResult` (dose, MU,
  history, scores, review), :func:`plan_case`;
* :mod:`~rtlab.planning.rtplan` -- DICOM RT Plans: :func:`export_plan_dicom` (a sequenced plan as
  CT, RTSTRUCT, RTDOSE and RT Plan), :func:`recompute_rtplan` (an RT Plan's dose with rtlab's
  engine), :func:`gamma_against` (against its RTDOSE).
* :mod:`~rtlab.planning.intent` -- :func:`with_goals` (the file's goals or TG-119's),
  :func:`matrad_terms` (a matRad file's own objective, ``objective='matrad'``).

See ``docs/methods/planning.md``.
"""

from ..dose.operator import PlanOperator, trilinear_matrix
from ..evaluate.compare import score_summary
from .intent import GOAL_SETS, matrad_terms, tg119_goals, with_goals
from .pipeline import PlanResult, failing_goals, meet_goals, optimise_plan, plan_case
from .problem import PlanProblem, angles_for, prepare_plan
from .recipes import build_objective, region_of_interest
from .rtplan import RecomputedPlan, delivery_to_rtplan, export_plan_dicom, gamma_against, recompute_rtplan
from .warm_start import WARM_STARTS, warm_start
from .settings import (CONFORMITY_RECIPE, OBJECTIVES, QUADRATIC_RECIPE, PlanSettings, control_point_find_options,
                       full_recipe)

__all__ = [
    "plan_case",
    "prepare_plan",
    "warm_start",
    "WARM_STARTS",
    "optimise_plan",
    "meet_goals",
    "failing_goals",
    "PlanSettings",
    "PlanProblem",
    "PlanResult",
    "PlanOperator",
    "trilinear_matrix",
    "build_objective",
    "score_summary",
    "region_of_interest",
    "angles_for",
    "full_recipe",
    "CONFORMITY_RECIPE",
    "QUADRATIC_RECIPE",
    "control_point_find_options",
    "OBJECTIVES",
    "delivery_to_rtplan",
    "export_plan_dicom",
    "recompute_rtplan",
    "gamma_against",
    "RecomputedPlan",
    "with_goals",
    "tg119_goals",
    "matrad_terms",
    "GOAL_SETS",
]
