"""Dose-engine benchmark: influence build, mat-vec bandwidth, patch updates, and a peer (pyRadPlan).

Cases (TG-119 C-shape, ``get_phantom('tg119_cshape_easy')``, CT 2.5 x 3 x 3 mm, 5 mm bixels):

* ``beams5``: 5 beams at 0:72:288 deg on a 5 mm dose grid;
* ``beams9``: 9 beams at 0:40:320 deg on a 3 mm dose grid.

For each: influence-matrix build time (median of ``--repeats`` builds after a warm-up build;
``compile_s`` = first build minus that median: numba compilation or cache loading), the
engine's dose product ``A_n x + P K x`` as planning runs it (``dose_matvec_ms``,
:meth:`rtlab.dose.InfluenceMatrix.operator`, numba; ``nnz`` counts both sparse parts), the sparse
matrix's mat-vec ``A_n @ x`` alone with the numba :class:`rtlab.dose.sparse.DoseOperator` (median) and its effective
bandwidth (bytes of data + indices + indptr + x + y per second) beside a plain numpy copy and
a 2-thread numba copy measured in the same run; for ``beams9`` the patch update (5 x 5 bixels on
each of the 9 beams in one :meth:`rtlab.dose.FluenceDose.patch_update_many` call,
:meth:`~rtlab.dose.FluenceDose.time_patch_updates`, numba's thread count, wall and process CPU
time; ``patch_update_variants`` repeats it on one thread and on a 5 mm dose grid). The peer is pyRadPlan
(matRad's Python port; optional) timing its photon SVD pencil-beam ``calc_dose_influence`` on its
own TG-119 phantom with the same beams, bixels and dose grid, in a subprocess; when it is not
installed or fails the JSON says why. Prints exactly one JSON line.

Usage::

    python benchmarks/dose_engine.py [--repeats 3] [--no-peer] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402

from rtlab.dose import FluenceDose, build_influence  # noqa: E402
from rtlab.dose.sparse import DoseOperator  # noqa: E402
from rtlab.phantoms import get_phantom  # noqa: E402

from _common import median_time, parallel_copy  # noqa: E402  (benchmarks/_common.py)

CASES = {"beams5": (list(range(0, 360, 72)), 5.0), "beams9": (list(range(0, 360, 40)), 3.0)}
TARGETS = {"beams5_build_s": 1.0, "beams9_build_s": 5.0, "matvec_frac_of_numpy_copy": 0.5, "patch_update_ms": 5.0}


def copy_bandwidth(nbytes, repeats=9):
    """(numpy copy GB/s, numba 2-thread copy GB/s) for float32 arrays of ``nbytes``; read + write."""
    src = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t_np = median_time(lambda: np.copyto(dst, src), repeats)
    t_nb = median_time(lambda: parallel_copy(src, dst), repeats)
    return 2 * src.nbytes / t_np / 1e9, 2 * src.nbytes / t_nb / 1e9


PEER_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, time
    import numpy as np
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from pyRadPlan import PhotonPlan, generate_stf, calc_dose_influence, load_tg119
    n, grid = int(sys.argv[1]), float(sys.argv[2])
    ct, cst = load_tg119()
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": np.arange(n) * (360.0 / n), "couch_angles": np.zeros(n), "bixel_width": 5.0}
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": grid, "y": grid, "z": grid}}}
    stf = generate_stf(ct, cst, pln)
    t0 = time.perf_counter()
    dij = calc_dose_influence(ct, cst, stf, pln)
    t = time.perf_counter() - t0
    M = dij.physical_dose.flat[0]
    print(json.dumps({"build_s": round(t, 3), "shape": list(M.shape), "nnz": int(M.nnz)}))
    """
)


