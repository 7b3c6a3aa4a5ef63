"""The planning pipeline: case -> influence matrix -> objective -> optimised dose -> scores.

:func:`plan_case` runs the whole chain in one call and returns a :class:`PlanResult` that holds
the dose on the CT grid (Gy, ``(z, y, x)``), the beamlet weights, MU per beam, the optimisation
history, timings and the score table; :meth:`PlanResult.review` opens the review step of
patent 000 (para. 101, claim 12) on it.

The chain has two public halves, which interactive tools call separately:
:func:`prepare_plan` (influence matrix, operator, objective, preliminary plan ->
:class:`PlanProblem`) and :func:`optimise_plan` (solver, dose, MU, scores -> :class:`PlanResult`;
it takes a ``threading.Event`` to stop a run from another thread).
:meth:`PlanProblem.with_objective` changes the objective (recipe, weights, ``w1``/``w2``,
steepness, falloff, control points) on the same influence matrix without rebuilding it.

Where the objective is evaluated
--------------------------------
The plan is scored on the CT grid, so the objective is evaluated there too. With a coarser dose
grid (``dose_grid_mm``) the CT-grid dose is the trilinear interpolation of the dose-grid dose,
``d_ct = R A x`` with ``R`` a sparse interpolation matrix (8 non-zeros per CT voxel, the same
interpolation as :func:`rtlab.geometry.resample`, order 1). :class:`PlanOperator` applies
``E x = [R_roi A x ; A x]``: the CT voxels of a region of interest (``roi``: the body within
``roi_mm`` of a target, plus the organs with goals) followed by every dose-grid row; its
adjoint is ``A^T (R_roi^T g_ct + g_dose)``. Both products run on the numba
:class:`rtlab.dose.sparse.DoseOperator`. Terms pick their voxels from ``E x``: conformity,
coverage, organ and hot-spot terms act on CT voxels; a "guard" overdose term on the dose-grid
rows outside the region of interest keeps stray high dose out of the part of the body that the
CT-grid terms do not see. On the CT grid itself (``dose_grid_mm=None``) ``E = A`` and every
body voxel is evaluated.

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
* guard (coarse dose grid only): mean squared overdose above ``guard_level * min(D)`` on the
  dose-grid rows outside the region of interest;
* with ``control_points=True``: the dose bounds of :mod:`rtlab.methods.control_points`
  (para. 179-181) as a quadratic penalty. The points are those of
  :func:`~rtlab.methods.control_points.find_control_points` on the first target with the
  keyword arguments of the recipe entry ``control_point_find`` (a dict, see
  :func:`control_point_find_options`; default ``None`` = the library defaults with
  ``mode='2d'``).

``'quadratic'`` (the conventional objective, for comparison): mean squared deviation from ``D``
in each target, the same organ terms, and a mean squared overdose of the normal tissue above
``normal_level * D``.

The weights and levels are :data:`CONFORMITY_RECIPE` and :data:`QUADRATIC_RECIPE`; override any
of them with ``recipe={...}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from ._util import check_positive, is_int, json_safe
from .geometry import Grid, signed_distance

__all__ = [
    "plan_case",
    "prepare_plan",
    "optimise_plan",
    "PlanProblem",
    "PlanResult",
    "PlanOperator",
    "trilinear_matrix",
    "build_objective",
    "score_summary",
    "CONFORMITY_RECIPE",
    "QUADRATIC_RECIPE",
    "control_point_find_options",
    "OBJECTIVES",
]

#: Objective recipes understood by :func:`plan_case`.
OBJECTIVES = ("conformity", "quadratic")

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


# ---------------------------------------------------------------------------------------------
# interpolation and the evaluation operator
# ---------------------------------------------------------------------------------------------
def trilinear_matrix(source: Grid, source_index, target: Grid, target_index) -> sp.csr_matrix:
    """Sparse trilinear interpolation from selected voxels of one grid to voxels of another.

    Row ``r`` gives the value at voxel ``target_index[r]`` (flat C-order index into
    ``target.shape``) as a weighted sum over the values at ``source_index`` (flat indices into
    ``source.shape``; column ``c`` = ``source_index[c]``). Same interpolation as
    :func:`rtlab.geometry.resample` with ``order=1``: between voxel centres, clamped within half
    a voxel of the outermost centres, zero beyond. Source voxels that are not in
    ``source_index`` contribute zero.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape ``(len(target_index), len(source_index))``
    """
    src = np.asarray(source_index, np.int64).ravel()
    tgt = np.asarray(target_index, np.int64).ravel()
    if src.size and (src.min() < 0 or src.max() >= source.size):
        raise ValueError(f"source_index must hold flat indices into a grid of {source.size} voxels")
    if tgt.size and (tgt.min() < 0 or tgt.max() >= target.size):
        raise ValueError(f"target_index must hold flat indices into a grid of {target.size} voxels")
    lut = np.full(source.size, -1, np.int64)
    lut[src] = np.arange(src.size)
    idx = np.stack(np.unravel_index(tgt, target.shape), axis=1)
    world = target.index_to_world(idx)
    c = source.world_to_index(world)
    n = np.asarray(source.shape)
    c = np.where((c < 0) & (c >= -0.5), 0.0, c)
    c = np.where((c > n - 1) & (c <= n - 0.5), n - 1.0, c)
    base = np.floor(c).astype(np.int64)
    fr = c - base
    rows, cols, vals = [], [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                off = np.array([dz, dy, dx])
                w = np.prod(np.where(off == 1, fr, 1.0 - fr), axis=1)
                p = base + off
                ok = np.all((p >= 0) & (p < n), axis=1) & (w > 0)
                flat = np.ravel_multi_index(tuple(np.clip(p, 0, n - 1).T), source.shape)
                col = lut[flat]
                ok &= col >= 0
                rows.append(np.flatnonzero(ok))
                cols.append(col[ok])
                vals.append(w[ok])
    R = sp.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(tgt.size, src.size))
    R.sum_duplicates()
    R.sort_indices()
    return R


class PlanOperator:
    """``E x = [R_roi A x ; A x]``: beamlet weights to the dose the objective sees (Gy).

    Parameters
    ----------
    influence : rtlab.dose.InfluenceMatrix
    roi : ndarray of bool on the CT grid, optional
        CT voxels evaluated on the CT grid (default: every selected CT voxel). Ignored when the
        dose grid is the CT grid (then ``E = A``).
    backend : str
        :class:`rtlab.dose.sparse.DoseOperator` backend (default ``'numba'``).

    Attributes
    ----------
    shape : (n_eval, n_beamlets)
    n_ct : int
        Number of CT-voxel rows (first rows of ``E x``).
    ct_index : ndarray of int64
        Flat CT-grid index of each of the first ``n_ct`` rows.
    """

    def __init__(self, influence, roi=None, backend: str = "numba"):
        from .dose.sparse import DoseOperator

        self.influence = influence
        self.A = DoseOperator(influence.matrix, backend=backend)
        self.A.prepare_transpose()
        ct = influence.ct_grid
        self.on_ct = influence.grid.is_same(ct)
        if self.on_ct:
            self.ct_index = np.asarray(influence.voxel_index, np.int64)
            self.R = None
            self.n_ct = self.ct_index.size
            self.n_dose = 0
        else:
            sel = influence.ct_mask.copy()
            if roi is not None:
                sel &= ct.check_array("roi", roi).astype(bool)
            if not sel.any():
                raise ValueError("roi selects no CT voxel with dose; pass a region inside the body")
            self.ct_index = np.flatnonzero(sel.ravel()).astype(np.int64)
            R = trilinear_matrix(influence.grid, influence.voxel_index, ct, self.ct_index)
            self.R = DoseOperator(R, backend=backend)
            self.R.prepare_transpose()
            self.n_ct = self.ct_index.size
            self.n_dose = influence.shape[0]
        self.shape = (self.n_ct + self.n_dose, influence.shape[1])
        self._lut = None

    def __repr__(self) -> str:
        return (f"PlanOperator(shape={self.shape}, ct_rows={self.n_ct}, dose_rows={self.n_dose}, "
                f"backend={self.A.backend!r})")

    def matvec(self, x) -> np.ndarray:
        """``E x`` in Gy (float64): CT-voxel rows, then dose-grid rows."""
        y = self.A.matvec(np.asarray(x, np.float64))
        if self.R is None:
            return y.astype(np.float64)
        out = np.empty(self.shape[0], np.float64)
        out[: self.n_ct] = self.R.matvec(y)
        out[self.n_ct:] = y
        return out

    def rmatvec(self, g) -> np.ndarray:
        """``E^T g = A^T (R^T g_ct + g_dose)`` (float64)."""
        g = np.asarray(g, np.float64)
        if g.shape != (self.shape[0],):
            raise ValueError(f"g has shape {g.shape}, expected ({self.shape[0]},), one value per row of E")
        if self.R is None:
            return self.A.rmatvec(g)
        gd = self.R.rmatvec(g[: self.n_ct])
        gd += g[self.n_ct:]
        return self.A.rmatvec(gd)

    def __matmul__(self, x):
        return self.matvec(x)

    # -- row selection ------------------------------------------------------------------------
    def ct_rows(self, mask, missing: str = "ignore") -> np.ndarray:
        """Rows of ``E x`` of the CT voxels in ``mask`` (bool, CT grid, or a Structure).

        ``missing='raise'`` raises when some voxels of ``mask`` are not evaluated (outside the
        region of interest / body); ``'ignore'`` drops them.
        """
        from .optimize.terms import rows_for

        return rows_for(mask, self.ct_index, self.influence.ct_grid.shape, missing=missing)

    def ct_rows_of_flat(self, flat) -> np.ndarray:
        """Rows of ``E x`` of flat CT indices (``-1`` where a voxel is not evaluated)."""
        if self._lut is None:
            self._lut = np.full(self.influence.ct_grid.size, -1, np.int64)
            self._lut[self.ct_index] = np.arange(self.n_ct)
        return self._lut[np.asarray(flat, np.int64)]

    def dose_rows(self, mask_dose_grid) -> np.ndarray:
        """Rows of ``E x`` of the dose-grid voxels in ``mask_dose_grid`` (empty on the CT grid)."""
        if self.R is None:
            return np.zeros(0, np.int64)
        m = self.influence.grid.check_array("mask_dose_grid", mask_dose_grid).astype(bool)
        sel = m.ravel()[self.influence.voxel_index]
        return self.n_ct + np.flatnonzero(sel).astype(np.int64)

    def dose_ct(self, x) -> np.ndarray:
        """Dose on the whole CT grid (Gy, float32, ``(z, y, x)``; zero outside the selection)."""
        y = self.A.matvec(np.asarray(x, np.float64))
        return self.influence.to_grid(y, on="ct").astype(np.float32)


# ---------------------------------------------------------------------------------------------
# objective recipes
# ---------------------------------------------------------------------------------------------
def _goal_limits(case) -> dict[str, float]:
    """Lowest ``<=``/``<`` dose goal (Gy) of every non-target structure."""
    from .metrics import parse_metric

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


def _targets_with_rx(case, rx=None):
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
    for name in _goal_limits(case):
        roi |= case.structures[name].mask
    return roi & case.structures.body_mask().astype(bool)


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
    from .methods.control_points import RingFilter, Thresholds

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


def _control_point_term(case, op, target, d_ref, recipe, weight):
    from .methods.control_points import ControlPointTerm, find_control_points
    from .optimize.terms import Term

    pts = find_control_points(target.mask, case.grid.spacing, **recipe["control_point_find"])
    cp = ControlPointTerm.from_control_points(pts, d_ref, recipe["control_point_outside"] * d_ref, weight=1.0)
    rows = op.ct_rows_of_flat(cp.voxel_index)
    keep = rows >= 0
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

    t = ControlPointDoseTerm(rows[keep], weight, name="control points")
    return t, pts


def build_objective(case, op: PlanOperator, objective: str = "conformity", falloff: float | None = None,
                    control_points: bool = False, rx: float | None = None, recipe: Mapping | None = None):
    """The objective of a recipe (see the module docstring) on the rows of ``op``.

    Parameters
    ----------
    case : Case
    op : PlanOperator
    objective : {'conformity', 'quadratic'}
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

    Returns
    -------
    objective : rtlab.optimize.Objective
    info : dict
        ``levels`` (falloff levels or None), ``control_points`` (ControlPoints or None), ``recipe``
        (the full recipe; ``control_point_find`` there holds all the keyword arguments used).
    """
    from .methods.conformity import ConformityTerm
    from .optimize import MaxDose, Objective, SquaredDeviation, SquaredOverdose, SquaredUnderdose

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    base = CONFORMITY_RECIPE if objective == "conformity" else QUADRATIC_RECIPE
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
    if falloff is not None:
        (falloff,) = check_positive("falloff (Gy/mm)", falloff)
        if objective != "conformity":
            raise ValueError("falloff applies to objective='conformity' only")
    if control_points and objective != "conformity":
        raise ValueError("control_points applies to objective='conformity' only")
    targets = _targets_with_rx(case, rx)
    d_min = min(d for _, d in targets)
    d_max = max(d for _, d in targets)
    ss = case.structures
    all_t = np.zeros(case.grid.shape, bool)
    for t, _ in targets:
        all_t |= t.mask
    roi_rows = np.arange(op.n_ct, dtype=np.int64)
    terms = []
    info = {"levels": None, "control_points": None, "recipe": rec}
    limits = _goal_limits(case)

    if objective == "conformity":
        body = np.zeros(case.grid.shape, bool)
        body.ravel()[op.ct_index] = True  # the evaluated CT voxels = the domain
        if falloff is not None:
            from .methods.falloff import adjust_targets, falloff_conformity_terms

            levels = adjust_targets([(t.name, t.mask, d) for t, d in targets], gradient=falloff,
                                    spacing=case.grid.spacing, body=body, low_dose=rec["ring_fraction"])
            for lv in levels:
                if not lv.region.any():
                    import warnings

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
            t0, d0 = targets[0]
            term, pts = _control_point_term(case, op, t0, d0, rec, rec["control_point_weight"])
            info["control_points"] = pts
            if term is not None:
                terms.append(term)
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
    if op.n_dose:
        roi_ct = np.zeros(case.grid.shape, np.float32)
        roi_ct.ravel()[op.ct_index] = 1.0
        from .geometry import resample

        roi_dose = resample(roi_ct, case.grid, op.influence.grid, order=0) > 0.5
        g_rows = op.dose_rows(~roi_dose)
        if g_rows.size:
            terms.append(SquaredOverdose(g_rows, rec["guard_level"] * d_min, rec["guard_weight"], name="guard"))
    return Objective(terms), info


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------


def score_summary(case, dose, rx: float | None = None) -> dict:
    """The ``rtlab score --json`` object of a dose on the case's CT grid.

    Keys: ``case``, ``target`` (first target), ``rx_gy``, ``ci_paddick``, ``ci_rtog``, ``gi``,
    ``hi``, ``coverage``, ``selectivity`` (first target at its prescription or ``rx``),
    ``structures`` (``{name: {D95, D98, D2, D10, Dmean, Dmax}}``, Gy) and ``goals`` (one
    ``{goal, value, passed}`` per case goal). NaN/inf become ``None``.
    """
    from . import metrics

    targets = case.structures.targets
    if not targets:
        raise ValueError(f"case {case.name!r} has no target structure; CI/GI/HI need one")
    rx = rx if rx is not None else (case.prescription or targets[0].prescription)
    if rx is None:
        raise ValueError("no prescription known for the target: pass --rx GY")
    dose = case.grid.check_array("dose", dose)
    report = metrics.conformity_report(dose, case.structures, rx=rx)
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
        st = metrics.structure_stats(dose, s)
        out["structures"][s.name] = {k: json_safe(st[k]) for k in ("D95", "D98", "D2", "D10", "Dmean", "Dmax")}
    for g in case.goals:
        v = metrics.evaluate(dose, case.structures[g.structure], g.metric)
        out["goals"].append({"goal": str(g), "value": json_safe(v), "passed": g.passed(v)})
    return out


# ---------------------------------------------------------------------------------------------
# result and pipeline
# ---------------------------------------------------------------------------------------------
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
        Open-field-equivalent MU per beam (:func:`rtlab.dose.beam_mu`).
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
        :func:`score_summary` of ``dose``.
    settings : dict
        The arguments of the run.
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
    settings: dict = field(default_factory=dict)
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
        """Tidy score table (:func:`rtlab.compare.score`) of this plan, with its MU."""
        from .compare import score

        return score({name: {"dose": self.dose, "mu": self.mu_total}}, self.case)

    def summary(self) -> dict:
        """``scores`` plus ``build_s``, ``optimize_s``, ``iterations``, ``mu_total`` (JSON-ready)."""
        out = dict(self.scores)
        out.update(build_s=round(self.timings["build_s"], 3), optimize_s=round(self.timings["optimize_s"], 3),
                   iterations=self.iterations, mu_total=round(self.mu_total, 1), status=self.timings["status"],
                   objective=self.settings.get("objective"), angles=list(self.angles))
        return out

    def save(self, path):
        """Save the dose (array ``dose``, Gy, CT grid) plus ``x`` and ``mu`` to ``path`` (npz, atomic).

        The file is what ``rtlab score --dose`` reads.
        """
        from .io import save_npz

        return save_npz(path, dose=self.dose, grid=self.case.grid, x=self.x, mu=self.mu)

    def review(self, **solver_options):
        """A :class:`rtlab.optimize.PlanSession` on this plan (patent 000, para. 101, claim 12).

        The session starts in state ``'optimised'`` with this run's result; ``x_preliminary``
        is ``x0``. ``edit``, ``reoptimise(start='preliminary'|'optimised')`` and ``accept``
        then work as documented there; map a session result to the CT grid with
        ``plan.operator.dose_ct(session.result.x)``.
        """
        from .optimize import PlanSession

        opts = dict(self.settings.get("solver_options", {}))
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
        from .optimize import OptimizationResult

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
                          mu=_beam_mu(self.influence, x), history=result.history, result=result,
                          objective=self.objective if objective is None else objective, operator=self.operator,
                          influence=self.influence, timings=timings,
                          scores=score_summary(self.case, dose, self.scores.get("rx_gy")),
                          settings=dict(self.settings), info=self.info)

    def __repr__(self) -> str:
        s = self.scores
        return (f"PlanResult({self.case.name!r}, {len(self.angles)} beams, objective={self.settings.get('objective')!r}, "
                f"CI={s.get('ci_paddick')}, iterations={self.iterations}, build {self.timings['build_s']:.2f} s, "
                f"optimise {self.timings['optimize_s']:.2f} s)")


def _beam_mu(im, x) -> np.ndarray:
    """Open-field-equivalent MU per beam of beamlet weights ``x`` (:func:`rtlab.dose.beam_mu`)."""
    from .dose.mu import beam_mu

    maps, i = [], 0
    for b in im.beams:
        maps.append(b.bixels.to_map(x[i: i + b.bixels.n]))
        i += b.bixels.n
    return beam_mu(maps, im.machine)


def _angles_for(case, angles):
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
    settings : dict
        ``objective``, ``falloff_gy_per_mm``, ``control_points``, ``bixel_mm``,
        ``dose_grid_mm``, ``roi_mm``, ``recipe`` (the full recipe used), ``recipe_overrides``
        (what the caller changed), ``rx``, ``term_weights``, ``w1``, ``w2``, ``backend``.
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
    settings: dict
    build_s: float

    def target_terms(self) -> list[str]:
        """Names of the per-target terms: conformity terms (conformity recipe, including the
        falloff levels and ring), else the targets' deviation terms (quadratic recipe)."""
        from .methods.conformity import ConformityTerm
        from .optimize import SquaredDeviation

        kind = ConformityTerm if self.settings["objective"] == "conformity" else SquaredDeviation
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
        same = objective is _KEEP or objective == s["objective"]
        obj = s["objective"] if objective is _KEEP else objective
        if obj not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {obj!r}")
        conf = obj == "conformity"
        fo = (s["falloff_gy_per_mm"] if conf else None) if falloff is _KEEP else falloff
        cp = (s["control_points"] if conf else False) if control_points is _KEEP else bool(control_points)
        rec = (s["recipe_overrides"] if same else None) if recipe is _KEEP else recipe
        tw = (s["term_weights"] if same else None) if weights is _KEEP else weights
        a = (s["w1"] if same else None) if w1 is _KEEP else w1
        b = (s["w2"] if same else None) if w2 is _KEEP else w2
        return _derive(self, obj, fo, cp, rec, tw, a, b)

    def __repr__(self) -> str:
        s = self.settings
        return (f"PlanProblem({self.case.name!r}, {len(self.angles)} beams, {self.operator.shape[1]} beamlets, "
                f"objective={s['objective']!r}, falloff={s['falloff_gy_per_mm']}, terms={len(self.objective)}, "
                f"build {self.build_s:.2f} s)")


