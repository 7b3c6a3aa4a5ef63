"""rtlab.dose.gpu: probes that never raise, the numba.cuda warp kernel under the CUDA simulator,
and (only where a CUDA device exists) CuPy / numba.cuda against the CPU operator."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from rtlab.dose import gpu
from rtlab.dose.sparse import DoseOperator, matvec_reference, rmatvec_reference

ROOT = Path(__file__).resolve().parents[1]


def test_probes_return_bool_and_never_raise(monkeypatch):
    for fn in (gpu.cuda_available, gpu.cupy_available, gpu.numba_cuda_available):
        assert isinstance(fn(), bool)
    assert isinstance(gpu.cuda_unavailable_reason(), str)

    def boom():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(gpu, "_probe_cupy", boom)
    monkeypatch.setattr(gpu, "_probe_numba_cuda", boom)
    assert gpu.cupy_available() is False
    assert gpu.numba_cuda_available() is False
    assert gpu.cuda_available() is False


def test_probe_handles_missing_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    gpu._probe_cupy.cache_clear()
    try:
        ok, reason = gpu._probe_cupy()
        assert ok is False and "CuPy is not importable" in reason
        assert gpu.cupy_available() is False
    finally:
        gpu._probe_cupy.cache_clear()


def test_import_without_cuda_in_fresh_interpreter():
    # CUDA_VISIBLE_DEVICES="" hides any device; importing and probing must still work.
    code = "import rtlab.dose.gpu as g; print(g.cuda_available())"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


SIM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, scipy.sparse as sp
    sys.path.insert(0, {root!r})
    from rtlab.dose import gpu
    from rtlab.dose.sparse import matvec_reference, rmatvec_reference
    rng = np.random.default_rng(3)
    dense = rng.random((42, 70)).astype(np.float32)
    dense[rng.random((42, 70)) < 0.75] = 0
    dense[[0, 7, 40], :] = 0  # empty rows, including the first
    dense[41, :] = 0.5 + np.arange(70, dtype=np.float32) / 70  # long row: 70 > 32 lanes
    A = sp.csr_matrix(dense)
    x = rng.random(70)
    g = rng.standard_normal(42)
    # 2 warps per block, at most 3 blocks: blocks must loop over the 21 row groups
    m = gpu.NumbaCudaMatrix(A, threads_per_block=64, max_blocks=3)
    y = m.to_host(m.matvec(x.astype(np.float32)))
    r = m.to_host(m.rmatvec(g.astype(np.float32)))
    y_ref = matvec_reference(A.indptr, A.indices, A.data, x.astype(np.float32), 42)
    r_ref = rmatvec_reference(A.indptr, A.indices, A.data, g.astype(np.float32), 70)
    sim_is_device = gpu.cuda_available()
    # the DoseOperator plumbing on top of it (pretend the simulator is a device)
    gpu.numba_cuda_available = lambda: True
    from numba import cuda
    from rtlab.dose.sparse import DoseOperator
    op = DoseOperator(A, backend="numba-cuda")
    y_host = op.matvec(x)  # numpy in -> numpy out
    y_dev = op.matvec(cuda.to_device(x.astype(np.float32)))  # device in -> device out
    r_host = op.rmatvec(g)
    try:
        op.matvec(np.full(70, np.nan))
        nan_msg = "no error"
    except ValueError as exc:
        nan_msg = str(exc)
    print(json.dumps({{
        "cuda_available": sim_is_device,
        "y_dtype": str(y.dtype), "r_dtype": str(r.dtype),
        "y_err": float(np.abs(y - y_ref).max() / np.abs(y_ref).max()),
        "r_err": float(np.abs(r - r_ref).max() / np.abs(r_ref).max()),
        "empty": [float(y[0]), float(y[7]), float(y[40])],
        "op_backend": op.backend,
        "op_host_types": [type(y_host).__name__, str(y_host.dtype), type(r_host).__name__, str(r_host.dtype)],
        "op_dev_is_device": hasattr(y_dev, "copy_to_host"),
        "op_err": float(max(np.abs(y_host - y_ref).max(), np.abs(y_dev.copy_to_host() - y_ref).max()) / np.abs(y_ref).max()),
        "op_rerr": float(np.abs(r_host - r_ref).max() / np.abs(r_ref).max()),
        "nan_msg": nan_msg,
    }}))
    """
)


def test_warp_kernel_under_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    script = SIM_SCRIPT.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cuda_available"] is False  # the simulator is not a device: 'auto' stays on the CPU
    assert res["y_dtype"] == "float32" and res["r_dtype"] == "float64"
    assert res["y_err"] < 2e-6
    assert res["r_err"] < 2e-6
    assert res["empty"] == [0.0, 0.0, 0.0]
    assert res["op_backend"] == "numba-cuda"
    assert res["op_host_types"] == ["ndarray", "float32", "ndarray", "float64"]
    assert res["op_dev_is_device"] is True
    assert res["op_err"] < 2e-6 and res["op_rerr"] < 2e-6
    assert "non-finite" in res["nan_msg"]


def test_warp_launch_rejects_bad_block_size():
    with pytest.raises(ValueError, match="multiple of 32"):
        gpu.warp_csr_matvec(None, None, None, None, np.zeros(1, np.float32), threads_per_block=48)


# ---------------------------------------------------------------- real device only
needs_cupy = pytest.mark.skipif(not gpu.cupy_available(), reason=f"no CuPy CUDA device: {gpu.cupy_unavailable_reason()}")
needs_numba_cuda = pytest.mark.skipif(
    not gpu.numba_cuda_available(), reason=f"no numba.cuda device: {gpu.numba_cuda_unavailable_reason()}"
)


