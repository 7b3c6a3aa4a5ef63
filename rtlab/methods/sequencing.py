"""Leaf sequencing of fluence maps into MLC deliveries, with monitor units (paper 003, sec. 3).

A fluence map of one beam is an array ``(n_rows, n_cols)`` in MU: rows run across the leaves
(one row per leaf pair after :func:`fluence_to_leaf_rows`), columns along the leaf travel
(x), with bixel width ``dx`` mm. Leaves travel from -x to +x (unidirectional).

Leaf trajectories (paper 003, "Leaf sequencing while minimizing total number of monitor units")
-----------------------------------------------------------------------------------------------
For a row with fluence ``f_0 .. f_{n-1}`` the *leading* leaf (the right-hand leaf, which opens)
passes bixel ``k`` at cumulative MU ``I_L(k)`` and the *trailing* leaf (left-hand, which closes)
covers it at ``I_T(k)``; bixel ``k`` is exposed for ``I_T(k) - I_L(k) = f_k`` MU. With
``Delta_k = f_k - f_{k-1}`` (``f_{-1} = 0``) and ``h`` the MU that pass while a leaf at full speed
crosses one bixel (``h = dx * dose_rate / v_max``; 0 for step-and-shoot), the sliding-window
rule of Spirou & Chui (1994) moves the leading leaf at full speed where the fluence rises and
the trailing leaf at full speed where it falls::

    Delta_k >= 0:  I_L(k) = I_L(k-1) + h,  I_T(k) = I_L(k) + f_k
    Delta_k <  0:  I_T(k) = I_T(k-1) + h,  I_L(k) = I_T(k) - f_k

The row's MU is ``I_T(n-1)``; with ``h = 0`` it equals the sum of positive increments
``sum_k max(f_k - f_{k-1}, 0)``, the lower bound for any unidirectional delivery of the row.
The field's MU is ``MU_i = max_j I_T(j, n)`` (paper 003) and ``TNMU = sum_i MU_i`` over beams.

Constraints
-----------
* **No collision** of opposing leaves holds by construction (``I_T >= I_L``); a closed pair sits
  at the minimum gap centred on where the leaves meet.
* **No interdigitation** (optional, from the MLC model): the trailing leaf of pair ``j`` must
  never pass the leading leaf of a neighbour ``j'``: ``I_T^j(k) >= I_L^{j'}(k)`` for all ``k``.
* **Tongue-and-groove synchronisation** (optional): neighbouring bixels are exposed over
  nested MU intervals, so the tongue-and-groove region under-dose vanishes.
Violations are removed by delaying a row from column ``k`` on (adding the same MU to both of
its trajectories, which keeps its fluence), column by column from left to right, as in the
trajectory-modification algorithms of Kamath et al. (2003, 2004).

Step-and-shoot
--------------
``method='sweep'`` quantises the map into levels of ``step_mu`` and cuts the (h = 0)
trajectories at every level: at level ``u`` row ``j`` is open over ``{k : I_L(k) < u <= I_T(k)}``,
always one interval. Consecutive levels with identical apertures merge into one segment. The MU
equals the lower bound above; constraints are honoured as for the sliding window.
``method='xia_verhey'`` is the reducing-levels decomposition of Xia & Verhey (1998): fewer
segments, more MU, no interdigitation control (it raises if the MLC forbids interdigitation and a
segment would need it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._util import check_finite, check_positive
from ..core.mlc import MLC, get_mlc
from .smoothing import split_maps

__all__ = [
    "Segment",
    "Sequence",
    "row_mu_lower_bound",
    "field_mu_lower_bound",
    "trajectories",
    "enforce_constraints",
    "sliding_window",
    "step_and_shoot",
    "fluence_to_leaf_rows",
    "leaf_rows_to_fluence",
    "check_segments",
    "tnmu",
    "TNMUPenalty",
]


def _check_map(name: str, fluence) -> np.ndarray:
    f = np.asarray(fluence, dtype=float)
    if f.ndim != 2 or f.size == 0:
        raise ValueError(f"{name} must be a non-empty 2D map (rows across leaves, columns along travel), got shape {f.shape}")
    check_finite(name, f)
    if np.any(f < 0):
        raise ValueError(f"{name} has negative entries (min {f.min():.3g}); fluence must be non-negative")
    return f


def row_mu_lower_bound(fluence) -> np.ndarray:
    """Per-row MU lower bound: the sum of positive increments along the leaf travel.

    ``sum_k max(f_k - f_{k-1}, 0)`` with ``f_{-1} = 0`` (paper 003, eq. 8 summand).
    """
    f = _check_map("fluence", fluence)
    d = np.diff(f, axis=1, prepend=0.0)
    return np.maximum(d, 0).sum(axis=1)


def field_mu_lower_bound(fluence) -> float:
    """MU lower bound of a field: ``max_j`` of :func:`row_mu_lower_bound` (paper 003)."""
    return float(row_mu_lower_bound(fluence).max())


def tnmu(fluences) -> float:
    """Total MU lower bound of several fields, ``sum_i max_j sum_k (x_ijk - x_ij(k-1))^+``
    (paper 003, eq. 8)."""
    return float(sum(field_mu_lower_bound(f) for f in fluences))


def trajectories(fluence, h: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Leading and trailing leaf trajectories ``(I_L, I_T)`` in MU (Spirou & Chui rule).

    Parameters
    ----------
    fluence : ndarray (n_rows, n_cols)
        Fluence in MU.
    h : float
        MU delivered while a leaf at maximum speed crosses one bixel (0: infinitely fast).

    Returns
    -------
    I_L, I_T : ndarray (n_rows, n_cols)
        MU at which the leading leaf uncovers / the trailing leaf covers each bixel.
    """
    f = _check_map("fluence", fluence)
    (h,) = check_positive("h", h, allow_zero=True)
    n_rows, n_cols = f.shape
    IL = np.zeros_like(f)
    IT = np.zeros_like(f)
    IL[:, 0] = 0.0
    IT[:, 0] = f[:, 0]
    for k in range(1, n_cols):
        rise = f[:, k] >= f[:, k - 1]
        IL[:, k] = np.where(rise, IL[:, k - 1] + h, IT[:, k - 1] + h - f[:, k])
        IT[:, k] = np.where(rise, IL[:, k] + f[:, k], IT[:, k - 1] + h)
    return IL, IT


