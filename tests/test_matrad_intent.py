"""A matRad file's planning intent: cst objectives -> goals, matRad's objective, TG-119 goals.

The files are written here in both matRad layouts with ``scipy.io.savemat``: matRad 2 (``cst{i,6}``
a struct array with ``type``/``dose``/``penalty``/``volume``/``EUD``) and matRad 3 (a cell of
structs with ``className``/``parameters``/``penalty``, as matRad 3 and pyRadPlan save them).
The objective values are checked against matRad's formulas written out here in numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io as sio

from rtlab.core.case import Goal
from rtlab.core.geometry import Grid
from rtlab.io import goals_from_objectives, load_matrad, matrad_objectives
from rtlab.io.matrad_objectives import normalise_kind
from rtlab.planning import plan_case, prepare_plan, tg119_goals, with_goals


def cell(*items):
    c = np.empty((1, len(items)), dtype=object)
    for i, it in enumerate(items):
        c.flat[i] = it
    return c


# (matRad 2 type, matRad 3 class, parameters (matRad 3 order), penalty); doses Gy, volumes %
INTENT = {
    "PTV": [("square deviation", "DoseObjectives.matRad_SquaredDeviation", [60.0], 800.0),
            ("square underdosing", "DoseObjectives.matRad_SquaredUnderdosing", [57.0], 100.0)],
    "Core": [("square overdosing", "DoseObjectives.matRad_SquaredOverdosing", [30.0], 300.0),
             ("max DVH objective", "DoseObjectives.matRad_MaxDVH", [20.0, 40.0], 50.0),
             ("mean", "DoseObjectives.matRad_MeanDose", [12.0], 5.0)],
    "Ring": [("min DVH objective", "DoseObjectives.matRad_MinDVH", [10.0, 80.0], 2.0)],
}


def _masks(shape):
    z, y, x = np.indices(shape)
    c = (np.array(shape) - 1) / 2.0
    r2 = (y - c[1]) ** 2 + (x - c[2]) ** 2
    slab = np.abs(z - c[0]) <= 3
    body = r2 <= (min(shape[1:]) / 2.0 - 0.5) ** 2
    ptv = slab & (r2 <= 9) & (x >= c[2] - 1)
    core = slab & (r2 <= 9) & (x < c[2] - 1)
    ring = slab & (r2 > 16) & (r2 <= 30)
    return {"PTV": ptv, "Core": core & ~ptv, "Ring": ring, "BODY": body}


def write_case(path, layout: int, names=None, intent=INTENT, shape=(12, 20, 20), res=4.0):
    """A small cylinder phantom in matRad layout with the objectives of ``intent``."""
    masks = _masks(shape)
    if names:
        masks = {names.get(k, k): v for k, v in masks.items()}
    ny, nx, nz = shape[1], shape[2], shape[0]
    cube = np.transpose(np.where(masks["BODY"], 1.0, 0.001), (1, 2, 0))
    ct = {"cube": cell(cube), "cubeDim": np.array([[ny, nx, nz]], float),
          "resolution": {"x": res, "y": res, "z": res}, "numOfCtScen": 1.0}
    rows = []
    for i, (name, m) in enumerate(masks.items()):
        idx = (np.flatnonzero(np.transpose(m, (1, 2, 0)).ravel(order="F")) + 1).astype(float)[:, None]
        objs = intent.get({v: k for k, v in (names or {}).items()}.get(name, name), [])
        if not objs:
            obj = np.zeros((0, 0))
        elif layout == 2:
            obj = np.zeros((1, len(objs)), dtype=[("type", object), ("dose", object), ("penalty", object),
                                                  ("volume", object), ("EUD", object)])
            for n, (t2, _, p, pen) in enumerate(objs):
                obj[0, n] = (t2, p[0], pen, p[1] if len(p) > 1 else 0.0, 0.0)
        else:
            obj = cell(*[{"className": t3, "parameters": cell(*p), "penalty": pen} for _, t3, p, pen in objs])
        typ = "TARGET" if name.upper().startswith("PTV") or name == "OuterTarget" else "OAR"
        rows.append([float(i), name, typ, cell(idx), {"Priority": 1.0}, obj])
    cst = np.empty((len(rows), 6), dtype=object)
    for r, row in enumerate(rows):
        for k, v in enumerate(row):
            cst[r, k] = v
    sio.savemat(path, {"ct": ct, "cst": cst})
    return masks


@pytest.fixture(params=[2, 3], ids=["matRad2", "matRad3"])
def layout(request):
    return request.param


def test_kinds_of_both_layouts():
    assert normalise_kind("DoseObjectives.matRad_SquaredOverdosing") == "squared_overdose"
    assert normalise_kind("square overdosing") == "squared_overdose"
    assert normalise_kind("max DVH constraint") == "dvh_max"
    assert normalise_kind("DoseConstraints.matRad_MinMaxDose") == "min_max_dose"
    assert normalise_kind("DoseObjectives.matRad_EUD") == "eud"
    assert normalise_kind("no such thing") is None


def test_objectives_read_the_same_from_both_layouts(tmp_path, layout):
    write_case(tmp_path / "c.mat", layout)
    case = load_matrad(tmp_path / "c.mat")
    objs = matrad_objectives(case)
    got = [(o.structure, o.kind, o.dose, o.volume_pct, o.penalty) for o in objs]
    assert got == [("PTV", "squared_deviation", 60.0, None, 800.0), ("PTV", "squared_underdose", 57.0, None, 100.0),
                   ("Core", "squared_overdose", 30.0, None, 300.0), ("Core", "dvh_max", 20.0, 40.0, 50.0),
                   ("Core", "mean", 12.0, None, 5.0), ("Ring", "dvh_min", 10.0, 80.0, 2.0)]
    assert case.structures["PTV"].prescription == 60.0
    # the loader attaches the objectives read as goals
    assert {str(g) for g in case.goals} == {"PTV D98 >= 57", "Core D2 <= 30", "Core D40 <= 20", "Core Dmean <= 12",
                                            "Ring D80 >= 10"}


def test_goal_mapping_keeps_the_stricter_value():
    from rtlab.io.matrad_objectives import MatradObjective as M
    objs = [M("OAR", "squared_overdose", 30.0, None, None, 1.0, False, "a"),
            M("OAR", "squared_overdose", 25.0, None, None, 1.0, False, "b"),
            M("OAR", "max_dose", 40.0, None, None, 1.0, True, "c"),
            M("T", "min_max_dose", 48.0, 1e6, None, 1.0, True, "d"),
            M("T", "squared_deviation", 50.0, None, None, 1.0, False, "e")]
    goals = goals_from_objectives(objs, {"T": "target", "OAR": "oar"})
    assert goals == [Goal("OAR", "D2", "<=", 25.0), Goal("OAR", "Dmax", "<=", 40.0), Goal("T", "Dmin", ">=", 48.0)]


def test_unknown_objective_warns_and_is_left_out(tmp_path):
    intent = {"PTV": INTENT["PTV"], "Core": [("bogus", "DoseObjectives.matRad_Bogus", [1.0], 1.0)]}
    write_case(tmp_path / "c.mat", 3, intent=intent)
    with pytest.warns(UserWarning, match="matRad_Bogus.*not known"):
        case = load_matrad(tmp_path / "c.mat")
    with pytest.warns(UserWarning, match="not known"):
        kinds = [o.kind for o in matrad_objectives(case)]
    assert kinds == ["squared_deviation", "squared_underdose"]


def test_matrad_objective_equals_matrads_formulas(tmp_path, layout):
    """objective='matrad' on the CT grid: sum of penalty x matRad's function, written out in numpy."""
    masks = write_case(tmp_path / "c.mat", layout)
    case = load_matrad(tmp_path / "c.mat")
    prob = prepare_plan(case, [0, 120, 240], objective="matrad")
    op = prob.operator
    x = np.random.default_rng(0).uniform(0.5, 1.5, op.shape[1]) * prob.x0
    d_rows = op.matvec(x)
    dose = np.zeros(case.grid.size)
    dose[op.ct_index] = d_rows
    dose = dose.reshape(case.grid.shape)

    def vox(name):
        return dose[masks[name]]

    def sq(v):
        return float(np.mean(v * v))

    t, c, r = vox("PTV"), vox("Core"), vox("Ring")
    ref = 800 * sq(t - 60) + 100 * sq(np.minimum(t - 57, 0)) + 300 * sq(np.maximum(c - 30, 0))
    # max DVH (matRad_MaxDVH): voxels between D and D_ref2 (the dose at 40 % volume) are penalised
    d_ref2 = np.sort(c)[::-1][int(np.floor(0.4 * c.size))]
    dev = np.where((c >= 20) & (c <= d_ref2), c - 20, 0.0)
    ref += 50 * float(dev @ dev) / c.size
    ref += 5 * max(float(c.mean()) - 12, 0.0) ** 2  # rtlab's one-sided mean term (documented difference)
    # min DVH: voxels between D_ref2 (the dose at 80 % volume) and D are penalised
    d_ref2 = np.sort(r)[::-1][int(np.ceil(0.8 * r.size)) - 1]
    dev = np.where((r <= 10) & (r >= d_ref2), r - 10, 0.0)
    ref += 2 * float(dev @ dev) / r.size
    val = prob.objective.value_and_gradient(d_rows)[0]
    assert val == pytest.approx(ref, rel=1e-9)
    names = prob.objective.names
    assert names == ["PTV squared_deviation", "PTV squared_underdose", "Core squared_overdose", "Core dvh_max",
                     "Core mean", "Ring dvh_min"]
    assert [tm.weight for tm in prob.objective] == [800, 100, 300, 50, 5, 2]


