"""Timing helpers shared by the benchmark scripts (imported as ``_common`` from the script's folder)."""

from __future__ import annotations

import time

import numba
import numpy as np


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time (s) of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


@numba.njit(parallel=True, cache=True)
def parallel_copy(src, dst):  # pragma: no cover - numba
    """``dst[:] = src`` in a numba ``prange`` loop (the threads' copy bandwidth)."""
    for i in numba.prange(src.size):
        dst[i] = src[i]