def _delay(IL, IT, j, k, delta):
    IL[j, k:] += delta
    IT[j, k:] += delta


def enforce_constraints(IL, IT, interdigitation: bool = True, tongue_and_groove: bool = False,
                        tol: float = 1e-9, max_passes: int | None = None):
    """Delay rows so the trajectories honour no-interdigitation and/or tongue-and-groove sync.

    Works column by column from left to right; a delay added at column ``k`` shifts both leaves
    of the row for all columns ``>= k`` by the same MU, so every row keeps its fluence.

    Returns
    -------
    IL, IT : ndarray
        New arrays (the inputs are not modified).
    """
    IL = np.array(IL, dtype=float)
    IT = np.array(IT, dtype=float)
    n_rows, n_cols = IL.shape
    if interdigitation and not tongue_and_groove:
        return IL, IT
    max_passes = max_passes or 4 * n_rows * n_rows + 10
    for k in range(n_cols):
        for _ in range(max_passes):
            changed = False
            for j in range(n_rows):
                for jn in (j - 1, j + 1):
                    if jn < 0 or jn >= n_rows:
                        continue
                    if tongue_and_groove:
                        fj = IT[j, k] - IL[j, k]
                        fn = IT[jn, k] - IL[jn, k]
                        if fj <= fn + tol:  # row j's interval must nest inside row jn's
                            if IL[j, k] < IL[jn, k] - tol:
                                _delay(IL, IT, j, k, IL[jn, k] - IL[j, k])
                                changed = True
                            if IT[j, k] > IT[jn, k] + tol:
                                _delay(IL, IT, jn, k, IT[j, k] - IT[jn, k])
                                changed = True
                    if not interdigitation and IT[j, k] < IL[jn, k] - tol:
                        _delay(IL, IT, j, k, IL[jn, k] - IT[j, k])
                        changed = True
            if not changed:
                break
        else:
            raise RuntimeError(f"leaf-constraint adjustment did not converge at column {k}")
    return IL, IT


