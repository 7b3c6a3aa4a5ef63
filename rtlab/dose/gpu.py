"""Optional GPU application of the influence matrix (CuPy/cuSPARSE, or a numba.cuda kernel).

Nothing here is needed on a machine without CUDA, and importing this module never fails there:
CuPy and numba.cuda are bound through :func:`rtlab._lazy.load` and imported only when a function
uses them, and the probes
(:func:`cuda_available`, :func:`cupy_available`, :func:`numba_cuda_available`) catch every
error and return ``False``.

Two device-resident matrix types, both with ``matvec`` / ``rmatvec`` on device arrays:

:class:`CupyMatrix`
    ``cupyx.scipy.sparse.csr_matrix``; ``A @ x`` and ``A^T g`` go to cuSPARSE SpMV. ``A^T`` is
    transposed on the device once (``A.T.tocsr()``), on first use.
:class:`NumbaCudaMatrix`
    A numba.cuda *vector CSR* kernel, one warp (32 threads) per row: the lanes of a warp read
    consecutive non-zeros of the row, so the loads of ``data`` and ``indices`` are coalesced,
    and the 32 partial sums are combined by a tree reduction in shared memory. A thread-per-row
    kernel instead makes each thread walk its own row, so neighbouring threads touch addresses
    a whole row apart; that kernel measured 18 % of the device copy bandwidth on an H100
    (``/work/shared/design/GPU.md``), cuSPARSE 98 %. Used when CuPy is missing.

:func:`influence_csr_cuda` builds the influence matrix itself on the device: numba.cuda count
and fill kernels, one thread per voxel, with the arithmetic of :mod:`rtlab.dose.kernels`
(``build_influence(..., gpu=True | 'auto')``).

Use :func:`to_device` (or :meth:`rtlab.dose.sparse.DoseOperator.to_device`) to upload ``A``
once and keep it resident across optimiser iterations; only ``x`` and ``d`` move per call, or
nothing when they are device arrays already.

The numba-cuda trap: numba-cuda fails at its first kernel compile under numpy 2.5
(``AttributeError: module 'numpy' has no attribute 'row_stack'``); rtlab pins ``numpy<2.5``.
See ``docs/gpu.md``.

Size: over 600 lines on purpose: this module is the one boundary to the optional CUDA
stacks (cupy, numba.cuda): probes, device matrices and the kernels all live here so that no
other module touches them.
"""

from __future__ import annotations

import functools
import math
import time

import numba
import numpy as np

from .._lazy import load, resolve
from .._util import check_finite
from .csr import check_matrix

__all__ = [
    "cuda_available",
    "cupy_available",
    "numba_cuda_available",
    "cuda_unavailable_reason",
    "cupy_unavailable_reason",
    "numba_cuda_unavailable_reason",
    "to_device",
    "CupyMatrix",
    "NumbaCudaMatrix",
    "warp_csr_matvec",
    "influence_csr_cuda",
]

WARP = 32

_numba_cuda = load("numba.cuda", purpose="the numba.cuda kernels")
cupy = load("cupy", purpose="the CuPy backend")
cupyx_sparse = load("cupyx.scipy.sparse", extra="gpu", purpose="the CuPy backend")

#: The real ``numba.cuda`` module, bound on first kernel use (:func:`_bind_cuda`). It is a module
#: global (not a local, not the lazy stand-in) so that numba's CUDA simulator can swap in its
#: fake module when the kernel runs under ``NUMBA_ENABLE_CUDASIM=1``.
cuda = None


def _bind_cuda():
    """Bind the module global :data:`cuda` to ``numba.cuda`` (imported here, on first use)."""
    global cuda
    if cuda is None:
        cuda = resolve(_numba_cuda)
    return cuda


