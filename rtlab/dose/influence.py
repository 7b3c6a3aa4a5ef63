"""Beamlet influence matrix (dose per unit bixel fluence) as float32 CSR.

``A[i, j]`` is the dose (Gy per unit fluence, before MU calibration) in selected voxel ``i``
from bixel ``j`` (columns concatenated beam after beam, row-major over each beam's bixel
mask). Built in two parallel numba passes (count, then fill; see :mod:`rtlab.dose.kernels`),
so the CSR arrays are written directly with sorted column indices.

Voxel selection and dose grid
-----------------------------
Rows are the voxels that matter: ``voxels='body'`` (default; the body structure, or the
union of all structures when there is none), ``'all'`` or a boolean mask on the CT grid.
With a coarser ``dose_grid`` (mm or a :class:`~rtlab.geometry.Grid`) the rows are the
dose-grid voxels needed to interpolate every selected CT voxel (the 2 x 2 x 2 dose voxels
around it), and :meth:`InfluenceMatrix.dose` with ``on='ct'`` resamples the dose trilinearly
(:func:`rtlab.geometry.resample`, order 1) back to the CT grid, zero outside the selection.

Radiological depth: one fan of Siddon rays per beam (:func:`rtlab.dose.raytrace.fan_depth`)
covering the beam's bixels plus the cut-off, interpolated trilinearly at each dose voxel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .._util import check_finite, check_positive
from ..geometry import Grid
from ..plan import Beam, BixelGrid, fit_bixel_grid
from . import kernels as K
from .machine import Machine, generic_6mv
from .raytrace import fan_depth

__all__ = ["InfluenceMatrix", "build_influence", "prepare_beams", "DEFAULT_CUTOFF_MM", "select_voxels", "BeamVoxels",
           "beam_voxels"]

#: Default lateral cut-off (mm), see docs/dose_engine.md for the accuracy/speed table.
DEFAULT_CUTOFF_MM = 40.0


def _target_mask(case) -> np.ndarray:
    t = case.structures.targets
    if not t:
        raise ValueError("the case has no target structure to fit bixels to; give beams with explicit bixels "
                         "(rtlab.plan.fit_bixel_grid) or add a target")
    m = np.zeros(case.grid.shape, bool)
    for s in t:
        m |= s.mask
    return m


def prepare_beams(case, beams, bixel_mm: float = 5.0, margin: int = 1) -> list[Beam]:
    """Normalise ``beams`` to :class:`~rtlab.plan.Beam` objects with bixel grids.

    Accepts :class:`~rtlab.plan.Beam`, :class:`rtlab.case.BeamSpec` or plain gantry angles
    (degrees; isocentre = ``case.isocenter()``). Bixels are fitted to the union of the
    case's targets with ``margin`` bixels where a beam has none.

    Raises
    ------
    ValueError
        No beams, an isocentre outside the CT grid, or a zero field.
    """
    if beams is None or len(beams) == 0:
        raise ValueError("beams is empty; pass at least one gantry angle or Beam")
    out = []
    tmask = None
    for b in beams:
        if isinstance(b, Beam):
            beam = b
        elif hasattr(b, "gantry"):
            iso = case.isocenter() if getattr(b, "isocenter", None) is None else b.isocenter
            beam = Beam(float(b.gantry), float(getattr(b, "couch", 0.0)), tuple(iso), bixel_mm)
        elif np.isscalar(b):
            beam = Beam(float(b), 0.0, tuple(case.isocenter()), bixel_mm)
        else:
            raise TypeError(f"beams entries must be Beam, BeamSpec or gantry angles, got {type(b).__name__}")
        if not case.grid.contains(beam.isocenter):
            raise ValueError(f"isocenter {beam.isocenter} mm lies outside the CT grid "
                             f"(bounds z/y/x {case.grid.bounds.round(1).tolist()} mm); move it inside the patient")
        if beam.bixels is None:
            if tmask is None:
                tmask = _target_mask(case)
            beam = beam.with_bixels(fit_bixel_grid(beam, case.grid, tmask, margin))
        out.append(beam)
    return out


def _dose_grid(case, dose_grid) -> Grid:
    if dose_grid is None:
        return case.grid
    if isinstance(dose_grid, Grid):
        return dose_grid
    check_positive("dose_grid", dose_grid)
    return case.grid.with_spacing(dose_grid)


def select_voxels(case, grid: Grid, voxels="body"):
    """Rows of the influence matrix: ``(flat indices on grid, mask on grid, mask on CT grid)``."""
    if isinstance(voxels, str):
        if voxels == "body":
            ct_mask = case.structures.body_mask().astype(bool)
        elif voxels == "all":
            ct_mask = np.ones(case.grid.shape, bool)
        else:
            raise ValueError(f"voxels must be 'body', 'all' or a boolean mask on the CT grid, got {voxels!r}")
    else:
        ct_mask = case.grid.check_array("voxels", voxels).astype(bool)
    if not ct_mask.any():
        raise ValueError("no voxels selected (empty body/mask); pass voxels='all' or a non-empty mask")
    if grid.is_same(case.grid):
        mask = ct_mask
    else:
        pts = case.grid.index_to_world(np.argwhere(ct_mask))
        f = grid.world_to_index(pts)
        base = np.floor(f).astype(np.int64)
        mask = np.zeros(grid.shape, bool)
        shp = np.asarray(grid.shape)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    idx = np.clip(base + [dz, dy, dx], 0, shp - 1)
                    mask[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return np.flatnonzero(mask.ravel()).astype(np.int64), mask, ct_mask


def _ssd(case, beam) -> float:
    """Source-surface distance (mm) along the central axis (first body voxel hit)."""
    body = case.structures.body_mask()
    _, _, eb = beam.frame()
    s = np.arange(0.0, beam.sad + 0.5 * max(case.grid.extent_mm), 1.0)
    p = beam.source[None] + s[:, None] * eb[None]
    idx = np.rint(case.grid.world_to_index(p)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(case.grid.shape)), axis=1)
    hit = np.zeros(len(s), bool)
    hit[ok] = body[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
    return float(s[np.argmax(hit)]) if hit.any() else beam.sad


@dataclass
class BeamVoxels:
    """Per-beam geometry of the selected voxels (NaN ``u`` where the voxel is out of reach).

    ``w[i, k] = (SAD/t)^2 D_k(d_rad)``; ``depth`` radiological depth (mm).
    """

    u: np.ndarray
    v: np.ndarray
    t: np.ndarray
    depth: np.ndarray
    w: np.ndarray
    ssd: float


def beam_voxels(case, beam: Beam, machine: Machine, points, margin_mm: float, ray_mm=None) -> BeamVoxels:
    """Project ``points`` (n, 3) for ``beam``, trace its fan and evaluate the depth factors.

    Voxels whose projection lies more than ``margin_mm`` outside the bixel grid's edges, or
    behind the source, get NaN coordinates and zero factors. Projection, fan look-up and
    depth factors run in parallel numba kernels (:func:`rtlab.dose.kernels.beam_geometry`,
    :func:`rtlab.dose.kernels.lookup_depth_factors`).
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    n = len(pts)
    u = np.empty(n)
    v = np.empty(n)
    t = np.empty(n)
    depth = np.full(n, np.nan)
    w = np.zeros((n, 3))
    vmin, vmax, umin, umax = beam.bixels.extent_mm()
    eu, ev, eb = beam.frame()
    f64 = lambda a: np.ascontiguousarray(a, np.float64)  # noqa: E731
    n_in, tmin, tmax = K.beam_geometry(pts, f64(beam.source), f64(eu), f64(ev), f64(eb), float(beam.sad),
                                       umin - margin_mm, umax + margin_mm, vmin - margin_mm, vmax + margin_mm,
                                       u, v, t)
    if n_in:
        fan = fan_depth(case.density, case.grid, beam, (umin - margin_mm, umax + margin_mm),
                        (vmin - margin_mm, vmax + margin_mm), (tmin, tmax), ray_mm=ray_mm)
        K.lookup_depth_factors(fan.fan, fan.u0, fan.du, fan.v0, fan.dv, fan.t0, fan.dt, u, v, t,
                               f64(machine.betas), float(machine.mu), float(beam.sad), depth, w)
    return BeamVoxels(u, v, t, depth, w, _ssd(case, beam))


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
        from ..geometry import resample

        res = resample(out, self.grid, self.ct_grid, order=1)
        res[~self.ct_mask] = 0.0
        return res

    def dose(self, weights, on: str = "ct") -> np.ndarray:
        """Dose ``(z, y, x)`` in Gy for beamlet ``weights`` on the CT grid (``'ct'``) or dose grid."""
        return self.to_grid(self.dose_vector(weights), on=on)


