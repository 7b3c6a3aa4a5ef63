"""Peer side of ``conformity.py --matrad``: pyRadPlan's whole photon IMRT pipeline on TG119.mat.

Runs in pyRadPlan's own Python environment (it imports pyRadPlan and numpy only, never rtlab),
as a fresh process started by ``benchmarks/conformity.py``, which times it from the outside
(interpreter start-up included). Called as::

    <peer-python> benchmarks/_matrad_peer_plan.py OUT.npz --phantom TG119.mat --angles 0,72,144,216,288

The pipeline is pyRadPlan's documented top-level workflow with its defaults except where the
comparison needs otherwise: ``PhotonPlan(machine="Generic")`` (``photons_Generic.mat``), 5 mm
bixels, the given gantry angles (couch 0), the default dose engine and **default dose grid**
(5 mm), the objectives stored in the file's ``cst``, and SciPy's L-BFGS-B (pyRadPlan's default
solver, IPOPT, is not installed in that environment; L-BFGS-B is what rtlab uses too). Stages
timed inside: import, load, steering geometry, dose influence matrix, optimisation, the dose on
the CT grid, writing. ``OUT.npz`` holds that dose (Gy, pyRadPlan's (x, y, z) order transposed
to (z, y, x)), the per-stage seconds and the iteration count; one JSON line with the same
figures is printed.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("TQDM_DISABLE", "1")
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from pyRadPlan import (  # noqa: E402
    PhotonPlan, calc_dose_influence, fluence_optimization, generate_stf, load_patient)

T_IMPORT = time.perf_counter()


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    out_path = argv[0]
    phantom = argv[argv.index("--phantom") + 1]
    angles = [float(a) for a in argv[argv.index("--angles") + 1].split(",")]
    t = {"import_s": T_IMPORT - T_START}
    t0 = time.perf_counter()
    ct, cst = load_patient(phantom)
    t["load_s"] = time.perf_counter() - t0

    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": angles, "couch_angles": [0.0] * len(angles), "bixel_width": 5.0}
    pln.prop_opt = {"solver": "scipy"}
    t0 = time.perf_counter()
    stf = generate_stf(ct, cst, pln)
    t["stf_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dij = calc_dose_influence(ct, cst, stf, pln)
    t["dij_s"] = time.perf_counter() - t0
    info = {}
    t0 = time.perf_counter()
    w = fluence_optimization(ct, cst, stf, dij, pln, opt_info=info)
    t["optimise_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = dij.compute_result_ct_grid(w)
    dose = result["physical_dose"]
    arr = sitk.GetArrayFromImage(dose) if isinstance(dose, sitk.Image) else np.asarray(dose)
    t["result_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tmp = out_path + ".part.npz"
    np.savez_compressed(tmp, dose=arr.astype(np.float32), weights=np.asarray(w, dtype=np.float64),
                        iterations=np.array(int(info.get("num_iter", -1))),
                        n_beamlets=np.array(int(np.asarray(w).size)),
                        dose_grid_dims=np.array(list(dij.dose_grid.dimensions)),
                        **{k: np.array(v) for k, v in t.items()})
    os.replace(tmp, out_path)
    t["write_s"] = time.perf_counter() - t0
    t["inside_s"] = time.perf_counter() - T_START
    print(json.dumps({**t, "iterations": int(info.get("num_iter", -1)), "n_beamlets": int(np.asarray(w).size),
                      "dose_shape_zyx": list(arr.shape)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