def test_matrad_objective_plans_and_lowers_its_value(tmp_path):
    write_case(tmp_path / "c.mat", 3)
    case = load_matrad(tmp_path / "c.mat")
    res = plan_case(case, [0, 120, 240], objective="matrad", max_iter=30)
    h = res.history
    assert h.objective[-1] < 0.5 * h.objective[0]


def test_matrad_objective_needs_a_matrad_case():
    from rtlab.phantoms import get_phantom
    with pytest.raises(ValueError, match="not loaded from a matRad file"):
        prepare_plan(get_phantom("tg119_cshape_easy", spacing=5.0), [0, 180], objective="matrad")


def test_tg119_goals_for_a_matrad_cshape(tmp_path):
    names = {"PTV": "OuterTarget"}
    intent = {"OuterTarget": INTENT["PTV"][:1], "Core": [INTENT["Core"][0]]}
    write_case(tmp_path / "TG119.mat", 3, names=names, intent={"PTV": intent["OuterTarget"], "Core": intent["Core"]})
    case = load_matrad(tmp_path / "TG119.mat")
    assert [str(g) for g in case.goals] == ["Core D2 <= 30"]
    auto = with_goals(case, "auto")
    assert auto.meta["goal_set"] == "tg119"
    assert [str(g) for g in auto.goals] == ["OuterTarget D95 >= 50", "OuterTarget D10 <= 55", "Core D10 <= 25"]
    assert with_goals(case, "file").goals == case.goals
    assert with_goals(case, "none").goals == []
    assert case.goals == [Goal("Core", "D2", "<=", 30.0)]  # the input case is unchanged


