"""The interactive dose shaping session (paper 004): requests, recovery, undo/redo.

:class:`IDSSession` holds the plan (fluence maps of every beam) in a
:class:`rtlab.dose.FluenceDose` engine: patch updates keep the tracked voxels (targets and organs
at risk) current, the wide far-scatter Gaussians deferred until a request or recovery call ends
(``lazy_sigma_mm``), and any body voxel's dose is read from the engine's node grids when asked
(:attr:`IDSSession.dose`, cached; :meth:`IDSSession.dose_at`). Nothing is truncated or
approximated by this split: every number equals a full recompute of the fluence (tested to
1e-5 relative).

Size: over 600 lines because :class:`IDSSession` is one object whose public calls (set-up,
requests, undo/redo, outputs) share its state, and its parameters and the paper's definitions
are documented here, next to it.

The modification and recovery modules (Algorithm 1, group requests, the close-in recovery loop)
are :class:`rtlab.methods.ids.shaping.DoseShaping`, mixed into the session; the TPI maps are in
:mod:`rtlab.methods.ids.patches`.

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
  step picks, among the disturbed voxels whose deviation is at least ``significance`` x the
  largest and within ``band_mm`` of the largest distance (Euclidean distance transform from the
  request voxels), the one with the largest deviation, and restores it with one patch: scaled
  to restore it exactly (``step_rule='voxel'``, Algorithm 1) or by least squares over the voxels
  the patch reaches with the request held (``'footprint'``, the default; see ``step_rule``).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
from scipy.ndimage import binary_dilation, binary_fill_holes
from scipy.spatial import cKDTree

from ..._util import check_positive, is_int
from ...core.beams import Beam, BixelGrid, fit_bixel_grid, prepare_beams
from ...dose.fluence import FluenceDose
from ...dose.machine import Machine, generic_6mv
from ...dose.mu import beam_mu
from ...dose.plan import Plan
from .events import IDSEvent, IDSResult
from .patches import in_reach, isodose_surface_request, rasterize_polyline, tpi_maps
from .shaping import DoseShaping

__all__ = ["IDSSession"]


class _State:
    """Everything undo/redo must restore: the engine's state and the request (copies)."""

    def __init__(self, engine_state, req):
        self.engine = engine_state
        self.req = copy.deepcopy(req)


