"""The reproduction rows of patent 002 (:mod:`rtlab.reproduce.seed002`) in their reduced form.

Each row is checked for its schema and finite figures, and ``held`` is recomputed here from the
figures (the per-target numbers), independently of the row's code.
"""

import math

import numpy as np
import pytest

from tests.reproduce_util import floats

pytest.importorskip("torch")

from rtlab import reproduce  # noqa: E402
from rtlab.reproduce import seed002  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return {r["claim"].split(" ")[0]: r for r in reproduce.run("002", reduced=True, progress=False)}


def test_registered_and_schema(rows):
    assert "002" in reproduce.REGISTRY
    assert [rid for rid, _ in reproduce.REGISTRY["002"]] == ["learning", "subgradient"]
    assert len(rows) == 2
    for r in rows.values():
        reproduce.check_row(r)
        assert r["seed"] == "002"
        assert all(math.isfinite(x) for x in floats(r["rtlab_figure"]))


def test_learning_row_criterion_recomputed(rows):
    f = rows["A"]["rtlab_figure"]
    per = f["per_target"]
    assert len(per) == f["n_held_out"] == 3
    mean = {who: {k: np.mean([p[who][k] for p in per]) for k in ("objective", "seconds", "ci_paddick")}
            for who in ("learned", "optimizer", "mlp")}
    ratio = mean["learned"]["objective"] / mean["optimizer"]["objective"]
    speed = mean["optimizer"]["seconds"] / mean["learned"]["seconds"]
    # per-target figures are rounded to 4 decimals (objectives ~0.02: up to 0.25 % each)
    assert f["objective_ratio"] == pytest.approx(ratio, rel=5e-3)
    assert f["speedup"] == pytest.approx(speed, rel=2e-2, abs=0.1)
    held = ratio <= seed002.OBJECTIVE_RATIO_MAX and speed >= seed002.SPEEDUP_MIN
    assert rows["A"]["held"] is bool(held)
    within = sum(p["learned"]["objective"] <= 1.1 * p["optimizer"]["objective"] for p in per)
    assert abs(f["n_within_10pct"] - within) <= sum(  # a target on the 10 % line may flip by the rounding
        abs(p["learned"]["objective"] / p["optimizer"]["objective"] - 1.1) < 0.01 for p in per)
    # every plan normalised to 96 % coverage
    for p in per:
        for who in ("learned", "optimizer", "mlp"):
            assert p[who]["coverage"] == pytest.approx(0.96, abs=0.01)
            assert 0 < p[who]["ci_paddick"] <= 1 and p[who]["gi"] > 1 and p[who]["objective"] > 0
    # the shipped network was trained: its loss history falls
    first, last = f["net_loss_first_last"]
    assert last < 0.5 * first


def test_subgradient_row_criterion_recomputed(rows):
    r = rows["Projected"]
    f = r["rtlab_figure"]
    ok = all(p["subgradient_feasible"] and p["subgradient"] < p["start"] for p in f["per_target"])
    assert r["held"] is bool(f["closed_form_rel_err"] <= 0.005 and ok)
    assert all(p["adam_feasible"] for p in f["per_target"])
    ratio = np.mean([p["subgradient"] / p["adam"] for p in f["per_target"]])
    assert f["subgradient_over_adam"] == pytest.approx(ratio, rel=1e-3)
    assert f["closed_form_rel_err"] <= 0.005  # the known answer of the one-point problem