def test_tg119_goals_refused_for_another_case(tmp_path):
    write_case(tmp_path / "c.mat", 3, names={"Core": "Rectum"}, intent={"PTV": INTENT["PTV"]})
    case = load_matrad(tmp_path / "c.mat")
    assert tg119_goals(case) is None
    assert with_goals(case, "auto").meta["goal_set"] == "file"
    with pytest.raises(ValueError, match="not a TG-119 case"):
        with_goals(case, "tg119")
    with pytest.raises(ValueError, match="goals must be one of"):
        with_goals(case, "tg-119")


def test_builtin_tg119_phantoms_keep_their_goals():
    from rtlab.phantoms import get_phantom
    case = get_phantom("tg119_cshape_hard", spacing=5.0)
    assert with_goals(case, "tg119").goals == case.goals
    assert any(g.value == 10.0 for g in case.goals)  # the hard core goal, not the easy one


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rtlab.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_score_reports_the_goal_set(tmp_path):
    write_case(tmp_path / "TG119.mat", 3, names={"PTV": "OuterTarget"},
               intent={"PTV": INTENT["PTV"][:1], "Core": [INTENT["Core"][0]]})
    case = load_matrad(tmp_path / "TG119.mat")
    dose = np.where(case.structures["OuterTarget"].mask, 52.0, 20.0).astype(np.float32)
    np.savez(tmp_path / "d.npz", dose=dose)
    r = _cli("score", "--matrad", str(tmp_path / "TG119.mat"), "--dose", str(tmp_path / "d.npz"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["goal_set"] == "tg119"
    got = {g["goal"]: g["passed"] for g in out["goals"]}
    assert got == {"OuterTarget D95 >= 50": True, "OuterTarget D10 <= 55": True, "Core D10 <= 25": True}
    r = _cli("score", "--matrad", str(tmp_path / "TG119.mat"), "--dose", str(tmp_path / "d.npz"), "--json",
             "--goals", "file")
    assert [g["goal"] for g in json.loads(r.stdout)["goals"]] == ["Core D2 <= 30"]


def test_cli_refuses_bad_goal_and_objective_choices(tmp_path):
    r = _cli("plan", "--phantom", "sphere", "--goals", "tg119", "--json")
    assert r.returncode == 2 and "not a TG-119 case" in r.stderr and "Traceback" not in r.stderr
    r = _cli("plan", "--phantom", "tg119_cshape_easy", "--objective", "matrad", "--json")
    assert r.returncode == 2 and "--matrad FILE" in r.stderr and "Traceback" not in r.stderr


def test_optimizer_panel_offers_matrad_only_for_matrad_cases(tmp_path):
    from rtlab.phantoms import get_phantom
    from rtlab.widgets import OptimizerPanel
    write_case(tmp_path / "c.mat", 3)
    assert "matrad" in OptimizerPanel(load_matrad(tmp_path / "c.mat")).objective.options
    assert "matrad" not in OptimizerPanel(get_phantom("sphere", spacing=5.0)).objective.options