@dataclass
class Segment:
    """One static MLC aperture with its monitor units.

    ``left``/``right`` are the leaf-tip positions (mm, along travel, isocentre plane) per leaf
    row; a row with ``right - left`` equal to the minimum gap and no open bixel is closed.
    ``open`` is the ``(n_rows, n_cols)`` boolean aperture on the bixel grid.
    """

    mu: float
    left: np.ndarray
    right: np.ndarray
    open: np.ndarray


@dataclass
class Sequence:
    """The result of sequencing one field.

    Attributes
    ----------
    method : str
        ``'sliding'``, ``'sweep'`` or ``'xia_verhey'``.
    mlc : MLC
    mu : float
        Monitor units of the field.
    mu_lower_bound : float
        ``max_j sum_k (f_k - f_{k-1})^+`` of the (quantised) map.
    delivered : ndarray (n_rows, n_cols)
        Fluence (MU) the sequence delivers, on the bixel grid of the input.
    segments : list of Segment
        Step-and-shoot apertures (empty for the sliding window).
    lead, trail : ndarray (n_rows, n_cols)
        Trajectories ``I_L``, ``I_T`` in MU (sliding window and sweep).
    x_edges : ndarray (n_cols + 1,)
        Bixel edges along the travel (mm).
    """

    method: str
    mlc: MLC
    mu: float
    mu_lower_bound: float
    delivered: np.ndarray
    x_edges: np.ndarray
    segments: list = field(default_factory=list)
    lead: np.ndarray | None = None
    trail: np.ndarray | None = None
    dose_rate_mu_min: float = 600.0

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def beam_on_s(self) -> float:
        """Beam-on time in s at the nominal dose rate."""
        return 60.0 * self.mu / self.dose_rate_mu_min

    def leaf_positions(self, mu) -> tuple[np.ndarray, np.ndarray]:
        """Leaf-tip positions ``(left, right)`` in mm per row at cumulative ``mu`` (sliding window).

        The leading leaf reaches edge ``k + 1`` at ``I_L(k)`` and the trailing leaf at ``I_T(k)``;
        positions are interpolated linearly in MU between those control points.
        """
        if self.lead is None:
            raise ValueError("leaf_positions needs trajectories (method 'sliding' or 'sweep')")
        e = self.x_edges
        right = np.array([np.interp(mu, np.r_[0.0, r], e) for r in self.lead])
        left = np.array([np.interp(mu, np.r_[0.0, r], e) for r in self.trail])
        return left, right


def _check_grid(f: np.ndarray, mlc: MLC, dx: float, x0: float | None) -> np.ndarray:
    n_rows, n_cols = f.shape
    if n_rows > mlc.n_pairs:
        raise ValueError(
            f"fluence has {n_rows} leaf rows but MLC {mlc.name!r} has only {mlc.n_pairs} pairs; "
            "resample with fluence_to_leaf_rows or use a larger MLC"
        )
    if n_cols * dx > mlc.max_field_mm + 1e-9:
        raise ValueError(
            f"fluence spans {n_cols * dx:g} mm along the leaf travel, more than MLC {mlc.name!r}'s "
            f"maximum field of {mlc.max_field_mm:g} mm"
        )
    if dx < mlc.min_gap_mm:
        raise ValueError(f"bixel width dx={dx:g} mm is below the MLC's minimum gap {mlc.min_gap_mm:g} mm")
    x0 = -n_cols * dx / 2 if x0 is None else float(x0)
    return x0 + dx * np.arange(n_cols + 1)