def run_peer(n_beams, dose_grid_mm, timeout):
    """pyRadPlan's influence build in a subprocess; dict with ``build_s`` or ``skipped``."""
    try:
        import importlib.util

        if importlib.util.find_spec("pyRadPlan") is None:
            return {"skipped": "pyRadPlan is not installed (optional: pip install pyradplan 'pydantic<2.14')"}
    except Exception as exc:  # pragma: no cover
        return {"skipped": f"pyRadPlan import check failed: {exc}"}
    env = dict(os.environ, TQDM_DISABLE="1")
    try:
        out = subprocess.run([sys.executable, "-c", PEER_SCRIPT, str(n_beams), str(dose_grid_mm)], capture_output=True,
                             text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"pyRadPlan did not finish within {timeout} s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"pyRadPlan failed (rc {out.returncode}): {tail[0][:300]}"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception:
        return {"skipped": f"pyRadPlan printed no result: {out.stdout[-200:]!r}"}


def bench_case(case, name, repeats, gpu):
    angles, dose_grid_mm = CASES[name]
    kw = dict(dose_grid_mm=dose_grid_mm, progress=False, gpu=gpu)
    t0 = time.perf_counter()
    im = build_influence(case, angles, **kw)
    first = time.perf_counter() - t0
    builds, parts, cpus = [], [], []
    for _ in range(repeats):
        del im
        t0, c0 = time.perf_counter(), time.process_time()
        im = build_influence(case, angles, **kw)
        builds.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        parts.append(im.timings)
    med = float(np.median(builds))
    k = int(np.argsort(builds)[len(builds) // 2])
    # the engine's dose A_n x + P K x as planning multiplies it (InfluenceOperator, numba) ...
    eng = im.operator(backend="numba")
    xe = np.ones(im.shape[1])
    t_dose = median_time(lambda: eng.matvec(xe), 15, warmup=2)
    # ... and its sparse matrix alone (the bandwidth figure: bytes of the CSR product per second)
    A = im.matrix
    op = DoseOperator(A, backend="numba")
    x = np.ones(A.shape[1], np.float32)
    y = np.empty(A.shape[0], np.float32)
    t_mv = median_time(lambda: op.matvec(x, out=y), 15, warmup=2)
    mv_bytes = A.data.nbytes + A.indices.nbytes + A.indptr.nbytes + 4 * A.shape[1] + 4 * A.shape[0]
    np_bw, nb_bw = copy_bandwidth(min(mv_bytes, 400_000_000) // 2)
    mv_bw = mv_bytes / t_mv / 1e9
    res = {
        "beams": len(angles), "dose_grid_mm": dose_grid_mm, "rows": int(A.shape[0]), "beamlets": int(A.shape[1]),
        "nnz": int(im.nnz), "nnz_narrow": int(A.nnz), "nnz_broad": int(im.broad.nnz) if im.broad is not None else 0,
        "cutoff_mm": float(im.cutoff_mm), "build_backend": im.backend,
        "build_s": round(med, 3), "build_all_s": [round(b, 3) for b in builds],
        "compile_s": round(max(first - med, 0.0), 3),
        "build_cpu_s": round(float(np.median(cpus)), 3),
        "build_cpu_note": "process CPU seconds summed over threads (robust to other load; quiet 2-core wall ~ cpu/2)",
        "parts_s": {kk: round(v, 3) for kk, v in parts[k].items()},
        "dose_matvec_ms": round(t_dose * 1e3, 3),
        "matvec_ms": round(t_mv * 1e3, 3), "matvec_gbs": round(mv_bw, 2),
        "numpy_copy_gbs": round(np_bw, 2), "numba_copy_gbs": round(nb_bw, 2),
        "matvec_frac_of_numpy_copy": round(mv_bw / np_bw, 3), "matvec_frac_of_numba_copy": round(mv_bw / nb_bw, 3),
    }
    return res, im


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="build on the CUDA device (gpu=True)")
    ap.add_argument("--peer-timeout", type=float, default=240.0)
    args = ap.parse_args(argv)
    case = get_phantom("tg119_cshape_easy")
    out = {"benchmark": "dose_engine", "case": "tg119_cshape_easy", "ct_spacing_mm": list(case.grid.spacing),
           "machine": {"cpus": os.cpu_count(), "numba_threads": numba.get_num_threads(),
                       "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                       "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
           "targets": TARGETS}
    gpu = True if args.gpu else False
    r5, im5 = bench_case(case, "beams5", args.repeats, gpu)
    del im5
    r9, im9 = bench_case(case, "beams9", args.repeats, gpu)
    fd = FluenceDose(case, im9.beams, im9.machine, dose_grid_mm=CASES["beams9"][1])
    fd.set_bixel_weights(np.ones(im9.shape[1]))
    fd.time_patch_updates(5, repeats=1)  # warm-up (numba cache load)
    walls, c0 = [], time.process_time()
    for _ in range(5):
        walls.append(fd.time_patch_updates(5, repeats=7))
    r9["patch_update_ms"] = round(float(np.median(walls)), 3)
    r9["patch_update_all_ms"] = [round(w, 2) for w in walls]
    r9["patch_update_cpu_ms"] = round((time.process_time() - c0) / (5 * 8) * 1e3, 3)
    r9["patch_update_threads"] = fd.threads
    r9["patch_update_voxels"] = int(len(fd.voxel_index))
    r9["patch_update_note"] = (f"5 x 5 bixels on each of the 9 beams in one patch_update_many call, {fd.threads} "
                               "thread(s); median of 5 medians of 7; cpu = process CPU time per 9-beam update")
    # the same 9 beams, other dose grids / threads (what the target depends on)
    variants = {}
    for label, dose_grid_mm, threads in (("3mm_1thread", 3.0, 1), ("5mm_1thread", 5.0, 1),
                                         (f"5mm_{fd.threads}threads", 5.0, fd.threads)):
        fdv = FluenceDose(case, im9.beams, im9.machine, dose_grid_mm=dose_grid_mm, threads=threads)
        fdv.set_bixel_weights(np.ones(im9.shape[1]))
        fdv.time_patch_updates(5, repeats=1)
        variants[label] = {"voxels": int(len(fdv.voxel_index)),
                           "patch_update_ms": round(float(np.median([fdv.time_patch_updates(5, repeats=7)
                                                                     for _ in range(3)])), 3)}
        del fdv
    r9["patch_update_variants"] = variants
    del im9, fd
    out["beams5"], out["beams9"] = r5, r9
    out["met"] = {
        "beams5_build": r5["build_s"] <= TARGETS["beams5_build_s"],
        "beams9_build": r9["build_s"] <= TARGETS["beams9_build_s"],
        "matvec_50pct_copy": min(r5["matvec_frac_of_numpy_copy"], r9["matvec_frac_of_numpy_copy"]) >= 0.5,
        "patch_update": r9["patch_update_ms"] <= TARGETS["patch_update_ms"],
    }
    if args.no_peer:
        out["peer"] = {"skipped": "--no-peer given"}
    else:
        peer = {"name": "pyRadPlan (matRad Python port), photon SVD pencil beam, its TG-119 phantom"}
        p5 = run_peer(5, 5.0, args.peer_timeout)
        peer["beams5"] = p5
        if "build_s" in p5:
            peer["beams5"]["ratio_peer_over_ours"] = round(p5["build_s"] / r5["build_s"], 1)
            est = p5["build_s"] * 9 / 5 * (5.0 / 3.0) ** 3
            if est <= 120.0:
                p9 = run_peer(9, 3.0, args.peer_timeout)
                if "build_s" in p9:
                    p9["ratio_peer_over_ours"] = round(p9["build_s"] / r9["build_s"], 1)
                peer["beams9"] = p9
            else:
                peer["beams9"] = {"skipped": f"estimated {est:.0f} s from the 5-beam run (> 2 min budget)"}
        else:
            peer["beams9"] = {"skipped": "5-beam peer run did not succeed"}
        try:
            from importlib.metadata import version

            peer["version"] = version("pyradplan")
        except Exception:
            pass
        out["peer"] = peer
    out["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
