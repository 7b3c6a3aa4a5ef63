"""Objective recipes: the terms a plan's settings give on its evaluation operator.

Objective recipes (``objective=``)
----------------------------------
``'conformity'`` (patent 000, eqs 6, 8-12), per target ``T`` with prescription ``D``:

* :class:`~rtlab.methods.conformity.ConformityTerm` at ``D`` over the body domain (weight 1);
  with ``falloff=G`` (Gy/mm) the targets are first adjusted with the dose-falloff rule
  (eqs 16-17, :func:`rtlab.methods.falloff.adjust_targets`) and an automatic low-dose ring at
  ``ring_fraction * D`` is added (para. 80, claim 5), each level with its own conformity term;
* coverage: mean squared underdose below ``coverage_level * D``;
* hot spots: mean squared overdose of the target above ``hot_level * D`` and a smooth maximum
  (log-sum-exp) over the region of interest above ``max_level * D``;
* organs: mean squared overdose above ``oar_level * v`` for every ``<=`` dose goal ``v`` of an
  organ;
* goals (:func:`goal_terms`): every dose-volume goal of the case, on a target or an organ,
  becomes its own term, named ``'goal <goal>'``: ``Dx <= v`` a dose-volume maximum at
  ``goal_max_level * v`` (x % of the structure may exceed it), ``Dx >= v`` a dose-volume
  minimum at ``goal_min_level * v``; weight ``goal_target_weight`` (targets) or
  ``goal_oar_weight`` (organs). With ``goal_rounds = n > 0``, :func:`rtlab.planning.plan_case`
  then re-weights (:func:`rtlab.planning.pipeline.meet_goals`): after the optimisation, the
  term of every goal the plan fails is multiplied by ``goal_round_factor`` and the optimiser
  runs again from the last beamlet weights for ``goal_round_iter * max_iter`` iterations, at
  most ``n`` rounds, stopping once every goal is met, and keeps the round's plan that fails
  the fewest goals. The iteration budget is therefore
  ``max_iter * (1 + n * goal_round_iter)`` at most (default 100 * (1 + 3 * 0.5) = 250);
* guard (coarse dose grid only): mean squared overdose above ``guard_level * min(D)`` on the
  dose-grid rows outside the region of interest;
* with ``control_points=True``: the dose bounds of :mod:`rtlab.methods.control_points`
  (para. 179-181) as a quadratic penalty. The points are those of
  :func:`~rtlab.methods.control_points.find_control_points` on every target (each at its own
  dose; an outside point inside a higher-dose target is dropped) with the
  keyword arguments of the recipe entry ``control_point_find`` (a dict, see
  :func:`control_point_find_options`; default ``None`` = the library defaults with
  ``mode='2d'``).

``'matrad'`` (cases loaded from matRad files): the file's own ``cst`` objectives, each with its
penalty as weight (:func:`rtlab.planning.intent.matrad_terms`); no rtlab terms are added.

``'quadratic'`` (the conventional objective, for comparison): mean squared deviation from ``D``
in each target, the same organ terms, and a mean squared overdose of the normal tissue above
``normal_level * D``.

The weights and levels are :data:`CONFORMITY_RECIPE` and :data:`QUADRATIC_RECIPE`; override any
of them with ``recipe={...}``.

Where the objective is evaluated: on the rows of :class:`rtlab.dose.PlanOperator` (CT-grid
voxels of the region of interest, then the dose-grid rows; see :mod:`rtlab.dose.operator`).
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from .._util import check_positive
from ..core.geometry import resample, signed_distance
from ..dose.operator import PlanOperator
from ..evaluate.metrics import parse_metric
from ..methods.conformity import ConformityTerm
from ..methods.control_points import ControlPointTerm, find_control_points
from ..methods.falloff import adjust_targets, falloff_conformity_terms
from ..optimize import MaxDose, Objective, SquaredDeviation, SquaredOverdose, SquaredUnderdose
from ..optimize.terms import DVHMax, DVHMin, Term
from .intent import matrad_terms
from .settings import (CONFORMITY_RECIPE, OBJECTIVES, QUADRATIC_RECIPE, PlanSettings,  # noqa: F401 (re-exported)
                       control_point_find_options)

__all__ = ["build_objective", "goal_terms", "goal_term_name", "apply_term_edits", "region_of_interest", "goal_limits", "targets_with_rx", "CONFORMITY_RECIPE",
           "QUADRATIC_RECIPE", "OBJECTIVES", "control_point_find_options"]


def goal_limits(case) -> dict[str, float]:
    """Lowest ``<=``/``<`` dose goal (Gy) of every non-target structure."""
    out: dict[str, float] = {}
    for g in case.goals:
        s = case.structures[g.structure]
        if s.kind == "target" or g.comparator not in ("<=", "<"):
            continue
        try:
            unit = parse_metric(g.metric).unit
        except ValueError:
            continue
        if unit != "Gy":
            continue
        out[s.name] = min(out.get(s.name, np.inf), float(g.value))
    return out


def goal_term_name(goal) -> str:
    """Name of the objective term of a goal in the conformity recipe: ``'goal PTV D10 <= 55'``."""
    return f"goal {goal}"


def goal_terms(case, op: PlanOperator, rec: Mapping) -> list:
    """The conformity recipe's terms for the case's dose-volume goals, ``[(Goal, Term), ...]``.

    A goal ``Dx <= v`` on a structure becomes a dose-volume maximum
    (:class:`~rtlab.optimize.terms.DVHMax`: at most ``x`` % of the structure above
    ``goal_max_level * v``), a goal ``Dx >= v`` a dose-volume minimum
    (:class:`~rtlab.optimize.terms.DVHMin`: at least ``x`` % at ``goal_min_level * v`` or more):
    the goal itself as a penalty, with a small margin so that the plan lands on the goal's
    side of it. ``Dmax``/``Dmin`` are the 0 % / 100 % cases and ``D<x>cc`` the fraction
    ``x`` cc of the structure's volume. The term covers the whole structure (the goal's
    volume), target overlap included. Weights: ``goal_target_weight`` on targets,
    ``goal_oar_weight`` on organs. ``Dmean`` and volume goals (``V<x>Gy``) get no goal term
    (organs keep their overdose term).
    """
    out, seen = [], set()
    voxel_cc = float(np.prod(case.grid.spacing)) / 1000.0
    for g in case.goals:
        name = goal_term_name(g)
        if name in seen:
            continue
        try:
            spec = parse_metric(g.metric)
        except ValueError:
            continue
        if spec.unit != "Gy" or spec.kind == "mean" or g.comparator not in ("<=", "<", ">=", ">"):
            continue
        s = case.structures[g.structure]
        rows = op.ct_rows(s.mask)
        if rows.size == 0:
            continue
        n = int(s.mask.sum())
        if spec.kind == "max":
            frac = 0.0
        elif spec.kind == "min":
            frac = 1.0
        elif spec.kind == "d_cc":
            frac = min(1.0, spec.x / (n * voxel_cc))
        else:
            frac = spec.x / 100.0
        w = rec["goal_target_weight"] if s.kind == "target" else rec["goal_oar_weight"]
        v = float(g.value)
        if g.comparator in ("<=", "<"):
            t = DVHMax(rows, rec["goal_max_level"] * v, frac, w, name=name)
        else:
            t = DVHMin(rows, rec["goal_min_level"] * v, frac, w, name=name)
        seen.add(name)
        out.append((g, t))
    return out


def targets_with_rx(case, rx=None) -> list:
    """``[(target Structure, prescription Gy), ...]`` of the non-empty targets, highest dose first.

    A first target without a prescription takes ``rx`` (else the case's).
    """
    ts = [t for t in case.structures.targets if t.mask.any()]
    if not ts:
        raise ValueError(f"case {case.name!r} has no target structure; planning needs one (kind='target')")
    out = []
    for i, t in enumerate(ts):
        d = t.prescription
        if d is None and i == 0:
            d = rx if rx is not None else case.prescription
        if d is None:
            raise ValueError(f"target {t.name!r} has no prescription; set Structure.prescription (Gy) or pass rx=")
        out.append((t, float(d)))
    out.sort(key=lambda it: -it[1])
    return out


def region_of_interest(case, roi_mm: float = 20.0) -> np.ndarray:
    """Body voxels within ``roi_mm`` of a target, plus the organs that have dose goals (CT grid)."""
    (roi_mm,) = check_positive("roi_mm", roi_mm)
    tm = np.zeros(case.grid.shape, bool)
    for t in case.structures.targets:
        tm |= t.mask
    if not tm.any():
        raise ValueError(f"case {case.name!r} has no target voxels")
    roi = signed_distance(tm, case.grid.spacing) <= roi_mm
    for name in goal_limits(case):
        roi |= case.structures[name].mask
    return roi & case.structures.body_mask().astype(bool)


def _control_point_term(case, op, target, d_ref, recipe, weight, higher=None, name="control points"):
    """The control-point term of one target (patent 000, para. 179-180) on rows of ``E x``.

    ``higher`` (bool mask, optional): voxels of targets with a higher dose; an *outside* control
    point there is dropped (its bound, ``control_point_outside * d_ref``, would pull a
    higher-dose target down).
    """
    pts = find_control_points(target.mask, case.grid.spacing, **recipe["control_point_find"])
    cp = ControlPointTerm.from_control_points(pts, d_ref, recipe["control_point_outside"] * d_ref, weight=1.0)
    rows = op.ct_rows_of_flat(cp.voxel_index)
    keep = rows >= 0
    if higher is not None:
        keep &= cp.inside | ~higher.ravel()[cp.voxel_index]
    if not keep.any():
        return None, pts
    inner = ControlPointTerm(np.arange(int(keep.sum())), cp.inside[keep], cp.bound[keep], weight=1.0)
    order = np.argsort(rows[keep], kind="stable")

    class ControlPointDoseTerm(Term):
        """Control-point dose bounds (patent 000, para. 179-181) on rows of ``E x``."""

        def _eval_sub(self, d):
            dd = np.empty_like(d)
            dd[order] = d  # rows were sorted by Term; put them back in control-point order
            v = inner.value(dd)
            g = inner.gradient(dd)
            return v, g[order]

    t = ControlPointDoseTerm(rows[keep], weight, name=name)
    return t, pts


def build_objective(case, op: PlanOperator, objective: str = "conformity", falloff: float | None = None,
                    control_points: bool = False, rx: float | None = None, recipe: Mapping | None = None, *,
                    settings: PlanSettings | None = None):
    """The objective of a recipe (see the module docstring) on the rows of ``op``.

    Parameters
    ----------
    case : Case
    op : PlanOperator
    objective : {'conformity', 'quadratic', 'matrad'}
    falloff : float, optional
        Dose falloff gradient ``G`` in **Gy/mm** (2.0 = 200 cGy/mm); conformity recipe only.
    control_points : bool
        Add control-point dose bounds (conformity recipe only).
    rx : float, optional
        Prescription (Gy) for a first target without one.
    recipe : mapping, optional
        Overrides of :data:`CONFORMITY_RECIPE` / :data:`QUADRATIC_RECIPE` entries. Every entry
        is a number except ``control_point_find``: a dict of
        :func:`~rtlab.methods.control_points.find_control_points` keyword arguments (see
        :func:`control_point_find_options`).
    settings : PlanSettings, optional
        All of the above at once (then ``objective``, ``falloff``, ``control_points``, ``rx`` and
        ``recipe`` are not used); what :func:`~rtlab.planning.prepare_plan` passes.

    Returns
    -------
    objective : rtlab.optimize.Objective
    info : dict
        ``levels`` (falloff levels or None), ``control_points`` (ControlPoints or None), ``recipe``
        (the full recipe; ``control_point_find`` there holds all the keyword arguments used).
    """
    if settings is None:
        settings = PlanSettings(objective=objective, falloff_gy_per_mm=falloff, control_points=control_points, rx=rx,
                                recipe_overrides=recipe)
    elif not isinstance(settings, PlanSettings):
        raise TypeError(f"settings must be an rtlab.planning.PlanSettings, got {type(settings).__name__}")
    objective, falloff = settings.objective, settings.falloff_gy_per_mm
    control_points, rx, rec = settings.control_points, settings.rx, settings.recipe
    targets = targets_with_rx(case, rx)
    d_min = min(d for _, d in targets)
    d_max = max(d for _, d in targets)
    ss = case.structures
    all_t = np.zeros(case.grid.shape, bool)
    for t, _ in targets:
        all_t |= t.mask
    roi_rows = np.arange(op.n_ct, dtype=np.int64)
    terms = []
    info = {"levels": None, "control_points": None, "recipe": rec}
    limits = goal_limits(case)

    if objective == "conformity":
        body = np.zeros(case.grid.shape, bool)
        body.ravel()[op.ct_index] = True  # the evaluated CT voxels = the domain
        if falloff is not None:
            levels = adjust_targets([(t.name, t.mask, d) for t, d in targets], gradient=falloff,
                                    spacing=case.grid.spacing, body=body, low_dose=rec["ring_fraction"])
            for lv in levels:
                if not lv.region.any():
                    warnings.warn(f"falloff level {lv.name!r} ({lv.dose:g} Gy, {lv.distance_mm:g} mm) holds no voxel "
                                  "at this spacing and is left out; use a finer grid or a smaller gradient",
                                  stacklevel=2)
            levels = [lv for lv in levels if lv.region.any()]
            ws = [rec["conformity_weight"] if lv.original.any() else rec["ring_weight"] for lv in levels]
            terms += falloff_conformity_terms(levels, op.ct_index, body=body, weight=ws,
                                              steepness=rec["steepness"])
            info["levels"] = levels
        else:
            higher = np.zeros(case.grid.shape, bool)
            for t, d in targets:
                dom = op.ct_rows(body & ~higher | t.mask)
                terms.append(ConformityTerm(op.ct_rows(t.mask, missing="raise"), d, dom,
                                            rec["conformity_weight"], steepness=rec["steepness"],
                                            name=f"{t.name} conformity"))
                higher |= t.mask
        for t, d in targets:
            r = op.ct_rows(t.mask, missing="raise")
            terms.append(SquaredUnderdose(r, rec["coverage_level"] * d, rec["coverage_weight"], name=f"{t.name} coverage"))
            terms.append(SquaredOverdose(r, rec["hot_level"] * d, rec["hot_weight"], name=f"{t.name} hot spots"))
        terms.append(MaxDose(roi_rows, rec["max_level"] * d_max, rec["max_weight"], softness=rec["max_softness"],
                             name="max dose"))
        if control_points:
            # every level's target gets its control points (patent 000, para. 179-181: "for each of the
            # one or more dose control points" of the target regions); the first target's term keeps
            # the name "control points", the others' are "control points <target>"
            by_target = {}
            for i, (t, d) in enumerate(targets):
                higher = np.zeros(case.grid.shape, bool)
                for u, du in targets:
                    if u is not t and du > d:
                        higher |= u.mask
                term, pts = _control_point_term(case, op, t, d, rec, rec["control_point_weight"],
                                                higher=higher if higher.any() else None,
                                                name="control points" if i == 0 else f"control points {t.name}")
                by_target[t.name] = pts
                if term is not None:
                    terms.append(term)
            info["control_points"] = by_target[targets[0][0].name]
            info["control_points_by_target"] = by_target
    elif objective == "matrad":
        terms += matrad_terms(case, op)
        limits = {}  # the file's own organ terms only
    else:
        for t, d in targets:
            terms.append(SquaredDeviation(op.ct_rows(t.mask, missing="raise"), d, rec["target_weight"],
                                          name=f"{t.name} deviation"))
        normal = np.zeros(case.grid.shape, bool)
        normal.ravel()[op.ct_index] = True
        normal &= ~all_t
        if normal.any():
            terms.append(SquaredOverdose(op.ct_rows(normal), rec["normal_level"] * d_min, rec["normal_weight"],
                                         name="normal tissue"))
    for name, v in limits.items():
        s = ss[name]
        m = s.mask & ~all_t
        if not m.any():
            continue
        r = op.ct_rows(m)
        if r.size:
            terms.append(SquaredOverdose(r, rec["oar_level"] * v, rec["oar_weight"], name=f"{name} overdose"))
    if objective == "conformity":
        terms += [t for _, t in goal_terms(case, op, rec)]
    if op.n_dose and rec["guard_weight"] > 0:
        roi_ct = np.zeros(case.grid.shape, np.float32)
        roi_ct.ravel()[op.ct_index] = 1.0
        roi_dose = resample(roi_ct, case.grid, op.influence.grid, order=0) > 0.5
        g_rows = op.dose_rows(~roi_dose)
        if g_rows.size:
            terms.append(SquaredOverdose(g_rows, rec["guard_level"] * d_min, rec["guard_weight"], name="guard"))
    obj = Objective(terms)
    apply_term_edits(obj, settings.term_weights, settings.w1, settings.w2)
    return obj, info


def apply_term_edits(obj, weights=None, w1=None, w2=None) -> None:
    """Set term weights by name, and the split weights of patent 000 eq 7 on every conformity term.

    Parameters
    ----------
    obj : rtlab.optimize.Objective
    weights : mapping term name -> float, optional
        (Values already checked by :class:`PlanSettings`.)
    w1, w2 : float, optional
        ``w1 (F - C1)^2 + w2 (S - C2)^2``; one given alone pairs with 1.
    """
    for name, w in (weights or {}).items():
        if name not in obj.names:
            raise ValueError(f"weights: no term named {name!r}; the objective has {list(obj.names)}")
        obj[name].weight = float(w)
    if w1 is not None or w2 is not None:
        a = 1.0 if w1 is None else float(w1)
        b = 1.0 if w2 is None else float(w2)
        for t in obj:
            if isinstance(t, ConformityTerm):
                t.split, t.w1, t.w2 = True, a, b