def sliding_window(fluence, mlc="generic_5mm_60", dx: float = 5.0, x0: float | None = None,
                   dose_rate_mu_min: float = 600.0, finite_speed: bool = True,
                   tongue_and_groove: bool = False) -> Sequence:
    """Unidirectional sliding-window (dynamic MLC) sequence of one field.

    Parameters
    ----------
    fluence : ndarray (n_rows, n_cols)
        Fluence in MU, one row per leaf pair.
    mlc : str or MLC
    dx : float
        Bixel width along the travel (mm).
    x0 : float, optional
        Position of the first bixel edge (mm); default centres the map.
    dose_rate_mu_min : float
        Dose rate (MU/min) used with the MLC's leaf speed to set ``h``.
    finite_speed : bool
        If False, leaves are infinitely fast (``h = 0``) and the MU equals the lower bound.
    tongue_and_groove : bool
        Synchronise neighbouring rows.

    Returns
    -------
    Sequence
        ``mu = max_j I_T(j, n)`` (paper 003); ``delivered`` equals the input exactly.
    """
    mlc = get_mlc(mlc)
    f = _check_map("fluence", fluence)
    (dx,) = check_positive("dx", dx)
    edges = _check_grid(f, mlc, dx, x0)
    (rate,) = check_positive("dose_rate_mu_min", dose_rate_mu_min)
    h = dx / mlc.leaf_speed_mm_s * rate / 60.0 if finite_speed else 0.0
    IL, IT = trajectories(f, h)
    IL, IT = enforce_constraints(IL, IT, mlc.interdigitation, tongue_and_groove)
    mu = float(IT[:, -1].max())
    return Sequence("sliding", mlc, mu, field_mu_lower_bound(f), IT - IL, edges,
                    lead=IL, trail=IT, dose_rate_mu_min=rate)


def _segments_from_trajectories(IL, IT, edges, mlc, step):
    """Cut integer trajectories at every level; merge identical consecutive apertures."""
    mu_total = int(round(IT.max()))
    segs = []
    prev = None
    n_rows = IL.shape[0]
    for u in range(1, mu_total + 1):
        a = (IL < u - 0.5).sum(axis=1)  # bixels the leading leaf has passed
        b = (IT < u - 0.5).sum(axis=1)  # bixels the trailing leaf has covered
        key = (tuple(a), tuple(b))
        if key == prev:
            segs[-1][0] += 1
            continue
        prev = key
        segs.append([1, a.copy(), b.copy()])
    out = []
    n_cols = IL.shape[1]
    cols = np.arange(n_cols)
    for count, a, b in segs:
        is_open = (cols[None, :] >= b[:, None]) & (cols[None, :] < a[:, None])
        left = edges[b].astype(float)
        right = edges[a].astype(float)
        closed = a == b
        left[closed] -= mlc.min_gap_mm / 2
        right[closed] += mlc.min_gap_mm / 2
        if not is_open.any():
            continue
        out.append(Segment(count * step, left, right, is_open))
    return out


def _xia_verhey(F, edges, mlc, step):
    R = F.astype(np.int64).copy()
    n_rows, n_cols = R.shape
    out = []
    while R.max() > 0:
        d = 1 << int(np.floor(np.log2(R.max())))
        runs = []
        for j in range(n_rows):
            m = np.r_[False, R[j] >= d, False]
            starts = np.flatnonzero(~m[:-1] & m[1:])
            ends = np.flatnonzero(m[:-1] & ~m[1:])
            runs.append(list(zip(starts, ends)))
        n_seg = max(len(r) for r in runs)
        for s in range(n_seg):
            is_open = np.zeros_like(R, dtype=bool)
            left = np.empty(n_rows)
            right = np.empty(n_rows)
            for j in range(n_rows):
                if s < len(runs[j]):
                    a, b = runs[j][s]
                    is_open[j, a:b] = True
                    left[j], right[j] = edges[a], edges[b]
                else:
                    left[j] = right[j] = np.nan
            R -= d * is_open
            _park_closed(left, right, mlc)
            out.append(Segment(d * step, left, right, is_open))
    return out


