"""Conformity-driven objective (patent 000 "Systems and methods for generating treatment plans",
United Imaging, US 12,383,763 B2; paragraphs 59-98, eqs 1-15, claims 1-3 and 6).

Volumes, for a target ``T`` and a reference isodose ``d_ref`` (the target dose), over an
optimisation domain ``D`` (e.g. the body; the target is always part of it):

* ``TV``    -- volume of the target (eq 2's denominator),
* ``V_RI``  -- volume of the dose region: domain voxels with dose ``>= d_ref`` (claim 3),
* ``TV_RI`` -- volume of the intersection: target voxels with dose ``>= d_ref`` (claim 1).

Conformity parameters: ``F = TV_RI / V_RI`` (eq 1), ``S = TV_RI / TV`` (eq 2) and
``f_C = F * S = TV_RI^2 / (V_RI * TV)`` (eq 3, the Paddick conformity index). Objectives:
``w (f_C - C)^2`` for one target (eq 8), ``sum_I w_I (f_CI - C)^2`` for N targets (eq 6, a sum
of :class:`ConformityTerm`), and the split form ``w1 (F - C1)^2 + w2 (S - C2)^2`` (eqs 7, 13).

Relaxation (para. 85-93, eqs 9-10): the 0/1 membership ``[d_i >= d_ref]`` is replaced by
``sigmoid(k * (d_i - d_ref) / d_ref)``: the dose difference is normalised by ``d_ref`` (para. 93:
raw differences are ~1e3 cGy) and ``k`` is the ``steepness`` (default 50, i.e. the sigmoid
rises over about ``4 d_ref / k`` = 8 % of ``d_ref``). Volumes become voxel-volume-weighted
sums of sigmoids and the gradients with respect to voxel dose are analytic (eqs 11, 12, 14,
15, which follow from the quotient rule with ``sigmoid' = sigmoid (1 - sigmoid)``). The
patent's printed eqs 11-15 are garbled in the published text; this module derives them
from eqs 1-3 and 9-10 and the tests check them against finite differences.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..core.selection import as_rows, rows_for
from ..optimize.terms import Term

__all__ = [
    "sigmoid",
    "conformity_parameters",
    "ConformityTerm",
    "conformity_terms",
    "paddick_ci",
]


def sigmoid(x) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))`` (patent 000, eq 9), overflow-safe."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _volumes(voxel_volumes, n, what="voxel_volumes"):
    if voxel_volumes is None:
        return None
    v = np.asarray(voxel_volumes, np.float64)
    if v.ndim == 0:
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{what} must be positive (mm^3 or cc), got {voxel_volumes!r}")
        return None  # a uniform voxel volume cancels in F, S and f_C
    if v.shape != (n,):
        raise ValueError(f"{what} must be a scalar or have one entry per row of A ({n}), got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{what} must be finite and positive")
    return v


def conformity_parameters(dose, target_rows, d_ref: float, domain_rows=None,
                          steepness: float | None = None, voxel_volumes=None) -> dict:
    """Volumes and conformity parameters F, S and f_C (patent 000, eqs 1-3).

    Parameters
    ----------
    dose : ndarray, shape ``(n_rows,)``
        Voxel dose in Gy (rows of the influence matrix).
    target_rows : array of int
        Rows of the target ``T``.
    d_ref : float
        Reference isodose (target dose) in Gy.
    domain_rows : array of int, optional
        Rows of the optimisation domain (e.g. body) in which the dose region ``V_RI`` is
        counted; ``None`` = all rows. The target rows are always included.
    steepness : float, optional
        ``None`` (default): exact hard threshold ``d >= d_ref``. Otherwise the sigmoid
        relaxation ``sigmoid(steepness * (d - d_ref) / d_ref)`` (eqs 9, 10).
    voxel_volumes : float or array, optional
        Volume of each row (default: equal volumes; a uniform volume cancels in the ratios).

    Returns
    -------
    dict
        ``TV``, ``V_RI``, ``TV_RI`` (in units of the voxel volume; voxel counts by default),
        ``F``, ``S``, ``f_C`` (dimensionless, in [0, 1]; F and f_C are 0 when V_RI = 0).
    """
    d = np.asarray(dose, np.float64)
    if d.ndim != 1:
        raise ValueError(f"dose must be a 1-D vector over the influence-matrix rows, got shape {d.shape}")
    t = as_rows(target_rows, "target_rows")
    dom = np.arange(d.size) if domain_rows is None else np.union1d(as_rows(domain_rows, "domain_rows"), t)
    if dom[-1] >= d.size:
        raise ValueError(f"row index {int(dom[-1])} is out of range for a dose vector of {d.size} entries")
    d_ref = float(d_ref)
    if not (np.isfinite(d_ref) and d_ref > 0):
        raise ValueError(f"d_ref must be a positive dose in Gy, got {d_ref!r}")
    v = _volumes(voxel_volumes, d.size)
    vol = np.ones(d.size) if v is None else v
    if steepness is None:
        m = (d >= d_ref).astype(np.float64)
    else:
        if not steepness > 0:
            raise ValueError(f"steepness must be > 0, got {steepness!r}")
        m = sigmoid(steepness * (d - d_ref) / d_ref)
    TV = float(vol[t].sum())
    TV_RI = float((vol[t] * m[t]).sum())
    V_RI = float((vol[dom] * m[dom]).sum())
    F = TV_RI / V_RI if V_RI > 0 else 0.0
    S = TV_RI / TV
    return {"TV": TV, "V_RI": V_RI, "TV_RI": TV_RI, "F": F, "S": S, "f_C": F * S}


class ConformityTerm(Term):
    """Relaxed conformity objective for one target, usable as an :mod:`rtlab.optimize` term.

    ``f = weight * (f_C - C)^2`` (patent 000, eq 8; eq 6 is a sum of such terms), or, when
    ``w1``/``w2`` are given, ``f = weight * [w1 (F - C1)^2 + w2 (S - C2)^2]`` (eqs 7, 13).
    ``F``, ``S``, ``f_C`` use the sigmoid relaxation (eqs 9-10); the gradient with respect to
    voxel dose is analytic (eqs 11-12, 14-15):

    ``dTV_RI/dd_i = [i in T] v_i s'_i``, ``dV_RI/dd_i = v_i s'_i`` with
    ``s'_i = k / d_ref * s_i (1 - s_i)``; ``dF = (dTV_RI V_RI - TV_RI dV_RI) / V_RI^2``,
    ``dS = dTV_RI / TV``, ``df_C = F dS + S dF``.

    Parameters
    ----------
    target_rows : array of int
        Influence-matrix rows of the target.
    d_ref : float
        Reference isodose (target dose) in Gy; editable as ``dose_level``.
    domain_rows : array of int, optional
        Rows where the dose region ``V_RI`` is counted (e.g. the body); ``None`` = all rows of
        ``A`` -- then give ``n_rows``. Target rows are always added.
    weight : float
        ``w`` of eq 8 / ``w_I`` of eq 6.
    w1, w2 : float, optional
        Split weights of eq 7 (both default to 1 when one is given).
    C, C1, C2 : float
        Preset constants of eqs 6-8 (default 1).
    steepness : float
        ``k`` of the normalised sigmoid ``sigmoid(k (d - d_ref) / d_ref)``.
    voxel_volumes : float or array, optional
        Per-row volumes (default equal).
    n_rows : int, optional
        Number of rows of ``A``; needed only when ``domain_rows`` is ``None``.
    name : str, optional
    """

    def __init__(self, target_rows, d_ref: float, domain_rows=None, weight: float = 1.0, *,
                 w1: float | None = None, w2: float | None = None, C: float = 1.0, C1: float = 1.0,
                 C2: float = 1.0, steepness: float = 50.0, voxel_volumes=None, n_rows: int | None = None,
                 name: str | None = None):
        t = as_rows(target_rows, "target_rows")
        if domain_rows is None:
            if n_rows is None:
                raise ValueError("pass domain_rows (e.g. rows_for(body_mask, voxel_index)) or n_rows = A.shape[0]")
            if t[-1] >= n_rows:
                raise ValueError(f"target_rows reach row {int(t[-1])} but n_rows = {n_rows}")
            dom = np.arange(int(n_rows), dtype=np.int64)
        else:
            dom = np.union1d(as_rows(domain_rows, "domain_rows"), t).astype(np.int64)
        super().__init__(dom, weight, name or f"conformity@{float(d_ref):g}Gy")
        self._in_target = np.isin(dom, t)
        self.target_rows = t
        self.dose_level = d_ref
        if not steepness > 0:
            raise ValueError(f"steepness must be > 0 (e.g. 50), got {steepness!r}")
        self.steepness = float(steepness)
        self.split = w1 is not None or w2 is not None
        self.w1 = 1.0 if w1 is None else float(w1)
        self.w2 = 1.0 if w2 is None else float(w2)
        if self.w1 < 0 or self.w2 < 0:
            raise ValueError(f"w1 and w2 must be >= 0, got {w1!r}, {w2!r}")
        self.C, self.C1, self.C2 = float(C), float(C1), float(C2)
        v = None if voxel_volumes is None else np.asarray(voxel_volumes, np.float64)
        if v is not None and v.ndim == 0:
            _volumes(v, 1)  # validates; a uniform volume cancels in F, S and f_C
            v = None
        elif v is not None:
            if v.ndim != 1 or v.size <= dom[-1]:
                raise ValueError(f"voxel_volumes must be a scalar or hold one volume per row of A "
                                 f"(at least {int(dom[-1]) + 1}), got shape {v.shape}")
            v = _volumes(v, v.size)[dom]
        self._vol = v

    @classmethod
    def from_masks(cls, target_mask, d_ref, domain_mask=None, voxel_index=None, n_rows=None,
                   missing: str = "ignore", **kwargs) -> "ConformityTerm":
        """Build from grid masks (or Structures) and the dose engine's ``voxel_index``.

        Mask voxels without a row in ``A`` are ignored by default for the domain (they get no
        dose); target voxels must all have rows (``missing='raise'``).
        """
        t = rows_for(target_mask, voxel_index, missing="raise")
        dom = None if domain_mask is None else rows_for(domain_mask, voxel_index, missing=missing)
        if dom is None and n_rows is None and voxel_index is not None:
            n_rows = len(voxel_index)
        if dom is None and n_rows is None:
            n_rows = int(np.asarray(getattr(target_mask, "mask", target_mask)).size)
        return cls(t, d_ref, dom, n_rows=n_rows, **kwargs)

    @property
    def dose_level(self) -> float:
        return self._d_ref

    @dose_level.setter
    def dose_level(self, value):
        v = float(value)
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"d_ref must be a positive dose in Gy, got {value!r}")
        self._d_ref = v

    d_ref = dose_level

    # -- core -------------------------------------------------------------------------------
    def _parts(self, d):
        k = self.steepness / self._d_ref
        s = sigmoid(k * (d - self._d_ref))
        ds = k * s * (1.0 - s)
        vol = np.ones(d.size) if self._vol is None else self._vol
        it = self._in_target
        TV = float(vol[it].sum())
        TV_RI = float((vol[it] * s[it]).sum())
        V_RI = float((vol * s).sum())
        return s, ds, vol, TV, TV_RI, V_RI

    def _eval_sub(self, d):
        s, ds, vol, TV, TV_RI, V_RI = self._parts(d)
        V = max(V_RI, 1e-300)
        F = TV_RI / V
        S = TV_RI / TV
        fC = F * S
        dTVRI = vol * ds * self._in_target
        dVRI = vol * ds
        dF = (dTVRI * V - TV_RI * dVRI) / (V * V)
        dS = dTVRI / TV
        if self.split:  # eqs 7, 13-15
            val = self.w1 * (F - self.C1) ** 2 + self.w2 * (S - self.C2) ** 2
            g = 2.0 * self.w1 * (F - self.C1) * dF + 2.0 * self.w2 * (S - self.C2) * dS
        else:  # eqs 6, 8, 11-12
            dfC = F * dS + S * dF
            val = (fC - self.C) ** 2
            g = 2.0 * (fC - self.C) * dfC
        return float(val), g

    def parameters(self, dose, exact: bool = False) -> dict:
        """TV, V_RI, TV_RI, F, S, f_C at ``dose`` -- relaxed, or exact (hard threshold).

        Same values as :func:`conformity_parameters` on this term's rows (tested), without
        re-validating the row sets.
        """
        d = self._check(dose)[self.rows]
        vol = np.ones(d.size) if self._vol is None else self._vol
        if exact:
            m = (d >= self._d_ref).astype(np.float64)
        else:
            m = sigmoid(self.steepness * (d - self._d_ref) / self._d_ref)
        it = self._in_target
        TV = float(vol[it].sum())
        TV_RI = float((vol[it] * m[it]).sum())
        V_RI = float((vol * m).sum())
        F = TV_RI / V_RI if V_RI > 0 else 0.0
        S = TV_RI / TV
        return {"TV": TV, "V_RI": V_RI, "TV_RI": TV_RI, "F": F, "S": S, "f_C": F * S}

    def report(self, dose) -> dict:
        """Relaxed and exact (``*_exact``) F, S, f_C and volumes side by side."""
        r = self.parameters(dose)
        e = self.parameters(dose, exact=True)
        out = dict(r)
        out.update({f"{k}_exact": v for k, v in e.items() if k != "TV"})
        out["d_ref"] = self._d_ref
        return out


def conformity_terms(targets: Iterable, domain_rows=None, *, n_rows: int | None = None,
                     steepness: float = 50.0, C: float = 1.0, split: bool = False,
                     voxel_volumes=None) -> list[ConformityTerm]:
    """One :class:`ConformityTerm` per target: the N-target objective of eq 6 (or eq 7).

    Parameters
    ----------
    targets : iterable
        Each entry a dict with keys ``rows``, ``d_ref`` and optional ``weight``, ``w1``,
        ``w2``, ``name``, ``domain_rows``; or a tuple ``(rows, d_ref[, weight])``.
    domain_rows : array of int, optional
        Default domain for every target.
    split : bool
        Use eq 7 (``w1``/``w2`` per target, default 1) instead of eq 6.

    Returns
    -------
    list of ConformityTerm
        Sum them (``Objective(terms)``) to get ``f_obj^N``.
    """
    out = []
    for i, t in enumerate(targets):
        if isinstance(t, dict):
            spec = dict(t)
        else:
            t = tuple(t)
            if len(t) not in (2, 3):
                raise ValueError(f"targets[{i}] must be (rows, d_ref[, weight]) or a dict, got {len(t)} items")
            spec = {"rows": t[0], "d_ref": t[1], "weight": t[2] if len(t) == 3 else 1.0}
        rows = spec.pop("rows")
        d_ref = spec.pop("d_ref")
        dom = spec.pop("domain_rows", domain_rows)
        if split:
            spec.setdefault("w1", 1.0)
            spec.setdefault("w2", 1.0)
        spec.setdefault("name", f"conformity[{i}]@{float(d_ref):g}Gy")
        out.append(ConformityTerm(rows, d_ref, dom, n_rows=n_rows, steepness=steepness, C=C,
                                  voxel_volumes=voxel_volumes, **spec))
    return out


def paddick_ci(dose, target_mask, d_ref: float, domain_mask=None) -> float:
    """Exact Paddick conformity index ``TV_RI^2 / (TV * V_RI)`` on a dose grid (eq 3).

    Parameters
    ----------
    dose : ndarray
        Dose in Gy, any shape.
    target_mask : ndarray of bool, same shape
    d_ref : float
        Reference isodose in Gy.
    domain_mask : ndarray of bool, optional
        Where the dose region is counted (default everywhere).
    """
    d = np.asarray(dose, np.float64)
    t = np.asarray(target_mask, bool)
    if t.shape != d.shape:
        raise ValueError(f"target_mask has shape {t.shape}, dose {d.shape}; they must match")
    if not t.any():
        raise ValueError("target_mask is empty")
    dom = np.ones_like(t) if domain_mask is None else (np.asarray(domain_mask, bool) | t)
    ri = d >= float(d_ref)
    tvri = float(np.count_nonzero(ri & t))
    vri = float(np.count_nonzero(ri & dom))
    return tvri * tvri / (vri * np.count_nonzero(t)) if vri > 0 else 0.0
