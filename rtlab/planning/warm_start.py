"""Start points of the fluence optimisation (patent 000, para. 134-136, claim 7).

:func:`warm_start` replaces a :class:`~rtlab.planning.PlanProblem`'s start point ``x0`` by one
of four starts, so that the same problem can be solved from each and compared (iterations and
wall time to the same objective value):

* ``'uniform'`` - the preliminary plan (the default of :func:`~rtlab.planning.prepare_plan`):
  equal beamlet weights scaled so that the first target's median dose is its prescription;
* ``'zero'`` - every weight 0 (no dose; the optimiser starts from the coverage terms' pull);
* ``'target'`` - weights whose dose region is shaped like the targets: the non-negative
  least-squares fit of :func:`rtlab.methods.region_model.warm_start_weights` aiming 1.05 D inside
  the union of the targets and 0 outside (the trivial "region = target" prediction);
* ``'region'`` - the same fit to the dose region predicted by a trained
  :class:`~rtlab.methods.region_model.RegionModel` from the case's CT and masks (para. 133-136).
  A model trained at an isodose level ``L`` (its config's ``level``, e.g. 0.8) predicts the
  ``L D`` region, so the fit aims at ``1.05 L D`` there.

The fits run on the CT-grid rows of the plan's operator (the region of interest of a coarse dose
grid, every evaluated voxel otherwise).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .._lazy import load
from .problem import PlanProblem
from .recipes import targets_with_rx

#: deferred: importing the region-model package takes seconds (its planners and data helpers)
region_model_pkg = load("rtlab.methods.region_model", extra="", purpose="the region-model warm start")

__all__ = ["WARM_STARTS", "warm_start"]

#: Accepted ``kind`` values of :func:`warm_start`.
WARM_STARTS = ("uniform", "zero", "target", "region")


class _CTRows:
    """The CT-grid rows of a :class:`~rtlab.dose.PlanOperator` as a linear operator."""

    def __init__(self, op):
        self.op = op
        self.shape = (int(op.n_ct), int(op.shape[1]))

    def matvec(self, x):
        return np.asarray(self.op.matvec(x), np.float64)[: self.shape[0]]

    def rmatvec(self, g):
        full = np.zeros(self.op.shape[0])
        full[: self.shape[0]] = g
        return self.op.rmatvec(full)


def _load_model(region_model):
    RegionModel = region_model_pkg.RegionModel
    if isinstance(region_model, RegionModel):
        return region_model
    if isinstance(region_model, (str, Path)):
        return RegionModel.load(region_model)
    raise ValueError("warm_start='region' needs region_model: a RegionModel or the directory of a saved one, e.g. "
                     "region_model='datasets/region_model_200_l80' (the 80 % model) or 'datasets/region_model_200'")


def warm_start(problem: PlanProblem, kind: str = "uniform", *, region_model=None, x0=None,
               n_iter: int = 50) -> PlanProblem:
    """A copy of ``problem`` whose start point ``x0`` is ``kind`` (module docstring).

    Parameters
    ----------
    problem : PlanProblem
        From :func:`~rtlab.planning.prepare_plan`; its ``x0`` is the uniform start.
    kind : {'uniform', 'zero', 'target', 'region'} or None
        The start (None = ``'uniform'``); ignored when ``x0`` is given.
    region_model : RegionModel or path-like, optional
        The model of ``kind='region'``.
    x0 : array_like, optional
        Explicit start weights (>= 0, one per beamlet).
    n_iter : int
        Projected-gradient iterations of the least-squares fit (``'target'``, ``'region'``).

    Returns
    -------
    PlanProblem
        ``x0`` replaced; ``info['warm_start']`` = ``{"kind", "time_s", "region_voxels", "level"}``
        (``time_s``: wall time of the prediction and fit, s; counted into ``build_s``).
    """
    if not isinstance(problem, PlanProblem):
        raise TypeError(f"problem must be a PlanProblem (rtlab.planning.prepare_plan), got {type(problem).__name__}")
    t0 = time.perf_counter()
    n = problem.operator.shape[1]
    meta = {"kind": None, "region_voxels": None, "level": None}
    if x0 is not None:
        x = np.asarray(x0, np.float64).ravel()
        if x.size != n:
            raise ValueError(f"x0 has {x.size} weights, the plan has {n} beamlets; pass one weight per beamlet")
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError("x0 must hold finite weights >= 0")
        meta["kind"] = "given"
    else:
        kind = "uniform" if kind is None else kind
        if kind not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS} (or None), got {kind!r}")
        meta["kind"] = kind
        if kind == "uniform":
            x = problem.x0.copy()
        elif kind == "zero":
            x = np.zeros(n)
        else:
            warm_start_weights = region_model_pkg.warm_start_weights
            case = problem.case
            targets = targets_with_rx(case, problem.settings.rx)
            d_ref = float(targets[0][1])
            level = 1.0
            if kind == "target":
                region = np.zeros(case.grid.shape, bool)
                for t, _ in targets:
                    region |= t.mask
            else:
                model = _load_model(region_model)
                level = float(model.config.get("level", 1.0))
                region = np.asarray(model.predict_case(case), bool)
            op = problem.operator
            rows = region.ravel()[op.ct_index]
            if not rows.any():
                raise ValueError(f"the {kind} region holds no evaluated CT voxel of the plan; nothing to aim the "
                                 "dose at (check the case's targets)")
            x = warm_start_weights(_CTRows(op), rows, level * d_ref, n_iter=n_iter, x0=problem.x0 * level)
            meta.update(region_voxels=int(rows.sum()), level=level)
    meta["time_s"] = time.perf_counter() - t0
    info = dict(problem.info)
    info["warm_start"] = meta
    return replace(problem, x0=x, info=info, build_s=problem.build_s + meta["time_s"])