def _park_closed(left, right, mlc):
    """Place closed pairs (NaN) at the minimum gap next to an open neighbour, or at the field
    centre; with no-interdigitation a neighbour-compatible position is chosen when one exists."""
    n = len(left)
    opened = ~np.isnan(left)
    centre = np.nanmean(np.r_[left[opened], right[opened]]) if opened.any() else 0.0
    g = mlc.min_gap_mm / 2
    for j in np.flatnonzero(~opened):
        lo, hi = -np.inf, np.inf
        for jn in (j - 1, j + 1):
            if 0 <= jn < n and opened[jn]:
                lo, hi = max(lo, left[jn] + g), min(hi, right[jn] - g)
        p = centre if not np.isfinite(lo) and not np.isfinite(hi) else (
            np.clip(centre, lo, hi) if lo <= hi else (lo + hi) / 2)
        left[j], right[j] = p - g, p + g


def step_and_shoot(fluence, mlc="generic_5mm_60", dx: float = 5.0, x0: float | None = None,
                   step_mu: float | None = None, n_levels: int | None = 10, method: str = "sweep",
                   tongue_and_groove: bool = False) -> Sequence:
    """Step-and-shoot decomposition of one field into MLC segments.

    Parameters
    ----------
    fluence : ndarray (n_rows, n_cols)
        Fluence in MU, one row per leaf pair.
    mlc : str or MLC
    dx, x0 : float
        Bixel width and first edge (mm).
    step_mu : float, optional
        Intensity level spacing (MU). Default: ``max / n_levels``.
    n_levels : int
        Number of intensity levels when ``step_mu`` is not given.
    method : {'sweep', 'xia_verhey'}
        MU-optimal sweep (honours all constraints) or reducing levels (fewer segments).
    tongue_and_groove : bool
        Synchronise neighbouring rows ('sweep' only).

    Returns
    -------
    Sequence
        ``delivered`` equals the map quantised to multiples of ``step_mu``, exactly.
    """
    mlc = get_mlc(mlc)
    f = _check_map("fluence", fluence)
    (dx,) = check_positive("dx", dx)
    edges = _check_grid(f, mlc, dx, x0)
    if method not in ("sweep", "xia_verhey"):
        raise ValueError(f"method must be 'sweep' or 'xia_verhey', got {method!r}")
    fmax = float(f.max())
    if fmax == 0:
        raise ValueError("fluence is zero everywhere; there is nothing to sequence")
    if step_mu is None:
        if n_levels is None or int(n_levels) < 1:
            raise ValueError(f"n_levels must be a positive integer, got {n_levels!r}")
        step_mu = fmax / int(n_levels)
    (step,) = check_positive("step_mu", step_mu)
    F = np.rint(f / step)
    if method == "sweep":
        IL, IT = trajectories(F, 0.0)
        IL, IT = enforce_constraints(IL, IT, mlc.interdigitation, tongue_and_groove)
        IL, IT = np.rint(IL), np.rint(IT)
        segs = _segments_from_trajectories(IL, IT, edges, mlc, step)
        lead, trail = IL * step, IT * step
    else:
        if tongue_and_groove:
            raise ValueError("tongue_and_groove synchronisation needs method='sweep'")
        segs = _xia_verhey(F, edges, mlc, step)
        lead = trail = None
    delivered = np.zeros_like(f)
    for s in segs:
        delivered += s.mu * s.open
    mu = float(sum(s.mu for s in segs))
    seq = Sequence(method, mlc, mu, field_mu_lower_bound(F) * step, delivered, edges, segs, lead, trail)
    if method == "xia_verhey" and not mlc.interdigitation:
        problems = check_segments(seq)
        if problems:
            raise ValueError(
                f"xia_verhey produced a segment that interdigitates, which MLC {mlc.name!r} forbids "
                f"({problems[0]}); use method='sweep'"
            )
    return seq


