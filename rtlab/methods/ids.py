"""Interactive dose shaping: dose modification and recovery (seed 004, Ziegenhein et al. 2016).

The planner asks for a local dose feature (one voxel to a new dose, an isodose line dragged on
a slice, an isodose surface region moved in 3D); the *modification* module adds a fluence patch
to every beam that imposes it (Algorithm 1, eqs 1-3) and the *recovery* module then restores
the dose of the voxels the patch disturbed, furthest from the request first ("close in",
section 2.3), with the same patch rule.

Dose engine
-----------
The SVD pencil beam of :mod:`rtlab.dose` (seed 004 eqs 4-5) on fine fluence maps, with the
same node-grid convolution as :class:`rtlab.dose.FluenceDose` (coordinate-space separable
convolution per Gaussian on "sparse control points", bilinear interpolation). The state of a
session is the fluence maps and the node grids ``C_g`` of every beam; a patch changes ``C_g``
only near the patch (exact, by linearity). Voxel doses are derived from ``C_g``:

* the *tracked* voxels (targets and organs at risk, plus the voxels of the current request)
  are updated after every modification / recovery step, touching only the voxels whose
  projection lies on the changed nodes;
* the full dose cube is evaluated from the node grids when asked for (:attr:`IDSSession.dose`,
  cached), e.g. once at the end of a request.

Nothing is truncated or approximated by this split: every number equals a full recompute of
the fluence (tested against :class:`rtlab.dose.FluenceDose` to 1e-5 relative).

Definitions used here (where the paper leaves a choice, ours)
-------------------------------------------------------------
* Control points ``s(x, y)``: the beam's bixels (5 mm, i.e. 5 x 5 fluence amplitudes of 1 mm).
* ``TPI^{T,O}(b, s) = sum_{i in V^{T,O}(b, s)} D_1(l(i))`` (eq 1): target / OAR voxels whose
  centre projects into control point ``s`` of beam ``b``, ``D_1`` the first (primary) depth
  component of the machine at the voxel's radiological depth.
* ``A(b, x, y) = K(x, y) exp(-mu TPI(b, s_xy))`` (eq 2), ``K`` the lateral kernel ``w_2`` (the
  machine's second component, a Gaussian of width ``kernel_sigma_mm``) centred on the
  projection of the voxel, truncated at ``patch_sigmas`` widths; ``mu = ln 2 / mean_b
  TPI(b, s_b(i))`` (eq 3: the mean over beams of the TPI at the voxel's own control point gets
  weight 0.5). Lowering a dose uses ``TPI^T`` (spare the target), raising it ``TPI^O``.
* Scale (Algorithm 1, line 12): the paper prints ``f = |dt - d0| / |dt - d1|``. Dose is linear
  in fluence, so we use by default the exact linear solve ``f = (dt - d0) / (d1 - d0)``
  (``scale='linear'``); ``scale='paper'`` uses the printed formula (with the sign of
  ``dt - d0``). Both agree when the unit patch achieves half the change. Fluence is kept
  non-negative: clipped patches are re-solved (at most ``max_clip_iter`` times).
* Recovery: goal of a tracked voxel = its dose before the request (request voxels: the
  requested dose). Disturbed: target voxels with ``|d - goal| > tol``, OAR voxels with
  ``d - goal > tol`` (a colder OAR is welcome: the cold spot may grow, as in the paper's
  figure 7), request voxels with ``|d - dt| > request_tol`` (the allowed compromise). Each
  step picks, among the disturbed voxels within ``band_mm`` of the largest distance (Euclidean
  distance transform from the request voxels), the one with the largest deviation, and
  restores it with one patch.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numba as nb
import numpy as np
from scipy.special import ndtr

from .._util import check_positive, is_int
from ..dose.influence import beam_voxels
from ..dose.machine import Machine, generic_6mv
from ..core.beams import Beam, BixelGrid, fit_bixel_grid, prepare_beams
from ..dose.plan import Plan

__all__ = ["IDSSession", "IDSEvent", "IDSResult", "tpi_maps", "isodose_contours", "reproduce_paper", "plot_isodose_panels",
           "rasterize_polyline"]


# ---------------------------------------------------------------------------------------------
# numba kernels (pure-numpy references in tests/test_ids.py)
# ---------------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _conv_box(psi, row0, col0, kern, mk, stride, moff, nr_lo, nr_hi, nc_lo, nc_hi, out):
    """Node values of ``kern (x) kern`` convolved with a patch ``psi`` placed at pixel (row0, col0).

    Node ``k`` sits on pixel ``k * stride - moff``; ``out[jr, jc]`` is node (nr_lo + jr,
    nc_lo + jc) (seed 004 eq 5 in coordinate space, restricted to the patch).
    """
    npr, npc = psi.shape
    ncol = nc_hi - nc_lo
    tmp = np.zeros((npr, ncol))
    for pr in range(npr):
        for jc in range(ncol):
            pix = (nc_lo + jc) * stride - moff - col0
            lo = max(0, pix - mk)
            hi = min(npc, pix + mk + 1)
            acc = 0.0
            for pc in range(lo, hi):
                acc += psi[pr, pc] * kern[pix - pc + mk]
            tmp[pr, jc] = acc
    for jr in range(nr_hi - nr_lo):
        pix = (nr_lo + jr) * stride - moff - row0
        lo = max(0, pix - mk)
        hi = min(npr, pix + mk + 1)
        for jc in range(ncol):
            acc = 0.0
            for pr in range(lo, hi):
                acc += kern[pix - pr + mk] * tmp[pr, jc]
            out[jr, jc] = acc


@nb.njit(cache=True, inline="always")
def _bilin(C, off, nr, nc, x, y):
    """Bilinear value of the node grid ``C[off: off + nr*nc]`` (row-major) at (row y, col x); 0 outside."""
    ix = int(math.floor(x))
    iy = int(math.floor(y))
    ax = x - ix
    ay = y - iy
    acc = 0.0
    for dy in range(2):
        r = iy + dy
        if r < 0 or r >= nr:
            continue
        wy = ay if dy == 1 else 1.0 - ay
        for dx in range(2):
            c = ix + dx
            if c < 0 or c >= nc:
                continue
            wx = ax if dx == 1 else 1.0 - ax
            acc += wy * wx * C[off + r * nc + c]
    return acc


@nb.njit(cache=True, inline="always")
def _voxel_value(k, PU, PV, W, C, off, r_lo, c_lo, nr, nc, stride, moff, comp, coef):
    """Dose (or dose change) of voxel ``k`` from node grids ``C`` of every (beam, Gaussian).

    Grid ``(b, g)`` covers node rows ``r_lo..r_lo+nr`` and cols ``c_lo..c_lo+nc`` (``nr = 0``:
    skip). ``PU, PV`` are the voxels' fluence-pixel coordinates per beam (NaN: out of reach),
    ``W`` the depth factors ``(SAD/t)^2 D_i(d)`` per beam and component. Seed 004 eq 4.
    """
    nb_, ng = off.shape
    acc = 0.0
    for b in range(nb_):
        pu = PU[k, b]
        if pu != pu:
            continue
        pv = PV[k, b]
        for g in range(ng):
            if nr[b, g] == 0:
                continue
            s = stride[b, g]
            x = (pu + moff[b, g]) / s - c_lo[b, g]
            y = (pv + moff[b, g]) / s - r_lo[b, g]
            if x <= -1.0 or y <= -1.0 or x >= nc[b, g] or y >= nr[b, g]:
                continue
            acc += coef[b, g] * W[k, b, comp[b, g]] * _bilin(C, off[b, g], nr[b, g], nc[b, g], x, y)
    return acc


@nb.njit(cache=True)
def _eval_serial(idx, PU, PV, W, C, off, r_lo, c_lo, nr, nc, stride, moff, comp, coef, out, add):
    """:func:`_voxel_value` of voxels ``idx`` into ``out`` (added when ``add``)."""
    for j in range(idx.size):
        acc = _voxel_value(idx[j], PU, PV, W, C, off, r_lo, c_lo, nr, nc, stride, moff, comp, coef)
        if add:
            out[j] += acc
        else:
            out[j] = acc


@nb.njit(cache=True, parallel=True)
def _eval_parallel(idx, PU, PV, W, C, off, r_lo, c_lo, nr, nc, stride, moff, comp, coef, out, add):
    """Parallel version of :func:`_eval_serial` (tracked-voxel updates and the full dose cube)."""
    for j in nb.prange(idx.size):
        acc = _voxel_value(idx[j], PU, PV, W, C, off, r_lo, c_lo, nr, nc, stride, moff, comp, coef)
        if add:
            out[j] += acc
        else:
            out[j] = acc


@nb.njit(cache=True)
def _add_boxes(C, off, nc_full, dC, doff, r_lo, c_lo, nr, nc, factor):
    """``C[b, g][box] += factor * dC[b, g]`` for every (beam, Gaussian) box (``nr = 0``: none)."""
    nb_, ng = off.shape
    for b in range(nb_):
        for g in range(ng):
            for r in range(nr[b, g]):
                base = off[b, g] + (r_lo[b, g] + r) * nc_full[b, g] + c_lo[b, g]
                dbase = doff[b, g] + r * nc[b, g]
                for c in range(nc[b, g]):
                    C[base + c] += factor * dC[dbase + c]


@nb.njit(cache=True)
def _node_matrix(PU, PV, W, off, nr, nc, stride, moff, comp, coef, count_only, colptr, rows, vals):
    """CSC matrix (node -> voxel dose) of the bilinear interpolation of every (beam, Gaussian) grid.

    Column = global node index (``off[b, g] + row * nc + col``), row = voxel; value =
    ``coef * W * bilinear weight`` (seed 004 eq 4). Two passes: ``count_only`` fills
    ``colptr[col + 1]`` with counts; the second pass fills ``rows``/``vals`` (``colptr`` holds
    the running write positions and is shifted back by the caller).
    """
    n, nb_ = PU.shape
    ng = off.shape[1]
    for k in range(n):
        for b in range(nb_):
            pu = PU[k, b]
            if pu != pu:
                continue
            pv = PV[k, b]
            for g in range(ng):
                s = stride[b, g]
                x = (pu + moff[b, g]) / s
                y = (pv + moff[b, g]) / s
                ix = int(math.floor(x))
                iy = int(math.floor(y))
                ax = x - ix
                ay = y - iy
                cw = coef[b, g] * W[k, b, comp[b, g]]
                for dy in range(2):
                    r = iy + dy
                    if r < 0 or r >= nr[b, g]:
                        continue
                    wy = ay if dy == 1 else 1.0 - ay
                    for dx in range(2):
                        c = ix + dx
                        if c < 0 or c >= nc[b, g]:
                            continue
                        wx = ax if dx == 1 else 1.0 - ax
                        col = off[b, g] + r * nc[b, g] + c
                        if count_only:
                            colptr[col + 1] += 1
                        else:
                            e = colptr[col]
                            rows[e] = k
                            vals[e] = cw * wy * wx
                            colptr[col] = e + 1


@nb.njit(cache=True)
def _csc_update(colptr, rows, vals, off, nc_full, dC, doff, r_lo, c_lo, nr, nc, out):
    """``out += M[:, changed nodes] @ dC`` for the node boxes of a patch (tracked-voxel update)."""
    nb_, ng = off.shape
    for b in range(nb_):
        for g in range(ng):
            for r in range(nr[b, g]):
                base = off[b, g] + (r_lo[b, g] + r) * nc_full[b, g] + c_lo[b, g]
                dbase = doff[b, g] + r * nc[b, g]
                for c in range(nc[b, g]):
                    v = dC[dbase + c]
                    if v == 0.0:
                        continue
                    col = base + c
                    for e in range(colptr[col], colptr[col + 1]):
                        out[rows[e]] += vals[e] * v


# ---------------------------------------------------------------------------------------------
@dataclass
class IDSEvent:
    """What a session reports to its callbacks after every modification / recovery step.

    Attributes
    ----------
    kind : str
        ``'request'``, ``'recovery'``, ``'recovery_done'``, ``'undo'``, ``'redo'``, ``'reset'``.
    step : int
        Recovery step number (1-based) within the current :meth:`IDSSession.recover` call, else 0.
    n_steps : int
        Steps requested in that call.
    voxel : tuple or None
        ``(z, y, x)`` index of the voxel the step acted on.
    goal_gy, dose_gy : float
        Wanted and achieved dose of that voxel (Gy).
    n_disturbed : int
        Tracked voxels still disturbed after the step.
    disturbance_gy : float
        Sum of ``|dose - goal|`` over the disturbed voxels (Gy).
    """

    kind: str
    step: int = 0
    n_steps: int = 0
    voxel: tuple | None = None
    goal_gy: float = float("nan")
    dose_gy: float = float("nan")
    n_disturbed: int = 0
    disturbance_gy: float = 0.0


@dataclass
class IDSResult:
    """A plan-like result that :func:`rtlab.compare.score` accepts (``.dose`` Gy, ``.mu``, ``.grid``)."""

    dose: np.ndarray
    mu: np.ndarray
    grid: object
    fluence: list = field(default_factory=list)


class _State:
    """Everything undo/redo must restore (copied arrays)."""

    def __init__(self, fluence, C, d_trk, req):
        self.fluence = [f.copy() for f in fluence]
        self.C = C.copy()
        self.d_trk = d_trk.copy()
        self.req = copy.deepcopy(req)


class IDSSession:
    """An interactive dose shaping session (seed 004): requests, recovery, undo/redo.

    Parameters
    ----------
    case : rtlab.case.Case
        Needs at least one target; organs at risk are the structures of kind ``'oar'``.
    beams : sequence of gantry angles, BeamSpec or Beam, optional
        Default ``case.gantry_angles()`` (or 9 equispaced beams). Fluence maps cover the
        targets' beam's-eye view plus ``map_margin_mm``.
    machine : Machine, optional
        Default :func:`rtlab.dose.generic_6mv`.
    fluence_mm : float
        Fluence amplitude size (mm, isocentre plane); ``bixel_mm`` must be a multiple. Default 1.
    bixel_mm : float
        Control-point size (mm); each control point holds ``(bixel_mm / fluence_mm)^2``
        amplitudes (seed 004: 5 x 5). Default 5.
    map_margin_mm : float
        Fluence-map margin around the targets' projection (mm), room for recovery patches.
    field_margin_mm : float
        Margin of the initial open fields around the targets' projection (mm).
    reference_gy : float, optional
        100 % dose (Gy); default ``case.prescription`` (or 1).
    normalize : {'median', 'mean'}
        The initial open fields are scaled so that this target statistic is ``reference_gy``.
    kernel_sigma_mm : float or 'w2'
        Width of the lateral kernel ``K`` in mm; ``'w2'`` (default, as the paper) takes the
        machine's second component (12 mm for :func:`rtlab.dose.generic_6mv`).
        :func:`reproduce_paper` uses 3 mm, see ``docs/methods/ids.md`` for why.
    patch_sigmas : float
        Patch half-width in units of ``kernel_sigma_mm`` (default 2).
    recovery_steps : int
        Default number of recovery steps after a request (seed 004: 15-30; default 25).
    tol_pct, request_tol_pct : float
        Disturbance thresholds (% of ``reference_gy``) of tracked voxels and request voxels.
    band_mm : float
        Width of the outermost distance band the next recovery voxel is chosen from (mm).
    significance : float
        Only disturbed voxels whose deviation is at least this fraction of the largest one
        are candidates (so that the close-in order is not spent on negligible far-scatter
        changes). 0 gives the pure close-in order.
    scale : {'linear', 'paper'}
        Patch scale rule (see module docstring).
    support_sigmas : float
        Convolution kernel truncation in widths (as :class:`rtlab.dose.FluenceDose`).
    lazy_sigma_mm : float or None
        Kernel Gaussians at least this wide (the generic machine's 30 mm far scatter) update
        the node grids at every step but the tracked-voxel doses only at the end of a request
        / recovery call (``sync``); recovery choices in between see the tracked doses without
        that part of the change (measured: :attr:`last_lazy_error_gy`). ``None``: every
        step updates everything. The node grids, :attr:`dose` and the final tracked doses are
        exact either way.
    callback : callable, optional
        Called with an :class:`IDSEvent` after every step (see :meth:`add_callback`).
    """

    def __init__(self, case, beams=None, machine: Machine | None = None, *, fluence_mm: float = 1.0,
                 bixel_mm: float = 5.0, map_margin_mm: float = 15.0, field_margin_mm: float = 10.0,
                 reference_gy: float | None = None, normalize: str = "median", kernel_sigma_mm="w2",
                 patch_sigmas: float = 2.0, recovery_steps: int = 25, tol_pct: float = 1.0,
                 request_tol_pct: float = 2.0, band_mm: float = 10.0, significance: float = 0.5, scale: str = "linear",
                 support_sigmas: float = 4.0, max_clip_iter: int = 3, lazy_sigma_mm: float | None = 20.0,
                 callback: Callable | None = None):
        t_setup = time.perf_counter()
        self.case = case
        self.machine = generic_6mv() if machine is None else machine
        (fluence_mm, bixel_mm, patch_sigmas, support_sigmas) = check_positive(
            "fluence_mm/bixel_mm/patch_sigmas/support_sigmas", [fluence_mm, bixel_mm, patch_sigmas, support_sigmas])
        sub = bixel_mm / fluence_mm
        if abs(sub - round(sub)) > 1e-6:
            raise ValueError(f"bixel_mm={bixel_mm} must be a multiple of fluence_mm={fluence_mm}")
        if scale not in ("linear", "paper"):
            raise ValueError(f"scale must be 'linear' or 'paper', got {scale!r}")
        if normalize not in ("median", "mean"):
            raise ValueError(f"normalize must be 'median' or 'mean', got {normalize!r}")
        for nm, v in (("map_margin_mm", map_margin_mm), ("field_margin_mm", field_margin_mm), ("tol_pct", tol_pct),
                      ("request_tol_pct", request_tol_pct), ("band_mm", band_mm)):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{nm} must be a finite number >= 0, got {v!r}")
        self.sub = int(round(sub))
        self.fluence_mm = float(fluence_mm)
        self.scale = scale
        self.patch_sigmas = float(patch_sigmas)
        self.recovery_steps = self._check_steps(recovery_steps)
        self.max_clip_iter = int(max_clip_iter)
        self.band_mm = float(band_mm)
        if not 0 <= significance <= 1:
            raise ValueError(f"significance must lie in [0, 1], got {significance!r}")
        self.significance = float(significance)
        self._callbacks: list[Callable] = [] if callback is None else [callback]

        grid = case.grid
        self.grid = grid
        tmask = np.zeros(grid.shape, bool)
        for s in case.structures.targets:
            tmask |= s.mask
        if not tmask.any():
            raise ValueError("case has no (non-empty) target structure; IDS needs a target to fill with dose")
        omask = np.zeros(grid.shape, bool)
        for s in case.structures.oars:
            omask |= s.mask
        omask &= ~tmask
        body = case.structures.body_mask().astype(bool) | tmask | omask
        self.target_mask, self.oar_mask, self.body_mask = tmask, omask, body
        self.reference_gy = float(reference_gy if reference_gy is not None else (case.prescription or 1.0))
        check_positive("reference_gy", self.reference_gy)
        self.tol = tol_pct / 100.0 * self.reference_gy
        self.request_tol = request_tol_pct / 100.0 * self.reference_gy

        # beams with full rectangular maps covering the targets' BEV + margin
        if beams is None:
            beams = case.gantry_angles() or list(np.arange(9) * 40.0)
        margin_bix = int(math.ceil(map_margin_mm / bixel_mm))
        pre = prepare_beams(case, beams, bixel_mm=bixel_mm, margin=0)
        self.beams = []
        for bm in pre:
            bx = fit_bixel_grid(Beam(bm.gantry, bm.couch, bm.isocenter, bixel_mm, bm.sad), grid, tmask, 0)
            nr, nc = bx.shape
            full = BixelGrid(bixel_mm, bx.r0 - margin_bix, bx.c0 - margin_bix,
                             np.ones((nr + 2 * margin_bix, nc + 2 * margin_bix), bool))
            self.beams.append(Beam(bm.gantry, bm.couch, bm.isocenter, bixel_mm, bm.sad, full))
        B = len(self.beams)

        # voxel geometry per beam (body voxels)
        self.vox = np.flatnonzero(body.ravel()).astype(np.int64)
        self._pos = np.full(grid.size, -1, np.int64)
        self._pos[self.vox] = np.arange(self.vox.size)
        pts = grid.index_to_world(np.stack(np.unravel_index(self.vox, grid.shape), axis=1))
        comp0, sig0, _ = self.machine.gaussians(1000.0)
        support = support_sigmas * float(sig0.max())
        N = self.vox.size
        self._PU = np.full((N, B), np.nan, np.float32)
        self._PV = np.full((N, B), np.nan, np.float32)
        self._W = np.zeros((N, B, 3), np.float32)
        trk_mask = (tmask | omask).ravel()[self.vox]
        self._trk = np.flatnonzero(trk_mask).astype(np.int64)  # positions into self.vox
        self._depth = np.full((self._trk.size, B), np.nan, np.float32)  # tracked voxels only
        self.map_shape, self._p0 = [], []
        gparams = []
        f = self.fluence_mm
        for b, bm in enumerate(self.beams):
            vmin, vmax, umin, umax = bm.bixels.extent_mm()
            pu0, pv0 = umin + f / 2, vmin + f / 2
            self._p0.append((pv0, pu0))
            self.map_shape.append((bm.bixels.shape[0] * self.sub, bm.bixels.shape[1] * self.sub))
            bv = beam_voxels(case, bm, self.machine, pts, support + f)
            ok = np.isfinite(bv.u)
            self._PU[ok, b] = (bv.u[ok] - pu0) / f
            self._PV[ok, b] = (bv.v[ok] - pv0) / f
            self._W[:, b, :] = bv.w
            self._depth[:, b] = bv.depth[self._trk]
            comp, sig, wt = self.machine.gaussians(bv.ssd)
            gparams.append((comp, sig, wt))
        G = max(len(p[0]) for p in gparams)
        self._comp = np.zeros((B, G), np.int64)
        self._coef = np.zeros((B, G))
        self._stride = np.ones((B, G), np.int64)
        self._moff = np.zeros((B, G), np.int64)
        self._mk = np.zeros((B, G), np.int64)
        self._nr = np.zeros((B, G), np.int64)
        self._nc = np.zeros((B, G), np.int64)
        self._off = np.zeros((B, G), np.int64)
        self._kern = {}
        tot = 0
        for b, (comp, sig, wt) in enumerate(gparams):
            R, Cc = self.map_shape[b]
            for g, (k, s, c) in enumerate(zip(comp, sig, wt)):
                stride = max(1, int(np.floor(s / (4 * f))))
                mk = int(np.ceil(support_sigmas * s / f))
                m = np.arange(-mk, mk + 1) * f
                self._kern[b, g] = ndtr((m + f / 2) / s) - ndtr((m - f / 2) / s)
                moff = int(np.ceil(mk / stride)) * stride
                nr = (R - 1 + 2 * moff) // stride + 1
                nc = (Cc - 1 + 2 * moff) // stride + 1
                self._comp[b, g], self._coef[b, g], self._stride[b, g] = k, c, stride
                self._mk[b, g], self._moff[b, g], self._nr[b, g], self._nc[b, g] = mk, moff, nr, nc
                self._off[b, g] = tot
                tot += nr * nc
        self._C = np.zeros(tot)
        sig_bg = np.array([[gparams[b][1][g] if g < len(gparams[b][1]) else 0.0 for g in range(G)] for b in range(B)])
        self._lazy = (sig_bg >= lazy_sigma_mm) if lazy_sigma_mm is not None else np.zeros((B, G), bool)
        self._pending = np.zeros(tot)
        self.last_lazy_error_gy = 0.0
        self._zeros_lo = np.zeros((B, G), np.int64)
        # lateral kernel K (seed 004: from w_2)
        if isinstance(kernel_sigma_mm, str):
            if kernel_sigma_mm != "w2":
                raise ValueError(f"kernel_sigma_mm must be a width in mm or 'w2', got {kernel_sigma_mm!r}")
            j = self.machine.table_index(1000.0)
            s2 = np.atleast_1d(self.machine.kernel_sigmas[j][1])
            w2 = np.atleast_1d(self.machine.kernel_weights[j][1])
            kernel_sigma_mm = float(np.sqrt(np.sum(w2 * s2**2) / np.sum(w2)))
        (self.kernel_sigma_mm,) = check_positive("kernel_sigma_mm", kernel_sigma_mm)

        # tracked voxels: targets and OARs
        # compact copies for the per-step update (memory locality)
        self._PUt = np.ascontiguousarray(self._PU[self._trk])
        self._PVt = np.ascontiguousarray(self._PV[self._trk])
        self._Wt = np.ascontiguousarray(self._W[self._trk])
        self._trk_ar = np.arange(self._trk.size, dtype=np.int64)
        ncol = int(self._C.size)
        colptr = np.zeros(ncol + 1, np.int64)
        e32 = np.zeros(0, np.int32)
        f32 = np.zeros(0, np.float32)
        _node_matrix(self._PUt, self._PVt, self._Wt, self._off, self._nr, self._nc, self._stride, self._moff,
                     self._comp, self._coef, True, colptr, e32, f32)
        colptr = np.cumsum(colptr)
        rows = np.zeros(colptr[-1], np.int32)
        vals = np.zeros(colptr[-1], np.float32)
        wpos = colptr[:-1].copy()
        wpos = np.concatenate([wpos, colptr[-1:]])
        _node_matrix(self._PUt, self._PVt, self._Wt, self._off, self._nr, self._nc, self._stride, self._moff,
                     self._comp, self._coef, False, wpos, rows, vals)
        self._csc = (colptr, rows, vals)
        self._d1 = self.machine.depth_dose(np.nan_to_num(self._depth))[..., 0].astype(np.float32)  # D_1(l), eq 1
        self._d1[~np.isfinite(self._depth)] = 0.0
        self._trk_is_t = tmask.ravel()[self.vox[self._trk]]
        self._trk_world = grid.index_to_world(np.stack(np.unravel_index(self.vox[self._trk], grid.shape), axis=1))
        self.setup_s = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        self.tpi_t, self.tpi_o = tpi_maps(self)
        self.tpi_ms = (time.perf_counter() - t0) * 1e3
        self.distance_ms = float("nan")

        # initial open fields, normalised
        self.fluence = [np.zeros(s) for s in self.map_shape]
        self._open_fields(field_margin_mm)
        self._recompute_nodes()
        self.d_trk = np.zeros(self._trk.size)
        self._eval_tracked()
        dt = self.d_trk[self._trk_is_t]
        stat = np.median(dt) if normalize == "median" else np.mean(dt)
        if not stat > 0:
            raise ValueError("the open fields give no target dose; check the beams and the case geometry")
        k = self.reference_gy / stat
        self.fluence = [fl * k for fl in self.fluence]
        self._C *= k
        self.d_trk *= k
        self._req = None
        self._cube = None
        self._history = [_State(self.fluence, self._C, self.d_trk, self._req)]
        self._hpos = 0
        self.timings: dict[str, list] = {"step_ms": [], "step_cpu_ms": [], "request_ms": []}

    # -------------------------------------------------------------------------------------------
    @staticmethod
    def _check_steps(n):
        if not is_int(n) or n < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n!r}")
        return int(n)

    @property
    def n_beams(self) -> int:
        return len(self.beams)

    def add_callback(self, fn: Callable) -> None:
        """Register ``fn(event: IDSEvent)``, called after every step (for widgets to redraw)."""
        if not callable(fn):
            raise TypeError(f"callback must be callable, got {type(fn).__name__}")
        self._callbacks.append(fn)

    def _emit(self, ev: IDSEvent) -> None:
        for fn in self._callbacks:
            fn(ev)

    def _open_fields(self, margin_mm):
        from scipy.ndimage import binary_dilation, binary_fill_holes

        f = self.fluence_mm
        tpos = self._pos[np.flatnonzero(self.target_mask.ravel())]
        for b in range(self.n_beams):
            R, Cc = self.map_shape[b]
            pu, pv = self._PU[tpos, b], self._PV[tpos, b]
            ok = np.isfinite(pu)
            r = np.rint(pv[ok]).astype(np.int64)
            c = np.rint(pu[ok]).astype(np.int64)
            keep = (r >= 0) & (r < R) & (c >= 0) & (c < Cc)
            m = np.zeros((R, Cc), bool)
            m[r[keep], c[keep]] = True
            rad = max(self.grid.spacing) / 2 / f + margin_mm / f  # voxel half-size + margin
            n = int(math.ceil(rad))
            yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
            m = binary_fill_holes(binary_dilation(m, structure=(yy**2 + xx**2) <= rad**2))
            self.fluence[b] = m.astype(float)

    # -- node grids and voxel evaluation -------------------------------------------------------
    def _recompute_nodes(self):
        for b in range(self.n_beams):
            psi = np.ascontiguousarray(self.fluence[b])
            for g in range(self._comp.shape[1]):
                nr, nc = self._nr[b, g], self._nc[b, g]
                if nr == 0:
                    continue
                out = np.empty((nr, nc))
                _conv_box(psi, 0, 0, self._kern[b, g], self._mk[b, g], self._stride[b, g], self._moff[b, g],
                          0, nr, 0, nc, out)
                o = self._off[b, g]
                self._C[o : o + nr * nc] = out.ravel()

    def _eval(self, pos, C=None, boxes=None, out=None, add=False):
        """Dose at body positions ``pos`` from the node grids (or a patch's node boxes)."""
        pos = np.ascontiguousarray(pos, np.int64)
        if out is None:
            out = np.zeros(pos.size)
        if boxes is None:
            _eval_serial(pos, self._PU, self._PV, self._W, self._C, self._off, self._zeros_lo, self._zeros_lo,
                         self._nr, self._nc, self._stride, self._moff, self._comp, self._coef, out, add)
        else:
            dC, off, r_lo, c_lo, nr, nc = boxes
            _eval_serial(pos, self._PU, self._PV, self._W, dC, off, r_lo, c_lo, nr, nc, self._stride, self._moff,
                         self._comp, self._coef, out, add)
        return out

    def _sync(self):
        """Bring the tracked doses up to date with the pending (lazy) far-scatter node changes."""
        if not self._lazy.any() or not self._pending.any():
            return
        before = self.d_trk.copy()
        colptr, rows, vals = self._csc
        z = np.zeros_like(self._nr)
        _csc_update(colptr, rows, vals, self._off, self._nc, self._pending, self._off, z, z,
                    np.where(self._lazy, self._nr, 0), self._nc, self.d_trk)
        self._pending[:] = 0.0
        self.last_lazy_error_gy = float(np.abs(self.d_trk - before).max())

    def _eval_tracked(self):
        self._eval(self._trk, out=self.d_trk)

    def _eval_many(self, pos, boxes, out):
        """Add the dose change of node boxes to ``out`` at many positions (parallel kernel)."""
        dC, off, r_lo, c_lo, nr, nc = boxes
        if pos is self._trk:
            colptr, rows, vals = self._csc
            if self._lazy.any():
                _add_boxes(self._pending, self._off, self._nc, dC, off, r_lo, c_lo, np.where(self._lazy, nr, 0), nc, 1.0)
                nr = np.where(self._lazy, 0, nr)
            _csc_update(colptr, rows, vals, self._off, self._nc, dC, off, r_lo, c_lo, nr, nc, out)
            return
        _eval_parallel(pos, self._PU, self._PV, self._W, dC, off, r_lo, c_lo, nr, nc, self._stride, self._moff,
                       self._comp, self._coef, out, True)

    def _patch_nodes(self, patches):
        """Convolve per-beam patches ``{b: (row0, col0, delta)}``: node-box changes (flat, with layout)."""
        B, G = self._comp.shape
        off = np.zeros((B, G), np.int64)
        r_lo = np.zeros((B, G), np.int64)
        c_lo = np.zeros((B, G), np.int64)
        nr = np.zeros((B, G), np.int64)
        nc = np.zeros((B, G), np.int64)
        chunks, tot = [], 0
        for b, (row, col, d) in patches.items():
            r1, c1 = row + d.shape[0], col + d.shape[1]
            for g in range(G):
                s, mk, mo = self._stride[b, g], self._mk[b, g], self._moff[b, g]
                a0 = max(0, -(-(row - mk + mo) // s))
                a1 = min(self._nr[b, g], (r1 - 1 + mk + mo) // s + 1)
                b0 = max(0, -(-(col - mk + mo) // s))
                b1 = min(self._nc[b, g], (c1 - 1 + mk + mo) // s + 1)
                if a1 <= a0 or b1 <= b0:
                    continue
                out = np.empty((a1 - a0, b1 - b0))
                _conv_box(d, row, col, self._kern[b, g], mk, s, mo, a0, a1, b0, b1, out)
                off[b, g], r_lo[b, g], c_lo[b, g], nr[b, g], nc[b, g] = tot, a0, b0, a1 - a0, b1 - b0
                chunks.append(out.ravel())
                tot += out.size
        dC = np.concatenate(chunks) if chunks else np.zeros(1)
        return dC, off, r_lo, c_lo, nr, nc

    def _apply_boxes(self, patches, boxes, factor=1.0):
        """Add ``factor`` x the patches to fluence, node grids and tracked doses."""
        dC, off, r_lo, c_lo, nr, nc = boxes
        if factor != 1.0:
            dC = dC * factor
            boxes = (dC, off, r_lo, c_lo, nr, nc)
        for b, (row, col, d) in patches.items():
            self.fluence[b][row : row + d.shape[0], col : col + d.shape[1]] += factor * d
        _add_boxes(self._C, self._off, self._nc, dC, off, r_lo, c_lo, nr, nc, 1.0)
        self._eval_many(self._trk, boxes, self.d_trk)
        self._cube = None

    # -- TPI and patches (eqs 1-3, Algorithm 1) ------------------------------------------------
    def _cells(self, p, b):
        """Control point (row, col) of body position p in beam b, or None."""
        pu, pv = self._PU[p, b], self._PV[p, b]
        if not np.isfinite(pu):
            return None
        r, c = int(np.rint(pv)) // self.sub, int(np.rint(pu)) // self.sub
        R, Cc = self.tpi_t[b].shape
        if 0 <= r < R and 0 <= c < Cc:
            return r, c
        return None

    def unit_patch(self, p: int, lower: bool) -> dict:
        """Normalised patch ``A`` of every beam for body position ``p`` (seed 004 eqs 2-3, Algorithm 1 l. 3-10).

        Returns ``{beam: (row0, col0, A)}`` with ``A = K exp(-mu TPI)`` on the bounding box.
        """
        tpi = self.tpi_t if lower else self.tpi_o
        f = self.fluence_mm
        vals = []
        for b in range(self.n_beams):
            cell = self._cells(p, b)
            if cell is not None:
                vals.append(tpi[b][cell])
        mean = float(np.mean(vals)) if vals else 0.0
        mu = math.log(2.0) / mean if mean > 0 else 0.0  # eq 3
        R = int(math.ceil(self.patch_sigmas * self.kernel_sigma_mm / f))
        out = {}
        for b in range(self.n_beams):
            pu, pv = float(self._PU[p, b]), float(self._PV[p, b])
            if not np.isfinite(pu):
                continue
            Rm, Cm = self.map_shape[b]
            r0, r1 = max(0, int(math.floor(pv)) - R), min(Rm, int(math.ceil(pv)) + R + 1)
            c0, c1 = max(0, int(math.floor(pu)) - R), min(Cm, int(math.ceil(pu)) + R + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            rr = np.arange(r0, r1)[:, None]
            cc = np.arange(c0, c1)[None, :]
            rad2 = ((rr - pv) ** 2 + (cc - pu) ** 2) * f * f
            K = np.exp(-rad2 / (2 * self.kernel_sigma_mm**2))
            K[rad2 > (self.patch_sigmas * self.kernel_sigma_mm) ** 2] = 0.0
            t = tpi[b][np.minimum(rr // self.sub, tpi[b].shape[0] - 1), np.minimum(cc // self.sub, tpi[b].shape[1] - 1)]
            A = K * np.exp(-mu * t)  # eq 2
            if A.max() > 0:
                out[b] = (r0, c0, A)
        return out

    def _clip(self, patches, factor):
        """Scaled patches clipped so that fluence stays >= 0; returns (patches, clipped?)."""
        res, clipped = {}, False
        for b, (r0, c0, A) in patches.items():
            cur = self.fluence[b][r0 : r0 + A.shape[0], c0 : c0 + A.shape[1]]
            d = factor * A
            dd = np.maximum(cur + d, 0.0) - cur
            if np.any(np.abs(dd - d) > 1e-12):
                clipped = True
            res[b] = (r0, c0, dd)
        return res, clipped

    def _modify_voxel(self, p: int, goal: float) -> float:
        """Algorithm 1 (CreatePatch) at body position p towards ``goal`` Gy, applied; returns the new dose."""
        d0 = float(self._eval([p])[0])
        if abs(goal - d0) < 1e-12:
            return d0
        A = self.unit_patch(p, lower=goal < d0)
        if not A:
            return d0
        for it in range(max(1, self.max_clip_iter)):
            boxes = self._patch_nodes(A)
            delta = float(self._eval([p], boxes=boxes)[0])  # d1 - d0, Algorithm 1 l. 11
            if delta <= 0:
                return d0
            if self.scale == "paper" and it == 0:
                fac = abs(goal - d0) / max(abs(goal - (d0 + delta)), 1e-12) * np.sign(goal - d0)
            else:
                fac = (goal - d0) / delta
            P, clipped = self._clip(A, fac)
            if not clipped:
                self._apply_boxes(A, boxes, fac)
            else:
                self._apply_boxes(P, self._patch_nodes(P))
            d0 = float(self._eval([p])[0])
            if not clipped or abs(goal - d0) <= 1e-9 * self.reference_gy or self.scale == "paper":
                break
            # re-solve the remainder with the amplitudes that can still move
            A = {b: (r0, c0, a * ((self.fluence[b][r0 : r0 + a.shape[0], c0 : c0 + a.shape[1]] > 1e-12)
                                  if goal < d0 else 1.0)) for b, (r0, c0, a) in A.items()}
            A = {b: v for b, v in A.items() if v[2].max() > 0}
            if not A:
                break
        return d0

    def _modify_group(self, pos, goals):
        """Group request: anchor voxels, one damped linear solve for all anchor scales, one patch."""
        pos = np.asarray(pos, np.int64)
        goals = np.asarray(goals, float)
        if pos.size == 1:
            self._modify_voxel(int(pos[0]), float(goals[0]))
            return
        w = self.grid.index_to_world(np.stack(np.unravel_index(self.vox[pos], self.grid.shape), axis=1))
        anchor_mm = max(self.kernel_sigma_mm / 2, 2 * max(self.grid.spacing))
        anchors = []
        for i in range(pos.size):  # greedy thinning
            if all(np.linalg.norm(w[i] - w[j]) >= anchor_mm for j in anchors):
                anchors.append(i)
            if len(anchors) >= 40:
                break
        for _ in range(2):
            d0 = self._eval(pos[anchors])
            r = goals[anchors] - d0
            units = [self.unit_patch(int(pos[a]), lower=ri < 0) for a, ri in zip(anchors, r)]
            Gm = np.zeros((len(anchors), len(anchors)))
            for j, A in enumerate(units):
                if A:
                    Gm[:, j] = self._eval(pos[anchors], boxes=self._patch_nodes(A))
            lam = 1e-3 * np.trace(Gm) / len(anchors) + 1e-30
            fac = np.linalg.solve(Gm.T @ Gm + lam**2 * np.eye(len(anchors)), Gm.T @ r)
            comb = {}
            for j, A in enumerate(units):
                for b, (r0, c0, a) in A.items():
                    comb.setdefault(b, []).append((r0, c0, fac[j] * a))
            patches = {}
            for b, lst in comb.items():
                R0 = min(x[0] for x in lst)
                C0 = min(x[1] for x in lst)
                R1 = max(x[0] + x[2].shape[0] for x in lst)
                C1 = max(x[1] + x[2].shape[1] for x in lst)
                acc = np.zeros((R1 - R0, C1 - C0))
                for r0, c0, a in lst:
                    acc[r0 - R0 : r0 - R0 + a.shape[0], c0 - C0 : c0 - C0 + a.shape[1]] += a
                patches[b] = (R0, C0, acc)
            P, _ = self._clip(patches, 1.0)
            self._apply_boxes(P, self._patch_nodes(P))

    # -- requests --------------------------------------------------------------------------------
    def _body_pos(self, index, name="index"):
        try:
            idx = tuple(int(i) for i in index)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a (z, y, x) voxel index, got {index!r}") from None
        if len(idx) != 3 or any(np.asarray(index, float).ravel() != np.asarray(idx)):
            raise ValueError(f"{name} must be three integers (z, y, x), got {index!r}")
        if any(i < 0 or i >= n for i, n in zip(idx, self.grid.shape)):
            raise ValueError(f"{name} {idx} lies outside the grid {self.grid.shape}; pick a voxel inside")
        p = self._pos[np.ravel_multi_index(idx, self.grid.shape)]
        if p < 0:
            raise ValueError(f"{name} {idx} lies outside the body; pick a voxel inside the patient")
        return int(p)

    def _check_dose(self, dose_gy, name="dose_gy"):
        try:
            d = float(dose_gy)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number (Gy), got {dose_gy!r}") from None
        if not np.isfinite(d) or d < 0:
            raise ValueError(f"{name} must be a finite dose >= 0 Gy, got {dose_gy!r}")
        return d

    @property
    def has_request(self) -> bool:
        """True when there is a request to recover from (:meth:`recover` would not raise)."""
        return self._req is not None

    def validate_request(self, index=None, dose_gy=None, n_steps=None, *, path=None,
                         dose_name: str = "dose_gy") -> dict:
        """Check the arguments of a request without changing anything (for user interfaces).

        The checks and messages are those of :meth:`request_voxel`,
        :meth:`request_isodose_line` and :meth:`recover`, in the same order (index, dose, path,
        steps); arguments left as None are not checked.

        Parameters
        ----------
        index : (z, y, x) ints, optional
            A voxel that must lie inside the grid and the body.
        dose_gy : float, optional
            Requested dose (Gy): finite and >= 0.
        n_steps : int, optional
            Recovery steps: an integer >= 0.
        path : sequence of (z, y, x), optional
            Polyline of an isodose-line request; every voxel it rasterises to
            (:func:`rasterize_polyline`) must lie inside the body.
        dose_name : str
            Name of the dose in the messages (e.g. ``'level_gy'`` for an isodose level).

        Returns
        -------
        dict
            ``index`` (tuple of int), ``dose_gy`` (float), ``n_steps`` (int) and ``voxels``
            (``(n, 3)`` int array of the path's voxels); None for arguments not given.

        Raises
        ------
        TypeError, ValueError
            An index that is not three integers, a voxel outside the grid or the body, a dose
            that is not a finite number >= 0 Gy, a negative or non-integer step count.
        """
        out = {"index": None, "dose_gy": None, "n_steps": None, "voxels": None}
        if index is not None:
            self._body_pos(index)
            out["index"] = tuple(int(i) for i in index)
        if dose_gy is not None:
            out["dose_gy"] = self._check_dose(dose_gy, dose_name)
        if path is not None:
            vox = rasterize_polyline(path, self.grid.shape)
            for v in vox:
                self._body_pos(v, "path voxel")
            out["voxels"] = np.asarray(vox, np.int64).reshape(-1, 3)
        if n_steps is not None:
            out["n_steps"] = self._check_steps(n_steps)
        return out

    def _start_request(self, pos, goals, kind, recover):
        n = self.recovery_steps if recover is None else self._check_steps(recover)
        self._sync()
        t0 = time.perf_counter()
        td = time.perf_counter()
        # distance transform from the request voxels (seed 004: Borgefors; here exact Euclidean, mm)
        wreq = self.grid.index_to_world(np.stack(np.unravel_index(self.vox[pos], self.grid.shape), axis=1))
        if len(pos) == 1:
            dist = np.linalg.norm(self._trk_world - wreq[0], axis=1)
        else:
            from scipy.spatial import cKDTree

            dist = cKDTree(wreq).query(self._trk_world)[0]
        self.distance_ms = (time.perf_counter() - td) * 1e3
        in_trk = np.isin(self._trk, pos)
        self._req = dict(kind=kind, pos=np.asarray(pos, np.int64), goals=np.asarray(goals, float),
                         before=self.d_trk.copy(), dist=dist, in_req=in_trk, skip=np.zeros(self._trk.size, bool))
        self._modify_group(pos, goals)
        self._emit(IDSEvent("request", 0, n, self.index_of(int(pos[0])), float(goals[0]),
                            float(self._eval([int(pos[0])])[0]), *self._disturbance()[:2]))
        if n:
            self._recover(n)
        self._push()
        self.timings["request_ms"].append((time.perf_counter() - t0) * 1e3)

    def index_of(self, p: int) -> tuple:
        """``(z, y, x)`` index of body position ``p``."""
        return tuple(int(i) for i in np.unravel_index(self.vox[p], self.grid.shape))

    def request_voxel(self, index, dose_gy: float, recover: int | None = None) -> None:
        """Set the dose of one voxel (seed 004, section 2.2), then ``recover`` recovery steps.

        Parameters
        ----------
        index : (z, y, x) ints
            A voxel inside the body.
        dose_gy : float
            Requested dose (Gy, >= 0).
        recover : int, optional
            Recovery steps (default :attr:`recovery_steps`; 0: modification only).
        """
        p = self._body_pos(index)
        d = self._check_dose(dose_gy)
        self._start_request(np.array([p]), np.array([d]), "voxel", recover)

    def request_isodose_line(self, level_gy: float, path, recover: int | None = None) -> None:
        """Drag an isodose line on a slice: the voxels along ``path`` get ``level_gy``.

        Parameters
        ----------
        level_gy : float
            Dose of the isodose line (Gy).
        path : sequence of (z, y, x)
            Polyline vertices (voxel indices, possibly fractional) in one slice (same z).
        recover : int, optional
            Recovery steps.
        """
        d = self._check_dose(level_gy, "level_gy")
        vox = rasterize_polyline(path, self.grid.shape)
        pos = np.array([self._body_pos(v, "path voxel") for v in vox], np.int64)
        self._start_request(pos, np.full(pos.size, d), "line", recover)

    def request_surface(self, voxels, level_gy: float, recover: int | None = None) -> None:
        """Move an isodose surface region in 3D: every voxel of ``voxels`` gets ``level_gy``.

        Parameters
        ----------
        voxels : (n, 3) ints or boolean mask on the CT grid
            The voxels of the new surface region (inside the body).
        level_gy : float
        recover : int, optional
        """
        d = self._check_dose(level_gy, "level_gy")
        v = np.asarray(voxels)
        if v.dtype == bool:
            if v.shape != self.grid.shape:
                raise ValueError(f"voxels mask has shape {v.shape}, expected the grid shape {self.grid.shape}")
            v = np.argwhere(v)
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
            raise ValueError(f"voxels must be a non-empty (n, 3) array of (z, y, x) indices or a mask, got shape {v.shape}")
        pos = np.unique(np.array([self._body_pos(x, "voxels entry") for x in v], np.int64))
        self._start_request(pos, np.full(pos.size, d), "surface", recover)

    # -- recovery ---------------------------------------------------------------------------------
    def _disturbance(self):
        """(n_disturbed, sum |e| Gy, candidate mask over tracked, errors, request errors)."""
        rq = self._req
        if rq is None:
            return 0, 0.0, None, None, None
        e = self.d_trk - rq["before"]
        cand = np.where(self._trk_is_t, np.abs(e) > self.tol, e > self.tol) & ~rq["in_req"] & ~rq["skip"]
        dr = self._eval(rq["pos"])
        er = dr - rq["goals"]
        creq = np.abs(er) > self.request_tol
        n = int(cand.sum() + creq.sum())
        s = float(np.abs(e[cand]).sum() + np.abs(er[creq]).sum())
        return n, s, cand, e, (creq, er)

    def recover(self, n_steps: int | None = None) -> int:
        """Run recovery steps for the current request (seed 004, section 2.3); returns steps done.

        A separate undoable action. Stops early when nothing is disturbed.
        """
        if self._req is None:
            raise ValueError("no request to recover from; make a request first (request_voxel / ...)")
        n = self.recovery_steps if n_steps is None else self._check_steps(n_steps)
        done = self._recover(n)
        self._push()
        return done

    def _recover(self, n):
        rq = self._req
        done = 0
        for step in range(1, n + 1):
            t0 = time.perf_counter()
            c0 = time.process_time()
            nd, _, cand, e, (creq, er) = self._disturbance()
            if nd == 0:
                break
            if cand.any():
                ci = np.flatnonzero(cand)
                ae = np.abs(e[ci])
                ci = ci[ae >= self.significance * ae.max()]
                dist = rq["dist"][ci]
                band = ci[dist >= dist.max() - self.band_mm]
                k = band[np.argmax(np.abs(e[band]))]
                p, goal = int(self._trk[k]), float(rq["before"][k])
            else:  # only the request voxels themselves (distance 0) are left
                j = int(np.argmax(np.abs(er) * creq))
                p, goal, k = int(rq["pos"][j]), float(rq["goals"][j]), None
            dnew = self._modify_voxel(p, goal)
            if k is not None and abs(dnew - goal) > self.tol:
                rq["skip"][k] = True  # cannot be restored by a patch (e.g. out of every field)
            self.timings["step_ms"].append((time.perf_counter() - t0) * 1e3)
            self.timings["step_cpu_ms"].append((time.process_time() - c0) * 1e3)
            done += 1
            nd, s = self._disturbance()[:2]
            self._emit(IDSEvent("recovery", step, n, self.index_of(p), goal, dnew, nd, s))
        self._sync()
        self._emit(IDSEvent("recovery_done", done, n, None, n_disturbed=self._disturbance()[0]))
        return done

    # -- history ------------------------------------------------------------------------------------
    def _push(self):
        self._sync()
        del self._history[self._hpos + 1 :]
        self._history.append(_State(self.fluence, self._C, self.d_trk, self._req))
        self._hpos += 1

    def _restore(self, st):
        self.fluence = [f.copy() for f in st.fluence]
        self._C = st.C.copy()
        self.d_trk = st.d_trk.copy()
        self._req = copy.deepcopy(st.req)
        self._pending[:] = 0.0
        self._cube = None

    @property
    def can_undo(self) -> bool:
        return self._hpos > 0

    @property
    def can_redo(self) -> bool:
        return self._hpos < len(self._history) - 1

    def undo(self) -> None:
        """Return to the state before the last request / recovery call (exactly)."""
        if not self.can_undo:
            raise ValueError("nothing to undo")
        self._hpos -= 1
        self._restore(self._history[self._hpos])
        self._emit(IDSEvent("undo"))

    def redo(self) -> None:
        """Re-apply the last undone action (exactly)."""
        if not self.can_redo:
            raise ValueError("nothing to redo")
        self._hpos += 1
        self._restore(self._history[self._hpos])
        self._emit(IDSEvent("redo"))

    # -- outputs ------------------------------------------------------------------------------------
    def dose_at(self, index) -> float:
        """Current dose (Gy) of one body voxel."""
        return float(self._eval([self._body_pos(index)])[0])

    @property
    def dose(self) -> np.ndarray:
        """Current dose cube ``(z, y, x)`` in Gy (evaluated from the node grids, cached)."""
        if self._cube is None:
            out = np.zeros(self.vox.size)
            _eval_parallel(np.arange(self.vox.size, dtype=np.int64), self._PU, self._PV, self._W, self._C,
                           self._off, self._zeros_lo, self._zeros_lo, self._nr, self._nc, self._stride,
                           self._moff, self._comp, self._coef, out, False)
            cube = np.zeros(self.grid.size)
            cube[self.vox] = out
            self._cube = cube.reshape(self.grid.shape)
        return self._cube

    def dose_slice(self, z_index: int) -> np.ndarray:
        """Current dose (Gy) of one axial slice ``(y, x)``, evaluated alone (cheap; for redraws)."""
        z = int(z_index)
        if not 0 <= z < self.grid.shape[0]:
            raise ValueError(f"z_index {z_index} outside 0..{self.grid.shape[0] - 1}")
        if self._cube is not None:
            return self._cube[z].copy()
        n = self.grid.shape[1] * self.grid.shape[2]
        flat = np.arange(z * n, (z + 1) * n)
        pos = self._pos[flat]
        ok = pos >= 0
        out = np.zeros(n)
        out[ok] = self._eval(pos[ok])
        return out.reshape(self.grid.shape[1:])

    def exact_dose(self) -> np.ndarray:
        """Dose cube recomputed from scratch (full convolution of every fluence map); for checks."""
        C_save = self._C.copy()
        self._recompute_nodes()
        self._cube = None
        d = self.dose.copy()
        self._C = C_save
        self._cube = None
        return d

    def mu(self) -> np.ndarray:
        """Open-field-equivalent MU per beam of the current fluence (:func:`rtlab.dose.beam_mu`)."""
        from ..dose.mu import beam_mu

        return beam_mu(self.fluence, self.machine)

    def to_result(self) -> IDSResult:
        """The current plan as an object :func:`rtlab.compare.score` accepts (exact IDS dose)."""
        return IDSResult(self.dose.copy(), self.mu(), self.grid, [f.copy() for f in self.fluence])

    def to_plan(self) -> Plan:
        """The current fluence as an :class:`rtlab.plan.Plan` (bixel weights = mean fluence per bixel).

        The plan's dose comes from the influence matrix (lateral cut-off, 5 mm bixels), so it
        differs slightly from :attr:`dose` (fluence finer than bixels is averaged).
        """
        w = []
        for b, bm in enumerate(self.beams):
            R, Cc = bm.bixels.shape
            m = self.fluence[b].reshape(R, self.sub, Cc, self.sub).mean(axis=(1, 3))
            w.append(bm.bixels.from_map(m))
        return Plan(self.case, list(self.beams), self.machine, np.concatenate(w))

    def target_coverage(self, level_pct: float = 95.0) -> float:
        """Fraction of target voxels at or above ``level_pct`` % of :attr:`reference_gy`."""
        self._sync()
        return float(np.mean(self.d_trk[self._trk_is_t] >= level_pct / 100 * self.reference_gy - 1e-9))



# ---------------------------------------------------------------------------------------------
def tpi_maps(session) -> tuple[list, list]:
    """Travelling-path information maps ``TPI^T`` and ``TPI^O`` per beam (seed 004, eq 1).

    ``TPI(b, s) = sum over target (OAR) voxels whose centre projects into control point s of
    beam b of D_1(l)``, ``D_1`` the machine's first depth component at the radiological
    depth ``l`` (mm). Control points are the beam's bixels.

    Returns
    -------
    (list of ndarray, list of ndarray)
        Maps of shape ``beam.bixels.shape`` per beam.
    """
    s = session
    out_t, out_o = [], []
    for b, bm in enumerate(s.beams):
        R, Cc = bm.bixels.shape
        for sel, out in ((s._trk_is_t, out_t), (~s._trk_is_t, out_o)):
            pu, pv = s._PUt[sel, b], s._PVt[sel, b]
            ok = np.isfinite(pu)
            r = np.rint(pv[ok]).astype(np.int64) // s.sub
            c = np.rint(pu[ok]).astype(np.int64) // s.sub
            d1 = s._d1[sel, b][ok]
            keep = (r >= 0) & (r < R) & (c >= 0) & (c < Cc)
            out.append(np.bincount(r[keep] * Cc + c[keep], weights=d1[keep], minlength=R * Cc).reshape(R, Cc))
    return out_t, out_o


def rasterize_polyline(path, shape) -> np.ndarray:
    """Voxels ``(n, 3)`` along a polyline of ``(z, y, x)`` vertices lying in one slice (same z).

    Segments are sampled at 1/4 voxel steps and rounded; duplicates removed (order kept).
    """
    p = np.asarray(path, float)
    if p.size == 0:
        raise ValueError("path is empty; give at least one (z, y, x) vertex")
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"path must be a sequence of (z, y, x) voxel coordinates, got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("path is empty; give at least one (z, y, x) vertex")
    if not np.all(np.isfinite(p)):
        raise ValueError("path contains NaN or infinite coordinates")
    if np.ptp(p[:, 0]) > 1e-9:
        raise ValueError("path vertices must lie in one slice (equal z); use request_surface for 3D regions")
    pts = [p[:1]]
    for a, b in zip(p[:-1], p[1:]):
        n = max(1, int(np.ceil(4 * np.abs(b - a).max())))
        pts.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    q = np.rint(np.concatenate(pts)).astype(np.int64)
    if np.any(q < 0) or np.any(q >= np.asarray(shape)):
        raise ValueError(f"path leaves the grid {tuple(shape)}; keep the line inside")
    _, first = np.unique(q, axis=0, return_index=True)
    return q[np.sort(first)]


def isodose_contours(dose, z_index: int, levels_pct=(55, 95, 107), reference_gy: float = 1.0) -> dict:
    """Isodose lines on slice ``z_index``: ``{level_pct: [ (n, 2) arrays of (y, x) voxel coordinates ]}``."""
    from skimage.measure import find_contours

    sl = np.asarray(dose)[int(z_index)] / reference_gy * 100.0
    return {float(lv): find_contours(sl, float(lv)) for lv in levels_pct}


def reproduce_paper(case=None, n_steps: int = 25, dose_pct: float = 55.0, kernel_sigma_mm=3.0,
                    session_kwargs=None) -> dict:
    """Seed 004's phantom experiment: lower one OAR rim voxel to 55 %, then ``n_steps`` recoveries.

    Start: 9 open fields conforming to the target (median target dose 100 %). The voxel is the
    OAR rim voxel on the central slice closest to the target's closed (posterior, "bottom")
    side (seed 004, figure 5: "at the bottom of the OAR"). ``kernel_sigma_mm`` is the width
    of the patch kernel ``K`` (3 mm by default; ``'w2'`` for the paper's choice, see
    ``docs/methods/ids.md``).

    Returns
    -------
    dict
        ``session``, ``voxel``, ``z``, ``contours`` (``'before'``, ``'modified'``,
        ``'recovered'`` -> :func:`isodose_contours`), ``doses`` (the three cubes),
        ``target_ge95_fraction`` (before / modified / recovered), ``rim_dose_pct`` (same),
        ``timings``.
    """
    from scipy.ndimage import binary_erosion

    if case is None:
        from ..phantoms import get_phantom

        case = get_phantom("horseshoe")
    kw = dict(kernel_sigma_mm=kernel_sigma_mm)
    kw.update(session_kwargs or {})
    s = IDSSession(case, **kw)
    ref = s.reference_gy
    oar = s.oar_mask
    zc = int(np.round(np.mean(np.nonzero(oar)[0])))
    rim = oar[zc] & ~binary_erosion(oar[zc])
    ys, xs = np.nonzero(rim)
    xc = np.mean(np.nonzero(oar[zc])[1])
    cand = np.abs(xs - xc) <= 0.5 + np.abs(xs - xc).min()
    j = np.flatnonzero(cand)[np.argmax(ys[cand])]
    vox = (zc, int(ys[j]), int(xs[j]))
    out = {"session": s, "voxel": vox, "z": zc, "doses": {}, "contours": {}, "target_ge95_fraction": {},
           "rim_dose_pct": {}, "target_min_pct": {}}

    def snap(name):
        d = s.dose.copy()
        out["doses"][name] = d
        out["contours"][name] = isodose_contours(d, zc, (55, 95, 107), ref)
        out["target_ge95_fraction"][name] = s.target_coverage(95.0)
        out["rim_dose_pct"][name] = 100 * s.dose_at(vox) / ref
        out["target_min_pct"][name] = 100 * float(d[s.target_mask].min()) / ref

    snap("before")
    t0 = time.perf_counter()
    s.request_voxel(vox, dose_pct / 100 * ref, recover=0)
    snap("modified")
    s.recover(n_steps)
    out["request_s"] = time.perf_counter() - t0
    snap("recovered")
    return out


def plot_isodose_panels(result: dict, ax=None):
    """Three panels (before / after modification / after recovery) of :func:`reproduce_paper`'s isodoses."""
    import matplotlib.pyplot as plt

    s = result["session"]
    z = result["z"]
    if ax is None:
        fig, ax = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    else:
        fig = ax[0].figure
    colors = {55.0: "tab:blue", 95.0: "tab:green", 107.0: "tab:red"}
    titles = {"before": "before modification", "modified": "after modification", "recovered": "after recovery"}
    for a, name in zip(ax, ("before", "modified", "recovered")):
        a.imshow(result["doses"][name][z] / s.reference_gy * 100, cmap="gray", vmin=0, vmax=120)
        for m, c in ((s.target_mask, "yellow"), (s.oar_mask, "cyan")):
            a.contour(m[z].astype(float), [0.5], colors=c, linewidths=0.8)
        for lv, lines in result["contours"][name].items():
            for k, ln in enumerate(lines):
                a.plot(ln[:, 1], ln[:, 0], color=colors.get(lv, "k"), lw=1.2, label=f"{lv:g} %" if k == 0 else None)
        a.plot(result["voxel"][2], result["voxel"][1], "w.", ms=8)
        a.set_title(f"{titles[name]}: PTV >= 95 %: {100 * result['target_ge95_fraction'][name]:.1f} %")
        a.set_axis_off()
    ax[0].legend(loc="lower left", fontsize=8)
    return fig
