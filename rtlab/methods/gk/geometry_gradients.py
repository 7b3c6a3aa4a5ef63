"""Linac geometry gradients: dose and objective derivatives w.r.t. isocentre and gantry angle (patent 002).

Patent 002 (eq. 1 and the "radiation parameters Psi" list) optimises treatment parameters with
the derivative of the dose calculation with respect to them, including the **isocentre
position** and the **incidence angles**. This module gives those derivatives for the photon
pencil-beam engine of :mod:`rtlab.dose` and uses them to refine beam orientations.

Engine dose of one beam with fixed beamlet weights ``x`` (bixels fixed in the beam's frame,
:mod:`rtlab.dose.kernels`)::

    D(P) = (SAD/t)^2 sum_g c_g D_{k(g)}(d(P)) sum_j x_j Fu_g(u - u_j) Fv_g(v - v_j)
    Fu_g(a) = Phi((a + h/2)/s_g) - Phi((a - h/2)/s_g)

with ``u = SAD (P - S).e_u / t``, ``v = SAD (P - S).e_v / t``, ``t = (P - S).e_b`` and the
source ``S = iso - SAD e_b`` (:mod:`rtlab.core.beams`).

Isocentre (analytic, :func:`dose_iso_gradient`)
-----------------------------------------------
Moving the isocentre by ``delta`` with the fluence fixed translates source and collimator:
``u(P; iso + delta) = u(P - delta; iso)``, likewise ``v`` and ``t``. By the chain rule::

    dD/d(iso) = -(dD/du grad_P u + dD/dv grad_P v) + (2 D / t) e_b
    grad_P u = (SAD e_u - u e_b) / t,   grad_P v = (SAD e_v - v e_b) / t
    dD/du = (SAD/t)^2 sum_g c_g D_k(d) sum_j x_j Fu_g'(u - u_j) Fv_g(v - v_j),
    Fu_g'(a) = (phi((a + h/2)/s_g) - phi((a - h/2)/s_g)) / s_g

(``phi`` the standard normal density: the derivative of the error-function difference).

What is left out, and why. (a) The radiological depth ``d`` of a voxel depends only on the
source and the voxel; moving the source by ``delta`` pivots the ray about the voxel by
``|delta_perp| / L`` (``L`` about SAD = 1000 mm), which changes ``d`` by about
``d tan(incidence) delta / SAD``: with ``dD/dd ~ 0.5 % / mm`` this is ``~1e-5 D`` per mm, below
``1e-4`` of the largest gradient (measured on a water box at gantry 30; an earlier draft of this
module integrated the pivot term along each ray and it changed no printed digit). (b) The
lateral kernel is chosen from the beam's SSD table (a step function of the SSD) and entries
beyond ``cutoff_mm`` are dropped: both make the engine's dose piecewise, not smooth, in the
isocentre; the analytic derivative is that of the smooth model between those steps. Like the
engine (:mod:`rtlab.dose.broad`), only the Gaussians narrower than ``broad_sigma_mm`` are cut
off; the broad ones reach every voxel within the engine's reach. (c) The
engine's depth is interpolated in a fan of rays (spacing one voxel) and along them; where the
depth dose is steep (the build-up, depth < 5 mm) that interpolation makes the engine's
finite differences noisy at sub-voxel steps. The tests therefore compare the analytic gradient
with central differences of the engine (rebuilding the beam's influence columns at
``iso +- h``) beyond the build-up, with a cut-off large enough to hold the whole kernel.

Gantry angle (analytic, :func:`dose_gantry_gradient`; finite differences, :func:`objective_angle_gradient`)
---------------------------------------------------------------------------------------------------------
A gantry turn by ``theta`` rotates the source and the collimator frame about the gantry axis
``a`` through the isocentre (``a = R_c(couch) e_z``, :func:`gantry_axis`; ``de/dtheta = a x e``).
The source moves 17 mm per degree at SAD 1000 mm, so the depth change is not small here::

    dD/dtheta = g_iso . (a x (P - iso))                       (projection and inverse square)
              + dD/dd * int_0^L grad rho(P + s r) . (s/L) dS_perp ds     (radiological depth)

``g_iso`` is the isocentre gradient above (the projection of ``P`` turns as if ``P`` moved by
``-a x (P - iso)``), ``dS = a x (S - iso)`` the source's velocity, ``r`` the unit vector from
``P`` to the source, ``L = |S - P|``, ``dS_perp`` the part of ``dS`` across the ray (the ray
pivots about ``P``), ``dD/dd`` from the derivative of the Bortfeld depth components
``b/(b - mu) (-mu exp(-mu d) + b exp(-b d))``. The ray integral runs on the density's
central-difference gradient (trilinear, zero outside the grid) with a step of half a voxel.
Against central differences of the engine (tests): water box 0.6 % (gantry 0) and 4.8 %
(gantry 30) of the largest derivative beyond the build-up; sphere phantom (air around a round
body) 4.4 % beyond 10 mm depth, rms 5.1 % against 6.6 % without the depth term. Nearer the
curved surface the engine's fan look-up makes its own differences noisy.

:func:`objective_angle_gradient` still takes the objective's angle derivative by central
differences of the engine (the beam's influence columns rebuilt at ``gantry +- h`` with the same
bixels). With the fluence re-optimised at every angle, the objective's derivative at the optimum
equals this fixed-fluence derivative (envelope / Danskin theorem), which is what
:func:`refine_beam_angles` uses: it alternates fluence re-optimisation
(:func:`rtlab.methods.beam_angles.optimise_beams`, L-BFGS-B) with a projected gradient step on
the angles (patent 002, eq. 1), with backtracking.

Units: positions mm ``(z, y, x)``, angles degrees, dose Gy; objective gradients are per mm
or per degree.

Size: about 700 lines: the isocentre and gantry derivatives share one pass over the lateral
Gaussians (:func:`_lateral_sums`) and are checked against the same engine differences, and the
angle refinement that uses them sits beside them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import ndtr

from ...core.beams import Beam
from ...dose import build_influence
from ...dose.broad import BROAD_REACH_SIGMAS, DEFAULT_BROAD_SIGMA_MM, auto_cutoff_mm, split_gaussians
from ...dose.machine import generic_6mv
from ...dose.voxels import beam_voxels, select_voxels
from ...evaluate.metrics import dose_at_volume, paddick_ci
from .. import beam_angles as ba

__all__ = [
    "shifted_beam",
    "engine_beam_dose",
    "IsoGradient",
    "dose_iso_gradient",
    "GantryGradient",
    "gantry_axis",
    "dose_gantry_gradient",
    "dose_geometry_fd",
    "objective_iso_gradient",
    "objective_angle_gradient",
    "AngleRefinement",
    "refine_beam_angles",
]

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
_PARAMS = ("z", "y", "x", "gantry")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _check_beam(beam) -> Beam:
    if not isinstance(beam, Beam):
        raise TypeError(f"beam must be an rtlab.core.beams.Beam, got {type(beam).__name__}")
    if beam.bixels is None:
        raise ValueError("beam has no bixel grid; fit one first (rtlab.dose.prepare_beams or rtlab.core.beams.fit_bixel_grid)")
    return beam


def _weights(beam: Beam, weights) -> np.ndarray:
    w = np.asarray(weights, np.float64).ravel()
    if w.size != beam.bixels.n:
        raise ValueError(f"weights has {w.size} entries, the beam has {beam.bixels.n} bixels")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or inf")
    return w


def _voxel_mask(case, voxels) -> np.ndarray:
    _, mask, _ = select_voxels(case, case.grid, voxels)
    return mask


def shifted_beam(beam: Beam, iso_shift=(0.0, 0.0, 0.0), d_gantry: float = 0.0) -> Beam:
    """The same beam (same bixels, i.e. the same fluence) with its isocentre moved and gantry turned.

    Parameters
    ----------
    beam : Beam
    iso_shift : 3 floats
        ``(dz, dy, dx)`` in mm.
    d_gantry : float
        Gantry change in degrees.
    """
    beam = _check_beam(beam)
    s = np.asarray(iso_shift, float).ravel()
    if s.shape != (3,) or not np.all(np.isfinite(s)):
        raise ValueError(f"iso_shift must be three finite numbers (dz, dy, dx) in mm, got {iso_shift!r}")
    if not np.isfinite(d_gantry):
        raise ValueError(f"d_gantry must be a finite angle in degrees, got {d_gantry!r}")
    return replace(beam, isocenter=tuple((np.asarray(beam.isocenter) + s).tolist()),
                   gantry=float(beam.gantry) + float(d_gantry))


def engine_beam_dose(case, beam: Beam, weights, machine=None, voxels="body", cutoff_mm: float | None = None,
                     broad_sigma_mm: float | None = DEFAULT_BROAD_SIGMA_MM) -> np.ndarray:
    """Dose (Gy) of one beam at the selected voxels, from the numba influence engine.

    Builds the beam's influence columns (:func:`rtlab.dose.build_influence`, CPU kernels, CT grid)
    and multiplies by ``weights``. Rows follow the selected voxels in flat C order (the same rows
    as an influence matrix built with the same ``voxels``).
    """
    beam = _check_beam(beam)
    w = _weights(beam, weights)
    im = build_influence(case, [beam], machine, cutoff_mm=cutoff_mm, voxels=voxels, progress=False, gpu=False,
                         broad_sigma_mm=broad_sigma_mm)
    return im.matvec(w)


# ---------------------------------------------------------------------------------------------
# analytic isocentre gradient
# ---------------------------------------------------------------------------------------------
@dataclass
class IsoGradient:
    """Dose of one beam and its analytic derivative with respect to the isocentre.

    Attributes
    ----------
    dose : ndarray (n,)
        Gy at the selected voxels (same model as the engine, exact ``Phi``).
    grad : ndarray (n, 3)
        ``dD/d(iso)`` in Gy/mm, components ``(z, y, x)``.
    voxel_index : ndarray (n,)
        Flat CT-grid index of each row.
    depth : ndarray (n,)
        Radiological depth (mm) of each voxel for this beam (NaN where the beam does not reach).
    """

    dose: np.ndarray
    grad: np.ndarray
    voxel_index: np.ndarray
    depth: np.ndarray


def _lateral_sums(case, beam, w, machine, voxels, cutoff_mm, chunk, broad_sigma_mm, want_depth):
    """Dose ``D`` and its partial sums ``dD/du``, ``dD/dv`` (and ``dD/d depth`` if ``want_depth``) per voxel."""
    if cutoff_mm is None:
        cutoff_mm = auto_cutoff_mm(machine, beam.bixel_mm, broad_sigma_mm)
    if not (np.isfinite(cutoff_mm) and cutoff_mm > 0):
        raise ValueError(f"cutoff_mm must be a positive distance in mm, got {cutoff_mm!r}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive number of voxels, got {chunk!r}")
    vidx, _, _ = select_voxels(case, case.grid, voxels)
    pts = case.grid.index_to_world(np.stack(np.unravel_index(vidx, case.grid.shape), axis=1)).astype(np.float64)
    widest = max((float(s[split_gaussians(s, broad_sigma_mm)].max()) for s in
                  (machine.gaussians(x)[1] for x in machine.kernel_ssds) if split_gaussians(s, broad_sigma_mm).any()),
                 default=0.0)
    bv = beam_voxels(case, beam, machine, pts, max(cutoff_mm, BROAD_REACH_SIGMAS * widest))
    comp, sig, cw = machine.gaussians(bv.ssd)
    broad = split_gaussians(sig, broad_sigma_mm)
    centers = beam.bixels.centers()  # (m, 2) (v, u)
    vc, uc = centers[:, 0], centers[:, 1]
    h = beam.bixel_mm
    n = len(vidx)
    D = np.zeros(n)
    Du = np.zeros(n)
    Dv = np.zeros(n)
    Dd = np.zeros(n) if want_depth else None
    wd = _depth_factor_derivative(bv, beam, machine) if want_depth else None
    ok = np.flatnonzero(np.isfinite(bv.u))
    cut2 = float(cutoff_mm) ** 2
    for a in range(0, ok.size, int(chunk)):
        ii = ok[a:a + int(chunk)]
        du = bv.u[ii][:, None] - uc[None]
        dv = bv.v[ii][:, None] - vc[None]
        keep_n = (du * du + dv * dv) <= cut2
        for k, s, c, is_broad in zip(comp, sig, cw, broad):
            keep = True if is_broad else keep_n
            ap, am = (du + h / 2) / s, (du - h / 2) / s
            bp, bm = (dv + h / 2) / s, (dv - h / 2) / s
            fu = ndtr(ap) - ndtr(am)
            fv = ndtr(bp) - ndtr(bm)
            gu = (np.exp(-0.5 * ap * ap) - np.exp(-0.5 * am * am)) * (_INV_SQRT_2PI / s)
            gv = (np.exp(-0.5 * bp * bp) - np.exp(-0.5 * bm * bm)) * (_INV_SQRT_2PI / s)
            lat = np.where(keep, fu * fv, 0.0) @ w
            f = c * bv.w[ii, k]
            D[ii] += f * lat
            Du[ii] += f * (np.where(keep, gu * fv, 0.0) @ w)
            Dv[ii] += f * (np.where(keep, fu * gv, 0.0) @ w)
            if want_depth:
                Dd[ii] += c * wd[ii, k] * lat
    return vidx, bv, ok, D, Du, Dv, Dd


def _depth_factor_derivative(bv, beam, machine):
    """``d/dd [(SAD/t)^2 D_k(d)]`` per voxel and depth component (Bortfeld 1993; 0 at d <= 0)."""
    d = np.where(np.isfinite(bv.depth), np.maximum(bv.depth, 0.0), 0.0)[:, None]
    b = np.asarray(machine.betas, float)[None]
    mu = float(machine.mu)
    with np.errstate(invalid="ignore", divide="ignore"):
        isq = np.where(np.isfinite(bv.t) & (bv.t > 0), (beam.sad / bv.t) ** 2, 0.0)[:, None]
    x = b - mu
    safe = np.abs(x) > 1e-12
    xs = np.where(safe, x, 1.0)
    der = np.where(safe, b / xs * (-mu * np.exp(-mu * d) + b * np.exp(-b * d)), b * np.exp(-mu * d) * (1.0 - mu * d))
    return np.where(bv.depth[:, None] > 0, der * isq, 0.0)


def dose_iso_gradient(case, beam: Beam, weights, machine=None, voxels="body", cutoff_mm: float | None = None,
                      chunk: int = 4096, broad_sigma_mm: float | None = DEFAULT_BROAD_SIGMA_MM) -> IsoGradient:
    """Analytic ``dD/d(iso)`` of one beam with its fluence fixed (patent 002, eq. 10 for the linac model).

    Implements the chain rule of the module docstring: ``-(dD/du grad_P u + dD/dv grad_P v) +
    (2 D / t) e_b`` with ``dD/du`` from the derivative of the error-function difference. The
    lateral factors and their derivatives are evaluated densely in numpy (``chunk`` voxels at a
    time); projection, radiological depth and depth factors come from the engine's
    :func:`rtlab.dose.influence.beam_voxels`. Entries of the narrow Gaussians beyond the lateral
    cut-off are dropped as in the engine; the broad ones (``sigma >= broad_sigma_mm``) are not.

    Parameters
    ----------
    case : rtlab.core.case.Case
    beam : Beam
        With bixels.
    weights : array_like (n_bixels,)
        Fluence per bixel.
    machine : rtlab.dose.Machine, optional
    voxels : 'body', 'all' or bool mask on the CT grid
    cutoff_mm : float, optional
        Lateral cut-off (mm) of the narrow Gaussians; default the engine's automatic one
        (:func:`rtlab.dose.broad.auto_cutoff_mm`).
    chunk : int
        Voxels per dense block (memory ``chunk * n_bixels * 8`` bytes per array).
    broad_sigma_mm : float or None
        As :func:`rtlab.dose.build_influence` (None: every Gaussian is cut off).

    Returns
    -------
    IsoGradient
    """
    beam = _check_beam(beam)
    w = _weights(beam, weights)
    machine = generic_6mv() if machine is None else machine
    vidx, bv, ok, D, Du, Dv, _ = _lateral_sums(case, beam, w, machine, voxels, cutoff_mm, chunk, broad_sigma_mm, False)
    n = len(vidx)
    eu, ev, eb = beam.frame()
    grad = np.zeros((n, 3))
    t = bv.t[ok][:, None]
    gu_p = (beam.sad * eu[None] - bv.u[ok][:, None] * eb[None]) / t
    gv_p = (beam.sad * ev[None] - bv.v[ok][:, None] * eb[None]) / t
    grad[ok] = -(Du[ok][:, None] * gu_p + Dv[ok][:, None] * gv_p) + (2.0 * D[ok] / bv.t[ok])[:, None] * eb[None]
    return IsoGradient(D, grad, vidx, np.asarray(bv.depth, float))


@dataclass
class GantryGradient:
    """Dose of one beam and its analytic derivative with respect to the gantry angle (fluence fixed).

    Attributes
    ----------
    dose : ndarray (n,)
        Gy at the selected voxels.
    grad : ndarray (n,)
        ``dD/d(gantry)`` in Gy/degree.
    geometric, depth_term : ndarray (n,)
        Its two parts: the rotation of the projection and inverse square, and the change of the
        radiological depth (Gy/degree).
    voxel_index, depth : ndarray (n,)
        As :class:`IsoGradient`.
    """

    dose: np.ndarray
    grad: np.ndarray
    geometric: np.ndarray
    depth_term: np.ndarray
    voxel_index: np.ndarray
    depth: np.ndarray


def gantry_axis(beam: Beam) -> np.ndarray:
    """Unit gantry rotation axis ``(z, y, x)`` in patient coordinates: ``R_c(couch) e_z`` (``rtlab.core.beams``).

    ``d e / d(theta) = a x e`` for every frame vector ``e`` of the beam (theta in radians).
    """
    p = np.deg2rad(float(beam.couch))
    a_xyz = np.array([np.sin(p), 0.0, np.cos(p)])  # R_c(phi) @ (0, 0, 1)
    return a_xyz[::-1].copy()


def _depth_derivative(case, points, source, dsource, step_mm):
    """``d(depth)/d(source)`` along ``dsource``: ``int_0^L grad rho(P + s r) . (s/L) dS_perp ds`` (mm per unit)."""
    rho = np.pad(np.asarray(case.density, float), 1)  # zero outside the grid
    sp = np.asarray(case.grid.spacing, float)
    grads = np.gradient(rho, *sp)
    origin = np.asarray(case.grid.origin, float) - sp  # of the padded grid
    ext = np.asarray(case.grid.shape) * sp
    P = np.asarray(points, float)
    r = source[None] - P
    L = np.linalg.norm(r, axis=1)
    rh = r / L[:, None]
    dperp = dsource[None] - (rh @ dsource)[:, None] * rh
    # the ray leaves the (padded) grid within its diagonal
    smax = float(np.linalg.norm(ext + 2 * sp))
    n_s = int(np.ceil(smax / step_mm))
    out = np.zeros(P.shape[0])
    for j in range(n_s):
        sj = (j + 0.5) * step_mm
        x = P + sj * rh
        idx = ((x - origin) / sp).T
        g = np.stack([ndimage.map_coordinates(gr, idx, order=1, mode="constant", cval=0.0) for gr in grads], axis=1)
        inside = sj < L
        out += np.where(inside, np.einsum("ni,ni->n", g, dperp) * (sj / L), 0.0) * step_mm
    return out


def dose_gantry_gradient(case, beam: Beam, weights, machine=None, voxels="body", cutoff_mm: float | None = None,
                         chunk: int = 4096, broad_sigma_mm: float | None = DEFAULT_BROAD_SIGMA_MM,
                         step_mm: float | None = None) -> GantryGradient:
    """Analytic ``dD/d(gantry)`` of one beam with its fluence fixed (patent 002: derivative w.r.t. the incidence angle).

    A gantry turn by ``theta`` rotates source and collimator frame about the gantry axis ``a``
    through the isocentre (:func:`gantry_axis`). Two parts (module docstring):

    * geometric: the projection ``(u, v, t)`` of voxel ``P`` turns as if ``P`` moved by
      ``-a x (P - iso)``; with the isocentre gradient ``g_iso = -grad_P D`` (depth fixed) this is
      ``g_iso . (a x (P - iso))``;
    * depth: the source moves by ``dS = a x (S - iso)``, pivoting the ray about ``P``; the
      radiological depth changes by ``int_0^L grad rho(P + s r) . (s / L) dS_perp ds`` (``r`` the
      unit vector to the source, ``L = |S - P|``, ``dS_perp`` the part across the ray), summed with
      a trapezoid rule of ``step_mm`` on the density's central-difference gradient (trilinear);
      times ``dD/d depth`` from the derivative of the Bortfeld depth components.

    Both per radian, returned per degree. Parameters as :func:`dose_iso_gradient`; ``step_mm``
    (default half the smallest voxel) is the ray step of the depth integral.
    """
    beam = _check_beam(beam)
    w = _weights(beam, weights)
    machine = generic_6mv() if machine is None else machine
    if step_mm is None:
        step_mm = 0.5 * min(case.grid.spacing)
    if not (np.isfinite(step_mm) and step_mm > 0):
        raise ValueError(f"step_mm must be a positive distance in mm, got {step_mm!r}")
    vidx, bv, ok, D, Du, Dv, Dd = _lateral_sums(case, beam, w, machine, voxels, cutoff_mm, chunk, broad_sigma_mm, True)
    n = len(vidx)
    eu, ev, eb = beam.frame()
    iso = np.asarray(beam.isocenter, float)
    a = gantry_axis(beam)
    pts = case.grid.index_to_world(np.stack(np.unravel_index(vidx[ok], case.grid.shape), axis=1)).astype(np.float64)
    t = bv.t[ok][:, None]
    gu_p = (beam.sad * eu[None] - bv.u[ok][:, None] * eb[None]) / t
    gv_p = (beam.sad * ev[None] - bv.v[ok][:, None] * eb[None]) / t
    g_iso = -(Du[ok][:, None] * gu_p + Dv[ok][:, None] * gv_p) + (2.0 * D[ok] / bv.t[ok])[:, None] * eb[None]
    geo = np.zeros(n)
    dep = np.zeros(n)
    # a x v in (z, y, x) storage: the reversed component order is left-handed, so np.cross flips sign
    geo[ok] = np.einsum("ni,ni->n", g_iso, -np.cross(a[None], pts - iso[None]))
    S = beam.source
    dS = -np.cross(a, S - iso)
    dep[ok] = Dd[ok] * _depth_derivative(case, pts, S, dS, float(step_mm))
    per_deg = np.pi / 180.0
    return GantryGradient(D, (geo + dep) * per_deg, geo * per_deg, dep * per_deg, vidx, np.asarray(bv.depth, float))


# ---------------------------------------------------------------------------------------------
# finite differences through the engine
# ---------------------------------------------------------------------------------------------
def dose_geometry_fd(case, beam: Beam, weights, param: str, h: float | None = None, machine=None, voxels="body",
                     cutoff_mm: float | None = None) -> np.ndarray:
    """Central difference ``dD/dp`` of one beam's engine dose (fluence fixed).

    Parameters
    ----------
    param : {'z', 'y', 'x', 'gantry'}
        Isocentre component (mm) or gantry angle (deg).
    h : float, optional
        Step (default 0.5 mm or 1 deg).

    Returns
    -------
    ndarray (n,)
        Gy/mm or Gy/deg at the selected voxels.
    """
    if param not in _PARAMS:
        raise ValueError(f"param must be one of {_PARAMS}, got {param!r}")
    if h is None:
        h = 1.0 if param == "gantry" else 0.5
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive step, got {h!r}")

    def at(sign):
        if param == "gantry":
            b = shifted_beam(beam, d_gantry=sign * h)
        else:
            s = np.zeros(3)
            s[_PARAMS.index(param)] = sign * h
            b = shifted_beam(beam, iso_shift=s)
        return engine_beam_dose(case, b, weights, machine, voxels, cutoff_mm)

    return (at(+1) - at(-1)) / (2.0 * h)


def _split(beams, weights):
    beams = [_check_beam(b) for b in beams]
    w = np.asarray(weights, float).ravel()
    n = sum(b.bixels.n for b in beams)
    if w.size != n:
        raise ValueError(f"weights has {w.size} entries, the beams have {n} bixels in all")
    out, i = [], 0
    for b in beams:
        out.append(w[i:i + b.bixels.n])
        i += b.bixels.n
    return beams, out


def objective_iso_gradient(case, beams, weights, objective, machine=None, voxels="body", cutoff_mm: float | None = None,
                           method: str = "analytic", h: float = 0.5):
    """Objective value and its gradient w.r.t. the common isocentre of ``beams`` (fluence fixed).

    ``dF/d(iso) = sum_b sum_i dF/dD_i dD_{b,i}/d(iso)``; ``dF/dD`` from
    ``objective.value_and_gradient`` on the engine dose, ``dD/d(iso)`` analytic
    (:func:`dose_iso_gradient`) or by central differences (``method='fd'``, step ``h`` mm).

    Parameters
    ----------
    beams : sequence of Beam
        With bixels; moved together (one isocentre).
    weights : array_like
        Concatenated bixel weights.
    objective : rtlab.optimize.Objective
        Rows index the selected voxels (flat C order of ``voxels``).

    Returns
    -------
    (float, ndarray (3,))
        Value and ``(dF/dz, dF/dy, dF/dx)`` per mm.
    """
    if method not in ("analytic", "fd"):
        raise ValueError(f"method must be 'analytic' or 'fd', got {method!r}")
    beams, ws = _split(beams, weights)
    doses = [engine_beam_dose(case, b, w, machine, voxels, cutoff_mm) for b, w in zip(beams, ws)]
    f, g = objective.value_and_gradient(np.sum(doses, axis=0))
    grad = np.zeros(3)
    if method == "analytic":
        for b, w in zip(beams, ws):
            grad += g @ dose_iso_gradient(case, b, w, machine, voxels, cutoff_mm).grad
    else:
        for a in range(3):
            s = np.zeros(3)
            s[a] = h
            fp = objective.value(sum(engine_beam_dose(case, shifted_beam(b, s), w, machine, voxels, cutoff_mm)
                                     for b, w in zip(beams, ws)))
            fm = objective.value(sum(engine_beam_dose(case, shifted_beam(b, -s), w, machine, voxels, cutoff_mm)
                                     for b, w in zip(beams, ws)))
            grad[a] = (fp - fm) / (2 * h)
    return float(f), grad


def objective_angle_gradient(case, beams, weights, objective, machine=None, voxels="body", cutoff_mm: float | None = None,
                             h: float = 1.0, doses=None):
    """Objective value and its derivative w.r.t. each beam's gantry angle (fluence fixed; central differences).

    For beam ``b``: ``(F(D - D_b + D_b(g_b + h)) - F(D - D_b + D_b(g_b - h))) / 2h``, the beam's
    dose rebuilt by the engine at the perturbed angle with the same bixels.

    Parameters
    ----------
    h : float
        Step in degrees.
    doses : list of ndarray, optional
        Per-beam engine doses at the current angles (computed when omitted).

    Returns
    -------
    (float, ndarray (n_beams,))
        Value and ``dF/d(gantry_b)`` per degree.
    """
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a positive angle step in degrees, got {h!r}")
    beams, ws = _split(beams, weights)
    if doses is None:
        doses = [engine_beam_dose(case, b, w, machine, voxels, cutoff_mm) for b, w in zip(beams, ws)]
    total = np.sum(doses, axis=0)
    f = objective.value(total)
    grad = np.zeros(len(beams))
    for k, (b, w) in enumerate(zip(beams, ws)):
        rest = total - doses[k]
        fp = objective.value(rest + engine_beam_dose(case, shifted_beam(b, d_gantry=h), w, machine, voxels, cutoff_mm))
        fm = objective.value(rest + engine_beam_dose(case, shifted_beam(b, d_gantry=-h), w, machine, voxels, cutoff_mm))
        grad[k] = (fp - fm) / (2 * h)
    return float(f), grad


# ---------------------------------------------------------------------------------------------
# beam-orientation refinement
# ---------------------------------------------------------------------------------------------
@dataclass
class AngleRefinement:
    """Result of :func:`refine_beam_angles`.

    Attributes
    ----------
    angles0, angles : ndarray
        Start and final gantry angles (deg).
    objective0, objective : float
        Re-optimised objective at the start and at the end.
    ci0, ci : float
        Paddick CI of the first target at its prescription (plan normalised to D95 = rx).
    history : list of dict
        One row per outer iteration: ``iteration``, ``angles``, ``objective``, ``ci``,
        ``grad`` (per degree), ``step_deg`` (largest angle change tried), ``backtracks``,
        ``accepted``, ``seconds``.
    weights : ndarray
        Final beamlet weights.
    beams : list of Beam
        Final beams (with bixels).
    """

    angles0: np.ndarray
    angles: np.ndarray
    objective0: float
    objective: float
    ci0: float
    ci: float
    history: list = field(default_factory=list)
    weights: np.ndarray | None = None
    beams: list | None = None
    seconds: float = 0.0

    def table(self):
        """The history as a pandas DataFrame (angles rounded to 0.1 deg)."""
        rows = []
        for r in self.history:
            rows.append({"iteration": r["iteration"], "objective": r["objective"], "ci_paddick": r["ci"],
                         "angles_deg": " ".join(f"{a:.1f}" for a in r["angles"]),
                         "max_step_deg": r["step_deg"], "backtracks": r["backtracks"]})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """Before/after numbers."""
        return {"objective_before": self.objective0, "objective_after": self.objective,
                "ci_before": self.ci0, "ci_after": self.ci,
                "angles_before": [float(a) for a in self.angles0], "angles_after": [float(a) for a in self.angles],
                "iterations": len(self.history) - 1, "seconds": self.seconds}


def _ci(case, im, x, target):
    rx = float(target.prescription if target.prescription is not None else case.prescription)
    d = im.dose(x, on="ct")
    d95 = float(dose_at_volume(d, target, pct=95))
    if d95 <= 0:
        return 0.0
    return float(paddick_ci(d * (rx / d95), target, rx=rx, body=case.structures.body))


def refine_beam_angles(case, angles, *, kind: str = "quadratic", n_iter: int = 6, max_step_deg: float = 10.0,
                       min_step_deg: float = 0.5, fd_step_deg: float = 1.0, fluence_iter: int = 60,
                       margin_mm: float = 15.0, cutoff_mm: float = 25.0, bixel_mm: float = 5.0, armijo: float = 1e-4,
                       max_backtracks: int = 3, machine=None, objective=None, callback=None) -> AngleRefinement:
    """Refine coplanar gantry angles by alternating fluence optimisation and angle gradient steps (patent 002, eq. 1).

    Each outer iteration: (1) at the current angles, fit the bixels to the target, build the
    influence matrix on the planning voxels (:func:`rtlab.methods.beam_angles.planning_voxels`)
    and optimise the fluence (L-BFGS-B, ``fluence_iter`` iterations, cold start from the open-field
    plan so every evaluation is the same procedure); (2) the objective's derivative w.r.t. each
    angle at that fluence (:func:`objective_angle_gradient`, central differences, ``fd_step_deg``;
    by the envelope theorem also the derivative of the re-optimised objective); (3) a step
    ``Delta = -s g / max|g|`` (largest change ``s`` degrees, starting at ``max_step_deg``), the
    fluence re-optimised at the new angles, accepted if
    ``F_new <= F - armijo * (-g . Delta)``; else ``s`` is halved (backtracking, at most
    ``max_backtracks`` times). The next iteration starts from the last accepted ``s`` (doubled,
    capped at ``max_step_deg``). Stops after ``n_iter`` iterations or when ``s < min_step_deg``.

    Parameters
    ----------
    case : rtlab.core.case.Case
        With a target (and optionally organs at risk and goals).
    angles : sequence of float
        Start gantry angles (deg), e.g. equispaced.
    kind : {'quadratic', 'conformity'}
        Objective of :func:`rtlab.methods.beam_angles.default_objective` (ignored if
        ``objective`` is given: a callable ``objective(case, im) -> Objective``).
    callback : callable, optional
        ``callback(row)`` with each history row.

    Returns
    -------
    AngleRefinement
    """
    ang = np.asarray(angles, float).ravel()
    if ang.size < 1 or not np.all(np.isfinite(ang)):
        raise ValueError(f"angles must be finite gantry angles in degrees, got {angles!r}")
    if int(n_iter) < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter!r}")
    for nm, v in (("max_step_deg", max_step_deg), ("min_step_deg", min_step_deg), ("fd_step_deg", fd_step_deg)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{nm} must be a positive number of degrees, got {v!r}")
    targets = [t for t in case.structures.targets if t.mask.any()]
    if not targets:
        raise ValueError("case has no non-empty target")
    target = targets[0]
    vox = ba.planning_voxels(case, margin_mm)
    t_start = time.perf_counter()
    iso = tuple(case.isocenter())

    def evaluate(a):
        im = build_influence(case, [Beam(float(g) % 360.0, 0.0, iso, bixel_mm) for g in a], machine,
                             cutoff_mm=cutoff_mm, voxels=vox, progress=False, bixel_mm=bixel_mm, gpu=False)
        obj = objective(case, im) if objective is not None else ba.default_objective(case, im, kind)
        x, _ = ba.optimise_beams(im, obj, max_iter=fluence_iter)
        return dict(im=im, obj=obj, x=x, f=float(obj.value(im.matvec(x))))

    cur = evaluate(ang)
    ci0 = _ci(case, cur["im"], cur["x"], target)
    hist = [dict(iteration=0, angles=ang.copy(), objective=cur["f"], ci=ci0, grad=None, step_deg=0.0,
                 backtracks=0, accepted=True, seconds=time.perf_counter() - t_start)]
    if callback is not None:
        callback(hist[-1])
    f0 = cur["f"]
    s = float(max_step_deg)
    for it in range(1, int(n_iter) + 1):
        im = cur["im"]
        doses = im.beam_dose_vectors(cur["x"])
        _, g = objective_angle_gradient(case, im.beams, cur["x"], cur["obj"], machine, vox, cutoff_mm,
                                        h=fd_step_deg, doses=doses)
        gmax = float(np.max(np.abs(g)))
        if gmax == 0.0:
            break
        accepted, nb = False, 0
        while s >= min_step_deg:
            delta = -s * g / gmax
            trial = evaluate(ang + delta)
            if trial["f"] <= cur["f"] - armijo * float(-(g @ delta)):
                accepted = True
                break
            s *= 0.5
            nb += 1
            if nb > max_backtracks:
                break
        if accepted:
            ang = ang + delta
            cur = trial
        row = dict(iteration=it, angles=ang.copy(), objective=cur["f"],
                   ci=_ci(case, cur["im"], cur["x"], target) if accepted else hist[-1]["ci"], grad=g.copy(),
                   step_deg=s if accepted else 0.0, backtracks=nb, accepted=accepted,
                   seconds=time.perf_counter() - t_start)
        hist.append(row)
        if callback is not None:
            callback(row)
        if not accepted:
            break
        s = min(2.0 * s, float(max_step_deg))
    return AngleRefinement(angles0=np.asarray(angles, float).ravel(), angles=ang, objective0=f0, objective=cur["f"],
                           ci0=ci0, ci=hist[-1]["ci"], history=hist, weights=cur["x"], beams=list(cur["im"].beams),
                           seconds=time.perf_counter() - t_start)