# --------------------------------------------------------------------------------------------
# probes (never raise)
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _probe_cupy() -> tuple[bool, str]:
    try:
        cp = resolve(cupy)
    except Exception as exc:  # ImportError, or a broken CUDA install raising anything else
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = int(cp.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return False, f"CuPy found no usable CUDA driver/device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    return True, f"CuPy {cp.__version__}, {n} CUDA device(s)"


@functools.lru_cache(maxsize=None)
def _probe_numba_cuda() -> tuple[bool, str]:
    try:
        if getattr(numba.config, "ENABLE_CUDASIM", 0):
            return False, "numba's CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1), not a device"
        if not resolve(_numba_cuda).is_available():
            return False, "numba.cuda finds no CUDA driver/device"
        return True, "numba.cuda device available"
    except Exception as exc:
        return False, f"numba.cuda is not usable ({type(exc).__name__}: {exc})"


def cupy_available() -> bool:
    """``True`` when CuPy imports and sees at least one CUDA device; never raises."""
    try:
        return _probe_cupy()[0]
    except Exception:
        return False


def numba_cuda_available() -> bool:
    """``True`` when numba.cuda sees a real CUDA device (the simulator does not count); never
    raises."""
    try:
        return _probe_numba_cuda()[0]
    except Exception:
        return False


def cuda_available() -> bool:
    """``True`` when a CUDA device is usable through CuPy or numba.cuda; never raises.

    Returns ``False`` without a device, without a driver, without CuPy and numba-cuda, and
    under numba's CUDA simulator.
    """
    return cupy_available() or numba_cuda_available()


def cupy_unavailable_reason() -> str:
    """Human-readable reason why the CuPy backend is (not) usable."""
    try:
        return _probe_cupy()[1]
    except Exception as exc:  # pragma: no cover - defensive
        return repr(exc)


def numba_cuda_unavailable_reason() -> str:
    """Human-readable reason why the numba.cuda backend is (not) usable."""
    try:
        return _probe_numba_cuda()[1]
    except Exception as exc:  # pragma: no cover - defensive
        return repr(exc)


def cuda_unavailable_reason() -> str:
    """Both probes' reasons, for error messages."""
    return f"{cupy_unavailable_reason()}; {numba_cuda_unavailable_reason()}"


# --------------------------------------------------------------------------------------------
# numba.cuda vector-CSR kernel
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _warp_kernel(acc: str, threads_per_block: int):
    """Compile (lazily) the warp-per-row CSR kernel accumulating in ``acc`` ('float32'/'float64').

    Kernel ``(indptr, indices, data, x, y)``: ``y[i] = sum_j data[j] * x[indices[j]]`` over CSR
    row ``i``. Block = ``threads_per_block // 32`` warps, warp ``w`` of block group ``g`` owns
    row ``g * warps + w``; blocks stride over row groups. Every thread of a block runs the same
    number of loop trips, so the ``syncthreads`` barriers are uniform.
    """
    _bind_cuda()
    acc_t = getattr(numba, acc)
    tpb = int(threads_per_block)
    warps = tpb // WARP

    @cuda.jit
    def kernel(indptr, indices, data, x, y):  # pragma: no cover - runs on device / simulator
        sh = cuda.shared.array(tpb, acc_t)
        tid = cuda.threadIdx.x
        lane = tid % WARP
        warp = tid // WARP
        n_rows = y.shape[0]
        n_groups = (n_rows + warps - 1) // warps
        group = cuda.blockIdx.x
        while group < n_groups:
            row = group * warps + warp
            s = acc_t(0.0)
            if row < n_rows:
                for j in range(indptr[row] + lane, indptr[row + 1], WARP):
                    s += data[j] * x[indices[j]]
            sh[tid] = s
            cuda.syncthreads()
            off = WARP // 2
            while off > 0:
                if lane < off:
                    sh[tid] += sh[tid + off]
                cuda.syncthreads()
                off //= 2
            if lane == 0 and row < n_rows:
                y[row] = sh[tid]
            group += cuda.gridDim.x

    return kernel


def _numba_cuda_error(exc: Exception) -> Exception:
    if isinstance(exc, AttributeError) and "row_stack" in str(exc):
        return RuntimeError(
            "numba-cuda failed to compile because numpy >= 2.5 removed np.row_stack; install "
            "numpy<2.5 in the environment that runs the GPU code (see docs/gpu.md), or use "
            "backend='cupy'"
        )
    return exc


def warp_csr_matvec(indptr, indices, data, x, y, threads_per_block: int = 256, max_blocks: int = 65535):
    """Launch the warp-per-row CSR kernel on device (or simulator) arrays: ``y = A x``.

    Parameters
    ----------
    indptr, indices, data : numba device arrays (or anything with ``__cuda_array_interface__``)
        CSR arrays of ``A`` (int32/int64 indices, float32 data).
    x : device array, shape (n_cols,)
        Input vector (float32 or float64).
    y : device array, shape (n_rows,)
        Output; its dtype (float32 or float64) is also the accumulation type.
    threads_per_block : int
        Multiple of 32 (warps per block = ``threads_per_block // 32``).
    max_blocks : int
        Grid size cap; blocks loop over row groups beyond it.

    Returns
    -------
    y
    """
    if threads_per_block % WARP or not 0 < threads_per_block <= 1024:
        raise ValueError(f"threads_per_block must be a multiple of 32 in [32, 1024], got {threads_per_block}")
    acc = "float64" if np.dtype(y.dtype) == np.float64 else "float32"
    n_rows = int(y.shape[0])
    warps = threads_per_block // WARP
    blocks = max(1, min(int(max_blocks), math.ceil(n_rows / warps)))
    try:
        _warp_kernel(acc, threads_per_block)[blocks, threads_per_block](indptr, indices, data, x, y)
    except Exception as exc:
        err = _numba_cuda_error(exc)
        if err is exc:
            raise
        raise err from exc
    return y


# --------------------------------------------------------------------------------------------
# device-resident matrices
# --------------------------------------------------------------------------------------------
def _check_device_vector(name, v, n, what):
    shape = tuple(getattr(v, "shape", ()))
    if shape != (n,):
        raise ValueError(f"{name} has shape {shape}, expected ({n},), one value per {what}")
    dt = np.dtype(v.dtype)
    if dt.kind != "f" or dt == np.float16:
        raise TypeError(f"{name} must be a float32/float64 device array, got dtype {dt}")


class CupyMatrix:
    """``A`` resident on the GPU as a CuPy CSR matrix; products via cuSPARSE.

    Parameters
    ----------
    A : scipy.sparse CSR matrix, float32, shape (n_voxels, n_beamlets)

    Notes
    -----
    cuSPARSE accumulates float32 matrices in float32, also for ``A^T g``; the result is
    returned as float64 but carries float32 rounding (relative ~1e-6 on TG-119-sized
    problems).
    """

    def __init__(self, A):
        A = check_matrix(A)
        cp = resolve(cupy)
        self._cp = cp
        self.shape = tuple(A.shape)
        self.A = cupyx_sparse.csr_matrix(
            (cp.asarray(A.data), cp.asarray(A.indices), cp.asarray(A.indptr)), shape=A.shape
        )
        self._AT = None

    @property
    def nbytes(self) -> int:
        """Device bytes held by ``A`` (and ``A^T`` once built)."""
        n = sum(int(a.nbytes) for a in (self.A.data, self.A.indices, self.A.indptr))
        if self._AT is not None:
            n += sum(int(a.nbytes) for a in (self._AT.data, self._AT.indices, self._AT.indptr))
        return n

    def prepare_transpose(self):
        """Transpose ``A`` on the device once (cuSPARSE csr2csc)."""
        if self._AT is None:
            self._AT = self.A.T.tocsr()
        return self

    def upload(self, host):
        return self._cp.asarray(host)

    def to_host(self, dev):
        return self._cp.asnumpy(dev)

    def _vector(self, name, v, n, what, check):
        cp = self._cp
        v = cp.asarray(v)  # also wraps numba device arrays (__cuda_array_interface__)
        _check_device_vector(name, v, n, what)
        v = v.astype(cp.float32, copy=False)
        if check and not bool(cp.isfinite(v.sum(dtype=cp.float64))):
            bad = int((~cp.isfinite(v)).sum())
            if bad:
                raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); fix the computation that produced it")
        return v

    def matvec(self, x, out=None, check: bool = True):
        """``d = A x`` on the device; returns a float32 CuPy array of shape (n_voxels,)."""
        x = self._vector("x", x, self.shape[1], "beamlet", check)
        y = self.A @ x
        if out is not None:
            out[...] = y
            return out
        return y

    def rmatvec(self, g, out=None, check: bool = True):
        """``A^T g`` on the device; returns a float64 CuPy array of shape (n_beamlets,)."""
        g = self._vector("g", g, self.shape[0], "voxel", check)
        self.prepare_transpose()
        y = (self._AT @ g).astype(self._cp.float64)
        if out is not None:
            out[...] = y
            return out
        return y


