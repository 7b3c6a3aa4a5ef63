"""Solvers for non-negative beamlet weights: L-BFGS-B and projected gradient.

The problem is ``min_x f(A x) + f_beamlet(x)`` subject to ``x >= 0`` (and optionally
``x <= upper``), with ``f`` an :class:`rtlab.optimize.terms.Objective`. The gradient with
respect to the beamlet weights is ``grad_x = A.T @ grad_d`` (patent 000, para. 84-98: the
conformity gradient per grid region chained to the plan parameters).

Stopping rules (patent 000, para. 83 and claim 6), both optional user settings:

* ``objective_threshold`` -- stop when the objective falls below it;
* ``change_threshold`` with ``change_window = k`` -- stop when the objective varied by less
  than the threshold over the last ``k`` consecutive iterations
  (``max(f[-k-1:]) - min(f[-k-1:]) < change_threshold``).

Besides these, each solver stops at ``max_iter`` iterations, at its own convergence test, or
when cancelled (:meth:`Solver.cancel`, a ``threading.Event`` passed as ``cancel_event``, or a
callback returning ``True``). The result always holds the best point evaluated so far.

Status values: ``'objective_threshold'``, ``'objective_change'``, ``'converged'`` (solver's
own tolerance), ``'max_iter'``, ``'cancelled'``, ``'failed'``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from tqdm.auto import tqdm

from .._lazy import load
from .terms import Objective, Term

pd = load("pandas")  # History.frame() only; imported on first use (rtlab._lazy)

__all__ = ["History", "OptimizationResult", "Solver", "solve", "STATUSES"]

STATUSES = ("objective_threshold", "objective_change", "converged", "max_iter", "cancelled", "failed")


class History:
    """Per-iteration record of an optimisation run that observers subscribe to.

    Each record is a dict with ``iteration`` (0 = starting point), ``objective``, ``time``
    (s since the start), ``n_evals`` (objective evaluations so far), ``terms`` (weighted value
    of each term, by name) and ``reports`` (per term, e.g. ``{'PTV': {'F': .., 'S': ..,
    'f_C': .., 'f_C_exact': ..}}`` for conformity terms).
    """

    def __init__(self):
        self.records: list[dict] = []
        self._subscribers: list[Callable[[dict], object]] = []

    def subscribe(self, fn: Callable[[dict], object]) -> Callable[[dict], object]:
        """Call ``fn(record)`` for every new record (progress bars, widgets); returns ``fn``."""
        if not callable(fn):
            raise TypeError("fn must be callable, taking one record (dict)")
        self._subscribers.append(fn)
        return fn

    def unsubscribe(self, fn) -> None:
        self._subscribers.remove(fn)

    def append(self, record: dict) -> None:
        self.records.append(record)
        for fn in list(self._subscribers):
            fn(record)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    @property
    def objective(self) -> np.ndarray:
        """Objective per iteration."""
        return np.array([r["objective"] for r in self.records], float)

    @property
    def time(self) -> np.ndarray:
        return np.array([r["time"] for r in self.records], float)

    def series(self, term: str, key: str | None = None) -> np.ndarray:
        """A term's value per iteration, or one of its report entries (e.g. ``'f_C'``)."""
        if key is None:
            return np.array([r["terms"][term] for r in self.records], float)
        return np.array([r["reports"].get(term, {}).get(key, np.nan) for r in self.records], float)

    def to_dataframe(self):
        """A flat pandas DataFrame: one row per iteration, columns ``term`` and ``term.key``."""

        rows = []
        for r in self.records:
            row = {k: r[k] for k in ("iteration", "objective", "time", "n_evals")}
            for name, v in r["terms"].items():
                row[name] = v
            for name, rep in r["reports"].items():
                for k, v in rep.items():
                    row[f"{name}.{k}"] = v
            rows.append(row)
        return pd.DataFrame(rows)


@dataclass
class OptimizationResult:
    """Outcome of an optimisation run.

    Attributes
    ----------
    x : ndarray
        Beamlet weights (best point evaluated).
    dose : ndarray
        Voxel dose ``A @ x`` in Gy (rows of ``A``).
    objective : float
        Objective value at ``x``.
    status : str
        One of :data:`STATUSES`.
    iterations : int
        Completed iterations.
    time : float
        Wall time in s.
    history : History
    message : str
    """

    x: np.ndarray
    dose: np.ndarray
    objective: float
    status: str
    iterations: int
    time: float
    history: History
    message: str = ""
    method: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status in ("objective_threshold", "objective_change", "converged")

    def dose_cube(self, shape, voxel_index=None, fill: float = 0.0) -> np.ndarray:
        """Scatter the voxel dose (Gy) into an array of ``shape`` (z, y, x); unselected voxels get ``fill``."""
        out = np.full(int(np.prod(shape)), fill, np.float32)
        if voxel_index is None:
            if self.dose.size != out.size:
                raise ValueError(f"dose has {self.dose.size} rows but the grid {tuple(shape)} has {out.size} voxels; pass voxel_index")
            out[:] = self.dose
        else:
            out[np.asarray(voxel_index)] = self.dose
        return out.reshape(shape)

    def dose_grid(self, shape, voxel_index=None, fill: float = 0.0) -> np.ndarray:
        """Old name of :meth:`dose_cube` (kept for one release; ``dose_grid`` now names the grid, not a dose)."""
        return self.dose_cube(shape, voxel_index, fill)

    def __repr__(self) -> str:
        return (f"OptimizationResult(status={self.status!r}, objective={self.objective:.6g}, "
                f"iterations={self.iterations}, time={self.time:.2f} s, n_beamlets={self.x.size})")


