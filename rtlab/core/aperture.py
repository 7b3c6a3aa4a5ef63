"""Fluence of a beam's control points: jaws and MLC leaves moving linearly with the meterset.

A treatment beam is a list of control points ``i = 0 .. n-1`` with a cumulative meterset
``m_i`` (MU), jaw positions ``X1, X2, Y1, Y2`` and, for a multileaf collimator, the tip of
every leaf of bank 1 (``a_p``, the leaf on the -X side) and bank 2 (``b_p``, +X side) for each
leaf pair ``p`` between the edges ``y_p .. y_{p+1}`` (DICOM PS3.3 C.8.8.14, RT Beams module;
IEC 61217 beam-limiting-device coordinates, mm at the isocentre plane). Between two control
points every position moves linearly with the delivered meterset (C.8.8.14.5): a
step-and-shoot segment is two control points with the same positions, a sliding window many
with moving leaves.

Fluence (MU) at a point ``(X, Y)`` of the isocentre plane::

    F(X, Y) = sum_i (m_{i+1} - m_i) * | { t in [0, 1] : L_p(t) < X < R_p(t), Y1_i' < Y < Y2_i' } |

with ``p`` the pair whose edges hold ``Y``, ``L_p(t) = max(a_p(t), X1(t))``,
``R_p(t) = min(b_p(t), X2(t))`` and ``a_p(t) = a_p,i + t (a_p,i+1 - a_p,i)`` (likewise for the
others). :func:`aperture_fluence` returns the mean of ``F`` over each pixel of a grid. Along X
the mean is exact: for one pair and one pixel column ``[x0, x1]`` the open length
``max(0, min(x1, R_p(t)) - max(x0, L_p(t)))`` is piecewise linear in ``t`` with breakpoints
where two of the linear functions ``a_p, X1, b_p, X2, x0, x1`` cross, so the trapezoidal rule
on all those crossings integrates it exactly. Along Y each pixel row takes the overlap length
of its edges with every pair and with the Y jaws (the jaws at the middle of the interval:
exact for jaws that do not move within it, the usual case). Outside the leaf bank (``Y``
beyond the outermost edges) only the jaws collimate. No leaf or jaw transmission and no
tongue-and-groove: the fluence is the geometric aperture, as in rtlab's sequencer
(:mod:`rtlab.methods.sequencing`).

Leaves that move along Y (``MLCY``) are handled by swapping the axes; collimator rotation by
:func:`rotated_fluence`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ControlPoints", "aperture_fluence", "rotated_fluence", "field_bounds"]


@dataclass
class ControlPoints:
    """The collimation of one beam at its control points (mm at the isocentre plane, MU).

    Attributes
    ----------
    meterset : ndarray (n,)
        Cumulative meterset (MU) at each control point, non-decreasing.
    jaws : ndarray (n, 4)
        ``X1, X2, Y1, Y2`` per control point (``-inf``/``inf`` where a beam has no such jaw).
    leaves : ndarray (n, n_pairs, 2) or None
        Bank-1 and bank-2 tip positions ``(a_p, b_p)`` per control point and pair, along the
        leaf travel (X for ``MLCX``; Y for ``MLCY`` with ``leaf_axis='y'``); None without MLC.
    boundaries : ndarray (n_pairs + 1,) or None
        Leaf-pair edges across the travel (mm), increasing.
    leaf_axis : {'x', 'y'}
        Direction of leaf travel (``MLCX``: 'x').
    """

    meterset: np.ndarray
    jaws: np.ndarray
    leaves: np.ndarray | None = None
    boundaries: np.ndarray | None = None
    leaf_axis: str = "x"

    def __post_init__(self):
        self.meterset = np.asarray(self.meterset, float).ravel()
        n = self.meterset.size
        if n < 2:
            raise ValueError(f"a beam needs at least 2 control points, got {n}")
        if not np.all(np.isfinite(self.meterset)) or np.any(np.diff(self.meterset) < -1e-9):
            raise ValueError("meterset must be finite and non-decreasing (cumulative MU per control point)")
        self.jaws = np.asarray(self.jaws, float).reshape(n, 4)
        if np.any(np.isnan(self.jaws)):
            raise ValueError("jaws hold NaN; use -inf/inf for a missing jaw")
        if self.leaf_axis not in ("x", "y"):
            raise ValueError(f"leaf_axis must be 'x' or 'y', got {self.leaf_axis!r}")
        if self.leaves is not None:
            lv = np.asarray(self.leaves, float)
            if lv.ndim != 3 or lv.shape[0] != n or lv.shape[2] != 2:
                raise ValueError(f"leaves must have shape (n_control_points, n_pairs, 2), got {lv.shape}")
            if not np.all(np.isfinite(lv)):
                raise ValueError("leaf positions must be finite")
            b = np.asarray(self.boundaries, float).ravel() if self.boundaries is not None else None
            if b is None or b.size != lv.shape[1] + 1 or np.any(np.diff(b) <= 0):
                raise ValueError(f"boundaries must be {lv.shape[1] + 1} increasing leaf-pair edges (mm) for "
                                 f"{lv.shape[1]} pairs")
            self.leaves, self.boundaries = lv, b

    @property
    def n(self) -> int:
        return int(self.meterset.size)

    @property
    def mu(self) -> float:
        """The beam's total meterset (MU)."""
        return float(self.meterset[-1] - self.meterset[0])

    def swapped(self) -> "ControlPoints":
        """The same beam with X and Y exchanged (``MLCY`` -> leaves along the first axis)."""
        return ControlPoints(self.meterset, self.jaws[:, [2, 3, 0, 1]], self.leaves, self.boundaries, "x")


