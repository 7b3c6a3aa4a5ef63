"""Benchmark of interactive dose shaping (paper 004) on the horseshoe phantom; prints ONE JSON line.

The paper's experiment at its resolution (1.952 x 1.952 x 2 mm, 9 beams 0:40:320): open
fields (median target dose 100 %), one OAR rim voxel lowered to 55 %, 25 recovery steps.
Repeated (undo between repeats); medians reported. Run: ``python benchmarks/ids.py [--spacing 4]``.

Keys: ``step_ms`` (median of one modification/recovery step: patch, convolution, tracked-dose
update, selection), ``modification_ms``, ``request_ms`` (modification + 25 recovery steps),
``cube_ms`` (the full dose cube from the node grids), ``request_with_cube_ms``,
``precompute_ms`` (TPI maps + distance grid), ``tpi_ms``, ``distance_ms``, ``setup_s``
(ray tracing and node matrix, once per case), ``target_ge95_fraction`` (exact dose after
recovery), its value ``_before`` and ``_modified``, ``rim_dose_pct``, ``target_min_pct``,
``exact_rel_diff`` (incremental vs full recompute), ``lazy_far_error_pct``. Wall times are
medians; ``cpu_time_ms`` gives the process CPU time of the same operations (robust when other
jobs share the cores; ``load_avg_1min`` says how busy the machine was).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacing", type=float, default=None, help="isotropic voxel size in mm (default: the paper's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--kernel-sigma", default="3.0", help="patch kernel width in mm, or 'w2'")
    ap.add_argument("--lazy-sigma", type=float, default=20.0, help="lazy far-scatter width (mm); <=0: none")
    ap.add_argument("--step-rule", default="voxel", choices=["voxel", "footprint"],
                    help="recovery step: 'voxel' (the paper's Algorithm 1 scale, as in its table 1; default) or "
                         "'footprint' (the session's default since issue #21: two extra patch updates per step)")
    a = ap.parse_args(argv)

    from rtlab.methods.ids import reproduce_paper, tpi_maps
    from rtlab.phantoms import get_phantom

    case = get_phantom("horseshoe", spacing=a.spacing)
    ks = a.kernel_sigma if a.kernel_sigma == "w2" else float(a.kernel_sigma)
    kw = dict(kernel_sigma_mm=ks, lazy_sigma_mm=a.lazy_sigma if a.lazy_sigma > 0 else None, step_rule=a.step_rule,
              hold_request=a.step_rule == "footprint")
    # warm-up (numba compile / cache load) on a coarse copy
    reproduce_paper(get_phantom("horseshoe", spacing=6.0), n_steps=2, session_kwargs=kw)

    res = reproduce_paper(case, n_steps=a.steps, session_kwargs=kw)
    s = res["session"]
    vox = res["voxel"]
    ref = s.reference_gy
    d_inc = res["doses"]["recovered"]
    d_full = s.exact_dose()
    exact = float(np.abs(d_inc - d_full).max() / d_full.max())

    steps, mods, reqs, cubes, tpis, dists, lazy = [], [], [], [], [], [], []
    csteps, creqs, ccubes, ctpis = [], [], [], []
    for _ in range(a.repeats):
        s.undo()
        s.undo()
        s.timings["step_ms"].clear()
        s.timings["step_cpu_ms"].clear()
        t0, c0 = time.perf_counter(), time.process_time()
        s.request_voxel(vox, 0.55 * ref, recover=0)
        t1 = time.perf_counter()
        s.recover(a.steps)
        t2, c2 = time.perf_counter(), time.process_time()
        _ = s.dose
        t3, c3 = time.perf_counter(), time.process_time()
        creqs.append((c2 - c0) * 1e3)
        ccubes.append((c3 - c2) * 1e3)
        csteps.extend(s.timings["step_cpu_ms"])
        mods.append((t1 - t0) * 1e3)
        reqs.append((t2 - t0) * 1e3)
        cubes.append((t3 - t2) * 1e3)
        steps.extend(s.timings["step_ms"])
        dists.append(s.distance_ms)
        lazy.append(s.last_lazy_error_gy)
        t4 = time.perf_counter()
        c4 = time.process_time()
        tpi_maps(s)
        tpis.append((time.perf_counter() - t4) * 1e3)
        ctpis.append((time.process_time() - c4) * 1e3)
    med = lambda x: float(np.median(x))  # noqa: E731
    out = {
        "benchmark": "ids_horseshoe",
        "spacing_mm": list(case.grid.spacing),
        "grid": list(case.grid.shape),
        "tracked_voxels": int(s._trk.size),
        "body_voxels": int(s.vox.size),
        "beams": s.n_beams,
        "recovery_steps": a.steps,
        "kernel_sigma_mm": s.kernel_sigma_mm,
        "lazy_sigma_mm": a.lazy_sigma if a.lazy_sigma > 0 else None,
        "step_ms": med(steps),
        "step_ms_p90": float(np.percentile(steps, 90)),
        "modification_ms": med(mods),
        "request_ms": med(reqs),
        "cube_ms": med(cubes),
        "request_with_cube_ms": med(np.add(reqs, cubes)),
        "tpi_ms": med(tpis),
        "distance_ms": med(dists),
        "precompute_ms": med(tpis) + med(dists),
        "setup_s": s.setup_s,
        "cpu_time_ms": {"step": med(csteps), "request": med(creqs), "cube_2_threads": med(ccubes), "tpi": med(ctpis)},
        "target_ge95_fraction": float(np.mean(d_inc[s.target_mask] >= 0.95 * ref - 1e-9)),
        "target_ge95_fraction_before": float(np.mean(res["doses"]["before"][s.target_mask] >= 0.95 * ref - 1e-9)),
        "target_ge95_fraction_modified": float(np.mean(res["doses"]["modified"][s.target_mask] >= 0.95 * ref - 1e-9)),
        "rim_dose_pct": res["rim_dose_pct"]["recovered"],
        "rim_dose_pct_modified": res["rim_dose_pct"]["modified"],
        "target_min_pct": res["target_min_pct"],
        "exact_rel_diff": exact,
        "lazy_far_error_pct": 100 * max(lazy) / ref,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "repeats": a.repeats,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
