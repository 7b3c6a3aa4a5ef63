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


# -- benchmarks/cshape_hard_front.py (issue #18: the C-shape hard trade-off) ---------------------

def _front():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cshape_hard_front
    return cshape_hard_front


def test_cshape_front_blocked_strip_dose_is_the_closed_form_field():
    """The blocked-core profile's model: with nothing blocked it is ``water_dose`` of the square
    field (rtlab.dose.commission's closed form); blocking removes exactly a narrower field's x factor."""
    import numpy as np
    from scipy.special import ndtr

    from rtlab.dose import generic_6mv
    from rtlab.dose.commission import water_dose

    F, m = _front(), generic_6mv()
    x = np.linspace(-60.0, 60.0, 121)
    open_ = F._strip_dose(m, x, 100.0, 900.0, 0.0, 40.0, 80.0)
    np.testing.assert_allclose(open_, water_dose(m, 80.0, 100.0, x, 900.0), rtol=1e-12)
    # the blocked middle |u| < 12.5 at the axis: every Gaussian's share of [-12.5, 12.5] removed (numpy)
    comp, sig, wt = m.gaussians(900.0)
    dd = m.depth_dose(np.array([100.0]))[0]
    lost = sum(c * dd[k] * (ndtr(12.5 / s) - ndtr(-12.5 / s)) * (ndtr(40 / s) - ndtr(-40 / s))
               for k, s, c in zip(comp, sig, wt)) * (1000.0 / 1000.0) ** 2
    blocked = F._strip_dose(m, np.array([0.0]), 100.0, 900.0, 12.5, 40.0, 80.0)[0]
    assert blocked == pytest.approx(open_[60] - lost, rel=1e-12)
    fig = F.penumbra_figures()
    assert 4.0 < fig["penumbra_80_20_mm"] < fig["dist_90_20_mm"] < fig["dist_95_20_mm"]
    ring = [r["ring_pct_of_ptv_edge"] for r in fig["blocked_core"]]
    assert ring == sorted(ring, reverse=True)  # a wider block spares the core's ring more


def test_cshape_front_merge_and_stored_result(tmp_path):
    """``--merge`` joins runs' points; the stored result's rescaled figures are D x 50 / D95."""
    F = _front()
    pt = {"beams": 9, "point": "w1", "recipe": {}, "max_iter": 250, "ptv_d95": 49.0, "ptv_d10": 55.0,
          "core_d10": 10.0, "met": False, "rescaled_d10": 56.12, "rescaled_core_d10": 10.2, "met_rescaled": False,
          "ci_paddick": 0.9, "iterations": 10, "goal_rounds": 0, "wall_s": 1.0}
    base = {"case": "tg119_cshape_hard", "spacing_mm": [2.5, 3.0, 3.0], "max_iter": 100, "wall_s": 1.0,
            "load_avg_1m": 1.0}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(dict(base, points=[pt])) + "\n")
    b.write_text(json.dumps(dict(base, points=[dict(pt, point="w3", rescaled_d10=54.9, rescaled_core_d10=10.5)])))
    out = F.main(["--merge", str(a), str(b), "--out", str(tmp_path / "m.json")])
    assert [p["point"] for p in out["points"]] == ["w1", "w3"]
    assert out["best_rescaled"]["9"]["lowest"]["point"] == "w1"
    assert out["best_rescaled"]["9"]["lowest_with_d10_met"]["point"] == "w3"
    assert json.loads((tmp_path / "m.json").read_text()) == out
    b.write_text(json.dumps(dict(base, spacing_mm=[4.0, 4.0, 4.0], points=[pt])))
    with pytest.raises(SystemExit, match="spacing_mm"):
        F.main(["--merge", str(a), str(b)])
    stored = ROOT / "benchmarks" / "results" / "cshape_hard_front.json"
    d = json.loads(stored.read_text())
    assert d["spacing_mm"] == [2.5, 3.0, 3.0] and {p["beams"] for p in d["points"]} >= {9}
    for p in d["points"]:
        f = 50.0 / p["ptv_d95"]
        assert p["rescaled_d10"] == pytest.approx(p["ptv_d10"] * f, abs=0.02)
        assert p["rescaled_core_d10"] == pytest.approx(p["core_d10"] * f, abs=0.02)
        assert p["met"] == (p["ptv_d95"] >= 50 and p["ptv_d10"] <= 55 and p["core_d10"] <= 10)
