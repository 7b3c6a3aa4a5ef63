"""The control-point find settings travel from ControlPointsPanel through the recipe into the plan.

Reference: a direct :func:`rtlab.methods.control_points.find_control_points` call with the same
keyword arguments (``panel.find_kwargs()``); the default recipe must keep the points of
``find_control_points(mask, spacing, mode='2d')``.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtlab.methods.control_points import RingFilter, Thresholds, control_point_targets, find_control_points
from rtlab.planning import build_objective, control_point_find_options, prepare_plan

ANGLES = [0.0, 120.0, 240.0]
GRID = 10.0  # coarse dose grid on the 5 mm CT grid: fast


@pytest.fixture(scope="module")
def base(case):
    return prepare_plan(case, ANGLES, dose_grid_mm=GRID)


def _same_points(a, b):
    assert a.mode == b.mode
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.inside, b.inside)
    np.testing.assert_array_equal(a.is_control, b.is_control)


def _ptv(case):
    return case.structures["PTV"].mask


# ------------------------------------------------------------------------------ the recipe entry
def test_default_options_are_the_previous_call(case, base):
    opts = control_point_find_options()
    assert opts == control_point_find_options({}) == control_point_find_options(None)
    assert opts["mode"] == "2d" and opts["inside_filter"] == RingFilter(8.0) and opts["thresholds"] == Thresholds()
    ref = find_control_points(_ptv(case), case.grid.spacing, mode="2d")
    _same_points(find_control_points(_ptv(case), case.grid.spacing, **opts), ref)
    # a plan with control points and no recipe entry: unchanged default points
    p = base.with_objective(control_points=True)
    _same_points(p.info["control_points"], ref)
    assert p.settings["recipe"]["control_point_find"] == opts
    assert p.settings["recipe_overrides"] is None


def test_options_accept_plain_values(case):
    o = control_point_find_options({"r_out": 6, "inside_filter": (9.0, 3.0), "outside_filter": 7.0,
                                    "thresholds": {"ratio": 1.15, "bulge": None}, "mode": "3d",
                                    "smooth_mm": 0})
    assert o["r_in"] == 10.0 and o["r_out"] == 6.0 and o["mode"] == "3d" and o["smooth_mm"] == 0.0
    assert o["inside_filter"] == RingFilter(9.0, 3.0) and o["outside_filter"] == RingFilter(7.0)
    assert o["thresholds"] == Thresholds(ratio=1.15, bulge=None) and o["backend"] == "numba"


@pytest.mark.parametrize("spec, exc, match", [
    ([("mode", "3d")], TypeError, "must be a dict"),
    ({"callback": print}, ValueError, "unknown key.*callback"),
    ({"r_in": -1.0}, ValueError, r"\['r_in'\]"),
    ({"r_in": "wide"}, TypeError, r"\['r_in'\]"),
    ({"r_in": 0, "r_out": 0}, ValueError, "both 0 mm"),
    ({"inside_filter": (3.0, 5.0)}, ValueError, r"\['inside_filter'\].*inner_mm"),
    ({"outside_filter": "big"}, TypeError, r"\['outside_filter'\]"),
    ({"thresholds": {"ratio": None, "bulge": None}}, ValueError, r"\['thresholds'\].*at least one"),
    ({"thresholds": {"ratio": 0.5}}, ValueError, r"\['thresholds'\].*>= 1.0"),
    ({"thresholds": 1.1}, TypeError, r"\['thresholds'\]"),
    ({"mode": "4d"}, ValueError, r"\['mode'\]"),
    ({"smooth_mm": -2.0}, ValueError, r"\['smooth_mm'\]"),
    ({"backend": "cuda"}, ValueError, r"\['backend'\]"),
])
def test_options_bad_input(spec, exc, match):
    with pytest.raises(exc, match=match):
        control_point_find_options(spec)


def test_bad_recipe_raises_before_any_work(case, base):
    op = base.operator
    with pytest.raises(ValueError, match=r"control_point_find.*\['mode'\]"):
        build_objective(case, op, "conformity", control_points=True, recipe={"control_point_find": {"mode": "x"}})
    with pytest.raises(ValueError, match="unknown recipe entry 'control_point_find' for objective 'quadratic'"):
        build_objective(case, op, "quadratic", recipe={"control_point_find": {"mode": "3d"}})
    with pytest.raises(TypeError, match="recipe entry 'steepness' must be a number"):
        build_objective(case, op, "conformity", recipe={"steepness": "steep"})
    with pytest.raises(TypeError, match="recipe must be a dict"):
        build_objective(case, op, "conformity", recipe=[("steepness", 3.0)])


# ------------------------------------------------------------------------------ panel -> plan
def _set_panel(p):
    """What a user does in the Control points tab: 3D spheres, other band, ring filter, ratio only."""
    p.mode.value = "3d"
    p.r_in.value, p.r_out.value = 6.0, 8.0
    p.in_outer.value, p.in_inner.value = 9.0, 3.0
    p.out_outer.value = 7.0
    p.use_bulge.value = False
    p.ratio.value = 1.15


def test_plan_uses_the_panels_control_points(case, base):
    pytest.importorskip("anywidget")
    from rtlab.widgets import ControlPointsPanel

    p = ControlPointsPanel(case, auto=False)
    assert "control_point_find" not in p.recipe  # panel defaults = planning default
    _set_panel(p)
    rec = p.recipe
    assert rec["control_point_find"] == p.find_kwargs()
    ref = find_control_points(_ptv(case), case.grid.spacing, **p.find_kwargs())
    default = find_control_points(_ptv(case), case.grid.spacing, mode="2d")
    assert ref.mode == "3d" and ref.n_control > 0
    assert len(ref) != len(default) or not np.array_equal(ref.index, default.index)
    # derived on the same operator (what PlanLab / the optimiser do) ...
    q = base.with_objective(control_points=True, recipe=rec)
    _same_points(q.info["control_points"], ref)
    assert q.settings["recipe"]["control_point_find"] == control_point_find_options(p.find_kwargs())
    assert q.settings["recipe_overrides"]["control_point_find"] == p.find_kwargs()
    # ... kept by later edits that leave the recipe alone ...
    _same_points(q.with_objective(weights={"PTV conformity": 2.0}).info["control_points"], ref)
    # ... and the same from prepare_plan, and the points the panel itself draws
    r = prepare_plan(case, ANGLES, dose_grid_mm=GRID, control_points=True, recipe=rec)
    _same_points(r.info["control_points"], ref)
    p.update()
    assert p.wait(120)
    _same_points(p.points, ref)
    # the plan's term acts on the evaluated rows of exactly those control points
    vi, _, _ = control_point_targets(ref, 50.0, 45.0)
    rows = r.operator.ct_rows_of_flat(vi)
    np.testing.assert_array_equal(np.sort(r.objective["control points"].rows), np.sort(rows[rows >= 0]))


def test_planlab_passes_the_find_settings(case):
    pytest.importorskip("anywidget")
    from rtlab.widgets import PlanLab

    lab = PlanLab(case=case, dose_grid_mm=GRID, bixel_mm=10.0)
    lab.dose_panel.angles_text.value = ", ".join(f"{a:g}" for a in ANGLES)
    lab.dose_panel.compute()
    assert lab.dose_panel.wait(timeout=120)
    cpp = lab.control_points_panel
    cpp.auto.value = False
    _set_panel(cpp)
    cpp.enabled = True  # computes the points; "changed" re-derives the optimiser's problem
    assert cpp.wait(120)
    prob = lab.optimizer.problem
    assert prob.settings["control_points"]
    ref = find_control_points(_ptv(case), case.grid.spacing, **cpp.find_kwargs())
    _same_points(prob.info["control_points"], ref)
    _same_points(cpp.points, ref)
    # back to the default settings: the plan goes back to the default points
    cpp.mode.value = "2d"
    cpp.r_in.value, cpp.r_out.value = 10.0, 10.0
    cpp.in_outer.value, cpp.in_inner.value = 8.0, 0.0
    cpp.out_outer.value = 8.0
    cpp.use_bulge.value = True
    cpp.ratio.value = 1.1
    assert "control_point_find" not in cpp.recipe
    cpp.update()
    assert cpp.wait(120)
    _same_points(lab.optimizer.problem.info["control_points"],
                 find_control_points(_ptv(case), case.grid.spacing, mode="2d"))
