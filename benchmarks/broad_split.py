"""The split influence engine against the former 40 mm matrix and a full-kernel reference.

Cases as ``benchmarks/dose_engine.py`` (TG-119 C-shape easy, CT 2.5 x 3 x 3 mm, 5 mm bixels):
``beams5`` (0:72:288 deg, 5 mm dose grid) and ``beams9`` (0:40:320 deg, 3 mm dose grid). For each,
in one process:

* ``old40``: every Gaussian of :func:`rtlab.dose.generic_6mv` in one sparse matrix with the former
  default 40 mm cut-off (``broad_sigma_mm=None, cutoff_mm=40``);
* ``split``: the default engine (narrow Gaussians in the matrix with the automatic cut-off, broad
  ones through the node path, :mod:`rtlab.dose.broad`);

build time (median of ``--repeats`` after a warm-up build), non-zeros, and the products the
planner uses (:meth:`rtlab.dose.InfluenceMatrix.operator`, numba: ``A x`` and ``A^T g``, medians
of 15); the ratios split / old40; and the accuracy of both against a **full-kernel reference**
(every Gaussian in one matrix, cut-off ``--ref-cutoff`` mm, default 210 > 4 sigma of the widest
51.5 mm Gaussian): the largest ``|dose - reference|`` over the rows above 10 % of the reference
maximum, in % of that maximum, for unit and for random (uniform 0-2, seed 0) weights. The issue's
target: split within 0.5 %, build and products no slower than old40. Prints exactly one JSON line
(with the load average before and after: the machine may be shared).

Usage::

    python benchmarks/broad_split.py [--cases beams5 beams9] [--repeats 3] [--ref-cutoff 210]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtlab.dose import build_influence  # noqa: E402
from rtlab.phantoms import get_phantom  # noqa: E402

from _common import median_time  # noqa: E402  (benchmarks/_common.py)

CASES = {"beams5": (list(range(0, 360, 72)), 5.0), "beams9": (list(range(0, 360, 40)), 3.0)}
ENGINES = {"old40": dict(cutoff_mm=40.0, broad_sigma_mm=None), "split": {}}


def _errors(im, ref, x):
    d_ref = ref.matvec(x)
    m = float(d_ref.max())
    sel = d_ref > 0.1 * m
    return round(float(np.abs(im.matvec(x) - d_ref)[sel].max() / m * 100), 3)


def bench_case(case, name, repeats, ref_cutoff):
    angles, grid = CASES[name]
    kw = dict(dose_grid_mm=grid, progress=False, gpu=False)
    out, ims = {}, {}
    for eng, ekw in ENGINES.items():
        im = build_influence(case, angles, **kw, **ekw)  # warm-up (compilation, first allocation)
        ts = []
        for _ in range(repeats):
            del im
            t0 = time.perf_counter()
            im = build_influence(case, angles, **kw, **ekw)
            ts.append(time.perf_counter() - t0)
        op = im.operator("numba").prepare_transpose()
        x, g = np.ones(im.shape[1]), np.ones(im.shape[0])
        out[eng] = {"build_s": round(float(np.median(ts)), 3), "nnz": int(im.nnz), "matrix_nnz": int(im.matrix.nnz),
                    "cutoff_mm": im.cutoff_mm, "rows": int(im.shape[0]), "beamlets": int(im.shape[1]),
                    "matvec_ms": round(median_time(lambda: op.matvec(x), 15) * 1e3, 2),
                    "rmatvec_ms": round(median_time(lambda: op.rmatvec(g), 15) * 1e3, 2)}
        ims[eng] = im
    for k in ("build_s", "matvec_ms", "rmatvec_ms", "nnz"):
        out[f"ratio_{k}"] = round(out["split"][k] / out["old40"][k], 3)
    ref = build_influence(case, angles, **kw, cutoff_mm=float(ref_cutoff), broad_sigma_mm=None)
    out["reference"] = {"cutoff_mm": float(ref_cutoff), "nnz": int(ref.nnz)}
    rng = np.random.default_rng(0)
    xs = {"unit": np.ones(ref.shape[1]), "random": rng.uniform(0, 2, ref.shape[1])}
    for eng, im in ims.items():
        for lab, x in xs.items():
            out[eng][f"max_err_{lab}_pct_of_max_above_10pct"] = _errors(im, ref, x)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=3, help="timed builds per engine (median)")
    ap.add_argument("--ref-cutoff", type=float, default=210.0, help="cut-off of the full-kernel reference (mm)")
    args = ap.parse_args(argv)
    case = get_phantom("tg119_cshape_easy")
    res = {"benchmark": "broad_split", "load_before": [round(v, 2) for v in os.getloadavg()]}
    for name in args.cases:
        res[name] = bench_case(case, name, args.repeats, args.ref_cutoff)
    res["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
