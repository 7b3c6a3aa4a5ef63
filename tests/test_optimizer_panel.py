"""OptimizerPanel and ReviewPanel driven from Python (no browser): threads, stop, settings, review."""

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from rtlab.planning import optimise_plan, prepare_plan  # noqa: E402
from rtlab.widgets import DVHPlot, OptimizerPanel, ReviewPanel  # noqa: E402

ANGLES = [0.0, 120.0, 240.0]

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


@pytest.fixture(scope="module")
def problem(case):
    return prepare_plan(case, ANGLES, dose_grid_mm=10.0)


def _wait_for(pred, timeout=60.0):
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_full_run_equals_optimise_plan_and_reports_every_iteration(case, problem):
    dvh = DVHPlot(case.grid, case.structures)
    panel = OptimizerPanel(case, problem, dvh=dvh)
    assert list(panel.weights) == ["PTV conformity"] and panel.objective.value == "conformity"
    panel.max_iter.value = 12
    panel.change_threshold.value = 1e-4
    panel.change_window.value = 5
    seen, done = [], []
    panel.on("iteration", seen.append)
    panel.on("finished", done.append)
    panel.run()
    res = panel.wait(timeout=120)
    assert not panel.running and res is panel.result and done == [res]
    ref = optimise_plan(problem, max_iter=12, change_threshold=1e-4, change_window=5)
    assert res.timings["status"] == ref.timings["status"] and res.iterations == ref.iterations
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-6, atol=1e-9 * ref.x.max())
    assert res.scores["ci_paddick"] == pytest.approx(ref.scores["ci_paddick"], abs=1e-6)
    # one event per iteration; each carries its iterate, whose objective is the record's
    assert [r["iteration"] for r in seen] == list(range(1, res.iterations + 1))
    for rec in seen[:3]:
        d = problem.operator.matvec(rec["x"])
        assert problem.objective.value(d) == pytest.approx(rec["objective"], rel=1e-9)
    # live table: F, S, f_C of the conformity term at every iteration, f_C = F S (eq 3)
    assert len(panel.history) == res.iterations + 1
    for rec in panel.history:
        rep = rec["reports"]["PTV conformity"]
        assert rep["f_C"] == pytest.approx(rep["F"] * rep["S"], rel=1e-12)
    assert "f_C_exact" in panel.table.value and f"<td>{res.iterations}</td>" in panel.table.value
    assert panel.plot.value[:4] == b"\x89PNG" and panel.progress.value == res.iterations
    assert dvh.n_updates >= 1 and res.timings["status"] in panel.status.value
    assert not panel.run_button.disabled and panel.stop_button.disabled


def test_stop_mid_run_returns_the_best_plan_so_far(case, problem):
    panel = OptimizerPanel(case, problem, update_interval=0.0)
    panel.max_iter.value = 5000
    panel.change_threshold.value = 0.0  # off: only Stop ends the run
    panel.run()
    assert panel.running  # run() returned while the solver works
    with pytest.raises(RuntimeError, match="in progress"):
        panel.run()
    _wait_for(lambda: len(panel.history) >= 2)
    panel.stop()
    res = panel.wait(timeout=60)
    assert res.timings["status"] == "cancelled" and 2 <= res.iterations < 5000
    assert len(panel.history) == res.iterations + 1
    assert np.all(np.isfinite(res.x)) and res.result.objective <= panel.history[0]["objective"]
    assert "cancelled" in panel.status.value


def test_widget_settings_change_the_objective_of_the_next_run(case, problem):
    panel = OptimizerPanel(case, problem)
    base = panel.build_problem()
    assert base.objective["PTV conformity"].weight == 1.0 and base.operator is problem.operator
    panel.weights["PTV conformity"].value = 3.0
    panel.split.value = True
    panel.w1.value = 1.0
    panel.w2.value = 0.5
    panel.steepness.value = 20.0
    p = panel.build_problem()
    t = p.objective["PTV conformity"]
    assert t.weight == 3.0 and t.split and (t.w1, t.w2) == (1.0, 0.5) and t.steepness == 20.0
    assert p.operator is problem.operator and p.influence is problem.influence
    panel.max_iter.value = 4
    panel.run()
    res = panel.wait(timeout=60)
    assert panel.run_problem.objective["PTV conformity"].weight == 3.0
    ref = optimise_plan(problem.with_objective(weights={"PTV conformity": 3.0}, w1=1.0, w2=0.5,
                                               recipe={"steepness": 20.0}), max_iter=4)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-6, atol=1e-9 * ref.x.max())
    assert res.settings["term_weights"] == {"PTV conformity": 3.0} and res.settings["w2"] == 0.5
    # the start value of the objective differs from the default objective's
    f0_default = optimise_plan(problem, max_iter=1).history.objective[0]
    assert panel.history[0]["objective"] != pytest.approx(f0_default)
    # switching the recipe lists that recipe's per-target terms
    panel.objective.value = "quadratic"
    assert list(panel.weights) == ["PTV deviation"] and panel.w1.disabled and panel.steepness.disabled
    q = panel.build_problem()
    assert q.settings["objective"] == "quadratic" and "PTV deviation" in q.objective.names


