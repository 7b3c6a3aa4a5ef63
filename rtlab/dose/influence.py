"""Beamlet influence matrix (dose per unit bixel fluence) as float32 CSR.

``A[i, j]`` is the dose (Gy per unit fluence, before MU calibration) in selected voxel ``i``
from bixel ``j`` (columns concatenated beam after beam, row-major over each beam's bixel
mask). Built in two parallel numba passes (count, then fill; see :mod:`rtlab.dose.kernels`),
so the CSR arrays are written directly with sorted column indices.

Voxel selection and dose grid
-----------------------------
Rows are the voxels that matter: ``voxels='body'`` (default; the body structure, or the
union of all structures when there is none), ``'all'`` or a boolean mask on the CT grid.
With a coarser dose grid (``dose_grid_mm``: a spacing in mm or a :class:`~rtlab.core.geometry.Grid`) the rows are the
dose-grid voxels needed to interpolate every selected CT voxel (the 2 x 2 x 2 dose voxels
around it), and :meth:`InfluenceMatrix.dose` with ``on='ct'`` resamples the dose trilinearly
(:func:`rtlab.core.geometry.resample`, order 1) back to the CT grid, zero outside the selection.

Radiological depth: one fan of Siddon rays per beam (:func:`rtlab.dose.raytrace.fan_depth`)
covering the beam's bixels plus the cut-off, interpolated trilinearly at each dose voxel
(:func:`rtlab.dose.voxels.beam_voxels`, shared with the fluence engine).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tqdm.auto import tqdm

from .._util import NOT_GIVEN, check_finite, check_positive, renamed_argument
from ..core.beams import prepare_beams
from ..core.geometry import Grid, resample, trilinear_matrix
from . import gpu as gpu_module
from . import kernels as K
from .broad import (BROAD_REACH_SIGMAS, DEFAULT_BROAD_SIGMA_MM, BroadDose, auto_cutoff_mm, build_broad,
                    split_gaussians)
from .machine import Machine, generic_6mv
from .mu import beam_mu
from .operator import InfluenceOperator
from .voxels import BeamVoxels, beam_voxels, resolve_dose_grid, select_voxels  # noqa: F401 (re-exported)

__all__ = ["InfluenceMatrix", "build_influence", "join_influence", "prepare_beams", "DEFAULT_CUTOFF_MM",
           "DEFAULT_BROAD_SIGMA_MM", "select_voxels", "BeamVoxels", "beam_voxels", "resolve_dose_grid"]

#: Default lateral cut-off of the sparse matrix: None, i.e. automatic (:func:`rtlab.dose.broad.auto_cutoff_mm`:
#: 4 sigma of the widest Gaussian kept in the matrix plus half a bixel diagonal). Until 0.2 it
#: was 40 mm for every Gaussian; docs/dose_engine.md has the accuracy/speed table.
DEFAULT_CUTOFF_MM = None


@dataclass
class InfluenceMatrix:
    """A beamlet influence matrix with its geometry: the dose engine of planning.

    The dose of beamlet weights ``x`` at the rows is ``A_n x + P K x``: the sparse matrix
    :attr:`matrix` holds the Gaussians narrower than :attr:`broad_sigma_mm` (all of them when
    it is None) up to the lateral cut-off :attr:`cutoff_mm`, and :attr:`broad` applies the broad
    ones without truncation through node grids (:mod:`rtlab.dose.broad`). Use :meth:`matvec` /
    :meth:`rmatvec` (rows), :meth:`dose` / :meth:`vjp` (grids) or :meth:`operator` (numba / GPU
    products); :attr:`matrix` alone is only the narrow part whenever :attr:`broad` is set.

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix, float32, (n_voxels, n_beamlets)
        Gy per unit bixel fluence of the narrow Gaussians (all Gaussians when ``broad`` is None).
    grid : Grid
        The dose grid (rows live on it).
    ct_grid : Grid
    voxel_index : ndarray of int64
        Flat index into ``grid.shape`` of each row.
    beamlet_slices : list of slice
        Columns of each beam.
    beams : list of Beam
    machine : Machine
    cutoff_mm : float
        Lateral cut-off of :attr:`matrix` (mm, isocentre plane).
    ct_mask : ndarray of bool
        Selected CT voxels (dose is zero elsewhere when mapped ``on='ct'``).
    timings : dict
        Seconds spent in ray tracing, counting, filling, and the node path (``broad_s``).
    backend : str
        ``'cpu'`` (numba kernels) or ``'cuda'`` (numba.cuda kernels) for the count/fill passes.
    broad : rtlab.dose.broad.BroadDose or None
        The broad Gaussians' node path (None: everything is in :attr:`matrix`).
    broad_sigma_mm : float or None
        Gaussians at least this wide are in :attr:`broad`.
    """

    matrix: sp.csr_matrix
    grid: Grid
    ct_grid: Grid
    voxel_index: np.ndarray
    beamlet_slices: list
    beams: list
    machine: Machine
    cutoff_mm: float
    ct_mask: np.ndarray
    timings: dict = field(default_factory=dict)
    backend: str = "cpu"
    broad: BroadDose | None = None
    broad_sigma_mm: float | None = None
    _ct_interp: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _csc: object = field(default=None, init=False, repr=False, compare=False)

    @property
    def shape(self):
        """``(n_rows, n_beamlets)``."""
        return self.matrix.shape

    @property
    def nnz(self) -> int:
        """Stored entries: the sparse matrix plus the node path's interpolation matrix."""
        return int(self.matrix.nnz) + (self.broad.nnz if self.broad is not None else 0)

    def _weights(self, weights) -> np.ndarray:
        w = np.asarray(weights, np.float64).ravel()
        if w.size != self.matrix.shape[1]:
            raise ValueError(f"weights has {w.size} entries, the matrix has {self.matrix.shape[1]} beamlets")
        return w

    def matvec(self, weights) -> np.ndarray:
        """Dose at the rows ``A_n x + P K x`` (Gy, float64) of beamlet ``weights``."""
        w = self._weights(weights)
        y = np.asarray(self.matrix @ w, np.float64)
        if self.broad is not None:
            y += self.broad.matvec(w)
        return y

    def rmatvec(self, g) -> np.ndarray:
        """``A_n^T g + K^T P^T g`` (float64, one value per beamlet) for a per-row vector ``g``."""
        g = np.asarray(g, np.float64).ravel()
        if g.size != self.matrix.shape[0]:
            raise ValueError(f"g has {g.size} entries, expected {self.matrix.shape[0]} (one per row)")
        out = np.asarray(self.matrix.T @ g, np.float64)
        if self.broad is not None:
            out += self.broad.rmatvec(g)
        return out

    def __matmul__(self, x):
        return self.matvec(x)

    def dose_vector(self, weights) -> np.ndarray:
        """Dose at the rows (Gy per selected voxel, float64): :meth:`matvec`."""
        return self.matvec(weights)

    def beam_dose_vectors(self, weights) -> list[np.ndarray]:
        """Dose at the rows of each beam alone (list of float64 vectors, beam order)."""
        w = self._weights(weights)
        out = []
        for sl in self.beamlet_slices:
            wb = np.zeros_like(w)
            wb[sl] = w[sl]
            out.append(self.matvec(wb))
        return out

    def to_grid(self, values, on: str = "ct") -> np.ndarray:
        """Scatter a per-row vector onto the dose grid, or resample it to the CT grid."""
        vals = np.asarray(values, np.float64).ravel()
        if vals.size != self.matrix.shape[0]:
            raise ValueError(f"values has {vals.size} entries, expected {self.matrix.shape[0]} (one per row)")
        out = np.zeros(self.grid.size)
        out[self.voxel_index] = vals
        out = out.reshape(self.grid.shape)
        if on == "dose":
            return out
        if on != "ct":
            raise ValueError(f"on must be 'ct' or 'dose', got {on!r}")
        if self.grid.is_same(self.ct_grid):
            return out
        res = resample(out, self.grid, self.ct_grid, order=1)
        res[~self.ct_mask] = 0.0
        return res

    def dose(self, weights, on: str = "ct") -> np.ndarray:
        """Dose ``(z, y, x)`` in Gy for beamlet ``weights`` on the CT grid (``'ct'``) or dose grid.

        With :meth:`vjp` this is the :class:`~rtlab.dose.engine.DoseEngine` interface.
        """
        return self.to_grid(self.dose_vector(weights), on=on)

    def vjp(self, weights, g, on: str = "ct") -> np.ndarray:
        """Gradient of ``sum(g * dose(weights, on))`` with respect to the beamlet weights (float64).

        The dose is linear in the weights, so ``weights`` is not used: the result is
        :meth:`rmatvec` of the rows' share of ``g`` (on the CT grid with a coarser dose grid,
        through the transpose of the trilinear interpolation of :meth:`to_grid`).

        Parameters
        ----------
        weights : array_like or None
            Beamlet weights (unused; kept for the interface).
        g : ndarray
            ``dL/dD`` with the shape of :meth:`dose` on ``on``.
        on : {'ct', 'dose'}
        """
        if on not in ("ct", "dose"):
            raise ValueError(f"on must be 'ct' or 'dose', got {on!r}")
        grid = self.ct_grid if on == "ct" else self.grid
        g = np.asarray(grid.check_array("g", g), np.float64)
        if on == "dose" or self.grid.is_same(self.ct_grid):
            rows = g.ravel()[self.voxel_index]
        else:
            if self._ct_interp is None:
                ct_index = np.flatnonzero(self.ct_mask.ravel())
                self._ct_interp = (ct_index, trilinear_matrix(self.grid, self.voxel_index, self.ct_grid, ct_index))
            ct_index, R = self._ct_interp
            rows = R.T @ g.ravel()[ct_index]
        return self.rmatvec(rows)

    def operator(self, backend: str = "numba", check: bool = True):
        """The rows' dose as a fast linear operator (:class:`rtlab.dose.operator.InfluenceOperator`).

        ``backend`` as :class:`rtlab.dose.sparse.DoseOperator` (``'numba'``, ``'scipy'``,
        ``'gpu'``, ...): both sparse parts run there, the node convolution on the host.
        """
        return InfluenceOperator(self, backend=backend, check=check)

    def select_beams(self, beam_idx) -> "InfluenceMatrix":
        """The influence of the beams ``beam_idx`` only (columns in that order; same rows).

        The first call converts the sparse parts to CSC once (kept on this object), so that
        repeated selections (beam-angle search) slice columns cheaply.
        """
        beam_idx = [int(b) for b in beam_idx]
        if not beam_idx:
            raise ValueError("beam_idx is empty; choose at least one beam")
        if min(beam_idx) < 0 or max(beam_idx) >= len(self.beams):
            raise ValueError(f"beam_idx must index the beams (0..{len(self.beams) - 1}), got {beam_idx}")
        cols = np.concatenate([np.arange(self.beamlet_slices[b].start, self.beamlet_slices[b].stop)
                               for b in beam_idx])
        if self._csc is None:  # column slicing is cheap on CSC; cached for repeated selections
            self._csc = self.matrix.tocsc()
        A = self._csc[:, cols].tocsr()
        A.sort_indices()
        slices, col = [], 0
        for b in beam_idx:
            n = self.beamlet_slices[b].stop - self.beamlet_slices[b].start
            slices.append(slice(col, col + n))
            col += n
        broad = None if self.broad is None else self.broad.select_beams(beam_idx, slices)
        return InfluenceMatrix(A, self.grid, self.ct_grid, self.voxel_index, slices, [self.beams[b] for b in beam_idx],
                               self.machine, self.cutoff_mm, self.ct_mask, dict(self.timings), self.backend, broad,
                               self.broad_sigma_mm)

    def fluence_maps(self, weights) -> list[np.ndarray]:
        """Per-beam 2D fluence maps (rows v, columns u; one value per bixel) of beamlet ``weights``."""
        w = self._weights(weights)
        return [b.bixels.to_map(w[s]) for b, s in zip(self.beams, self.beamlet_slices)]

    def beam_mu(self, weights) -> np.ndarray:
        """Open-field-equivalent MU per beam of beamlet ``weights`` (:func:`rtlab.dose.mu.beam_mu`)."""
        return beam_mu(self.fluence_maps(weights), self.machine)


