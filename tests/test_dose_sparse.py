"""rtlab.dose.sparse: numba CSR dose / gradient products against scipy and numpy references."""

import numpy as np
import pytest
import scipy.sparse as sp

from rtlab.dose import gpu
from rtlab.dose.sparse import (
    DoseOperator,
    _row_bounds,
    csr_matvec,
    csr_rmatvec,
    matvec_reference,
    rmatvec_reference,
)


def random_csr(n_rows, n_cols, density, seed, empty_rows=(), fmt_index=np.int32):
    rng = np.random.default_rng(seed)
    A = sp.random(n_rows, n_cols, density=density, format="csr", dtype=np.float32, random_state=rng)
    A = A.tolil()
    for r in empty_rows:
        A[r, :] = 0
    A = A.tocsr()
    A.data = (A.data * 3.0).astype(np.float32)
    A.indices = A.indices.astype(fmt_index)
    A.indptr = A.indptr.astype(fmt_index)
    return A


@pytest.mark.parametrize("backend", ["numba", "scipy", "auto"])
@pytest.mark.parametrize("shape,density,seed", [((300, 40), 0.2, 0), ((57, 3), 0.9, 1), ((1000, 257), 0.05, 2)])
def test_matvec_and_rmatvec_equal_references(backend, shape, density, seed):
    A = random_csr(*shape, density, seed, empty_rows=(0, 5, shape[0] - 1))
    rng = np.random.default_rng(seed + 10)
    x = rng.random(shape[1])  # float64 weights are accepted
    g = rng.standard_normal(shape[0]).astype(np.float32)
    op = DoseOperator(A, backend=backend)
    assert op.backend in ("numba", "scipy")  # no CUDA here: 'auto' is the CPU
    d = op.matvec(x)
    assert d.dtype == np.float32 and d.shape == (shape[0],)
    ref = matvec_reference(A.indptr, A.indices, A.data, x.astype(np.float32), shape[0])
    scale = np.abs(ref).max()
    np.testing.assert_allclose(d, ref, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(d, A @ x.astype(np.float32), rtol=0, atol=2e-6 * scale)
    # empty rows give exactly zero dose
    assert d[0] == 0 and d[5] == 0 and d[-1] == 0
    r = op.rmatvec(g)
    assert r.dtype == np.float64 and r.shape == (shape[1],)
    rref = rmatvec_reference(A.indptr, A.indices, A.data, g, shape[1])
    np.testing.assert_allclose(r, rref, rtol=0, atol=2e-6 * np.abs(rref).max())
    np.testing.assert_allclose(r, A.T @ g.astype(np.float64), rtol=0, atol=2e-6 * np.abs(rref).max())


def test_int64_indices_and_csr_array_and_out_buffers():
    A = random_csr(200, 30, 0.3, 3, fmt_index=np.int64)
    op = DoseOperator(sp.csr_array(A), backend="numba")
    assert op.A.indices.dtype == np.int32  # converted once: less memory traffic
    x = np.arange(30, dtype=np.float32)
    out = np.full(200, np.nan, np.float32)
    assert op.matvec(x, out=out) is out
    np.testing.assert_allclose(out, A @ x, rtol=2e-6, atol=1e-5)
    rout = np.empty(30)
    g = np.linspace(-1, 1, 200)
    assert op.rmatvec(g, out=rout) is rout
    np.testing.assert_allclose(rout, A.T @ g, rtol=1e-5, atol=1e-5)
    # functional forms and the @ operator
    np.testing.assert_allclose(csr_matvec(A, x), out)
    np.testing.assert_allclose(csr_rmatvec(A, g), rout)
    np.testing.assert_allclose(op @ x, out)


def test_long_rows_accumulate_in_float64():
    # One beamlet touching 300 000 voxels: a sequential float32 sum of 3e5 terms of 0.1 drifts
    # visibly; the blocked sum (256 products in float32, block sums in float64) must not. Its
    # error is that of one float32 block: each SIMD lane adds 256 / lanes terms in float32, so the
    # bound depends on the vector width numba targets. Measured: 1.5e-7 with AVX2 (8 lanes), 2.4e-6
    # with NUMBA_CPU_NAME=generic (SSE2, 4 lanes); the bound is the 4-lane worst case,
    # (256 / 4) * eps32 = 3.8e-6, far below the sequential drift (2.7e-3).
    n = 300_000
    vals = np.full(n, 0.1, np.float32)
    A = sp.csr_matrix((vals, np.zeros(n, np.int32), np.arange(n + 1, dtype=np.int32)), shape=(n, 1))
    op = DoseOperator(A, backend="numba")
    r = op.rmatvec(np.ones(n, np.float32))
    exact = n * float(np.float32(0.1))
    naive = float(np.cumsum(vals)[-1])  # sequential float32 accumulation
    assert abs(naive - exact) / exact > 1e-5  # the reference really is hard
    assert abs(r[0] - exact) / exact < (256 / 4) * float(np.finfo(np.float32).eps)
    assert op.AT.shape == (1, n)


def test_row_bounds_balance_nonzeros():
    # first half of the rows empty: equal-row chunks would give one thread all the work
    indptr = np.concatenate([np.zeros(500, np.int64), np.arange(0, 5001, 10)])
    b = _row_bounds(indptr, 4)
    assert b[0] == 0 and b[-1] == indptr.size - 1 and np.all(np.diff(b) > 0)
    work = np.diff(indptr[b])
    assert work.max() - work.min() <= 10


def test_matrix_validation_messages():
    A = random_csr(20, 5, 0.5, 4)
    with pytest.raises(TypeError, match="scipy.sparse CSR"):
        DoseOperator(A.toarray())
    with pytest.raises(TypeError, match="tocsr"):
        DoseOperator(A.tocsc())
    with pytest.raises(TypeError, match="float32"):
        DoseOperator(A.astype(np.float64))
    with pytest.raises(ValueError, match="at least one voxel"):
        DoseOperator(sp.csr_matrix((0, 5), dtype=np.float32))
    bad = A.copy()
    bad.data[2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        DoseOperator(bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        DoseOperator(A, backend="cuda")


def test_vector_validation_messages():
    A = random_csr(20, 5, 0.5, 4)
    op = DoseOperator(A, backend="numba")
    with pytest.raises(ValueError, match=r"x has shape \(6,\), expected \(5,\)"):
        op.matvec(np.ones(6))
    with pytest.raises(ValueError, match="expected \\(5,\\)"):
        op.matvec(np.ones((5, 1)))
    with pytest.raises(ValueError, match=r"g has shape \(5,\), expected \(20,\)"):
        op.rmatvec(np.ones(5))
    with pytest.raises(TypeError, match="real float"):
        op.matvec(np.ones(5, complex))
    with pytest.raises(TypeError, match="real float"):
        op.matvec(np.ones(5, bool))
    x = np.ones(5)
    x[3] = np.nan
    with pytest.raises(ValueError, match=r"x contains 1 non-finite value.*index \(3,\)"):
        op.matvec(x)
    g = np.ones(20)
    g[7] = np.inf
    with pytest.raises(ValueError, match="g contains 1 non-finite"):
        op.rmatvec(g)
    with pytest.raises(TypeError, match="dtype float64, expected float32"):
        op.matvec(np.ones(5), out=np.empty(20))
    with pytest.raises(ValueError, match="shape"):
        op.matvec(np.ones(5), out=np.empty(19, np.float32))
    with pytest.raises(TypeError, match="dense"):
        op.matvec(sp.csr_matrix(np.ones((1, 5))))
    # integer weights are fine (converted to float32)
    np.testing.assert_allclose(op.matvec(np.arange(5)), A @ np.arange(5, dtype=np.float32), rtol=1e-6)
    # check=False skips the NaN scan (caller's promise), so NaN propagates instead of raising
    assert np.isnan(DoseOperator(A, backend="numba", check=False).matvec(x)).any()


def test_auto_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(gpu, "cupy_available", lambda: False)
    monkeypatch.setattr(gpu, "numba_cuda_available", lambda: False)
    A = random_csr(20, 5, 0.5, 5)
    assert DoseOperator(A, backend="auto").backend == "numba"
    for backend in ("cupy", "numba-cuda", "gpu"):
        with pytest.raises(ValueError, match=f"backend='{backend}' needs"):
            DoseOperator(A, backend=backend)
    with pytest.raises(ValueError, match="CUDA device"):
        DoseOperator(A, backend="numba").to_device()
    with pytest.raises(ValueError, match="CUDA device"):
        gpu.to_device(A)


@pytest.mark.skipif(gpu.cuda_available(), reason="this machine has a CUDA device")
def test_cupy_request_without_device_raises_clear_error():
    A = random_csr(20, 5, 0.5, 6)
    with pytest.raises(ValueError, match=r"backend='cupy' needs CuPy and a CUDA device.*backend='auto'"):
        DoseOperator(A, backend="cupy")


def test_linear_operator_view_matches_dense():
    A = random_csr(40, 7, 0.4, 7)
    L = DoseOperator(A, backend="numba").as_linear_operator()
    x = np.linspace(0, 1, 7)
    np.testing.assert_allclose(L @ x, A.toarray() @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(L.rmatvec(np.ones(40)), A.toarray().sum(axis=0), rtol=1e-5)