def check_segments(seq: Sequence, tol: float = 1e-9) -> list[str]:
    """Every constraint violation of a step-and-shoot sequence, as readable strings (empty if none).

    Checks: left <= right - min gap (no collision), no interdigitation when the MLC forbids it
    (``left_j <= right_j'`` and ``left_j' <= right_j`` for neighbours), apertures within the field.
    """
    mlc = seq.mlc
    out = []
    for i, s in enumerate(seq.segments):
        gap = s.right - s.left
        bad = np.flatnonzero(gap < mlc.min_gap_mm - tol)
        if bad.size:
            out.append(f"segment {i}: row {bad[0]} gap {gap[bad[0]]:.3g} mm < minimum {mlc.min_gap_mm:g} mm")
        if not mlc.interdigitation:
            inter = (s.left[:-1] > s.right[1:] + tol) | (s.left[1:] > s.right[:-1] + tol)
            if inter.any():
                j = int(np.flatnonzero(inter)[0])
                out.append(f"segment {i}: rows {j} and {j + 1} interdigitate")
        span = seq.x_edges[-1] - seq.x_edges[0]
        if span > mlc.max_field_mm + tol:
            out.append(f"segment {i}: field {span:g} mm exceeds {mlc.max_field_mm:g} mm")
    return out


def fluence_to_leaf_rows(fluence, bixel_y_mm: float, mlc, y0_mm: float | None = None):
    """Resample a fluence map's rows (bixel height ``bixel_y_mm``) onto leaf pairs.

    Each leaf row's value is the area-weighted mean of the bixel rows it covers (leaf rows are
    aligned so the map's centre falls on a leaf boundary or centre as in the MLC's geometry;
    ``y0_mm`` gives the map's first bixel edge, default centred on the isocentre).

    Returns
    -------
    rows : ndarray (n_leaf_rows, n_cols)
        Fluence per used leaf pair.
    leaf_edges : ndarray (n_leaf_rows + 1,)
        y edges (mm) of the used leaf pairs.
    weights : ndarray (n_bixel_rows, n_leaf_rows)
        Overlap fractions; ``leaf_rows_to_fluence`` uses them to map back.
    """
    mlc = get_mlc(mlc)
    f = _check_map("fluence", fluence)
    (by,) = check_positive("bixel_y_mm", bixel_y_mm)
    n = f.shape[0]
    y0 = -n * by / 2 if y0_mm is None else float(y0_mm)
    be = y0 + by * np.arange(n + 1)
    all_edges = mlc.boundaries_mm  # leaf-pair edges, centred on the axis (equal or unequal widths)
    if be[0] < all_edges[0] - 1e-9 or be[-1] > all_edges[-1] + 1e-9:
        raise ValueError(
            f"fluence spans y in [{be[0]:g}, {be[-1]:g}] mm, beyond MLC {mlc.name!r}'s "
            f"{mlc.field_length_mm:g} mm across the leaves"
        )
    first = int(np.searchsorted(all_edges, be[0], side="right") - 1)
    last = int(np.searchsorted(all_edges, be[-1] - 1e-9, side="right"))
    le = all_edges[first:last + 1]
    ov = np.clip(np.minimum(be[1:, None], le[None, 1:]) - np.maximum(be[:-1, None], le[None, :-1]), 0, None)
    rows = (ov.T @ f) / np.diff(le)[:, None]  # area-weighted mean over each leaf's width (uncovered parts count as 0)
    return rows, le, ov / by


