"""Photon beam model: the three-component SVD pencil beam of Bortfeld, Schlegel & Rhein (1993).

The dose at a point with radiological depth ``d`` (mm) whose projection onto the isocentre
plane is ``(u, v)`` (mm), irradiated by a fluence ``psi(u, v)`` defined in the isocentre
plane, is (paper 004, eqs 4-5)::

    D(u, v, d) = (SAD / t)^2 * sum_{i=1..3} D_i(d) * C_i(u, v)
    C_i(u, v)  = integral psi(u', v') w_i(u - u', v - v') du' dv'
    D_i(d)     = b_i / (b_i - mu) * (exp(-mu d) - exp(-b_i d))

with ``t`` the distance from the source measured along the beam axis (inverse square law).
``D_i`` is matRad's / Bortfeld's analytical depth component (build-up with rate ``b_i``,
attenuation ``mu``); ``w_i`` the lateral kernels.

Lateral kernels as sums of Gaussians
------------------------------------
rtlab represents every lateral kernel as a weighted sum of normalised 2D isotropic Gaussians,
``w_i(r) = sum_k c_ik * exp(-r^2 / (2 s_ik^2)) / (2 pi s_ik^2)``. A Gaussian is separable, so
the dose of a square bixel is a product of two error-function differences (exact, no 2D
numerical convolution) and the fluence convolution is two 1D passes. The integral of
``w_i`` over the plane is ``sum_k c_ik`` (the broad-field weight of component ``i``).

Built-in generic 6 MV model (:func:`generic_6mv`)
-------------------------------------------------
Commissioned (:mod:`rtlab.dose.commission`) to representative 6 MV beam data shipped in
``rtlab/data/beam_data_6mv_representative.csv`` (BJR Supplement 25 central-axis PDDs, Varian
TrueBeam 6X representative output factors): ``b = (0.2878, 0.016, 0.0051) /mm``,
``mu = 0.0047 /mm``, SAD 1000 mm; lateral kernels one Gaussian each, ``w_1`` weight 1, sigma
2.123 mm (5 mm FWHM primary penumbra, matRad's generic value, not fitted), ``w_2`` weight
0.1509, sigma 16.13 mm, ``w_3`` weight 0.4191, sigma 51.54 mm, plus head scatter (weight
0.113, width 40 mm, on the primary component). In water (SSD 1000 mm): d_max 15 mm, PDD(100 mm)
67.6 %, output factors at d_max 0.918 / 0.944 / 1 / 1.049 for 3 / 5 / 10 / 20 cm, 80-20 %
penumbra 5.5 mm at 100 mm (``docs/dose_engine.md``, fit table there). ``norm`` makes a
10 x 10 cm field of unit fluence at SSD 1000 mm give 1 Gy at d_max; absolute dose per MU is set
by :mod:`rtlab.dose.mu`. ``generic_6mv(version=1)`` is the earlier hand-tuned model (weights
1 / 0.25 / 0.10, widths 2.12 / 12 / 30 mm, output factors 0.98 to 1.001).

matRad machines
---------------
:func:`load_matrad_machine` reads a matRad photon machine ``.mat`` (``machine.meta.SAD``,
``machine.meta.SCD``, ``machine.data.betas``, ``.m``, ``.kernelPos``, ``.kernel(j).SSD``,
``.kernel(j).kernel1..3``, ``.penumbraFWHMatIso``). matRad convolves the tabulated radial
kernels on a 0.5 mm Cartesian grid, each sample weighted by the cell area, so the ``r = 0``
entry is a **point mass** ``0.25 mm^2 k(0)`` (for the generic 6 MV kernel 1 a spike worth
0.80 of its 1.19 total). Each kernel is represented by that point mass plus
:data:`KERNEL_FIT_GAUSSIANS` Gaussians with **signed** weights (kernel 2 is negative at the
origin and beyond ~60 mm), fitted to the kernel's encircled mass ``M(R)`` from 0.3 mm to the
end of the table (:func:`encircled_mass`, :func:`fit_radial_kernels`); the widths are shared
by all SSD tables of a component. The primary penumbra (a Gaussian of the given FWHM, by which
matRad convolves the fluence) is folded in: the point mass becomes a Gaussian of the penumbra's
width, every other width ``s`` becomes ``sqrt(s^2 + s_p^2)``. Kernels are stored per SSD; a beam
uses the table nearest to its SSD (matRad: the central ray's SSD). Validation against pyRadPlan:
``benchmarks/validate_matrad.py``, ``docs/dose_engine.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.optimize import least_squares
from scipy.special import erf

from .._util import check_positive

__all__ = ["Machine", "generic_6mv", "load_matrad_machine", "depth_components", "encircled_mass",
           "fit_radial_kernels", "gaussian_encircled_mass", "GENERIC_6MV", "GENERIC_6MV_V1"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def depth_components(depth, betas, mu) -> np.ndarray:
    """Depth components ``D_i(d) = b_i/(b_i - mu) (exp(-mu d) - exp(-b_i d))`` (Bortfeld 1993).

    Parameters
    ----------
    depth : array_like
        Radiological depth in mm (negative values are treated as 0).
    betas : sequence of float
        Build-up rates ``b_i`` in 1/mm.
    mu : float
        Attenuation coefficient in 1/mm.

    Returns
    -------
    ndarray, shape ``depth.shape + (len(betas),)``
        Dimensionless depth factors. Computed as ``b/(b-mu) e^{-mu d} (1 - e^{-(b-mu) d})``
        with ``expm1`` so that ``b_i`` close to ``mu`` stays accurate (limit ``b d e^{-mu d}``).
    """
    d = np.maximum(np.asarray(depth, dtype=np.float64), 0.0)[..., None]
    b = np.asarray(betas, dtype=np.float64)
    x = b - mu
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(x) > 1e-12, -np.expm1(-x * d) / np.where(x == 0, 1, x), d)
    return b * np.exp(-mu * d) * ratio


@dataclass
class Machine:
    """A photon machine for the SVD pencil-beam engine.

    Parameters
    ----------
    name : str
        Identifier.
    betas : tuple of 3 float
        Build-up rates ``b_i`` (1/mm) of the three depth components.
    mu : float
        Attenuation coefficient (1/mm).
    sad : float
        Source-axis distance (mm).
    kernel_sigmas : list of arrays
        Per SSD table: ``kernel_sigmas[j][i]`` are the Gaussian widths (mm, isocentre plane)
        of component ``i``.
    kernel_weights : list of arrays
        Same layout: the weights ``c_ik`` (mm^0; integral of each normalised Gaussian is 1).
    kernel_ssds : sequence of float
        SSD (mm) of each table (a single table for SSD-independent models).
    norm : float
        Overall dose factor (Gy per unit fluence before MU calibration).
    scd : float
        Source-collimator distance (mm), informative only.
    penumbra_fwhm : float
        Primary penumbra FWHM at the isocentre (mm), informative (already folded into widths).
    meta : dict
        Free-form information (source file, fit diagnostics).
    head_scatter_weight : float
        Extra-focal (head-scatter) fluence relative to the primary, ``a >= 0`` (default 0: none).
    head_scatter_sigma : float
        Width (mm, isocentre plane) of the extra-focal source, ``s_h``. Every primary-component
        Gaussian ``(c, s)`` gets a partner ``(a c, sqrt(s^2 + s_h^2))`` on the same depth component
        (:meth:`gaussians`; ``rtlab.dose.commission``): small fields collect less of it, so the
        output rises with field size.
    """

    name: str
    betas: tuple
    mu: float
    sad: float
    kernel_sigmas: list
    kernel_weights: list
    kernel_ssds: tuple = (1000.0,)
    norm: float = 1.0
    scd: float = 500.0
    penumbra_fwhm: float = 5.0
    meta: dict = field(default_factory=dict)
    head_scatter_weight: float = 0.0
    head_scatter_sigma: float = 0.0

    def __post_init__(self):
        self.betas = tuple(check_positive("betas", self.betas))
        if len(self.betas) != 3:
            raise ValueError(f"betas must hold 3 build-up rates (1/mm), got {self.betas!r}")
        (self.mu,) = check_positive("mu", self.mu)
        (self.sad,) = check_positive("sad", self.sad)
        (self.norm,) = check_positive("norm", self.norm)
        if len(self.kernel_sigmas) != len(self.kernel_ssds) or len(self.kernel_weights) != len(self.kernel_ssds):
            raise ValueError("kernel_sigmas, kernel_weights and kernel_ssds must have one entry per SSD table")
        for j in range(len(self.kernel_ssds)):
            if len(self.kernel_sigmas[j]) != 3 or len(self.kernel_weights[j]) != 3:
                raise ValueError("each kernel table needs 3 components (one list of Gaussians per depth component)")
            for i in range(3):
                s = np.atleast_1d(np.asarray(self.kernel_sigmas[j][i], float))
                w = np.atleast_1d(np.asarray(self.kernel_weights[j][i], float))
                if s.shape != w.shape or s.size == 0:
                    raise ValueError(f"kernel table {j} component {i}: sigmas and weights must be equal-length, non-empty")
                check_positive(f"kernel_sigmas[{j}][{i}]", s)
                if not np.all(np.isfinite(w)):
                    raise ValueError(f"kernel_weights[{j}][{i}] contains non-finite values")
        a, sh = float(self.head_scatter_weight), float(self.head_scatter_sigma)
        if not (np.isfinite(a) and a >= 0):
            raise ValueError(f"head_scatter_weight must be a finite number >= 0, got {self.head_scatter_weight!r}")
        if a > 0 and not (np.isfinite(sh) and sh > 0):
            raise ValueError(f"head_scatter_sigma must be a positive width in mm when head_scatter_weight > 0, "
                             f"got {self.head_scatter_sigma!r}")
        self.head_scatter_weight, self.head_scatter_sigma = a, sh

    # ------------------------------------------------------------------------------------
    def depth_dose(self, depth) -> np.ndarray:
        """``D_i(d)`` for the three components, shape ``depth.shape + (3,)`` (see :func:`depth_components`)."""
        return depth_components(depth, self.betas, self.mu)

    def table_index(self, ssd: float) -> int:
        """Index of the kernel table whose SSD is nearest to ``ssd`` (mm)."""
        return int(np.argmin(np.abs(np.asarray(self.kernel_ssds, float) - float(ssd))))

    def gaussians(self, ssd: float = 1000.0):
        """Flattened Gaussian mixture for a beam at ``ssd`` (mm).

        Returns
        -------
        comp : ndarray of int64
            Depth component (0, 1, 2) of each Gaussian.
        sigma : ndarray of float64
            Widths in mm (isocentre plane).
        weight : ndarray of float64
            Weights, already multiplied by :attr:`norm`.
        """
        j = self.table_index(ssd)
        comp, sig, wt = [], [], []
        for i in range(3):
            s, w = self._component(j, i)
            comp += [i] * len(s)
            sig += s.tolist()
            wt += (w * self.norm).tolist()
        return np.array(comp, np.int64), np.array(sig, np.float64), np.array(wt, np.float64)

    def _component(self, j: int, i: int):
        """Widths and weights (without :attr:`norm`) of component ``i`` of table ``j``, head scatter included."""
        s = np.atleast_1d(np.asarray(self.kernel_sigmas[j][i], float))
        w = np.atleast_1d(np.asarray(self.kernel_weights[j][i], float))
        keep = w != 0
        s, w = s[keep], w[keep]
        if i == 0 and self.head_scatter_weight > 0:
            s = np.concatenate([s, np.sqrt(s**2 + self.head_scatter_sigma**2)])
            w = np.concatenate([w, self.head_scatter_weight * w])
        return s, w

    def lateral_kernel(self, r, component: int, ssd: float = 1000.0) -> np.ndarray:
        """Radial kernel ``w_i(r)`` in 1/mm^2 (without :attr:`norm`), for plots and tests."""
        j = self.table_index(ssd)
        r = np.asarray(r, float)
        out = np.zeros_like(r)
        for s, w in zip(*self._component(j, component)):
            out += w * np.exp(-(r**2) / (2 * s * s)) / (2 * np.pi * s * s)
        return out

    def max_sigma(self) -> float:
        """Largest Gaussian width in mm over all tables (head scatter included)."""
        m = float(max(np.max(np.atleast_1d(s)) for t in self.kernel_sigmas for s in t))
        if self.head_scatter_weight > 0:
            m = float(np.sqrt(m**2 + self.head_scatter_sigma**2))
        return m

    def key(self) -> tuple:
        """A hashable description (used to cache the MU calibration)."""
        ks = tuple(
            tuple(tuple(np.round(np.atleast_1d(np.asarray(x, float)), 10)) for x in t)
            for t in list(self.kernel_sigmas) + list(self.kernel_weights)
        )
        return (self.name, self.betas, self.mu, self.sad, self.norm, tuple(self.kernel_ssds), ks,
                round(self.head_scatter_weight, 12), round(self.head_scatter_sigma, 10))


#: Parameters of the built-in generic 6 MV model: fitted by :func:`rtlab.dose.commission.fit_machine`
#: to ``rtlab/data/beam_data_6mv_representative.csv`` (BJR Supplement 25 PDDs, Varian TrueBeam 6X
#: representative output factors; fit table in ``docs/dose_engine.md``), rounded to 4 significant
#: digits. ``b_2, b_3`` are matRad's generic values; the primary width (5 mm FWHM) and the head-scatter
#: width (40 mm) are fixed choices, not fitted (the data hold no profiles; see the docs).
GENERIC_6MV = dict(
    betas=(0.2878, 0.016, 0.0051),
    mu=0.004700,
    sad=1000.0,
    sigmas=(5.0 * FWHM_TO_SIGMA, 16.13, 51.54),
    weights=(1.0, 0.1509, 0.4191),
    head_scatter=(0.1130, 40.0),
)

#: The previous generic model (hand-tuned Gaussians, no head scatter), kept for comparisons:
#: output factors 0.98 (3 x 3) to 1.001 (20 x 20) instead of a real beam's ~0.9 to ~1.05.
GENERIC_6MV_V1 = dict(
    betas=(0.3252, 0.016, 0.0051),
    mu=0.005066,
    sad=1000.0,
    sigmas=(5.0 * FWHM_TO_SIGMA, 12.0, 30.0),
    weights=(1.0, 0.25, 0.10),
    head_scatter=(0.0, 0.0),
)


def _generic(p, name) -> Machine:
    m = Machine(
        name=name,
        betas=p["betas"],
        mu=p["mu"],
        sad=p["sad"],
        kernel_sigmas=[[np.array([s]) for s in p["sigmas"]]],
        kernel_weights=[[np.array([w]) for w in p["weights"]]],
        kernel_ssds=(1000.0,),
        norm=1.0,
        penumbra_fwhm=5.0,
        head_scatter_weight=p["head_scatter"][0],
        head_scatter_sigma=p["head_scatter"][1],
    )
    # norm: unit fluence, 10x10 cm, SSD 1000 mm -> 1 Gy at d_max (closed form on the axis)
    d = np.arange(0.0, 60.0, 0.1)
    comp, sig, wt = m.gaussians(1000.0)
    c = wt * erf(50.0 / (np.sqrt(2) * sig)) ** 2
    dd = (m.depth_dose(d)[:, comp] * c).sum(-1) * (1000.0 / (1000.0 + d)) ** 2
    m.norm = float(1.0 / dd.max())
    return m


def generic_6mv(version: int = 2) -> Machine:
    """The built-in generic 6 MV SVD pencil-beam machine (see the module docstring).

    Parameters
    ----------
    version : int
        2 (default): commissioned to representative 6 MV beam data (:data:`GENERIC_6MV`, with
        head scatter); 1: the earlier hand-tuned model (:data:`GENERIC_6MV_V1`).

    Returns
    -------
    Machine
        SAD 1000 mm, one SSD-independent kernel table of three Gaussians (plus the head-scatter
        Gaussian of version 2), normalised to 1 Gy at d_max for a unit-fluence 10 x 10 cm field
        at SSD 1000 mm.
    """
    if version == 2:
        return _generic(GENERIC_6MV, "generic_6MV")
    if version == 1:
        return _generic(GENERIC_6MV_V1, "generic_6MV_v1")
    raise ValueError(f"version must be 1 or 2, got {version!r}")


# ----------------------------------------------------------------------------------------
# matRad machine files
# ----------------------------------------------------------------------------------------
#: matRad's / pyRadPlan's default kernel convolution grid (``intConvResolution``, mm).
MATRAD_CONV_MM = 0.5

#: Gaussians per tabulated kernel (besides the point mass) in :func:`fit_radial_kernels`.
KERNEL_FIT_GAUSSIANS = 4

#: Smallest ratio between neighbouring fitted widths (keeps the signed fit well conditioned:
#: no pair of nearly equal widths with large opposite weights).
_MIN_WIDTH_RATIO = 1.5


def _mass_radii(rmax: float) -> np.ndarray:
    """Radii (mm) at which encircled masses are compared: dense near the axis, 1 mm further out."""
    return np.unique(np.concatenate([np.geomspace(0.3, rmax, 120), np.arange(1.0, rmax, 1.0), [rmax]]))


def encircled_mass(pos, values, radii, conv_mm: float = MATRAD_CONV_MM) -> np.ndarray:
    """Mass of tabulated radial kernels inside radius ``R``, as matRad's convolution sees them.

    matRad (and pyRadPlan) sample a radial kernel ``k(r)`` (linear interpolation of the table,
    zero beyond its last entry) on a Cartesian grid of ``conv_mm`` spacing and weight each sample
    by ``conv_mm^2``; the sample at ``r = 0`` is therefore a **point mass** ``conv_mm^2 k(0)``
    (for matRad's generic 6 MV kernel 1 a spike of about 3.2 /mm^2, i.e. 0.80 of the 1.19 total),
    and the nearest other samples lie at ``r = conv_mm``. The continuous equivalent used here::

        M(R) = conv_mm^2 k(0) + 2 pi int_{r_c}^{R} k_c(r) r dr,   r_c = conv_mm / sqrt(pi)

    where ``r_c`` is the radius of the disc with the origin cell's area and ``k_c`` is the linear
    interpolation of the table with its first value replaced by the second (the origin cell's
    value is the point mass; the area up to the first grid ring carries the ring's value).

    Parameters
    ----------
    pos : (n,) array
        Table radii (mm), increasing, ``pos[0] = 0``.
    values : (n,) or (m, n) array
        Kernel values (1/mm^2), one kernel per row.
    radii : array
        Radii ``R`` (mm) to evaluate (``M = 0`` below ``r_c``).
    conv_mm : float
        Convolution grid spacing (mm).

    Returns
    -------
    ndarray, shape ``values.shape[:-1] + radii.shape``
    """
    pos = np.asarray(pos, float)
    k = np.atleast_2d(np.asarray(values, float))
    if pos.ndim != 1 or pos.size < 3 or pos[0] != 0 or np.any(np.diff(pos) <= 0):
        raise ValueError("kernel positions must be increasing and start at r = 0 (matRad's kernelPos)")
    R = np.asarray(radii, float)
    h = float(conv_mm)
    rc = h / np.sqrt(np.pi)
    step = min(np.diff(pos).min(), h) / 8.0
    rr = np.concatenate([[rc], np.arange(max(pos[1], rc), pos[-1] + 0.5 * step, step)])
    rr = np.unique(np.clip(rr, rc, pos[-1]))
    kc = k.copy()
    kc[:, 0] = kc[:, 1]
    # linear interpolation as a matrix (the same for every kernel of the table)
    j = np.clip(np.searchsorted(pos, rr, side="right") - 1, 0, pos.size - 2)
    a = (rr - pos[j]) / (pos[j + 1] - pos[j])
    P = np.zeros((rr.size, pos.size))
    P[np.arange(rr.size), j] = 1 - a
    P[np.arange(rr.size), j + 1] = a
    f = 2 * np.pi * (kc @ P.T) * rr  # (m, n_rr)
    cum = np.concatenate([np.zeros((k.shape[0], 1)), np.cumsum(0.5 * (f[:, 1:] + f[:, :-1]) * np.diff(rr), axis=1)],
                         axis=1)
    out = np.empty((k.shape[0],) + R.shape)
    for i in range(k.shape[0]):
        out[i] = np.where(R >= rc, h * h * k[i, 0] + np.interp(R, rr, cum[i]), 0.0)
    return out.reshape(np.shape(values)[:-1] + R.shape)


def gaussian_encircled_mass(sigmas, radii) -> np.ndarray:
    """``1 - exp(-R^2 / (2 s^2))``: mass of a normalised 2D Gaussian inside radius ``R``, shape ``(R, s)``."""
    R = np.asarray(radii, float)[..., None]
    s = np.asarray(sigmas, float)
    return -np.expm1(-(R**2) / (2 * s**2))


def _widths(x, n):
    """Ordered widths from unconstrained parameters: ``log s_k = x_0 + sum_{j<=k} (log 1.5 + x_j)``."""
    inc = np.concatenate([[x[0]], np.log(_MIN_WIDTH_RATIO) + np.asarray(x[1:n])])
    return np.exp(np.cumsum(inc))


def fit_radial_kernels(pos, tables, n_gauss: int = KERNEL_FIT_GAUSSIANS, conv_mm: float = MATRAD_CONV_MM):
    """Fit tabulated radial kernels by a point mass plus ``n_gauss`` Gaussians with signed weights.

    The point mass is matRad's origin sample, ``conv_mm^2 k(0)`` (kept exactly). The Gaussian
    weights ``c_k`` (any sign: matRad's kernel 2 is negative at the origin and beyond ~60 mm)
    minimise ``sum_R (M(R) - conv_mm^2 k(0) - sum_k c_k (1 - exp(-R^2 / 2 s_k^2)))^2`` over radii
    ``R`` from 0.3 mm to the end of the table (:func:`encircled_mass`), so the fitted kernel keeps
    the tabulated mass inside every radius (what a field of that size collects) and its total.
    The widths ``s_k`` (ordered, neighbours at least 1.5x apart) are shared by all tables and
    found by variable projection (``scipy.optimize.least_squares`` on the log-widths, weights by
    linear least squares) on up to five tables spread over the list; each table then gets its
    own linear weights.

    Parameters
    ----------
    pos : (n,) array
        Table radii (mm), ``pos[0] = 0``.
    tables : (m, n) array
        ``m`` kernels of one component (e.g. one per SSD), 1/mm^2.
    n_gauss : int
        Gaussians besides the point mass.
    conv_mm : float
        matRad's convolution grid (mm).

    Returns
    -------
    sigmas : (n_gauss,) array
        Shared widths (mm), without the primary penumbra.
    point : (m,) array
        Point mass of each table.
    weights : (m, n_gauss) array
        Gaussian weights of each table.
    max_error : (m,) array
        Largest ``|M_fit(R) - M(R)|`` of each table.
    """
    pos = np.asarray(pos, float)
    T = np.atleast_2d(np.asarray(tables, float))
    R = _mass_radii(float(pos[-1]))
    M = encircled_mass(pos, T, R, conv_mm)  # (m, nR)
    point = conv_mm**2 * T[:, 0]
    Y = M - point[:, None] * (R >= conv_mm / np.sqrt(np.pi))[None]
    n = int(n_gauss)
    if n < 1:
        raise ValueError(f"n_gauss must be >= 1, got {n_gauss!r}")
    pick = np.unique(np.linspace(0, T.shape[0] - 1, min(5, T.shape[0])).round().astype(int))
    Ysub = Y[pick].T  # (nR, p)
    scale = max(float(np.abs(Ysub).max()), 1e-30)

    def resid(x):
        B = gaussian_encircled_mass(_widths(x, n), R)
        c, *_ = np.linalg.lstsq(B, Ysub / scale, rcond=None)
        return (B @ c - Ysub / scale).ravel()

    lo = np.full(n, 0.0)
    lo[0] = np.log(0.2)
    hi = np.full(n, np.log(50.0))
    hi[0] = np.log(2 * float(pos[-1]))
    best = None
    for start in (np.geomspace(0.8, 0.4 * pos[-1], n), np.geomspace(2.0, 0.6 * pos[-1], n),
                  np.geomspace(0.5, 0.25 * pos[-1], n)):
        x0 = np.concatenate([[np.log(start[0])], np.maximum(np.diff(np.log(start)) - np.log(_MIN_WIDTH_RATIO), 1e-3)])
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        r = least_squares(resid, x0, bounds=(lo, hi), x_scale=1.0)
        if best is None or r.cost < best.cost:
            best = r
    s = _widths(best.x, n)
    B = gaussian_encircled_mass(s, R)
    W, *_ = np.linalg.lstsq(B, Y.T, rcond=None)  # (n, m)
    err = np.abs(B @ W - Y.T).max(axis=0)
    return s, point, W.T, err


def _fit_radial_kernel(pos, values, penumbra_sigma, n_gauss: int = KERNEL_FIT_GAUSSIANS):
    """One tabulated kernel -> ``(sigmas, weights)`` with the primary penumbra folded in.

    The point mass becomes a Gaussian of the penumbra's width (a delta convolved with the
    penumbra Gaussian); every other width ``s`` becomes ``sqrt(s^2 + penumbra_sigma^2)``
    (see :func:`fit_radial_kernels`).
    """
    s, point, w, _ = fit_radial_kernels(pos, np.asarray(values, float)[None], n_gauss)
    return _fold_penumbra(s, point[0], w[0], penumbra_sigma)


def _fold_penumbra(s, point, w, penumbra_sigma):
    ps = max(float(penumbra_sigma), 0.05)  # a bare point mass is kept as a 0.05 mm Gaussian
    sig = np.concatenate([[ps], np.sqrt(np.asarray(s, float) ** 2 + float(penumbra_sigma) ** 2)])
    wt = np.concatenate([[float(point)], np.asarray(w, float)])
    keep = wt != 0
    return sig[keep], wt[keep]


def _field(obj, name):
    if isinstance(obj, dict):
        if name not in obj:
            raise KeyError(name)
        return obj[name]
    if isinstance(obj, np.ndarray) and obj.dtype.names:
        if name not in obj.dtype.names:
            raise KeyError(name)
        v = obj[name]
        while isinstance(v, np.ndarray) and v.dtype == object and v.size == 1:
            v = v.flat[0]
        return v
    if hasattr(obj, name):
        return getattr(obj, name)
    raise KeyError(name)


def load_matrad_machine(path, n_gauss: int = KERNEL_FIT_GAUSSIANS) -> Machine:
    """Load a matRad photon machine file (``photons_<name>.mat``).

    Parameters
    ----------
    path : path-like
        A MATLAB ``.mat`` file holding a struct ``machine`` with ``meta`` (``SAD``, ``SCD``,
        ``name``) and ``data`` (``betas`` (1/mm), ``m`` (1/mm), ``kernelPos`` (mm),
        ``kernel`` (struct array with ``SSD``, ``kernel1``, ``kernel2``, ``kernel3``),
        ``penumbraFWHMatIso`` (mm)).

    Returns
    -------
    Machine
        Kernels fitted by sums of Gaussians (see module docstring); ``norm = 1`` so that
        the tabulated kernels keep matRad's absolute scale.

    Raises
    ------
    ValueError
        If the file is not a readable ``.mat`` or lacks a photon ``machine`` struct.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path {str(p)!r} does not exist; pass a matRad photon machine .mat file")
    try:
        mat = loadmat(str(p), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for non-mat files
        raise ValueError(f"path {str(p)!r} is not a readable MATLAB .mat file ({exc})") from None
    if "machine" not in mat:
        raise ValueError(f"{str(p)!r} has no 'machine' struct (variables: {[k for k in mat if not k.startswith('__')]}); "
                         "expected a matRad photon machine file")
    mach = mat["machine"]
    try:
        meta = _field(mach, "meta")
        data = _field(mach, "data")
        sad = float(_field(meta, "SAD"))
        betas = np.atleast_1d(np.asarray(_field(data, "betas"), float)).ravel()
        mu = float(_field(data, "m"))
        pos = np.atleast_1d(np.asarray(_field(data, "kernelPos"), float)).ravel()
        kern = np.atleast_1d(_field(data, "kernel"))
    except KeyError as exc:
        raise ValueError(f"{str(p)!r}: the machine struct lacks field {exc.args[0]!r}; "
                         "is this a matRad *photon* machine (protons/carbon are not supported)?") from None
    try:
        scd = float(_field(meta, "SCD"))
    except KeyError:
        scd = float("nan")
    try:
        fwhm = float(_field(data, "penumbraFWHMatIso"))
    except KeyError:
        fwhm = 0.0
    try:
        name = str(_field(meta, "name"))
    except KeyError:
        name = p.stem
    psig = fwhm * FWHM_TO_SIGMA
    ssds = [float(_field(kj, "SSD")) for kj in kern]
    if len(set(ssds)) != len(ssds):
        raise ValueError(f"{str(p)!r}: the kernel tables' SSDs are not unique")
    order = np.argsort(ssds)
    sig_t = [[None] * 3 for _ in kern]
    wt_t = [[None] * 3 for _ in kern]
    fit_err = np.zeros((len(kern), 3))
    for i in range(3):
        tab = []
        for kj in kern:
            vals = np.atleast_1d(np.asarray(_field(kj, f"kernel{i + 1}"), float)).ravel()
            if vals.shape != pos.shape:
                raise ValueError(f"{str(p)!r}: kernel{i + 1} has {vals.size} values but kernelPos has {pos.size}")
            tab.append(vals)
        s, point, w, err = fit_radial_kernels(pos, np.array(tab), n_gauss)
        fit_err[:, i] = err
        for j in range(len(kern)):
            sig_t[j][i], wt_t[j][i] = _fold_penumbra(s, point[j], w[j], psig)
    return Machine(
        name=name, betas=tuple(betas), mu=mu, sad=sad,
        kernel_sigmas=[sig_t[o] for o in order], kernel_weights=[wt_t[o] for o in order],
        kernel_ssds=tuple(np.asarray(ssds)[order].tolist()), norm=1.0, scd=scd, penumbra_fwhm=fwhm,
        meta={"source": str(p), "kernelPos": pos, "kernel_fit_max_mass_error": fit_err[order],
              "kernel_fit_gaussians": int(n_gauss), "conv_mm": MATRAD_CONV_MM},
    )
