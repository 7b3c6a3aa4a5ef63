"""DoseEnginePanel and PlanLab without a browser: set traits, call methods, check the library.

References: :func:`rtlab.planning.prepare_plan` / :func:`rtlab.planning.plan_case` (the same
pipeline called directly), :func:`rtlab.metrics.conformity_report` and
:func:`rtlab.compare.score` on the panel's doses.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

from rtlab import metrics  # noqa: E402
from rtlab.planning import plan_case, prepare_plan  # noqa: E402

SPACING = 5.0  # mm: small grids keep this file fast
MAX_ITER = 40


#: The ``case`` fixture's phantom (tests/conftest.py).
CASE = {"spacing": SPACING, "n_beams": 5}


# --------------------------------------------------------------------------------- dose panel
def test_parse_angles():
    from rtlab.widgets.dose_panel import parse_angles

    assert parse_angles("0, 72,144 216;288") == [0.0, 72.0, 144.0, 216.0, 288.0]
    assert parse_angles("-90, 370") == [270.0, 10.0]
    for bad in ("", "0, x", "nan"):
        with pytest.raises(ValueError, match="gantry angle"):
            parse_angles(bad)


def test_dose_panel_bad_input(case):
    from rtlab.widgets import DoseEnginePanel

    with pytest.raises(TypeError, match="case must be an rtlab.core.case.Case"):
        DoseEnginePanel("tg119")
    with pytest.raises(ValueError, match="bixel_mm"):
        DoseEnginePanel(case, bixel_mm=0.0)
    with pytest.raises(ValueError, match="dose_grid_mm"):
        DoseEnginePanel(case, dose_grid_mm=-1.0)
    p = DoseEnginePanel(case)
    with pytest.raises(ValueError, match="event must be one of"):
        p.on("done", print)
    p.angles_text.value = "0, 90, north"
    with pytest.raises(ValueError, match="'north' is not a number"):
        p.compute()
    assert "north" in p.status.value and p.problem is None and not p.running


def test_dose_panel_compute_matches_prepare_plan(case):
    from rtlab.widgets import DoseEnginePanel

    p = DoseEnginePanel(case, dose_grid_mm=None)
    assert [float(a) for a in p.angles_text.value.split(",")] == case.gantry_angles()
    p.angles_text.value = "0, 120, 240"
    p.bixel.value = 10.0
    p.cutoff.value = 30.0
    seen = []
    p.on("computed", seen.append)
    th = p.compute()
    assert th is not None and p.wait(timeout=120)
    assert seen == [p.problem]
    assert p.problem.angles == [0.0, 120.0, 240.0]
    ref = prepare_plan(case, angles=[0, 120, 240], bixel_mm=10.0, cutoff_mm=30.0)
    assert p.problem.influence.shape == ref.influence.shape
    assert p.problem.influence.nnz == ref.influence.nnz
    np.testing.assert_allclose(p.problem.x0, ref.x0, rtol=1e-6)
    # the open-field dose: x0 through the operator, median target dose = prescription
    np.testing.assert_allclose(p.dose, ref.operator.dose_ct(ref.x0), rtol=1e-5, atol=1e-5)
    ptv = case.structures.targets[0]
    assert np.median(p.dose[ptv.mask]) == pytest.approx(case.prescription, rel=0.02)
    assert p.progress.value == 1.0 and "Done" in p.status.value
    assert p.timings["build_s"] > 0


def test_dose_panel_failure_is_reported(case, monkeypatch):
    import rtlab.planning
    from rtlab.widgets import DoseEnginePanel

    def boom(*a, **k):
        raise ValueError("the beams give no dose to the target")

    monkeypatch.setattr(rtlab.planning, "prepare_plan", boom)
    p = DoseEnginePanel(case)
    seen = []
    p.on("computed", seen.append)
    p.compute()
    with pytest.raises(RuntimeError, match="dose computation failed.*no dose to the target"):
        p.wait(timeout=60)
    assert p.wait(timeout=1, raise_error=False) is None  # wait() returns the result: no problem was made
    assert "Failed" in p.status.value and p.problem is None and seen == []
    assert p.progress.bar_style == "danger" and not p.compute_button.disabled


# --------------------------------------------------------------------------------- PlanLab
@pytest.fixture(scope="module")
def lab():
    from rtlab.widgets import PlanLab

    lab = PlanLab(spacing_mm=SPACING)
    lab.optimizer.max_iter.value = MAX_ITER  # what a user types in the Optimiser tab
    lab.quick_plan(timeout=300)
    return lab


def test_planlab_defaults_and_tabs(lab):
    from rtlab.widgets import (ControlPointsPanel, DoseEnginePanel, FalloffPanel, OptimizerPanel, ReviewPanel,
                               SliceViewer, DVHPlot)
    from rtlab.widgets.planlab import TAB_TITLES

    assert lab.case.name == "tg119_cshape_easy" and lab.case.grid.spacing == (SPACING,) * 3
    assert lab.phantom_select.value == "tg119_cshape_easy"
    assert len(lab.case.beams) == 5
    kinds = (DoseEnginePanel, FalloffPanel, ControlPointsPanel, OptimizerPanel, ReviewPanel)
    assert len(lab.tabs.children) == 5
    for child, kind, title, i in zip(lab.tabs.children, kinds, TAB_TITLES, range(5)):
        assert isinstance(child, kind)
        assert lab.tabs.get_title(i) == title
    assert lab.tabs.children[0] is lab.dose_panel and lab.tabs.children[3] is lab.optimizer
    assert isinstance(lab.viewer, SliceViewer) and isinstance(lab.dvh, DVHPlot)
    assert lab.viewer in lab._view_box.children
    s = lab.dose_panel.settings()
    assert s["bixel_mm"] == 5.0 and s["dose_grid_mm"] == 5.0 and len(s["angles"]) == 5


def test_quick_plan_matches_plan_case(lab):
    res = lab.result
    assert res is not None and res.dose.shape == lab.case.grid.shape
    s = lab.dose_panel.settings()
    ref = plan_case(lab.case, angles=s["angles"], bixel_mm=s["bixel_mm"], dose_grid_mm=s["dose_grid_mm"],
                    cutoff_mm=s["cutoff_mm"], max_iter=MAX_ITER)
    assert res.settings["solver_options"]["max_iter"] == MAX_ITER
    ci_lab = metrics.conformity_report(res.dose, lab.case.structures)["ci_paddick"]
    ci_ref = ref.scores["ci_paddick"]
    assert ci_lab == pytest.approx(res.scores["ci_paddick"], abs=1e-9)
    assert ci_lab == pytest.approx(ci_ref, abs=0.03), (ci_lab, ci_ref)
    assert ci_lab > 0.6  # optimised: far above the open fields (about 0.3)
    # the viewer and the DVH show the plan
    np.testing.assert_array_equal(lab.viewer.dose, res.dose)
    ptv = lab.case.structures.targets[0]
    h = metrics.dvh(res.dose, ptv, bins=200)
    np.testing.assert_allclose(lab.dvh.dvhs[ptv.name].volume_pct, h.volume_pct)


def test_score_table(lab):
    t = lab.scores
    assert list(t.columns[:2]) == ["open fields", "optimised"]
    ptv = lab.case.structures.targets[0].name
    ci_open = metrics.conformity_report(lab.open_dose, lab.case.structures)["ci_paddick"]
    assert t.loc[(ptv, "CI_paddick", ""), "optimised"] == pytest.approx(lab.result.scores["ci_paddick"], rel=1e-6)
    assert t.loc[(ptv, "CI_paddick", ""), "open fields"] == pytest.approx(ci_open, rel=1e-6)
    goals = [g for g in lab.case.goals]
    goal_rows = [i for i in t.index if i[2]]
    assert len(goal_rows) == len(goals)
    for g in goals:
        row = [i for i in goal_rows if i[0] == g.structure and i[1].startswith(g.metric)]
        assert row, g
        v = metrics.evaluate(lab.result.dose, lab.case.structures[g.structure], g.metric)
        assert t.loc[row[0], "optimised"] == pytest.approx(v, rel=1e-6)
        assert bool(t.loc[row[0], "passed: optimised"]) == g.passed(v)
    assert t.loc[("plan", "MU", ""), "optimised"] == pytest.approx(lab.result.mu_total, rel=1e-6)
    assert 'class="rtlab-score-table"' in lab.score_html.value
    assert "Plan ready" in lab.status.value


def test_falloff_rederives_without_rebuild(lab):
    base = lab.dose_panel.problem
    lab.falloff_panel.falloff = 2.0
    p = lab.optimizer.problem
    assert p.settings["falloff_gy_per_mm"] == 2.0
    assert p.influence is base.influence and p.operator is base.operator
    assert p.info["levels"] is not None
    lab.falloff_panel.falloff = None
    assert lab.optimizer.problem.settings["falloff_gy_per_mm"] is None
    assert lab.optimizer.problem.influence is base.influence


def test_changing_phantom_resets_state(lab):
    old_dose_panel, old_viewer = lab.dose_panel, lab.viewer
    lab.spacing_select.value = 5.0
    lab.phantom_select.value = "sphere"  # what the user does in the picker
    assert lab.case.name == "sphere" and lab.case.grid.spacing == (5.0, 5.0, 5.0)
    assert lab.result is None and lab.scores is None and lab.open_dose is None
    assert lab.dose_panel is not old_dose_panel and lab.dose_panel.problem is None
    assert lab.viewer is not old_viewer and lab.viewer.grid.is_same(lab.case.grid) and lab.viewer.dose is None
    assert lab.tabs.children[0] is lab.dose_panel
    assert "No plan yet" in lab.score_html.value and "sphere" in lab.status.value
    # an event from the old panels is ignored
    old_dose_panel._emit("computed", old_dose_panel.problem)
    assert lab.optimizer.problem is None if hasattr(lab.optimizer, "problem") else True
    with pytest.raises(ValueError, match="unknown phantom"):
        lab.load_phantom("tg119_nope")


def test_planlab_bad_input():
    from rtlab.widgets import PlanLab

    with pytest.raises(TypeError, match="case must be an rtlab.core.case.Case"):
        PlanLab(case="tg119")
    with pytest.raises(ValueError, match="unknown phantom"):
        PlanLab(phantom="nope")
    with pytest.raises(ValueError, match="spacing_mm"):
        PlanLab(spacing_mm=0)


def test_summary_table_layout(case):
    from rtlab.compare import score
    from rtlab.widgets.planlab import summary_table

    d = np.zeros(case.grid.shape, np.float32)
    ptv = case.structures.targets[0]
    d[ptv.mask] = 50.0
    t = summary_table(score({"a": {"dose": d, "mu": 100.0}, "b": d * 1.2}, case))
    assert list(t.columns) == ["a", "b", "passed: a", "passed: b"]
    assert t.loc[("PTV", "CI_paddick", ""), "a"] == pytest.approx(1.0)
    assert t.loc[("PTV", "D95 (Gy)", ">= 50"), "b"] == pytest.approx(60.0)
    assert bool(t.loc[("PTV", "D10 (Gy)", "<= 55"), "passed: a"]) is True
    assert bool(t.loc[("PTV", "D10 (Gy)", "<= 55"), "passed: b"]) is False
    assert t.loc[("plan", "MU", ""), "a"] == pytest.approx(100.0)