def _apply_term_edits(obj, weights, w1, w2):
    """Set term weights by name and the split weights of eq 7 on every conformity term."""
    from .methods.conformity import ConformityTerm

    if weights:
        if not isinstance(weights, Mapping):
            raise TypeError("weights must be a dict term name -> weight, e.g. {'PTV conformity': 2.0}")
        for name, w in weights.items():
            if name not in obj.names:
                raise ValueError(f"weights: no term named {name!r}; the objective has {list(obj.names)}")
            w = float(w)
            if not (np.isfinite(w) and w >= 0):
                raise ValueError(f"weights[{name!r}] must be a finite weight >= 0, got {w!r}")
            obj[name].weight = w
    if w1 is not None or w2 is not None:
        a = 1.0 if w1 is None else float(w1)
        b = 1.0 if w2 is None else float(w2)
        if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b >= 0):
            raise ValueError(f"w1 and w2 must be finite and >= 0 (patent 000 eq 7), got {w1!r}, {w2!r}")
        for t in obj:
            if isinstance(t, ConformityTerm):
                t.split, t.w1, t.w2 = True, a, b


def _derive(base: PlanProblem, objective, falloff, control_points, recipe, weights, w1, w2) -> PlanProblem:
    t0 = time.perf_counter()
    if falloff is not None:
        check_positive("falloff (Gy/mm)", falloff)
        falloff = float(falloff)
    if (w1 is not None or w2 is not None) and objective != "conformity":
        raise ValueError("w1/w2 (patent 000 eq 7) apply to objective='conformity' only; pass w1=None, w2=None")
    rx = base.settings.get("rx")
    obj, info = build_objective(base.case, base.operator, objective, falloff=falloff,
                                control_points=control_points, rx=rx, recipe=recipe)
    _apply_term_edits(obj, weights, w1, w2)
    settings = dict(base.settings)
    settings.update(objective=objective, falloff_gy_per_mm=falloff, control_points=bool(control_points),
                    recipe=info["recipe"], recipe_overrides=dict(recipe) if recipe else None,
                    term_weights=dict(weights) if weights else None,
                    w1=None if w1 is None else float(w1), w2=None if w2 is None else float(w2))
    return PlanProblem(case=base.case, angles=base.angles, influence=base.influence, operator=base.operator,
                       objective=obj, info=info, x0=base.x0, settings=settings,
                       build_s=base.build_s + (time.perf_counter() - t0))