def leaf_rows_to_fluence(rows, weights) -> np.ndarray:
    """Map leaf-row fluence back to the bixel rows (each bixel gets the overlap-weighted leaf values)."""
    return np.asarray(weights) @ np.asarray(rows)


def _softplus(z, s):
    # s * log(1 + exp(z / s)), stable
    return s * np.logaddexp(0.0, z / s)


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


class TNMUPenalty:
    """Smooth penalty for the TNMU bound of paper 003, eq. 8.

    ``TNMU(x) = sum_i max_j sum_k max(x_ijk - x_ij(k-1), 0)`` (with ``x_ij0 = 0``) is smoothed
    by replacing ``max(., 0)`` with a softplus of width ``s`` and ``max_j`` with a log-sum-exp of
    temperature ``tau`` (both in MU; they over-estimate the exact value by at most
    ``n_cols * s * log 2`` per row and ``tau * log n_rows`` per field). The penalty is
    ``(max(0, mu_per_unit * TNMU_smooth(x) - tnmu0))^2``; it is zero while the bound holds.

    Parameters
    ----------
    shapes : list of (n_rows, n_cols)
        Per-beam map shapes of the flat weight vector (rows across leaves).
    tnmu0 : float
        The bound in MU.
    mu_per_unit : float or sequence
        MU per unit of beamlet weight (from the dose engine's calibration), per beam or one value.
    s, tau : float
        Smoothing widths in MU.
    """

    def __init__(self, shapes, tnmu0: float, mu_per_unit=1.0, s: float = 0.05, tau: float = 0.5, weight: float = 1.0):
        self.shapes = [tuple(int(v) for v in sh) for sh in shapes]
        (self.tnmu0,) = check_positive("tnmu0", tnmu0)
        mpu = np.broadcast_to(np.asarray(mu_per_unit, float), (len(self.shapes),))
        if np.any(mpu <= 0):
            raise ValueError("mu_per_unit must be positive")
        self.mpu = mpu
        (self.s,) = check_positive("s", s)
        (self.tau,) = check_positive("tau", tau)
        (self.weight,) = check_positive("weight", weight, allow_zero=True)

    def _maps(self, x):
        return split_maps(x, self.shapes)

    def smooth_tnmu(self, x) -> float:
        """The smoothed TNMU (MU)."""
        total = 0.0
        for m, c in zip(self._maps(x), self.mpu):
            r = _softplus(np.diff(c * m, axis=1, prepend=0.0), self.s).sum(axis=1)
            total += self.tau * np.logaddexp.reduce(r / self.tau)
        return float(total)

    def exact_tnmu(self, x) -> float:
        """The exact TNMU of eq. 8 (MU)."""
        return tnmu([c * m for m, c in zip(self._maps(x), self.mpu)])

    def value(self, x) -> float:
        excess = max(0.0, self.smooth_tnmu(x) - self.tnmu0)
        return self.weight * excess**2

    def smooth_tnmu_gradient(self, x) -> np.ndarray:
        """Gradient of :meth:`smooth_tnmu` with respect to the flat weights (MU per unit weight)."""
        out = []
        for m, c in zip(self._maps(x), self.mpu):
            d = np.diff(c * m, axis=1, prepend=0.0)
            r = _softplus(d, self.s).sum(axis=1)
            p = np.exp(r / self.tau - np.logaddexp.reduce(r / self.tau))  # d LSE / d r_j
            dd = p[:, None] * _sigmoid(d / self.s)  # d TNMU / d d_jk
            g = dd.copy()
            g[:, :-1] -= dd[:, 1:]  # d_{k+1} = x_{k+1} - x_k depends on x_k with sign -1
            out.append((c * g).ravel())
        return np.concatenate(out)

    def gradient(self, x) -> np.ndarray:
        excess = self.smooth_tnmu(x) - self.tnmu0
        if excess <= 0:
            return np.zeros(sum(a * b for a, b in self.shapes))
        return 2 * self.weight * excess * self.smooth_tnmu_gradient(x)