def join_influence(parts) -> InfluenceMatrix:
    """Influence matrices of the same rows and settings, beams side by side (columns of ``parts[0]`` first).

    What the batch does with per-beam matrices built on workers: the narrow matrices are
    stacked column-wise and the node paths joined (:meth:`rtlab.dose.broad.BroadDose.join`).

    Raises
    ------
    TypeError, ValueError
        Not a list of InfluenceMatrix; parts built on other voxels, grids, sources, cut-offs or
        node-path settings.
    """
    parts = list(parts)
    if not parts or not all(isinstance(p, InfluenceMatrix) for p in parts):
        raise TypeError("parts must be a non-empty list of rtlab.dose.InfluenceMatrix (one per beam)")
    p0 = parts[0]
    for i, p in enumerate(parts[1:], 1):
        if not (p.grid.is_same(p0.grid) and p.ct_grid.is_same(p0.ct_grid) and np.array_equal(p.voxel_index, p0.voxel_index)
                and p.machine.key() == p0.machine.key() and p.cutoff_mm == p0.cutoff_mm
                and p.broad_sigma_mm == p0.broad_sigma_mm):
            raise ValueError(f"parts[{i}] was built on other voxels, grid, source, cut-off or broad_sigma_mm than "
                             "parts[0]; build every beam of a case with the same settings")
    if len(parts) == 1:
        return p0
    A = sp.hstack([p.matrix for p in parts], format="csr", dtype=np.float32)
    A.sort_indices()
    slices, beams, col = [], [], 0
    for p in parts:
        for s, b in zip(p.beamlet_slices, p.beams):
            slices.append(slice(col + s.start, col + s.stop))
            beams.append(b)
        col += p.matrix.shape[1]
    broad = None
    if any(p.broad is not None for p in parts):
        if not all(p.broad is not None for p in parts):  # pragma: no cover - same settings, same machine
            raise ValueError("some parts have a node path and others not; build them with the same settings")
        bslices, k = [], 0
        for p in parts:
            bslices.append([slices[k + j] for j in range(len(p.beams))])
            k += len(p.beams)
        broad = BroadDose.join([p.broad for p in parts], [s for ss in bslices for s in ss])
    timings = {k: float(sum(p.timings.get(k, 0.0) for p in parts)) for k in p0.timings}
    return InfluenceMatrix(A, p0.grid, p0.ct_grid, p0.voxel_index, slices, beams, p0.machine, p0.cutoff_mm,
                           p0.ct_mask, timings, backend=p0.backend, broad=broad, broad_sigma_mm=p0.broad_sigma_mm)


