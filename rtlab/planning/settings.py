"""Every setting of a plan in one frozen, validated object: :class:`PlanSettings`.

The planning calls (:func:`~rtlab.planning.prepare_plan`, :func:`~rtlab.planning.optimise_plan`,
:func:`~rtlab.planning.plan_case`, :meth:`~rtlab.planning.PlanProblem.with_objective`), the
command line (``rtlab plan``), the panels and the batch all describe a plan with the same
values; they are checked here, once, when a :class:`PlanSettings` is made, and travel unchanged
from there (``dataclasses.replace`` makes a changed copy and checks it again).

The dose-grid spacing has one name everywhere: ``dose_grid_mm`` (mm; ``None`` = the CT grid),
from ``rtlab plan --grid MM`` to :func:`rtlab.dose.build_influence`.

The objective recipes' weights and levels (:data:`CONFORMITY_RECIPE`, :data:`QUADRATIC_RECIPE`)
are settings too: a plan changes them with ``recipe_overrides``, checked by :func:`full_recipe`;
:mod:`rtlab.planning.recipes` turns them into objective terms.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from .._util import check_positive
from ..core.validate import check_spacing
from ..dose.sparse import BACKENDS
from ..methods.control_points import RingFilter, Thresholds

__all__ = ["PlanSettings", "OBJECTIVES", "CONFORMITY_RECIPE", "QUADRATIC_RECIPE", "SOLVER_METHODS", "full_recipe",
           "control_point_find_options"]

#: Objective recipes understood by :func:`plan_case`. ``'matrad'``: the case's own matRad ``cst``
#: objectives with their penalties (cases loaded from matRad files; :mod:`rtlab.planning.intent`).
OBJECTIVES = ("conformity", "quadratic", "matrad")

#: Weights and dose levels of the conformity recipe (levels are fractions of the prescription
#: ``D``, or of the goal value ``v`` for organs; quadratic terms are in Gy^2, averaged over
#: their voxels, so weights ~1e-3 balance a conformity weight of 1).
CONFORMITY_RECIPE = {
    "steepness": 50.0,          # k of sigmoid(k (d - D) / D), patent 000 eq 9
    "conformity_weight": 1.0,
    "coverage_level": 1.01,     # underdose below 1.01 D
    "coverage_weight": 0.1,
    "hot_level": 1.08,          # target overdose above 1.08 D
    "hot_weight": 1e-3,
    "max_level": 1.12,          # smooth maximum over the region of interest
    "max_weight": 1e-3,
    "max_softness": 0.5,        # Gy, log-sum-exp temperature
    "oar_level": 0.5,           # organ overdose above 0.5 v for a goal "<= v"
    "oar_weight": 2e-3,
    "goal_max_level": 0.97,     # goal terms: "Dx <= v" -> DVH maximum at 0.97 v on x % of the structure
    "goal_min_level": 1.02,     # "Dx >= v" -> DVH minimum at 1.02 v on x % of the structure
    "goal_target_weight": 0.1,  # weight of a target's goal terms
    "goal_oar_weight": 0.02,    # weight of an organ's goal terms
    "goal_rounds": 3,           # goal-driven re-weighting: at most this many warm-started rounds (0 = off)
    "goal_round_factor": 4.0,   # each round multiplies the weight of every failing goal's term by this
    "goal_round_iter": 0.5,     # iterations of a round, as a fraction of max_iter
    "guard_level": 0.8,         # dose-grid rows outside the region of interest
    "guard_weight": 1e-2,
    "ring_fraction": 0.8,       # falloff: automatic low-dose ring at 0.8 D (para. 80)
    "ring_weight": 0.3,
    "control_point_weight": 1e-3,
    "control_point_outside": 0.9,  # outside control points: dose <= 0.9 D
    "control_point_find": None,    # find_control_points keyword arguments (dict); None = defaults, mode '2d'
}

#: Recipe entries that are not numbers (validated by their own functions).
_NON_NUMERIC = ("control_point_find",)

#: Keyword arguments of find_control_points that the recipe entry ``control_point_find`` may set.
_CP_FIND_KEYS = ("r_in", "r_out", "inside_filter", "outside_filter", "thresholds", "mode", "smooth_mm", "backend")

#: Weights and levels of the conventional quadratic recipe.
QUADRATIC_RECIPE = {
    "target_weight": 1.0,       # mean squared deviation from D
    "oar_level": 0.6,
    "oar_weight": 0.3,
    "normal_level": 0.6,        # normal tissue above 0.6 D
    "normal_weight": 0.3,
    "guard_level": 0.6,
    "guard_weight": 0.3,
}

#: The ``'matrad'`` objective: the file's terms and penalties only, plus the guard of the dose-grid
#: rows outside the evaluated structures (coarse dose grid only; weight 0 = off, as matRad).
MATRAD_RECIPE = {
    "guard_level": 0.8,
    "guard_weight": 0.0,
}

#: Solver methods (:class:`rtlab.optimize.Solver`).
SOLVER_METHODS = ("lbfgsb", "pg")

#: Settings of :func:`~rtlab.planning.optimise_plan` (the rest belong to the problem).
SOLVER_FIELDS = ("method", "max_iter", "change_threshold", "change_window", "objective_threshold", "report_every")


def full_recipe(objective: str, recipe: Mapping | None = None) -> dict:
    """The full recipe of ``objective``: its defaults with the entries of ``recipe`` changed.

    Numbers become floats; ``control_point_find`` is completed by
    :func:`control_point_find_options`.

    Raises
    ------
    TypeError, ValueError
        A ``recipe`` that is not a mapping, an entry the recipe does not have, or a bad value.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    base = {"conformity": CONFORMITY_RECIPE, "quadratic": QUADRATIC_RECIPE, "matrad": MATRAD_RECIPE}[objective]
    rec = dict(base)
    if recipe is not None and not isinstance(recipe, Mapping):
        raise TypeError(f"recipe must be a dict of recipe entries (e.g. {{'steepness': 30}}) or None, "
                        f"got {type(recipe).__name__}")
    for k, v in (recipe or {}).items():
        if k not in base:
            raise ValueError(f"unknown recipe entry {k!r} for objective {objective!r}; known: {sorted(base)}")
        if k in _NON_NUMERIC:
            rec[k] = v
            continue
        try:
            rec[k] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"recipe entry {k!r} must be a number, got {v!r}") from None
    if "control_point_find" in rec:
        rec["control_point_find"] = control_point_find_options(rec["control_point_find"])
    if "goal_rounds" in rec:
        r = rec["goal_rounds"]
        if not (np.isfinite(r) and r >= 0 and r == int(r)):
            raise ValueError(f"recipe entry 'goal_rounds' must be a whole number >= 0 (0 = off), got {r!r}")
        if not (np.isfinite(rec["goal_round_factor"]) and rec["goal_round_factor"] >= 1):
            raise ValueError(f"recipe entry 'goal_round_factor' must be >= 1, got {rec['goal_round_factor']!r}")
        if not (0 < rec["goal_round_iter"] <= 1):
            raise ValueError(f"recipe entry 'goal_round_iter' must be in (0, 1] (a fraction of max_iter), "
                             f"got {rec['goal_round_iter']!r}")
        for k in ("goal_max_level", "goal_min_level", "goal_target_weight", "goal_oar_weight"):
            if not (np.isfinite(rec[k]) and rec[k] >= 0):
                raise ValueError(f"recipe entry {k!r} must be a finite number >= 0, got {rec[k]!r}")
    return rec