class _Stop(Exception):
    def __init__(self, status, message=""):
        super().__init__(message)
        self.status = status
        self.message = message


def _is_operator(A) -> bool:
    """A duck-typed linear operator: ``shape``, ``matvec(x)`` (dose) and ``rmatvec(g)`` (``A^T g``)."""
    return (not sp.issparse(A) and not isinstance(A, np.ndarray) and hasattr(A, "shape")
            and callable(getattr(A, "matvec", None)) and callable(getattr(A, "rmatvec", None)))


def _check_A(A):
    if _is_operator(A):  # e.g. rtlab.dose.sparse.DoseOperator or rtlab.planning.PlanOperator
        if len(A.shape) != 2 or A.shape[0] == 0 or A.shape[1] == 0:
            raise ValueError(f"A has shape {tuple(A.shape)}; it needs at least one voxel and one beamlet")
        return A
    if sp.issparse(A):
        A = sp.csr_matrix(A) if not isinstance(A, sp.csr_matrix) and A.format != "csr" else A
    elif isinstance(A, np.ndarray):
        if A.ndim != 2:
            raise ValueError(f"A must be 2-D (n_voxels, n_beamlets), got shape {A.shape}")
    else:
        raise TypeError(f"A must be a scipy.sparse matrix or a 2-D ndarray, got {type(A).__name__}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"A has shape {A.shape}; it needs at least one voxel and one beamlet")
    data = A.data if sp.issparse(A) else A
    if not np.all(np.isfinite(data)):
        raise ValueError("A contains NaN or inf; fix the dose engine output")
    return A


class Solver:
    """Minimise an objective over non-negative beamlet weights.

    Parameters
    ----------
    A : scipy.sparse matrix, ndarray or linear operator, shape ``(n_voxels, n_beamlets)``
        Influence matrix (Gy per unit weight); dose ``d = A @ x``. An object with ``shape``,
        ``matvec(x)`` and ``rmatvec(g)`` (e.g. :class:`rtlab.dose.sparse.DoseOperator`) is used
        as is: ``d = A.matvec(x)``, ``grad_x = A.rmatvec(grad_d)``.
    objective : Objective or Term
    method : {'lbfgsb', 'pg'}
        ``'lbfgsb'``: scipy's L-BFGS-B with bounds ``x >= 0``. ``'pg'``: projected gradient with
        Barzilai-Borwein (BB1) steps ``alpha = s.s / s.y`` and Armijo backtracking on the
        projection arc (step halved until ``f(x+) <= f(x) + 1e-4 g.(x+ - x)``).
    max_iter : int
    objective_threshold : float, optional
        Stop when ``f < objective_threshold`` (patent 000, claim 6).
    change_threshold : float, optional
        Stop when ``f`` varied less than this over ``change_window`` consecutive iterations
        (patent 000, claim 6).
    change_window : int
        ``k`` of the rule above (default 3).
    upper : float, optional
        Upper bound on each weight.
    gtol : float
        Solver's own tolerance: L-BFGS-B ``pgtol``; for ``'pg'`` the infinity norm of the
        projected-gradient step ``P(x - g) - x``.
    callback : callable, optional
        ``callback(record)`` after each iteration (see :class:`History`); returning ``True``
        cancels the run.
    cancel_event : threading.Event, optional
        Set it (from any thread) to cancel; the run returns the best point with status
        ``'cancelled'``.
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    report_every : int
        Compute term reports (F, S, f_C, ...) every this many iterations (always at the last).

    Attributes
    ----------
    current_x : ndarray
        While ``callback`` runs: the beamlet weights of the iteration its record describes
        (read-only; copy it to keep it).
    """

    def __init__(self, A, objective, *, method: str = "lbfgsb", max_iter: int = 200,
                 objective_threshold: float | None = None, change_threshold: float | None = None,
                 change_window: int = 3, upper: float | None = None, gtol: float = 1e-10,
                 callback: Callable | None = None, cancel_event: threading.Event | None = None,
                 progress: bool = False, report_every: int = 1):
        self.A = _check_A(A)
        if _is_operator(self.A):
            self._At = None
        else:
            self._At = self.A.T.tocsr() if sp.issparse(self.A) else np.ascontiguousarray(self.A.T)
        if isinstance(objective, Term):
            objective = Objective([objective])
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be an rtlab.optimize Objective or Term, got {type(objective).__name__}")
        if len(objective) == 0:
            raise ValueError("objective has no terms")
        self.objective = objective
        if method not in ("lbfgsb", "pg"):
            raise ValueError(f"method must be 'lbfgsb' or 'pg', got {method!r}")
        self.method = method
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
        self.max_iter = int(max_iter)
        self.objective_threshold = objective_threshold
        self.change_threshold = change_threshold
        if int(change_window) < 1:
            raise ValueError(f"change_window must be >= 1 iteration, got {change_window!r}")
        self.change_window = int(change_window)
        if upper is not None and not upper > 0:
            raise ValueError(f"upper must be > 0 (or None), got {upper!r}")
        self.upper = upper
        self.gtol = float(gtol)
        self.callback = callback
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self.progress = progress
        self.report_every = max(1, int(report_every))
        self.history = History()

    # -- control ------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask a running :meth:`run` to stop; it returns the best point with status 'cancelled'."""
        self.cancel_event.set()

    @property
    def n_beamlets(self) -> int:
        return self.A.shape[1]

    # -- evaluation ---------------------------------------------------------------------------
    def dose(self, x) -> np.ndarray:
        """``A @ x`` in float64 (Gy)."""
        if self._At is None:
            return np.asarray(self.A.matvec(np.asarray(x, np.float64)), np.float64).ravel()
        return np.asarray(self.A @ np.asarray(x, np.float64), np.float64).ravel()

    def _fg(self, x):
        if self.cancel_event.is_set():
            raise _Stop("cancelled", "cancelled from outside")
        d = self.dose(x)
        if self.objective.beamlet_terms:
            f, gd, gx = self.objective.value_and_gradient(d, x)
        else:
            f, gd = self.objective.value_and_gradient(d)
            gx = None
        if self._At is None:
            g = np.asarray(self.A.rmatvec(gd), np.float64).ravel()
        else:
            g = np.asarray(self._At @ gd, np.float64).ravel()
        if gx is not None:
            g = g + gx
        self._n_evals += 1
        if not np.isfinite(f):
            raise _Stop("failed", f"objective is not finite ({f}) at evaluation {self._n_evals}")
        if f < self._best_f:
            self._best_f, self._best_x = float(f), np.array(x, np.float64, copy=True)
        self._last = (np.array(x, np.float64, copy=True), float(f), d)
        self._last_terms = {t.name: self.objective.last_values.get(t.name) for t in self.objective.terms}
        return float(f), g

    def _record(self, x, f, d, force_report=False):
        it = len(self.history)
        rec = {"iteration": it, "objective": float(f), "time": time.perf_counter() - self._t0,
               "n_evals": self._n_evals}
        if np.array_equal(self._last[0], x) and None not in self._last_terms.values():
            rec["terms"] = dict(self._last_terms)
        else:
            rec["terms"] = self.objective.evaluate(d, x)
        if force_report or it % self.report_every == 0:
            rec["reports"] = self.objective.reports(d, x)
        else:
            rec["reports"] = {}
        self.history.append(rec)
        if self._bar is not None:
            if it > 0:
                self._bar.update(1)
            self._bar.set_postfix(f=f"{f:.4g}", refresh=False)
        stop = False
        self.current_x = x  # the iterate this record describes (read by callbacks; do not modify)
        if self.callback is not None and it > 0:
            stop = bool(self.callback(rec))
        if stop:
            raise _Stop("cancelled", "callback asked to stop")
        if it > 0:
            self._check_rules()

    def _check_rules(self):
        fs = self.history.objective
        if self.objective_threshold is not None and fs[-1] < self.objective_threshold:
            raise _Stop("objective_threshold", f"objective {fs[-1]:.6g} < threshold {self.objective_threshold:g}")
        k = self.change_window
        if self.change_threshold is not None and fs.size >= k + 1:
            w = fs[-(k + 1):]
            var = float(w.max() - w.min())
            if var < self.change_threshold:
                raise _Stop("objective_change",
                            f"objective changed by {var:.3g} < {self.change_threshold:g} over {k} iterations")
        if len(self.history) - 1 >= self.max_iter:
            raise _Stop("max_iter", f"reached max_iter={self.max_iter}")
        if self.cancel_event.is_set():
            raise _Stop("cancelled", "cancelled from outside")

    # -- run ----------------------------------------------------------------------------------
    def run(self, x0=None) -> OptimizationResult:
        """Optimise from ``x0`` (default: all ones) and return an :class:`OptimizationResult`.

        The history is reset at each call; :meth:`cancel` before ``run`` cancels at once
        (clear ``cancel_event`` to reuse a cancelled solver).
        """
        n = self.n_beamlets
        if x0 is None:
            x0 = np.ones(n)
        x0 = np.asarray(x0, np.float64).ravel()
        if x0.size != n:
            raise ValueError(f"x0 has {x0.size} entries but A has {n} beamlet columns")
        if not np.all(np.isfinite(x0)):
            raise ValueError("x0 contains NaN or inf")
        x0 = self._project(x0)
        self.history = self._fresh_history()
        self._n_evals = 0
        self._best_f, self._best_x = np.inf, x0.copy()
        self._t0 = time.perf_counter()
        self._bar = None
        if self.progress:

            self._bar = tqdm(total=self.max_iter, desc=f"optimise ({self.method})", leave=False)
        status, message = "failed", ""
        try:
            f0, _ = self._fg(x0)
            self._record(x0, f0, self._last[2])
            if self.method == "lbfgsb":
                status, message = self._run_lbfgsb(x0)
            else:
                status, message = self._run_pg(x0)
        except _Stop as s:
            status, message = s.status, s.message
        finally:
            if self._bar is not None:
                self._bar.close()
        x = self._best_x
        d = self.dose(x)
        f = self.objective.value(d, x) if self.objective.beamlet_terms else self.objective.value(d)
        if self.history.records and not self.history.records[-1]["reports"]:
            self.history.records[-1]["reports"] = self.objective.reports(d, x)
        return OptimizationResult(
            x=x, dose=d, objective=float(f), status=status,
            iterations=max(len(self.history) - 1, 0), time=time.perf_counter() - self._t0,
            history=self.history, message=message, method=self.method,
            meta={"n_evals": self._n_evals},
        )

    def _fresh_history(self):
        h = History()
        h._subscribers = list(self.history._subscribers)
        return h

    def _project(self, x):
        x = np.maximum(x, 0.0)
        if self.upper is not None:
            x = np.minimum(x, self.upper)
        return x

    def _run_lbfgsb(self, x0):
        n = x0.size
        bounds = scipy.optimize.Bounds(np.zeros(n), np.full(n, np.inf if self.upper is None else self.upper))

        def cb(xk, *args):
            xl, fl, dl = self._last
            if not np.array_equal(xl, xk):
                fl, _ = self._fg(xk)
                dl = self._last[2]
            self._record(np.array(xk, copy=True), fl, dl)

        res = scipy.optimize.minimize(
            self._fg, x0, jac=True, method="L-BFGS-B", bounds=bounds, callback=cb,
            options={"maxiter": self.max_iter, "maxfun": 50 * self.max_iter + 100, "gtol": self.gtol,
                     "ftol": 1e-12, "maxcor": 20},
        )
        if res.status == 0:
            return "converged", str(res.message)
        if res.status == 1:
            return "max_iter", str(res.message)
        return "failed", str(res.message)

    def _run_pg(self, x0):
        x = x0
        f, g = self._fg(x)
        step = self._project(x - g) - x
        pgn = float(np.max(np.abs(step)))
        if pgn <= self.gtol:
            return "converged", "projected gradient below gtol at the start"
        gmax = float(np.max(np.abs(g)))
        alpha = max(float(np.max(np.abs(x))), 1.0) / gmax * 0.1 if gmax > 0 else 1.0
        while True:
            # Armijo backtracking along the projection arc
            for _ in range(60):
                x_new = self._project(x - alpha * g)
                s = x_new - x
                f_new, g_new = self._fg(x_new)
                if f_new <= f + 1e-4 * float(g @ s):
                    break
                alpha *= 0.5
            else:
                return "converged", "no decrease along the projected gradient (step underflow)"
            y = g_new - g
            sy = float(s @ y)
            ss = float(s @ s)
            x, f, g = x_new, f_new, g_new
            self._record(x, f, self._last[2])
            pgn = float(np.max(np.abs(self._project(x - g) - x)))
            if pgn <= self.gtol:
                return "converged", f"projected-gradient norm {pgn:.3g} <= gtol"
            alpha = ss / sy if sy > 1e-300 else alpha * 2.0  # Barzilai-Borwein (BB1)
            alpha = float(np.clip(alpha, 1e-12, 1e12))


def solve(A, objective, x0=None, **options) -> OptimizationResult:
    """Minimise ``objective(A x)`` over ``x >= 0``; a shortcut for ``Solver(A, objective, **options).run(x0)``.

    See :class:`Solver` for the options (method, max_iter, objective_threshold,
    change_threshold, change_window, upper, gtol, callback, cancel_event, progress).
    """
    return Solver(A, objective, **options).run(x0)
