"""Objective terms for fluence / beamlet-weight optimisation.

Every term is a scalar function of the voxel dose vector ``d`` (Gy), ``d = A @ x``, where ``A``
is the influence matrix (``n_voxels x n_beamlets``, rows = the dose engine's selected voxels)
and ``x >= 0`` the beamlet weights. A term acts on a subset of the rows of ``A`` (a structure),
given as an integer array ``rows`` (see :func:`rows_for`), and returns its value and its
gradient with respect to the voxel dose. The solver (:mod:`rtlab.optimize.solver`) chains the
gradient to the beamlet weights with ``grad_x = A.T @ grad_d``.

Conventions
-----------
* Doses in Gy; quadratic voxel terms are *averaged* over the term's voxels, so their values are
  in Gy^2 and do not grow with the structure size (``value = weight * mean(penalty)``).
* ``weight`` multiplies the term's value and gradient; :class:`Objective` sums weighted terms.
* Each term has a unique ``name`` (used in histories, reports and for edits in review).
* ``dose_level`` is the term's dose parameter (prescription, limit, reference isodose), so that
  review tools can edit doses uniformly (:class:`rtlab.optimize.review.PlanSession`).

Terms that act on the beamlet weights directly (e.g. smoothness or MU penalties of other
methods) set ``space = "beamlet"``; their ``value_and_gradient`` take ``x`` instead of ``d``.
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np

from ..core.selection import as_rows, rows_for

__all__ = [
    "rows_for",
    "Term",
    "SquaredUnderdose",
    "SquaredOverdose",
    "SquaredDeviation",
    "MeanDose",
    "MaxDose",
    "DVHMin",
    "DVHMax",
    "Objective",
    "smooth_max",
]


# ----------------------------------------------------------------------------------------------
# voxel subsets: rows_for and as_rows live in rtlab.core.selection (re-exported here)
# ----------------------------------------------------------------------------------------------
def _level(name, value, allow_zero=True):
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite dose in Gy (>= 0), got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------
class Term:
    """Base class of objective terms.

    Subclasses implement :meth:`_eval_sub`, the *unweighted* value and gradient on the dose of
    the term's rows. The public methods apply the weight and scatter the gradient to the full
    dose vector.

    Parameters
    ----------
    rows : array of int, optional
        Influence-matrix rows (voxels) the term acts on; ``None`` = all rows.
    weight : float
        Non-negative importance weight.
    name : str, optional
        Unique name; defaults to the class name.
    """

    space = "dose"

    def __init__(self, rows=None, weight: float = 1.0, name: str | None = None):
        self.rows = as_rows(rows)
        self.weight = weight
        self.name = name or type(self).__name__

    # -- properties -------------------------------------------------------------------------
    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, w):
        w = float(w)
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {w!r}")
        self._weight = w

    @property
    def dose_level(self) -> float | None:
        """The term's dose parameter in Gy (None when it has none)."""
        return None

    @dose_level.setter
    def dose_level(self, value):
        raise AttributeError(f"term {self.name!r} ({type(self).__name__}) has no dose level to edit")

    # -- evaluation -------------------------------------------------------------------------
    def _eval_sub(self, d: np.ndarray) -> tuple[float, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _check(self, dose) -> np.ndarray:
        d = np.asarray(dose, dtype=np.float64)
        if d.ndim != 1:
            raise ValueError(f"dose must be a 1-D vector over the influence-matrix rows, got shape {d.shape}")
        if self.rows is not None and self.rows[-1] >= d.size:
            raise ValueError(
                f"term {self.name!r} uses row {int(self.rows[-1])} but the dose vector has only {d.size} "
                "entries; build the term's rows from the same influence matrix"
            )
        return d

    def accumulate(self, dose, grad: np.ndarray) -> float:
        """Add ``weight * d(term)/d(dose)`` to ``grad`` in place and return the weighted value."""
        d = self._check(dose)
        sub = d if self.rows is None else d[self.rows]
        v, g = self._eval_sub(sub)
        if self._weight != 0.0:
            if self.rows is None:
                grad += self._weight * g
            else:
                grad[self.rows] += self._weight * g
        return self._weight * float(v)

    def value_and_gradient(self, dose) -> tuple[float, np.ndarray]:
        """Weighted value and gradient (full length of ``dose``, Gy^-1 units of the value)."""
        d = self._check(dose)
        g = np.zeros(d.size, np.float64)
        v = self.accumulate(d, g)
        return v, g

    def value(self, dose) -> float:
        """Weighted value of the term at voxel dose ``dose`` (Gy)."""
        d = self._check(dose)
        sub = d if self.rows is None else d[self.rows]
        return self._weight * float(self._eval_sub(sub)[0])

    def gradient(self, dose) -> np.ndarray:
        """Weighted gradient with respect to every entry of ``dose``."""
        return self.value_and_gradient(dose)[1]

    def report(self, dose) -> dict:
        """Extra quantities for the optimisation history (e.g. F, S, f_C); default none."""
        return {}

    def copy(self) -> "Term":
        return copy.deepcopy(self)

    def __add__(self, other):
        return Objective([self]) + other

    def __radd__(self, other):
        if other == 0:
            return Objective([self])
        return NotImplemented

    def __repr__(self) -> str:
        n = "all" if self.rows is None else self.rows.size
        lvl = "" if self.dose_level is None else f", dose_level={self.dose_level:g} Gy"
        return f"{type(self).__name__}({self.name!r}, voxels={n}, weight={self.weight:g}{lvl})"


class _LevelTerm(Term):
    """A term with one dose parameter ``dose`` (Gy)."""

    def __init__(self, rows, dose: float, weight: float = 1.0, name: str | None = None):
        super().__init__(rows, weight, name)
        self.dose_level = dose

    @property
    def dose_level(self) -> float:
        return self._dose

    @dose_level.setter
    def dose_level(self, value):
        self._dose = _level("dose", value)

    dose = dose_level


# ----------------------------------------------------------------------------------------------
# quadratic voxel terms
# ----------------------------------------------------------------------------------------------
class SquaredUnderdose(_LevelTerm):
    """Mean squared underdose ``w / n * sum_i max(D - d_i, 0)^2`` (Gy^2).

    Parameters
    ----------
    rows : array of int
        Influence-matrix rows of the structure.
    dose : float
        Minimum dose ``D`` in Gy.
    weight, name : see :class:`Term`.
    """

    def _eval_sub(self, d):
        u = np.maximum(self._dose - d, 0.0)
        return float(np.mean(u * u)), -2.0 * u / d.size


class SquaredOverdose(_LevelTerm):
    """Mean squared overdose ``w / n * sum_i max(d_i - D, 0)^2`` (Gy^2); ``D`` the maximum dose."""

    def _eval_sub(self, d):
        o = np.maximum(d - self._dose, 0.0)
        return float(np.mean(o * o)), 2.0 * o / d.size


class SquaredDeviation(_LevelTerm):
    """Mean squared deviation ``w / n * sum_i (d_i - D)^2`` (Gy^2); ``D`` the prescribed dose."""

    def _eval_sub(self, d):
        e = d - self._dose
        return float(np.mean(e * e)), 2.0 * e / d.size


class MeanDose(Term):
    """Mean-dose term.

    With ``max_mean=None``: ``w * mean(d)`` (Gy, linear). With a limit ``max_mean`` (Gy):
    ``w * max(mean(d) - max_mean, 0)^2`` (Gy^2).
    """

    def __init__(self, rows, max_mean: float | None = None, weight: float = 1.0, name: str | None = None):
        super().__init__(rows, weight, name)
        self._limit = None if max_mean is None else _level("max_mean", max_mean)

    @property
    def dose_level(self):
        return self._limit

    @dose_level.setter
    def dose_level(self, value):
        self._limit = None if value is None else _level("max_mean", value)

    def _eval_sub(self, d):
        n = d.size
        m = float(np.mean(d))
        if self._limit is None:
            return m, np.full(n, 1.0 / n)
        e = max(m - self._limit, 0.0)
        return e * e, np.full(n, 2.0 * e / n)


# ----------------------------------------------------------------------------------------------
# smooth maximum
# ----------------------------------------------------------------------------------------------
def smooth_max(d, method: str = "lse", softness: float = 0.5, p: float = 20.0) -> tuple[float, np.ndarray]:
    """A differentiable maximum of a dose vector and its gradient.

    ``'lse'`` (log-sum-exp): ``m = s * log(sum_i exp(d_i / s))`` with softness ``s`` (Gy); it
    satisfies ``max(d) <= m <= max(d) + s * log(n)``; ``dm/dd_i = softmax(d / s)_i``.

    ``'pnorm'``: ``m = (mean_i max(d_i, 0)^p)^(1/p)``; ``max(d) * n^(-1/p) <= m <= max(d)``;
    ``dm/dd_i = d_i^(p-1) m^(1-p) / n``.

    Returns
    -------
    m : float
        Smooth maximum in Gy.
    grad : ndarray
        ``dm/dd`` (non-negative, sums to 1 for 'lse').
    """
    d = np.asarray(d, dtype=np.float64)
    if method == "lse":
        if not softness > 0:
            raise ValueError(f"softness must be > 0 Gy, got {softness!r}")
        z = d / softness
        zmax = float(z.max())
        e = np.exp(z - zmax)
        s = float(e.sum())
        return softness * (zmax + np.log(s)), e / s
    if method == "pnorm":
        if not p >= 1:
            raise ValueError(f"p must be >= 1, got {p!r}")
        dp = np.maximum(d, 0.0)
        top = float(dp.max())
        if top == 0.0:
            return 0.0, np.zeros_like(dp)
        r = dp / top  # scale to avoid overflow of d^p
        mean_rp = float(np.mean(r ** p))
        m = top * mean_rp ** (1.0 / p)
        grad = (r ** (p - 1)) * mean_rp ** (1.0 / p - 1.0) / d.size
        return m, grad
    raise ValueError(f"method must be 'lse' or 'pnorm', got {method!r}")


class MaxDose(_LevelTerm):
    """Maximum-dose (hot-spot) penalty on a smooth maximum: ``w * max(m(d) - D, 0)^2`` (Gy^2).

    ``m`` is :func:`smooth_max` (log-sum-exp by default, an upper bound of the true maximum
    within ``softness * log(n)`` Gy; or the p-norm, a lower bound).

    Parameters
    ----------
    rows : array of int
    dose : float
        Maximum dose ``D`` in Gy.
    method : {'lse', 'pnorm'}
    softness : float
        Log-sum-exp temperature in Gy (smaller = closer to the true maximum, stiffer).
    p : float
        Exponent of the p-norm.
    """

    def __init__(self, rows, dose, weight=1.0, name=None, method="lse", softness=0.5, p=20.0):
        super().__init__(rows, dose, weight, name)
        smooth_max(np.zeros(1), method, softness, p)  # validates the settings
        self.method, self.softness, self.p = method, float(softness), float(p)

    def _eval_sub(self, d):
        m, gm = smooth_max(d, self.method, self.softness, self.p)
        e = max(m - self._dose, 0.0)
        return e * e, 2.0 * e * gm

    def report(self, dose):
        d = self._check(dose)
        sub = d if self.rows is None else d[self.rows]
        return {"max": float(sub.max()), "smooth_max": smooth_max(sub, self.method, self.softness, self.p)[0]}


# ----------------------------------------------------------------------------------------------
# dose-volume terms
# ----------------------------------------------------------------------------------------------
def _check_fraction(v):
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"volume_fraction must be in [0, 1] (e.g. 0.95 for 95 %), got {v!r}")
    return v