def control_point_find_options(spec: Mapping | None = None) -> dict:
    """Validate the recipe entry ``control_point_find`` and fill in the defaults.

    The entry holds keyword arguments of
    :func:`rtlab.methods.control_points.find_control_points` (patent 000, para. 154-197), the
    call that finds the control points of a plan with ``control_points=True``.

    Parameters
    ----------
    spec : mapping or None
        Any of ``r_in``, ``r_out`` (sampling band inside / outside the target, mm, >= 0, not
        both 0), ``inside_filter``, ``outside_filter`` (a ``RingFilter``, an outer radius in mm,
        or ``(outer_mm, inner_mm)``), ``thresholds`` (a ``Thresholds`` or a dict of its fields),
        ``mode`` (``'2d'`` circles per axial slice, ``'3d'`` spheres), ``smooth_mm`` (Gaussian
        sigma in mm, >= 0, or None = one voxel) and ``backend`` (``'numba'`` / ``'numpy'``).
        ``None`` or ``{}``: the library defaults with ``mode='2d'``.

    Returns
    -------
    dict
        All eight keyword arguments, filters as ``RingFilter`` and thresholds as ``Thresholds``:
        ``find_control_points(mask, spacing, **result)``.

    Raises
    ------
    TypeError, ValueError
        For a non-mapping, an unknown key or a bad value; the message names the key.
    """
    out = {"r_in": 10.0, "r_out": 10.0, "inside_filter": RingFilter(8.0), "outside_filter": RingFilter(8.0),
           "thresholds": Thresholds(), "mode": "2d", "smooth_mm": None, "backend": "numba"}
    if spec is None:
        return out
    where = "recipe['control_point_find']"
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where} must be a dict of find_control_points keyword arguments, e.g. "
                        f"{{'mode': '3d', 'r_out': 6.0}}, or None for the defaults; got {type(spec).__name__}")
    bad = [k for k in spec if k not in _CP_FIND_KEYS]
    if bad:
        raise ValueError(f"{where}: unknown key(s) {bad}; allowed: {list(_CP_FIND_KEYS)} "
                         "(mask and spacing come from the case)")
    for k in ("r_in", "r_out"):
        if k in spec:
            v = spec[k]
            if isinstance(v, bool) or not np.isscalar(v):
                raise TypeError(f"{where}['{k}'] must be a number in mm, got {v!r}")
            (out[k],) = check_positive(f"{where}['{k}'] (mm)", v, allow_zero=True)
    if out["r_in"] == 0 and out["r_out"] == 0:
        raise ValueError(f"{where}: r_in and r_out are both 0 mm; widen at least one (e.g. 10 mm)")
    for k in ("inside_filter", "outside_filter"):
        if k not in spec:
            continue
        f = spec[k]
        if isinstance(f, RingFilter):
            out[k] = f
            continue
        try:
            if isinstance(f, Mapping):
                out[k] = RingFilter(**f)
            elif isinstance(f, (str, bytes)) or (not np.isscalar(f) and (np.ndim(f) != 1 or np.size(f) != 2)):
                raise TypeError("not a filter")
            elif np.isscalar(f):
                out[k] = RingFilter(f)
            else:
                b, a = f
                out[k] = RingFilter(b, a)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}['{k}']: {exc}; give a RingFilter, an outer radius in mm or "
                            f"(outer_mm, inner_mm), got {f!r}") from None
    if "thresholds" in spec:
        t = spec["thresholds"]
        if isinstance(t, Thresholds):
            out["thresholds"] = t
        elif isinstance(t, Mapping):
            try:
                out["thresholds"] = Thresholds(**t)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{where}['thresholds']: {exc}") from None
        else:
            raise TypeError(f"{where}['thresholds'] must be a Thresholds or a dict of its fields "
                            f"(ratio, bulge, length, enclosed, count), got {t!r}")
    if "mode" in spec:
        if spec["mode"] not in ("2d", "3d"):
            raise ValueError(f"{where}['mode'] must be '2d' (circles per axial slice) or '3d' (spheres), "
                             f"got {spec['mode']!r}")
        out["mode"] = spec["mode"]
    if spec.get("smooth_mm") is not None:
        v = spec["smooth_mm"]
        if isinstance(v, bool) or not np.isscalar(v):
            raise TypeError(f"{where}['smooth_mm'] must be a number in mm or None, got {v!r}")
        (out["smooth_mm"],) = check_positive(f"{where}['smooth_mm'] (mm)", v, allow_zero=True)
    if "backend" in spec:
        if spec["backend"] not in ("numba", "numpy"):
            raise ValueError(f"{where}['backend'] must be 'numba' or 'numpy', got {spec['backend']!r}")
        out["backend"] = spec["backend"]
    return out


