"""Gamma-Knife-like point-kernel dose with analytic gradients (patent 002, eqs 7 and 10).

A shot at isocentre ``r'`` (mm) irradiated for ``t`` minutes gives the dose ``D(r) = phi(r - r') t``
(patent 002, eq. 7). The source has 8 sectors; each sector is open with a 4, 8 or 16 mm
collimator, or blocked. The total dose is the superposition over shots ``i``, sectors ``s`` and
collimators ``c``::

    D(r) = sum_{i,s,c} t[i, s, c] * phi_{c,s}(r - r'_i)                      (Gy; t in min)

``t[i, s, c]`` is the time sector ``s`` of shot ``i`` spends with collimator ``c``
("sector-duration" variables; a blocked sector contributes nothing). This module computes ``D``
on a :class:`~rtlab.core.geometry.Grid` (optionally only at some voxels), its vector-Jacobian
product with respect to the shot positions and the times (patent 002, eq. 10, chain rule
``dL/dtheta = sum_r dL/dD(r) dD(r)/dtheta``), and the influence matrix ``dD/dt`` for fixed
shots. numba kernels (``cache=True``, parallel over voxels) do the work; ``backend='numpy'``
runs the pure-numpy reference that the tests compare against.

The kernel model (ours; an analytic stand-in for measured Perfexion/Icon data)
-----------------------------------------------------------------------------
For collimator ``c`` and sector ``s``, with ``u = r - r'`` (z, y, x in mm)::

    Q       = u^T M_{c,s} u                              (dimensionless; Q = 1 on the 50 % surface)
    phi     = A_c [ (1 - w_c) exp(-ln2 * Q^p_c) + w_c exp(-(rho50_c / lam_c) (sqrt(Q + 1) - 1)) ]
    A_c     = R * OF_c / 8                               (Gy/min per sector at the focus)
    M_{c,s} = diag(1/(kz rho50_c)^2, 1/rho50_c^2, 1/rho50_c^2)
              - beta / rho50_c^2 * (e_s e_s^T - (e_y e_y^T + e_x e_x^T) / 2)

* Core: a super-Gaussian (``p >= 1``; ``p = 1`` is a Gaussian, larger ``p`` a flatter top
  and a steeper penumbra), exactly 50 % of the core at ``Q = 1``.
* Tail: a smoothed exponential in the scaled radius ``rho50 sqrt(Q)`` (decay length
  ``lam_c`` mm far from the focus, flat at the focus so that ``phi`` is smooth everywhere):
  scatter and leakage.
* Sector asymmetry: the beams of sector ``s`` come from one eighth of the source ring around
  the patient's z axis, centred on the azimuth ``a_s = (s + 1/2) 45 deg`` in the transverse
  plane, ``e_s = (0, sin a_s, cos a_s)`` (z, y, x). Beams lay dose along their axes, so a
  sector's kernel is stretched along ``e_s`` (the in-plane ``1/rho^2`` eigenvalue becomes
  ``1 - beta/2`` along ``e_s`` and ``1 + beta/2`` across). The ``beta`` terms cancel in the
  sum of the quadratic forms over the 8 sectors, so all sectors open give a kernel that is
  close to rotationally symmetric about z.

Default parameters (:class:`GammaKnifeModel`; approximate published Perfexion/Icon values,
rounded; they are a model, not commissioning data):

============  ==========  ==============  =======  ====  ==========  =========
collimator    OF          FWHM x/y (mm)   kz       p     tail w      tail lam
============  ==========  ==============  =======  ====  ==========  =========
4 mm          0.814       6.2             1.10     1.0   0.04        6 mm
8 mm          0.900       11.0            1.10     1.25  0.04        8 mm
16 mm         1.000       22.0            1.10     1.25  0.04        10 mm
============  ==========  ==============  =======  ====  ==========  =========

``R = 3.0 Gy/min`` (16 mm, all sectors open, dose rate at the focus), ``beta = 0.3``.
Tissue heterogeneity and depth (attenuation through the skull) are ignored, as in the
patent's "dose-rate kernels pre-computed once and translated with the isocentre".

Units: positions mm ``(z, y, x)`` in world coordinates (:class:`~rtlab.core.geometry.Grid`
convention), times in minutes, dose in Gy, dose rate Gy/min.

Size: just over 600 lines: one dose model (parameters, numpy reference, numba kernels, the
:class:`PointKernelDose` engine) whose three implementations must stay side by side to be
checked against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from ..core.geometry import Grid

__all__ = [
    "COLLIMATORS_MM",
    "N_SECTORS",
    "GammaKnifeModel",
    "default_model",
    "grid_points",
    "kernel",
    "kernel_gradient",
    "dose",
    "dose_vjp",
    "influence_matrix",
    "beam_on_time",
    "check_shots",
    "PointKernelDose",
    "as_model",
    "collimator_index",
]

#: Collimator sizes (mm), in the order of the last axis of the time array.
COLLIMATORS_MM = (4, 8, 16)
#: Number of independently collimated sectors.
N_SECTORS = 8
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class GammaKnifeModel:
    """Parameters of the analytic Gamma-Knife-like dose-rate kernel (see module docstring).

    Parameters
    ----------
    dose_rate : float
        Dose rate at the focus for the 16 mm collimator with all 8 sectors open, Gy/min.
    output_factors : 3 floats
        Relative output of the 4, 8 and 16 mm collimators (16 mm = 1).
    fwhm_xy : 3 floats
        Full width at half maximum in x and y (mm) of each collimator's core.
    z_ratio : 3 floats
        FWHM in z divided by FWHM in x/y.
    flatness : 3 floats
        Super-Gaussian exponent ``p >= 1`` of the core.
    tail_weight : 3 floats
        Fraction ``w`` of the focus dose carried by the exponential tail, in [0, 1).
    tail_length : 3 floats
        Decay length ``lam`` (mm) of the tail.
    sector_asymmetry : float
        ``beta`` in [0, 1]: stretching of a sector's kernel along its mean beam direction.
    """

    dose_rate: float = 3.0
    output_factors: tuple = (0.814, 0.900, 1.000)
    fwhm_xy: tuple = (6.2, 11.0, 22.0)
    z_ratio: tuple = (1.10, 1.10, 1.10)
    flatness: tuple = (1.0, 1.25, 1.25)
    tail_weight: tuple = (0.04, 0.04, 0.04)
    tail_length: tuple = (6.0, 8.0, 10.0)
    sector_asymmetry: float = 0.3

    def __post_init__(self):
        if not (np.isfinite(self.dose_rate) and self.dose_rate > 0):
            raise ValueError(f"dose_rate must be a positive dose rate in Gy/min, got {self.dose_rate!r}")
        for name in ("output_factors", "fwhm_xy", "z_ratio", "flatness", "tail_weight", "tail_length"):
            v = np.asarray(getattr(self, name), float)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise ValueError(f"{name} must hold 3 finite numbers (4, 8, 16 mm collimators), got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if min(self.output_factors) <= 0 or min(self.fwhm_xy) <= 0 or min(self.z_ratio) <= 0 or min(self.tail_length) <= 0:
            raise ValueError("output_factors, fwhm_xy, z_ratio and tail_length must be positive")
        if min(self.flatness) < 1.0:
            raise ValueError(f"flatness must be >= 1 (p < 1 makes the kernel non-smooth at the focus), got {self.flatness}")
        if min(self.tail_weight) < 0 or max(self.tail_weight) >= 1:
            raise ValueError(f"tail_weight must lie in [0, 1), got {self.tail_weight}")
        if not (0.0 <= self.sector_asymmetry <= 1.0):
            raise ValueError(f"sector_asymmetry must lie in [0, 1], got {self.sector_asymmetry!r}")

    @property
    def rho50(self) -> np.ndarray:
        """Half width at half maximum of each collimator's core in x/y (mm), shape (3,)."""
        return np.asarray(self.fwhm_xy) / 2.0

    def sector_directions(self) -> np.ndarray:
        """Unit mean beam direction ``e_s`` (z, y, x) of each sector, shape (8, 3)."""
        a = (np.arange(N_SECTORS) + 0.5) * (2 * np.pi / N_SECTORS)
        return np.stack([np.zeros_like(a), np.sin(a), np.cos(a)], axis=1)

    def matrices(self) -> np.ndarray:
        """Quadratic forms ``M_{c,s}`` (1/mm^2), shape (3, 8, 3, 3), see the module docstring."""
        out = np.zeros((3, N_SECTORS, 3, 3))
        e = self.sector_directions()
        perp = np.diag([0.0, 1.0, 1.0])
        for c in range(3):
            r = self.rho50[c]
            base = np.diag([1.0 / (self.z_ratio[c] * r) ** 2, 1.0 / r**2, 1.0 / r**2])
            for s in range(N_SECTORS):
                out[c, s] = base - self.sector_asymmetry / r**2 * (np.outer(e[s], e[s]) - perp / 2.0)
        return out

    def params(self) -> np.ndarray:
        """Radial parameters per collimator, shape (3, 4): ``[A, p, w, rho50/lam]``.

        ``A = dose_rate * OF / 8`` is the per-sector dose rate at the focus (Gy/min).
        """
        p = np.zeros((3, 4))
        p[:, 0] = self.dose_rate * np.asarray(self.output_factors) / N_SECTORS
        p[:, 1] = self.flatness
        p[:, 2] = self.tail_weight
        p[:, 3] = self.rho50 / np.asarray(self.tail_length)
        return p