class NumbaCudaMatrix:
    """``A`` resident on the GPU as numba device arrays; products by the warp-per-row kernel.

    Works under numba's CUDA simulator too (``NUMBA_ENABLE_CUDASIM=1``), which is how the tests
    check it on machines without a GPU.

    Parameters
    ----------
    A : scipy.sparse CSR matrix, float32, shape (n_voxels, n_beamlets)
    threads_per_block : int
        Multiple of 32; warps per block = ``threads_per_block // 32``.
    max_blocks : int
        Grid size cap; blocks loop over the remaining row groups.

    Notes
    -----
    ``A x`` accumulates in float32, ``A^T g`` in float64. ``A^T`` is built on the host
    (``scipy``) once and uploaded on first use.
    """

    def __init__(self, A, threads_per_block: int = 256, max_blocks: int = 65535):
        self._host = check_matrix(A)
        self._cuda = _bind_cuda()
        self.shape = tuple(self._host.shape)
        self.threads_per_block = int(threads_per_block)
        self.max_blocks = int(max_blocks)
        self._A = tuple(cuda.to_device(a) for a in (self._host.indptr, self._host.indices, self._host.data))
        self._AT = None

    @property
    def nbytes(self) -> int:
        arrs = self._A + (self._AT or ())
        return sum(int(a.nbytes) for a in arrs)

    def prepare_transpose(self):
        if self._AT is None:
            AT = check_matrix(self._host.T.tocsr(), "A.T")
            self._AT = tuple(self._cuda.to_device(a) for a in (AT.indptr, AT.indices, AT.data))
        return self

    def upload(self, host):
        return self._cuda.to_device(np.ascontiguousarray(host))

    def to_host(self, dev):
        return dev.copy_to_host()

    def _vector(self, name, v, n, what, check):
        v = self._as_device(v)
        _check_device_vector(name, v, n, what)
        if check:
            host = v.copy_to_host()
            if not np.isfinite(np.add.reduce(host, dtype=np.float64)):
                check_finite(name, host)
        return v

    def _out(self, out, n, dtype):
        if out is None:
            return self._cuda.device_array(n, dtype=dtype)
        if tuple(out.shape) != (n,) or np.dtype(out.dtype) != dtype:
            raise ValueError(f"out must be a device array of shape ({n},) and dtype {np.dtype(dtype)}")
        return self._as_device(out)

    def _as_device(self, v):
        """numba device array for ``v`` (numpy: copied over; CuPy etc.: wrapped, no copy)."""
        if isinstance(v, np.ndarray):
            return self._cuda.to_device(v)
        if hasattr(v, "copy_to_host"):  # numba device array already (also the simulator's)
            return v
        return self._cuda.as_cuda_array(v)

    def matvec(self, x, out=None, check: bool = True):
        """``d = A x``; returns a float32 numba device array of shape (n_voxels,)."""
        x = self._vector("x", x, self.shape[1], "beamlet", check)
        y = self._out(out, self.shape[0], np.float32)
        return warp_csr_matvec(*self._A, x, y, threads_per_block=self.threads_per_block,
                               max_blocks=self.max_blocks)

    def rmatvec(self, g, out=None, check: bool = True):
        """``A^T g`` (float64 accumulation); returns a float64 device array of shape (n_beamlets,)."""
        g = self._vector("g", g, self.shape[0], "voxel", check)
        self.prepare_transpose()
        y = self._out(out, self.shape[1], np.float64)
        return warp_csr_matvec(*self._AT, g, y, threads_per_block=self.threads_per_block,
                               max_blocks=self.max_blocks)