class DVHMax(_LevelTerm):
    """Dose-volume maximum "at most a fraction ``v`` of the volume receives more than ``D``".

    The usual dose-volume penalty: the ``k = floor(v n)`` hottest voxels are allowed above
    ``D``; every other voxel above ``D`` (those between ``D`` and the current ``D_v``, the dose
    of the (k+1)-th hottest voxel) is penalised ``w / n * sum (d_i - D)^2`` (Gy^2). The set is
    re-chosen at each evaluation; the value is continuous and piecewise quadratic in ``d``.
    """

    def __init__(self, rows, dose, volume_fraction, weight=1.0, name=None):
        super().__init__(rows, dose, weight, name)
        self.volume_fraction = _check_fraction(volume_fraction)

    def _eval_sub(self, d):
        n = d.size
        k = int(np.floor(self.volume_fraction * n + 1e-9))
        e = d - self._dose
        pen = np.zeros(n)
        if k == 0:
            pen = np.maximum(e, 0.0)
        elif k < n:
            rest = np.argpartition(-d, k - 1)[k:]  # all but the k hottest voxels
            pen[rest] = np.maximum(e[rest], 0.0)
        return float(np.sum(pen * pen) / n), 2.0 * pen / n


class DVHMin(_LevelTerm):
    """Dose-volume minimum "at least a fraction ``v`` of the volume receives ``D`` or more".

    The ``m = ceil(v n)`` hottest voxels must reach ``D``; those of them below ``D`` (between the
    current ``D_v`` and ``D``) are penalised ``w / n * sum (D - d_i)^2`` (Gy^2).
    """

    def __init__(self, rows, dose, volume_fraction, weight=1.0, name=None):
        super().__init__(rows, dose, weight, name)
        self.volume_fraction = _check_fraction(volume_fraction)

    def _eval_sub(self, d):
        n = d.size
        m = int(np.ceil(self.volume_fraction * n - 1e-9))
        pen = np.zeros(n)
        if m > 0:
            top = np.arange(n) if m >= n else np.argpartition(-d, m - 1)[:m]  # the m hottest voxels
            pen[top] = np.maximum(self._dose - d[top], 0.0)
        return float(np.sum(pen * pen) / n), -2.0 * pen / n


