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
from .machine import Machine, generic_6mv
from .mu import beam_mu
from .voxels import BeamVoxels, beam_voxels, resolve_dose_grid, select_voxels  # noqa: F401 (re-exported)

__all__ = ["InfluenceMatrix", "build_influence", "prepare_beams", "DEFAULT_CUTOFF_MM", "select_voxels", "BeamVoxels",
           "beam_voxels", "resolve_dose_grid"]

#: Default lateral cut-off (mm), see docs/dose_engine.md for the accuracy/speed table.
DEFAULT_CUTOFF_MM = 40.0


@dataclass
class InfluenceMatrix:
    """A beamlet influence matrix with its geometry.

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix, float32, (n_voxels, n_beamlets)
        Gy per unit bixel fluence.
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
    ct_mask : ndarray of bool
        Selected CT voxels (dose is zero elsewhere when mapped ``on='ct'``).
    timings : dict
        Seconds spent in ray tracing, counting, filling.
    backend : str
        ``'cpu'`` (numba kernels) or ``'cuda'`` (numba.cuda kernels) for the count/fill passes.
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
    _ct_interp: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shape(self):
        return self.matrix.shape

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def dose_vector(self, weights) -> np.ndarray:
        """``A @ weights`` (Gy per selected voxel, float64)."""
        w = np.asarray(weights, np.float64).ravel()
        if w.size != self.matrix.shape[1]:
            raise ValueError(f"weights has {w.size} entries, the matrix has {self.matrix.shape[1]} beamlets")
        return self.matrix @ w

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
        ``A^T g_rows`` with ``g_rows`` the rows' share of ``g`` (on the CT grid with a coarser
        dose grid, through the transpose of the trilinear interpolation of :meth:`to_grid`).

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
        return np.asarray(self.matrix.T @ rows, np.float64)

    def fluence_maps(self, weights) -> list[np.ndarray]:
        """Per-beam 2D fluence maps (rows v, columns u; one value per bixel) of beamlet ``weights``."""
        w = np.asarray(weights, np.float64).ravel()
        if w.size != self.matrix.shape[1]:
            raise ValueError(f"weights has {w.size} entries, the matrix has {self.matrix.shape[1]} beamlets")
        return [b.bixels.to_map(w[s]) for b, s in zip(self.beams, self.beamlet_slices)]

    def beam_mu(self, weights) -> np.ndarray:
        """Open-field-equivalent MU per beam of beamlet ``weights`` (:func:`rtlab.dose.mu.beam_mu`)."""
        return beam_mu(self.fluence_maps(weights), self.machine)


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
                    cutoff_mm: float = DEFAULT_CUTOFF_MM, voxels="body", progress: bool = True,
                    ray_mm: float | None = None, bixel_mm: float = 5.0, n_chunks: int = 256, gpu="auto", *,
                    dose_grid=NOT_GIVEN) -> InfluenceMatrix:
    """Build the beamlet influence matrix of ``beams`` on ``case``.

    Parameters
    ----------
    case : rtlab.core.case.Case
    beams : sequence of Beam, BeamSpec or gantry angles (degrees)
    machine : Machine, optional
        Default :func:`rtlab.dose.generic_6mv`.
    dose_grid_mm : float (mm) or Grid, optional
        Dose-grid spacing; default the CT grid (:func:`resolve_dose_grid`).
    cutoff_mm : float
        Lateral cut-off (isocentre plane, radial, from the voxel's projection to the bixel
        centre), default :data:`DEFAULT_CUTOFF_MM`.
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
    dose_grid : float or Grid, optional
        Old name of ``dose_grid_mm`` (kept for one release).

    Returns
    -------
    InfluenceMatrix
        ``timings`` holds ``trace_s``, ``count_s``, ``fill_s``, ``total_s`` (seconds);
        ``backend`` is ``'cpu'`` or ``'cuda'`` (where the matrix was counted and filled).
    """
    t_start = time.perf_counter()
    dose_grid_mm = renamed_argument("dose_grid", dose_grid, "dose_grid_mm", dose_grid_mm, where="build_influence")
    use_gpu = _resolve_gpu(gpu)
    machine = generic_6mv() if machine is None else machine
    if not isinstance(machine, Machine):
        raise TypeError(f"machine must be an rtlab.dose.Machine, got {type(machine).__name__}")
    (cutoff_mm,) = check_positive("cutoff_mm", cutoff_mm)
    check_finite("case.density", case.density)
    beams = prepare_beams(case, beams, bixel_mm=bixel_mm)
    h = beams[0].bixel_mm
    if any(abs(b.bixel_mm - h) > 1e-9 for b in beams):
        raise ValueError("all beams must share one bixel size (bixel_mm)")
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
        bv = beam_voxels(case, beam, machine, pts, cutoff_mm, ray_mm)
        U[b], V[b], W[b] = bv.u, bv.v, bv.w
        ssds.append(bv.ssd)
    t_trace = time.perf_counter() - t0
    gs = [machine.gaussians(s) for s in ssds]
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
    total = time.perf_counter() - t_start
    return InfluenceMatrix(A, grid, case.grid, vidx, slices, beams, machine, float(cutoff_mm), ct_mask,
                           {"trace_s": t_trace, "count_s": t_count, "fill_s": t_fill, "total_s": total,
                           }, backend=backend)


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
