"""Moved to :mod:`rtlab.methods.gk` (problem, isocentres, plan); this module re-exports them for one
release (removed in 0.3)."""

from .gk.isocentres import blas_single_thread, initial_shots, optimize_pgd, optimize_smooth, optimize_times
from .gk.plan import GKResult, crop_to_target, gk_summary, plan_gamma_knife
from .gk.problem import (GKPlan, PlanningProblem, build_problem, evaluate_plan, loss_from_dose, normalize_coverage,
                         plan_loss, target_as_mask)

__all__ = ["GKPlan", "PlanningProblem", "build_problem", "plan_loss", "initial_shots", "optimize_times",
           "optimize_pgd", "optimize_smooth", "normalize_coverage", "evaluate_plan", "GKResult", "plan_gamma_knife",
           "crop_to_target", "gk_summary", "blas_single_thread", "target_as_mask", "loss_from_dose"]
