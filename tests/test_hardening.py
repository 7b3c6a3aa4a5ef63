"""Issue #15: hostile and broken inputs get a clear one-line error, bounded cost and no wrong answer.

Every test builds its hostile input itself (small files written here). Command-line cases run
``rtlab`` in a subprocess, so the exit status, the one-line message (no traceback) and the
child's peak memory (``VmHWM``) are those a user sees.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rtlab import cli
from rtlab._util import atomic_path, atomic_write_text
from rtlab.core import validate as V
from rtlab.core.case import Case
from rtlab.core.geometry import Grid, Structure, StructureSet
from rtlab.io import load_dose_npz, read_mat

REPO = Path(__file__).resolve().parents[1]

# a child that runs rtlab.cli.main and reports its exit status and peak resident memory: VmHWM of
# its own address space (ru_maxrss is not used: Linux carries it over fork + exec from the parent,
# here the whole pytest process)
_CHILD = (
    "import json, resource, sys\n"
    "from rtlab.cli import main\n"
    "rc = main(sys.argv[2:])\n"
    "try:\n"
    "    peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024\n"
    "except (OSError, IndexError):\n"
    "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "json.dump(dict(rc=rc, maxrss_mb=peak), open(sys.argv[1], 'w'))\n"
    "sys.exit(rc)\n"
)


def rtlab_cli(tmp_path, *argv, env=None, timeout=300):
    """Run ``rtlab ARGV`` in a fresh interpreter: ``(rc, stderr lines, peak RSS MiB, wall s)``."""
    rep = tmp_path / f"child_{time.monotonic_ns()}.json"
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("RTLAB_DEBUG", None)
    e.update(env or {})
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _CHILD, str(rep), *map(str, argv)], capture_output=True, text=True,
                       env=e, timeout=timeout, cwd=tmp_path)
    wall = time.perf_counter() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    peak = json.loads(rep.read_text())["maxrss_mb"] if rep.exists() else float("nan")
    return r.returncode, lines, peak, wall


def assert_one_line_error(lines, *needles):
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1, lines
    assert not any("Traceback" in ln for ln in lines), lines
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def _dose_npz(path, shape=(4, 4, 4)):
    np.savez(path, dose=np.ones(shape, np.float32))
    return path


# ---------------------------------------------------------------------------------------------
# 1. matRad v7.3 (HDF5): shared references decode once, cycles and depth are refused, and the
#    decoded size is budgeted from shapes before reading
# ---------------------------------------------------------------------------------------------
h5py = pytest.importorskip("h5py")


def _mat73(path):
    """An empty MATLAB v7.3 file (512-byte user block, as MATLAB writes)."""
    f = h5py.File(path, "w", userblock_size=512)
    return f


def _finish73(path):
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, written by rtlab tests".ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


def test_v73_shared_references_decode_once(tmp_path):
    p = tmp_path / "shared.mat"
    with _mat73(p) as f:
        big = f.create_dataset("#refs#/big", data=np.arange(2 ** 18, dtype=np.float64))  # 2 MiB
        big.attrs["MATLAB_class"] = np.bytes_("double")
        c = f.create_dataset("c", data=np.array([[big.ref] * 2000], dtype=h5py.ref_dtype))
        c.attrs["MATLAB_class"] = np.bytes_("cell")
    _finish73(p)
    assert p.stat().st_size < 4 * 2 ** 20
    tracemalloc.start()
    try:
        out = read_mat(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cell = out["c"]
    assert cell.shape == (2000, 1)
    first = cell[0, 0]
    assert all(v is first for v in cell.ravel())  # one decoded object, shared
    np.testing.assert_array_equal(first.ravel(), np.arange(2 ** 18))
    # eager decoding held 2000 copies (4 GiB); memoised it is one array (2 MiB) plus bookkeeping
    assert peak < 32 * 2 ** 20, peak


def test_v73_self_reference_is_a_cycle_error(tmp_path):
    p = tmp_path / "cycle.mat"
    with _mat73(p) as f:
        g = f.create_group("#refs#")
        cell = g.create_dataset("a", shape=(1, 1), dtype=h5py.ref_dtype)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        cell[0, 0] = cell.ref  # the cell holds itself
        ct = f.create_dataset("ct", shape=(1, 1), dtype=h5py.ref_dtype)
        ct.attrs["MATLAB_class"] = np.bytes_("cell")
        ct[0, 0] = cell.ref
    _finish73(p)
    with pytest.raises(ValueError, match="reference cycle") as e:
        read_mat(p)
    assert "cycle.mat" in str(e.value)
    dose = _dose_npz(tmp_path / "d.npz")
    rc, lines, peak, _ = rtlab_cli(tmp_path, "score", "--matrad", p, "--dose", dose)
    assert rc == 2
    assert_one_line_error(lines, "cycle.mat", "reference cycle")


def test_v73_nesting_limit(tmp_path):
    p = tmp_path / "deep.mat"
    with _mat73(p) as f:
        prev = f.create_dataset("#refs#/leaf", data=np.zeros(1))
        prev.attrs["MATLAB_class"] = np.bytes_("double")
        for i in range(V.MAX_NESTING + 5):
            d = f.create_dataset(f"#refs#/n{i}", data=np.array([[prev.ref]], dtype=h5py.ref_dtype))
            d.attrs["MATLAB_class"] = np.bytes_("cell")
            prev = d
        top = f.create_dataset("x", data=np.array([[prev.ref]], dtype=h5py.ref_dtype))
        top.attrs["MATLAB_class"] = np.bytes_("cell")
    _finish73(p)
    with pytest.raises(ValueError, match=f"nest deeper than {V.MAX_NESTING} levels"):
        read_mat(p)


def test_v73_declared_size_refused_before_reading(tmp_path):
    """A tiny file whose dataset declares 80 GB (chunked, nothing written) is refused from its shape."""
    p = tmp_path / "huge.mat"
    with _mat73(p) as f:
        d = f.create_dataset("ct", shape=(100_000, 100_000), dtype="f8", chunks=(64, 64))
        d.attrs["MATLAB_class"] = np.bytes_("double")
    _finish73(p)
    assert p.stat().st_size < 100_000
    with pytest.raises(ValueError, match="RTLAB_MAX_DECODE_BYTES") as e:
        read_mat(p)
    assert "huge.mat" in str(e.value) and "74.5 GiB" in str(e.value)
    dose = _dose_npz(tmp_path / "d.npz")
    rc, lines, peak, wall = rtlab_cli(tmp_path, "score", "--matrad", p, "--dose", dose)
    assert rc == 2
    assert_one_line_error(lines, "huge.mat", "RTLAB_MAX_DECODE_BYTES", "docs/security.md")
    assert peak < 1024, f"peak RSS {peak:.0f} MiB"


def test_decode_budget_is_configurable(tmp_path, monkeypatch):
    p = tmp_path / "small.mat"
    with _mat73(p) as f:
        d = f.create_dataset("x", data=np.zeros(300_000))  # 2.4 MB
        d.attrs["MATLAB_class"] = np.bytes_("double")
    _finish73(p)
    monkeypatch.setenv("RTLAB_MAX_DECODE_BYTES", "1000000")
    with pytest.raises(ValueError, match=r"more than rtlab's limit of 977 KiB"):
        read_mat(p)
    monkeypatch.setenv("RTLAB_MAX_DECODE_BYTES", "lots")
    with pytest.raises(ValueError, match="RTLAB_MAX_DECODE_BYTES='lots' must be a positive integer"):
        read_mat(p)
    monkeypatch.delenv("RTLAB_MAX_DECODE_BYTES")
    assert read_mat(p)["x"].size == 300_000


def test_mat5_cell_declaring_billions_of_elements(tmp_path):
    """MAT v5: a cell header declaring 10**9 elements in a few hundred bytes is refused before scipy."""
    import struct

    p = tmp_path / "cells.mat"
    head = b"MATLAB 5.0 MAT-file, hostile".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    flags = struct.pack("<IIII", 6, 8, 1, 0)  # miUINT32, 8 bytes, class mxCELL
    dims = struct.pack("<II", 5, 8) + struct.pack("<ii", 100_000, 10_000)
    name = struct.pack("<HH", 1, 1) + b"c\0\0\0"  # small element, 1 byte
    body = flags + dims + name + b"\0" * 64
    p.write_bytes(head + struct.pack("<II", 14, len(body)) + body)
    with pytest.raises(ValueError, match="declares 100000 x 10000 element") as e:
        read_mat(p)
    assert "cells.mat" in str(e.value)


# ---------------------------------------------------------------------------------------------
# 4. one line, exit 2, sizes from headers before allocating
# ---------------------------------------------------------------------------------------------
def _npz_with_member(path, name, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, payload)
    return path


def _npy_header(shape, dtype="<f8"):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, dict(descr=dtype, fortran_order=False, shape=tuple(shape)))
    return buf.getvalue()


def test_npy_header_declaring_1e15_elements(tmp_path):
    p = _npz_with_member(tmp_path / "huge.npz", "dose.npy", _npy_header((100_000, 100_000, 100_000)) + b"\0" * 64)
    assert p.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="volume limit of 134,217,728 voxels") as e:
            load_dose_npz(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "RTLAB_MAX_VOXELS" in str(e.value) and "huge.npz" in str(e.value)
    assert peak < 2 ** 20
    # a plausible shape whose data is missing: the header does not match the member
    p2 = _npz_with_member(tmp_path / "short.npz", "dose.npy", _npy_header((10, 10, 10)) + b"\0" * 64)
    with pytest.raises(ValueError, match=r"header declares shape \(10, 10, 10\).*holds 64 bytes"):
        load_dose_npz(p2)
    rc, lines, peak, _ = rtlab_cli(tmp_path, "score", "--phantom", "sphere", "--dose", p)
    assert rc == 2
    assert_one_line_error(lines, "huge.npz", "(100000, 100000, 100000)")  # refused from the header
    assert peak < 1024


def test_npz_bad_crc_and_member_not_npy(tmp_path):
    p = tmp_path / "crc.npz"
    np.savez(p, dose=np.arange(1000, dtype=np.float64).reshape(10, 10, 10))
    raw = bytearray(p.read_bytes())
    i = raw.index(b"\x00\x00\x00\x00\x00\x00\xf0\x3f")  # the value 1.0 in the stored data
    raw[i + 7] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="crc.npz: entry 'dose.npy' cannot be read .*BadZipFile"):
        load_dose_npz(p)
    q = _npz_with_member(tmp_path / "text.npz", "dose.npy", b"these are not the arrays you are looking for")
    with pytest.raises(ValueError, match="text.npz: entry 'dose' is not a .npy array"):
        load_dose_npz(q)
    for f in (p, q):
        rc, lines, _, _ = rtlab_cli(tmp_path, "score", "--phantom", "sphere", "--dose", f)
        assert rc == 2
        assert_one_line_error(lines, f.name)


def test_output_paths_checked_before_work(tmp_path):
    (tmp_path / "adir").mkdir()
    rc, lines, _, wall = rtlab_cli(tmp_path, "plan", "--phantom", "sphere", "--out", tmp_path / "adir")
    assert rc == 2
    assert_one_line_error(lines, "--out", "is a folder")
    f = tmp_path / "afile"
    f.write_text("x")
    rc, lines, _, _ = rtlab_cli(tmp_path, "batch", "--cases", "sphere", "--machines", "standard", "--out", f)
    assert rc == 2
    assert_one_line_error(lines, "--out", "is a file")


def test_batch_spacing_too_fine_refused_before_dask(tmp_path):
    rc, lines, peak, _ = rtlab_cli(tmp_path, "batch", "--cases", "tg119_prostate", "--machines", "standard",
                                   "--spacing", "0.1", "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line_error(lines, "--spacing 0.1", "volume limit", "RTLAB_MAX_VOXELS")
    assert peak < 1024
    assert not (tmp_path / "o").exists()


def test_dicom_rows_columns_65535_refused_from_header(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from rtlab.io import load_dicom, save_dicom

    case = _small_case()
    d = save_dicom(case, tmp_path / "dcm")
    for f in sorted(d.glob("CT*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Rows = ds.Columns = 65535  # pixel data stays small: only the header lies
        ds.save_as(f)
    with pytest.raises(ValueError, match="65535 x 65535 pixels.*volume limit"):
        load_dicom(d)
    rc, lines, peak, _ = rtlab_cli(tmp_path, "plan", "--dicom", d, "--rx", "60")
    assert rc == 2
    assert_one_line_error(lines, "65535 x 65535", "RTLAB_MAX_VOXELS")
    assert peak < 1024


def test_main_maps_unexpected_errors_to_one_line(capsys, monkeypatch):
    def boom(args):
        raise MemoryError("Unable to allocate 7.28 TiB")

    rc = cli._run("phantoms", lambda: boom(None))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "out of memory" in err[0] and "7.28 TiB" in err[0]
    rc = cli._run("phantoms", lambda: (_ for _ in ()).throw(RecursionError("maximum recursion depth exceeded")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nests too deeply" in err[0]
    rc = cli._run("phantoms", lambda: (_ for _ in ()).throw(ZeroDivisionError("x")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "internal error: ZeroDivisionError" in err[0]


# ---------------------------------------------------------------------------------------------
# 3. DICOM: a file that looks like DICOM and fails to parse is an error naming it
# ---------------------------------------------------------------------------------------------
def _small_case():
    g = Grid((6, 16, 14), (3.0, 2.0, 2.0))
    Z, Y, X = g.mesh(sparse=False)
    body = np.hypot(Y, X) < 12
    ptv = (Y ** 2 + X ** 2 < 25) & (np.abs(Z) < 5)
    ct = np.where(body, 40.0, -1000.0)
    ss = StructureSet(g, [Structure("BODY", body, g, "body"), Structure("PTV", ptv, g, "target", prescription=60.0)])
    return Case("small", g, ct, ss)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_dicom_corrupt_ct_slice_is_named(tmp_path, which):
    pytest.importorskip("pydicom")
    from rtlab.io import load_dicom, save_dicom

    d = save_dicom(_small_case(), tmp_path / "dcm")
    (d / "README.txt").write_text("not DICOM, skipped")
    cts = sorted(d.glob("CT*.dcm"))
    bad = {"first": cts[0], "middle": cts[len(cts) // 2], "last": cts[-1]}[which]
    raw = bad.read_bytes()
    bad.write_bytes(raw[:200])  # preamble + DICM + a piece of the meta header
    with pytest.raises(ValueError, match=f"{bad.name}: cannot be read as DICOM"):
        load_dicom(d)
    rc, lines, _, _ = rtlab_cli(tmp_path, "plan", "--dicom", d, "--rx", "60")
    assert rc == 2
    msg = assert_one_line_error(lines, bad.name, "cannot be read as DICOM")
    assert "spacing" not in msg


def test_dicom_corrupt_rtstruct_gives_the_true_reason(tmp_path):
    pytest.importorskip("pydicom")
    from rtlab.io import load_dicom, save_dicom

    d = save_dicom(_small_case(), tmp_path / "dcm")
    rs = d / "RS.dcm"
    raw = rs.read_bytes()
    rs.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="RS.dcm: cannot be read as DICOM") as e:
        load_dicom(d)
    assert "no RTSTRUCT" not in str(e.value)
    # a file without the DICM prefix but named .dcm is also claimed as DICOM
    rs.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="RS.dcm: cannot be read as DICOM"):
        load_dicom(d)


# ---------------------------------------------------------------------------------------------
# 5. every argument is checked before any work starts
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Make loading a case or planning fail loudly: a test passing with it proves nothing started."""

    def started(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(cli, "load_case", started)
    monkeypatch.setattr(cli, "plan_case", started)
    monkeypatch.setattr(cli, "run_batch_cli", started)
    import rtlab.batch.master as master

    monkeypatch.setattr(master, "make_client", started)
    monkeypatch.setattr(master, "run_batch", started)


@pytest.mark.parametrize("argv, needle", [
    (["plan", "--phantom", "sphere", "--rx", "-5"], "rx"),
    (["plan", "--phantom", "sphere", "--sequence", "sliding", "--machine", "no_such_mlc"], "--machine"),
    (["plan", "--phantom", "sphere", "--out", "plain_file/out.npz"], "is not a folder"),
    (["plan", "--phantom", "sphere", "--out", "dose.txt"], ".npz"),
    (["plan", "--phantom", "sphere", "--angles", "0,nan,90"], "--angles must be finite"),
    (["plan", "--phantom", "sphere", "--spacing", "1e-300"], "--spacing"),
    (["plan", "--phantom", "no_such_phantom"], "unknown phantom"),
    (["dose", "--phantom", "sphere", "--angles", "0,inf"], "--angles must be finite"),
    (["score", "--phantom", "sphere", "--dose", "missing.npz"], "--dose"),
    (["score", "--phantom", "sphere", "--dose", "missing.npz", "--rx", "0"], "--rx"),
    (["gk", "--phantom", "head", "--spacing", "0"], "--spacing"),
])
def test_arguments_checked_before_work(capsys, no_work, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain_file").write_text("a file where a folder is needed")
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("argv, needle", [
    (["--angles", "0,nan"], "--angles must be finite"),
    (["--spacing", "nan"], "--spacing"),
    (["--workers", "100000"], "per CPU core"),
    (["--fanout", "0"], "--fanout"),
    (["--machines", "no_such_machine"], "unknown machine"),
])
def test_batch_arguments_checked_before_dask(capsys, tmp_path, monkeypatch, argv, needle):
    import rtlab.batch.master as master

    def started(*a, **k):
        raise AssertionError("dask started before the arguments were checked")

    monkeypatch.setattr(master, "make_client", started)
    monkeypatch.setattr(master, "run_batch", started)
    monkeypatch.chdir(tmp_path)
    base = {"--cases": ["sphere"], "--machines": ["standard"], "--out": [str(tmp_path / "o")]}
    for k, v in zip(argv[::2], argv[1::2]):
        base[k] = [v]
    rc = cli.main(["batch"] + [x for k, v in base.items() for x in (k, *v)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


# ---------------------------------------------------------------------------------------------
# 6. plan --rx without --json: the score table uses --rx
# ---------------------------------------------------------------------------------------------
def test_score_table_uses_settings_rx():
    from rtlab.phantoms import get_phantom
    from rtlab.planning import PlanSettings, plan_case

    case = get_phantom("sphere", spacing=8.0)
    for s in case.structures.targets:
        s.prescription = None
    case.prescription = None
    res = plan_case(case, [0.0, 120.0, 240.0], settings=PlanSettings(rx=50.0, max_iter=3, bixel_mm=10.0), progress=False)
    table = res.score_table()  # on main: "no prescription known for the target: pass rx="
    target = case.structures.targets[0].name
    assert table.attrs["rx"] == {target: 50.0}
    cov = table[(table["structure"] == target) & (table["metric"].str.contains("overage"))]
    assert len(cov) == 1 and 0.0 <= float(cov["value"].iloc[0]) <= 100.0


# ---------------------------------------------------------------------------------------------
# 7. / 8. the dask dashboard listens on 127.0.0.1; workers are capped
# ---------------------------------------------------------------------------------------------
def test_workers_capped_at_four_per_core():
    from rtlab.batch.master import check_workers

    n = V.max_workers()
    assert n == 4 * V.cpu_count()
    assert check_workers(n) == n
    with pytest.raises(ValueError, match=rf"--workers {n + 1} is more than 4 worker processes per CPU core"):
        check_workers(n + 1)
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        check_workers(0)


def test_dashboard_binds_to_localhost_by_default():
    pytest.importorskip("distributed")
    import logging

    from rtlab.batch.master import DEFAULT_DASHBOARD, make_client

    assert DEFAULT_DASHBOARD.startswith("127.0.0.1:")
    client, cluster = make_client(n_workers=1, silence_logs=logging.ERROR)
    try:
        hosts = set()
        for srv in [cluster.scheduler.http_server]:
            for sock in getattr(srv, "_sockets", {}).values():
                hosts.add(sock.getsockname()[0])
        assert hosts == {"127.0.0.1"}, hosts
        assert cluster.scheduler.address.startswith("tcp://127.0.0.1:")
    finally:
        client.close()
        cluster.close()


def test_batch_cli_documents_dashboard_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["batch", "--help"])
    out = capsys.readouterr().out
    assert "--dashboard-address" in out and "127.0.0.1:0" in out


# ---------------------------------------------------------------------------------------------
# 9. rtlab lab passes options through untouched, like scripts/lab.sh
# ---------------------------------------------------------------------------------------------
def test_lab_passes_options_in_order(monkeypatch, tmp_path):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    cmd = cli.lab_command(["--no-browser", "--port", "8899", "--ServerApp.token="])
    assert cmd[1:] == ["lab", f"--notebook-dir={REPO / 'notebooks'}", "--no-browser", "--port", "8899",
                       "--ServerApp.token="]
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    cmd = cli.lab_command(["--notebooks", str(tmp_path), "--port=8899"])
    assert cmd[1:] == ["lab", f"--notebook-dir={tmp_path}", "--allow-root", "--port=8899"]
    assert cli.lab_command(["--allow-root"]).count("--allow-root") == 1
    with pytest.raises(cli.CLIError, match="does not exist"):
        cli.lab_command(["--notebooks", str(tmp_path / "missing")])
    # scripts/lab.sh: --notebook-dir, then --allow-root as root, then the user's arguments
    sh = (REPO / "scripts" / "lab.sh").read_text()
    assert 'lab --notebook-dir="$ROOT/notebooks" "${extra[@]}" "$@"' in sh


def test_lab_main_runs_jupyter_with_options_untouched(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr(cli, "jupyter_executable", lambda: "/x/jupyter")
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert cli.main(["lab", "--no-browser", "--port", "8899"]) == 0
    assert calls == [["/x/jupyter", "lab", f"--notebook-dir={REPO / 'notebooks'}", "--allow-root", "--no-browser",
                      "--port", "8899"]]
    monkeypatch.setattr(cli, "jupyter_executable", lambda: None)
    assert cli.main(["lab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "jupyter is not installed" in err[0]


# ---------------------------------------------------------------------------------------------
# 10. one validation layer for doses, CT numbers, spacing; GK plausibility
# ---------------------------------------------------------------------------------------------
def test_dose_validation_same_in_api_and_cli(tmp_path):
    from rtlab.evaluate.compare import score
    from rtlab.phantoms import get_phantom

    case = get_phantom("sphere", spacing=8.0)
    shape = case.grid.shape
    bad = {
        "huge": (np.full(shape, 1e300), "more than rtlab's plausible maximum of 1000 Gy"),
        "bool": (np.ones(shape, bool), "boolean array"),
        "neg": (np.full(shape, -1.0), "negative values"),
        "nan": (np.full(shape, np.nan), "NaN"),
    }
    for key, (dose, needle) in bad.items():
        with pytest.raises((ValueError, TypeError), match=needle):
            score({"p": dose}, case)
        f = tmp_path / f"{key}.npz"
        np.savez(f, dose=dose)
        rc, lines, _, _ = rtlab_cli(tmp_path, "score", "--phantom", "sphere", "--spacing", "8", "--dose", f)
        assert rc == 2, (key, lines)
        assert_one_line_error(lines, needle)


def test_ct_density_and_spacing_limits():
    g = Grid((2, 3, 4), 2.0)
    ss = StructureSet(g)
    with pytest.raises(ValueError, match="outside the plausible CT range"):
        Case("c", g, np.full(g.shape, 1e9), ss)
    with pytest.raises(ValueError, match="relative electron density"):
        Case("c", g, np.zeros(g.shape), ss, density=np.full(g.shape, 100.0))
    with pytest.raises(ValueError, match="spacing = 1e-300 mm is outside rtlab's range"):
        Grid((2, 2, 2), 1e-300)
    with pytest.raises(ValueError, match="positive and finite"):
        Grid((2, 2, 2), (1.0, np.nan, 1.0))
    with pytest.raises(ValueError, match="volume limit"):
        Grid((1000, 1000, 1000), 1.0)
    # one voxel volume is never 0.0 for an accepted spacing
    assert Grid((1, 1, 1), V.MIN_SPACING_MM).voxel_volume_cc > 0


def test_gk_plausibility_warnings():
    # the tg119_prostate run: a 5 % prescription isodose, 3324 minutes beam-on
    w = V.gk_plausibility(5.0, 3324.0, 60.0)
    assert len(w) == 2
    assert "5.0 % isodose" in w[0] and "below the 25 %" in w[0]
    assert "3324 minutes" in w[1] and "more than 180 minutes" in w[1]
    assert V.gk_plausibility(50.0, 40.0, 2.0) == []


def test_gk_on_a_large_target_warns(tmp_path):
    """The issue's case: ``rtlab gk --phantom tg119_prostate`` (a 79 cc target) now says it is implausible."""
    rc, lines, _, _ = rtlab_cli(tmp_path, "gk", "--phantom", "tg119_prostate")
    assert rc == 0
    warn = [ln for ln in lines if ln.startswith("rtlab gk: warning: Gamma-Knife plan:")]
    assert len(warn) == 2, lines
    assert "isodose" in warn[0] and "below the 25 %" in warn[0]
    assert "minutes of beam-on time" in warn[1] and "more than 180 minutes" in warn[1]


def test_cli_prints_warnings_one_line(capsys):
    def fn():
        warnings.warn("Gamma-Knife plan: the prescription lies on the 5.0 % isodose", V.PlausibilityWarning)
        return 0

    assert cli._run("gk", fn) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rtlab gk: warning: Gamma-Knife plan: the prescription lies on the 5.0 % isodose"]


# ---------------------------------------------------------------------------------------------
# 11. output files keep an existing file's mode; new files get the umask default
# ---------------------------------------------------------------------------------------------
def test_atomic_path_modes(tmp_path):
    old = os.umask(0o022)
    try:
        new = atomic_write_text(tmp_path / "new.txt", "a")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        os.umask(0o077)
        other = atomic_write_text(tmp_path / "private.txt", "a")
        assert stat.S_IMODE(other.stat().st_mode) == 0o600
        # an existing 0644 file stays 0644 whatever the umask; an existing 0640 stays 0640
        ex = tmp_path / "shared.txt"
        ex.write_text("old")
        os.chmod(ex, 0o644)
        atomic_write_text(ex, "new")
        assert stat.S_IMODE(ex.stat().st_mode) == 0o644 and ex.read_text() == "new"
        os.chmod(ex, 0o640)
        with atomic_path(ex) as tmp:
            np.save(tmp, np.zeros(3))
        assert stat.S_IMODE(ex.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_cli_output_keeps_mode(tmp_path):
    from rtlab.io import save_npz
    from rtlab.phantoms import get_phantom

    case = get_phantom("sphere", spacing=8.0)
    out = tmp_path / "dose.npz"
    out.write_bytes(b"")
    os.chmod(out, 0o664)
    save_npz(out, dose=np.zeros(case.grid.shape), grid=case.grid)
    assert stat.S_IMODE(out.stat().st_mode) == 0o664
