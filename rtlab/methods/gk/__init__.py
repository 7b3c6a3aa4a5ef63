"""Patent 002: planning through the differentiable dose -- Gamma-Knife shots and times, learning
through the dose, linac geometry gradients.

* :mod:`~rtlab.methods.gk.problem` -- the planning problem and its loss (eq 8);
* :mod:`~rtlab.methods.gk.isocentres` -- initial shots, projected subgradient (eq 9), smooth
  reformulation (eq 11), times with the shots fixed;
* :mod:`~rtlab.methods.gk.plan` -- :func:`plan_gamma_knife`, :func:`gk_summary`;
* :mod:`~rtlab.methods.gk.learning` -- a feature MLP trained through the point-kernel dose;
* :mod:`~rtlab.methods.gk.shotnet` -- a torch CNN from the target's mask/distance map to shots and
  times, trained end to end through a torch copy of the point kernel (eqs 3-6; shipped weights);
* :mod:`~rtlab.methods.gk.geometry_gradients` -- isocentre and gantry-angle gradients of a linac
  plan through the SVD pencil beam.

The Gamma Knife example (isocentre and time optimisation)
-----------------------------------------------------------

Implements the Gamma Knife example of patent 002 (eqs 7-11, FIG. 9) on the analytic point
kernel of :mod:`rtlab.dose.pointkernel`:

1. **Heuristic initial shots** (FIG. 9, op. 910-912): greedy sphere packing on the target's
   inside distance map (the medial-axis point with the largest inscribed sphere that is not yet
   covered gets a shot), collimator chosen by that local thickness.
2. **Loss (eq. 8)**, doses in units of the prescription ``rx`` so the weights do not depend on
   it::

       L(r', t) = w_T / |V_T| sum_{r in V_T} max(0, d_T - D(r))^2
                + w_O / |V_O| sum_{r in V_O} max(0, D(r) - d_O(r))^2 + lam * sum t

   ``V_T`` = target voxels; ``V_O`` = a shell around the target (``0 < distance <= shell_mm``)
   plus any organ at risk. Our choice for ``d_O`` (the patent's scalar ``d_O`` generalised to
   one value per voxel): ``d_O(r) = rx * max(floor, 1 - 0.5 * dist(r) / falloff_mm)``, i.e. the
   shell asks for 50 % of the prescription ``falloff_mm`` outside the target, which is what
   drives the conformity (Paddick CI) and the gradient index; organs at risk get their own
   scalar ``d_O`` (their dose limit). ``d_T = rx``. ``|t|`` is the L1 norm: the sum of all
   sector-collimator times (min). The sums are volume-weighted quadratures: voxels more than
   ``band_mm`` from the target surface are sampled every ``stride`` voxels with weight
   ``stride^3``.
3. **Projected subgradient descent (eq. 9)**: ``theta <- proj(theta - eta g)``, ``g`` from the
   analytic kernel gradient (eq. 10, :func:`rtlab.dose.pointkernel.dose_vjp`); the projection
   clips ``t >= 0`` and keeps each shot inside the target's bounding box. Steps are scaled per
   coordinate (Adam moments), with separate step sizes for positions (mm) and times (min);
   ``step='subgradient'`` takes the patent's plain projected subgradient step instead
   (normalised, diminishing ``eta_0 / sqrt(k)``).
4. **Smooth reformulation (eq. 11)**: auxiliary ``s_T >= 0, s_T >= d_T - D`` and
   ``s_O >= 0, s_O >= D - d_O`` turn the hinges into smooth constraints; the problem
   ``min w_T/|V_T| sum s_T^2 + w_O/|V_O| sum s_O^2 + lam sum t`` is solved by scipy's
   ``trust-constr`` (interior point) on a subsample of the voxels (:func:`optimize_smooth`).
5. **Quality check and re-planning with the shots fixed** (FIG. 9, op. 940-950): after the
   joint optimisation the times are polished once with the shots fixed; then the plan is
   normalised so that ``coverage_goal`` of the target receives ``rx``; if Paddick CI or GI miss
   their goals, the times alone are re-optimised (convex in ``t``: L-BFGS-B on the exact
   influence matrix) with a heavier shell weight, and the best plan is kept.

Prescription convention: ``rx`` is the absolute prescription dose (Gy); like Gamma-Knife plans
it usually ends near the 50 % isodose of the plan maximum (reported as ``isodose_pct``).
"""

from . import geometry_gradients, learning, shotnet
from .isocentres import blas_single_thread, initial_shots, optimize_pgd, optimize_smooth, optimize_times
from .plan import GKResult, crop_to_target, gk_summary, plan_gamma_knife
from .problem import GKPlan, PlanningProblem, build_problem, evaluate_plan, normalize_coverage, plan_loss, target_as_mask

__all__ = [
    "GKPlan", "PlanningProblem", "build_problem", "plan_loss", "normalize_coverage", "evaluate_plan", "target_as_mask",
    "initial_shots", "optimize_times", "optimize_pgd", "optimize_smooth", "blas_single_thread",
    "GKResult", "plan_gamma_knife", "crop_to_target", "gk_summary", "learning", "shotnet", "geometry_gradients",
]