def to_device(A, backend: str = "gpu"):
    """Upload an influence matrix to the GPU once, for repeated products.

    Parameters
    ----------
    A : scipy.sparse CSR matrix, float32, shape (n_voxels, n_beamlets)
    backend : {'gpu', 'cupy', 'numba-cuda'}
        ``'gpu'`` takes CuPy when available, else numba.cuda.

    Returns
    -------
    CupyMatrix or NumbaCudaMatrix
        Device-resident matrix with ``matvec(x)`` / ``rmatvec(g)`` on device arrays.

    Raises
    ------
    ValueError
        When the requested backend has no usable CUDA device (message gives the reason).
    """
    if backend not in ("gpu", "cupy", "numba-cuda"):
        raise ValueError(f"backend must be 'gpu', 'cupy' or 'numba-cuda', got {backend!r}")
    if backend in ("gpu", "cupy") and cupy_available():
        return CupyMatrix(A)
    if backend in ("gpu", "numba-cuda") and numba_cuda_available():
        return NumbaCudaMatrix(A)
    raise ValueError(
        f"to_device(backend={backend!r}) needs a CUDA device, but none is usable here "
        f"({cuda_unavailable_reason()}); keep the operator on the CPU (backend='numba')"
    )


# --------------------------------------------------------------------------------------------
# numba.cuda influence-matrix build (count + fill), mirroring rtlab.dose.kernels
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _influence_kernels(G: int, M: int):
    """Compile (lazily) the count and fill kernels for ``G`` Gaussians and ``M`` columns.

    One thread per row (voxel). The arithmetic is that of :func:`rtlab.dose.kernels.count_entries`
    and :func:`rtlab.dose.kernels.fill_entries` (same tabulated ``Phi``, float64 math, float32
    storage), so the matrices agree to float32 rounding. ``G`` and ``M`` size the per-thread
    local arrays of the separable factors ``Fu_g``, ``Fv_g`` (compile-time constants).
    """
    _bind_cuda()
    f64 = numba.float64
    GM = G * M

    @cuda.jit(device=True)
    def phi(z, table):  # pragma: no cover - device / simulator
        f = (z + 9.0) * 512.0
        if f <= 0.0:
            return 0.0
        n = table.shape[0] - 1
        if f >= n:
            return 1.0
        i = int(f)
        a = f - i
        return table[i] * (1.0 - a) + table[i + 1] * a

    @cuda.jit(device=True)
    def lo_of(x, cut, h, off):  # pragma: no cover
        lo = int(math.ceil((x - cut) / h)) - off
        return max(lo, 0)

    @cuda.jit(device=True)
    def hi_of(x, cut, h, off, n):  # pragma: no cover
        hi = int(math.floor((x + cut) / h)) - off
        return min(hi, n - 1)

    @cuda.jit(device=True)
    def circle_lo(u, dv2, c0, h, cut2, clo, chi):  # pragma: no cover
        rem = cut2 - dv2
        if rem < 0.0:
            return chi + 1
        lo = max(int(math.ceil((u - math.sqrt(rem)) / h)) - c0, clo)
        while lo <= chi and ((c0 + lo) * h - u) ** 2 + dv2 > cut2:
            lo += 1
        while lo - 1 >= clo and ((c0 + lo - 1) * h - u) ** 2 + dv2 <= cut2:
            lo -= 1
        return lo

    @cuda.jit(device=True)
    def circle_hi(u, dv2, c0, h, cut2, clo, chi):  # pragma: no cover
        rem = cut2 - dv2
        if rem < 0.0:
            return clo - 1
        hi = min(int(math.floor((u + math.sqrt(rem)) / h)) - c0, chi)
        while hi >= clo and ((c0 + hi) * h - u) ** 2 + dv2 > cut2:
            hi -= 1
        while hi + 1 <= chi and ((c0 + hi + 1) * h - u) ** 2 + dv2 <= cut2:
            hi += 1
        return hi

    @cuda.jit
    def count(U, V, r0, c0, nr, nc, seg_ptr, seg_c0, seg_c1, h, cut, counts):  # pragma: no cover
        i = cuda.grid(1)
        if i >= counts.shape[0]:
            return
        cut2 = cut * cut
        cnt = 0
        for b in range(U.shape[0]):
            u = U[b, i]
            v = V[b, i]
            if u != u:
                continue
            clo = lo_of(u, cut, h, c0[b])
            chi = hi_of(u, cut, h, c0[b], nc[b])
            for r in range(lo_of(v, cut, h, r0[b]), hi_of(v, cut, h, r0[b], nr[b]) + 1):
                dv = (r0[b] + r) * h - v
                cl = circle_lo(u, dv * dv, c0[b], h, cut2, clo, chi)
                ch = circle_hi(u, dv * dv, c0[b], h, cut2, clo, chi)
                if cl > ch:
                    continue
                for s in range(seg_ptr[b, r], seg_ptr[b, r + 1]):
                    lo = max(cl, seg_c0[s])
                    hi = min(ch, seg_c1[s])
                    if hi >= lo:
                        cnt += hi - lo + 1
        counts[i] = cnt

    @cuda.jit
    def fill(U, V, W, r0, c0, nr, nc, seg_ptr, seg_c0, seg_c1, seg_j0, gcomp, gsig, gw, ng, h, cut,
             indptr, indices, data, table):  # pragma: no cover
        i = cuda.grid(1)
        if i >= indptr.shape[0] - 1:
            return
        fu = cuda.local.array(GM, f64)
        fv = cuda.local.array(GM, f64)
        cg = cuda.local.array(G, f64)
        cut2 = cut * cut
        pos = indptr[i]
        for b in range(U.shape[0]):
            u = U[b, i]
            v = V[b, i]
            if u != u:
                continue
            clo = lo_of(u, cut, h, c0[b])
            chi = hi_of(u, cut, h, c0[b], nc[b])
            rlo = lo_of(v, cut, h, r0[b])
            rhi = hi_of(v, cut, h, r0[b], nr[b])
            if clo > chi or rlo > rhi:
                continue
            ngb = ng[b]
            for g in range(ngb):
                cg[g] = gw[b, g] * W[b, i, gcomp[b, g]]
                inv = 1.0 / gsig[b, g]
                prev = phi((u - (c0[b] + clo - 0.5) * h) * inv, table)
                for c in range(clo, chi + 1):
                    nxt = phi((u - (c0[b] + c + 0.5) * h) * inv, table)
                    fu[g * M + c - clo] = prev - nxt
                    prev = nxt
                prev = phi((v - (r0[b] + rlo - 0.5) * h) * inv, table)
                for r in range(rlo, rhi + 1):
                    nxt = phi((v - (r0[b] + r + 0.5) * h) * inv, table)
                    fv[g * M + r - rlo] = prev - nxt
                    prev = nxt
            for r in range(rlo, rhi + 1):
                dv = (r0[b] + r) * h - v
                cl = circle_lo(u, dv * dv, c0[b], h, cut2, clo, chi)
                ch = circle_hi(u, dv * dv, c0[b], h, cut2, clo, chi)
                if cl > ch:
                    continue
                for s in range(seg_ptr[b, r], seg_ptr[b, r + 1]):
                    lo = max(cl, seg_c0[s])
                    hi = min(ch, seg_c1[s])
                    for c in range(lo, hi + 1):
                        val = 0.0
                        for g in range(ngb):
                            val += cg[g] * fv[g * M + r - rlo] * fu[g * M + c - clo]
                        indices[pos] = seg_j0[s] + (c - seg_c0[s])
                        data[pos] = val
                        pos += 1

    return count, fill


