"""Fluence-map dose without beamlets, with patch-local updates (paper 004, section 2.4).

Each beam carries a fine fluence map ``psi`` (default 1 mm pixels, aligned with the bixel
edges, piecewise constant per pixel) in the isocentre plane. For every Gaussian ``g`` of the
machine's lateral kernels (component ``i(g)``, width ``s_g``) the convolution (paper 004
eq. 5)::

    C_g(node) = sum_pixels psi(p) * Kg(node_u - p_u) * Kg(node_v - p_v)

is evaluated in coordinate space on a node grid of spacing ``stride_g * fluence_mm`` (nodes
on pixel centres; ``stride_g = max(1, floor(s_g / (4 fluence_mm)))``: the seed's "sparse
control points", so the wide scatter kernels use coarse nodes), where ``Kg(m) = Phi((m + f/2)
/ s_g) - Phi((m - f/2) / s_g)`` is the exact 1D integral of the Gaussian over a pixel,
truncated at ``support_sigmas * s_g``. The dose of voxel ``x`` is (eq. 4)::

    D(x) = (SAD/t)^2 * sum_g c_g D_{i(g)}(d_rad(x)) * bilinear(C_g, u(x), v(x))

A patch ``delta psi`` on a rectangle of pixels changes ``C_g`` only on nodes within the
kernel support of the rectangle; :meth:`FluenceDose.patch_update` convolves the patch alone
and adds its dose to exactly the voxels whose projection falls on those nodes. By linearity
this equals a full recompute up to floating-point rounding (tested at 1e-5 relative).

Evaluation from the node grids (what interactive dose shaping, :mod:`rtlab.methods.ids`, needs):
with ``eval_voxels`` (a superset of ``voxels``, e.g. the whole body while the patch updates keep
only the targets and organs current) :meth:`FluenceDose.evaluate` reads the dose of any of those
voxels from the node grids (float64 bilinear interpolation, exact for the current fluence), and
:meth:`FluenceDose.patch_effect` gives the dose change a candidate patch would make, without
applying it. Wide Gaussians (``lazy_sigma_mm``, the 30 mm far scatter) may be *deferred*: a patch
changes their node grids at once and the voxel doses at :meth:`FluenceDose.sync`.

The numba kernels and their numpy references are in :mod:`rtlab.dose.fluence_kernels`.

Implementation (what makes a patch update cheap): everything that depends only on the
geometry is computed once per beam in ``__init__`` and stacked over the beams -- the voxels'
fluence-pixel coordinates ``(u, v)`` (float32; the ray tracing and depth look-up are never
repeated) and ``coef_g = c_g D_{i(g)}(d_rad) (SAD/t)^2`` (float32). One update, any number of
patches on any beams (:meth:`FluenceDose.patch_update_many`), is one numba call,
:func:`~rtlab.dose.fluence_kernels.update_beams`: per patch :func:`~rtlab.dose.fluence_kernels.node_update` convolves only the patch onto only the
node box within the kernel support (into zero-padded float32 boxes) and
:func:`~rtlab.dose.fluence_kernels.apply_boxes`
adds ``coef_g * bilinear(delta C_g)`` of each Gaussian over the voxel range from its first to
its last block (64 consecutive voxels with a projected bounding box) that meets its box, in
at most ``2 G - 1`` vectorised passes; the beams' changes are summed in float32 and added to the
float64 dose once (:func:`~rtlab.dose.fluence_kernels.flush`). :meth:`compute` is the same call with the whole maps, so
the two paths share every number. The far-scatter Gaussian (30 mm, support 120 mm) still
reaches nearly every voxel of a beam, so an update costs about one vectorised bilinear
interpolation per voxel and beam (measured numbers: ``docs/dose_engine.md``).

Relation to the influence matrix: for a fluence that is constant on each bixel, the node
values ``C_g`` are exact integrals, so the two engines differ only by the bilinear
interpolation between nodes (largest in the primary penumbra, about ``f^2 / (8 s_1^2)`` of the
primary term) and the kernel truncations (radial ``cutoff_mm`` vs square ``support``).

Size: just over 600 lines because :class:`FluenceDose` is one object (set-up, dose, patch
updates, lazy updates, state save/restore) over arrays that every method shares; its
kernels are in :mod:`rtlab.dose.fluence_kernels`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numba as nb
import numpy as np
from scipy.special import ndtr

from .._util import NOT_GIVEN, check_finite, check_positive, is_int, renamed_argument
from ..core.beams import prepare_beams
from ..core.geometry import resample, trilinear_matrix
from .fluence_kernels import (OUT_OF_REACH, Threads, apply_boxes, block_bbox, eval_nodes_parallel, eval_nodes_serial,
                              flush, node_matrix, patch_effect, pending_boxes, sync_sparse, update_beams,
                              update_beams_sparse)
from .machine import Machine, generic_6mv
from .voxels import beam_voxels, resolve_dose_grid, select_voxels

__all__ = ["FluenceDose", "FluenceState"]

#: Below this many voxels :meth:`FluenceDose.evaluate` runs on the calling thread only.
_SERIAL_EVAL = 2048


@dataclass
class FluenceState:
    """Everything :meth:`FluenceDose.restore` needs to return to a state exactly (copies)."""

    fluence: list
    nodes: np.ndarray
    dose_vector: np.ndarray
    pending: np.ndarray


class _BeamState:
    pass


class FluenceDose:
    """Dose of per-beam fluence maps, kept up to date by patch-local updates.

    Parameters
    ----------
    case : rtlab.core.case.Case
    beams : sequence of Beam, BeamSpec or gantry angles
        Bixel grids define each fluence map's extent (fitted to the targets when absent).
    machine : Machine, optional
    dose_grid_mm : float or Grid, optional
        Dose-grid spacing (mm; default the CT grid, :func:`rtlab.dose.influence.resolve_dose_grid`).
        ``dose_grid=`` is its old name (kept for one release).
    voxels : 'body', 'all' or mask
        The voxels whose dose (:attr:`dose_vector`) every update keeps current.
    fluence_mm : float
        Fluence pixel size (mm, isocentre plane); must divide the bixel size.
    support_sigmas : float
        Kernel truncation in units of each Gaussian's sigma (square support).
    tile_mm : float
        Unused; kept so that existing calls keep working (voxels are now culled in blocks of
        64 consecutive voxels with a projected bounding box).
    ray_mm : float, optional
        Ray spacing of the radiological-depth fan (see :func:`rtlab.dose.raytrace.fan_depth`).
    threads : int, optional
        Threads of the dose-update kernels (default: numba's thread count, i.e. every core). An
        update makes a few parallel launches per beam (at most ``2 G - 1`` voxel segments); on a
        quiet 2-core machine two threads give 1.8x, but under heavy load waking the second thread
        can cost milliseconds (pass ``threads=1`` there).
    eval_voxels : 'body', 'all' or mask, optional
        Voxels whose dose :meth:`evaluate` and :meth:`patch_effect` can read from the node grids
        (must contain ``voxels``; their geometry is traced once). Default: ``voxels``.
    lazy_sigma_mm : float, optional
        Gaussians at least this wide are *deferred*: patches change their node grids at once and
        :attr:`dose_vector` at :meth:`sync` (:attr:`last_sync_change_gy` says by how much).
        Default None: every update applies everything.
    update : {'boxes', 'sparse'}
        How a patch update reaches the voxels. ``'boxes'`` (default): the changed node boxes are
        interpolated at every voxel in range (vectorised float32; best for many voxels).
        ``'sparse'``: a node -> voxel matrix (CSC, built once: 4 entries per voxel, beam and
        Gaussian) adds the change of the changed nodes to the voxels on them only, in float64
        (best for a small selection such as interactive dose shaping's tracked voxels). Full
        recomputes (:meth:`compute`) use the boxes either way.

    Attributes
    ----------
    fluence : list of ndarray
        Current fluence map per beam (rows v, columns u; pixels of ``fluence_mm``).
    dose_vector : ndarray
        Current dose (Gy) per selected voxel (float64).
    voxel_index : ndarray of int64
        Flat dose-grid index of each selected voxel.
    eval_index : ndarray of int64
        Flat dose-grid index of each voxel :meth:`evaluate` reads (``voxel_index`` by default).
    eval_position : ndarray of int64
        Position in ``eval_index`` of each selected voxel.
    depth : ndarray of float32, (n_beams, n_selected)
        Radiological depth (mm) of the selected voxels per beam (NaN out of reach).
    """

    def __init__(self, case, beams, machine: Machine | None = None, dose_grid_mm=None, voxels="body",
                 fluence_mm: float = 1.0, support_sigmas: float = 4.0, tile_mm: float = 5.0, ray_mm=None,
                 threads: int | None = None, *, eval_voxels=None, lazy_sigma_mm: float | None = None,
                 update: str = "boxes", dose_grid=NOT_GIVEN):
        if threads is None:
            threads = nb.get_num_threads()
        if not is_int(threads) or threads < 1:
            raise ValueError(f"threads must be a positive int or None (threads of the dose-update kernels), "
                             f"got {threads!r}")
        self.threads = int(threads)
        self.machine = generic_6mv() if machine is None else machine
        (fluence_mm,) = check_positive("fluence_mm", fluence_mm)
        (support_sigmas,) = check_positive("support_sigmas", support_sigmas)
        check_finite("case.density", case.density)
        self.case = case
        self.beams = prepare_beams(case, beams)
        dose_grid_mm = renamed_argument("dose_grid", dose_grid, "dose_grid_mm", dose_grid_mm, where="FluenceDose")
        self.grid = resolve_dose_grid(case, dose_grid_mm)
        self.voxel_index, _, self.ct_mask = select_voxels(case, self.grid, voxels)
        if eval_voxels is None:
            self.eval_index = self.voxel_index
            self.eval_position = np.arange(self.voxel_index.size, dtype=np.int64)
        else:
            self.eval_index = select_voxels(case, self.grid, eval_voxels)[0]
            pos = np.minimum(np.searchsorted(self.eval_index, self.voxel_index), self.eval_index.size - 1)
            if not np.array_equal(self.eval_index[pos], self.voxel_index):
                raise ValueError("eval_voxels must contain every voxel of voxels (evaluate reads a superset)")
            self.eval_position = pos.astype(np.int64)
        sel = None if eval_voxels is None else self.eval_position
        if lazy_sigma_mm is not None:
            (lazy_sigma_mm,) = check_positive("lazy_sigma_mm", lazy_sigma_mm)
        if update not in ("boxes", "sparse"):
            raise ValueError(f"update must be 'boxes' or 'sparse', got {update!r}")
        self.update = update
        self.lazy_sigma_mm = lazy_sigma_mm
        self.fluence_mm = fluence_mm
        self._ct_interp = None  # (CT indices, trilinear matrix) of vjp on the CT grid, built on first use
        self.dose_vector = np.zeros(len(self.voxel_index))
        self._tmp = np.zeros(len(self.voxel_index), np.float32)  # float32 sum of an update (zero between)
        self.last_sync_change_gy = 0.0
        self._states = [self._beam_state(beam, support_sigmas, lazy_sigma_mm) for beam in self.beams]
        self.fluence = [np.zeros(st.shape) for st in self._states]
        self._trace(support_sigmas, ray_mm, sel)
        self._stack()
        if update == "sparse":
            self._csc = self._node_matrix()

    def _beam_state(self, beam, support_sigmas, lazy_sigma_mm):
        """One beam's fluence map and the node-grid layout of each lateral Gaussian (paper 004 eq. 5)."""
        f = self.fluence_mm
        h = beam.bixel_mm
        n = h / f
        if abs(n - round(n)) > 1e-6:
            raise ValueError(f"fluence_mm={f} must divide the bixel size {h} mm (e.g. 1, 0.5)")
        n = int(round(n))
        bx = beam.bixels
        st = _BeamState()
        st.sub = n
        st.f = f
        vmin, vmax, umin, umax = bx.extent_mm()
        st.pu0 = umin + f / 2  # centre of pixel column 0
        st.pv0 = vmin + f / 2
        st.shape = (bx.shape[0] * n, bx.shape[1] * n)
        st.gaussians = self.machine.gaussians(1000.0)
        comp, sig, wt = st.gaussians
        st.lazy = np.array([lazy_sigma_mm is not None and s >= lazy_sigma_mm for s in sig], bool)
        st.g = []
        kerns = []
        for k, s, c in zip(comp, sig, wt):
            g = _BeamState()
            g.stride = max(1, int(np.floor(s / (4 * f))))
            g.mk = int(np.ceil(support_sigmas * s / f))
            m = np.arange(-g.mk, g.mk + 1) * f
            g.kern = ndtr((m + f / 2) / s) - ndtr((m - f / 2) / s)
            g.moff = int(np.ceil(g.mk / g.stride)) * g.stride
            g.nr = (st.shape[0] - 1 + 2 * g.moff) // g.stride + 1
            g.nc = (st.shape[1] - 1 + 2 * g.moff) // g.stride + 1
            st.g.append(g)
            kerns.append(g.kern)
        st.kern = np.concatenate(kerns)
        st.kern_off = np.concatenate([[0], np.cumsum([len(k) for k in kerns])]).astype(np.int64)
        st.mk = np.array([g.mk for g in st.g], np.int64)
        st.stride = np.array([g.stride for g in st.g], np.int64)
        st.moff = np.array([g.moff for g in st.g], np.int64)
        st.nr = np.array([g.nr for g in st.g], np.int64)
        st.nc = np.array([g.nc for g in st.g], np.int64)
        st.c_off = np.concatenate([[0], np.cumsum(st.nr * st.nc)]).astype(np.int64)
        if int(((st.nr + 2) * (st.nc + 2)).max()) >= 2**24:  # float32 flat node indices in _bilinear
            raise ValueError(f"fluence map {st.shape} with fluence_mm={f} needs more than 2**24 "
                             "convolution nodes; use a coarser fluence_mm or a smaller field")
        st.C = np.zeros(int(st.c_off[-1]))
        return st

    def _trace(self, support_sigmas, ray_mm, sel):
        """Per beam: every voxel's fluence-pixel coordinates, coefficients ``c_g D_i(d) (SAD/t)^2`` and depth.

        Written straight into the stacked (beam, voxel) float32 arrays: the evaluation set's
        (``_EUP``, ``_EVP``, ``_ECOEF``) and, when ``sel`` picks a subset, the selection's.
        """
        f = self.fluence_mm
        sts = self._states
        G = {st.mk.size for st in sts}
        if len(G) != 1:
            raise ValueError(f"the machine gives the beams different numbers of lateral Gaussians ({sorted(G)}); "
                             "FluenceDose needs one kernel layout for all beams")
        G = G.pop()
        B, ne = len(sts), self.eval_index.size
        pts = self.grid.index_to_world(np.stack(np.unravel_index(self.eval_index, self.grid.shape), axis=1))
        eup = np.full((B, ne), OUT_OF_REACH, np.float32)
        evp = np.full((B, ne), OUT_OF_REACH, np.float32)
        ecoef = np.zeros((B, G, ne), np.float32)
        self.depth = np.empty((B, self.voxel_index.size), np.float32)
        for b, (beam, st) in enumerate(zip(self.beams, sts)):
            comp, sig, wt = st.gaussians
            support = support_sigmas * float(sig.max())
            bv = beam_voxels(self.case, beam, self.machine, pts, support + f, ray_mm)
            if bv.ssd != 1000.0 and len(self.machine.kernel_ssds) > 1:
                comp, sig, wt = self.machine.gaussians(bv.ssd)
                if len(comp) != G:
                    raise ValueError("the machine gives the beams different numbers of lateral Gaussians; "
                                     "FluenceDose needs one kernel layout for all beams")
            ok = np.isfinite(bv.u) & np.isfinite(bv.v)
            # fluence-pixel coordinates (float32, shared by full recomputes and patch updates)
            eup[b, ok] = (bv.u[ok] - st.pu0) / f
            evp[b, ok] = (bv.v[ok] - st.pv0) / f
            wv = np.where(ok[:, None], bv.w, 0.0)
            for j, (k, c) in enumerate(zip(comp, wt)):
                ecoef[b, j] = c * wv[:, k]
            self.depth[b] = bv.depth if sel is None else bv.depth[sel]
        self._EUP, self._EVP, self._ECOEF = eup, evp, ecoef
        if sel is None:
            self._UP, self._VP, self._COEF = eup, evp, ecoef
        else:  # the selection's geometry is a subset of the evaluation set's
            self._UP, self._VP = eup[:, sel], evp[:, sel]
            self._COEF = np.ascontiguousarray(ecoef[:, :, sel])
        self._BBOX = np.stack([block_bbox(self._UP[b], self._VP[b], (self._COEF[b] != 0).any(axis=0))
                               for b in range(B)])

    def _node_matrix(self):
        """The node -> voxel matrix of the selection (CSC: ``colptr, rows, vals``), see ``update='sparse'``."""
        args = (self._UP, self._VP, self._COEF, self._cbase, self._C_OFF, self._NR, self._NC, self._STRIDE,
                self._MOFF)
        colptr = np.zeros(self._CC.size + 1, np.int64)
        node_matrix(*args, True, colptr, np.zeros(0, np.int32), np.zeros(0, np.float32))
        colptr = np.cumsum(colptr)
        rows = np.zeros(colptr[-1], np.int32)
        vals = np.zeros(colptr[-1], np.float32)
        node_matrix(*args, False, colptr[:-1].copy(), rows, vals)
        return colptr, rows, vals

    def _stack(self):
        """Stack the per-beam kernel layouts and node grids for the kernels (the per-beam attributes become views)."""
        sts = self._states
        self._KERN = np.concatenate([st.kern for st in sts])
        self._kbase = np.concatenate([[0], np.cumsum([st.kern.size for st in sts])]).astype(np.int64)
        self._CC = np.concatenate([st.C for st in sts])
        self._cbase = np.concatenate([[0], np.cumsum([st.C.size for st in sts])]).astype(np.int64)
        self._PEND = np.zeros_like(self._CC)  # deferred node changes of the lazy Gaussians
        for name in ("kern_off", "mk", "stride", "moff", "nr", "nc", "c_off", "lazy"):
            setattr(self, "_" + name.upper(), np.stack([getattr(st, name) for st in sts]))
        self._NODE_OFF = self._cbase[:-1, None] + self._C_OFF[:, :-1]  # flat offset of each (beam, Gaussian) grid
        for b, st in enumerate(sts):  # views, so that the per-beam state and the stacks stay one
            st.up, st.vp, st.coef, st.bbox = self._UP[b], self._VP[b], self._COEF[b], self._BBOX[b]
            st.C = self._CC[self._cbase[b] : self._cbase[b + 1]]
            for j, g in enumerate(st.g):
                g.C = st.C[st.c_off[j] : st.c_off[j + 1]].reshape(g.nr, g.nc)

    # ----------------------------------------------------------------------------------
    @property
    def n_beams(self) -> int:
        return len(self.beams)

    def map_shape(self, beam_index: int) -> tuple[int, int]:
        """Shape ``(rows v, columns u)`` of one beam's fluence map (pixels of ``fluence_mm``)."""
        return self._states[beam_index].shape

    def pixel_centres(self, beam_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres ``(v, u)`` (mm, isocentre plane) of one beam's fluence-map rows and columns."""
        st = self._states[beam_index]
        return st.pv0 + np.arange(st.shape[0]) * st.f, st.pu0 + np.arange(st.shape[1]) * st.f

    def bixel_to_fluence(self, beam_index: int, weights) -> np.ndarray:
        """Expand a beam's bixel weights to its fine fluence map (piecewise constant)."""
        bx = self.beams[beam_index].bixels
        n = self._states[beam_index].sub
        return np.kron(bx.to_map(weights), np.ones((n, n)))

    def set_bixel_weights(self, weights) -> np.ndarray:
        """Set all fluence maps from concatenated beamlet weights and recompute; returns the dose vector."""
        w = np.asarray(weights, float).ravel()
        tot = sum(b.bixels.n for b in self.beams)
        if w.size != tot:
            raise ValueError(f"weights has {w.size} entries, the beams have {tot} bixels")
        i = 0
        for b, beam in enumerate(self.beams):
            self.fluence[b] = self.bixel_to_fluence(b, w[i : i + beam.bixels.n])
            i += beam.bixels.n
        return self.compute()

    def set_fluence(self, beam_index: int, fmap) -> None:
        """Replace one beam's fluence map (call :meth:`compute` afterwards)."""
        f = np.asarray(fmap, float)
        st = self._states[beam_index]
        if f.shape != st.shape:
            raise ValueError(f"fluence map has shape {f.shape}, expected {st.shape} (rows v, columns u)")
        check_finite("fmap", f)
        self.fluence[beam_index] = f.copy()

    def compute(self) -> np.ndarray:
        """Full recompute of every beam's convolution and the dose; returns the dose vector."""
        self.dose_vector[:] = 0.0
        self._PEND[:] = 0.0
        self._run([(b, 0, 0, np.ascontiguousarray(f, dtype=np.float64)) for b, f in enumerate(self.fluence)], True)
        return self.dose_vector

    @staticmethod
    def _pack(patches):
        """Patches ``[(beam, row, col, delta), ...]`` as the flat arrays of the kernels."""
        pshape = np.array([d.shape for _, _, _, d in patches], np.int64).reshape(-1, 2)
        poff = np.concatenate([[0], np.cumsum(pshape[:, 0] * pshape[:, 1])]).astype(np.int64)
        pflat = np.concatenate([d.ravel() for _, _, _, d in patches]) if patches else np.zeros(0)
        prow = np.array([r for _, r, _, _ in patches], np.int64)
        pcol = np.array([c for _, _, c, _ in patches], np.int64)
        pbeam = np.array([b for b, _, _, _ in patches], np.int64)
        return pflat, poff, pshape, prow, pcol, pbeam

    def _run(self, patches, full):
        if self.update == "sparse" and not full:
            update_beams_sparse(*self._pack(patches), self._KERN, self._kbase, self._KERN_OFF, self._MK,
                                self._STRIDE, self._MOFF, self._NR, self._NC, self._CC, self._cbase, self._C_OFF,
                                self._LAZY, self._PEND, *self._csc, self.dose_vector)
            return
        with Threads(self.threads):
            update_beams(*self._pack(patches), full, self._UP, self._VP, self._COEF, self._BBOX, self._KERN,
                         self._kbase, self._KERN_OFF, self._MK, self._STRIDE, self._MOFF, self._NR, self._NC,
                         self._CC, self._cbase, self._C_OFF, self._LAZY, self._PEND, self._tmp, self.dose_vector)

    def _check_patch(self, beam_index, row, col, delta):
        if not is_int(beam_index) or not 0 <= beam_index < self.n_beams:
            raise ValueError(f"beam_index must be an int in 0..{self.n_beams - 1}, got {beam_index!r}")
        st = self._states[beam_index]
        d = np.ascontiguousarray(delta, dtype=np.float64)
        if d.ndim != 2:
            raise ValueError(f"delta must be a 2D patch (rows v, columns u), got shape {d.shape}")
        r1, c1 = row + d.shape[0], col + d.shape[1]
        if row < 0 or col < 0 or r1 > st.shape[0] or c1 > st.shape[1]:
            raise ValueError(f"patch rows {row}:{r1}, cols {col}:{c1} exceed the fluence map {st.shape} of beam "
                             f"{beam_index}")
        check_finite("delta", d)
        return int(beam_index), int(row), int(col), d

    def patch_update(self, beam_index: int, row: int, col: int, delta) -> np.ndarray:
        """Add ``delta`` to the fluence of one beam at pixel ``(row, col)`` and update the dose locally.

        Only the nodes within the kernel support of the patch and the voxels projecting onto
        them are touched (paper 004: "update only what the patch changed").

        Parameters
        ----------
        beam_index : int
        row, col : int
            Top-left fluence pixel of the patch.
        delta : ndarray (pr, pc)
            Fluence change.

        Returns
        -------
        ndarray
            The updated dose vector (the same array as :attr:`dose_vector`).
        """
        return self.patch_update_many([(beam_index, row, col, delta)])

    def _check_patches(self, patches) -> list:
        checked = []
        for item in patches:
            if not isinstance(item, (tuple, list)) or len(item) != 4:
                raise ValueError(f"each patch must be (beam_index, row, col, delta), got {item!r}")
            checked.append(self._check_patch(*item))
        return checked

    def patch_update_many(self, patches) -> np.ndarray:
        """Apply several fluence patches (any beams) in one update; returns the dose vector.

        The same as calling :meth:`patch_update` for each patch in turn, but the beams'
        contributions are summed in float32 and added to the float64 dose once, in one numba
        call (an interactive edit or a dose request that changes every beam's fluence at once).

        Parameters
        ----------
        patches : iterable of (beam_index, row, col, delta)
            As the arguments of :meth:`patch_update`. Every patch is checked before any is applied.

        Returns
        -------
        ndarray
            The updated dose vector (the same array as :attr:`dose_vector`).
        """
        checked = self._check_patches(patches)
        for b, r, c, d in checked:
            self.fluence[b][r : r + d.shape[0], c : c + d.shape[1]] += d
        if checked:
            self._run(checked, False)
        return self.dose_vector

    # -- deferred Gaussians, evaluation from the node grids, state ----------------------------------
    @property
    def has_pending(self) -> bool:
        """Whether deferred (lazy) node changes wait for :meth:`sync`."""
        return bool(self._LAZY.any()) and bool(self._PEND.any())

    def sync(self) -> np.ndarray:
        """Apply the deferred node changes of the lazy Gaussians to :attr:`dose_vector`; returns it.

        :attr:`last_sync_change_gy` is the largest change of a voxel's dose it made (Gy): how far
        the dose vector was behind before the call.
        """
        if not self.has_pending:
            return self.dose_vector
        before = self.dose_vector.copy()
        if self.update == "sparse":
            sync_sparse(self._PEND, self._cbase, self._C_OFF, self._NR, self._NC, self._LAZY, *self._csc,
                        self.dose_vector)
            self._PEND[:] = 0.0
            self.last_sync_change_gy = float(np.abs(self.dose_vector - before).max())
            return self.dose_vector
        with Threads(self.threads):
            for b in range(self.n_beams):
                s0, s1 = self._cbase[b], self._cbase[b + 1]
                if not self._LAZY[b].any() or not self._PEND[s0:s1].any():
                    continue
                boxes = pending_boxes(self._PEND[s0:s1], self._C_OFF[b], self._NR[b], self._NC[b], self._STRIDE[b],
                                      self._MOFF[b], self._LAZY[b])
                apply_boxes(self._UP[b], self._VP[b], self._COEF[b], self._BBOX[b], *boxes, self._tmp)
            flush(self._tmp, self.dose_vector)
        self._PEND[:] = 0.0
        self.last_sync_change_gy = float(np.abs(self.dose_vector - before).max())
        return self.dose_vector

    def _eval_args(self):
        z = np.zeros_like(self._NR)
        return (self._EUP, self._EVP, self._ECOEF, self._CC, self._NODE_OFF, z, z, self._NR, self._NC, self._STRIDE,
                self._MOFF)

    def evaluate(self, positions=None) -> np.ndarray:
        """Dose (Gy, float64) of voxels of the evaluation set, read from the node grids.

        Parameters
        ----------
        positions : array of int, optional
            Positions in :attr:`eval_index` (default: all, in order).

        Returns
        -------
        ndarray of float64
            Exact for the current fluence (float64 bilinear interpolation of the node grids,
            paper 004 eq. 4); the dose of one voxel does not depend on which others are asked.
        """
        pos = np.arange(self.eval_index.size, dtype=np.int64) if positions is None else \
            np.ascontiguousarray(positions, np.int64).ravel()
        out = np.empty(pos.size)
        if pos.size < _SERIAL_EVAL:
            eval_nodes_serial(pos, *self._eval_args(), out)
        else:
            eval_nodes_parallel(pos, *self._eval_args(), out)
        return out

    def patch_effect(self, patches, positions) -> np.ndarray:
        """Dose change (Gy) at evaluation positions if ``patches`` were added; nothing changes.

        Parameters
        ----------
        patches : iterable of (beam_index, row, col, delta)
            As :meth:`patch_update_many`.
        positions : array of int
            Positions in :attr:`eval_index`.
        """
        pos = np.ascontiguousarray(positions, np.int64).ravel()
        out = np.zeros(pos.size)
        checked = self._check_patches(patches)
        if checked:
            patch_effect(*self._pack(checked), self._KERN, self._kbase, self._KERN_OFF, self._MK, self._STRIDE,
                         self._MOFF, self._NR, self._NC, pos, self._EUP, self._EVP, self._ECOEF, out)
        return out

    def scale(self, factor: float) -> None:
        """Multiply every fluence map, node grid and dose by ``factor`` (exact: the dose is linear)."""
        f = float(factor)
        self.fluence = [fl * f for fl in self.fluence]
        self._CC *= f
        self._PEND *= f
        self.dose_vector *= f

    def state(self) -> FluenceState:
        """A copy of everything that changes (fluence, node grids, dose, deferred changes)."""
        return FluenceState([f.copy() for f in self.fluence], self._CC.copy(), self.dose_vector.copy(),
                            self._PEND.copy())

    def restore(self, state: FluenceState) -> None:
        """Return exactly to ``state`` (from :meth:`state`)."""
        self.fluence = [f.copy() for f in state.fluence]
        self._CC[:] = state.nodes
        self.dose_vector[:] = state.dose_vector
        self._PEND[:] = state.pending

    def eval_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Fluence-pixel coordinates ``(u, v)`` (float32, (n_beams, n_eval)) of the evaluation voxels.

        Voxels a beam does not reach have :data:`rtlab.dose.fluence_kernels.OUT_OF_REACH`.
        The arrays are the engine's own (read only).
        """
        return self._EUP, self._EVP

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Fluence-pixel coordinates ``(u, v)`` (float32, (n_beams, n_selected)) of the selected voxels."""
        return self._UP, self._VP

    def dose(self, x=None, on: str = "ct") -> np.ndarray:
        """Dose ``(z, y, x)`` in Gy on the CT grid (``'ct'``) or the dose grid (``'dose'``).

        Parameters
        ----------
        x : array_like, optional
            Beamlet weights (concatenated over the beams): set every fluence map from them first
            (:meth:`set_bixel_weights`). ``None`` (default): the current dose. With :meth:`vjp`
            this is the :class:`~rtlab.dose.engine.DoseEngine` interface.
        on : {'ct', 'dose'}
        """
        if isinstance(x, str):  # the old signature dose(on) called positionally
            x, on = None, x
        if x is not None:
            self.set_bixel_weights(x)
        out = np.zeros(self.grid.size)
        out[self.voxel_index] = self.dose_vector
        out = out.reshape(self.grid.shape)
        if on == "dose" or self.grid.is_same(self.case.grid):
            if on not in ("ct", "dose"):
                raise ValueError(f"on must be 'ct' or 'dose', got {on!r}")
            return out
        if on != "ct":
            raise ValueError(f"on must be 'ct' or 'dose', got {on!r}")
        res = resample(out, self.grid, self.case.grid, order=1)
        res[~self.ct_mask] = 0.0
        return res

    def vjp(self, x, g, on: str = "ct") -> np.ndarray:
        """Gradient of ``sum(g * dose(x, on))`` with respect to the beamlet weights ``x`` (float64).

        The dose is linear in the fluence, so ``x`` is not used: the result is the adjoint of
        bixel weights -> fluence maps -> node grids (paper 004 eq. 5) -> voxel doses (eq. 4,
        bilinear) -> ``on``'s grid, applied to ``g`` in float64 numpy (the forward pass runs in
        float32, so ``<g, dose(x)> = <vjp(x, g), x>`` holds to about 1e-6 relative).

        Parameters
        ----------
        x : array_like or None
            Beamlet weights (unused; kept for the interface).
        g : ndarray
            ``dL/dD`` with the shape of :meth:`dose` on ``on``.
        on : {'ct', 'dose'}
        """
        if on not in ("ct", "dose"):
            raise ValueError(f"on must be 'ct' or 'dose', got {on!r}")
        grid = self.case.grid if on == "ct" else self.grid
        g = np.asarray(grid.check_array("g", g), np.float64)
        if on == "dose" or self.grid.is_same(self.case.grid):
            gv = g.ravel()[self.voxel_index]
        else:
            if self._ct_interp is None:
                ct_index = np.flatnonzero(self.ct_mask.ravel())
                self._ct_interp = (ct_index, trilinear_matrix(self.grid, self.voxel_index, self.case.grid, ct_index))
            ct_index, R = self._ct_interp
            gv = R.T @ g.ravel()[ct_index]
        out = []
        for b, (beam, st) in enumerate(zip(self.beams, self._states)):
            psi_bar = np.zeros(st.shape)
            up = st.up.astype(np.float64)
            vp = st.vp.astype(np.float64)
            for j, gs in enumerate(st.g):
                # adjoint of the bilinear interpolation: scatter coef * g onto the node grid
                w = st.coef[j].astype(np.float64) * gv
                xn = (up + gs.moff) / gs.stride
                yn = (vp + gs.moff) / gs.stride
                ix = np.floor(xn).astype(np.int64)
                iy = np.floor(yn).astype(np.int64)
                ax, ay = xn - ix, yn - iy
                node = np.zeros(gs.nr * gs.nc)
                for dy, wy in ((0, 1.0 - ay), (1, ay)):
                    for dx, wx in ((0, 1.0 - ax), (1, ax)):
                        r, c = iy + dy, ix + dx
                        ok = (r >= 0) & (r < gs.nr) & (c >= 0) & (c < gs.nc) & (w != 0)
                        np.add.at(node, r[ok] * gs.nc + c[ok], (w * wy * wx)[ok])
                node = node.reshape(gs.nr, gs.nc)
                # adjoint of the separable convolution C = Kr psi Kc^T: psi_bar += Kr^T C_bar Kc
                kr = self._kernel_matrix(gs, gs.nr, st.shape[0])
                kc = self._kernel_matrix(gs, gs.nc, st.shape[1])
                psi_bar += kr.T @ node @ kc
            # adjoint of the bixel -> fluence expansion (np.kron with an n x n block of ones)
            n = st.sub
            R_, C_ = beam.bixels.shape
            out.append(beam.bixels.from_map(psi_bar.reshape(R_, n, C_, n).sum(axis=(1, 3))))
        return np.concatenate(out)

    @staticmethod
    def _kernel_matrix(gs, n_nodes, n_pix) -> np.ndarray:
        """``K[node, pixel] = kern(node * stride - moff - pixel)`` (zero beyond the support), float64."""
        d = np.arange(n_nodes)[:, None] * gs.stride - gs.moff - np.arange(n_pix)[None, :]
        return np.where(np.abs(d) <= gs.mk, gs.kern[np.clip(d + gs.mk, 0, 2 * gs.mk)], 0.0)

    def time_patch_updates(self, patch_bixels: int = 5, repeats: int = 5) -> float:
        """Median wall time (ms) of one update that changes a patch of ``patch_bixels`` x ``patch_bixels`` bixels on every beam.

        The patches (centred in each map, alternately +0.01 and -0.01) go in one
        :meth:`patch_update_many` call; the first of ``repeats + 1`` runs is discarded.
        """
        times = []
        for rep in range(repeats + 1):
            patches = []
            for b, st in enumerate(self._states):
                p = min(patch_bixels * st.sub, st.shape[0]), min(patch_bixels * st.sub, st.shape[1])
                r = (st.shape[0] - p[0]) // 2
                c = (st.shape[1] - p[1]) // 2
                patches.append((b, r, c, np.full(p, 0.01 * (1 if rep % 2 == 0 else -1))))
            t0 = time.perf_counter()
            self.patch_update_many(patches)
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]) * 1e3)
