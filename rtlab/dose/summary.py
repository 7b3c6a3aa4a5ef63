"""One-call size/timing summary of the dose engine (printed by ``rtlab dose --json``)."""

from __future__ import annotations

import time

import numpy as np

from .catalog import resolve_machine
from .fluence import FluenceDose
from .influence import build_influence

__all__ = ["engine_summary"]


def engine_summary(case, angles, bixel_mm: float = 5, dose_grid_mm=None, gpu: bool = False, cutoff_mm=None,
                   patch_bixels: int = 5, machine=None, return_influence: bool = False):
    """Build the influence matrix and the fluence engine for ``angles`` and time them.

    Parameters
    ----------
    case : rtlab.core.case.Case
    angles : sequence of float
        Gantry angles (deg).
    bixel_mm, dose_grid_mm, cutoff_mm
        As :func:`rtlab.dose.build_influence` (mm).
    gpu : bool
        Build and multiply on the CUDA device.
    patch_bixels : int
        Side of the square patch of the patch-update timing (bixels).
    machine : rtlab.dose.Machine, str or path-like, optional
        Beam model: a Machine, a built-in name or a matRad machine file
        (:func:`rtlab.dose.resolve_machine`; default :func:`rtlab.dose.generic_6mv`).
    return_influence : bool
        Also return the (second) influence matrix built.

    Returns
    -------
    dict
        ``n_voxels``, ``n_beamlets``, ``nnz``, ``build_s`` (influence build, after the first
        call compiled the kernels), ``compile_s`` (first build minus second), ``nnz_narrow`` /
        ``nnz_broad`` (the sparse matrix and the node path's interpolation matrix, summing to
        ``nnz``), ``matvec_ms`` (the rows' dose ``A_n x + P K x`` with
        :meth:`rtlab.dose.InfluenceMatrix.operator`: numba on the CPU, CuPy/numba.cuda with
        ``gpu=True``; median of 5), ``matvec_scipy_ms`` (scipy CSR, for comparison),
        ``patch_update_ms`` (one update that changes a ``patch_bixels`` square patch on every
        beam, :meth:`rtlab.dose.FluenceDose.time_patch_updates`, numba's thread count), ``cutoff_mm`` (the
        sparse matrix's, resolved), ``broad_sigma_mm``, ``gpu`` (False, or the GPU mat-vec
        backend), ``build_backend`` (``'cpu'``, or ``'cuda'`` with ``gpu=True``: the influence
        matrix is then counted and filled by the numba.cuda kernels of :mod:`rtlab.dose.gpu`;
        raises ``ValueError`` without a CUDA device), ``machine`` (the beam model's name),
        ``isocenter_mm`` (``(z, y, x)`` mm of the first beam; all beams of a case share it unless
        the case's beams say otherwise), ``beamlets_per_beam``. With ``return_influence``: the
        tuple ``(dict, InfluenceMatrix)``.
    """
    machine = resolve_machine(machine)
    kw = dict(dose_grid_mm=dose_grid_mm, cutoff_mm=cutoff_mm, progress=False, bixel_mm=bixel_mm, gpu=bool(gpu),
              machine=machine)
    t0 = time.perf_counter()
    im = build_influence(case, list(angles), **kw)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    im = build_influence(case, list(angles), **kw)
    build = time.perf_counter() - t0
    op = im.operator(backend="gpu" if gpu else "numba")
    x = np.ones(im.shape[1], dtype=np.float32)

    def _median_ms(fn, n=6):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return round(float(np.median(ts[1:])) * 1e3, 3)

    matvec_ms = _median_ms(lambda: op.matvec(x))
    scipy_ms = _median_ms(lambda: im.operator(backend="scipy").matvec(x))
    fd = FluenceDose(case, im.beams, im.machine, dose_grid_mm=dose_grid_mm)
    fd.set_bixel_weights(x)
    pu = fd.time_patch_updates(patch_bixels)
    out = {
        "n_voxels": int(im.shape[0]), "n_beamlets": int(im.shape[1]), "nnz": im.nnz,
        "nnz_narrow": int(im.matrix.nnz), "nnz_broad": int(im.broad.nnz) if im.broad is not None else 0,
        "build_s": round(build, 4), "compile_s": round(max(first - build, 0.0), 3),
        "matvec_ms": matvec_ms, "matvec_scipy_ms": scipy_ms, "patch_update_ms": round(pu, 3),
        "cutoff_mm": float(im.cutoff_mm), "broad_sigma_mm": im.broad_sigma_mm, "gpu": op.backend if gpu else False,
        "build_backend": im.backend, "timings": {k: round(v, 4) for k, v in im.timings.items()},
        "machine": im.machine.name, "isocenter_mm": [round(float(v), 4) for v in im.beams[0].isocenter],
        "beamlets_per_beam": [int(sl.stop - sl.start) for sl in im.beamlet_slices],
    }
    return (out, im) if return_influence else out