def _resolve_gpu(gpu) -> bool:
    """``gpu`` argument of :func:`build_influence` -> whether to try the CUDA fill kernel."""
    if gpu is None or gpu is False:
        return False
    if gpu is True:
        return True
    if gpu == "auto":
        return gpu_module.numba_cuda_available()
    raise ValueError(f"gpu must be True, False or 'auto', got {gpu!r}")


def build_influence(case, beams, machine: Machine | None = None, dose_grid_mm=None,
                    cutoff_mm: float | None = DEFAULT_CUTOFF_MM, voxels="body", progress: bool = True,
                    ray_mm: float | None = None, bixel_mm: float = 5.0, n_chunks: int = 256, gpu="auto", *,
                    broad_sigma_mm: float | None = DEFAULT_BROAD_SIGMA_MM, dose_grid=NOT_GIVEN) -> InfluenceMatrix:
    """Build the beamlet influence matrix of ``beams`` on ``case``.

    Parameters
    ----------
    case : rtlab.core.case.Case
    beams : sequence of Beam, BeamSpec or gantry angles (degrees)
    machine : Machine, optional
        Default :func:`rtlab.dose.generic_6mv`.
    dose_grid_mm : float (mm) or Grid, optional
        Dose-grid spacing; default the CT grid (:func:`resolve_dose_grid`).
    cutoff_mm : float, optional
        Lateral cut-off of the sparse matrix (isocentre plane, radial, from the voxel's
        projection to the bixel centre). Default (None): automatic,
        :func:`rtlab.dose.broad.auto_cutoff_mm` (4 sigma of the widest Gaussian in the matrix
        plus half a bixel diagonal: 13 mm for :func:`rtlab.dose.generic_6mv` with 5 mm bixels).
    voxels : 'body', 'all' or bool mask on the CT grid
    progress : bool
        Show a tqdm bar over beams.
    ray_mm : float, optional
        Fan ray spacing (default: smallest CT spacing).
    bixel_mm : float
        Bixel size for beams given as angles/BeamSpec.
    n_chunks : int
        Row chunks of the fill pass (about equal non-zero count each, run in parallel).
    gpu : bool or 'auto'
        Count and fill the matrix with the numba.cuda kernels of :mod:`rtlab.dose.gpu`
        (ray tracing stays on the CPU). ``'auto'`` (default) uses them when numba.cuda sees
        a device and falls back to the CPU kernels (with a warning) if the device path fails;
        ``True`` requires a device (``ValueError`` otherwise). The result equals the CPU
        matrix within float32 rounding.
    broad_sigma_mm : float or None
        Gaussians at least this wide (mm) are applied without truncation through node grids
        (:mod:`rtlab.dose.broad`; default :data:`DEFAULT_BROAD_SIGMA_MM`); the rest go to the
        sparse matrix. None puts every Gaussian in the sparse matrix (the engine before 0.2;
        then pass a ``cutoff_mm`` or get the full-kernel automatic one).
    dose_grid : float or Grid, optional
        Old name of ``dose_grid_mm`` (kept for one release).

    Returns
    -------
    InfluenceMatrix
        ``timings`` holds ``trace_s``, ``count_s``, ``fill_s``, ``broad_s``, ``total_s``
        (seconds); ``backend`` is ``'cpu'`` or ``'cuda'`` (where the sparse matrix was counted and
        filled; the node path is built on the CPU).
    """
    t_start = time.perf_counter()
    dose_grid_mm = renamed_argument("dose_grid", dose_grid, "dose_grid_mm", dose_grid_mm, where="build_influence")
    use_gpu = _resolve_gpu(gpu)
    machine = generic_6mv() if machine is None else machine
    if not isinstance(machine, Machine):
        raise TypeError(f"machine must be an rtlab.dose.Machine, got {type(machine).__name__}")
    if broad_sigma_mm is not None:
        (broad_sigma_mm,) = check_positive("broad_sigma_mm", broad_sigma_mm)
    check_finite("case.density", case.density)
    beams = prepare_beams(case, beams, bixel_mm=bixel_mm)
    h = beams[0].bixel_mm
    if any(abs(b.bixel_mm - h) > 1e-9 for b in beams):
        raise ValueError("all beams must share one bixel size (bixel_mm)")
    if cutoff_mm is None:
        cutoff_mm = auto_cutoff_mm(machine, h, broad_sigma_mm)
    (cutoff_mm,) = check_positive("cutoff_mm", cutoff_mm)
    # voxels farther than the cut-off still get the broad Gaussians' dose: trace them too
    widest_broad = max((float(s[split_gaussians(s, broad_sigma_mm)].max())
                        for s in (machine.gaussians(ssd)[1] for ssd in machine.kernel_ssds)
                        if split_gaussians(s, broad_sigma_mm).any()), default=0.0)
    margin = max(cutoff_mm, BROAD_REACH_SIGMAS * widest_broad)
    grid = resolve_dose_grid(case, dose_grid_mm)
    vidx, _, ct_mask = select_voxels(case, grid, voxels)
    pts = np.ascontiguousarray(grid.index_to_world(np.stack(np.unravel_index(vidx, grid.shape), axis=1)), np.float64)
    nb_, n = len(beams), len(vidx)
    U = np.empty((nb_, n))
    V = np.empty((nb_, n))
    W = np.empty((nb_, n, 3))
    it = beams
    if progress:
        it = tqdm(beams, desc="ray tracing", leave=False)
    t0 = time.perf_counter()
    ssds = []
    for b, beam in enumerate(it):
        bv = beam_voxels(case, beam, machine, pts, margin, ray_mm)
        U[b], V[b], W[b] = bv.u, bv.v, bv.w
        ssds.append(bv.ssd)
    t_trace = time.perf_counter() - t0
    gs_all = [machine.gaussians(s) for s in ssds]
    gs = []
    for c, sg, w in gs_all:  # the sparse matrix gets the narrow Gaussians
        keep = ~split_gaussians(sg, broad_sigma_mm) & (w != 0)
        gs.append((c[keep], sg[keep], w[keep]))
    G = max(max(len(g[0]) for g in gs), 1)
    gcomp = np.zeros((nb_, G), np.int64)
    gsig = np.ones((nb_, G))
    gw = np.zeros((nb_, G))
    ng = np.zeros(nb_, np.int64)
    for b, (c, s, w) in enumerate(gs):
        gcomp[b, : len(c)], gsig[b, : len(c)], gw[b, : len(c)], ng[b] = c, s, w, len(c)
    r0 = np.array([b.bixels.r0 for b in beams], np.int64)
    c0 = np.array([b.bixels.c0 for b in beams], np.int64)
    nr = np.array([b.bixels.shape[0] for b in beams], np.int64)
    nc = np.array([b.bixels.shape[1] for b in beams], np.int64)
    colstart = np.zeros(nb_, np.int64)
    slices = []
    col = 0
    for b, beam in enumerate(beams):
        colstart[b] = col
        slices.append(slice(col, col + beam.bixels.n))
        col += beam.bixels.n
    runs = K.bixel_runs([beam.bixels.index_map() for beam in beams], colstart)
    geo = (U, V, W, r0, c0, nr, nc) + runs + (gcomp, gsig, gw, ng, float(h), float(cutoff_mm))
    backend = "cpu"
    arrays = None
    if use_gpu:
        try:
            arrays, t_count, t_fill = gpu_module.influence_csr_cuda(*geo, K.PHI_TABLE)
            backend = "cuda"
        except Exception as exc:
            if gpu is True:
                raise
            warnings.warn(f"GPU influence build failed ({type(exc).__name__}: {exc}); using the CPU kernels",
                          RuntimeWarning, stacklevel=2)
    if arrays is None:
        arrays, t_count, t_fill = _influence_csr_cpu(geo, n, n_chunks)
    indptr, indices, data = arrays
    A = sp.csr_matrix((data, indices, indptr), shape=(n, col), copy=False)
    A.has_sorted_indices = True
    if not ng.any():  # every Gaussian is broad: the counted entries are zeros
        A = sp.csr_matrix((n, col), dtype=np.float32)
    t0 = time.perf_counter()
    broad = build_broad(U, V, W, beams, gs_all, broad_sigma_mm, slices, n_chunks=n_chunks)
    t_broad = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    return InfluenceMatrix(A, grid, case.grid, vidx, slices, beams, machine, float(cutoff_mm), ct_mask,
                           {"trace_s": t_trace, "count_s": t_count, "fill_s": t_fill, "broad_s": t_broad,
                            "total_s": total}, backend=backend, broad=broad,
                           broad_sigma_mm=None if broad_sigma_mm is None else float(broad_sigma_mm))