def prepare_plan(case, angles: Sequence[float] | None = None, objective: str = "conformity",
                 falloff: float | None = None, control_points: bool = False, bixel_mm: float = 5.0,
                 dose_grid_mm: float | None = None, *, rx: float | None = None, roi_mm: float = 20.0,
                 recipe: Mapping | None = None, machine=None, cutoff_mm: float | None = None,
                 backend: str = "numba", progress: bool = False, influence=None) -> PlanProblem:
    """First half of :func:`plan_case`: influence matrix, operator, objective and start point.

    Parameters are those of :func:`plan_case` without the solver settings, and:

    influence : rtlab.dose.InfluenceMatrix, optional
        An influence matrix already built for this case (e.g. per-beam matrices built by
        separate batch tasks and joined). Its beams give the angles and the bixel size, its grid
        the dose grid; ``angles``, ``bixel_mm``, ``dose_grid_mm``, ``machine`` and ``cutoff_mm``
        are then ignored.

    Returns
    -------
    PlanProblem
        Solve it with :func:`optimise_plan`; derive other objectives on the same operator with
        :meth:`PlanProblem.with_objective`.
    """
    from .case import Case
    from .dose import DEFAULT_CUTOFF_MM, build_influence

    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.case.Case (e.g. rtlab.phantoms.get_phantom(...)), got {type(case).__name__}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if falloff is not None:
        check_positive("falloff (Gy/mm)", falloff)
    t0 = time.perf_counter()
    if influence is not None:
        im = influence
        if not hasattr(im, "ct_grid") or not hasattr(im, "beams"):
            raise TypeError(f"influence must be an rtlab.dose.InfluenceMatrix, got {type(im).__name__}")
        if not im.ct_grid.is_same(case.grid):
            raise ValueError("influence was built on another CT grid than case; build it from this case")
        angles = [float(b.gantry) for b in im.beams]
        bixel_mm = float(im.beams[0].bixel_mm)
        dose_grid_mm = None if im.grid.is_same(case.grid) else float(im.grid.spacing[0])
        t0 -= float(im.timings.get("total_s", 0.0))  # count the (earlier) build in build_s
    else:
        angles = _angles_for(case, angles)
        (bixel_mm,) = check_positive("bixel_mm", bixel_mm)
        if dose_grid_mm is not None:
            check_positive("dose_grid_mm", dose_grid_mm)
        im = build_influence(case, angles, machine=machine, dose_grid=dose_grid_mm,
                             cutoff_mm=DEFAULT_CUTOFF_MM if cutoff_mm is None else cutoff_mm,
                             progress=progress, bixel_mm=bixel_mm)
    roi = None if im.grid.is_same(case.grid) else region_of_interest(case, roi_mm)
    op = PlanOperator(im, roi=roi, backend=backend)
    obj, info = build_objective(case, op, objective, falloff=falloff, control_points=control_points, rx=rx,
                                recipe=recipe)
    targets = _targets_with_rx(case, rx)
    t_rows = op.ct_rows(targets[0][0].mask, missing="raise")
    d1 = op.matvec(np.ones(op.shape[1]))
    med = float(np.median(d1[t_rows]))
    if not med > 0:
        raise ValueError("the beams give no dose to the target; check the angles and the isocentre")
    x0 = np.full(op.shape[1], targets[0][1] / med)
    build_s = time.perf_counter() - t0
    settings = {"objective": objective, "falloff_gy_per_mm": falloff, "control_points": bool(control_points),
                "bixel_mm": bixel_mm, "dose_grid_mm": dose_grid_mm, "roi_mm": roi_mm,
                "recipe": info["recipe"], "recipe_overrides": dict(recipe) if recipe else None, "rx": rx,
                "term_weights": None, "w1": None, "w2": None, "backend": backend}
    return PlanProblem(case=case, angles=angles, influence=im, operator=op, objective=obj, info=info, x0=x0,
                       settings=settings, build_s=build_s)


