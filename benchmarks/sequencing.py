"""Leaf sequencing of an optimised TG-119 C-shape plan: speed, MU, segments and dose loss.

Builds the TG-119 C-shape (easy) at coarse resolution (default 5 mm voxels), 9 equispaced beams,
optimises the beamlet weights with rtlab.optimize on the quadratic objective of
:func:`rtlab.methods.beam_angles.default_objective` (L-BFGS-B), then sequences every field:

* sequencing time per field (median over fields and ``--repeats`` runs) for the sliding window,
  the sweep and Xia-Verhey step-and-shoot;
* TNMU (MU per fraction, 25 fractions) of each against the lower bound
  ``sum_i max_j sum_k (x_ijk - x_ij(k-1))^+`` (paper 003, eq. 8);
* segment counts, sweep vs Xia-Verhey (``--levels`` intensity levels per field);
* dose loss of sequencing: Paddick CI and PTV D95, optimised vs deliverable
  (:func:`rtlab.methods.deliverable.sequence_plan`).

Prints exactly one JSON line.

Usage::

    python benchmarks/sequencing.py [--spacing 5] [--levels 10] [--repeats 3] [--machine generic_5mm_60]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtlab.dose import build_influence  # noqa: E402
from rtlab.methods import sequencing as sq  # noqa: E402
from rtlab.methods.beam_angles import default_objective, optimise_beams, planning_voxels  # noqa: E402
from rtlab.methods.deliverable import sequence_plan  # noqa: E402
from rtlab.phantoms import get_phantom  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacing", type=float, default=5.0, help="voxel size (mm)")
    ap.add_argument("--levels", type=int, default=10, help="step-and-shoot intensity levels per field")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-iter", type=int, default=60, help="L-BFGS-B iterations of the plan")
    ap.add_argument("--machine", default="generic_5mm_60", help="MLC model")
    ap.add_argument("--fractions", type=int, default=25)
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    case = get_phantom("tg119_cshape_easy", spacing=a.spacing)
    im = build_influence(case, [b.gantry for b in case.beams], voxels=planning_voxels(case, 30.0), progress=False)
    t_build = time.perf_counter() - t0
    obj = default_objective(case, im, "quadratic")
    t0 = time.perf_counter()
    x, res = optimise_beams(im, obj, max_iter=a.max_iter)
    t_opt = time.perf_counter() - t0

    out = {"benchmark": "sequencing", "phantom": case.name, "spacing_mm": a.spacing, "beams": len(im.beams),
           "machine": a.machine, "fractions": a.fractions, "levels": a.levels, "beamlets": int(im.shape[1]),
           "influence_s": round(t_build, 2), "optimise_s": round(t_opt, 2), "objective": float(f"{res.objective:.4g}")}
    variants = {"sliding": dict(method="sliding"), "sweep": dict(method="step", step_method="sweep"),
                "xia_verhey": dict(method="step", step_method="xia_verhey")}
    reps = {}
    for name, kw in variants.items():
        times = []
        r = None
        for _ in range(max(1, a.repeats)):
            r = sequence_plan(im, x, a.machine, fractions=a.fractions, n_levels=a.levels, **kw)
            times.extend(r.timings["sequence_s"])
        reps[name] = r
        lb = r.mu_lower_bound
        out[name] = {
            "field_ms_median": round(1e3 * float(np.median(times)), 3),
            "tnmu": round(r.mu_total, 2),
            "tnmu_lower_bound": round(lb, 2),
            "tnmu_over_bound": round(r.mu_total / lb, 4),
            "segments": r.n_segments,
        }
    # the continuous lower bound of the optimised (unquantised) maps, eq. 8
    from rtlab.dose import mu_per_unit_fluence
    from rtlab.methods.deliverable import beam_fluence_maps

    k = mu_per_unit_fluence(im.machine) / a.fractions
    out["tnmu_bound_optimised"] = round(sq.tnmu([m * k for m in beam_fluence_maps(im, x)]), 2)
    out["segments_sweep_vs_xia_verhey"] = [reps["sweep"].n_segments, reps["xia_verhey"].n_segments]
    for name in ("sliding", "sweep"):
        rep = reps[name].report(case).loc["PTV"]
        out[name].update({
            "ci_paddick_optimised": round(float(rep["ci_paddick_optimised"]), 4),
            "ci_paddick_deliverable": round(float(rep["ci_paddick_deliverable"]), 4),
            "d95_optimised_gy": round(float(rep["d95_optimised"]), 3),
            "d95_deliverable_gy": round(float(rep["d95_deliverable"]), 3),
        })
    out["python"] = platform.python_version()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
