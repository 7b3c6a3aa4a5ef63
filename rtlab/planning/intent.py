"""A case's planning intent: which goals it is scored against, and matRad's own objective.

Two things a physicist expects when planning a matRad file (``TG119.mat``, a patient exported
from matRad):

* **Goals** (:func:`with_goals`): the file's ``cst`` objectives read as clinical goals
  (:func:`rtlab.io.matrad_objectives.goals_from_objectives`; the loader attaches them), or the
  published TG-119 goals when the case is one of TG-119's (:func:`tg119_goals`). rtlab's
  recipes (:mod:`rtlab.planning.recipes`) turn every organ's ``<=`` dose goal into an overdose
  term, so the file's organ limits shape the plan under the default recipe too.
* **matRad's objective** (``objective='matrad'``, :func:`matrad_terms`): the ``cst``
  objectives as rtlab terms, each weighted by its matRad penalty, so that rtlab optimises the
  function matRad/pyRadPlan would (for comparisons on the same objective).

The mapping tables are in ``docs/methods/planning.md`` ("A matRad file's planning intent").
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np

from ..core.case import Goal
from ..io.matrad_objectives import goals_from_objectives, matrad_objectives
from ..optimize import MeanDose, SquaredDeviation, SquaredOverdose, SquaredUnderdose
from ..optimize.terms import DVHMax, DVHMin, MaxDose

__all__ = ["GOAL_SETS", "with_goals", "tg119_goals", "matrad_terms", "matrad_structures_mask"]

#: ``with_goals`` choices: ``auto`` (TG-119's goals for a recognised TG-119 case, else the
#: file's), ``file`` (the goals the case came with, e.g. read from a matRad ``cst``),
#: ``tg119`` (TG-119's goals; an error if the case is not recognised), ``none``.
GOAL_SETS = ("auto", "file", "tg119", "none")

#: TG-119 (Ezzell et al. 2009, Med. Phys. 36:5359, table II) goals of the C-shape (easy) test,
#: by role: the C-shaped target and the central core.
TG119_CSHAPE_EASY = (("target", "D95", ">=", 50.0), ("target", "D10", "<=", 55.0), ("core", "D10", "<=", 25.0))


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def tg119_goals(case) -> list[Goal] | None:
    """TG-119's goals for ``case``, or ``None`` when it is not recognisably a TG-119 case.

    Recognised: rtlab's built-in TG-119 phantoms (``tg119_*``: their own goals), and a C-shape
    case such as matRad's ``TG119.mat`` -- exactly one target and an organ named ``Core`` --
    which gets the C-shape (easy) goals on its target and core (target D95 >= 50 Gy,
    D10 <= 55 Gy; core D10 <= 25 Gy).
    """
    if str(case.name).startswith("tg119_") and case.goals:
        return list(case.goals)
    targets = [s for s in case.structures.targets if s.mask.any()]
    cores = [s for s in case.structures.values() if _norm(s.name) == "core" and s.kind != "target"]
    if len(targets) != 1 or len(cores) != 1:
        return None
    names = {"target": targets[0].name, "core": cores[0].name}
    return [Goal(names[role], m, c, v) for role, m, c, v in TG119_CSHAPE_EASY]


def with_goals(case, which: str = "auto"):
    """``case`` with the goals of a goal set (a shallow copy; masks and images are shared).

    Parameters
    ----------
    case : Case
    which : {'auto', 'file', 'tg119', 'none'}
        See :data:`GOAL_SETS`.

    Returns
    -------
    Case
        ``meta['goal_set']`` says which set was used (``'tg119'``, ``'file'`` or ``'none'``).

    Raises
    ------
    ValueError
        Unknown ``which``; ``'tg119'`` on a case that is not recognisably TG-119's.
    """
    if which not in GOAL_SETS:
        raise ValueError(f"goals must be one of {', '.join(GOAL_SETS)}, got {which!r}")
    if which == "file":
        goals, used = list(case.goals), "file"
    elif which == "none":
        goals, used = [], "none"
    else:
        tg = tg119_goals(case)
        if tg is None and which == "tg119":
            raise ValueError(f"case {case.name!r} is not a TG-119 case rtlab recognises (a built-in tg119_* phantom, "
                             "or one target and an organ named 'Core' as in matRad's TG119.mat); "
                             "use --goals file or --goals none")
        goals, used = (tg, "tg119") if tg is not None else (list(case.goals), "file")
    for g in goals:
        if g.structure not in case.structures:
            raise ValueError(f"goal {g} names a structure the case does not have")
    return replace(case, goals=goals, meta={**case.meta, "goal_set": used})


def matrad_structures_mask(case) -> np.ndarray:
    """CT-grid mask of every structure that has a matRad objective (empty if none)."""
    m = np.zeros(case.grid.shape, bool)
    for o in matrad_objectives(case):
        m |= case.structures[o.structure].mask
    return m


def matrad_terms(case, op) -> list:
    """matRad's objective function of the case's ``cst`` as rtlab terms on the rows of ``op``.

    Each objective becomes the rtlab term with the same function (matRad averages each squared
    term over the structure's voxels, as rtlab's terms do), weighted by its matRad penalty:

    ====================  =========================================================
    matRad                rtlab term
    ====================  =========================================================
    squared deviation     :class:`~rtlab.optimize.SquaredDeviation` (same function)
    squared overdosing    :class:`~rtlab.optimize.SquaredOverdose` (same)
    squared underdosing   :class:`~rtlab.optimize.SquaredUnderdose` (same)
    max DVH / min DVH     :class:`~rtlab.optimize.terms.DVHMax` / ``DVHMin`` (same)
    mean dose, D = 0      :class:`~rtlab.optimize.MeanDose` linear (same)
    mean dose, D > 0      ``MeanDose(max_mean=D)``: one-sided squared excess (matRad:
                          ``|mean - D|`` or ``(mean - D)^2``, two-sided)
    max dose constraint   :class:`~rtlab.optimize.terms.MaxDose` (smooth maximum, soft)
    min dose / min-max,   squared under/overdose at the limit (soft; matRad enforces
    mean constraints      them as constraints)
    EUD                   left out with a warning (no EUD term in rtlab)
    ====================  =========================================================

    Parameters
    ----------
    case : Case
        Loaded by :func:`rtlab.io.load_matrad` (with ``meta['matrad']``).
    op : rtlab.dose.PlanOperator
        The plan's evaluation operator; every structure with an objective must lie in its
        CT-evaluated voxels (``prepare_plan`` adds them to the region of interest).

    Returns
    -------
    list of rtlab.optimize.terms.Term
    """
    objs = matrad_objectives(case)
    if not objs:
        raise ValueError(f"case {case.name!r}: its matRad cst has no objective rtlab can use; "
                         "choose objective='conformity' or 'quadratic'")
    terms, seen = [], {}
    for o in objs:
        rows = op.ct_rows(case.structures[o.structure].mask, missing="raise")
        w = o.penalty
        label = f"{o.structure} {o.kind}"
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        k, d = o.kind, o.dose
        if k == "squared_deviation":
            terms.append(SquaredDeviation(rows, d, w, name=label))
        elif k == "squared_overdose":
            terms.append(SquaredOverdose(rows, d, w, name=label))
        elif k == "squared_underdose":
            terms.append(SquaredUnderdose(rows, d, w, name=label))
        elif k == "dvh_max":
            terms.append(DVHMax(rows, d, o.volume_pct / 100.0, w, name=label))
        elif k == "dvh_min":
            terms.append(DVHMin(rows, d, o.volume_pct / 100.0, w, name=label))
        elif k == "mean":
            terms.append(MeanDose(rows, d if d else None, w, name=label))
        elif k == "max_dose":
            terms.append(MaxDose(rows, d, w, name=label))
        elif k == "min_dose":
            terms.append(SquaredUnderdose(rows, d, w, name=label))
        elif k == "min_max_dose":
            if d:
                terms.append(SquaredUnderdose(rows, d, w, name=f"{label} min"))
            if o.dose2 is not None and o.dose2 < 1e5:
                terms.append(SquaredOverdose(rows, o.dose2, w, name=f"{label} max"))
        elif k == "max_mean":
            terms.append(MeanDose(rows, d, w, name=label))
        else:
            warnings.warn(f"matRad objective {o} has no rtlab term; left out of the 'matrad' objective", stacklevel=2)
    return terms