def _resolve_gpu(gpu) -> bool:
    """``gpu`` argument of :func:`build_influence` -> whether to try the CUDA fill kernel."""
    if gpu is None or gpu is False:
        return False
    if gpu is True:
        return True
    if gpu == "auto":
        from .gpu import numba_cuda_available

        return numba_cuda_available()
    raise ValueError(f"gpu must be True, False or 'auto', got {gpu!r}")


def build_influence(case, beams, machine: Machine | None = None, dose_grid=None, cutoff_mm: float = DEFAULT_CUTOFF_MM,
                    voxels="body", progress: bool = True, ray_mm: float | None = None, bixel_mm: float = 5.0,
                    n_chunks: int = 256, gpu="auto") -> InfluenceMatrix:
    """Build the beamlet influence matrix of ``beams`` on ``case``.

    Parameters
    ----------
    case : rtlab.case.Case
    beams : sequence of Beam, BeamSpec or gantry angles (degrees)
    machine : Machine, optional
        Default :func:`rtlab.dose.generic_6mv`.
    dose_grid : float (mm) or Grid, optional
        Default the CT grid.
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

    Returns
    -------
    InfluenceMatrix
        ``timings`` holds ``trace_s``, ``count_s``, ``fill_s``, ``total_s`` (seconds);
        ``backend`` is ``'cpu'`` or ``'cuda'`` (where the matrix was counted and filled).
    """
    t_start = time.perf_counter()
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
    grid = _dose_grid(case, dose_grid)
    vidx, _, ct_mask = select_voxels(case, grid, voxels)
    pts = np.ascontiguousarray(grid.index_to_world(np.stack(np.unravel_index(vidx, grid.shape), axis=1)), np.float64)
    nb_, n = len(beams), len(vidx)
    U = np.empty((nb_, n))
    V = np.empty((nb_, n))
    W = np.empty((nb_, n, 3))
    it = beams
    if progress:
        from tqdm.auto import tqdm

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
        from . import gpu as G_

        try:
            arrays, t_count, t_fill = G_.influence_csr_cuda(*geo, K.PHI_TABLE)
            backend = "cuda"
        except Exception as exc:
            if gpu is True:
                raise
            import warnings

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