class IDSSession(DoseShaping):
    """An interactive dose shaping session (paper 004): requests, recovery, undo/redo.

    Parameters
    ----------
    case : rtlab.core.case.Case
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
        amplitudes (paper 004: 5 x 5). Default 5.
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
        Default number of recovery steps after a request (paper 004: 15-30; default 25).
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
    step_rule : {'footprint', 'voxel'}
        Scale of a recovery patch. ``'voxel'``: Algorithm 1's scale, the chosen voxel restored
        exactly (the paper). ``'footprint'`` (default): the same unit patch scaled by least
        squares over every tracked voxel it reaches (:meth:`DoseShaping._restore_footprint`);
        with the paper's wide ``w_2`` kernel the exact rule overshoots the voxels around the
        restored one and the recovery diverges (measured, ``docs/methods/ids.md``).
    hold_request : bool
        ``'footprint'`` steps add a second unit patch on the request voxel the step moves most,
        scaled to keep it at its requested dose (default True).
    request_weight : float
        Weight of the (other) request voxels in the footprint fit, relative to all reached
        voxels together (default 1).
    max_tries : int
        ``'footprint'`` steps: voxels the fit cannot move toward their goal are given up, and up
        to ``max_tries`` candidates are tried within one step (default 1).
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
    threads : int
        Threads of the engine's patch updates (default 1: an update is a few small parallel
        loops per beam, which a second thread slows down on a loaded machine); the dose cube is
        evaluated on numba's threads.

    Notes
    -----
    The dose engine is :class:`rtlab.dose.FluenceDose` (:attr:`engine`): its patch updates keep
    the tracked voxels (targets and organs at risk) current, with the far-scatter Gaussians
    deferred (``lazy_sigma_mm``), and it reads any body voxel's dose from its node grids.
    """

    def __init__(self, case, beams=None, machine: Machine | None = None, *, fluence_mm: float = 1.0,
                 bixel_mm: float = 5.0, map_margin_mm: float = 15.0, field_margin_mm: float = 10.0,
                 reference_gy: float | None = None, normalize: str = "median", kernel_sigma_mm="w2",
                 patch_sigmas: float = 2.0, recovery_steps: int = 25, tol_pct: float = 1.0,
                 request_tol_pct: float = 2.0, band_mm: float = 10.0, significance: float = 0.5, scale: str = "linear",
                 support_sigmas: float = 4.0, max_clip_iter: int = 3, lazy_sigma_mm: float | None = 20.0,
                 callback: Callable | None = None, threads: int = 1, step_rule: str = "footprint",
                 hold_request: bool = True, request_weight: float = 1.0, max_tries: int = 1):
        t_setup = time.perf_counter()
        self.case = case
        self.machine = generic_6mv() if machine is None else machine
        self._set_options(fluence_mm, bixel_mm, patch_sigmas, support_sigmas, scale, normalize, recovery_steps,
                          max_clip_iter, band_mm, significance,
                          dict(map_margin_mm=map_margin_mm, field_margin_mm=field_margin_mm, tol_pct=tol_pct,
                               request_tol_pct=request_tol_pct, band_mm=band_mm))
        self._set_step_rule(step_rule, hold_request, request_weight)
        if not is_int(max_tries) or max_tries < 1:
            raise ValueError(f"max_tries must be an integer >= 1, got {max_tries!r}")
        self.max_tries = int(max_tries)
        self._callbacks: list[Callable] = [] if callback is None else [callback]
        self.grid = case.grid
        self._set_masks(reference_gy, tol_pct, request_tol_pct)
        self.beams = self._full_map_beams(case.gantry_angles() or list(np.arange(9) * 40.0) if beams is None else beams,
                                          bixel_mm, map_margin_mm)
        self._make_engine(support_sigmas, lazy_sigma_mm, threads)
        self.kernel_sigma_mm = self._patch_kernel_sigma(kernel_sigma_mm)
        self.setup_s = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        self.tpi_t, self.tpi_o = tpi_maps(self)
        self.tpi_ms = (time.perf_counter() - t0) * 1e3
        self.distance_ms = float("nan")
        self._start(field_margin_mm, normalize)

    # -- set-up steps ----------------------------------------------------------------------------
    def _set_options(self, fluence_mm, bixel_mm, patch_sigmas, support_sigmas, scale, normalize, recovery_steps,
                     max_clip_iter, band_mm, significance, non_negative):
        (fluence_mm, bixel_mm, patch_sigmas, support_sigmas) = check_positive(
            "fluence_mm/bixel_mm/patch_sigmas/support_sigmas", [fluence_mm, bixel_mm, patch_sigmas, support_sigmas])
        sub = bixel_mm / fluence_mm
        if abs(sub - round(sub)) > 1e-6:
            raise ValueError(f"bixel_mm={bixel_mm} must be a multiple of fluence_mm={fluence_mm}")
        if scale not in ("linear", "paper"):
            raise ValueError(f"scale must be 'linear' or 'paper', got {scale!r}")
        if normalize not in ("median", "mean"):
            raise ValueError(f"normalize must be 'median' or 'mean', got {normalize!r}")
        for nm, v in non_negative.items():
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

    def _set_step_rule(self, step_rule, hold_request, request_weight):
        if step_rule not in ("voxel", "footprint"):
            raise ValueError(f"step_rule must be 'voxel' or 'footprint', got {step_rule!r}")
        if not np.isfinite(request_weight) or request_weight < 0:
            raise ValueError(f"request_weight must be a finite number >= 0, got {request_weight!r}")
        self.step_rule = step_rule
        self.hold_request = bool(hold_request)
        self.request_weight = float(request_weight)

    def _set_masks(self, reference_gy, tol_pct, request_tol_pct):
        """Target, organ-at-risk and body masks; the 100 % dose and the disturbance thresholds."""
        case, grid = self.case, self.grid
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

    def _full_map_beams(self, beams, bixel_mm, map_margin_mm) -> list[Beam]:
        """Beams with full rectangular bixel grids covering the targets' BEV plus ``map_margin_mm``."""
        margin_bix = int(math.ceil(map_margin_mm / bixel_mm))
        out = []
        for bm in prepare_beams(self.case, beams, bixel_mm=bixel_mm, margin=0):
            bx = fit_bixel_grid(Beam(bm.gantry, bm.couch, bm.isocenter, bixel_mm, bm.sad), self.grid,
                                self.target_mask, 0)
            nr, nc = bx.shape
            full = BixelGrid(bixel_mm, bx.r0 - margin_bix, bx.c0 - margin_bix,
                             np.ones((nr + 2 * margin_bix, nc + 2 * margin_bix), bool))
            out.append(Beam(bm.gantry, bm.couch, bm.isocenter, bixel_mm, bm.sad, full))
        return out

    def _make_engine(self, support_sigmas, lazy_sigma_mm, threads):
        """The FluenceDose engine (tracked voxels updated, body voxels readable) and the per-voxel views."""
        trk = self.target_mask | self.oar_mask
        self.engine = FluenceDose(self.case, self.beams, self.machine, voxels=trk, eval_voxels=self.body_mask,
                                  fluence_mm=self.fluence_mm, support_sigmas=support_sigmas, threads=threads,
                                  lazy_sigma_mm=lazy_sigma_mm, update="sparse")
        fd = self.engine
        self.vox = fd.eval_index  # flat CT index of each body position
        self._pos = np.full(self.grid.size, -1, np.int64)
        self._pos[self.vox] = np.arange(self.vox.size)
        self._trk = fd.eval_position  # body positions of the tracked voxels
        up, vp = fd.eval_coordinates()
        # (body position, beam) views of the engine's fluence-pixel coordinates (OUT_OF_REACH where a
        # beam does not reach: in_reach() tells), and compact copies for the tracked voxels
        self._PU, self._PV = up.T, vp.T
        self._PUt = np.ascontiguousarray(self._PU[self._trk])
        self._PVt = np.ascontiguousarray(self._PV[self._trk])
        self.map_shape = [fd.map_shape(b) for b in range(fd.n_beams)]
        depth = fd.depth.T  # tracked voxels, (n_tracked, beams)
        self._d1 = self.machine.depth_dose(np.nan_to_num(depth))[..., 0].astype(np.float32)  # D_1(l), eq 1
        self._d1[~np.isfinite(depth)] = 0.0
        self._trk_is_t = self.target_mask.ravel()[self.vox[self._trk]]
        self._trk_world = self.grid.index_to_world(np.stack(np.unravel_index(self.vox[self._trk], self.grid.shape),
                                                            axis=1))

    def _patch_kernel_sigma(self, kernel_sigma_mm) -> float:
        """Width (mm) of the lateral kernel K of the patches (paper 004: from the machine's w_2)."""
        if isinstance(kernel_sigma_mm, str):
            if kernel_sigma_mm != "w2":
                raise ValueError(f"kernel_sigma_mm must be a width in mm or 'w2', got {kernel_sigma_mm!r}")
            j = self.machine.table_index(1000.0)
            s2 = np.atleast_1d(self.machine.kernel_sigmas[j][1])
            w2 = np.atleast_1d(self.machine.kernel_weights[j][1])
            kernel_sigma_mm = float(np.sqrt(np.sum(w2 * s2**2) / np.sum(w2)))
        (k,) = check_positive("kernel_sigma_mm", kernel_sigma_mm)
        return k

    def _start(self, field_margin_mm, normalize):
        """Open fields scaled so that the target statistic is the 100 % dose; the first history entry."""
        fd = self.engine
        self._open_fields(field_margin_mm)
        fd.compute()
        dt = fd.dose_vector[self._trk_is_t]
        stat = np.median(dt) if normalize == "median" else np.mean(dt)
        if not stat > 0:
            raise ValueError("the open fields give no target dose; check the beams and the case geometry")
        fd.scale(self.reference_gy / stat)
        self._req = None
        self._cube = None
        self._history = [_State(fd.state(), self._req)]
        self._hpos = 0
        self.timings: dict[str, list] = {"step_ms": [], "step_cpu_ms": [], "request_ms": []}

    def tpi_inputs(self):
        """What the TPI maps (eq 1, :func:`~rtlab.methods.ids.patches.tpi_maps`) read, per tracked voxel.

        Returns
        -------
        pu, pv : ndarray (n_tracked, n_beams)
            Fluence-pixel coordinates (``OUT_OF_REACH`` where a beam does not reach).
        d1 : ndarray (n_tracked, n_beams)
            ``D_1`` (the primary depth component) at the radiological depth.
        is_target : ndarray of bool (n_tracked,)
        """
        return self._PUt, self._PVt, self._d1, self._trk_is_t

    @property
    def fluence(self) -> list:
        """Current fluence map per beam (rows v, columns u; amplitudes of ``fluence_mm``)."""
        return self.engine.fluence

    @property
    def d_trk(self) -> np.ndarray:
        """Dose (Gy) of the tracked voxels (targets and organs at risk), as the engine keeps it."""
        return self.engine.dose_vector

    @property
    def last_lazy_error_gy(self) -> float:
        """How far the tracked doses were behind at the last sync of the deferred far scatter (Gy)."""
        return self.engine.last_sync_change_gy

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
        f = self.fluence_mm
        tpos = self._pos[np.flatnonzero(self.target_mask.ravel())]
        for b in range(self.n_beams):
            R, Cc = self.map_shape[b]
            pu, pv = self._PU[tpos, b], self._PV[tpos, b]
            ok = in_reach(pu)
            r = np.rint(pv[ok]).astype(np.int64)
            c = np.rint(pu[ok]).astype(np.int64)
            keep = (r >= 0) & (r < R) & (c >= 0) & (c < Cc)
            m = np.zeros((R, Cc), bool)
            m[r[keep], c[keep]] = True
            rad = max(self.grid.spacing) / 2 / f + margin_mm / f  # voxel half-size + margin
            n = int(math.ceil(rad))
            yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
            m = binary_fill_holes(binary_dilation(m, structure=(yy**2 + xx**2) <= rad**2))
            self.engine.set_fluence(b, m.astype(float))

    # -- voxel evaluation (the engine's node grids) ---------------------------------------------
    def _eval(self, pos) -> np.ndarray:
        """Dose (Gy) of body positions ``pos`` from the engine's node grids (exact, float64)."""
        return self.engine.evaluate(pos)

    def _effect(self, patches, pos) -> np.ndarray:
        """Dose change at body positions ``pos`` of per-beam patches ``{b: (row0, col0, delta)}`` (not applied)."""
        return self.engine.patch_effect([(b, r, c, d) for b, (r, c, d) in patches.items()], pos)

    def _sync(self):
        """Bring the tracked doses up to date with the deferred (lazy) far-scatter node changes."""
        self.engine.sync()

    def _apply(self, patches, factor=1.0):
        """Add ``factor`` x the patches to the fluence; the engine updates node grids and tracked doses."""
        self.engine.patch_update_many([(b, r, c, factor * d if factor != 1.0 else d)
                                       for b, (r, c, d) in patches.items()])
        self._cube = None

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
        # distance transform from the request voxels (paper 004: Borgefors; here exact Euclidean, mm)
        wreq = self.grid.index_to_world(np.stack(np.unravel_index(self.vox[pos], self.grid.shape), axis=1))
        if len(pos) == 1:
            dist = np.linalg.norm(self._trk_world - wreq[0], axis=1)
        else:
            dist = cKDTree(wreq).query(self._trk_world)[0]
        self.distance_ms = (time.perf_counter() - td) * 1e3
        in_trk = np.isin(self._trk, pos)
        self._req = dict(kind=kind, pos=np.asarray(pos, np.int64), goals=np.asarray(goals, float),
                         before=self.d_trk.copy(), dist=dist, in_req=in_trk, skip=np.zeros(self._trk.size, bool))
        self._modify_group(pos, goals)
        self._sync()  # the recovery starts from the modification's full effect, far scatter included
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
        """Set the dose of one voxel (paper 004, section 2.2), then ``recover`` recovery steps.

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

    def request_isodose_surface(self, level_gy: float, point_mm, shift_mm: float, radius_mm: float = 10.0,
                                recover: int | None = None, snap_mm: float = 10.0) -> dict:
        """Push the ``level_gy`` isodose surface at a picked point by ``shift_mm`` along its normal.

        The region and its move are :func:`rtlab.methods.ids.isodose_surface_request` on the
        current dose (``shift_mm > 0`` grows the enclosed volume); its voxels then get
        ``level_gy`` (:meth:`request_surface`) and ``recover`` recovery steps follow.

        Returns
        -------
        dict
            What :func:`~rtlab.methods.ids.isodose_surface_request` returned.
        """
        d = self._check_dose(level_gy, "level_gy")
        n = None if recover is None else self._check_steps(recover)
        info = isodose_surface_request(self.dose, self.grid, d, point_mm, shift_mm, radius_mm, snap_mm)
        for v in info["voxels"]:
            self._body_pos(v, "moved surface voxel")
        self.request_surface(info["voxels"], d, recover=n)
        return info

    # -- recovery (the loop itself is DoseShaping._recover) ------------------------------------
    def recover(self, n_steps: int | None = None) -> int:
        """Run recovery steps for the current request (paper 004, section 2.3); returns steps done.

        A separate undoable action. Stops early when nothing is disturbed.
        """
        if self._req is None:
            raise ValueError("no request to recover from; make a request first (request_voxel / ...)")
        n = self.recovery_steps if n_steps is None else self._check_steps(n_steps)
        done = self._recover(n)
        self._push()
        return done

    # -- history ------------------------------------------------------------------------------------
    def _push(self):
        self._sync()
        del self._history[self._hpos + 1 :]
        self._history.append(_State(self.engine.state(), self._req))
        self._hpos += 1

    def _restore(self, st):
        self.engine.restore(st.engine)
        self._req = copy.deepcopy(st.req)
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
            cube = np.zeros(self.grid.size)
            cube[self.vox] = self.engine.evaluate()
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
        saved = self.engine.state()
        self.engine.compute()
        self._cube = None
        d = self.dose.copy()
        self.engine.restore(saved)
        self._cube = None
        return d

    def mu(self) -> np.ndarray:
        """Open-field-equivalent MU per beam of the current fluence (:func:`rtlab.dose.beam_mu`)."""
        return beam_mu(self.fluence, self.machine)

    def to_result(self) -> IDSResult:
        """The current plan as an object :func:`rtlab.evaluate.compare.score` accepts (exact IDS dose)."""
        return IDSResult(self.dose.copy(), self.mu(), self.grid, [f.copy() for f in self.fluence])

    def to_plan(self) -> Plan:
        """The current fluence as an :class:`rtlab.dose.Plan` (bixel weights = mean fluence per bixel).

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
