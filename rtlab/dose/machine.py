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
Depth parameters are the published generic values ``b = (0.3252, 0.016, 0.0051) /mm``,
``mu = 0.005066 /mm`` (the matRad generic photon machine), SAD 1000 mm. The lateral kernels
are one Gaussian each; their widths and weights were chosen (by a small parameter scan of
the closed-form central-axis dose and profile, documented in ``docs/dose_engine.md``) so
that a 10 x 10 cm field at SSD 1000 mm in water behaves like a 6 MV beam:

* ``w_1``: primary, weight 1, sigma = 5 mm / 2.3548 = 2.123 mm (primary penumbra 5 mm
  FWHM at the isocentre plane);
* ``w_2``: near scatter, weight 0.25, sigma 12 mm;
* ``w_3``: far scatter, weight 0.10, sigma 30 mm.

The resulting closed-form properties (checked numerically by the engine in
``tests/test_dose_machine.py``): d_max about 14 mm, PDD(100 mm) about 67 %, 80-20 % penumbra
at 100 mm depth about 5 mm, output at d_max rising with field size (3 cm: 0.98, 20 cm: 1.001
relative to 10 cm; the generic ``b_i`` put little scatter at d_max, so the rise is smaller
than a real linac's, where head scatter adds to it). An overall factor ``norm`` makes a
10 x 10 cm field of unit fluence at SSD 1000 mm give about 1 Gy at d_max; absolute dose per
MU is set by :mod:`rtlab.dose.mu`.

matRad machines
---------------
:func:`load_matrad_machine` reads a matRad photon machine ``.mat`` (``machine.meta.SAD``,
``machine.meta.SCD``, ``machine.data.betas``, ``.m``, ``.kernelPos``, ``.kernel(j).SSD``,
``.kernel(j).kernel1..3``, ``.penumbraFWHMatIso``). Each tabulated radial kernel is fitted by
non-negative least squares (scipy.optimize.nnls) with a sum of Gaussians of fixed, log-spaced widths (0.5 ... 150 mm);
the primary penumbra (a Gaussian of the given FWHM, by which matRad convolves the fluence) is
folded in by adding its variance to each width. Kernels are stored per SSD; a beam uses the
table nearest to its SSD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.optimize import nnls
from scipy.special import erf

from .._util import check_positive

__all__ = ["Machine", "generic_6mv", "load_matrad_machine", "depth_components"]

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
            s = np.atleast_1d(np.asarray(self.kernel_sigmas[j][i], float))
            w = np.atleast_1d(np.asarray(self.kernel_weights[j][i], float))
            keep = w != 0
            comp += [i] * int(keep.sum())
            sig += s[keep].tolist()
            wt += (w[keep] * self.norm).tolist()
        return np.array(comp, np.int64), np.array(sig, np.float64), np.array(wt, np.float64)

    def lateral_kernel(self, r, component: int, ssd: float = 1000.0) -> np.ndarray:
        """Radial kernel ``w_i(r)`` in 1/mm^2 (without :attr:`norm`), for plots and tests."""
        j = self.table_index(ssd)
        r = np.asarray(r, float)
        out = np.zeros_like(r)
        for s, w in zip(np.atleast_1d(self.kernel_sigmas[j][component]), np.atleast_1d(self.kernel_weights[j][component])):
            out += w * np.exp(-(r**2) / (2 * s * s)) / (2 * np.pi * s * s)
        return out

    def max_sigma(self) -> float:
        """Largest Gaussian width in mm over all tables."""
        return float(max(np.max(np.atleast_1d(s)) for t in self.kernel_sigmas for s in t))

    def key(self) -> tuple:
        """A hashable description (used to cache the MU calibration)."""
        ks = tuple(
            tuple(tuple(np.round(np.atleast_1d(np.asarray(x, float)), 10)) for x in t)
            for t in list(self.kernel_sigmas) + list(self.kernel_weights)
        )
        return (self.name, self.betas, self.mu, self.sad, self.norm, tuple(self.kernel_ssds), ks)


#: Parameters of the built-in generic 6 MV model (see module docstring).
GENERIC_6MV = dict(
    betas=(0.3252, 0.016, 0.0051),
    mu=0.005066,
    sad=1000.0,
    sigmas=(5.0 * FWHM_TO_SIGMA, 12.0, 30.0),
    weights=(1.0, 0.25, 0.10),
)


def generic_6mv() -> Machine:
    """The built-in generic 6 MV SVD pencil-beam machine (see the module docstring).

    Returns
    -------
    Machine
        SAD 1000 mm, one SSD-independent kernel table of three Gaussians.
    """
    p = GENERIC_6MV
    m = Machine(
        name="generic_6MV",
        betas=p["betas"],
        mu=p["mu"],
        sad=p["sad"],
        kernel_sigmas=[[np.array([s]) for s in p["sigmas"]]],
        kernel_weights=[[np.array([w]) for w in p["weights"]]],
        kernel_ssds=(1000.0,),
        norm=1.0,
        penumbra_fwhm=5.0,
    )
    # norm: unit fluence, 10x10 cm, SSD 1000 mm -> 1 Gy at d_max (closed form on the axis)
    d = np.arange(0.0, 60.0, 0.1)
    c = np.array([erf(50.0 / (np.sqrt(2) * s)) ** 2 for s in p["sigmas"]])
    dd = (m.depth_dose(d) * np.asarray(p["weights"]) * c).sum(-1) * (1000.0 / (1000.0 + d)) ** 2
    m.norm = float(1.0 / dd.max())
    return m


# ----------------------------------------------------------------------------------------
# matRad machine files
# ----------------------------------------------------------------------------------------
_FIT_SIGMAS = np.geomspace(0.5, 150.0, 14)


def _fit_radial_kernel(pos, values, penumbra_sigma):
    """Least-squares fit of a tabulated radial kernel by a sum of 2D Gaussians.

    Non-negative weights (kernels with negative lobes are approximated by their non-negative
    best fit). The weights ``c_k`` minimise ``sum_r r (k(r) - sum_k c_k g_k(r))^2`` (the ``r`` factor
    weights by area), so that the fitted kernel reproduces the tabulated integral
    ``2 pi int k(r) r dr``. Returns ``(sigmas, weights)`` with the penumbra Gaussian folded in.
    """
    r = np.asarray(pos, float)
    k = np.asarray(values, float)
    keep = r >= 0
    r, k = r[keep], k[keep]
    s = _FIT_SIGMAS[_FIT_SIGMAS < max(r.max(), 1.0)]
    if s.size == 0:
        s = _FIT_SIGMAS[:1]
    g = np.exp(-(r[:, None] ** 2) / (2 * s**2)) / (2 * np.pi * s**2)
    wr = np.sqrt(np.maximum(r, np.diff(r).mean() if r.size > 1 else 1.0))
    sc = np.abs(k).max() or 1.0
    c, _ = nnls(g * wr[:, None] / sc, k * wr / sc)
    sig = np.sqrt(s**2 + penumbra_sigma**2)
    keep = np.abs(c) > 1e-12 * np.abs(c).max() if np.any(c) else np.ones_like(c, bool)
    return sig[keep], c[keep]


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


def load_matrad_machine(path) -> Machine:
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
    ssds, sig_t, wt_t = [], [], []
    for kj in kern:
        ssds.append(float(_field(kj, "SSD")))
        sigs, wts = [], []
        for i in range(3):
            vals = np.atleast_1d(np.asarray(_field(kj, f"kernel{i + 1}"), float)).ravel()
            if vals.shape != pos.shape:
                raise ValueError(f"{str(p)!r}: kernel{i + 1} has {vals.size} values but kernelPos has {pos.size}")
            s, w = _fit_radial_kernel(pos, vals, psig)
            sigs.append(s)
            wts.append(w)
        sig_t.append(sigs)
        wt_t.append(wts)
    order = np.argsort(ssds)
    return Machine(
        name=name, betas=tuple(betas), mu=mu, sad=sad,
        kernel_sigmas=[sig_t[o] for o in order], kernel_weights=[wt_t[o] for o in order],
        kernel_ssds=tuple(np.asarray(ssds)[order].tolist()), norm=1.0, scd=scd, penumbra_fwhm=fwhm,
        meta={"source": str(p), "kernelPos": pos},
    )