def _influence_csr_cpu(geo, n, n_chunks):
    """Count and fill the CSR arrays with the parallel numba kernels; returns arrays and times."""
    U, V, W, r0, c0, nr, nc, seg_ptr, seg_c0, seg_c1, seg_j0, gcomp, gsig, gw, ng, h, cut = geo
    t0 = time.perf_counter()
    counts = np.zeros(n, np.int64)
    bounds = np.linspace(0, n, min(max(n_chunks, 1), max(n, 1)) + 1).astype(np.int64)
    K.count_entries(U, V, r0, c0, nr, nc, seg_ptr, seg_c0, seg_c1, h, cut, bounds, counts)
    nnz = int(counts.sum())
    idx_t = np.int32 if nnz < 2**31 - 1 else np.int64
    indptr = np.zeros(n + 1, idx_t)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, idx_t)
    data = np.empty(nnz, np.float32)
    # chunks of about equal non-zero count, so that both threads get the same work
    targets = np.linspace(0, nnz, min(max(n_chunks, 1), max(n, 1)) + 1)
    fb = np.unique(np.searchsorted(indptr, targets, side="left").astype(np.int64))
    fb[0], fb[-1] = 0, n
    t_count = time.perf_counter() - t0
    t0 = time.perf_counter()
    K.fill_entries(U, V, W, r0, c0, nr, nc, seg_ptr, seg_c0, seg_c1, seg_j0, gcomp, gsig, gw, ng, h, cut,
                   fb, indptr, indices, data, K.PHI_TABLE)
    return (indptr, indices, data), t_count, time.perf_counter() - t0