def _cpu_and_vectors(seed=11):
    rng = np.random.default_rng(seed)
    A = sp.random(5000, 300, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    x = rng.random(300)
    g = rng.standard_normal(5000)
    return A, x, g, DoseOperator(A, backend="numba")


@pytest.mark.gpu
@needs_cupy
def test_cupy_backend_matches_cpu():
    import cupy as cp

    A, x, g, cpu = _cpu_and_vectors()
    op = DoseOperator(A, backend="cupy")
    assert DoseOperator(A, backend="auto").backend == "cupy"
    d, r = op.matvec(x), op.rmatvec(g)
    assert isinstance(d, np.ndarray) and d.dtype == np.float32 and r.dtype == np.float64
    np.testing.assert_allclose(d, cpu.matvec(x), rtol=0, atol=2e-6 * np.abs(d).max())
    np.testing.assert_allclose(r, cpu.rmatvec(g), rtol=0, atol=2e-6 * np.abs(r).max())
    # device-resident: device in, device out, no host round trip
    dd = op.matvec(cp.asarray(x, dtype=cp.float32))
    assert isinstance(dd, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(dd), d, rtol=0, atol=1e-6 * np.abs(d).max())
    with pytest.raises(ValueError, match="non-finite"):
        op.matvec(cp.full(300, cp.nan, dtype=cp.float32))


@pytest.mark.gpu
@needs_numba_cuda
def test_numba_cuda_backend_matches_cpu():
    A, x, g, cpu = _cpu_and_vectors(12)
    op = DoseOperator(A, backend="numba-cuda")
    d, r = op.matvec(x), op.rmatvec(g)
    np.testing.assert_allclose(d, cpu.matvec(x), rtol=0, atol=2e-6 * np.abs(d).max())
    np.testing.assert_allclose(r, cpu.rmatvec(g), rtol=0, atol=2e-6 * np.abs(r).max())
    ref = matvec_reference(A.indptr, A.indices, A.data, x.astype(np.float32), A.shape[0])
    np.testing.assert_allclose(d, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    rref = rmatvec_reference(A.indptr, A.indices, A.data, g.astype(np.float32), A.shape[1])
    np.testing.assert_allclose(r, rref, rtol=0, atol=2e-6 * np.abs(rref).max())


# ---------------------------------------------------------------- influence build on the device
BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from rtlab.dose import build_influence
    from rtlab.dose._testcases import water_box
    from rtlab.plan import Beam, BixelGrid
    case = water_box(shape=(5, 9, 7), spacing=(4.0, 4.0, 4.0), surface_y=-12.0, target_halfwidth=(4, 4))
    mask = np.zeros((3, 4), bool)  # an empty-free but holey mask: two runs in row 2
    mask[0, :3] = True; mask[1, :] = True; mask[2, 1] = mask[2, 3] = True
    beams = [Beam(0.0, bixels=BixelGrid(5.0, -1, -2, mask)),
             Beam(90.0, bixels=BixelGrid(5.0, -1, -1, np.ones((3, 3), bool)))]
    cpu = build_influence(case, beams, cutoff_mm=12.0, voxels="all", progress=False, gpu=False)
    dev = build_influence(case, beams, cutoff_mm=12.0, voxels="all", progress=False, gpu=True)
    A, B = cpu.matrix, dev.matrix
    print(json.dumps({{"backend": dev.backend, "cpu_backend": cpu.backend, "nnz": [int(A.nnz), int(B.nnz)],
        "same_pattern": bool(np.array_equal(A.indptr, B.indptr) and np.array_equal(A.indices, B.indices)),
        "max_rel": float(np.abs(A.toarray() - B.toarray()).max() / np.abs(A.data).max())}}))
    """
)


def test_influence_build_kernel_under_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", BUILD_SCRIPT.format(root=str(ROOT))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["backend"] == "cuda" and res["cpu_backend"] == "cpu"
    assert res["nnz"][0] == res["nnz"][1] > 1000
    assert res["same_pattern"] is True
    assert res["max_rel"] < 1e-6  # float32 storage of the same float64 arithmetic


@pytest.mark.skipif(gpu.numba_cuda_available(), reason="a CUDA device exists here")
def test_influence_gpu_true_without_device_raises_and_auto_falls_back():
    from rtlab.dose import build_influence
    from rtlab.dose._testcases import water_box

    case = water_box(shape=(5, 9, 7), spacing=(4.0, 4.0, 4.0), surface_y=-12.0, target_halfwidth=(4, 4))
    with pytest.raises(ValueError, match="CUDA device"):
        build_influence(case, [0], progress=False, gpu=True)
    assert build_influence(case, [0], progress=False, gpu="auto").backend == "cpu"
    with pytest.raises(ValueError, match="gpu must be"):
        build_influence(case, [0], progress=False, gpu="yes")


@pytest.mark.gpu
@needs_numba_cuda
def test_influence_build_on_device_matches_cpu():
    from rtlab.dose import build_influence
    from rtlab.dose._testcases import water_box

    case = water_box(shape=(21, 41, 21), spacing=(3.0, 3.0, 3.0), surface_y=-45.0, target_halfwidth=(10, 10))
    cpu = build_influence(case, [0, 90, 200], progress=False, gpu=False)
    dev = build_influence(case, [0, 90, 200], progress=False, gpu=True)
    assert dev.backend == "cuda"
    np.testing.assert_array_equal(cpu.matrix.indptr, dev.matrix.indptr)
    np.testing.assert_array_equal(cpu.matrix.indices, dev.matrix.indices)
    np.testing.assert_allclose(dev.matrix.data, cpu.matrix.data, rtol=2e-6, atol=1e-7 * cpu.matrix.data.max())
