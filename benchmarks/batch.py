"""Batch-planning throughput on dask.distributed (patent 001): plans per minute and task overhead.

Runs :func:`rtlab.batch.run_batch` on a fresh :class:`distributed.LocalCluster` with 1 and then
2 worker processes (one thread each) over ``--cases`` stand-in cases whose ``optimize`` stage
does real numpy work (projected-gradient least squares on a random influence matrix) for
``--work-s`` seconds, plus per case a load, 3 per-beam influence tasks, a conversion and a QA
(a real 3 %/3 mm :func:`rtlab.qa.gamma` on a 12^3 grid) - 7 tasks per plan; then the same
with rtlab's **real stages** (:func:`rtlab.batch.rtlab_stages`: TG-119 phantoms at
``--spacing`` mm, 3 beams, per-beam influence tasks, the standard plan, conversion of each
standard plan for the standard machine (used as is) and ``linac_10mm_hard`` (re-optimised,
gamma QA)) with 1 and 2 workers.

Reported:

* ``plans_per_minute_{1,2}w`` - persisted plans per minute of wall time, cluster start-up
  excluded (each batch runs on an already started, warmed-up cluster);
* ``speedup_2w`` - ratio of the two;
* ``overhead_ms_per_task`` - scheduling overhead: wall time of ``--noop`` no-op tasks
  submitted at once and gathered, divided by their number (2 workers);
* ``overhead_ms_per_dependent_task`` - the same for a chain-free fan-in as the master builds it
  (submit + as_completed, one by one), which is what a batch pays per task;
* ``real_plans_per_minute_{1,2}w`` - persisted converted plans per minute with the real stages
  (``--real-cases`` TG-119 cases x 2 machines), cluster start-up and a warm-up case excluded.

Prints exactly one JSON line.

Usage::

    python benchmarks/batch.py [--cases 8] [--work-s 0.5] [--noop 2000] [--real-cases 4] [--spacing 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtlab.batch import demo_stages, make_client, rtlab_stages, run_batch  # noqa: E402
from rtlab.batch.demo import noop  # noqa: E402


def _plans_per_minute(n_workers: int, n_cases: int, work_s: float) -> dict:
    client, cluster = make_client(n_workers=n_workers, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as d:  # warm-up: imports and numba compilation on every worker
            run_batch([f"warm{i}" for i in range(n_workers)], ["a"], d, stages=demo_stages(), client=client,
                      progress=False)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = run_batch([f"c{i}" for i in range(n_cases)], ["linac_a", "linac_b"], d,
                          stages=demo_stages(work_s=work_s), client=client, progress=False)
            wall = time.perf_counter() - t0
        assert len(s["persisted"]) == n_cases and not s["failed"], s
        return dict(wall_s=wall, ppm=60.0 * n_cases / wall)
    finally:
        client.close()
        cluster.close()


TG119 = ["tg119_cshape_easy", "tg119_cshape_hard", "tg119_multitarget", "tg119_prostate", "tg119_headneck"]


def _real_ppm(n_workers: int, n_cases: int, spacing: float) -> dict:
    stages = rtlab_stages(spacing=spacing, angles=[0, 120, 240], max_iter=20, convert_max_iter=15, attempts_per_task=1)
    client, cluster = make_client(n_workers=n_workers, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as d:  # warm-up: imports, numba caches, machine models on every worker
            run_batch(["tg119_cshape_easy"] * 1, ["standard", "linac_10mm_hard"], d, stages=stages, client=client,
                      progress=False, fanout=2)
        cases = (TG119 * (n_cases // len(TG119) + 1))[:n_cases]
        from rtlab.batch import CaseRef

        refs = [CaseRef(f"{c}-{i}", c, spacing) for i, c in enumerate(cases)]
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = run_batch(refs, ["standard", "linac_10mm_hard"], d, stages=stages, client=client, progress=False,
                          fanout=2, max_qa_attempts=1)
            wall = time.perf_counter() - t0
        assert len(s["persisted"]) == 2 * n_cases and not s["failed"], s
        return dict(wall_s=wall, ppm=60.0 * len(s["persisted"]) / wall, tasks=n_cases * (2 + 3 + 1 + 4))
    finally:
        client.close()
        cluster.close()


def _overhead(n: int) -> dict:
    from distributed import as_completed

    client, cluster = make_client(n_workers=2, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        client.gather(client.map(noop, range(50), pure=False))  # warm-up
        t0 = time.perf_counter()
        client.gather(client.map(noop, range(n), pure=False))
        bulk = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        ac = as_completed()
        for i in range(n):
            ac.add(client.submit(noop, i, pure=False, priority=i % 3, retries=2))
        for f in ac:
            f.result()
        one = (time.perf_counter() - t0) / n
        return dict(bulk_ms=1e3 * bulk, one_ms=1e3 * one)
    finally:
        client.close()
        cluster.close()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--work-s", type=float, default=0.5)
    ap.add_argument("--noop", type=int, default=2000)
    ap.add_argument("--real-cases", type=int, default=4, help="TG-119 cases for the real-stage runs (0: skip)")
    ap.add_argument("--spacing", type=float, default=10.0, help="phantom voxel size (mm) of the real-stage runs")
    a = ap.parse_args(argv)
    r1 = _plans_per_minute(1, a.cases, a.work_s)
    r2 = _plans_per_minute(2, a.cases, a.work_s)
    ov = _overhead(a.noop)
    res = dict(
        benchmark="batch", cases=a.cases, work_s_per_case=a.work_s, tasks_per_plan=7,
        plans_per_minute_1w=round(r1["ppm"], 2), plans_per_minute_2w=round(r2["ppm"], 2),
        wall_s_1w=round(r1["wall_s"], 3), wall_s_2w=round(r2["wall_s"], 3),
        speedup_2w=round(r2["ppm"] / r1["ppm"], 3),
        ideal_plans_per_minute_1w=round(60.0 / a.work_s, 2),
        overhead_ms_per_task=round(ov["bulk_ms"], 3), overhead_ms_per_dependent_task=round(ov["one_ms"], 3),
        noop_tasks=a.noop, cpu_count=os.cpu_count(), python=platform.python_version(),
        stages="stand-in (rtlab.batch.demo)",
    )
    if a.real_cases > 0:
        q1 = _real_ppm(1, a.real_cases, a.spacing)
        q2 = _real_ppm(2, a.real_cases, a.spacing)
        res.update(real_cases=a.real_cases, real_spacing_mm=a.spacing, real_plans=2 * a.real_cases,
                   real_plans_per_minute_1w=round(q1["ppm"], 2), real_plans_per_minute_2w=round(q2["ppm"], 2),
                   real_wall_s_1w=round(q1["wall_s"], 2), real_wall_s_2w=round(q2["wall_s"], 2),
                   real_speedup_2w=round(q2["ppm"] / q1["ppm"], 3), real_tasks_per_case=10,
                   real_overhead_fraction_2w=round(q2["tasks"] * ov["one_ms"] / 1e3 / q2["wall_s"], 4))
    import distributed

    res["distributed"] = distributed.__version__
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
