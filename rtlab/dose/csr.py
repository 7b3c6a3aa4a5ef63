"""Validation of a CSR influence matrix, shared by the CPU (:mod:`rtlab.dose.sparse`) and GPU
(:mod:`rtlab.dose.gpu`) operators, so that neither has to import the other for it."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._util import check_finite

__all__ = ["check_matrix", "INT32_MAX"]

#: Largest index that fits int32 CSR arrays.
INT32_MAX = np.iinfo(np.int32).max


def check_matrix(A, name: str = "A") -> sp.csr_matrix:
    """Validate an influence matrix and return it as CSR with int32 indices where they fit."""
    if not sp.issparse(A):
        raise TypeError(
            f"{name} must be a scipy.sparse CSR matrix (n_voxels, n_beamlets), got "
            f"{type(A).__name__}; build it with scipy.sparse.csr_matrix(...)"
        )
    if A.format != "csr":
        raise TypeError(
            f"{name} must be in CSR format, got {A.format!r}; convert once with {name}.tocsr()"
        )
    if A.dtype != np.float32:
        raise TypeError(
            f"{name} must hold float32 data, got {A.dtype}; convert once with "
            f"{name}.astype(np.float32) (halves memory and memory traffic)"
        )
    n_rows, n_cols = A.shape
    if n_rows == 0 or n_cols == 0:
        raise ValueError(
            f"{name} has shape {A.shape}; an influence matrix needs at least one voxel (row) "
            "and one beamlet (column)"
        )
    data = A.data
    if data.size and not np.isfinite(np.add.reduce(data, dtype=np.float64)):
        check_finite(f"{name}.data", data)
    indices, indptr = A.indices, A.indptr
    if indptr[-1] <= INT32_MAX and n_cols <= INT32_MAX and n_rows < INT32_MAX:
        # int32 indices: 8 instead of 12 bytes per non-zero, i.e. a third less memory traffic.
        if indices.dtype != np.int32 or indptr.dtype != np.int32:
            indices = indices.astype(np.int32)
            indptr = indptr.astype(np.int32)
    if not (data.flags.c_contiguous and indices.flags.c_contiguous):
        data, indices = np.ascontiguousarray(data), np.ascontiguousarray(indices)
    if data is not A.data or indices is not A.indices or indptr is not A.indptr:
        A = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)
    return A