def default_model() -> GammaKnifeModel:
    """The default :class:`GammaKnifeModel` (parameters in the module docstring)."""
    return GammaKnifeModel()


def as_model(model) -> GammaKnifeModel:
    """``model`` as a :class:`GammaKnifeModel` (None: the default model); ``TypeError`` otherwise."""
    if model is None:
        return GammaKnifeModel()
    if not isinstance(model, GammaKnifeModel):
        raise TypeError(f"model must be a GammaKnifeModel (or None for the default), got {type(model).__name__}")
    return model


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def grid_points(grid: Grid, indices=None) -> np.ndarray:
    """World coordinates (z, y, x) in mm of voxel centres, shape (N, 3), float64.

    Parameters
    ----------
    grid : Grid
    indices : array_like, optional
        Which voxels: flat (C-order) indices ``(N,)``, an ``(N, 3)`` integer array of
        ``(k, j, i)`` indices, or a boolean mask of ``grid.shape``. Default: all voxels
        (C order).
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
    if indices is None:
        Z, Y, X = grid.mesh(sparse=False)
        return np.stack([Z.ravel(), Y.ravel(), X.ravel()], axis=1).astype(np.float64)
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != grid.shape:
            raise ValueError(f"indices as a boolean mask must have the grid's shape {grid.shape}, got {idx.shape}")
        kji = np.argwhere(idx)
    elif idx.dtype.kind in "iu":
        if idx.ndim == 1:
            if idx.size and (idx.min() < 0 or idx.max() >= grid.size):
                raise ValueError(f"flat indices must lie in [0, {grid.size}), got range [{idx.min()}, {idx.max()}]")
            kji = np.stack(np.unravel_index(idx, grid.shape), axis=1)
        elif idx.ndim == 2 and idx.shape[1] == 3:
            if idx.size and (np.any(idx < 0) or np.any(idx >= np.asarray(grid.shape))):
                raise ValueError(f"(k, j, i) indices must lie inside the grid {grid.shape}")
            kji = idx
        else:
            raise ValueError(f"indices must be flat (N,) or (N, 3) voxel indices, got shape {idx.shape}")
    else:
        raise TypeError(f"indices must be integer voxel indices or a boolean mask, got dtype {idx.dtype}")
    return grid.index_to_world(kji).astype(np.float64)


def _as_points(points) -> np.ndarray:
    p = np.ascontiguousarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be an (N, 3) array of (z, y, x) positions in mm, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("points contain NaN or inf; pass finite (z, y, x) positions in mm")
    return p


def check_shots(shots, times=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate shot positions ``(S, 3)`` mm and times ``(S, 8, 3)`` min; return float64 copies.

    Raises ``ValueError`` on wrong shapes, NaN, or negative times.
    """
    s = np.array(shots, dtype=np.float64, ndmin=2)
    if s.ndim != 2 or s.shape[1] != 3:
        raise ValueError(f"shots must be an (S, 3) array of isocentre positions (z, y, x) in mm, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("shots contain NaN or inf; shot positions must be finite (z, y, x) in mm")
    if times is None:
        return np.ascontiguousarray(s), None
    t = np.array(times, dtype=np.float64)
    want = (s.shape[0], N_SECTORS, len(COLLIMATORS_MM))
    if t.shape != want:
        raise ValueError(
            f"times must have shape (n_shots, 8 sectors, 3 collimators) = {want} in minutes, got {t.shape}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("times contain NaN or inf; times must be finite minutes")
    if np.any(t < 0):
        raise ValueError(f"times must be >= 0 minutes (patent 002, eq. 9); the smallest is {t.min():g}")
    return np.ascontiguousarray(s), np.ascontiguousarray(t)


def _resolve_points(where, indices):
    """(points, output shape or None)."""
    if isinstance(where, Grid):
        pts = grid_points(where, indices)
        shape = where.shape if indices is None else None
        return pts, shape
    if indices is not None:
        raise ValueError("indices= only applies when the first argument is a Grid")
    return _as_points(where), None


# ---------------------------------------------------------------------------------------------
# numpy reference
# ---------------------------------------------------------------------------------------------
def _radial_np(Q, par):
    A, p, w, k = par
    core = np.exp(-_LN2 * Q**p)
    sq = np.sqrt(Q + 1.0)
    tail = np.exp(-k * (sq - 1.0))
    val = A * ((1.0 - w) * core + w * tail)
    dq = A * ((1.0 - w) * core * (-_LN2 * p * Q ** (p - 1.0)) + w * tail * (-k / (2.0 * sq)))
    return val, dq


def kernel(u, collimator: int, sector: int, model: GammaKnifeModel | None = None) -> np.ndarray:
    """Dose rate ``phi_{c,s}(u)`` (Gy/min) of one sector with one collimator (numpy).

    Parameters
    ----------
    u : array_like, shape (..., 3)
        Offsets ``r - r'`` (z, y, x) in mm from the shot's isocentre.
    collimator : int
        Collimator size in mm (4, 8 or 16).
    sector : int
        Sector number 0..7.
    model : GammaKnifeModel, optional
    """
    m = as_model(model)
    c = collimator_index(collimator)
    if not (0 <= int(sector) < N_SECTORS):
        raise ValueError(f"sector must be 0..7, got {sector!r}")
    u = np.asarray(u, float)
    M = m.matrices()[c, int(sector)]
    Q = np.einsum("...i,ij,...j->...", u, M, u)
    return _radial_np(np.maximum(Q, 0.0), m.params()[c])[0]


def kernel_gradient(u, collimator: int, sector: int, model: GammaKnifeModel | None = None) -> np.ndarray:
    """Analytic gradient ``d phi_{c,s} / du`` (Gy/min/mm), shape (..., 3) (patent 002, eq. 10).

    The gradient with respect to the isocentre position ``r'`` is its negative.
    """
    m = as_model(model)
    c = collimator_index(collimator)
    u = np.asarray(u, float)
    M = m.matrices()[c, int(sector)]
    Mu = u @ M
    Q = np.maximum(np.einsum("...i,...i->...", u, Mu), 0.0)
    dq = _radial_np(Q, m.params()[c])[1]
    return 2.0 * dq[..., None] * Mu


def collimator_index(collimator) -> int:
    """Position of a collimator size (4, 8 or 16 mm) in the last axis of the time array."""
    try:
        return COLLIMATORS_MM.index(int(collimator))
    except ValueError:
        raise ValueError(f"collimator must be one of {COLLIMATORS_MM} mm, got {collimator!r}") from None


def _dose_numpy(pts, shots, times, M, par):
    out = np.zeros(pts.shape[0])
    for i in range(shots.shape[0]):
        u = pts - shots[i]
        for c in range(3):
            for s in range(N_SECTORS):
                t = times[i, s, c]
                if t == 0.0:
                    continue
                Q = np.maximum(np.einsum("ni,ij,nj->n", u, M[c, s], u), 0.0)
                out += t * _radial_np(Q, par[c])[0]
    return out


def _vjp_numpy(pts, g, shots, times, M, par):
    S = shots.shape[0]
    gt = np.zeros((S, N_SECTORS, 3))
    gp = np.zeros((S, 3))
    for i in range(S):
        u = pts - shots[i]
        for c in range(3):
            for s in range(N_SECTORS):
                Mu = u @ M[c, s]
                Q = np.maximum(np.einsum("ni,ni->n", u, Mu), 0.0)
                val, dq = _radial_np(Q, par[c])
                gt[i, s, c] = g @ val
                # d phi(r - r') / d r' = -2 dq M u
                gp[i] -= times[i, s, c] * 2.0 * ((g * dq) @ Mu)
    return gp, gt


def _influence_numpy(pts, shots, M, par):
    S = shots.shape[0]
    out = np.zeros((pts.shape[0], S * N_SECTORS * 3))
    for i in range(S):
        u = pts - shots[i]
        for s in range(N_SECTORS):
            for c in range(3):
                Q = np.maximum(np.einsum("ni,ij,nj->n", u, M[c, s], u), 0.0)
                out[:, (i * N_SECTORS + s) * 3 + c] = _radial_np(Q, par[c])[0]
    return out


# ---------------------------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def _quad(M, c, s, uz, uy, ux):
    q = (M[c, s, 0, 0] * uz * uz + M[c, s, 1, 1] * uy * uy + M[c, s, 2, 2] * ux * ux
         + 2.0 * (M[c, s, 0, 1] * uz * uy + M[c, s, 0, 2] * uz * ux + M[c, s, 1, 2] * uy * ux))
    return q if q > 0.0 else 0.0


@nb.njit(cache=True, inline="always")
def _qpow(Q, p):
    # Q**p with fast paths for the default exponents (1, 1.25, 1.5, 2)
    if p == 1.0:
        return Q
    if p == 1.25:
        return Q * math.sqrt(math.sqrt(Q))
    if p == 1.5:
        return Q * math.sqrt(Q)
    if p == 2.0:
        return Q * Q
    return Q ** p


@nb.njit(cache=True, inline="always")
def _radial(Q, A, p, w, k):
    qp = _qpow(Q, p)
    core = math.exp(-0.6931471805599453 * qp)
    sq = math.sqrt(Q + 1.0)
    tail = math.exp(-k * (sq - 1.0))
    return A * ((1.0 - w) * core + w * tail)


@nb.njit(cache=True, inline="always")
def _radial_d(Q, A, p, w, k):
    qp = _qpow(Q, p)
    qp1 = qp / Q if Q > 0.0 else (1.0 if p == 1.0 else 0.0)
    core = math.exp(-0.6931471805599453 * qp)
    sq = math.sqrt(Q + 1.0)
    tail = math.exp(-k * (sq - 1.0))
    val = A * ((1.0 - w) * core + w * tail)
    dq = A * ((1.0 - w) * core * (-0.6931471805599453 * p * qp1) + w * tail * (-k / (2.0 * sq)))
    return val, dq


@nb.njit(cache=True, parallel=True)
def _dose_kernel(pts, shots, times, M, par, out):
    n = pts.shape[0]
    S = shots.shape[0]
    for j in nb.prange(n):
        acc = 0.0
        for i in range(S):
            uz = pts[j, 0] - shots[i, 0]
            uy = pts[j, 1] - shots[i, 1]
            ux = pts[j, 2] - shots[i, 2]
            for c in range(3):
                for s in range(8):
                    t = times[i, s, c]
                    if t == 0.0:
                        continue
                    Q = _quad(M, c, s, uz, uy, ux)
                    acc += t * _radial(Q, par[c, 0], par[c, 1], par[c, 2], par[c, 3])
        out[j] = acc


@nb.njit(cache=True, parallel=True)
def _vjp_kernel(pts, g, shots, times, M, par, bounds, gp_parts, gt_parts):
    S = shots.shape[0]
    for ch in nb.prange(bounds.shape[0] - 1):
        for j in range(bounds[ch], bounds[ch + 1]):
            gj = g[j]
            if gj == 0.0:
                continue
            for i in range(S):
                uz = pts[j, 0] - shots[i, 0]
                uy = pts[j, 1] - shots[i, 1]
                ux = pts[j, 2] - shots[i, 2]
                for c in range(3):
                    for s in range(8):
                        Q = _quad(M, c, s, uz, uy, ux)
                        val, dq = _radial_d(Q, par[c, 0], par[c, 1], par[c, 2], par[c, 3])
                        gt_parts[ch, i, s, c] += gj * val
                        t = times[i, s, c]
                        if t != 0.0:
                            f = -2.0 * gj * t * dq
                            gp_parts[ch, i, 0] += f * (M[c, s, 0, 0] * uz + M[c, s, 0, 1] * uy + M[c, s, 0, 2] * ux)
                            gp_parts[ch, i, 1] += f * (M[c, s, 1, 0] * uz + M[c, s, 1, 1] * uy + M[c, s, 1, 2] * ux)
                            gp_parts[ch, i, 2] += f * (M[c, s, 2, 0] * uz + M[c, s, 2, 1] * uy + M[c, s, 2, 2] * ux)


@nb.njit(cache=True, parallel=True)
def _influence_kernel(pts, shots, M, par, out):
    n = pts.shape[0]
    S = shots.shape[0]
    for j in nb.prange(n):
        for i in range(S):
            uz = pts[j, 0] - shots[i, 0]
            uy = pts[j, 1] - shots[i, 1]
            ux = pts[j, 2] - shots[i, 2]
            for s in range(8):
                for c in range(3):
                    Q = _quad(M, c, s, uz, uy, ux)
                    out[j, (i * 8 + s) * 3 + c] = _radial(Q, par[c, 0], par[c, 1], par[c, 2], par[c, 3])


#: Point chunks of the vector-Jacobian kernel (enough for 16+ threads; independent of the thread
#: count so the summation order, and hence the result, is the same on any number of threads).
_VJP_CHUNKS = 64


def _chunks(n: int, n_chunks: int) -> np.ndarray:
    n_chunks = max(1, min(n_chunks, n))
    return np.linspace(0, n, n_chunks + 1).astype(np.int64)


def _backend(backend: str) -> str:
    if backend not in ("numba", "numpy"):
        raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
    return backend


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def dose(where, shots, times, model: GammaKnifeModel | None = None, indices=None,
         backend: str = "numba") -> np.ndarray:
    """Dose (Gy) of a Gamma-Knife-like plan (patent 002, eq. 7 summed over shots/sectors/collimators).

    Parameters
    ----------
    where : Grid or array_like (N, 3)
        A :class:`~rtlab.core.geometry.Grid` (dose at voxel centres) or world points (z, y, x) mm.
    shots : array_like, shape (S, 3)
        Isocentre positions (z, y, x) in mm.
    times : array_like, shape (S, 8, 3)
        Minutes per shot, sector and collimator (4, 8, 16 mm); >= 0.
    model : GammaKnifeModel, optional
    indices : array_like, optional
        With a Grid: only these voxels (flat indices, (N, 3) indices or a boolean mask).
    backend : {'numba', 'numpy'}

    Returns
    -------
    ndarray of float64
        ``grid.shape`` for a whole Grid, else ``(N,)``.
    """
    m = as_model(model)
    pts, shape = _resolve_points(where, indices)
    s, t = check_shots(shots, times)
    M, par = m.matrices(), m.params()
    if _backend(backend) == "numpy":
        out = _dose_numpy(pts, s, t, M, par)
    else:
        out = np.empty(pts.shape[0])
        _dose_kernel(pts, s, t, M, par, out)
    return out.reshape(shape) if shape is not None else out


def dose_vjp(where, grad_dose, shots, times, model: GammaKnifeModel | None = None, indices=None,
             backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """Vector-Jacobian product of the dose with respect to shot positions and times.

    Given ``g(r) = dL/dD(r)`` (per evaluated point, Gy^-1 times the loss unit), returns
    ``dL/dr'_i = sum_r g(r) sum_{s,c} t[i,s,c] d phi_{c,s}(r - r'_i)/dr'_i`` and
    ``dL/dt[i,s,c] = sum_r g(r) phi_{c,s}(r - r'_i)`` (patent 002, eq. 10: the chain rule with
    the analytic kernel derivative).

    Parameters
    ----------
    where, shots, times, model, indices, backend
        As in :func:`dose`.
    grad_dose : array_like
        ``dL/dD`` at the same points as :func:`dose` returns (same shape).

    Returns
    -------
    grad_shots : ndarray (S, 3)
        Loss-unit per mm.
    grad_times : ndarray (S, 8, 3)
        Loss-unit per minute.
    """
    m = as_model(model)
    pts, shape = _resolve_points(where, indices)
    s, t = check_shots(shots, times)
    g = np.ascontiguousarray(grad_dose, dtype=np.float64)
    want = shape if shape is not None else (pts.shape[0],)
    if g.shape != tuple(want):
        raise ValueError(f"grad_dose must have the dose's shape {tuple(want)}, got {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grad_dose contains NaN or inf")
    g = g.ravel()
    M, par = m.matrices(), m.params()
    if _backend(backend) == "numpy":
        return _vjp_numpy(pts, g, s, t, M, par)
    # a fixed chunk count, not one tied to the thread count: the per-chunk partial sums are added
    # in chunk order, so 1 and 2 threads give the same bits
    bounds = _chunks(pts.shape[0], _VJP_CHUNKS)
    nch = bounds.shape[0] - 1
    gp = np.zeros((nch, s.shape[0], 3))
    gt = np.zeros((nch, s.shape[0], N_SECTORS, 3))
    _vjp_kernel(pts, g, s, t, M, par, bounds, gp, gt)
    return gp.sum(axis=0), gt.sum(axis=0)


def influence_matrix(where, shots, model: GammaKnifeModel | None = None, indices=None,
                     backend: str = "numba") -> np.ndarray:
    """Dose per minute of every (shot, sector, collimator) at the points: ``dD/dt``.

    Returns an ``(N, S * 8 * 3)`` float64 array whose column ``(i * 8 + s) * 3 + c`` is
    ``phi_{c,s}(r - r'_i)`` (Gy/min), so that ``dose = A @ times.ravel()``. Used for inverse
    planning with the isocentres fixed (patent 002, FIG. 9, operation 950).
    """
    m = as_model(model)
    pts, _ = _resolve_points(where, indices)
    s, _ = check_shots(shots)
    M, par = m.matrices(), m.params()
    if _backend(backend) == "numpy":
        return _influence_numpy(pts, s, M, par)
    out = np.empty((pts.shape[0], s.shape[0] * N_SECTORS * 3))
    _influence_kernel(pts, s, M, par, out)
    return out


def beam_on_time(times) -> float:
    """Beam-on time (min) of a sector-duration plan: ``sum_i max_s sum_c t[i, s, c]``.

    Each sector of a shot runs its collimator settings one after the other; the shot lasts as
    long as its busiest sector.
    """
    t = np.asarray(times, float)
    if t.ndim != 3 or t.shape[1:] != (N_SECTORS, 3):
        raise ValueError(f"times must have shape (n_shots, 8, 3), got {t.shape}")
    return float(t.sum(axis=2).max(axis=1).sum()) if t.size else 0.0


class PointKernelDose:
    """The point kernel as a :class:`~rtlab.dose.engine.DoseEngine` on fixed points.

    Parameters
    ----------
    where : Grid or array_like (N, 3)
        As in :func:`dose`.
    model : GammaKnifeModel, optional
    indices : array_like, optional
        As in :func:`dose`.
    backend : {'numba', 'numpy'}

    Notes
    -----
    ``x = (shots, times)``: isocentres ``(S, 3)`` mm and minutes ``(S, 8, 3)``. :meth:`dose`
    is :func:`dose`, :meth:`vjp` is :func:`dose_vjp` (returns ``(grad_shots, grad_times)``).
    """

    def __init__(self, where, model: GammaKnifeModel | None = None, indices=None, backend: str = "numba"):
        self.where = where
        self.model = as_model(model)
        self.indices = indices
        self.backend = _backend(backend)

    def dose(self, x) -> np.ndarray:
        """Dose (Gy) of ``x = (shots, times)`` at the engine's points (patent 002, eq. 7)."""
        shots, times = x
        return dose(self.where, shots, times, self.model, indices=self.indices, backend=self.backend)

    def vjp(self, x, g) -> tuple[np.ndarray, np.ndarray]:
        """``(dL/dshots, dL/dtimes)`` for ``g = dL/dD`` (patent 002, eq. 10)."""
        shots, times = x
        return dose_vjp(self.where, g, shots, times, self.model, indices=self.indices, backend=self.backend)
