"""Fast application of a beamlet influence matrix: dose ``d = A x`` and gradient ``A^T g``.

The influence matrix ``A`` (``scipy.sparse`` CSR, float32, shape ``(n_voxels, n_beamlets)``;
``A[i, j]`` is the dose in Gy that voxel ``i`` receives per unit weight of beamlet ``j``) is applied
twice per optimiser iteration: once forward for the dose, ``d = A x``, and once backward for the
gradient of an objective ``f(d)`` with respect to the beamlet weights, ``df/dx = A^T (df/dd)``
(chain rule). Both products are memory-bound: every non-zero is read once (4 bytes of data and
4 bytes of column index), so the speed limit is the memory bandwidth.

:class:`DoseOperator` wraps ``A`` and runs both products on a selectable backend:

``'numba'``
    CPU, a numba ``parallel=True`` row kernel. Rows are split into chunks of equal non-zero
    count (not equal row count), so both cores get the same amount of memory traffic even when
    many voxels lie outside every beam. ``A^T g`` uses a CSR copy of ``A^T`` built once, on
    first use, so it is also a row kernel (no scattered writes, no atomics).
``'scipy'``
    CPU, ``scipy.sparse`` (single-threaded); the reference the other backends are tested
    against.
``'cupy'``
    GPU, cuSPARSE through CuPy; ``A`` (and, on first use, ``A^T``) stay resident on the device.
``'numba-cuda'``
    GPU, numba.cuda warp-per-row kernel (:mod:`rtlab.dose.gpu`); used when CuPy is missing.
``'gpu'``
    ``'cupy'`` when CuPy and a device are available, else ``'numba-cuda'``; raises if there is
    no CUDA device.
``'auto'``
    ``'cupy'`` when CuPy and a CUDA device are available, else ``'numba'``.

Accumulation: ``A x`` accumulates each row in float32 (rows hold at most a few thousand
non-zeros) and returns float32; ``A^T g`` sums up to millions of terms per beamlet, so it sums
blocks of 256 products in float32 and the block sums in float64, and returns float64.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from .._util import check_finite
from . import gpu
from .csr import check_matrix

__all__ = [
    "DoseOperator",
    "is_device_array",
    "BACKENDS",
    "csr_matvec",
    "csr_rmatvec",
    "matvec_reference",
    "rmatvec_reference",
]

#: Backend names accepted by :class:`DoseOperator`.
BACKENDS = ("auto", "numba", "scipy", "cupy", "numba-cuda", "gpu")

#: Products summed in float32 before being added to the float64 row total (see module docstring).
_BLOCK = 256


# --------------------------------------------------------------------------------------------
# numba kernels and their numpy references
# --------------------------------------------------------------------------------------------
@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _csr_rows_kernel(indptr, indices, data, x, bounds, out):  # pragma: no cover - numba
    """``out[i] = sum_j data[j] * x[indices[j]]`` over the CSR row ``i``, for every row.

    ``bounds`` splits the rows into chunks (``bounds[c] .. bounds[c+1]``) that are run in
    parallel. Products are summed in float32 in blocks of ``_BLOCK`` (vectorised by LLVM; the
    ``fastmath`` flag allows the reordering this needs), block sums in float64.
    """
    for c in numba.prange(bounds.size - 1):
        for i in range(bounds[c], bounds[c + 1]):
            total = 0.0
            start = indptr[i]
            stop = indptr[i + 1]
            while start < stop:
                end = min(start + _BLOCK, stop)
                part = np.float32(0.0)
                for j in range(start, end):
                    part += data[j] * x[indices[j]]
                total += part
                start = end
            out[i] = total


def matvec_reference(indptr, indices, data, x, n_rows):
    """Pure-numpy CSR mat-vec in float64, ``y_i = sum_j A_ij x_j``; the tests' reference.

    Parameters
    ----------
    indptr, indices, data : ndarray
        CSR arrays of ``A`` (any integer / float dtypes).
    x : ndarray, shape (n_cols,)
        Vector to multiply.
    n_rows : int
        Number of rows of ``A``.

    Returns
    -------
    ndarray of float64, shape (n_rows,)
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.repeat(np.arange(n_rows), np.diff(indptr))
    prod = np.asarray(data, np.float64) * np.asarray(x, np.float64)[np.asarray(indices)]
    return np.bincount(rows, weights=prod, minlength=n_rows).astype(np.float64)


