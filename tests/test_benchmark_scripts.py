"""The benchmark scripts stay runnable (CI runs none of them in full: they take minutes).

Each script must answer ``--help``; the mat-vec benchmark runs on a tiny matrix and must print
exactly one JSON line whose numba product matches its float64 reference (the script's own
check), which exercises the shared helpers in ``benchmarks/_common.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_is_listed():
    assert {"dose_engine.py", "matvec.py", "ids.py", "batch.py", "conformity.py", "sequencing.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_answers_help(script):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:")


def test_matvec_benchmark_tiny_run_prints_one_json_line():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "matvec.py"), "--rows", "3000", "--cols", "120",
                        "--nnz-per-row", "20", "--repeats", "3", "--no-gpu"], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["numpy_copy_gbs"] > 0 and d["numba_matvec_max_rel_err"] < 1e-5
    assert d["numba_rmatvec_max_rel_err"] < 1e-5
