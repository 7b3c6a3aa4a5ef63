"""The review step: accept, edit, or re-optimise a plan (patent 000, para. 101; claim 12).

After an optimisation the user confirms the determined parameters, modifies them, or asks
for the optimisation to run again, starting either from the parameters of the preliminary
plan (before any optimisation) or from those the optimisation produced. :class:`PlanSession`
holds both and records every decision in :attr:`PlanSession.log`.
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from .solver import OptimizationResult, Solver, History
from .terms import Objective, Term

__all__ = ["PlanSession"]


class PlanSession:
    """A plan under review: preliminary parameters, optimised results and the user's decisions.

    Parameters
    ----------
    A : sparse matrix or ndarray, shape ``(n_voxels, n_beamlets)``
        Influence matrix.
    objective : Objective or Term
        Copied; edits change the session's copy only.
    x_preliminary : array, optional
        Beamlet weights of the preliminary plan (default: all ones).
    **solver_options
        Passed to :class:`rtlab.optimize.Solver` (method, max_iter, thresholds, callback, ...).

    Attributes
    ----------
    state : str
        ``'preliminary'``, ``'optimised'``, ``'edited'`` or ``'accepted'``.
    result : OptimizationResult or None
        The current plan (latest optimisation, or an edited copy).
    results : list of OptimizationResult
        Every plan the session produced, in order.
    log : list of dict
        ``{'action', 'time', ...}`` entries for each decision.

    Examples
    --------
    >>> s = PlanSession(A, objective, x_preliminary=x0, max_iter=100)   # doctest: +SKIP
    >>> s.optimise()                                # from the preliminary parameters
    >>> s.edit(weights={"PTV conformity": 2.0}, doses={"PTV conformity": 52.0})
    >>> s.reoptimise(start="optimised")             # or start="preliminary"
    >>> plan = s.accept()
    """

    def __init__(self, A, objective, x_preliminary=None, **solver_options):
        if isinstance(objective, Term):
            objective = Objective([objective])
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be an rtlab.optimize Objective or Term, got {type(objective).__name__}")
        self.A = A
        self.objective = objective.copy()
        self.solver_options = dict(solver_options)
        self._solver = Solver(A, self.objective, **self.solver_options)  # validates A and options
        n = self._solver.n_beamlets
        x0 = np.ones(n) if x_preliminary is None else np.asarray(x_preliminary, np.float64).ravel()
        if x0.size != n or not np.all(np.isfinite(x0)) or np.any(x0 < 0):
            raise ValueError(f"x_preliminary must hold {n} finite, non-negative beamlet weights")
        self.x_preliminary = x0.copy()
        self.preliminary = self._evaluate(x0, "preliminary")
        self.result: OptimizationResult | None = None
        self.results: list[OptimizationResult] = []
        self.state = "preliminary"
        self.log: list[dict] = []

    # -- helpers ------------------------------------------------------------------------------
    def _evaluate(self, x, status) -> OptimizationResult:
        d = self._solver.dose(x)
        obj = self.objective
        f = obj.value(d, x) if obj.beamlet_terms else obj.value(d)
        h = History()
        h.append({"iteration": 0, "objective": float(f), "time": 0.0, "n_evals": 1,
                  "terms": obj.evaluate(d, x), "reports": obj.reports(d, x)})
        return OptimizationResult(x=np.array(x, np.float64), dose=d, objective=float(f), status=status,
                                  iterations=0, time=0.0, history=h, message=status)

    def _note(self, action, **info):
        self.log.append({"action": action, "time": time.time(), **info})

    @property
    def accepted(self) -> bool:
        return self.state == "accepted"

    @property
    def current_x(self) -> np.ndarray:
        """Parameters of the current plan (optimised/edited, else preliminary)."""
        return (self.result.x if self.result is not None else self.x_preliminary).copy()

    # -- actions ------------------------------------------------------------------------------
    def reoptimise(self, start: str = "optimised") -> OptimizationResult:
        """Run the optimisation again from the ``'preliminary'`` or the ``'optimised'`` parameters.

        ``'optimised'`` starts from the current plan (the latest optimised or edited one); with
        no optimisation yet it falls back to the preliminary parameters. Returns the new result.
        """
        if start not in ("preliminary", "optimised"):
            raise ValueError(f"start must be 'preliminary' or 'optimised', got {start!r}")
        x0 = self.x_preliminary if (start == "preliminary" or self.result is None) else self.result.x
        self._solver = Solver(self.A, self.objective, **self.solver_options)
        res = self._solver.run(x0.copy())
        self.result = res
        self.results.append(res)
        self.state = "optimised"
        self._note("reoptimise", start=start, status=res.status, objective=res.objective)
        return res

    def optimise(self) -> OptimizationResult:
        """First optimisation, from the preliminary parameters."""
        return self.reoptimise(start="preliminary")

    def cancel(self) -> None:
        """Cancel a running (re-)optimisation from another thread."""
        self._solver.cancel()

    def edit(self, x=None, weights: Mapping[str, float] | None = None,
             doses: Mapping[str, float] | None = None, **solver_options) -> OptimizationResult:
        """Modify the plan: beamlet weights, term weights, term dose levels, solver settings.

        Parameters
        ----------
        x : array, optional
            New beamlet weights for the current plan (the user's direct modification).
        weights : mapping name -> float, optional
            New importance weights of objective terms.
        doses : mapping name -> float, optional
            New dose levels (Gy) of objective terms (prescription, limit or reference isodose).
        **solver_options
            Replace solver settings for later re-optimisations (e.g. ``max_iter=50``).

        Returns
        -------
        OptimizationResult
            The current plan re-evaluated under the edited objective (status ``'edited'``).
        """
        if x is None and not weights and not doses and not solver_options:
            raise ValueError("edit() needs at least one change: x=, weights=, doses= or a solver option")
        for name in list(weights or {}) + list(doses or {}):
            self.objective[name]  # KeyError naming the available terms
        if solver_options:
            Solver(self.A, self.objective, **{**self.solver_options, **solver_options})  # validate
        if x is not None:
            xx = np.asarray(x, np.float64).ravel()
            if xx.size != self.x_preliminary.size or not np.all(np.isfinite(xx)) or np.any(xx < 0):
                raise ValueError(f"x must hold {self.x_preliminary.size} finite, non-negative beamlet weights")
        for name, w in (weights or {}).items():
            self.objective[name].weight = w
        for name, dl in (doses or {}).items():
            self.objective[name].dose_level = dl
        self.solver_options.update(solver_options)
        xe = xx if x is not None else self.current_x
        res = self._evaluate(xe, "edited")
        self.result = res
        self.results.append(res)
        self.state = "edited"
        self._note("edit", x=x is not None, weights=dict(weights or {}), doses=dict(doses or {}),
                   solver_options=dict(solver_options))
        return res

    def accept(self) -> OptimizationResult:
        """Confirm the current plan (the preliminary one if never optimised) and return it."""
        if self.result is None:
            self.result = self.preliminary
        self.state = "accepted"
        self._note("accept", objective=self.result.objective)
        return self.result

    def __repr__(self) -> str:
        f = self.result.objective if self.result is not None else self.preliminary.objective
        return f"PlanSession(state={self.state!r}, objective={f:.6g}, runs={len(self.results)})"