def optimise_plan(problem: PlanProblem, *, max_iter: int = 100, change_threshold: float | None = 1e-4,
                  change_window: int = 5, objective_threshold: float | None = None, method: str = "lbfgsb",
                  progress: bool = False, callback: Callable | None = None, cancel_event=None, x0=None,
                  report_every: int = 10) -> PlanResult:
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

    Returns
    -------
    PlanResult
    """
    from .optimize import Solver

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
    solver_options = dict(method=method, max_iter=max_iter, change_threshold=change_threshold,
                          change_window=change_window, report_every=report_every)
    if objective_threshold is not None:
        solver_options["objective_threshold"] = float(objective_threshold)
    solver = None
    cb = None
    if callback is not None:
        def cb(rec):
            # the callback gets a copy of the record with the iterate it describes
            x_it = getattr(solver, "current_x", None)
            return callback({**rec, "x": None if x_it is None else np.array(x_it, np.float64, copy=True)})
    solver = Solver(op, problem.objective, callback=cb, progress=progress, cancel_event=cancel_event,
                    **solver_options)
    t0, c0 = time.perf_counter(), time.process_time()
    res = solver.run(start)
    optimize_s = time.perf_counter() - t0
    optimize_cpu_s = time.process_time() - c0
    dose = op.dose_ct(res.x)
    mu = _beam_mu(im, res.x)
    timings = {"build_s": problem.build_s, "optimize_s": optimize_s, "optimize_cpu_s": optimize_cpu_s,
               "iterations": res.iterations,
               "n_evals": res.meta.get("n_evals"), "status": res.status}
    s = problem.settings
    settings = {k: s[k] for k in ("objective", "falloff_gy_per_mm", "control_points", "bixel_mm", "dose_grid_mm",
                                  "roi_mm", "recipe")}
    for k in ("term_weights", "w1", "w2"):
        if s.get(k) is not None:
            settings[k] = s[k]
    settings["solver_options"] = solver_options
    return PlanResult(case=case, angles=problem.angles, dose=dose, x=res.x, x0=problem.x0, mu=mu,
                      history=res.history, result=res, objective=problem.objective, operator=op, influence=im,
                      timings=timings, scores=score_summary(case, dose, s.get("rx")), settings=settings,
                      info=problem.info)


def plan_case(case, angles: Sequence[float] | None = None, objective: str = "conformity",
              falloff: float | None = None, control_points: bool = False, bixel_mm: float = 5.0,
              dose_grid_mm: float | None = None, *, rx: float | None = None, roi_mm: float = 20.0,
              recipe: Mapping | None = None, max_iter: int = 100, change_threshold: float | None = 1e-4,
              change_window: int = 5, method: str = "lbfgsb", machine=None, cutoff_mm: float | None = None,
              backend: str = "numba", progress: bool = False, callback: Callable | None = None) -> PlanResult:
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
        Add control-point dose bounds on the first target (patent 000, para. 154-197).
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
    machine : rtlab.dose.Machine, optional
    cutoff_mm : float, optional
        Lateral kernel cut-off (default :data:`rtlab.dose.DEFAULT_CUTOFF_MM`).
    backend : str
        Mat-vec backend (``'numba'``, ``'auto'``, ``'gpu'``, ...).
    progress : bool
        tqdm progress bars (ray tracing, iterations).
    callback : callable, optional
        ``callback(record)`` after each iteration (see :class:`rtlab.optimize.History`);
        returning ``True`` stops the run.

    Returns
    -------
    PlanResult
    """
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable, taking one history record (dict)")
    problem = prepare_plan(case, angles, objective, falloff, control_points, bixel_mm, dose_grid_mm, rx=rx,
                           roi_mm=roi_mm, recipe=recipe, machine=machine, cutoff_mm=cutoff_mm, backend=backend,
                           progress=progress)
    return optimise_plan(problem, max_iter=max_iter, change_threshold=change_threshold,
                         change_window=change_window, method=method, progress=progress, callback=callback)
