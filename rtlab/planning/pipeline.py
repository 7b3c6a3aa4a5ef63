"""The planning pipeline: case -> influence matrix -> objective -> optimised dose -> scores.

:func:`plan_case` runs the whole chain in one call and returns a :class:`PlanResult` that holds
the dose on the CT grid (Gy, ``(z, y, x)``), the beamlet weights, MU per beam, the optimisation
history, timings and the score table; :meth:`PlanResult.review` opens the review step of
patent 000 (para. 101, claim 12) on it.

The chain has two public halves, which interactive tools call separately:
:func:`~rtlab.planning.prepare_plan` (influence matrix, operator, objective, preliminary plan ->
:class:`~rtlab.planning.PlanProblem`) and :func:`optimise_plan` (solver, dose, MU, scores ->
:class:`PlanResult`; it takes a ``threading.Event`` to stop a run from another thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from .._util import is_int
from ..evaluate.compare import score, score_summary
from ..evaluate.metrics import evaluate
from ..io.npz import save_npz
from ..dose.operator import PlanOperator
from ..optimize import OptimizationResult, PlanSession, Solver
from .problem import PlanProblem, prepare_plan
from .warm_start import warm_start as start_from
from .recipes import goal_term_name
from .settings import SOLVER_FIELDS, PlanSettings

__all__ = ["PlanResult", "optimise_plan", "plan_case", "meet_goals", "failing_goals"]


@dataclass
class PlanResult:
    """Outcome of :func:`plan_case`.

    Attributes
    ----------
    case : Case
    angles : list of float
        Gantry angles (deg).
    dose : ndarray of float32, ``case.grid.shape``
        Dose on the CT grid (Gy, ``(z, y, x)``), not rescaled.
    x : ndarray
        Beamlet weights (unit fluence per bixel).
    x0 : ndarray
        Preliminary weights (uniform, target median dose = prescription).
    mu : ndarray
        Open-field-equivalent MU per beam (:meth:`rtlab.dose.InfluenceMatrix.beam_mu`).
    history : rtlab.optimize.History
    result : rtlab.optimize.OptimizationResult
    objective : rtlab.optimize.Objective
    operator : PlanOperator
    influence : rtlab.dose.InfluenceMatrix
    timings : dict
        ``build_s`` (influence matrix + operators + objective, s), ``optimize_s`` (solver wall
        time, s), ``optimize_cpu_s`` (CPU time of the process during the solve, all threads),
        ``iterations``, ``n_evals``, ``status``.
    scores : dict
        :func:`rtlab.evaluate.score_summary` of ``dose``.
    settings : PlanSettings
        The settings of the run (problem and solver; ``settings.solver_options``).
    info : dict
        Falloff levels and control points (see :func:`build_objective`).
    """

    case: object
    angles: list
    dose: np.ndarray
    x: np.ndarray
    x0: np.ndarray
    mu: np.ndarray
    history: object
    result: object
    objective: object
    operator: PlanOperator
    influence: object
    timings: dict
    scores: dict
    settings: PlanSettings = field(default_factory=PlanSettings)
    info: dict = field(default_factory=dict)

    @property
    def mu_total(self) -> float:
        """Sum of :attr:`mu` over the beams (the whole course delivered at once)."""
        return float(np.sum(self.mu))

    def mu_per_fraction(self, n_fractions: int) -> np.ndarray:
        """MU per beam and fraction when the planned dose is delivered in ``n_fractions`` equal fractions.

        :attr:`dose` is the whole course (e.g. 60 Gy), and so is :attr:`mu`. MU are linear in
        dose, so each fraction needs ``mu / n_fractions`` (e.g. 30 fractions of 2 Gy).

        Parameters
        ----------
        n_fractions : int
            Number of equal fractions (>= 1).

        Returns
        -------
        ndarray
            MU per beam for one fraction.
        """
        if not is_int(n_fractions) or n_fractions < 1:
            raise ValueError(f"n_fractions must be a positive int (equal fractions of the course), got {n_fractions!r}")
        return np.asarray(self.mu, float) / int(n_fractions)

    @property
    def iterations(self) -> int:
        return int(self.timings["iterations"])

    def initial_dose(self) -> np.ndarray:
        """Dose of the preliminary plan ``x0`` on the CT grid (Gy)."""
        return self.operator.dose_ct(self.x0)

    def score_table(self, name: str = "plan"):
        """Tidy score table (:func:`rtlab.evaluate.compare.score`) of this plan, with its MU.

        The first target is scored at ``settings.rx`` when the plan was given one (as in
        :attr:`scores`, :func:`rtlab.evaluate.score_summary`); other targets at their own
        prescription.
        """
        rx = None
        targets = [t for t in self.case.structures.targets if t.mask.any()]
        if self.settings.rx is not None and targets:
            rx = {targets[0].name: self.settings.rx}
        return score({name: {"dose": self.dose, "mu": self.mu_total}}, self.case, rx=rx)

    def summary(self) -> dict:
        """``scores`` plus ``build_s``, ``optimize_s``, ``iterations``, ``mu_total`` (JSON-ready)."""
        out = dict(self.scores)
        out.update(build_s=round(self.timings["build_s"], 3), optimize_s=round(self.timings["optimize_s"], 3),
                   iterations=self.iterations, mu_total=round(self.mu_total, 1), status=self.timings["status"],
                   objective=self.settings.objective, angles=list(self.angles))
        return out

    def save(self, path):
        """Save the dose (array ``dose``, Gy, CT grid) plus ``x``, ``mu``, ``angles`` (deg),
        ``bixel_mm`` and ``dose_grid_mm`` (NaN: the CT grid) to ``path`` (npz, atomic).

        The file is what ``rtlab score --dose`` reads; with ``--machine-file`` the score
        re-computes the dose of ``x`` on those beams with another beam model.
        """
        g = self.settings.dose_grid_mm
        return save_npz(path, dose=self.dose, grid=self.case.grid, x=self.x, mu=self.mu,
                        angles=np.asarray(self.angles, float), bixel_mm=np.asarray(float(self.settings.bixel_mm)),
                        dose_grid_mm=np.asarray(float("nan") if g is None else float(g)))

    def review(self, **solver_options):
        """A :class:`rtlab.optimize.PlanSession` on this plan (patent 000, para. 101, claim 12).

        The session starts in state ``'optimised'`` with this run's result; ``x_preliminary``
        is ``x0``. ``edit``, ``reoptimise(start='preliminary'|'optimised')`` and ``accept``
        then work as documented there; map a session result to the CT grid with
        ``plan.operator.dose_ct(session.result.x)``.
        """
        opts = dict(self.settings.solver_options)
        opts.update(solver_options)
        s = PlanSession(self.operator, self.objective, x_preliminary=self.x0, **opts)
        s.result = self.result
        s.results.append(self.result)
        s.state = "optimised"
        s._note("reoptimise", start="preliminary", status=self.result.status, objective=self.result.objective)
        return s

    def with_result(self, result, objective=None) -> "PlanResult":
        """This plan with the beamlet weights of another optimisation on the same operator.

        For the plans of a review session (:meth:`review`): dose, MU and scores are recomputed
        from ``result.x``; ``timings`` take the run's ``optimize_s``, ``iterations``,
        ``n_evals`` and ``status`` (``optimize_cpu_s`` is None).

        Parameters
        ----------
        result : rtlab.optimize.OptimizationResult
        objective : rtlab.optimize.Objective, optional
            The objective that produced it (e.g. the session's edited copy); default this plan's.
        """
        if not isinstance(result, OptimizationResult):
            raise TypeError(f"result must be an rtlab.optimize.OptimizationResult, got {type(result).__name__}")
        x = np.asarray(result.x, np.float64)
        if x.shape != self.x.shape:
            raise ValueError(f"result.x has {x.size} beamlet weights but this plan has {self.x.size}; "
                             "it must come from the same operator (plan.review())")
        dose = self.operator.dose_ct(x)
        timings = dict(self.timings, optimize_s=float(result.time), optimize_cpu_s=None,
                       iterations=int(result.iterations), n_evals=result.meta.get("n_evals"), status=result.status)
        return PlanResult(case=self.case, angles=self.angles, dose=dose, x=x, x0=self.x0,
                          mu=self.influence.beam_mu(x), history=result.history, result=result,
                          objective=self.objective if objective is None else objective, operator=self.operator,
                          influence=self.influence, timings=timings,
                          scores=score_summary(self.case, dose, self.scores.get("rx_gy")),
                          settings=self.settings, info=self.info)

    def __repr__(self) -> str:
        s = self.scores
        return (f"PlanResult({self.case.name!r}, {len(self.angles)} beams, objective={self.settings.objective!r}, "
                f"CI={s.get('ci_paddick')}, iterations={self.iterations}, build {self.timings['build_s']:.2f} s, "
                f"optimise {self.timings['optimize_s']:.2f} s)")


def optimise_plan(problem: PlanProblem, *, max_iter: int = 100, change_threshold: float | None = 1e-4,
                  change_window: int = 5, objective_threshold: float | None = None, method: str = "lbfgsb",
                  progress: bool = False, callback: Callable | None = None, cancel_event=None, x0=None,
                  report_every: int = 10, settings: PlanSettings | None = None) -> PlanResult:
    """Second half of :func:`plan_case`: optimise a :class:`PlanProblem`, then dose, MU and scores.

    Parameters
    ----------
    problem : PlanProblem
    max_iter, change_threshold, change_window, objective_threshold, method
        Solver settings (:class:`rtlab.optimize.Solver`; the objective-threshold and change
        rules are patent 000 para. 83 and claim 6).
    progress : bool
        tqdm progress bar over the iterations.
    callback : callable, optional
        ``callback(record)`` after each iteration: a copy of the history record (see
        :class:`rtlab.optimize.History`) plus ``'x'``, the iterate's beamlet weights (a copy;
        map it to the CT grid with ``problem.operator.dose_ct(record['x'])`` for a live dose).
        Returning ``True`` stops the run (status ``'cancelled'``).
    cancel_event : threading.Event, optional
        Set it from any thread to stop; the result holds the best point evaluated so far and
        status ``'cancelled'``.
    x0 : array, optional
        Start point (beamlet weights); default ``problem.x0``. ``PlanResult.x0`` is always the
        preliminary plan ``problem.x0``.
    report_every : int
        Term reports (F, S, f_C of conformity terms) every this many iterations and at the last.
    settings : PlanSettings, optional
        The solver settings at once (then ``max_iter`` ... ``method`` and ``report_every`` are
        not used); only its solver fields count, the problem keeps its own.

    Returns
    -------
    PlanResult
    """
    if not isinstance(problem, PlanProblem):
        raise TypeError(f"problem must be a PlanProblem from rtlab.planning.prepare_plan, got {type(problem).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable, taking one history record (dict)")
    if cancel_event is not None and not callable(getattr(cancel_event, "is_set", None)):
        raise TypeError("cancel_event must be a threading.Event (or None)")
    op, im, case = problem.operator, problem.influence, problem.case
    start = problem.x0 if x0 is None else np.asarray(x0, np.float64).ravel()
    if start.shape != (op.shape[1],) or not np.all(np.isfinite(start)) or np.any(start < 0):
        raise ValueError(f"x0 must hold {op.shape[1]} finite, non-negative beamlet weights (one per bixel)")
    if settings is None:
        solver_fields = dict(method=method, max_iter=max_iter, change_threshold=change_threshold,
                             change_window=change_window, objective_threshold=objective_threshold,
                             report_every=report_every)
    elif isinstance(settings, PlanSettings):
        solver_fields = {k: getattr(settings, k) for k in SOLVER_FIELDS}
    else:
        raise TypeError(f"settings must be an rtlab.planning.PlanSettings, got {type(settings).__name__}")
    run_settings = replace(problem.settings, **solver_fields)
    solver_options = run_settings.solver_options
    solver = None

    def with_iterate(rec):
        # the callback gets a copy of the record with the iterate it describes
        x_it = getattr(solver, "current_x", None)
        return callback({**rec, "x": None if x_it is None else np.array(x_it, np.float64, copy=True)})

    cb = None if callback is None else with_iterate
    solver = Solver(op, problem.objective, callback=cb, progress=progress, cancel_event=cancel_event,
                    **solver_options)
    t0, c0 = time.perf_counter(), time.process_time()
    res = solver.run(start)
    optimize_s = time.perf_counter() - t0
    optimize_cpu_s = time.process_time() - c0
    dose = op.dose_ct(res.x)
    mu = im.beam_mu(res.x)
    timings = {"build_s": problem.build_s, "optimize_s": optimize_s, "optimize_cpu_s": optimize_cpu_s,
               "iterations": res.iterations,
               "n_evals": res.meta.get("n_evals"), "status": res.status}
    return PlanResult(case=case, angles=problem.angles, dose=dose, x=res.x, x0=problem.x0, mu=mu,
                      history=res.history, result=res, objective=problem.objective, operator=op, influence=im,
                      timings=timings, scores=score_summary(case, dose, run_settings.rx), settings=run_settings,
                      info=problem.info)


def plan_case(case, angles: Sequence[float] | None = None, objective: str = "conformity",
              falloff: float | None = None, control_points: bool = False, bixel_mm: float = 5.0,
              dose_grid_mm: float | None = None, *, rx: float | None = None, roi_mm: float = 20.0,
              recipe: Mapping | None = None, max_iter: int = 100, change_threshold: float | None = 1e-4,
              change_window: int = 5, method: str = "lbfgsb", machine=None, cutoff_mm: float | None = None,
              backend: str = "numba", progress: bool = False, callback: Callable | None = None,
              settings: PlanSettings | None = None, warm_start: str | None = None,
              region_model=None) -> PlanResult:
    """Plan a case end to end: influence matrix, objective, optimisation, dose, scores.

    ``plan_case(case, ...)`` is ``optimise_plan(prepare_plan(case, ...), ...)``.

    Parameters
    ----------
    case : Case
    angles : sequence of float, optional
        Gantry angles in degrees (IEC 61217); default the case's suggested beams, else
        0, 72, 144, 216, 288.
    objective : {'conformity', 'quadratic'}
        Objective recipe (module docstring).
    falloff : float, optional
        Dose falloff gradient ``G`` in **Gy/mm** (patent 000 eqs 16-17; 2.0 Gy/mm = 200 cGy/mm):
        adjusts lower-dose targets and adds the automatic low-dose ring.
    control_points : bool
        Add control-point dose bounds on every target (patent 000, para. 154-197).
    bixel_mm : float
        Bixel size at the isocentre plane (mm).
    dose_grid_mm : float, optional
        Dose-grid spacing (mm); default the CT grid. A coarser grid is faster; the dose is then
        resampled trilinearly to the CT grid, where the objective and the scores are evaluated.
    rx : float, optional
        Prescription (Gy) for a first target without one.
    roi_mm : float
        Region of interest for CT-grid evaluation with a coarse dose grid (mm around targets).
    recipe : mapping, optional
        Overrides of the recipe's weights and levels; ``control_point_find`` (a dict of
        :func:`~rtlab.methods.control_points.find_control_points` keyword arguments, see
        :func:`control_point_find_options`) sets how the control points are found.
    max_iter, change_threshold, change_window, method
        Solver settings (:class:`rtlab.optimize.Solver`; the change rule is patent 000 claim 6).
    machine : rtlab.dose.Machine, str or path-like, optional
        The beam model: a Machine, a built-in name (``'generic_6mv'``, ``'generic_6mv_v1'``) or
        the path of a matRad photon machine file (``photons_<name>.mat``; loaded and fitted by
        :func:`rtlab.dose.load_matrad_machine`, once per process). Default
        :func:`rtlab.dose.generic_6mv`. See :func:`rtlab.dose.resolve_machine`.
    cutoff_mm : float, optional
        Lateral cut-off of the sparse influence matrix (default automatic, :func:`rtlab.dose.broad.auto_cutoff_mm`).
    backend : str
        Mat-vec backend (``'numba'``, ``'auto'``, ``'gpu'``, ...).
    progress : bool
        tqdm progress bars (ray tracing, iterations).
    callback : callable, optional
        ``callback(record)`` after each iteration (see :class:`rtlab.optimize.History`);
        returning ``True`` stops the run.
    settings : PlanSettings, optional
        Every setting at once (then the keyword settings above are not used).
    warm_start : {'uniform', 'zero', 'target', 'region'}, optional
        Start point of the optimisation (:func:`rtlab.planning.warm_start`; default the uniform
        preliminary plan). ``'region'`` fits the weights to the dose region a trained region
        model predicts (patent 000, para. 134-136), ``'target'`` to the targets themselves.
    region_model : RegionModel or path-like, optional
        The model of ``warm_start='region'`` (e.g. ``'datasets/region_model_200_l80'``).

    Returns
    -------
    PlanResult
        ``result.info['warm_start']`` says which start was used and its cost (s).
    """
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable, taking one history record (dict)")
    if settings is None:
        settings = PlanSettings(objective=objective, falloff_gy_per_mm=falloff, control_points=control_points,
                                bixel_mm=bixel_mm, dose_grid_mm=dose_grid_mm, roi_mm=roi_mm, rx=rx,
                                recipe_overrides=recipe, cutoff_mm=cutoff_mm, backend=backend, max_iter=max_iter,
                                change_threshold=change_threshold, change_window=change_window, method=method)
    problem = prepare_plan(case, angles, machine=machine, progress=progress, settings=settings)
    if warm_start is not None or region_model is not None:
        problem = start_from(problem, warm_start, region_model=region_model)
    res = optimise_plan(problem, progress=progress, callback=callback, settings=settings)
    return meet_goals(problem, res, progress=progress, callback=callback, settings=settings)


def failing_goals(case, dose) -> list:
    """The goals of ``case`` that ``dose`` (CT grid, Gy) does not meet, ``[(Goal, value), ...]``."""
    out = []
    for g in case.goals:
        v = float(evaluate(dose, case.structures[g.structure], g.metric, case.grid))
        if not g.passed(v):
            out.append((g, v))
    return out


def meet_goals(problem: PlanProblem, result: PlanResult, *, progress: bool = False, callback: Callable | None = None,
               settings: PlanSettings | None = None) -> PlanResult:
    """Goal-driven re-weighting of the conformity recipe (recipe entries ``goal_*``).

    While some goal of the case fails, at most ``goal_rounds`` times: the weight of every
    failing goal's term (``'goal <goal>'``, :func:`rtlab.planning.recipes.goal_terms`) is
    multiplied by ``goal_round_factor`` and the optimiser runs again, warm-started from the last
    beamlet weights, for ``max(1, round(goal_round_iter * max_iter))`` iterations. A goal
    without a term (``Dmean``, volume goals) is not re-weighted. The weights stay changed on
    ``problem.objective`` (so :attr:`PlanResult.objective` is the objective actually solved).

    Returns ``result`` unchanged for another objective, with ``goal_rounds = 0``, or when every
    goal is met; else the plan of the round (0 = ``result``) that fails the fewest goals (ties:
    the smallest summed relative miss; later rounds win equal keys), whose ``timings`` add up
    all rounds (``optimize_s``, ``iterations``, ...) and hold ``goal_rounds`` (rounds run),
    ``goal_best_round`` (the round returned) and ``goal_reweighted`` (term name -> final weight
    of each re-weighted term).
    """
    s = problem.settings if settings is None else replace(problem.settings, **{k: getattr(settings, k)
                                                                               for k in SOLVER_FIELDS})
    rec = s.recipe
    if s.objective != "conformity" or not rec.get("goal_rounds"):
        return result
    obj = problem.objective
    total = dict(result.timings)
    reweighted: dict[str, float] = {}
    n_iter = max(1, int(round(rec["goal_round_iter"] * s.max_iter)))
    rounds = 0

    def shortfall(fails):
        # (number of failing goals, summed relative miss): the plan to keep is the smallest
        return (len(fails), sum(abs(v - g.value) / max(abs(g.value), 1e-9) for g, v in fails))

    fails = failing_goals(problem.case, result.dose)
    best, best_key, best_round = result, shortfall(fails), 0
    for _ in range(int(rec["goal_rounds"])):
        names = [goal_term_name(g) for g, _v in fails]
        names = [n for n in names if n in obj.names]
        if not names or result.timings.get("status") == "cancelled":
            break
        for n in names:
            obj[n].weight *= rec["goal_round_factor"]
            reweighted[n] = float(obj[n].weight)
        result = optimise_plan(problem, x0=result.x, progress=progress, callback=callback,
                               settings=replace(s, max_iter=n_iter))
        rounds += 1
        for k in ("optimize_s", "optimize_cpu_s", "iterations", "n_evals"):
            if total.get(k) is not None and result.timings.get(k) is not None:
                total[k] += result.timings[k]
        total["status"] = result.timings["status"]
        fails = failing_goals(problem.case, result.dose)
        key = shortfall(fails)
        if key <= best_key:
            best, best_key, best_round = result, key, rounds
    if rounds:
        total.update(goal_rounds=rounds, goal_reweighted=reweighted, goal_best_round=best_round,
                     status=best.timings["status"])
        result = replace(best, timings=total, x0=problem.x0)
    return result