def rmatvec_reference(indptr, indices, data, g, n_cols):
    """Pure-numpy ``A^T g`` in float64 from the CSR arrays of ``A`` (scatter form).

    Parameters
    ----------
    indptr, indices, data : ndarray
        CSR arrays of ``A``.
    g : ndarray, shape (n_rows,)
        Vector to multiply.
    n_cols : int
        Number of columns of ``A``.

    Returns
    -------
    ndarray of float64, shape (n_cols,)
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    prod = np.asarray(data, np.float64) * np.asarray(g, np.float64)[rows]
    return np.bincount(np.asarray(indices), weights=prod, minlength=n_cols).astype(np.float64)


def _row_bounds(indptr: np.ndarray, n_chunks: int) -> np.ndarray:
    """Row chunk boundaries with (about) equal non-zero counts; int64, length ``<= n_chunks+1``."""
    n_rows = indptr.size - 1
    n_chunks = max(1, min(int(n_chunks), n_rows))
    targets = np.linspace(0, float(indptr[-1]), n_chunks + 1)
    bounds = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    bounds[0] = 0
    bounds[-1] = n_rows
    return np.unique(bounds)


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_vector(name: str, v, n: int, what: str, check_nan: bool = True) -> np.ndarray:
    """Validate a host vector of length ``n``; return it as a contiguous float array."""
    if is_device_array(v):
        raise TypeError(
            f"{name} is a GPU (device) array but this operator runs on the CPU; pass a numpy "
            "array, or use DoseOperator(A, backend='gpu') / op.to_device() to keep data on the GPU"
        )
    if sp.issparse(v):
        raise TypeError(f"{name} must be a dense 1-D numpy array, got a sparse matrix; use {name}.toarray().ravel()")
    arr = np.asarray(v)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.float16:
        raise TypeError(
            f"{name} must be a real float array, got dtype {arr.dtype}; convert with "
            f"np.asarray({name}, dtype=np.float32)"
        )
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({n},), one value per {what}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    if check_nan and arr.size and not np.isfinite(np.add.reduce(arr, dtype=np.float64)):
        check_finite(name, arr)
    return np.ascontiguousarray(arr)


def _check_out(out, n: int, dtype, what: str) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array of dtype {np.dtype(dtype)}, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {np.dtype(dtype)}; allocate it with np.empty({n}, np.{np.dtype(dtype)})")
    if out.shape != (n,) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable contiguous array of shape ({n},) (one value per {what}), got shape {out.shape}")
    return out


def is_device_array(v) -> bool:
    """CuPy array, numba device array (real or simulated), or anything exposing CUDA memory."""
    if isinstance(v, np.ndarray):
        return False
    return hasattr(v, "__cuda_array_interface__") or hasattr(v, "copy_to_host")


# --------------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------------
def _n_chunks() -> int:
    return 16 * numba.get_num_threads()


def csr_matvec(A, x, out=None) -> np.ndarray:
    """Dose ``d = A x`` with the numba CPU kernel (one call, no cached state).

    Parameters
    ----------
    A : scipy.sparse CSR matrix, float32, shape (n_voxels, n_beamlets)
        Influence matrix, Gy per unit beamlet weight.
    x : array_like, shape (n_beamlets,)
        Beamlet weights.
    out : ndarray of float32, shape (n_voxels,), optional
        Output buffer.

    Returns
    -------
    ndarray of float32, shape (n_voxels,)
        Dose in Gy.
    """
    return DoseOperator(A, backend="numba").matvec(x, out=out)


def csr_rmatvec(A, g, out=None) -> np.ndarray:
    """Gradient ``A^T g`` with the numba CPU kernel (builds ``A^T`` each call; prefer
    :meth:`DoseOperator.rmatvec`, which builds it once).

    Parameters
    ----------
    A : scipy.sparse CSR matrix, float32, shape (n_voxels, n_beamlets)
    g : array_like, shape (n_voxels,)
        Per-voxel values, e.g. ``df/dd`` in 1/Gy.
    out : ndarray of float64, shape (n_beamlets,), optional

    Returns
    -------
    ndarray of float64, shape (n_beamlets,)
    """
    return DoseOperator(A, backend="numba").rmatvec(g, out=out)


# --------------------------------------------------------------------------------------------
# operator
# --------------------------------------------------------------------------------------------
def _resolve_backend(backend: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cupy" if gpu.cupy_available() else "numba"
    if backend == "gpu":
        if gpu.cupy_available():
            return "cupy"
        if gpu.numba_cuda_available():
            return "numba-cuda"
        raise ValueError(
            "backend='gpu' needs a CUDA device with CuPy or numba.cuda, but none is usable here "
            f"({gpu.cuda_unavailable_reason()}); use backend='auto' or 'numba' to run on the CPU"
        )
    if backend == "cupy" and not gpu.cupy_available():
        raise ValueError(
            "backend='cupy' needs CuPy and a CUDA device, but "
            f"{gpu.cupy_unavailable_reason()}; install the 'gpu' extra on a CUDA machine, or use "
            "backend='auto' (falls back to the CPU) or 'numba'"
        )
    if backend == "numba-cuda" and not gpu.numba_cuda_available():
        raise ValueError(
            "backend='numba-cuda' needs numba.cuda and a CUDA device, but "
            f"{gpu.numba_cuda_unavailable_reason()}; use backend='auto' or 'numba'"
        )
    return backend


class DoseOperator:
    """The influence matrix as a linear operator: ``d = A x`` and ``A^T g`` on CPU or GPU.

    Parameters
    ----------
    A : scipy.sparse CSR matrix (``csr_matrix`` or ``csr_array``), float32, shape (n_voxels, n_beamlets)
        Influence matrix; ``A[i, j]`` is Gy in voxel ``i`` per unit weight of beamlet ``j``.
        Kept by reference (int64 indices that fit are converted to int32 once: a third less
        memory traffic).
    backend : {'auto', 'numba', 'scipy', 'cupy', 'numba-cuda', 'gpu'}
        Where the products run; see the module docstring. ``'auto'`` picks CuPy on a CUDA
        machine and numba on the CPU otherwise.
    check : bool
        Check every input vector for NaN/inf (one extra pass over the vector; on the GPU also a
        device synchronisation). Switch off in tight optimiser loops whose inputs are known
        finite.

    Attributes
    ----------
    backend : str
        The resolved backend (never ``'auto'`` or ``'gpu'``).
    shape : tuple of int
        ``(n_voxels, n_beamlets)``.

    Notes
    -----
    ``A^T`` is built as a separate CSR matrix on first use of :meth:`rmatvec` (on the GPU for
    CuPy): it doubles the memory held but makes the gradient a row kernel too. Call
    :meth:`prepare_transpose` to build it up front.

    Examples
    --------
    >>> op = DoseOperator(A)                  # doctest: +SKIP
    >>> dose = op.matvec(weights)             # float32, Gy
    >>> grad = op.rmatvec(dfdd)               # float64
    """

    def __init__(self, A, backend: str = "auto", check: bool = True):
        self.A = check_matrix(A)
        self.backend = _resolve_backend(backend)
        self.check = bool(check)
        self._AT = None
        self._bounds = {}
        self._device = None
        if self.backend in ("cupy", "numba-cuda"):
            self._device = gpu.to_device(self.A, backend=self.backend)

    # ---------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.A.shape)

    @property
    def nnz(self) -> int:
        return int(self.A.nnz)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        """Host bytes of ``A`` (and ``A^T`` once built)."""
        n = self.A.data.nbytes + self.A.indices.nbytes + self.A.indptr.nbytes
        if self._AT is not None:
            n += self._AT.data.nbytes + self._AT.indices.nbytes + self._AT.indptr.nbytes
        return int(n)

    @property
    def AT(self) -> sp.csr_matrix:
        """CSR copy of ``A^T`` (built once, on first access)."""
        if self._AT is None:
            self._AT = check_matrix(self.A.T.tocsr(), "A.T")
        return self._AT

    def prepare_transpose(self) -> "DoseOperator":
        """Build ``A^T`` now (host CSR, or device CSR for GPU backends); returns ``self``."""
        if self._device is not None:
            self._device.prepare_transpose()
        else:
            _ = self.AT
        return self

    def __repr__(self) -> str:
        return (f"DoseOperator(shape={self.shape}, nnz={self.nnz}, backend={self.backend!r}, "
                f"transpose_built={self._AT is not None})")

    # ---------------------------------------------------------------- products
    def _bounds_for(self, key: str, indptr: np.ndarray) -> np.ndarray:
        n = _n_chunks()
        k = (key, n)
        if k not in self._bounds:
            self._bounds[k] = _row_bounds(indptr, n)
        return self._bounds[k]

    def matvec(self, x, out=None):
        """Dose ``d = A x``.

        Parameters
        ----------
        x : array_like, shape (n_beamlets,)
            Beamlet weights (float32 or float64; ints are converted). On a GPU backend a CuPy
            or numba device array stays on the device and a device array is returned.
        out : ndarray of float32, shape (n_voxels,), optional
            Output buffer (host backends) or device array (GPU backends with device input).

        Returns
        -------
        ndarray of float32, shape (n_voxels,)
            Dose in Gy.
        """
        n_rows, n_cols = self.shape
        if self._device is not None:
            if is_device_array(x):
                return self._device.matvec(x, out=out, check=self.check)
            xh = _check_vector("x", x, n_cols, "beamlet", self.check)
            if out is not None:
                _check_out(out, n_rows, np.float32, "voxel")
            y = self._device.to_host(self._device.matvec(self._device.upload(xh.astype(np.float32)), check=False))
            if out is not None:
                out[...] = y
                return out
            return y
        xh = _check_vector("x", x, n_cols, "beamlet", self.check)
        if out is None:
            out = np.empty(n_rows, dtype=np.float32)
        else:
            _check_out(out, n_rows, np.float32, "voxel")
        if self.backend == "scipy":
            out[...] = self.A @ xh
            return out
        A = self.A
        _csr_rows_kernel(A.indptr, A.indices, A.data, xh.astype(np.float32, copy=False),
                         self._bounds_for("A", A.indptr), out)
        return out

    def rmatvec(self, g, out=None):
        """Gradient ``A^T g`` (chain rule ``df/dx = A^T df/dd``).

        Parameters
        ----------
        g : array_like, shape (n_voxels,)
            Per-voxel values (e.g. ``df/dd``). float64 input is rounded to float32 first (one
            pass over ``g``); the sum is accumulated in float64. On a GPU backend a device
            array stays on the device.
        out : ndarray of float64, shape (n_beamlets,), optional

        Returns
        -------
        ndarray of float64, shape (n_beamlets,)
        """
        n_rows, n_cols = self.shape
        if self._device is not None:
            if is_device_array(g):
                return self._device.rmatvec(g, out=out, check=self.check)
            gh = _check_vector("g", g, n_rows, "voxel", self.check)
            if out is not None:
                _check_out(out, n_cols, np.float64, "beamlet")
            y = self._device.to_host(self._device.rmatvec(self._device.upload(gh.astype(np.float32)), check=False))
            y = np.asarray(y, dtype=np.float64)
            if out is not None:
                out[...] = y
                return out
            return y
        gh = _check_vector("g", g, n_rows, "voxel", self.check)
        if out is None:
            out = np.empty(n_cols, dtype=np.float64)
        else:
            _check_out(out, n_cols, np.float64, "beamlet")
        if self.backend == "scipy":
            out[...] = self.A.T @ gh.astype(np.float64)
            return out
        AT = self.AT
        _csr_rows_kernel(AT.indptr, AT.indices, AT.data, gh.astype(np.float32, copy=False),
                         self._bounds_for("AT", AT.indptr), out)
        return out

    def __matmul__(self, x):
        return self.matvec(x)

    def to_device(self, backend: str = "gpu") -> "DoseOperator":
        """Return a GPU-resident operator (``A`` uploaded once; per call only ``x``/``d`` move).

        Pass CuPy / numba device arrays to its :meth:`matvec` / :meth:`rmatvec` to avoid even
        those transfers. Raises ``ValueError`` where no CUDA device is usable.
        """
        if backend not in ("gpu", "cupy", "numba-cuda"):
            raise ValueError(f"backend must be 'gpu', 'cupy' or 'numba-cuda', got {backend!r}")
        return DoseOperator(self.A, backend=backend, check=self.check)

    def as_linear_operator(self):
        """``scipy.sparse.linalg.LinearOperator`` view (float32 forward, float64 adjoint)."""
        return LinearOperator(self.shape, matvec=lambda v: self.matvec(np.ravel(v)),
                              rmatvec=lambda v: self.rmatvec(np.ravel(v)), dtype=np.float32)