# ----------------------------------------------------------------------------------------------
# weighted sums
# ----------------------------------------------------------------------------------------------
class Objective:
    """A weighted sum of terms, ``f = sum_k w_k f_k``.

    Dose-space terms get ``d = A x``; beamlet-space terms (``space == 'beamlet'``) get ``x``.
    Build with a list or with ``+``: ``Objective([t1, t2])`` or ``t1 + t2 + t3``.

    Parameters
    ----------
    terms : iterable of Term
        Names must be unique.
    """

    def __init__(self, terms: Iterable[Term] = ()):
        self.terms: list[Term] = []
        self.last_values: dict[str, float] = {}
        for t in terms:
            self.add(t)

    def add(self, term: Term) -> Term:
        if isinstance(term, Objective):
            for t in term.terms:
                self.add(t)
            return term
        if not isinstance(term, Term):
            raise TypeError(f"expected an rtlab.optimize Term, got {type(term).__name__}")
        if term.name in self.names:
            raise ValueError(f"a term named {term.name!r} is already in the objective; give each term a unique name=")
        self.terms.append(term)
        return term

    def __add__(self, other):
        new = Objective(self.terms)
        if isinstance(other, (Term, Objective)):
            new.add(other)
            return new
        return NotImplemented

    def __radd__(self, other):
        if other == 0:
            return Objective(self.terms)
        return NotImplemented

    def __iter__(self):
        return iter(self.terms)

    def __len__(self):
        return len(self.terms)

    def __getitem__(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term named {name!r}; available: {self.names}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def dose_terms(self) -> list[Term]:
        return [t for t in self.terms if t.space == "dose"]

    @property
    def beamlet_terms(self) -> list[Term]:
        return [t for t in self.terms if t.space == "beamlet"]

    def value_and_gradient(self, dose, x=None) -> tuple[float, np.ndarray] | tuple[float, np.ndarray, np.ndarray]:
        """Total value and gradient w.r.t. ``dose``.

        If ``x`` is given, beamlet-space terms are included too and the return value is
        ``(value, grad_dose, grad_x)``.
        """
        d = np.asarray(dose, dtype=np.float64)
        g = np.zeros(d.size, np.float64)
        v = 0.0
        values = {}
        for t in self.dose_terms:
            values[t.name] = t.accumulate(d, g)
            v += values[t.name]
        self.last_values = values  # weighted value per term at the last evaluation
        if x is None:
            if self.beamlet_terms:
                raise ValueError("this objective has beamlet-space terms; pass x= as well")
            return v, g
        xx = np.asarray(x, dtype=np.float64)
        gx = np.zeros(xx.size, np.float64)
        for t in self.beamlet_terms:
            values[t.name] = t.accumulate(xx, gx)
            v += values[t.name]
        return v, g, gx

    def value(self, dose, x=None) -> float:
        return float(self.value_and_gradient(dose, x)[0])

    def gradient(self, dose) -> np.ndarray:
        return self.value_and_gradient(dose)[1]

    def evaluate(self, dose, x=None) -> dict[str, float]:
        """Weighted value of every term, by name."""
        out = {}
        for t in self.terms:
            out[t.name] = t.value(x if t.space == "beamlet" else dose)
        return out

    def reports(self, dose, x=None) -> dict[str, dict]:
        """``term.report`` of every term that reports something, by name."""
        out = {}
        for t in self.terms:
            r = t.report(x if t.space == "beamlet" else dose)
            if r:
                out[t.name] = r
        return out

    def copy(self) -> "Objective":
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        return "Objective([\n  " + ",\n  ".join(repr(t) for t in self.terms) + "\n])"
