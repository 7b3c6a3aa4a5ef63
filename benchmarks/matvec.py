"""Influence-matrix mat-vec speed against the memory copy bandwidth measured in the same run.

Builds a random float32 CSR matrix shaped like a beamlet influence matrix (rows = voxels,
columns = beamlets grouped by beam; each voxel row holds one contiguous run of beamlet columns
per beam that reaches it, runs drift slowly from row to row like a beam footprint over
neighbouring voxels; a few percent of rows are empty), then times, as medians over
``--repeats`` runs after a warm-up:

* numpy copy of a float32 array about as large as the bytes one mat-vec moves (bandwidth =
  bytes read + bytes written per second), and a 2-thread numba copy for comparison;
* scipy ``A @ x`` and ``A.T @ g``;
* rtlab's numba ``DoseOperator.matvec`` and ``rmatvec`` (pre-transposed CSR); the mat-vec also
  on one thread, with its process CPU time beside the copy's CPU time (``*_cpu_*``: the
  per-core cost, which other load on a shared machine barely changes);
* on a CUDA machine: device-to-device copy, cuSPARSE (CuPy) ``A @ x`` / ``A^T g`` and the
  numba.cuda warp-per-row kernel.

Effective bandwidth of a product = (bytes of data + indices + indptr + input vector + output
vector) / time. Prints exactly one JSON line.

Usage::

    python benchmarks/matvec.py [--rows 150000] [--cols 1200] [--nnz-per-row 133] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402

from rtlab.dose import gpu  # noqa: E402
from rtlab.dose.sparse import DoseOperator  # noqa: E402

from _common import median_time, parallel_copy  # noqa: E402  (benchmarks/_common.py)


def make_influence_like(rows, cols, nnz_per_row, n_beams=5, empty_fraction=0.05, seed=0):
    """Random float32 CSR matrix with beam-footprint structure (see module docstring)."""
    rng = np.random.default_rng(seed)
    n_beams = max(1, min(n_beams, cols))
    block = cols // n_beams
    mean_run = nnz_per_row / (1.0 - empty_fraction) / n_beams
    lengths = np.clip(np.rint(rng.uniform(0.5, 1.5, size=(rows, n_beams)) * mean_run), 0, block)
    lengths = lengths.astype(np.int64)
    lengths[rng.random(rows) < empty_fraction] = 0
    phase = (np.arange(rows)[:, None] * 0.01 + np.arange(n_beams)[None, :] * 0.37) % 1.0
    starts = (phase * (block - lengths)).astype(np.int64) + np.arange(n_beams)[None, :] * block
    lengths, starts = lengths.ravel(), starts.ravel()
    total = int(lengths.sum())
    run_offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    indices = (np.repeat(starts, lengths) + np.arange(total) - run_offsets).astype(np.int32)
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths.reshape(rows, n_beams).sum(axis=1), out=indptr[1:])
    if total <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    data = rng.random(total, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(rows, cols))


def product_bytes(M, n_in, in_itemsize, n_out, out_itemsize):
    return int(M.data.nbytes + M.indices.nbytes + M.indptr.nbytes + n_in * in_itemsize + n_out * out_itemsize)


def gpu_figures(A, x, g, repeats, ref_y, ref_r, mv_bytes, rmv_bytes):
    """Device figures; returns a dict (an 'error' entry instead of raising)."""
    out = {"cupy_available": gpu.cupy_available(), "numba_cuda_available": gpu.numba_cuda_available()}
    if not (out["cupy_available"] or out["numba_cuda_available"]):
        out["skipped"] = gpu.cuda_unavailable_reason()
        return out
    try:
        if out["cupy_available"]:
            import cupy as cp

            def dev_time(fn):
                for _ in range(3):
                    fn()
                cp.cuda.Device().synchronize()
                ts = []
                for _ in range(repeats):
                    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                    e0.record()
                    fn()
                    e1.record()
                    e1.synchronize()
                    ts.append(cp.cuda.get_elapsed_time(e0, e1) / 1e3)
                return float(np.median(ts))

            out["device"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
            n = max(mv_bytes // 4, 1)
            src = cp.ones(n, dtype=cp.float32)
            dst = cp.empty_like(src)
            t = dev_time(lambda: cp.copyto(dst, src))
            copy_bw = 2 * src.nbytes / t / 1e9
            out["d2d_copy_gbs"] = round(copy_bw, 1)
            del src, dst
            m = gpu.CupyMatrix(A)
            m.prepare_transpose()
            xd, gd = cp.asarray(x), cp.asarray(g)
            t = dev_time(lambda: m.matvec(xd, check=False))
            out["cusparse_matvec_ms"] = round(t * 1e3, 4)
            out["cusparse_matvec_gbs"] = round(mv_bytes / t / 1e9, 1)
            out["cusparse_matvec_frac_of_copy"] = round(mv_bytes / t / 1e9 / copy_bw, 3)
            t = dev_time(lambda: m.rmatvec(gd, check=False))
            out["cusparse_rmatvec_ms"] = round(t * 1e3, 4)
            out["cusparse_rmatvec_gbs"] = round(rmv_bytes / t / 1e9, 1)
            y = cp.asnumpy(m.matvec(xd))
            r = cp.asnumpy(m.rmatvec(gd))
            out["cusparse_max_rel_err"] = float(max(np.abs(y - ref_y).max() / np.abs(ref_y).max(),
                                                    np.abs(r - ref_r).max() / np.abs(ref_r).max()))
            del m
        if out["numba_cuda_available"]:
            from numba import cuda

            nm = gpu.NumbaCudaMatrix(A)
            nm.prepare_transpose()
            xd, gd = nm.upload(x), nm.upload(g)
            yd = cuda.device_array(A.shape[0], np.float32)
            rd = cuda.device_array(A.shape[1], np.float64)

            def sync_time(fn):
                for _ in range(3):
                    fn()
                cuda.synchronize()
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    cuda.synchronize()
                    ts.append(time.perf_counter() - t0)
                return float(np.median(ts))

            t = sync_time(lambda: nm.matvec(xd, out=yd, check=False))
            out["numba_warp_matvec_ms"] = round(t * 1e3, 4)
            out["numba_warp_matvec_gbs"] = round(mv_bytes / t / 1e9, 1)
            if "d2d_copy_gbs" in out:
                out["numba_warp_matvec_frac_of_copy"] = round(mv_bytes / t / 1e9 / out["d2d_copy_gbs"], 3)
            t = sync_time(lambda: nm.rmatvec(gd, out=rd, check=False))
            out["numba_warp_rmatvec_ms"] = round(t * 1e3, 4)
            y = yd.copy_to_host()
            r = rd.copy_to_host()
            out["numba_warp_max_rel_err"] = float(max(np.abs(y - ref_y).max() / np.abs(ref_y).max(),
                                                      np.abs(r - ref_r).max() / np.abs(ref_r).max()))
    except Exception as exc:  # report, do not crash the one-line output
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=150_000, help="voxels (rows)")
    ap.add_argument("--cols", type=int, default=1200, help="beamlets (columns)")
    ap.add_argument("--nnz-per-row", type=float, default=133.0, help="mean non-zeros per row")
    ap.add_argument("--beams", type=int, default=5, help="beams (column blocks)")
    ap.add_argument("--repeats", type=int, default=15, help="timed repeats (>= 10 recommended)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU figures")
    args = ap.parse_args(argv)
    if args.rows < 1 or args.cols < 1 or args.nnz_per_row <= 0 or args.repeats < 1:
        ap.error("--rows, --cols, --repeats must be >= 1 and --nnz-per-row > 0")

    t0 = time.perf_counter()
    A = make_influence_like(args.rows, args.cols, args.nnz_per_row, args.beams, seed=args.seed)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    x = rng.random(A.shape[1]).astype(np.float32)
    g = rng.random(A.shape[0]).astype(np.float32)
    ref_y = A.astype(np.float64) @ x.astype(np.float64)
    ref_r = A.T.astype(np.float64) @ g.astype(np.float64)

    op = DoseOperator(A, backend="numba", check=False)
    t0 = time.perf_counter()
    op.prepare_transpose()
    transpose_s = time.perf_counter() - t0
    AT = op.AT
    mv_bytes = product_bytes(op.A, A.shape[1], 4, A.shape[0], 4)
    rmv_bytes = product_bytes(AT, A.shape[0], 4, A.shape[1], 8)

    src = np.ones(max(mv_bytes // 4, 1), dtype=np.float32)
    dst = np.empty_like(src)
    t_copy = median_time(lambda: np.copyto(dst, src), args.repeats)
    copy_bw = 2 * src.nbytes / t_copy / 1e9
    t_pcopy = median_time(lambda: parallel_copy(src, dst), args.repeats)

    t_sp = median_time(lambda: A @ x, args.repeats)
    t_sp_r = median_time(lambda: A.T @ g, args.repeats)
    y = np.empty(A.shape[0], np.float32)
    r = np.empty(A.shape[1], np.float64)
    t_nb = median_time(lambda: op.matvec(x, out=y), args.repeats)
    # one thread, wall and process CPU time: the per-core cost, robust to other load on the machine
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    c0 = time.process_time()
    t_nb1 = median_time(lambda: op.matvec(x, out=y), args.repeats)
    c_nb1 = (time.process_time() - c0) / (args.repeats + 2)
    numba.set_num_threads(prev)
    c0 = time.process_time()
    median_time(lambda: np.copyto(dst, src), args.repeats)
    c_copy = (time.process_time() - c0) / (args.repeats + 2)
    del src, dst
    t_nb_r = median_time(lambda: op.rmatvec(g, out=r), args.repeats)
    op_checked = DoseOperator(A, backend="numba", check=True)
    op_checked._AT = op._AT
    t_nb_checked = median_time(lambda: op_checked.matvec(x, out=y), args.repeats)
    err_y = float(np.abs(op.matvec(x) - ref_y).max() / np.abs(ref_y).max())
    err_r = float(np.abs(op.rmatvec(g) - ref_r).max() / np.abs(ref_r).max())

    def gbs(nbytes, t):
        return nbytes / t / 1e9

    res = {
        "benchmark": "matvec",
        "rows": A.shape[0], "cols": A.shape[1], "nnz": int(A.nnz),
        "index_dtype": str(op.A.indices.dtype),
        "matrix_mb": round((op.A.data.nbytes + op.A.indices.nbytes + op.A.indptr.nbytes) / 1e6, 1),
        "build_s": round(build_s, 2), "transpose_s": round(transpose_s, 3),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(), "repeats": args.repeats,
        "numpy_copy_gbs": round(copy_bw, 2),
        "numba_parallel_copy_gbs": round(gbs(2 * mv_bytes // 4 * 4, t_pcopy), 2),
        "scipy_matvec_ms": round(t_sp * 1e3, 2),
        "scipy_matvec_gbs": round(gbs(mv_bytes, t_sp), 2),
        "scipy_matvec_frac_of_copy": round(gbs(mv_bytes, t_sp) / copy_bw, 3),
        "scipy_rmatvec_ms": round(t_sp_r * 1e3, 2),
        "numba_matvec_ms": round(t_nb * 1e3, 2),
        "numba_matvec_gbs": round(gbs(mv_bytes, t_nb), 2),
        "numba_matvec_frac_of_copy": round(gbs(mv_bytes, t_nb) / copy_bw, 3),
        "numba_matvec_frac_of_parallel_copy": round(gbs(mv_bytes, t_nb) / gbs(2 * mv_bytes // 4 * 4, t_pcopy), 3),
        "numba_matvec_1thread_ms": round(t_nb1 * 1e3, 2),
        "numba_matvec_1thread_frac_of_copy": round(gbs(mv_bytes, t_nb1) / copy_bw, 3),
        "numba_matvec_1thread_cpu_ms": round(c_nb1 * 1e3, 2), "numpy_copy_cpu_ms": round(c_copy * 1e3, 2),
        "numba_matvec_1thread_cpu_frac_of_copy_cpu": round((mv_bytes / c_nb1) / (2 * (mv_bytes // 4 * 4) / c_copy), 3),
        "numba_matvec_checked_ms": round(t_nb_checked * 1e3, 2),
        "numba_rmatvec_ms": round(t_nb_r * 1e3, 2),
        "numba_rmatvec_gbs": round(gbs(rmv_bytes, t_nb_r), 2),
        "numba_rmatvec_frac_of_copy": round(gbs(rmv_bytes, t_nb_r) / copy_bw, 3),
        "numba_matvec_max_rel_err": err_y, "numba_rmatvec_max_rel_err": err_r,
        "gpu": {"skipped": "--no-gpu"} if args.no_gpu else gpu_figures(A, x, g, args.repeats, ref_y, ref_r, mv_bytes, rmv_bytes),
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