def _cross(p0, p1, q0, q1):
    """t in (0, 1) where the linear functions p(t) and q(t) cross (NaN where they do not)."""
    dp = (p1 - p0) - (q1 - q0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (q0 - p0) / dp
    t = np.where(np.isfinite(t) & (t > 0) & (t < 1), t, np.nan)
    return t


def _open_length(L, R, x0, x1):
    return np.maximum(0.0, np.minimum(x1, R) - np.maximum(x0, L))


def _interval_x(a0, a1, b0, b1, j0, j1, k0, k1, x0, x1):
    """Exact mean over t in [0, 1] of the open length in [x0, x1] of ``[max(a, J), min(b, K)]``.

    ``a0, a1, b0, b1`` (pairs, 1): leaf tips at the interval's ends; ``j0, j1, k0, k1`` scalars:
    the X jaws; ``x0, x1`` (1, cols): pixel edges. Returns (pairs, cols) in mm.
    """
    shp = np.broadcast_shapes(np.shape(a0), np.shape(x0))
    lin = [(a0, a1), (b0, b1), (j0, j1), (k0, k1), (x0, x0), (x1, x1)]
    ts = [np.zeros(shp), np.ones(shp)]
    for i in range(len(lin)):
        for k in range(i + 1, len(lin)):
            if i >= 4 and k >= 4:
                continue
            p, q = lin[i], lin[k]
            ts.append(np.broadcast_to(_cross(p[0], p[1], q[0], q[1]), shp))
    T = np.stack(ts, axis=-1)
    T = np.sort(np.where(np.isnan(T), 1.0, T), axis=-1)  # NaN -> a duplicate end point (zero width)

    def at(p, t):
        p0, p1 = np.asarray(p[0], float), np.asarray(p[1], float)
        return p0[..., None] + t * (p1 - p0)[..., None]

    A = np.maximum(at((a0, a1), T), at((j0, j1), T))
    B = np.minimum(at((b0, b1), T), at((k0, k1), T))
    f = _open_length(A, B, np.asarray(x0)[..., None], np.asarray(x1)[..., None])
    return np.sum(0.5 * (f[..., 1:] + f[..., :-1]) * np.diff(T, axis=-1), axis=-1)


def aperture_fluence(cps: ControlPoints, x_edges, y_edges) -> np.ndarray:
    """Mean fluence (MU) over each pixel of a grid in beam-limiting-device coordinates.

    Parameters
    ----------
    cps : ControlPoints
    x_edges, y_edges : array_like
        Increasing pixel edges (mm, isocentre plane) along X (columns) and Y (rows).

    Returns
    -------
    ndarray (len(y_edges) - 1, len(x_edges) - 1)
        Rows Y, columns X; the exact X-mean of the module's formula (see the module docstring).
    """
    if cps.leaf_axis == "y":
        return aperture_fluence(cps.swapped(), y_edges, x_edges).T
    xe = np.asarray(x_edges, float).ravel()
    ye = np.asarray(y_edges, float).ravel()
    if xe.size < 2 or ye.size < 2 or np.any(np.diff(xe) <= 0) or np.any(np.diff(ye) <= 0):
        raise ValueError("x_edges and y_edges must each be at least 2 strictly increasing pixel edges (mm)")
    ny, nx = ye.size - 1, xe.size - 1
    out = np.zeros((ny, nx))
    if cps.leaves is not None:
        inf = np.full((cps.n, 1, 2), [-np.inf, np.inf])
        # pseudo-pairs beyond the leaf bank: only the jaws collimate there
        leaves = np.concatenate([np.broadcast_to(inf, (cps.n, 1, 2)), cps.leaves, np.broadcast_to(inf, (cps.n, 1, 2))],
                                axis=1)
        bnd = np.r_[-np.inf, cps.boundaries, np.inf]
    else:
        leaves = np.broadcast_to(np.array([-np.inf, np.inf]), (cps.n, 1, 2))
        bnd = np.array([-np.inf, np.inf])
    big = 1e6  # finite stand-in for an absent jaw or a pseudo leaf (far outside any grid)
    leaves = np.clip(leaves, -big, big)
    jaws = np.clip(cps.jaws, -big, big)
    x0, x1 = xe[None, :-1], xe[None, 1:]
    dx = np.diff(xe)[None, :]
    dy = np.diff(ye)
    for i in range(cps.n - 1):
        dmu = cps.meterset[i + 1] - cps.meterset[i]
        if dmu <= 0:
            continue
        ya = 0.5 * (jaws[i, 2] + jaws[i + 1, 2])
        yb = 0.5 * (jaws[i, 3] + jaws[i + 1, 3])
        lo = np.maximum(np.maximum(ye[:-1, None], bnd[None, :-1]), ya)
        hi = np.minimum(np.minimum(ye[1:, None], bnd[None, 1:]), yb)
        oy = np.clip(hi - lo, 0.0, None) / dy[:, None]  # (rows, pairs): fraction of the row in the pair and jaws
        used = np.flatnonzero(oy.any(axis=0))
        if used.size == 0:
            continue
        a0, b0 = leaves[i, used, 0][:, None], leaves[i, used, 1][:, None]
        a1, b1 = leaves[i + 1, used, 0][:, None], leaves[i + 1, used, 1][:, None]
        ox = _interval_x(a0, a1, b0, b1, jaws[i, 0], jaws[i + 1, 0], jaws[i, 1], jaws[i + 1, 1], x0, x1) / dx
        out += dmu * (oy[:, used] @ ox)
    return out


def field_bounds(cps: ControlPoints) -> tuple[float, float, float, float]:
    """``(x_min, x_max, y_min, y_max)`` (mm) of everything any control point opens.

    The union of the jaw openings, narrowed along the leaf travel to the span of the open
    leaves when there is an MLC. ``ValueError`` when the field is unbounded (no jaw and no MLC
    along an axis).
    """
    c = cps.swapped() if cps.leaf_axis == "y" else cps
    x0, x1 = float(np.min(c.jaws[:, 0])), float(np.max(c.jaws[:, 1]))
    y0, y1 = float(np.min(c.jaws[:, 2])), float(np.max(c.jaws[:, 3]))
    if c.leaves is not None:
        gap = c.leaves[:, :, 1] - c.leaves[:, :, 0]
        opened = gap > 0
        if opened.any():
            x0 = max(x0, float(c.leaves[:, :, 0][opened].min()))
            x1 = min(x1, float(c.leaves[:, :, 1][opened].max()))
            rows = np.flatnonzero(opened.any(axis=0))
            y0 = max(y0, float(c.boundaries[rows[0]]))
            y1 = min(y1, float(c.boundaries[rows[-1] + 1]))
        elif not np.isfinite([y0, y1]).all():
            y0, y1 = max(y0, float(c.boundaries[0])), min(y1, float(c.boundaries[-1]))
    b = (x0, x1, y0, y1) if cps.leaf_axis == "x" else (y0, y1, x0, x1)
    if not np.all(np.isfinite(b)):
        raise ValueError(f"the field is unbounded ({b}); a beam needs jaws or an MLC along both axes")
    return tuple(float(v) for v in b)


def rotated_fluence(cps: ControlPoints, u_edges, v_edges, collimator_deg: float = 0.0, oversample: int = 4) -> np.ndarray:
    """Mean fluence (MU) on a pixel grid of the gantry frame ``(u, v)`` for a rotated collimator.

    The collimator angle ``c`` (IEC 61217, counter-clockwise seen from the source) turns
    beam-limiting-device coordinates into ``u = X cos c - Y sin c``, ``v = X sin c + Y cos c``.
    Multiples of 90 degrees map pixels onto pixels, so the result is as exact as
    :func:`aperture_fluence`; other angles average ``oversample**2`` point samples per pixel of
    the fluence computed on a grid ``oversample`` times finer in X and Y (a sampling error of
    order ``pixel / oversample`` at the field edges).

    Returns
    -------
    ndarray (len(v_edges) - 1, len(u_edges) - 1)
        Rows v, columns u (rtlab's fluence-map convention).
    """
    ue = np.asarray(u_edges, float).ravel()
    ve = np.asarray(v_edges, float).ravel()
    c = float(collimator_deg) % 360.0
    q = int(round(c / 90.0)) % 4
    if abs(c - 90.0 * round(c / 90.0)) < 1e-6:
        if q == 0:  # X = u, Y = v
            return aperture_fluence(cps, ue, ve)
        if q == 1:  # X = v, Y = -u
            f = aperture_fluence(cps, ve, -ue[::-1])  # rows: Y = -u ascending, cols: X = v
            return f[::-1, :].T
        if q == 2:  # X = -u, Y = -v
            f = aperture_fluence(cps, -ue[::-1], -ve[::-1])
            return f[::-1, ::-1]
        f = aperture_fluence(cps, -ve[::-1], ue)  # q == 3: X = -v, Y = u
        return f[:, ::-1].T
    n = max(1, int(oversample))
    rad = np.deg2rad(c)
    cs, sn = np.cos(rad), np.sin(rad)
    # corners of the (u, v) grid in (X, Y)
    uu, vv = np.meshgrid(ue[[0, -1]], ve[[0, -1]])
    X = uu * cs + vv * sn
    Y = -uu * sn + vv * cs
    h = min(np.diff(ue).min(), np.diff(ve).min()) / n
    xe = np.arange(X.min() - h, X.max() + 2 * h, h)
    ye = np.arange(Y.min() - h, Y.max() + 2 * h, h)
    fine = aperture_fluence(cps, xe, ye)
    su = (ue[:-1, None] + (np.arange(n)[None, :] + 0.5) / n * np.diff(ue)[:, None]).ravel()
    sv = (ve[:-1, None] + (np.arange(n)[None, :] + 0.5) / n * np.diff(ve)[:, None]).ravel()
    SV, SU = np.meshgrid(sv, su, indexing="ij")
    Xs = SU * cs + SV * sn
    Ys = -SU * sn + SV * cs
    ix = np.clip(np.searchsorted(xe, Xs) - 1, 0, fine.shape[1] - 1)
    iy = np.clip(np.searchsorted(ye, Ys) - 1, 0, fine.shape[0] - 1)
    samples = fine[iy, ix]
    return samples.reshape(ve.size - 1, n, ue.size - 1, n).mean(axis=(1, 3))