def test_panel_without_problem_prepares_one_and_bad_input(case):
    panel = OptimizerPanel(case, prepare_options={"angles": ANGLES, "dose_grid_mm": 12.0})
    panel.max_iter.value = 2
    panel.run()
    res = panel.wait(timeout=60)
    assert panel.problem is not None and res.angles == ANGLES and res.iterations == 2
    with pytest.raises(ValueError, match="event must be one of"):
        panel.on("done", print)
    with pytest.raises(TypeError, match="PlanProblem"):
        panel.set_problem("problem")
    with pytest.raises(TypeError, match="Case"):
        OptimizerPanel("case")
    # a broken event handler is reported, not fatal
    panel.on("iteration", lambda rec: 1 / 0)
    panel.run()
    assert panel.wait(timeout=60).iterations == 2
    assert any("ZeroDivisionError" in o.get("text", "") for o in panel.out.outputs)


def test_review_panel_accept_edit_reoptimise_log(case, problem):
    plan = optimise_plan(problem, max_iter=8)
    rv = ReviewPanel(plan, solver_options={"max_iter": 4})
    assert rv.session.state == "optimised" and "PTV coverage" in rv.weights
    events = []
    rv.on("reoptimised", lambda r: events.append(("reoptimised", r)))
    rv.on("accepted", lambda r: events.append(("accepted", r)))
    rv.weights["PTV coverage"].value = 0.5
    e = rv.edit()
    assert e.status == "edited" and rv.session.objective["PTV coverage"].weight == 0.5
    assert plan.objective["PTV coverage"].weight == 0.1  # the plan's own objective is untouched
    with pytest.raises(ValueError, match="no weight was changed"):
        rv.edit()
    rv.reoptimise("optimised")
    new = rv.wait(timeout=60)
    assert new.iterations <= 4 and events[-1] == ("reoptimised", new)
    # the new plan's dose is the operator's dose of the session's weights
    np.testing.assert_allclose(new.dose, problem.operator.dose_ct(rv.session.result.x), rtol=1e-6)
    assert new.result.objective <= e.objective + 1e-12
    acc = rv.accept()
    assert events[-1] == ("accepted", acc) and np.array_equal(acc.x, new.x)
    actions = [x["action"] for x in rv.session.log]
    assert actions == ["reoptimise", "edit", "reoptimise", "accept"]
    for a in ("edit", "accept", "start=optimised"):
        assert a in rv.log_view.value
    assert "accepted" in rv.status.value
    with pytest.raises(ValueError, match="start must be"):
        rv.reoptimise("scratch")
    with pytest.raises(TypeError, match="PlanResult"):
        ReviewPanel(object())
    with pytest.raises(RuntimeError, match="no plan"):
        ReviewPanel().accept()


def test_start_menu_runs_from_the_chosen_start(case, problem):
    """The start menu is rtlab.planning.warm_start (patent 000, para. 134-136): the run's problem
    has that start's x0, and 'region' is offered only with a model."""
    from rtlab.planning import warm_start

    assert "region" not in OptimizerPanel(case, problem).start.options
    panel = OptimizerPanel(case, problem, region_model=str(DATASETS / "region_model_200"))
    assert list(panel.start.options) == ["uniform", "zero", "target", "region"]
    panel.max_iter.value = 2
    panel.start.value = "target"
    panel.run()
    res = panel.wait(timeout=300)
    assert panel.run_problem.info["warm_start"]["kind"] == "target"
    np.testing.assert_allclose(panel.run_problem.x0, warm_start(problem, "target").x0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.x0, panel.run_problem.x0)
    assert "start: target" in "".join(o.get("text", "") for o in panel.out.outputs)
