"""Seed 003's smoothing row (paper 003, :mod:`rtlab.reproduce.seed003`) in its reduced form.

The row is computed in-process; its schema is checked, and ``held`` and every plan's criterion
are recomputed here from the figures (independently of ``seed003.criterion``). The stored full
run (benchmarks/results/reproduce_003.json) is checked the same way.
"""

import json
import math
from pathlib import Path

import pytest

from tests.reproduce_util import floats

from rtlab import reproduce
from rtlab.cli import REPRODUCE_SEEDS
from rtlab.reproduce import seed003

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    return reproduce.run("003", reduced=True, progress=False, only=["smoothing"])


def _check(base, plan):
    """The criterion, recomputed: TNMU not higher, D95 within 1 %, CI within 0.02, non-target mean lower."""
    return {"tnmu_not_higher": plan["tnmu"] <= base["tnmu"] + 1e-6,
            "d95_within_1pct": all(abs(plan["d95"][t] - base["d95"][t]) <= 0.01 * base["d95"][t] + 1e-9
                                   for t in base["d95"]),
            "ci_within_0.02": abs(plan["ci"] - base["ci"]) <= 0.02 + 1e-12,
            "nontarget_mean_lower": plan["nontarget_mean_gy"] < base["nontarget_mean_gy"]}


def _verify(r, n_cases):
    assert r["seed"] == "003" and tuple(r) == reproduce.ROW_KEYS
    reproduce.check_row(r)
    assert json.loads(json.dumps(r)) == r
    assert all(math.isfinite(v) for v in floats(r["rtlab_figure"]))
    assert "criterion" in r["why"] and r["baseline"]
    fig = r["rtlab_figure"]
    assert fig["paper_nontarget_change_pct"] == -16.0
    cases = fig["cases"]
    assert len(cases) == n_cases
    budget = fig["iterations_n0"] + fig["iterations_budget"]
    held = True
    for c in cases.values():
        base = c["baseline"]
        assert base["iterations"] <= budget
        for name, plan in c["sweep"].items():
            want = _check(base, plan)
            got = {k: v for k, v in plan["criterion"].items() if k != "held"}
            assert got == want, name
            assert plan["criterion"]["held"] == all(want.values())
            # every optimised plan meets the eq. 8 bound: the bound is a constraint
            assert plan["tnmu"] <= base["tnmu"] + 1e-6, name
            if plan.get("iterations") is not None:
                assert plan["iterations"] <= budget, name
        chosen = c["sweep"][f"prior w={fig['term_weight']:g}"]
        assert c["smoothed"] == chosen
        assert c["smoothed"]["nontarget_change_pct"] == pytest.approx(
            100 * (chosen["nontarget_mean_gy"] / base["nontarget_mean_gy"] - 1), abs=0.011)
        held = held and all(_check(base, c["smoothed"]).values())
    assert r["held"] == held
    assert ("met" if held else "not met") in r["why"]


def test_reduced_row(rows):
    assert len(rows) == 1
    _verify(rows[0], 1)
    fig = rows[0]["rtlab_figure"]
    assert fig["spacing_mm"] == 10.0
    sweep = fig["cases"]["tg119_prostate"]["sweep"]
    w = fig["term_weight"]
    # the sweep holds the prior under eq. 8's constraints, the prior as a penalty only and conventional L2
    assert {f"prior w={w:g}", f"prior w={w:g}, penalty only (no target dose constraints)",
            f"L2 eq. 3 (conventional) w={w:g}"} <= set(sweep)
    chosen = fig["cases"]["tg119_prostate"]["smoothed"]
    assert chosen["target_dose_constraints"] and chosen["normalisation"] >= 1.0
    # the smoothing acts: TNMU strictly below the bound, maps smoother along the leaves
    base = fig["cases"]["tg119_prostate"]["baseline"]
    assert chosen["tnmu"] < 0.98 * base["tnmu"] and chosen["eta"] < base["eta"]


def test_stored_full_run():
    d = json.loads((ROOT / "benchmarks" / "results" / "reproduce_003.json").read_text())
    rows = [r for r in d["rows"] if r["claim"].startswith("Smoothing inside")]
    assert len(rows) == 1
    _verify(rows[0], 2)
    assert set(rows[0]["rtlab_figure"]["cases"]) == set(seed003.CASES)


def test_cli_and_registry_accept_003():
    assert "003" in reproduce.SEEDS and "003" in REPRODUCE_SEEDS
    assert [rid for rid, _ in reproduce.REGISTRY["003"]] == ["smoothing", "angles"]  # + seed003_angles
