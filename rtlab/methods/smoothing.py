"""Fluence-map smoothing and modulation-complexity metrics (paper 003, sec. 2 and eqs 1-7).

Fluence maps are arrays ``(n_rows, n_cols)``: rows across the leaves, columns along the leaf
travel (the paper's index ``k`` in eq. 8). Several beams are handled as a list of maps, or as
one flat weight vector plus the shape of each beam's map (``shapes``), which is how the
optimiser stores beamlet weights.

Strategies of the paper
-----------------------
* **Outside the objective**: a linear convolution along the leaf direction after optimisation,
  ``x'_{k} = sum_{lambda=-L..R} c_lambda x_{k+lambda}`` (:func:`convolve_along_leaves`). The
  paper writes the shift on the row index ``j`` but motivates it by the leaf motion; we convolve
  along the leaf travel (columns), and the axis can be chosen.
* **Implicit penalties** in the objective (:class:`CurvaturePenalty` eq. 1,
  :class:`L1Penalty` eq. 2, :class:`L2Penalty` eq. 3), each with an analytic gradient.
* **Explicit**: smooth, then re-optimise with ``sum w (x - x')^2``
  (:class:`ExplicitSmoothingPenalty`).
* **PDE with prior knowledge**: anisotropic total-variation diffusion of eqs 5-7, steered along
  the leaf direction, with a non-local-means prior (:func:`anisotropic_diffusion`,
  :func:`nlm_prior`).

Metrics (paper 003, beam-angle pheromone)
-----------------------------------------
* ``eta = sum (Delta p_x)^+ / integral p_x dx`` (:func:`smoothness_eta`), where ``p_x`` is the
  projection of the map onto the leaf-travel axis.
* ``theta = |sigma_xy - sigma_yx| * sum sum X`` (:func:`tongue_groove_theta`). The paper calls
  ``sigma_xy``/``sigma_yx`` "the variance of the projection function in the XY and YX
  directions"; we read them as the normalised variances (coefficients of variation) of the two
  projections ``p_x`` (onto the travel axis) and ``p_y`` (onto the across-leaf axis).

Penalty objects follow the optimiser's fluence-term interface: ``value(x)`` and
``gradient(x)`` on the flat weight vector, with ``shapes`` giving each beam's map shape.

Using them in the optimiser
---------------------------
The influence matrix stores only the *active* bixels of each beam (``BixelGrid.mask``), while the
penalties act on full rectangular maps. :func:`as_term` wraps a penalty (any of the above, or
:class:`rtlab.methods.sequencing.TNMUPenalty`) as an :class:`rtlab.optimize.Term` on the beamlet
weights: it scatters the weights into the maps (0 where there is no bixel), evaluates the
penalty, and gathers its gradient back. :func:`map_shapes`, :func:`weights_to_maps`,
:func:`maps_to_weights` and :func:`apply_per_beam` do the bookkeeping.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._util import check_finite, check_positive
from ..optimize.terms import Term

__all__ = [
    "convolve_along_leaves",
    "CurvaturePenalty",
    "L1Penalty",
    "L2Penalty",
    "ExplicitSmoothingPenalty",
    "nlm_prior",
    "anisotropic_diffusion",
    "smoothness_eta",
    "tongue_groove_theta",
    "split_maps",
    "map_shapes",
    "weights_to_maps",
    "maps_to_weights",
    "apply_per_beam",
    "FluencePenaltyTerm",
    "as_term",
]


def _check_map(name, fluence):
    f = np.asarray(fluence, dtype=float)
    if f.ndim != 2 or f.size == 0:
        raise ValueError(f"{name} must be a non-empty 2D fluence map (rows across leaves, columns along travel), got shape {f.shape}")
    check_finite(name, f)
    return f


def split_maps(x, shapes) -> list[np.ndarray]:
    """Split a flat weight vector into per-beam maps of the given shapes (views)."""
    x = np.asarray(x, dtype=float)
    sizes = [int(np.prod(s)) for s in shapes]
    if x.ndim != 1 or x.size != sum(sizes):
        raise ValueError(f"x has {x.size} entries but shapes {list(shapes)} need {sum(sizes)}")
    out, start = [], 0
    for s, n in zip(shapes, sizes):
        out.append(x[start:start + n].reshape(s))
        start += n
    return out


def convolve_along_leaves(fluence, coefficients=(0.25, 0.5, 0.25), axis: int = 1) -> np.ndarray:
    """Linear smoothing along the leaf-travel direction (paper 003, "outside" strategy).

    ``x'_k = sum_lambda c_lambda x_{k + lambda}`` with the coefficients centred on ``k``;
    edges are extended by the nearest value (zero-flux), so a flat map is unchanged and the sum
    of the map is preserved when the coefficients sum to one.

    Parameters
    ----------
    fluence : ndarray (n_rows, n_cols)
    coefficients : sequence of float
        Odd-length convolution coefficients ``c_{-L} .. c_{R}``.
    axis : int
        1 (default) convolves along the leaf travel, 0 across the leaves.
    """
    f = _check_map("fluence", fluence)
    c = np.asarray(coefficients, dtype=float)
    if c.ndim != 1 or c.size % 2 == 0:
        raise ValueError(f"coefficients must be a 1D sequence of odd length, got {c.shape}")
    return ndimage.correlate1d(f, c, axis=axis, mode="nearest")


class _FluencePenalty:
    """Base: a penalty on per-beam maps, evaluated on the flat weight vector."""

    def __init__(self, shapes, weight: float = 1.0):
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        for s in self.shapes:
            if len(s) != 2:
                raise ValueError(f"each shape must be (n_rows, n_cols), got {s}")
        (self.weight,) = check_positive("weight", weight, allow_zero=True)

    def value(self, x) -> float:
        return self.weight * sum(self._value(m) for m in split_maps(x, self.shapes))

    def gradient(self, x) -> np.ndarray:
        return self.weight * np.concatenate([self._grad(m).ravel() for m in split_maps(x, self.shapes)])


class CurvaturePenalty(_FluencePenalty):
    """Sum of squared curvatures along the leaf travel (paper 003, eq. 1).

    For each interior bixel ``c_k = (2 x_k - x_{k-1} - x_{k+1}) / (1 + (x_{k-1} - x_{k+1})^2 / 4)^2``
    (eq. 1); the penalty is ``sum c_k^2`` (eq. 1 gives a signed curvature, so it is squared to
    make a penalty).
    """

    def _parts(self, m):
        a, b, c = m[:, :-2], m[:, 1:-1], m[:, 2:]
        num = 2 * b - a - c
        delta = a - c
        s = 1 + 0.25 * delta**2
        return num, delta, s, num / s**2

    def _value(self, m):
        if m.shape[1] < 3:
            return 0.0
        return float(np.sum(self._parts(m)[3] ** 2))

    def _grad(self, m):
        g = np.zeros_like(m)
        if m.shape[1] < 3:
            return g
        num, delta, s, curv = self._parts(m)
        dc_db = 2 / s**2
        # d/da of num/s^2 = -1/s^2 - num * 2 s^-3 * (0.5 delta)
        dc_da = -1 / s**2 - num * delta / s**3
        dc_dc = -1 / s**2 + num * delta / s**3
        two_c = 2 * curv
        g[:, 1:-1] += two_c * dc_db
        g[:, :-2] += two_c * dc_da
        g[:, 2:] += two_c * dc_dc
        return g


class L1Penalty(_FluencePenalty):
    """Sum of absolute neighbour differences across and along the leaves (paper 003, eq. 2).

    ``|d|`` is replaced by ``sqrt(d^2 + eps^2) - eps`` so the gradient exists everywhere;
    ``eps`` (fluence units) sets how sharp the corner is.
    """

    def __init__(self, shapes, weight: float = 1.0, eps: float = 1e-3):
        super().__init__(shapes, weight)
        (self.eps,) = check_positive("eps", eps)

    def _value(self, m):
        e = self.eps
        d0, d1 = np.diff(m, axis=0), np.diff(m, axis=1)
        return float(np.sum(np.sqrt(d0**2 + e**2) - e) + np.sum(np.sqrt(d1**2 + e**2) - e))

    def _grad(self, m):
        e = self.eps
        g = np.zeros_like(m)
        d0, d1 = np.diff(m, axis=0), np.diff(m, axis=1)
        s0, s1 = d0 / np.sqrt(d0**2 + e**2), d1 / np.sqrt(d1**2 + e**2)
        g[1:, :] += s0
        g[:-1, :] -= s0
        g[:, 1:] += s1
        g[:, :-1] -= s1
        return g


class L2Penalty(_FluencePenalty):
    """Squared neighbour differences including the diagonals with weight 1/2 (paper 003, eq. 3)."""

    _offsets = (((1, 0), 1.0), ((0, 1), 1.0), ((1, 1), 0.5), ((1, -1), 0.5))

    @staticmethod
    def _slices(shape, dj, dk):
        """Slices of the two members of every pair ``(x[j, k], x[j + dj, k + dk])``."""
        n, c = shape
        if dk >= 0:
            return (slice(0, n - dj), slice(0, c - dk)), (slice(dj, n), slice(dk, c))
        return (slice(0, n - dj), slice(-dk, c)), (slice(dj, n), slice(0, c + dk))

    def _value(self, m):
        v = 0.0
        for (dj, dk), w in self._offsets:
            sa, sb = self._slices(m.shape, dj, dk)
            v += w * float(np.sum((m[sa] - m[sb]) ** 2))
        return v

    def _grad(self, m):
        g = np.zeros_like(m)
        for (dj, dk), w in self._offsets:
            sa, sb = self._slices(m.shape, dj, dk)
            d = 2 * w * (m[sa] - m[sb])
            g[sa] += d
            g[sb] -= d
        return g


class ExplicitSmoothingPenalty:
    """``sum w (x - x')^2`` toward a smoothed copy ``x'`` (paper 003, explicit strategy).

    Parameters
    ----------
    target : ndarray
        The smoothed weights ``x'`` (flat vector).
    weights : float or ndarray
        ``w`` per weight (scalar broadcasts).
    """

    def __init__(self, target, weights=1.0):
        self.target = np.asarray(target, dtype=float).ravel()
        check_finite("target", self.target)
        self.w = np.broadcast_to(np.asarray(weights, dtype=float), self.target.shape)
        if np.any(self.w < 0):
            raise ValueError("weights must be non-negative")

    def value(self, x) -> float:
        d = np.asarray(x, float) - self.target
        return float(np.sum(self.w * d * d))

    def gradient(self, x) -> np.ndarray:
        return 2 * self.w * (np.asarray(x, float) - self.target)


def nlm_prior(fluence, patch: int = 1, search: int = 3, h: float | None = None) -> np.ndarray:
    """Non-local-means estimate of a fluence map (paper 003: ``w(x,y) = exp(-|V(x)-V(y)|^2/h^2)/Z``).

    ``V(x)`` is the ``(2 patch + 1)^2`` neighbourhood of bixel ``x`` (edges reflected), ``y``
    runs over a ``(2 search + 1)^2`` window and ``|V(x) - V(y)|^2`` is the sum of squared
    differences over the patch. ``h`` defaults to ``sqrt(2) (2 patch + 1) sigma`` with the noise
    level ``sigma`` estimated robustly from the median absolute neighbour difference (so two
    patches differing only by noise get weights around ``exp(-1)``), fluence units.
    """
    f = _check_map("fluence", fluence)
    n, m = f.shape
    if h is None:
        d = np.diff(f, axis=1).ravel()
        sigma = float(np.median(np.abs(d - np.median(d)))) / 0.6745 / np.sqrt(2) if d.size else 0.0
        if sigma <= 0:
            sigma = 1e-3 * (float(np.abs(f).max()) or 1.0)
        h = np.sqrt(2) * (2 * patch + 1) * sigma
    (h,) = check_positive("h", h)
    pad = patch + search
    fp = np.pad(f, pad, mode="reflect" if min(n, m) > pad else "edge")
    k = 2 * patch + 1
    num = np.zeros_like(f)
    den = np.zeros_like(f)

    def patch_at(di, dj):
        # mean squared difference of patches, via box filtering of the squared difference image
        shifted = fp[pad + di - patch: pad + di + n + patch, pad + dj - patch: pad + dj + m + patch]
        centre = fp[pad - patch: pad + n + patch, pad - patch: pad + m + patch]
        d2 = ndimage.uniform_filter((shifted - centre) ** 2, size=k, mode="nearest")
        return d2[patch: patch + n, patch: patch + m], shifted[patch: patch + n, patch: patch + m]

    for di in range(-search, search + 1):
        for dj in range(-search, search + 1):
            d2, val = patch_at(di, dj)
            w = np.exp(-d2 * (k * k) / h**2)  # d2 is the patch mean; the paper uses the sum
            num += w * val
            den += w
    return num / den


def anisotropic_diffusion(fluence, n_iter: int = 50, dt: float = 0.1, beta: float = 0.1,
                          leaf_weight: float = 1.0, across_weight: float = 0.25, sigma: float = 1.0,
                          kappa: float | None = None, prior=None) -> np.ndarray:
    """Anisotropic TV diffusion steered along the leaf direction (paper 003, eqs 5-7).

    Integrates ``du/dt = div(g(|D(G_sigma * u)|) A Du / |Du|_kappa) - beta (u - u0)`` with
    explicit Euler steps, where ``|Du|_kappa = sqrt(|Du|^2 + kappa^2) / kappa`` regularises the
    total-variation flux (eq. 5's ``Du/|Du|``) so that the explicit scheme stays stable for
    ``dt <= 0.25``; where ``A = diag(across_weight, leaf_weight)`` favours smoothing along the leaf
    travel (columns), ``g(s) = 1 / (1 + (s/kappa)^2)`` is the edge-stopping function of the
    Gaussian-smoothed map (eq. 6, ``v = D(G_sigma * u)``), and ``u0`` is the prior: the
    non-local-means estimate (:func:`nlm_prior`) by default, else the given array. The result is
    clipped at zero (fluence is non-negative). Boundaries are zero-flux.

    Parameters
    ----------
    fluence : ndarray (n_rows, n_cols)
    n_iter, dt : int, float
        Number and size of the time steps (dt <= 0.25 keeps the scheme stable).
    beta : float
        Fidelity to the prior.
    leaf_weight, across_weight : float
        Diffusion strength along the leaf travel and across the leaves.
    sigma : float
        Pre-smoothing of the edge detector (bixels).
    kappa : float, optional
        Edge scale (fluence units per bixel); default: the 90th percentile of |Du|.
    prior : ndarray or {'nlm', 'input'}, optional
    """
    u = _check_map("fluence", fluence).copy()
    if not 0 < dt <= 0.25:
        raise ValueError(f"dt must be in (0, 0.25] for a stable explicit scheme, got {dt}")
    if prior is None or (isinstance(prior, str) and prior == "nlm"):
        u0 = nlm_prior(u)
    elif isinstance(prior, str) and prior == "input":
        u0 = u.copy()
    else:
        u0 = _check_map("prior", prior)
        if u0.shape != u.shape:
            raise ValueError(f"prior has shape {u0.shape}, expected {u.shape}")
    gy0, gx0 = np.gradient(ndimage.gaussian_filter(u, sigma))
    if kappa is None:
        kappa = float(np.percentile(np.hypot(gx0, gy0), 90)) or 1.0
    for _ in range(int(n_iter)):
        v = ndimage.gaussian_filter(u, sigma)
        vy, vx = np.gradient(v)
        g = 1.0 / (1.0 + (np.hypot(vx, vy) / kappa) ** 2)
        # forward differences with zero flux at the borders
        ux = np.diff(u, axis=1, append=u[:, -1:])
        uy = np.diff(u, axis=0, append=u[-1:, :])
        mag = np.sqrt(ux**2 + uy**2 + kappa**2) / kappa
        fx = leaf_weight * g * ux / mag
        fy = across_weight * g * uy / mag
        div = np.diff(fx, axis=1, prepend=0.0) + np.diff(fy, axis=0, prepend=0.0)
        u = u + dt * (div - beta * (u - u0))
        np.maximum(u, 0.0, out=u)
    return u


def smoothness_eta(fluence, dx: float = 1.0) -> float:
    """Smoothness ``eta = sum (Delta p_x)^+ / integral p_x dx`` (paper 003).

    ``p_x`` is the projection of the map onto the leaf-travel axis (sum over rows);
    ``(Delta p_x)^+`` its positive increments including the rise from zero at the left edge;
    the integral is ``sum p_x * dx``. A single flat peak gives the smallest value.
    """
    f = _check_map("fluence", fluence)
    p = f.sum(axis=0)
    total = float(p.sum()) * dx
    if total <= 0:
        raise ValueError("fluence is zero everywhere; eta is undefined")
    return float(np.maximum(np.diff(p, prepend=0.0), 0).sum() / total)


def _cv(p):
    idx = np.arange(p.size)
    s = p.sum()
    if s <= 0:
        return 0.0
    mean = (idx * p).sum() / s
    var = (((idx - mean) ** 2) * p).sum() / s
    return float(np.sqrt(var) / max(p.size, 1))


def tongue_groove_theta(fluence) -> float:
    """Tongue-and-groove parameter ``theta = |sigma_xy - sigma_yx| * sum sum X`` (paper 003).

    ``sigma_xy`` and ``sigma_yx`` are the spreads (standard deviation over the axis length) of
    the projections onto the leaf-travel axis and onto the across-leaf axis, each treated as a
    distribution; ``sum sum X`` is the total fluence.
    """
    f = _check_map("fluence", fluence)
    total = float(f.sum())
    if total <= 0:
        raise ValueError("fluence is zero everywhere; theta is undefined")
    return abs(_cv(f.sum(axis=0)) - _cv(f.sum(axis=1))) * total


# --------------------------------------------------------------------------------------------
# Bridge to the optimiser: beamlet weights of an influence matrix <-> full per-beam maps
# --------------------------------------------------------------------------------------------
class _Grids(tuple):
    """The per-beam bixel grids of an influence matrix (small; stands in for it in terms)."""


def _grids_of(im) -> _Grids:
    """The per-beam :class:`rtlab.core.beams.BixelGrid` of an influence matrix (or of a :class:`_Grids`)."""
    if isinstance(im, _Grids):
        return im
    beams = getattr(im, "beams", None)
    if beams is None or not len(beams) or not hasattr(beams[0], "bixels"):
        raise TypeError("im must be an rtlab.dose influence matrix (with .beams carrying .bixels), "
                        f"got {type(im).__name__}")
    return _Grids(b.bixels for b in beams)


def map_shapes(im) -> list[tuple[int, int]]:
    """Per-beam fluence-map shapes ``(n_rows, n_cols)`` of an influence matrix's bixel grids."""
    return [tuple(g.shape) for g in _grids_of(im)]


def weights_to_maps(im, x) -> np.ndarray:
    """Scatter beamlet weights ``(n_beamlets,)`` into the concatenated, flattened full maps.

    Bixels outside each beam's mask get 0. The result is the flat layout that the penalties
    (``shapes = map_shapes(im)``) take.
    """
    grids = _grids_of(im)
    n = sum(g.n for g in grids)
    x = np.asarray(x, float).ravel()
    if x.size != n:
        raise ValueError(f"x has {x.size} entries, the influence matrix has {n} beamlets")
    out, i = [], 0
    for g in grids:
        out.append(g.to_map(x[i: i + g.n]).ravel())
        i += g.n
    return np.concatenate(out)


def maps_to_weights(im, flat) -> np.ndarray:
    """Gather concatenated full maps (the layout of :func:`weights_to_maps`) into beamlet weights."""
    grids = _grids_of(im)
    maps = split_maps(flat, [g.shape for g in grids])
    return np.concatenate([g.from_map(m) for g, m in zip(grids, maps)])


def apply_per_beam(im, fn, x) -> np.ndarray:
    """Apply ``fn(map) -> map`` to each beam's full fluence map and return beamlet weights.

    E.g. ``apply_per_beam(im, convolve_along_leaves, x)`` smooths a plan outside the objective.
    """
    if not callable(fn):
        raise TypeError("fn must be callable, taking and returning one 2D fluence map")
    maps = split_maps(weights_to_maps(im, x), map_shapes(im))
    return maps_to_weights(im, np.concatenate([np.asarray(fn(m), float).ravel() for m in maps]))


class FluencePenaltyTerm(Term):
    """A fluence-map penalty as an optimiser term on the beamlet weights (``space='beamlet'``).

    ``value(x) = penalty.value(M x)`` and ``gradient(x) = M^T penalty.gradient(M x)``, where
    ``M`` scatters the beamlet weights into the full per-beam maps (0 outside each mask).

    Parameters
    ----------
    penalty : object
        Has ``value(flat)`` and ``gradient(flat)`` on the concatenated maps of
        ``map_shapes(im)`` (e.g. :class:`L2Penalty` (eq. 3), :class:`CurvaturePenalty`
        (eq. 1), :class:`L1Penalty` (eq. 2), :class:`ExplicitSmoothingPenalty`,
        :class:`rtlab.methods.sequencing.TNMUPenalty` (eq. 8)).
    im : InfluenceMatrix
        Gives the bixel masks.
    weight : float
        Importance weight of the term (multiplies the penalty's own weight).
    name : str, optional
    """

    space = "beamlet"

    def __init__(self, penalty, im, weight: float = 1.0, name: str | None = None):
        if not (hasattr(penalty, "value") and hasattr(penalty, "gradient")):
            raise TypeError("penalty must have value(x) and gradient(x) (e.g. smoothing.L2Penalty)")
        shapes = getattr(penalty, "shapes", None)
        if shapes is not None and [tuple(s) for s in shapes] != map_shapes(im):
            raise ValueError(f"penalty.shapes {list(shapes)} do not match the influence matrix's map "
                             f"shapes {map_shapes(im)}; build it with shapes=smoothing.map_shapes(im)")
        super().__init__(None, weight, name or type(penalty).__name__)
        self.penalty = penalty
        # keep only the bixel grids: copying an objective must not copy the influence matrix
        self.im = _grids_of(im)

    def _eval_sub(self, x):
        flat = weights_to_maps(self.im, x)
        return float(self.penalty.value(flat)), maps_to_weights(self.im, self.penalty.gradient(flat))


def as_term(penalty, im, weight: float = 1.0, name: str | None = None):
    """Wrap a fluence-map penalty as an :class:`rtlab.optimize.Term` on beamlet weights.

    Examples
    --------
    >>> term = as_term(L2Penalty(map_shapes(im)), im, weight=1e-3, name="L2 (eq. 3)")  # doctest: +SKIP
    >>> objective = Objective(list(objective.terms) + [term])  # doctest: +SKIP
    """
    return FluencePenaltyTerm(penalty, im, weight, name)

