"""Paper 003's PDE / non-local-means smoothing inside the optimisation, and eq. 8 as a constraint.

Paper 003 (sec. "Smoothing fluence map by a PDE with prior knowledge", eqs 5-8) smooths the
fluence maps with the energy of eq. 6,

    E(u) = integral g(v) |D u| + beta (u - u0)^2 dx dy,    v = D(G_sigma * u),

whose gradient flow is the anisotropic diffusion of eq. 7, with a non-local-means estimate as the
prior ``u0``, the diffusion steered "according to the vertical direction of the MLC leaf
movement", "the projection of the OAR on the field" and "the smoothing direction of reducing
MU", and then bounds the total monitor units (eq. 8, ``TNMU <= TNMU_0``).

:func:`rtlab.methods.smoothing.anisotropic_diffusion` integrates eq. 7 *after* optimisation: it
ignores the dose and breaks the plan (notebook 06 measures it). Here the same energy is an
objective term, minimised together with the dose objective (:class:`PDEPriorPenalty`):

``tv``
    ``sum g_jk (sqrt(a_leaf (u_j,k+1 - u_jk)^2 + a_across (u_j+1,k - u_jk)^2 + kappa^2) - kappa)``,
    the discrete ``integral g(v) |A^1/2 D u|`` of eq. 6 (forward differences, zero flux at the
    borders; ``kappa`` regularises ``|Du|`` as in the explicit scheme). ``A = diag(a_across,
    a_leaf)`` is the leaf-direction term. ``g = 1 / (1 + (|D(G_sigma * u0)| / kappa)^2)`` is the
    edge-stopping function of eq. 6, evaluated on the prior and frozen (so the term is a
    weighted TV whose gradient is exact).
``fidelity``
    ``beta sum (u - u0)^2`` (eq. 6) towards the non-local-means prior ``u0``
    (:func:`rtlab.methods.smoothing.nlm_prior` of the start plan's maps).
``mu``
    the "smoothing direction of reducing MU": ``sum_rows sum_k softplus_s(u_jk - u_j,k-1)``
    (``u_j,-1 = 0``), the eq. 8 row summand (positive steps along the leaf travel) made
    differentiable; it diffuses only rising edges, towards single-peaked rows.
``oar``
    the OAR-projection term: ``sum omega_jk u_jk`` with ``omega`` the fraction of each bixel's
    dose that falls outside every target (in OARs and normal tissue), :func:`oar_projection`.
    It is rtlab's reading of the paper's "projection direction of the OAR projection on the
    projection field is also considered": fluence is diffused away from the OARs' shadow.

Each component is divided by its value at the start plan (``normalise``) so the weights are
dimensionless; ``weights=(w_tv, beta, w_mu, w_oar)``.

The TNMU-bounded problem of eq. 8 is solved as a constraint by :func:`tnmu_bounded_solve`: an
augmented Lagrangian (Powell-Hestenes-Rockafellar) on ``c(x) = TNMU_s(x) / TNMU_0 - 1 <= 0``,
where ``TNMU_s`` is the softplus/log-sum-exp TNMU of
:class:`rtlab.methods.sequencing.TNMUPenalty`, an *upper bound* of the exact eq. 8 value (so a
point with ``c <= 0`` satisfies the exact bound); each outer step minimises
``f(x) + rho/2 max(0, c(x) + lambda/rho)^2`` with L-BFGS-B over ``x >= 0``, then updates
``lambda <- max(0, lambda + rho c)`` and raises ``rho`` tenfold when the violation did not fall
by 4. Should the last iterate still violate the exact bound, it is scaled by
``TNMU_0 / TNMU(x)``: TNMU is positively homogeneous (``TNMU(a x) = a TNMU(x)``), so the scaled
plan meets eq. 8 exactly (the scale factor is reported; 1 when the multiplier method converged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .._util import check_finite, check_positive
from ..core.selection import rows_for
from ..optimize import Objective, Solver, Term
from .sequencing import TNMUPenalty, tnmu
from .smoothing import as_term, map_shapes, nlm_prior, split_maps, weights_to_maps

__all__ = ["PDEPriorPenalty", "oar_projection", "pde_prior_term", "TNMUBoundedResult", "tnmu_bounded_solve",
           "plan_tnmu", "coverage_normalisation", "smooth_in_optimisation", "edge_stop", "COMPONENTS"]

#: The components of :class:`PDEPriorPenalty`, in the order of its ``weights``.
COMPONENTS = ("tv", "fidelity", "mu", "oar")


def _softplus(z, s):
    return s * np.logaddexp(0.0, z / s)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def edge_stop(prior, kappa: float, sigma: float = 1.0) -> np.ndarray:
    """``g(v) = 1 / (1 + (|D(G_sigma * u0)| / kappa)^2)`` of paper 003 eq. 6 on a prior map."""
    gy, gx = np.gradient(ndimage.gaussian_filter(np.asarray(prior, float), sigma))
    return 1.0 / (1.0 + (np.hypot(gx, gy) / kappa) ** 2)


class PDEPriorPenalty:
    """Paper 003's eq. 6 energy with its directional terms, as a penalty on fluence maps.

    ``value(u) = w_tv tv(u)/n_tv + beta fidelity(u)/n_fid + w_mu mu(u)/n_mu + w_oar oar(u)/n_oar``
    (module docstring), on the concatenated flattened maps of ``shapes`` (rows across the
    leaves, columns along the leaf travel), in the penalty interface of
    :mod:`rtlab.methods.smoothing` (wrap it with :func:`rtlab.methods.smoothing.as_term`).

    Parameters
    ----------
    shapes : list of (n_rows, n_cols)
    prior : ndarray
        ``u0`` (flat, the layout of ``shapes``), fluence units.
    kappa : float or sequence of float
        Edge scale per beam (fluence units per bixel).
    edge : ndarray, optional
        ``g`` per bixel (flat); default :func:`edge_stop` of the prior.
    oar : ndarray, optional
        ``omega`` per bixel (flat, in [0, 1]); default 0 (no OAR term).
    weights : sequence of 4 float
        ``(w_tv, beta, w_mu, w_oar)``.
    leaf_weight, across_weight : float
        ``a_leaf``, ``a_across`` (diffusion along the leaf travel and across the leaves).
    s : float
        Softplus width of the MU term (fluence units).
    norms : sequence of 4 float, optional
        ``(n_tv, n_fid, n_mu, n_oar)``; default 1 (see :meth:`normalise`).
    """

    def __init__(self, shapes, prior, kappa, *, edge=None, oar=None, weights=(1.0, 0.1, 1.0, 1.0),
                 leaf_weight: float = 1.0, across_weight: float = 0.25, s: float | None = None, norms=None):
        self.shapes = [tuple(int(v) for v in sh) for sh in shapes]
        if any(len(sh) != 2 for sh in self.shapes):
            raise ValueError(f"each shape must be (n_rows, n_cols), got {self.shapes}")
        n = sum(a * b for a, b in self.shapes)
        self.prior = self._flat("prior", prior, n)
        k = np.broadcast_to(np.asarray(kappa, float), (len(self.shapes),)).copy()
        if not np.all(np.isfinite(k)) or np.any(k <= 0):
            raise ValueError(f"kappa must be positive and finite (fluence units per bixel), got {kappa!r}")
        self.kappa = k
        if edge is None:
            edge = np.concatenate([edge_stop(m, kk).ravel() for m, kk in zip(split_maps(self.prior, self.shapes), k)])
        self.edge = self._flat("edge", edge, n)
        self.oar = np.zeros(n) if oar is None else self._flat("oar", oar, n)
        w = np.asarray(weights, float)
        if w.shape != (4,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be 4 non-negative numbers (w_tv, beta, w_mu, w_oar), got {weights!r}")
        self.weights = w
        (self.leaf_weight,) = check_positive("leaf_weight", leaf_weight, allow_zero=True)
        (self.across_weight,) = check_positive("across_weight", across_weight, allow_zero=True)
        if s is None:
            s = 0.05 * float(np.max(self.prior)) if np.max(self.prior) > 0 else 1e-3
        (self.s,) = check_positive("s", s)
        nm = np.ones(4) if norms is None else np.asarray(norms, float)
        if nm.shape != (4,) or np.any(~np.isfinite(nm)) or np.any(nm <= 0):
            raise ValueError(f"norms must be 4 positive numbers, got {norms!r}")
        self.norms = nm

    @staticmethod
    def _flat(name, v, n):
        a = np.asarray(v, float).ravel()
        if a.size != n:
            raise ValueError(f"{name} has {a.size} entries, the maps of shapes need {n}")
        check_finite(name, a)
        return a

    # -- per-map pieces ------------------------------------------------------------------------
    def _tv(self, m, g, kappa, grad):
        dx = np.zeros_like(m)
        dy = np.zeros_like(m)
        dx[:, :-1] = m[:, 1:] - m[:, :-1]
        dy[:-1, :] = m[1:, :] - m[:-1, :]
        r = np.sqrt(self.leaf_weight * dx**2 + self.across_weight * dy**2 + kappa**2)
        val = float(np.sum(g * (r - kappa)))
        if grad:
            fx = g * self.leaf_weight * dx / r
            fy = g * self.across_weight * dy / r
            gr = np.zeros_like(m)
            gr[:, 1:] += fx[:, :-1]
            gr[:, :-1] -= fx[:, :-1]
            gr[1:, :] += fy[:-1, :]
            gr[:-1, :] -= fy[:-1, :]
            return val, gr
        return val, None

    def _mu(self, m, grad):
        d = np.diff(m, axis=1, prepend=0.0)
        val = float(np.sum(_softplus(d, self.s)))
        if grad:
            p = _sigmoid(d / self.s)
            gr = p.copy()
            gr[:, :-1] -= p[:, 1:]
            return val, gr
        return val, None

    def components(self, u, grad: bool = False):
        """Raw (unweighted, unnormalised) values of :data:`COMPONENTS` at ``u``, and their gradients."""
        u = np.asarray(u, float).ravel()
        maps = split_maps(u, self.shapes)
        edges = split_maps(self.edge, self.shapes)
        tv, mu = 0.0, 0.0
        g_tv, g_mu = [], []
        for m, g, kappa in zip(maps, edges, self.kappa):
            v, gr = self._tv(m, g, kappa, grad)
            tv += v
            g_tv.append(gr)
            v, gr = self._mu(m, grad)
            mu += v
            g_mu.append(gr)
        diff = u - self.prior
        vals = {"tv": tv, "fidelity": float(diff @ diff), "mu": mu, "oar": float(self.oar @ u)}
        if not grad:
            return vals
        grads = {"tv": np.concatenate([g.ravel() for g in g_tv]), "fidelity": 2 * diff,
                 "mu": np.concatenate([g.ravel() for g in g_mu]), "oar": self.oar.copy()}
        return vals, grads

    def normalise(self, u) -> "PDEPriorPenalty":
        """Set ``norms`` to the components' values at ``u`` (the start plan); the fidelity is normalised
        by ``sum u0^2``. Returns ``self``."""
        vals = self.components(u)
        ref = [vals["tv"], float(self.prior @ self.prior), vals["mu"], vals["oar"]]
        self.norms = np.array([v if v > 0 else 1.0 for v in ref])
        return self

    def weighted(self, u) -> dict:
        """The weighted, normalised components at ``u`` (they sum to :meth:`value`)."""
        vals = self.components(u)
        return {k: float(w * vals[k] / n) for k, w, n in zip(COMPONENTS, self.weights, self.norms)}

    def value(self, u) -> float:
        return float(sum(self.weighted(u).values()))

    def gradient(self, u) -> np.ndarray:
        _, grads = self.components(u, grad=True)
        return sum((w / n) * grads[k] for k, w, n in zip(COMPONENTS, self.weights, self.norms))


def oar_projection(im, target_mask) -> np.ndarray:
    """``omega``: per bixel, the fraction of its dose (over ``im``'s rows) outside every target.

    ``omega_b = (A^T 1_nt)_b / (A^T 1)_b`` with ``1_nt`` the rows outside ``target_mask``; bixels
    without dose get 1. Returned in the flat full-map layout of
    :func:`rtlab.methods.smoothing.weights_to_maps` (0 where a beam has no bixel).

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
    target_mask : ndarray of bool (z, y, x)
        Union of the targets on the CT grid.
    """
    vi = im.voxel_index
    rows_t = rows_for(np.asarray(target_mask, bool), vi, missing="raise")
    ones = np.ones(im.shape[0])
    nt = ones.copy()
    nt[rows_t] = 0.0
    total = np.asarray(im.rmatvec(ones), float)
    outside = np.asarray(im.rmatvec(nt), float)
    omega = np.where(total > 0, outside / np.where(total > 0, total, 1.0), 1.0)
    return weights_to_maps(im, np.clip(omega, 0.0, 1.0))


def pde_prior_term(im, x, target_mask=None, *, weights=(1.0, 0.1, 1.0, 1.0), leaf_weight: float = 1.0,
                   across_weight: float = 0.25, term_weight: float = 1.0, nlm: dict | None = None, name=None):
    """Build :class:`PDEPriorPenalty` from a start plan ``x`` and wrap it as an optimiser term.

    ``u0`` is the non-local-means estimate of each beam's map of ``x``; ``kappa`` per beam the
    90th percentile of ``|D(G_1 * u0)|`` over the beam's bixels; the OAR term uses
    :func:`oar_projection` of ``target_mask`` (omitted when None or ``weights[3] == 0``); the
    components are normalised at ``x`` (:meth:`PDEPriorPenalty.normalise`).

    Returns
    -------
    term : rtlab.optimize.Term
        On beamlet weights (:func:`rtlab.methods.smoothing.as_term`); ``term.penalty`` is the
        :class:`PDEPriorPenalty`.
    """
    shapes = map_shapes(im)
    flat = weights_to_maps(im, x)
    if np.any(flat < 0):
        raise ValueError("x has negative weights; the start plan must be a fluence (x >= 0)")
    maps = split_maps(flat, shapes)
    nlm = dict(nlm or {})
    priors, kappas = [], []
    for m in maps:
        u0 = nlm_prior(m, **nlm) if m.max() > 0 else m.copy()
        gy, gx = np.gradient(ndimage.gaussian_filter(u0, 1.0))
        mag = np.hypot(gx, gy)
        k = float(np.percentile(mag[mag > 0], 90)) if np.any(mag > 0) else 1.0
        priors.append(u0.ravel())
        kappas.append(k)
    oar = None
    if target_mask is not None and weights[3] > 0:
        oar = oar_projection(im, target_mask)
    pen = PDEPriorPenalty(shapes, np.concatenate(priors), kappas, oar=oar, weights=weights, leaf_weight=leaf_weight,
                          across_weight=across_weight).normalise(flat)
    return as_term(pen, im, weight=term_weight, name=name or "PDE/NLM prior (eq. 6)")


def plan_tnmu(im, x, mu_per_unit: float = 1.0) -> float:
    """Exact TNMU of eq. 8 (MU) of beamlet weights ``x`` (``mu_per_unit`` MU per unit weight)."""
    flat = weights_to_maps(im, x)
    return tnmu([mu_per_unit * np.maximum(m, 0) for m in split_maps(flat, map_shapes(im))])


class _ALPenalty:
    """``rho/2 max(0, c + lam/rho)^2 - lam^2/(2 rho)`` with ``c = TNMU_s / TNMU_0 - 1`` (maps layout)."""

    def __init__(self, tnmu_pen: TNMUPenalty, tnmu0: float, lam: float, rho: float):
        self.t, self.tnmu0, self.lam, self.rho = tnmu_pen, float(tnmu0), float(lam), float(rho)
        self.shapes = tnmu_pen.shapes

    def value(self, u):
        c = self.t.smooth_tnmu(u) / self.tnmu0 - 1.0
        z = max(0.0, c + self.lam / self.rho)
        return 0.5 * self.rho * z * z - self.lam**2 / (2 * self.rho)

    def gradient(self, u):
        c = self.t.smooth_tnmu(u) / self.tnmu0 - 1.0
        z = max(0.0, c + self.lam / self.rho)
        if z == 0.0:
            return np.zeros(np.asarray(u).size)
        return (self.rho * z / self.tnmu0) * self.t.smooth_tnmu_gradient(u)


class _DoseFloorAL(Term):
    """Augmented-Lagrangian term of the dose constraints ``floor_i <= d_i <= ceil_i`` on ``rows`` (eq. 8's
    "dose constraints in target areas"): ``1/n sum psi(c_i, lam_i) + psi(e_i, mu_i)`` with
    ``psi(c, l) = rho/2 max(0, c + l/rho)^2 - l^2/(2 rho)``, ``c_i = (floor_i - d_i) / scale`` and
    ``e_i = (d_i - ceil_i) / scale`` (no ceiling: ``ceil = inf``)."""

    def __init__(self, rows, floor, ceil, rho, scale):
        super().__init__(rows, 1.0, "target dose band (eq. 8, AL)")
        self.floor, self.ceil = floor, ceil
        self.lam, self.mu = np.zeros(floor.size), np.zeros(floor.size)
        self.rho, self.scale = float(rho), float(scale)

    def violations(self, d_rows):
        lo = (self.floor - d_rows) / self.scale
        hi = (d_rows - self.ceil) / self.scale if self.ceil is not None else np.full(d_rows.size, -np.inf)
        return lo, hi

    def _eval_sub(self, d):
        lo, hi = self.violations(d)
        z = np.maximum(0.0, lo + self.lam / self.rho)
        y = np.maximum(0.0, hi + self.mu / self.rho)
        n = d.size
        v = float(np.sum(0.5 * self.rho * (z * z + y * y) - (self.lam**2 + self.mu**2) / (2 * self.rho))) / n
        return v, self.rho * (y - z) / self.scale / n

    def update(self, d_rows):
        """Multiplier step; returns the largest relative violation."""
        lo, hi = self.violations(d_rows)
        self.lam = np.maximum(0.0, self.lam + self.rho * lo)
        self.mu = np.maximum(0.0, self.mu + self.rho * np.maximum(hi, -1e300))
        return float(max(lo.max(), hi.max(), 0.0))


@dataclass
class TNMUBoundedResult:
    """Outcome of :func:`tnmu_bounded_solve`.

    Attributes
    ----------
    x : ndarray
        Beamlet weights meeting ``TNMU(x) <= tnmu0`` (eq. 8, exact).
    tnmu, tnmu_smooth : float
        Exact and smoothed TNMU (MU) at ``x``.
    tnmu0 : float
        The bound (MU).
    objective : float
        The objective (without the constraint term) at ``x``.
    iterations : int
        L-BFGS-B iterations over all outer steps.
    outer : list of dict
        Per outer step: ``lam``, ``rho``, ``violation`` (``c``), ``iterations``, ``objective``.
    scale : float
        Factor applied at the end to meet the exact bound (1.0 when not needed).
    """

    x: np.ndarray
    tnmu: float
    tnmu_smooth: float
    tnmu0: float
    objective: float
    iterations: int
    outer: list = field(default_factory=list)
    scale: float = 1.0

    @property
    def feasible(self) -> bool:
        return self.tnmu <= self.tnmu0 * (1 + 1e-9)


def tnmu_bounded_solve(im, objective, tnmu0: float, *, mu_per_unit: float = 1.0, x0=None, max_iter: int = 100,
                       n_outer: int = 5, rho: float = 10.0, s: float | None = None, tau: float | None = None,
                       tol: float = 1e-3, dose_floor=None, progress=None) -> TNMUBoundedResult:
    """Minimise ``objective`` subject to ``TNMU(x) <= tnmu0`` (paper 003, eq. 8) and ``x >= 0``.

    Augmented Lagrangian over L-BFGS-B (module docstring). ``max_iter`` is the total L-BFGS-B
    iteration budget, split evenly over at most ``n_outer`` outer steps (it stops early when
    the inner solve converged with ``c <= tol`` and ``lambda c`` ~ 0: the bound met and the
    multiplier settled).

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
    objective : rtlab.optimize.Objective
        Dose terms on ``im``'s rows and any beamlet terms (e.g. :func:`pde_prior_term`).
    tnmu0 : float
        The bound (MU).
    mu_per_unit : float
        MU per unit beamlet weight (e.g. ``mu_per_unit_fluence(im.machine) / fractions``).
    x0 : ndarray, optional
        Start (default ones).
    s, tau : float, optional
        Smoothing widths of the TNMU (MU); default ``1e-3 tnmu0 / n_beams`` and ``5 s``.
    tol : float
        Relative violation accepted before the final exact check.
    dose_floor : (rows, floor) or (rows, floor, ceiling), optional
        Eq. 8's dose constraints in the target: ``floor_i <= d_i (<= ceiling_i)`` (Gy) on
        influence-matrix ``rows``, one multiplier per voxel and side in the same augmented
        Lagrangian (e.g. the unsmoothed plan's target doses capped at the prescription, so that
        smoothing keeps its coverage).
    progress : callable, optional
        ``progress(outer_record)`` after each outer step.
    """
    (tnmu0,) = check_positive("tnmu0", tnmu0)
    (mu_per_unit,) = check_positive("mu_per_unit", mu_per_unit)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an rtlab.optimize.Objective, got {type(objective).__name__}")
    shapes = map_shapes(im)
    if s is None:
        s = 1e-3 * tnmu0 / len(shapes)
    if tau is None:
        tau = 5 * s
    tpen = TNMUPenalty(shapes, tnmu0=tnmu0, mu_per_unit=mu_per_unit, s=s, tau=tau)
    n = im.shape[1]
    x = np.ones(n) if x0 is None else np.maximum(np.asarray(x0, float).ravel(), 0.0)
    if x.size != n:
        raise ValueError(f"x0 has {x.size} entries, the influence matrix has {n} beamlets")
    A = im.operator() if hasattr(im, "operator") else im.matrix
    n_outer = max(1, int(n_outer))
    per = max(1, int(max_iter) // n_outer)
    floor_term = None
    if dose_floor is not None:
        if len(dose_floor) not in (2, 3):
            raise ValueError("dose_floor must be (rows, floor) or (rows, floor, ceiling)")
        f_rows = np.asarray(dose_floor[0], np.int64).ravel()
        if f_rows.size == 0:
            raise ValueError("dose_floor has no rows; pass (rows, floor) of the target's voxels")
        f_val = np.broadcast_to(np.asarray(dose_floor[1], float), f_rows.shape).copy()
        check_finite("dose_floor floor", f_val)
        c_val = None
        if len(dose_floor) == 3 and dose_floor[2] is not None:
            c_val = np.broadcast_to(np.asarray(dose_floor[2], float), f_rows.shape).copy()
            check_finite("dose_floor ceiling", c_val)
            if np.any(c_val < f_val):
                raise ValueError("dose_floor: the ceiling is below the floor for some voxels")
        order = np.argsort(f_rows, kind="stable")  # terms keep their rows sorted
        f_rows, f_val = f_rows[order], f_val[order]
        c_val = None if c_val is None else c_val[order]
        floor_term = _DoseFloorAL(f_rows, f_val, c_val, 100.0 * rho, max(float(np.mean(np.abs(f_val))), 1e-12))
    lam, used, outer, prev, prev_f = 0.0, 0, [], np.inf, np.inf
    for k in range(n_outer):
        budget = per if k < n_outer - 1 else max(1, int(max_iter) - used)
        al = as_term(_ALPenalty(tpen, tnmu0, lam, rho), im, name="TNMU bound (eq. 8, AL)")
        extra = [al] if floor_term is None else [al, floor_term]
        solver = Solver(A, Objective(list(objective.terms) + extra), max_iter=budget)
        res = solver.run(x)
        x = res.x
        used += res.iterations
        c = tpen.smooth_tnmu(weights_to_maps(im, x)) / tnmu0 - 1.0
        rec = {"lam": lam, "rho": rho, "violation": float(c), "iterations": int(res.iterations)}
        lam = max(0.0, lam + rho * c)
        # stop early only when the inner solve converged with the bound met and the multiplier settled
        done = res.status == "converged" and c <= tol and abs(lam * c) <= tol
        if c > 0 and c > 0.25 * prev:
            rho *= 10.0
        prev = max(c, 0.0)
        d = solver.dose(x)
        if floor_term is not None:
            worst = floor_term.update(d[floor_term.rows])
            rec["floor_violation"] = worst
            if worst > 0 and worst > 0.25 * prev_f:
                floor_term.rho *= 10.0
            prev_f = worst
            done = done and worst <= tol
        rec["objective"] = float(objective.value(d, x) if objective.beamlet_terms else objective.value(d))
        outer.append(rec)
        if progress is not None:
            progress(rec)
        if done or used >= max_iter:
            break
    exact = plan_tnmu(im, x, mu_per_unit)
    scale = 1.0
    if exact > tnmu0:
        scale = tnmu0 / exact
        x = x * scale
        exact = plan_tnmu(im, x, mu_per_unit)
    d = solver.dose(x)
    f = float(objective.value(d, x) if objective.beamlet_terms else objective.value(d))
    return TNMUBoundedResult(x=x, tnmu=float(exact), tnmu_smooth=tpen.smooth_tnmu(weights_to_maps(im, x)),
                             tnmu0=float(tnmu0), objective=f, iterations=int(used), outer=outer, scale=float(scale))


def coverage_normalisation(dose_fn, x, target_mask, rx: float, n_covered: int) -> float:
    """The global factor ``a >= 1`` that brings ``n_covered`` target voxels of ``a x`` to ``rx`` Gy.

    ``dose_fn(x)`` gives the dose on the CT grid; ``a = rx / d_(n)`` with ``d_(n)`` the
    ``n_covered``-th highest target dose (1 when already covered). A planner's MU
    normalisation: one factor on every beam, so the fluence shapes are kept.
    """
    d = np.sort(np.asarray(dose_fn(x))[np.asarray(target_mask, bool)])[::-1]
    if d.size == 0:
        raise ValueError("target_mask is empty; pass the target's voxels")
    ref = d[min(max(int(n_covered), 1), d.size) - 1]
    return float(max(1.0, rx / ref)) if ref > 0 else 1.0


def smooth_in_optimisation(case, im, objective, x_start, x_baseline, *, mu_per_unit: float, term_weight: float = 0.3,
                           weights=(1.0, 0.1, 1.0, 1.0), max_iter: int = 50, target_constraints: bool = True,
                           normalise: bool = True, target_band: float | None = 0.005, prior=None):
    """Paper 003's smoothing inside the optimisation, as rtlab runs it (docs/methods/smoothing.md).

    Minimise ``objective + prior`` (default: :func:`pde_prior_term` of ``x_start`` with the
    union of the case's targets for the OAR term) from ``x_start`` subject to eq. 8:
    ``TNMU <= TNMU(x_baseline)`` and, with ``target_constraints``, no target voxel below
    ``min(baseline dose, prescription)`` nor above ``(1 + target_band)`` times its baseline dose
    (None: no ceiling) (:func:`tnmu_bounded_solve`, ``max_iter`` L-BFGS-B
    iterations); then, with ``normalise``, scale by :func:`coverage_normalisation` to the
    baseline's PTV coverage when the scaled plan still meets the TNMU bound.

    Parameters
    ----------
    case : rtlab.core.case.Case
        Its targets (the first named ``PTV``, else the first target, sets the coverage).
    im : rtlab.dose.InfluenceMatrix
    objective : rtlab.optimize.Objective
    x_start, x_baseline : ndarray
        The start plan (prior built from it) and the unsmoothed plan (bound and floor).
    mu_per_unit : float
        MU per unit beamlet weight.
    prior : rtlab.optimize.Term, optional
        Another smoothing term in place of the PDE/NLM prior (e.g. ``as_term(L2Penalty(...))``).

    Returns
    -------
    x : ndarray
        The smoothed plan (meets ``TNMU <= TNMU(x_baseline)`` exactly).
    info : dict
        ``tnmu0``, ``result`` (:class:`TNMUBoundedResult`), ``normalisation`` (factor applied),
        ``x_optimised`` (before normalisation).
    """
    targets = [t for t in case.structures.targets if t.mask.any()]
    if not targets:
        raise ValueError("case has no non-empty target")
    tmask = np.zeros(case.grid.shape, bool)
    rx_rows = np.zeros(im.shape[0])
    for t in targets:
        tmask |= t.mask
        rx_rows[rows_for(t.mask, im.voxel_index, missing="raise")] = float(
            t.prescription if t.prescription is not None else case.prescription)
    tnmu0 = plan_tnmu(im, x_baseline, mu_per_unit)
    if prior is None:
        prior = pde_prior_term(im, x_start, tmask, weights=weights, term_weight=term_weight)
    floor = None
    if target_constraints:
        t_rows = rows_for(tmask, im.voxel_index)
        d_b = np.asarray(im.matvec(x_baseline), float)[t_rows]
        low = np.minimum(d_b, rx_rows[t_rows])
        floor = (t_rows, low, None if target_band is None else np.maximum(d_b * (1 + float(target_band)), low))
    res = tnmu_bounded_solve(im, Objective(list(objective.terms) + [prior]), tnmu0, mu_per_unit=mu_per_unit,
                             x0=x_start, max_iter=max_iter, dose_floor=floor)
    x, a = res.x, 1.0
    if normalise:
        ptv = next((t for t in targets if t.name == "PTV"), targets[0])
        rx = float(ptv.prescription if ptv.prescription is not None else case.prescription)
        n_cov = int(np.count_nonzero(np.asarray(im.dose(x_baseline))[ptv.mask] >= rx))
        a = coverage_normalisation(im.dose, x, ptv.mask, rx, n_cov)
        if a > 1.0 and plan_tnmu(im, a * x, mu_per_unit) <= tnmu0 * (1 + 1e-9):
            x = a * x
        else:
            a = 1.0
    return x, {"tnmu0": float(tnmu0), "result": res, "normalisation": float(a), "x_optimised": res.x}
