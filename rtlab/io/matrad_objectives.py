"""The planning intent of a matRad file: its ``cst`` objectives and constraints, read as data.

matRad stores each structure's optimisation objectives in column 6 of ``cst``, in two layouts:

matRad 2 (``cst{i,6}`` a struct array)
    fields ``type`` (e.g. ``'square overdosing'``), ``penalty``, ``dose`` (Gy), ``EUD``,
    ``volume`` (%), ``robustness``.
matRad 3 (``cst{i,6}`` a cell of structs saved from the objective classes)
    fields ``className`` (e.g. ``'DoseObjectives.matRad_SquaredOverdosing'``), ``parameters``
    (a cell: the class's parameters in its order, doses in Gy and volumes in %) and ``penalty``.

:func:`matrad_objectives` turns both into :class:`MatradObjective` records with one vocabulary
(:data:`KINDS`); :func:`goals_from_objectives` reads them as planning goals; the planning layer
(:mod:`rtlab.planning.intent`) turns them into objective terms. The mapping, and where rtlab's
term differs from matRad's function, is documented in ``docs/methods/planning.md`` ("A matRad
file's planning intent").

The type names and parameter orders are those of matRad's objective classes
(``matRad/optimization/+DoseObjectives``, ``+DoseConstraints``) and of matRad 2's
``matRad_objFunc`` type strings.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from ..core.case import Goal

__all__ = ["MatradObjective", "KINDS", "matrad_objectives", "goals_from_objectives", "normalise_kind"]

#: The kinds rtlab distinguishes, with what each means (dose D in Gy, volume V in %).
KINDS = {
    "squared_deviation": "mean squared deviation from D",
    "squared_overdose": "mean squared dose above D",
    "squared_underdose": "mean squared dose below D",
    "mean": "mean dose (towards D when D > 0)",
    "dvh_max": "at most V % of the volume above D",
    "dvh_min": "at least V % of the volume at D or more",
    "eud": "generalised equivalent uniform dose D with exponent k",
    "max_dose": "no voxel above D (constraint)",
    "min_dose": "no voxel below D (constraint)",
    "min_max_dose": "every voxel between D_min and D_max (constraint)",
    "max_mean": "mean dose at most D (constraint)",
    "min_mean": "mean dose at least D (constraint)",
    "min_max_mean": "mean dose between D_min and D_max (constraint; data only)",
    "min_max_dvh": "DVH point between limits (constraint; data only)",
}

# matRad 2 type strings and matRad 3 class names (lower case, letters only) -> kind
_NAMES = {
    "squaredeviation": "squared_deviation", "squareddeviation": "squared_deviation",
    "squareoverdosing": "squared_overdose", "squaredoverdosing": "squared_overdose",
    "squareunderdosing": "squared_underdose", "squaredunderdosing": "squared_underdose",
    "mean": "mean", "meandose": "mean",
    "maxdvhobjective": "dvh_max", "maxdvh": "dvh_max", "maxdvhconstraint": "dvh_max",
    "mindvhobjective": "dvh_min", "mindvh": "dvh_min", "mindvhconstraint": "dvh_min",
    "eud": "eud", "maxeudconstraint": "eud", "mineudconstraint": "eud",
    "maxdoseconstraint": "max_dose", "mindoseconstraint": "min_dose", "minmaxdose": "min_max_dose",
    "maxmeandoseconstraint": "max_mean", "minmeandoseconstraint": "min_mean", "minmaxmeandose": "min_max_mean",
    "minmaxdvh": "min_max_dvh", "minmaxeud": "eud",
}


def normalise_kind(name: str) -> str | None:
    """rtlab's kind for a matRad 2 type string or a matRad 3 class name (``None`` if unknown).

    >>> normalise_kind("DoseObjectives.matRad_SquaredOverdosing")
    'squared_overdose'
    >>> normalise_kind("max DVH objective")
    'dvh_max'
    """
    s = str(name).split(".")[-1]
    s = re.sub(r"^matrad_", "", s, flags=re.IGNORECASE)
    return _NAMES.get(re.sub(r"[^a-z]", "", s.lower()))


@dataclass(frozen=True)
class MatradObjective:
    """One objective or constraint of a matRad ``cst``, in rtlab's vocabulary.

    Parameters
    ----------
    structure : str
        Structure name, as rtlab loaded it.
    kind : str
        One of :data:`KINDS`.
    dose : float or None
        The dose parameter ``D`` (Gy); for ``min_max_dose`` the minimum.
    dose2 : float or None
        ``min_max_dose``: the maximum (Gy). Otherwise None.
    volume_pct : float or None
        ``dvh_max``/``dvh_min``: the volume ``V`` (%). ``eud``: the exponent ``k``.
    penalty : float
        matRad's penalty (the term's relative weight); 1 for constraints.
    constraint : bool
        matRad treats it as a hard constraint (rtlab's optimiser does not; see the docs).
    source : str
        The type string or class name in the file.
    """

    structure: str
    kind: str
    dose: float | None
    dose2: float | None
    volume_pct: float | None
    penalty: float
    constraint: bool
    source: str

    def __str__(self) -> str:
        if self.kind in ("dvh_max", "dvh_min"):
            what = f"V({self.dose:g} Gy) {'<=' if self.kind == 'dvh_max' else '>='} {self.volume_pct:g} %"
        else:
            what = self.kind if self.dose is None else f"{self.kind} {self.dose:g} Gy"
        return f"{self.structure}: {what} (penalty {self.penalty:g}; {self.source})"


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def _one(structure: str, o: dict) -> MatradObjective | None:
    source = str(o.get("type", "")).strip()
    kind = normalise_kind(source)
    if kind is None:
        warnings.warn(f"matRad objective {source!r} of structure {structure!r} is not known to rtlab; left out "
                      f"(known: {', '.join(sorted(set(_NAMES.values())))})", stacklevel=3)
        return None
    params = [p for p in (o.get("parameters") or [])]
    constraint = "constraint" in source.lower() or source.startswith("DoseConstraints")
    penalty = _num(o.get("penalty"))
    if penalty is None or constraint:
        penalty = 1.0
    dose = dose2 = vol = None
    if params:  # matRad 3: parameters in the class's order
        p = [_num(v) for v in params]
        if kind in ("dvh_max", "dvh_min", "eud"):
            dose, vol = p[0], (p[1] if len(p) > 1 else None)
        elif kind in ("min_max_dose", "min_max_mean", "min_max_dvh"):
            dose, dose2 = p[0], (p[1] if len(p) > 1 else None)
        else:
            dose = p[0]
    else:  # matRad 2: named fields
        dose = _num(o.get("dose"))
        if kind in ("dvh_max", "dvh_min"):
            vol = _num(o.get("volume"))
        elif kind == "eud":
            dose, vol = _num(o.get("dose")), _num(o.get("EUD"))
    if kind in ("min_max_mean", "min_max_dvh"):
        warnings.warn(f"matRad constraint {source!r} of structure {structure!r} is kept as data only "
                      "(rtlab has no equivalent)", stacklevel=3)
    if kind in ("dvh_max", "dvh_min") and (vol is None or not 0.0 <= vol <= 100.0):
        warnings.warn(f"matRad objective {source!r} of structure {structure!r}: volume {vol!r} is not a "
                      "percentage in [0, 100]; left out", stacklevel=3)
        return None
    if kind != "mean" and kind not in ("min_max_mean", "min_max_dvh") and (dose is None or dose < 0):
        warnings.warn(f"matRad objective {source!r} of structure {structure!r} has no valid dose parameter "
                      f"({dose!r}); left out", stacklevel=3)
        return None
    return MatradObjective(structure, kind, dose, dose2, vol, float(penalty), constraint, source)


def matrad_objectives(case) -> list[MatradObjective]:
    """The ``cst`` objectives and constraints of a case loaded by :func:`rtlab.io.load_matrad`.

    Parameters
    ----------
    case : Case
        A case whose ``meta['matrad']`` holds the per-structure objective summaries written
        by the loader. Structures rtlab did not load (no voxels) are skipped.

    Returns
    -------
    list of MatradObjective
        In ``cst`` order. Unknown types are left out with a warning naming them.

    Raises
    ------
    ValueError
        If the case was not loaded from a matRad file.
    """
    info = getattr(case, "meta", {}).get("matrad")
    if not isinstance(info, dict):
        raise ValueError(f"case {getattr(case, 'name', case)!r} was not loaded from a matRad file "
                         "(no meta['matrad']); load it with rtlab.io.load_matrad")
    out = []
    for name, entry in info.items():
        if name not in case.structures:
            continue
        for o in entry.get("objectives", []):
            r = _one(name, o)
            if r is not None:
                out.append(r)
    return out


def goals_from_objectives(objectives, kinds_of=None) -> list[Goal]:
    """Planning goals that read matRad objectives as clinical criteria.

    The reading (ICRU 83 near-minimum D98 and near-maximum D2 for the soft squared terms):

    ===================  ==========================  ==================================
    kind                 goal                        note
    ===================  ==========================  ==================================
    squared_deviation    (target) none               it sets the prescription instead
    squared_deviation    (organ) ``Dmean <= D``
    squared_overdose     ``D2 <= D``                 near-maximum
    squared_underdose    ``D98 >= D``                near-minimum
    mean (D > 0)         ``Dmean <= D``
    dvh_max (D, V)       ``D{V} <= D``               ``V`` % of the volume at most ``D``
    dvh_min (D, V)       ``D{V} >= D``
    max_dose             ``Dmax <= D``
    min_dose             ``Dmin >= D``
    min_max_dose         ``Dmin >= D1``, ``Dmax <= D2``
    max_mean / min_mean  ``Dmean <= D`` / ``>= D``
    eud                  none                        kept as an objective only
    ===================  ==========================  ==================================

    Parameters
    ----------
    objectives : iterable of MatradObjective
    kinds_of : mapping structure name -> rtlab kind ('target', 'oar', 'body'), optional
        Needed to tell a target's squared deviation (the prescription) from an organ's.

    Returns
    -------
    list of Goal
        Without duplicates; for the same structure and metric the stricter value is kept.
    """
    kinds_of = kinds_of or {}
    best: dict[tuple[str, str, str], float] = {}

    def add(s, metric, comp, value):
        key = (s, metric, comp)
        if key in best:
            value = min(best[key], value) if comp == "<=" else max(best[key], value)
        best[key] = float(value)

    for o in objectives:
        s, k, d = o.structure, o.kind, o.dose
        if k == "squared_deviation":
            if kinds_of.get(s) != "target":
                add(s, "Dmean", "<=", d)
        elif k == "squared_overdose":
            add(s, "D2", "<=", d)
        elif k == "squared_underdose":
            add(s, "D98", ">=", d)
        elif k == "mean":
            if d:
                add(s, "Dmean", "<=", d)
        elif k in ("dvh_max", "dvh_min"):
            add(s, f"D{o.volume_pct:g}", "<=" if k == "dvh_max" else ">=", d)
        elif k == "max_dose":
            add(s, "Dmax", "<=", d)
        elif k == "min_dose":
            add(s, "Dmin", ">=", d)
        elif k == "min_max_dose":
            if d is not None and d > 0:
                add(s, "Dmin", ">=", d)
            if o.dose2 is not None and o.dose2 < 1e5:
                add(s, "Dmax", "<=", o.dose2)
        elif k == "max_mean":
            add(s, "Dmean", "<=", d)
        elif k == "min_mean":
            add(s, "Dmean", ">=", d)
    return [Goal(s, m, c, v) for (s, m, c), v in best.items()]
