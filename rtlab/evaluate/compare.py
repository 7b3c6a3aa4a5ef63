"""Score and compare plans: one tidy table, a side-by-side table and a DVH overlay.

:func:`score` turns any number of dose distributions into one *tidy* ``pandas.DataFrame``
(one row per plan, structure and metric) so that plans, methods and parameter sweeps can be
filtered, grouped and plotted with ordinary pandas. :func:`compare` pivots it into a
side-by-side table (one column per plan) and draws a DVH overlay.

All numbers come from :mod:`rtlab.evaluate.metrics`; see its docstring for the exact Dx, Vx and
conformity definitions (rank-interpolated Dx, ``>=`` isodose volumes without sub-voxel
interpolation). Doses on another grid than the structures are resampled onto the structure grid
(trilinear); the table says so in its ``resampled`` column and in ``df.attrs["resampled"]``.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np

from .._lazy import load
from .._util import json_safe
from ..core.case import Goal
from ..core.geometry import Grid, Structure
from ..core.validate import check_dose
from . import metrics as _m

# pandas and matplotlib are imported on first use (rtlab._lazy): scoring a plan needs neither
pd = load("pandas")
mpl = load("matplotlib")
mpl_figure = load("matplotlib.figure")
mpl_lines = load("matplotlib.lines")

__all__ = ["score", "compare", "score_summary", "SCORE_COLUMNS", "STANDARD_METRICS", "CONFORMITY_METRICS"]

#: Columns of the table returned by :func:`score`, in order.
SCORE_COLUMNS = ["plan", "structure", "metric", "value", "unit", "goal", "passed", "mu", "resampled"]
#: Dose statistics reported for every structure.
STANDARD_METRICS = ("D98", "D95", "D50", "D2", "Dmean", "Dmax")
#: Conformity rows reported for every target: (row name, key of the metrics report).
CONFORMITY_METRICS = (
    ("CI_paddick", "ci_paddick"),
    ("CI_rtog", "ci_rtog"),
    ("GI", "gi"),
    ("HI", "hi"),
    ("coverage", "coverage"),
    ("selectivity", "selectivity"),
)


# ---------------------------------------------------------------------------------------------
# input normalisation
# ---------------------------------------------------------------------------------------------
def _maybe_call(v):
    return v() if callable(v) else v


def _plan_entry(name: str, p, sgrid: Grid):
    """Return ``(dose on sgrid, resampled, mu)`` for one plan-like object."""
    mu = None
    grid = None
    if isinstance(p, Mapping):
        if "dose" not in p:
            raise ValueError(f"plan {name!r}: a dict plan needs a 'dose' key (and optionally 'mu', 'grid')")
        dose, mu, grid = p["dose"], p.get("mu"), p.get("grid")
    elif isinstance(p, np.ndarray):
        dose = p
    elif hasattr(p, "dose"):
        dose = _maybe_call(getattr(p, "dose"))
        try:
            mu = _maybe_call(getattr(p, "mu", None))
        except (ImportError, NotImplementedError) as e:  # MU model not available: score anyway
            warnings.warn(f"plan {name!r}: could not compute its MU ({e}); the mu column is NaN", stacklevel=3)
            mu = None
        # the dose's grid, if the object names one (a .dose_grid or .grid that is a Grid)
        grid = next((c for c in (getattr(p, "dose_grid", None), getattr(p, "grid", None))
                     if isinstance(c, Grid)), None)
    else:
        raise TypeError(
            f"plan {name!r} must be a dose array (Gy), a dict(dose=..., mu=..., grid=...) or an "
            f"object with a .dose attribute, got {type(p).__name__}"
        )
    # a dose object (array + its grid), e.g. a dose-engine result
    if not isinstance(dose, np.ndarray) and hasattr(dose, "dose"):
        grid = getattr(dose, "grid", grid)
        dose = _maybe_call(dose.dose)
    dose = np.asarray(dose)
    try:
        check_dose("dose", dose)
    except (TypeError, ValueError) as e:
        raise type(e)(f"plan {name!r}: {e}") from None
    if grid is not None and not isinstance(grid, Grid):
        raise TypeError(f"plan {name!r}: grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
    if grid is not None and tuple(grid.shape) != dose.shape and dose.shape == sgrid.shape:
        grid = None  # the object's grid is not the dose's (e.g. a CT grid); the dose is on sgrid
    try:
        d, res = _m.dose_on_grid(dose, sgrid, grid)
    except (ValueError, TypeError) as e:
        raise type(e)(f"plan {name!r}: {e}") from None
    if mu is None:
        mu_f = math.nan
    else:
        try:
            mu_f = float(np.sum(np.asarray(mu, dtype=float)))  # per-beam MU are summed
        except (TypeError, ValueError):
            raise TypeError(f"plan {name!r}: mu must be the total monitor units (a number), got {mu!r}") from None
    return d, res, mu_f


def _plans_of(plans) -> list[tuple[str, object]]:
    if isinstance(plans, np.ndarray):
        return [("plan", plans)]
    if isinstance(plans, Mapping):
        if isinstance(plans.get("dose"), np.ndarray):
            return [("plan", plans)]  # a single dict(dose=..., mu=...) plan
        if not plans:
            raise ValueError("plans is empty; give at least one dose")
        return [(str(k), v) for k, v in plans.items()]
    if isinstance(plans, (list, tuple)):
        if not plans:
            raise ValueError("plans is empty; give at least one dose")
        return [(f"plan{i}", p) for i, p in enumerate(plans)]
    if hasattr(plans, "dose"):
        return [(str(getattr(plans, "name", "plan")), plans)]
    raise TypeError(
        "plans must be a dose array, a mapping name -> dose array / dict(dose=, mu=) / object "
        f"with .dose, or a list of those; got {type(plans).__name__}"
    )


def _goals_of(goals, obj, names: set[str]) -> list[Goal]:
    if goals is None:
        goals = list(getattr(obj, "goals", []) or [])
    out = []
    for g in goals:
        if isinstance(g, Goal):
            out.append(g)
        elif isinstance(g, (tuple, list)) and len(g) == 4:
            out.append(Goal(*g))
        else:
            raise TypeError(f"goals must hold rtlab.core.case.Goal objects or (structure, metric, comparator, value) tuples, got {g!r}")
    for g in out:
        if g.structure not in names:
            raise ValueError(f"goal '{g}' names structure {g.structure!r}, which is not among {sorted(names)}")
        _m.parse_metric(g.metric)  # fail early on a bad metric
    return out


def _level_for(t: Structure, rx, case_rx) -> float:
    if isinstance(rx, Mapping):
        rx = rx.get(t.name)
    if rx is None:
        rx = t.prescription if t.prescription is not None else case_rx
    if rx is None:
        raise ValueError(
            f"target {t.name!r} has no prescription and the case none either; pass rx=<Gy> "
            "(or rx={name: Gy}) to score its conformity"
        )
    return _m.check_level("rx", rx)


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def score(plans, case_or_structures, goals=None, rx=None, body=None) -> pd.DataFrame:
    """Score one or many plans into one tidy ``pandas.DataFrame``.

    Parameters
    ----------
    plans : ndarray, mapping or list
        A dose array (Gy) on the structure grid; or a mapping ``name -> plan`` where a plan is
        a dose array, a ``dict(dose=..., mu=..., grid=...)`` or an object with ``.dose`` (and
        optionally ``.mu`` monitor units and ``.grid`` / ``.dose_grid``, the dose's
        :class:`~rtlab.core.geometry.Grid`; ``.dose`` and ``.mu`` may be methods, e.g.
        :class:`rtlab.dose.Plan`); or a list of those (named ``plan0``, ``plan1``, ...).
        ``mu`` may be a number or per-beam values, which are summed to the plan's total MU.
        Doses on another grid are resampled (trilinear) onto the structure grid.
    case_or_structures : Case, StructureSet, mapping or list of Structure
        The structures; a :class:`~rtlab.core.case.Case` also supplies goals and the prescription.
    goals : list of Goal or (structure, metric, comparator, value) tuples, optional
        Default: ``case.goals`` (none for a bare structure set).
    rx : float or mapping name -> float, optional
        Isodose level (Gy) for the conformity rows, for every target (float) or per target name
        (mapping). Default: each target's prescription, else the case's; a target with neither
        raises ``ValueError``.
    body : Structure or ndarray of bool, optional
        Region for isodose volumes (PIV). Default: the ``kind='body'`` structure if any, else
        the whole grid.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SCORE_COLUMNS`: ``plan``, ``structure``, ``metric``, ``value`` (float),
        ``unit`` (``'Gy'``, ``'%'``, ``'cc'`` or ``''``), ``goal`` (e.g. ``'>= 57'`` or ``''``),
        ``passed`` (nullable boolean; NA for rows without a goal), ``mu`` (the plan's total MU or
        NaN) and ``resampled`` (bool). Rows per plan: for every non-empty structure the
        :data:`STANDARD_METRICS` (Dx as in :func:`rtlab.evaluate.metrics.dose_at_volume`); for every
        target the :data:`CONFORMITY_METRICS` (Paddick / RTOG CI, GI, ICRU 83 HI, coverage,
        selectivity at its isodose); then one row per goal, evaluated with
        :func:`rtlab.evaluate.metrics.evaluate`. ``df.attrs`` holds ``resampled`` (plan -> bool) and
        ``rx`` (target -> Gy).
    """
    items, set_body, case_rx = _m.structures_of(case_or_structures)
    if not items:
        raise ValueError("case_or_structures holds no structures; nothing to score")
    sgrid = items[0].grid
    by_name = {s.name: s for s in items}
    goal_list = _goals_of(goals, case_or_structures, set(by_name))
    region = _m.region_mask(body if body is not None else set_body, sgrid)
    present = []
    for s in items:
        if s.mask.any():
            present.append(s)
        else:
            warnings.warn(f"structure {s.name!r} is empty and is left out of the score", stacklevel=2)
    targets = [s for s in _m.targets_of(items) if s.mask.any()]
    levels = {t.name: _level_for(t, rx, case_rx) for t in targets}

    rows = []
    resampled = {}
    for pname, p in _plans_of(plans):
        d, res, mu = _plan_entry(pname, p, sgrid)
        resampled[pname] = res
        sorted_doses = {}

        def row(structure, metric, value, unit, goal="", passed=pd.NA):
            rows.append((pname, structure, metric, float(value), unit, goal, passed, mu, res))

        for s in present:
            ds = _m.sorted_desc(d, s.mask)
            sorted_doses[s.name] = ds
            for met in STANDARD_METRICS:
                spec = _m.parse_metric(met)
                row(s.name, met, _m.evaluate_sorted(spec, ds, sgrid.voxel_volume_cc, s.name), "Gy")
            if s in targets:
                rep = _m.conformity_from(d, s, levels[s.name], region)
                for met, key in CONFORMITY_METRICS:
                    row(s.name, met, rep[key], "")
        for g in goal_list:
            if g.structure not in sorted_doses:
                continue  # empty structure (warned above)
            spec = _m.parse_metric(g.metric)
            v = _m.evaluate_sorted(spec, sorted_doses[g.structure], sgrid.voxel_volume_cc, g.structure)
            row(g.structure, g.metric, v, spec.unit, f"{g.comparator} {g.value:g}", g.passed(v))
    df = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    df["passed"] = df["passed"].astype("boolean")
    df["value"] = df["value"].astype(float)
    df["mu"] = df["mu"].astype(float)
    df["resampled"] = df["resampled"].astype(bool)
    df.attrs["resampled"] = resampled
    df.attrs["rx"] = levels
    return df


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
_STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3))]


def compare(plans, case, goals=None, rx=None, body=None, structures=None, unit: str = "%",
            ax=None, figsize=(7.0, 4.5)):
    """Side-by-side table and DVH overlay of several plans.

    Parameters
    ----------
    plans, case, goals, rx, body
        As for :func:`score`.
    structures : list of str, optional
        Structures drawn in the DVH overlay; default every non-empty structure except the body.
    unit : {'%', 'cc'}
        DVH volume axis.
    ax : matplotlib Axes, optional
        Draw into this axes; default a new ``matplotlib.figure.Figure`` (no pyplot, so no
        backend is needed and nothing is shown twice in a notebook).
    figsize : tuple of float
        Size in inches of a new figure.

    Returns
    -------
    wide : pandas.DataFrame
        Index ``(structure, metric, goal, unit)`` in the order of :func:`score`, one column per
        plan holding the value; a last row ``("plan", "MU", "", "MU")`` (total monitor units)
        when any plan carries MU.
        ``wide.attrs["passed"]`` is the same table of pass/fail for the goal rows.
    fig : matplotlib.figure.Figure
        DVH overlay: one colour per structure (its ``color`` if set), one line style per plan.
    """
    if unit not in ("%", "cc"):
        raise ValueError(f"unit must be '%' or 'cc', got {unit!r}")
    df = score(plans, case, goals=goals, rx=rx, body=body)
    key = ["structure", "metric", "goal", "unit"]
    plan_names = list(dict.fromkeys(df["plan"]))
    dd = df.drop_duplicates(key + ["plan"])
    order = list(dict.fromkeys(map(tuple, dd[key].itertuples(index=False, name=None))))
    idx = pd.MultiIndex.from_tuples(order, names=key)
    wide = dd.set_index(key + ["plan"])["value"].unstack("plan").reindex(index=idx, columns=plan_names)
    passed = dd.set_index(key + ["plan"])["passed"].unstack("plan").reindex(index=idx, columns=plan_names)
    mus = df.groupby("plan", sort=False)["mu"].first().reindex(plan_names)
    if mus.notna().any():
        mu_row = pd.DataFrame([mus.to_numpy()], columns=plan_names,
                              index=pd.MultiIndex.from_tuples([("plan", "MU", "", "MU")], names=key))
        wide = pd.concat([wide, mu_row])
    wide.columns.name = "plan"
    wide.attrs["passed"] = passed
    wide.attrs["resampled"] = df.attrs["resampled"]

    # DVH overlay
    items, _, _ = _m.structures_of(case)
    sgrid = items[0].grid
    if structures is None:
        draw = [s for s in items if s.kind != "body" and s.mask.any()]
    else:
        by_name = {s.name: s for s in items}
        missing = [n for n in structures if n not in by_name]
        if missing:
            raise ValueError(f"structures {missing} not found; available: {list(by_name)}")
        draw = [by_name[n] for n in structures]
    if ax is None:
        fig = mpl_figure.Figure(figsize=figsize)
        fig.subplots_adjust(left=0.1, right=0.76, bottom=0.12, top=0.92)  # room for the legends
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    cmap = mpl.colormaps["tab10"]
    colours = {s.name: (s.color if s.color is not None else cmap(i % 10)) for i, s in enumerate(draw)}
    styles = {p: _STYLES[i % len(_STYLES)] for i, p in enumerate(plan_names)}
    dmax = 0.0
    for pname, p in _plans_of(plans):
        d, _, _ = _plan_entry(pname, p, sgrid)
        for s in draw:
            h = _m.dvh(d, s)
            dmax = max(dmax, float(h.dose_gy[-1]))
            h.plot(ax, unit=unit, color=colours[s.name], linestyle=styles[pname], label=f"{s.name} ({pname})")
    s_handles = [mpl_lines.Line2D([], [], color=colours[s.name], label=s.name) for s in draw]
    p_handles = [mpl_lines.Line2D([], [], color="k", linestyle=styles[p], label=p) for p in plan_names]
    leg = ax.legend(handles=s_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                    title="structure")
    ax.add_artist(leg)
    ax.legend(handles=p_handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize="small", title="plan")
    ax.set_xlim(0, 1.05 * dmax if dmax > 0 else 1.0)
    ax.set_ylim(0, 105 if unit == "%" else None)
    ax.grid(True, alpha=0.3)
    ax.set_title("DVH")
    return wide, fig


def score_summary(case, dose, rx: float | None = None) -> dict:
    """A JSON-ready summary of a dose on the case's CT grid (``rtlab score --json`` prints it).

    Keys: ``case``, ``target`` (first target), ``rx_gy``, ``ci_paddick``, ``ci_rtog``, ``gi``,
    ``hi``, ``coverage``, ``selectivity`` (first target at its prescription or ``rx``),
    ``structures`` (``{name: {D95, D98, D2, D10, Dmean, Dmax}}``, Gy) and ``goals`` (one
    ``{goal, value, passed}`` per case goal). NaN/inf become ``None``.
    """
    targets = case.structures.targets
    if not targets:
        raise ValueError(f"case {case.name!r} has no target structure; CI/GI/HI need one")
    rx = rx if rx is not None else (case.prescription or targets[0].prescription)
    if rx is None:
        raise ValueError("no prescription known for the target: pass rx= (Gy; --rx GY on the command line)")
    dose = check_dose("dose", case.grid.check_array("dose", dose))
    report = _m.conformity_report(dose, case.structures, rx=rx)
    out = {
        "case": case.name,
        "target": targets[0].name,
        "rx_gy": float(rx),
        **{k: json_safe(report[k]) for k in ("ci_paddick", "ci_rtog", "gi", "hi", "coverage", "selectivity")},
        "structures": {},
        "goals": [],
    }
    for s in case.structures.values():
        if not s.mask.any():
            continue
        st = _m.structure_stats(dose, s)
        out["structures"][s.name] = {k: json_safe(st[k]) for k in ("D95", "D98", "D2", "D10", "Dmean", "Dmax")}
    for g in case.goals:
        v = _m.evaluate(dose, case.structures[g.structure], g.metric)
        out["goals"].append({"goal": str(g), "value": json_safe(v), "passed": g.passed(v)})
    return out
