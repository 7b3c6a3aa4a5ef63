"""Conformity-driven planning on the TG-119 C-shape: quality and speed (patent 000).

Plans ``tg119_cshape_easy`` at the phantom's default spacing (2.5 x 3 x 3 mm) with 5 beams
(0:72:288) and 9 beams (0:40:320), 5 mm bixels and a 5 mm dose grid (trilinear resampling to the
CT grid, where the objective and the scores are evaluated), once with the conformity recipe and
once with the conventional quadratic recipe (:mod:`rtlab.planning`). Scores are on the CT grid
and **not rescaled**; a rescaled-to-D95 = 50 Gy CI is reported in addition (``ci_rescaled``), as
matRad-derived comparisons usually do.

Acceptance (conformity recipe): Paddick CI at 50 Gy >= 0.85, PTV D95 >= 50 Gy, core D10 <= 25
Gy, and for 5 beams an optimisation time <= 5 s. ``optimize_s`` is wall time; on a shared
machine it depends on the load, so ``optimize_cpu_s`` (process CPU time, all threads) and the
1-minute load average are printed too.

Prints exactly one JSON line.

**matRad mode** (``--matrad FILE``, issue #18 item 3): end-to-end speed against pyRadPlan on a
matRad phantom file (``TG119.mat``), for each beam count (5 beams 0:72:288, 9 beams 0:40:320),
in the same run. Each repeat runs, as fresh processes timed from the outside (interpreter
start-up, imports, numba's cached kernels, load, build, optimisation with the goal rounds,
scoring, writing), the rtlab command ::

    python -m rtlab.cli plan --matrad FILE --angles ... --objective conformity --out P.npz --json

(its defaults: 5 mm bixels, matRad's 5 mm default dose grid) and the peer script
``benchmarks/_matrad_peer_plan.py`` in ``--peer-python`` (pyRadPlan's whole pipeline: 5 mm
bixels, its default 5 mm dose grid, L-BFGS-B on the file's cst objectives), alternating which
goes first. One untimed warm-up of each comes first (numba's cache, pyc files, the page
cache). Both sides run with Python's default of writing bytecode (``PYTHONDONTWRITEBYTECODE``
removed from their environment): the peer's site-packages hold pip's compiled ``.pyc`` files,
and rtlab's editable checkout gets its own on the warm-up, as on a user's first run; a shell
that sets ``PYTHONDONTWRITEBYTECODE=1`` would otherwise make rtlab alone compile its ~150
modules from source on every run (about 0.2 s). Reported per beam count: medians of the wall times, ``ratio`` = rtlab / peer (the
issue's goal: <= 0.1), each side's median stage times (rtlab's ``timings`` from ``plan --json``;
the peer's own stage timer), and the plan quality of both doses scored by rtlab's scorer on the
CT grid with the TG-119 goals (goals table, Paddick CI at 50 Gy, target D95/D10, core D10), so
that speed is never bought with a worse plan unnoticed. The 1-minute load average before and
after each run is printed too (2 shared cores: times scale with the load). Prints
``{"skipped": reason}`` when the file, the peer's Python or pyRadPlan is missing.

Usage::

    python benchmarks/conformity.py [--spacing MM] [--grid MM] [--beams 5,9] [--skip-quadratic]
    python benchmarks/conformity.py --matrad TG119.mat --peer-python /path/to/venv/bin/python
                                    [--beams 5,9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER_SCRIPT = Path(__file__).resolve().with_name("_matrad_peer_plan.py")


def _row(p, n_beams, case):
    from rtlab import metrics

    s = p.scores
    d95 = s["structures"]["PTV"]["D95"]
    scaled = p.dose * (50.0 / d95) if d95 else p.dose
    ci_scaled = float(metrics.conformity_report(scaled, case.structures, rx=50.0)["ci_paddick"])
    t = p.timings
    return {
        "beams": n_beams,
        "objective": p.settings["objective"],
        "ci_paddick": round(s["ci_paddick"], 4),
        "ci_rescaled": round(ci_scaled, 4),
        "gi": round(s["gi"], 3),
        "ptv_d95": round(d95, 2),
        "ptv_d10": round(s["structures"]["PTV"]["D10"], 2),
        "ptv_dmax": round(s["structures"]["PTV"]["Dmax"], 2),
        "core_d10": round(s["structures"]["Core"]["D10"], 2),
        "iterations": p.iterations,
        "status": t["status"],
        "optimize_s": round(t["optimize_s"], 2),
        "optimize_cpu_s": round(t["optimize_cpu_s"], 2),
        "build_s": round(t["build_s"], 2),
        "mu_total": round(p.mu_total, 1),
        "goals_passed": all(g["passed"] for g in s["goals"]),
    }


def _quality(case, dose) -> dict:
    """A dose (CT grid, Gy) scored by rtlab's scorer with the case's goals (TG-119's for TG119.mat)."""
    from rtlab.evaluate.compare import score_summary
    from rtlab.planning.recipes import targets_with_rx

    s = score_summary(case, dose)
    target = targets_with_rx(case)[0][0].name
    organs = [g.structure for g in case.goals if case.structures[g.structure].kind != "target"]
    st = s["structures"]
    out = {
        "goals": {g["goal"]: {"value": round(g["value"], 2), "passed": bool(g["passed"])} for g in s["goals"]},
        "goals_passed": all(g["passed"] for g in s["goals"]),
        "ci_paddick": round(s["ci_paddick"], 4),
        "target_d95": round(st[target]["D95"], 2),
        "target_d10": round(st[target]["D10"], 2),
    }
    if organs:
        out["core_d10"] = round(st[organs[0]]["D10"], 2)
    return out


def _run_timed(cmd, env=None) -> tuple[float, dict, float, float]:
    """Wall time (s) of a fresh process, its JSON line, and the load average before and after."""
    la0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
    return wall, json.loads(line), la0, os.getloadavg()[0]


def _median_stages(rows, key):
    keys = sorted({k for r in rows for k, v in r[key].items() if isinstance(v, (int, float)) and k.endswith("_s")})
    return {k: round(float(np.median([r[key][k] for r in rows if r[key].get(k) is not None])), 3) for k in keys}


def main_matrad(args) -> int:
    """The matRad mode (module docstring): one JSON line."""
    path = Path(args.matrad)
    peer = args.peer_python
    reason = None
    if not path.is_file():
        reason = f"matRad file {path} not found"
    elif not peer or not Path(peer).is_file():
        reason = f"peer Python {peer!r} not found (pass --peer-python PATH of a venv with pyRadPlan)"
    else:
        chk = subprocess.run([peer, "-c", "import pyRadPlan"], capture_output=True, text=True)
        if chk.returncode != 0:
            reason = f"pyRadPlan does not import in {peer}: {chk.stderr.strip().splitlines()[-1:]}"
    if reason:
        print(json.dumps({"benchmark": "conformity_matrad", "skipped": reason}))
        return 0

    from rtlab.io import load_matrad
    from rtlab.planning.intent import with_goals

    case = with_goals(load_matrad(path), "auto")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # both sides with bytecode files (module docstring)
    peer_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    tmp = Path(tempfile.mkdtemp(prefix="rtlab_conformity_matrad_"))
    configs = {}
    for nb in [int(v) for v in args.beams.split(",") if v.strip()]:
        angles = ",".join(f"{i * 360.0 / nb:g}" for i in range(nb))
        rt_out, peer_out = tmp / f"rtlab_{nb}.npz", tmp / f"peer_{nb}.npz"
        rt_cmd = [sys.executable, "-m", "rtlab.cli", "plan", "--matrad", str(path), "--angles", angles,
                  "--objective", "conformity", "--out", str(rt_out), "--json"]
        peer_cmd = [peer, str(PEER_SCRIPT), str(peer_out), "--phantom", str(path), "--angles", angles]
        # untimed warm-up of both (numba cache, pyc files, page cache)
        _run_timed(rt_cmd, env)
        if not args.skip_peer_warmup:
            _run_timed(peer_cmd, peer_env)
        rt_rows, peer_rows = [], []
        for rep in range(args.repeats):
            order = [("rtlab", rt_cmd, env), ("peer", peer_cmd, peer_env)]
            for name, cmd, e in (order if rep % 2 == 0 else order[::-1]):
                wall, js, la0, la1 = _run_timed(cmd, e)
                row = {"wall_s": round(wall, 3), "load_before": round(la0, 2), "load_after": round(la1, 2),
                       "stages": js.get("timings", js), "iterations": js.get("iterations"),
                       "goal_rounds": js.get("goal_rounds", 0)}
                (rt_rows if name == "rtlab" else peer_rows).append(row)
        with np.load(rt_out) as z:
            rt_dose = np.asarray(z["dose"], np.float32)
        with np.load(peer_out) as z:
            peer_dose = np.asarray(z["dose"], np.float32)
            peer_iter = int(z["iterations"])
        if peer_dose.shape != case.grid.shape:
            raise RuntimeError(f"peer dose has shape {peer_dose.shape}, the CT grid {case.grid.shape}")
        rt_med = float(np.median([r["wall_s"] for r in rt_rows]))
        peer_med = float(np.median([r["wall_s"] for r in peer_rows]))
        configs[f"{nb}_beams"] = {
            "angles": angles,
            "rtlab_wall_s": round(rt_med, 3),
            "peer_wall_s": round(peer_med, 3),
            "ratio": round(rt_med / peer_med, 4),
            "goal_ratio_max": 0.1,
            "speed_pass": rt_med <= 0.1 * peer_med,
            "rtlab_runs_s": [r["wall_s"] for r in rt_rows],
            "peer_runs_s": [r["wall_s"] for r in peer_rows],
            "load_avg": [[r["load_before"], r["load_after"]] for r in rt_rows + peer_rows],
            "rtlab_stages_s": _median_stages(rt_rows, "stages"),
            "peer_stages_s": _median_stages(peer_rows, "stages"),
            "rtlab_iterations": rt_rows[-1]["iterations"],
            "rtlab_goal_rounds": rt_rows[-1]["goal_rounds"],
            "peer_iterations": peer_iter,
            "rtlab_quality": _quality(case, rt_dose),
            "peer_quality": _quality(case, peer_dose),
        }
    out = {
        "benchmark": "conformity_matrad",
        "file": str(path),
        "case": case.name,
        "ct_shape": list(case.grid.shape),
        "ct_spacing_mm": list(case.grid.spacing),
        "bixel_mm": 5.0,
        "dose_grid_mm": 5.0,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "rtlab_command": "python -m rtlab.cli plan --matrad FILE --angles A --objective conformity --out P.npz --json",
        "peer_command": f"{peer} benchmarks/_matrad_peer_plan.py P.npz --phantom FILE --angles A",
        "results": configs,
        "speed_pass": all(c["speed_pass"] for c in configs.values()),
        "quality_pass": all(c["rtlab_quality"]["goals_passed"] for c in configs.values()),
    }
    print(json.dumps(out))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spacing", type=float, nargs="*", help="CT spacing (mm): one value or dz dy dx (default phantom's)")
    ap.add_argument("--grid", type=float, default=5.0, help="dose grid (mm), default 5")
    ap.add_argument("--beams", default="5,9", help="numbers of equispaced beams, default 5,9")
    ap.add_argument("--skip-quadratic", action="store_true")
    ap.add_argument("--matrad", metavar="FILE", help="matRad mode: end-to-end speed against pyRadPlan on this file")
    ap.add_argument("--peer-python", metavar="PATH", help="matRad mode: the Python of a venv with pyRadPlan")
    ap.add_argument("--repeats", type=int, default=3, help="matRad mode: timed runs of each side per beam count")
    ap.add_argument("--skip-peer-warmup", action="store_true", help="matRad mode: no untimed peer run first")
    args = ap.parse_args(argv)
    if args.matrad:
        if args.repeats < 1:
            ap.error("--repeats must be >= 1")
        return main_matrad(args)

    import numba

    from rtlab.phantoms import get_phantom
    from rtlab.planning import plan_case

    sp = None if not args.spacing else (args.spacing[0] if len(args.spacing) == 1 else tuple(args.spacing))
    case = get_phantom("tg119_cshape_easy", spacing=sp)
    # warm-up: numba compilation (cached on disk) on a tiny case, not timed
    plan_case(get_phantom("tg119_cshape_easy", spacing=8.0), [0, 120, 240], dose_grid_mm=10.0, max_iter=2)
    rows = []
    for nb in [int(v) for v in args.beams.split(",") if v.strip()]:
        angles = [i * 360.0 / nb for i in range(nb)]
        for obj in ("conformity",) + (() if args.skip_quadratic else ("quadratic",)):
            p = plan_case(case, angles, obj, dose_grid_mm=args.grid)
            rows.append(_row(p, nb, case))
    conf = [r for r in rows if r["objective"] == "conformity"]
    criteria = {
        "ci_paddick_min": 0.85, "ptv_d95_min_gy": 50.0, "core_d10_max_gy": 25.0, "optimize_s_max_5_beams": 5.0,
    }
    quality_pass = all(r["ci_paddick"] >= 0.85 and r["ptv_d95"] >= 50.0 and r["core_d10"] <= 25.0 for r in conf)
    speed_pass = all(r["optimize_s"] <= 5.0 for r in conf if r["beams"] == 5)
    out = {
        "benchmark": "conformity",
        "case": case.name,
        "spacing_mm": list(case.grid.spacing),
        "dose_grid_mm": args.grid,
        "bixel_mm": 5.0,
        "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "results": rows,
        "criteria": criteria,
        "quality_pass": quality_pass,
        "speed_pass": speed_pass,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
