"""Tests for rtlab.compare: tidy score table, goal pass/fail, MU column, side-by-side + DVH figure."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest

from rtlab import metrics as m
from rtlab.case import Case, Goal
from rtlab.compare import CONFORMITY_METRICS, SCORE_COLUMNS, STANDARD_METRICS, compare, score
from rtlab.geometry import Grid, Structure, StructureSet


@pytest.fixture(scope="module")
def case():
    g = Grid((16, 16, 16), (2.0, 2.0, 2.0))
    Z, Y, X = g.mesh()
    r = np.sqrt(Z**2 + Y**2 + X**2)
    ptv = Structure("PTV", r <= 7.0, g, kind="target", prescription=60.0)
    oar_mask = np.zeros(g.shape, bool)
    oar_mask[4:12, 4:12, 13:15] = True
    oar = Structure("OAR", oar_mask, g, kind="oar")
    body = Structure("BODY", np.ones(g.shape, bool), g, kind="body")
    ss = StructureSet(g, [body, ptv, oar])
    goals = [
        Goal("PTV", "D95", ">=", 57.0),
        Goal("OAR", "Dmax", "<=", 30.0),
        Goal("OAR", "V20Gy", "<", 50.0),
        Goal("OAR", "V20Gy_cc", "<=", 0.2),
    ]
    return Case("toy", g, np.zeros(g.shape, np.float32), ss, goals=goals)


def doses(case):
    ptv, oar = case.structures["PTV"], case.structures["OAR"]
    good = np.zeros(case.grid.shape)
    good[ptv.mask] = 60.0
    good[oar.mask] = 10.0
    bad = np.zeros(case.grid.shape)
    bad[ptv.mask] = 50.0
    bad[oar.mask] = 40.0
    return good, bad


def test_score_columns_rows_and_values(case):
    good, bad = doses(case)
    df = score({"good": dict(dose=good, mu=512.5), "bad": bad}, case)
    assert list(df.columns) == SCORE_COLUMNS
    assert df["passed"].dtype == "boolean"
    assert df["value"].dtype == float and df["mu"].dtype == float
    n_struct = 3
    n_rows_per_plan = n_struct * len(STANDARD_METRICS) + len(CONFORMITY_METRICS) + len(case.goals)
    assert len(df) == 2 * n_rows_per_plan
    # MU column: filled for the plan that carries it, NaN for the other
    assert (df.loc[df.plan == "good", "mu"] == 512.5).all()
    assert df.loc[df.plan == "bad", "mu"].isna().all()
    # non-goal rows: goal "" and passed NA
    std = df[df.goal == ""]
    assert std["passed"].isna().all()
    # standard stats agree with rtlab.metrics
    ptv = case.structures["PTV"]
    v = df[(df.plan == "bad") & (df.structure == "PTV") & (df.metric == "D95") & (df.goal == "")]["value"].item()
    assert v == m.dose_at_volume(bad, ptv, pct=95) == 50.0
    # conformity of the good plan: the 60 Gy region is the PTV exactly
    cg = df[(df.plan == "good") & (df.structure == "PTV")].set_index("metric")["value"]
    assert cg["CI_paddick"] == 1.0 and cg["CI_rtog"] == 1.0 and cg["coverage"] == 1.0
    assert cg["selectivity"] == 1.0 and cg["HI"] == 0.0 and cg["GI"] == 1.0
    # the bad plan never reaches 60 Gy
    cb = df[(df.plan == "bad") & (df.structure == "PTV")].set_index("metric")["value"]
    assert cb["CI_paddick"] == 0.0 and cb["coverage"] == 0.0 and np.isnan(cb["GI"])
    # conformity rows only for targets
    assert set(df[df.metric == "CI_paddick"].structure) == {"PTV"}
    assert df.attrs["rx"] == {"PTV": 60.0}
    assert df.attrs["resampled"] == {"good": False, "bad": False}
    assert not df["resampled"].any()


def test_score_goal_pass_fail(case):
    good, bad = doses(case)
    df = score({"good": good, "bad": bad}, case)
    gr = df[df.goal != ""].set_index(["plan", "structure", "metric"])
    oar_cc = case.structures["OAR"].volume_cc
    expected = {
        ("good", "PTV", "D95"): (60.0, True),
        ("good", "OAR", "Dmax"): (10.0, True),
        ("good", "OAR", "V20Gy"): (0.0, True),
        ("good", "OAR", "V20Gy_cc"): (0.0, True),
        ("bad", "PTV", "D95"): (50.0, False),
        ("bad", "OAR", "Dmax"): (40.0, False),
        ("bad", "OAR", "V20Gy"): (100.0, False),
        ("bad", "OAR", "V20Gy_cc"): (oar_cc, oar_cc <= 0.2),
    }
    assert len(gr) == len(expected)
    for key, (val, ok) in expected.items():
        assert gr.loc[key, "value"] == pytest.approx(val)
        assert bool(gr.loc[key, "passed"]) is ok
    assert set(gr["goal"]) == {">= 57", "<= 30", "< 50", "<= 0.2"}
    assert set(gr.loc[gr.index.get_level_values("metric") == "V20Gy", "unit"]) == {"%"}
    assert set(gr.loc[gr.index.get_level_values("metric") == "V20Gy_cc", "unit"]) == {"cc"}
    # explicit goals replace the case's
    df2 = score(good, case, goals=[("OAR", "Dmean", "<=", 5.0)])
    g2 = df2[df2.goal != ""]
    assert len(g2) == 1 and not g2["passed"].item() and g2["value"].item() == 10.0
    assert set(df2.plan) == {"plan"}


def test_score_plan_objects_and_resampling(case):
    good, _ = doses(case)
    coarse = case.grid.with_spacing(4.0)
    Z, Y, X = coarse.mesh()
    lin = 20.0 + 0.5 * X + 0.0 * Z + 0.0 * Y
    plan_obj = SimpleNamespace(dose=lin, mu=300.0, grid=coarse)

    class MethodPlan:  # like rtlab.plan.Plan: dose() and mu() are methods, dose_grid a spacing
        dose_grid = 4.0

        def dose(self):
            return good

        def mu(self):
            return np.array([100.0, 150.5])

    dose_obj = SimpleNamespace(dose=SimpleNamespace(dose=good, grid=case.grid))
    df = score({"obj": plan_obj, "nested": dose_obj, "arr": good, "meth": MethodPlan()}, case.structures, rx=60.0)
    assert df.attrs["resampled"] == {"obj": True, "nested": False, "arr": False, "meth": False}
    assert (df.loc[df.plan == "meth", "mu"] == 250.5).all()
    assert df.loc[df.plan == "obj", "resampled"].all()
    assert (df.loc[df.plan == "obj", "mu"] == 300.0).all()
    assert df.loc[df.plan == "nested", "mu"].isna().all()
    # a bare structure set carries no goals
    assert (df.goal == "").all()
    # resampled mean dose agrees with the metrics module
    ptv = case.structures["PTV"]
    v = df[(df.plan == "obj") & (df.structure == "PTV") & (df.metric == "Dmean")]["value"].item()
    assert v == pytest.approx(m.mean_dose(lin, ptv, grid=coarse))
    # nested == arr
    a = df[df.plan == "nested"]["value"].to_numpy()
    b = df[df.plan == "arr"]["value"].to_numpy()
    assert np.array_equal(a, b, equal_nan=True)


def test_score_errors(case):
    good, _ = doses(case)
    with pytest.raises(ValueError, match="plan 'x'.*grid="):
        score({"x": good[:-1]}, case)
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="plan 'x'.*non-finite"):
        score({"x": bad}, case)
    with pytest.raises(TypeError, match="plan 'x'"):
        score({"x": "nope"}, case)
    with pytest.raises(ValueError, match="not among"):
        score(good, case, goals=[Goal("LIVER", "Dmean", "<=", 1.0)])
    with pytest.raises(ValueError, match="unknown metric"):
        score(good, case, goals=[("OAR", "Dfoo", "<=", 1.0)])
    ss = StructureSet(case.grid, [case.structures["PTV"].copy(prescription=None)])
    with pytest.raises(ValueError, match="no prescription"):
        score(good, ss)
    with pytest.raises(ValueError, match="empty"):
        score({}, case)


def test_compare_table_and_figure(case):
    good, bad = doses(case)
    wide, fig = compare({"good": dict(dose=good, mu=100.0), "bad": bad}, case)
    assert list(wide.columns) == ["good", "bad"]
    assert wide.index.names == ["structure", "metric", "goal", "unit"]
    assert wide.loc[("PTV", "D95", "", "Gy"), "good"] == 60.0
    assert wide.loc[("PTV", "D95", ">= 57", "Gy"), "bad"] == 50.0
    assert wide.loc[("OAR", "Dmax", "<= 30", "Gy"), "bad"] == 40.0
    assert wide.loc[("plan", "MU", "", "MU"), "good"] == 100.0
    assert np.isnan(wide.loc[("plan", "MU", "", "MU"), "bad"])
    passed = wide.attrs["passed"]
    assert bool(passed.loc[("PTV", "D95", ">= 57", "Gy"), "good"]) is True
    assert bool(passed.loc[("PTV", "D95", ">= 57", "Gy"), "bad"]) is False
    # the row order follows score(): the first structure's standard metrics first
    assert wide.index[0] == ("BODY", "D98", "", "Gy")
    ax = fig.axes[0]
    # one DVH per (plan, non-body structure)
    curves = [ln for ln in ax.lines if "(" in ln.get_label()]
    assert len(curves) == 2 * 2
    styles = {ln.get_label(): ln.get_linestyle() for ln in curves}
    assert styles["PTV (good)"] == styles["OAR (good)"] != styles["PTV (bad)"]
    colours = {ln.get_label(): ln.get_color() for ln in curves}
    assert colours["PTV (good)"] == colours["PTV (bad)"] != colours["OAR (good)"]
    # DVH curve of the good plan's PTV: 100 % up to 60 Gy, then 0
    ptv_line = next(ln for ln in curves if ln.get_label() == "PTV (good)")
    x, y = ptv_line.get_xdata(), ptv_line.get_ydata()
    assert y[0] == 100.0 and y[-1] == 0.0 and x[-1] == 60.0
    # no MU -> no MU row; structure selection; drawing into an existing axes
    from matplotlib.figure import Figure

    ax2 = Figure().add_subplot()
    wide2, fig2 = compare([good, bad], case, structures=["OAR"], ax=ax2, unit="cc")
    assert ("plan", "MU", "", "MU") not in wide2.index
    assert fig2 is ax2.figure
    assert len([ln for ln in ax2.lines if "(" in ln.get_label()]) == 2
    with pytest.raises(ValueError, match="not found"):
        compare(good, case, structures=["LIVER"])
    fig.savefig(io.BytesIO(), format="png")  # renders without a pyplot backend


def test_score_mu_unavailable_warns(case):
    good, _ = doses(case)

    class NoMU:
        dose = good

        def mu(self):
            raise NotImplementedError("no MU model")

    with pytest.warns(UserWarning, match="could not compute its MU"):
        df = score({"p": NoMU()}, case)
    assert df["mu"].isna().all()