def _optional_positive(name: str, v, allow_zero: bool = False):
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a number or None, got {v!r}")
    (f,) = check_positive(name, v, allow_zero=allow_zero)
    return f


def _frozen_mapping(name: str, v):
    if v is None:
        return None
    if not isinstance(v, Mapping):
        return v  # reported by the caller's own check, with its own message
    return types.MappingProxyType(dict(v))


@dataclass(frozen=True, eq=True)
class PlanSettings(Mapping):
    """The settings of a plan (frozen; every value checked when it is made).

    Parameters
    ----------
    objective : {'conformity', 'quadratic', 'matrad'}
        Objective recipe (:mod:`rtlab.planning.recipes`).
    falloff_gy_per_mm : float, optional
        Dose falloff gradient ``G`` in Gy/mm (patent 000 eqs 16-17; 2.0 Gy/mm = 200 cGy/mm);
        conformity recipe only.
    control_points : bool
        Control-point dose bounds on every target (patent 000, para. 154-197); conformity only.
    bixel_mm : float
        Bixel size at the isocentre plane (mm).
    dose_grid_mm : float, optional
        Dose-grid spacing (mm; :func:`rtlab.core.validate.check_spacing`); ``None`` = the CT grid.
    roi_mm : float
        Region of interest for CT-grid evaluation with a coarse dose grid (mm around targets).
    rx : float, optional
        Prescription (Gy) for a first target without one.
    recipe_overrides : mapping, optional
        Changes to the recipe's weights and levels (:data:`~rtlab.planning.CONFORMITY_RECIPE`,
        :data:`~rtlab.planning.QUADRATIC_RECIPE`); ``control_point_find`` holds
        :func:`~rtlab.methods.control_points.find_control_points` keyword arguments.
    term_weights : mapping term name -> float, optional
        Weights of individual terms set after the recipe (the per-target ``w_I`` of eq 6).
    w1, w2 : float, optional
        Split conformity objective ``w1 (F - C1)^2 + w2 (S - C2)^2`` (patent 000 eq 7); conformity only.
    cutoff_mm : float, optional
        Lateral cut-off (mm) of the sparse influence matrix (its narrow Gaussians); default automatic
        (:func:`rtlab.dose.broad.auto_cutoff_mm`; the broad Gaussians are never truncated).
    backend : str
        Mat-vec backend of :class:`rtlab.dose.sparse.DoseOperator`.
    method : {'lbfgsb', 'pg'}
        Solver (:class:`rtlab.optimize.Solver`).
    max_iter : int
    change_threshold : float, optional
        Stop when the objective changes less than this (relative) over ``change_window``
        iterations (patent 000 claim 6); ``None`` = off.
    change_window : int
    objective_threshold : float, optional
        Stop when the objective falls below this (patent 000 para. 83); ``None`` = off.
    report_every : int
        Term reports (F, S, f_C of conformity terms) every this many iterations.

    Notes
    -----
    :attr:`recipe` is the full recipe these settings give (defaults with the overrides applied,
    ``control_point_find`` completed); :attr:`solver_options` the solver's keyword arguments.
    For one release a :class:`PlanSettings` also reads like the dict it replaces
    (``settings["dose_grid_mm"]``, ``settings["recipe"]``, ``settings["solver_options"]``).
    """

    objective: str = "conformity"
    falloff_gy_per_mm: float | None = None
    control_points: bool = False
    bixel_mm: float = 5.0
    dose_grid_mm: float | None = None
    roi_mm: float = 20.0
    rx: float | None = None
    recipe_overrides: Mapping | None = None
    term_weights: Mapping | None = None
    w1: float | None = None
    w2: float | None = None
    cutoff_mm: float | None = None
    backend: str = "numba"
    method: str = "lbfgsb"
    max_iter: int = 100
    change_threshold: float | None = 1e-4
    change_window: int = 5
    objective_threshold: float | None = None
    report_every: int = 10
    _recipe: Mapping = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        conf = self.objective == "conformity"
        put("falloff_gy_per_mm", _optional_positive("falloff (Gy/mm)", self.falloff_gy_per_mm))
        if self.falloff_gy_per_mm is not None and not conf:
            raise ValueError("falloff applies to objective='conformity' only")
        put("control_points", bool(self.control_points))
        if self.control_points and not conf:
            raise ValueError("control_points applies to objective='conformity' only")
        (b,) = check_positive("bixel_mm", self.bixel_mm)
        put("bixel_mm", b)
        if self.dose_grid_mm is not None:
            if isinstance(self.dose_grid_mm, bool):
                raise TypeError(f"dose_grid_mm must be a number or None, got {self.dose_grid_mm!r}")
            (g,) = check_spacing("dose_grid_mm", self.dose_grid_mm, n=1)
            put("dose_grid_mm", g)
        (r,) = check_positive("roi_mm", self.roi_mm)
        put("roi_mm", r)
        put("rx", _optional_positive("rx (Gy)", self.rx))
        put("cutoff_mm", _optional_positive("cutoff_mm", self.cutoff_mm))
        if (self.w1 is not None or self.w2 is not None) and not conf:
            raise ValueError("w1/w2 (patent 000 eq 7) apply to objective='conformity' only; pass w1=None, w2=None")
        for k in ("w1", "w2"):
            v = getattr(self, k)
            if v is not None:
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    raise TypeError(f"{k} must be a number or None (patent 000 eq 7), got {v!r}") from None
                if not (np.isfinite(f) and f >= 0):
                    raise ValueError(f"w1 and w2 must be finite and >= 0 (patent 000 eq 7), got {self.w1!r}, {self.w2!r}")
                put(k, f)
        tw = self.term_weights
        if tw is not None:
            if not isinstance(tw, Mapping):
                raise TypeError("weights must be a dict term name -> weight, e.g. {'PTV conformity': 2.0}")
            for name, w in tw.items():
                try:
                    f = float(w)
                except (TypeError, ValueError):
                    raise TypeError(f"weights[{name!r}] must be a number, got {w!r}") from None
                if not (np.isfinite(f) and f >= 0):
                    raise ValueError(f"weights[{name!r}] must be a finite weight >= 0, got {w!r}")
            put("term_weights", _frozen_mapping("term_weights", tw) if tw else None)
        rec = self.recipe_overrides
        put("_recipe", types.MappingProxyType(full_recipe(self.objective, rec)))  # checks the overrides
        put("recipe_overrides", _frozen_mapping("recipe_overrides", rec) if rec else None)
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.method not in SOLVER_METHODS:
            raise ValueError(f"method must be one of {SOLVER_METHODS}, got {self.method!r}")
        for k, what in (("max_iter", ""), ("change_window", " iteration")):
            v = getattr(self, k)
            try:
                n = int(v)
            except (TypeError, ValueError):
                raise TypeError(f"{k} must be an integer, got {v!r}") from None
            if n < 1:
                raise ValueError(f"{k} must be >= 1{what}, got {v!r}")
            put(k, n)
        put("report_every", max(1, int(self.report_every)))
        put("change_threshold", _optional_positive("change_threshold", self.change_threshold, allow_zero=True))
        if self.objective_threshold is not None:
            try:
                f = float(self.objective_threshold)
            except (TypeError, ValueError):
                raise TypeError(f"objective_threshold must be a number or None, got {self.objective_threshold!r}") from None
            if not np.isfinite(f):
                raise ValueError(f"objective_threshold must be finite or None, got {self.objective_threshold!r}")
            put("objective_threshold", f)

    # -- derived values ------------------------------------------------------------------------
    @property
    def recipe(self) -> dict:
        """The full recipe: the objective's defaults with :attr:`recipe_overrides` applied (a copy)."""
        return dict(self._recipe)

    @property
    def solver_options(self) -> dict:
        """Keyword arguments of :class:`rtlab.optimize.Solver` (``objective_threshold`` only when set)."""
        out = dict(method=self.method, max_iter=self.max_iter, change_threshold=self.change_threshold,
                   change_window=self.change_window, report_every=self.report_every)
        if self.objective_threshold is not None:
            out["objective_threshold"] = self.objective_threshold
        return out

    # -- read-only mapping view, kept for one release (settings used to be a dict) ----------------
    _KEYS = ("objective", "falloff_gy_per_mm", "control_points", "bixel_mm", "dose_grid_mm", "roi_mm", "recipe",
             "recipe_overrides", "rx", "term_weights", "w1", "w2", "backend", "cutoff_mm", "solver_options")

    def __getitem__(self, key):
        if key == "recipe":
            return self.recipe
        if key == "solver_options":
            return self.solver_options
        if key in self._KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    __hash__ = None  # holds mappings

    def __eq__(self, other):
        if not isinstance(other, PlanSettings):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.compare)