def influence_csr_cuda(U, V, W, r0, c0, nr, nc, seg_ptr, seg_c0, seg_c1, seg_j0, gcomp, gsig, gw, ng, h, cut,
                       table, threads_per_block: int = 128):
    """Count and fill an influence matrix's CSR arrays with numba.cuda (one thread per voxel).

    Arguments are those of :func:`rtlab.dose.kernels.fill_entries` (the per-beam geometry from
    the CPU ray tracing, bixel runs, Gaussian mixture, bixel size ``h`` and cut-off ``cut`` in
    mm) plus the ``Phi`` table. Pass 1 counts the entries of each row on the device, the row
    pointer is their prefix sum (host), pass 2 fills ``indices`` / ``data`` on the device.

    Returns
    -------
    (indptr, indices, data), count_s, fill_s
        Host arrays (int32 indices where they fit, float32 data) and the seconds of each pass
        (including transfers).

    Raises
    ------
    ValueError
        Without a usable CUDA device (and outside numba's CUDA simulator).
    """
    if not (getattr(numba.config, "ENABLE_CUDASIM", 0) or numba_cuda_available()):
        raise ValueError(f"build_influence(gpu=True) needs a CUDA device ({numba_cuda_unavailable_reason()}); "
                         "use gpu=False or gpu='auto'")
    _bind_cuda()
    n = int(U.shape[1])
    G = max(int(gsig.shape[1]), 1)
    M = int(2 * math.ceil(cut / h)) + 3
    try:
        kcount, kfill = _influence_kernels(G, M)
        t0 = time.perf_counter()
        d = {k: cuda.to_device(np.ascontiguousarray(a)) for k, a in dict(
            U=U, V=V, W=W, r0=r0, c0=c0, nr=nr, nc=nc, seg_ptr=seg_ptr, seg_c0=seg_c0, seg_c1=seg_c1,
            seg_j0=seg_j0, gcomp=gcomp, gsig=gsig, gw=gw, ng=ng, table=table).items()}
        counts = cuda.device_array(n, np.int64)
        blocks = max(1, math.ceil(n / threads_per_block))
        kcount[blocks, threads_per_block](d["U"], d["V"], d["r0"], d["c0"], d["nr"], d["nc"], d["seg_ptr"],
                                          d["seg_c0"], d["seg_c1"], float(h), float(cut), counts)
        cnt = counts.copy_to_host()
        nnz = int(cnt.sum())
        idx_t = np.int32 if nnz < 2**31 - 1 else np.int64
        indptr = np.zeros(n + 1, idx_t)
        np.cumsum(cnt, out=indptr[1:])
        t_count = time.perf_counter() - t0
        t0 = time.perf_counter()
        d_indptr = cuda.to_device(indptr)
        d_indices = cuda.device_array(max(nnz, 1), idx_t)
        d_data = cuda.device_array(max(nnz, 1), np.float32)
        kfill[blocks, threads_per_block](d["U"], d["V"], d["W"], d["r0"], d["c0"], d["nr"], d["nc"], d["seg_ptr"],
                                         d["seg_c0"], d["seg_c1"], d["seg_j0"], d["gcomp"], d["gsig"], d["gw"],
                                         d["ng"], float(h), float(cut), d_indptr, d_indices, d_data, d["table"])
        indices = d_indices.copy_to_host()[:nnz]
        data = d_data.copy_to_host()[:nnz]
        t_fill = time.perf_counter() - t0
    except Exception as exc:
        err = _numba_cuda_error(exc)
        if err is exc:
            raise
        raise err from exc
    return (indptr, indices, data), t_count, t_fill
