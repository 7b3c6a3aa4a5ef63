"""The planning pipeline (rtlab.planning) and `rtlab plan`: operator algebra against references,
a coarse C-shape plan that beats its preliminary plan, review, and the command line."""

import json

import numpy as np
import pytest

from rtlab import metrics
from rtlab.cli import main
from rtlab.dose import build_influence
from rtlab.geometry import resample
from rtlab.planning import PlanOperator, build_objective, plan_case, score_summary, trilinear_matrix

SPACING = 6.0
ANGLES = [0.0, 72.0, 144.0, 216.0, 288.0]


#: The ``case`` fixture's phantom (tests/conftest.py).
CASE = {"spacing": SPACING}


@pytest.fixture(scope="module")
def plan(case):
    return plan_case(case, ANGLES, "conformity", max_iter=40)


@pytest.fixture(scope="module")
def coarse(case):
    """Influence matrix on a 10 mm dose grid (CT grid 6 mm)."""
    return build_influence(case, ANGLES[:3], dose_grid_mm=10.0, progress=False)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- operator ----------------------------------------------------------------------------------
def test_trilinear_matrix_equals_resample(coarse):
    rng = np.random.default_rng(0)
    g, ct = coarse.grid, coarse.ct_grid
    vals = np.zeros(g.size)
    vals[coarse.voxel_index] = rng.random(coarse.voxel_index.size)
    tgt = np.flatnonzero(coarse.ct_mask.ravel())
    R = trilinear_matrix(g, coarse.voxel_index, ct, tgt)
    ref = resample(vals.reshape(g.shape), g, ct, order=1).ravel()[tgt]
    np.testing.assert_allclose(R @ vals[coarse.voxel_index], ref, rtol=1e-5, atol=1e-6)
    # partition of unity: every row's weights sum to 1 inside the grid
    np.testing.assert_allclose(np.asarray(R.sum(axis=1)).ravel(), 1.0, atol=1e-5)


def test_plan_operator_matches_influence_dose_and_is_adjoint(case, coarse):
    rng = np.random.default_rng(1)
    roi = np.zeros(case.grid.shape, bool)
    roi[:, : case.grid.shape[1] // 2] = True
    op = PlanOperator(coarse, roi=roi)
    assert op.n_dose == coarse.shape[0] and op.n_ct == int((roi & coarse.ct_mask).sum())
    x = rng.random(op.shape[1])
    e = op.matvec(x)
    ct_dose = coarse.dose(x, on="ct").ravel()
    np.testing.assert_allclose(e[: op.n_ct], ct_dose[op.ct_index], rtol=1e-4, atol=1e-5 * ct_dose.max())
    np.testing.assert_allclose(e[op.n_ct:], coarse.matvec(x), rtol=1e-4, atol=1e-5 * ct_dose.max())
    np.testing.assert_allclose(op.dose_ct(x), coarse.dose(x, on="ct"), rtol=1e-4, atol=1e-5 * ct_dose.max())
    g = rng.standard_normal(op.shape[0])
    lhs = float(e @ g)
    rhs = float(x @ op.rmatvec(g))
    assert rhs == pytest.approx(lhs, rel=1e-4)
    # row selection: CT rows of the PTV are exactly its evaluated voxels
    ptv = case.structures["PTV"].mask & roi
    rows = op.ct_rows(ptv)
    assert set(op.ct_index[rows]) == set(np.flatnonzero(ptv.ravel()))


def test_objective_recipes_have_their_terms(case, coarse):
    op = PlanOperator(coarse)
    obj, info = build_objective(case, op, "conformity")
    assert {"PTV conformity", "PTV coverage", "PTV hot spots", "max dose", "Core overdose", "guard"} <= set(obj.names)
    obj, info = build_objective(case, op, "conformity", falloff=1.0)
    names = [lv.name for lv in info["levels"]]
    assert names[0] == "PTV" and names[-1].startswith("low_dose_80")
    assert info["levels"][-1].distance_mm == pytest.approx(10.0)  # (50 - 40) Gy / 1 Gy/mm
    assert "conformity:low_dose_80%" in obj.names
    with pytest.warns(UserWarning, match="no voxel"):  # a 5 mm ring holds no 6 mm voxel centre
        build_objective(case, op, "conformity", falloff=2.0)
    obj, _ = build_objective(case, op, "quadratic")
    assert "PTV deviation" in obj.names and "normal tissue" in obj.names
    with pytest.raises(ValueError, match="objective must be one of"):
        build_objective(case, op, "linear")
    with pytest.raises(ValueError, match="unknown recipe entry"):
        build_objective(case, op, "conformity", recipe={"nope": 1})
    with pytest.raises(ValueError, match="falloff"):
        build_objective(case, op, "conformity", falloff=-1.0)


# -- pipeline ----------------------------------------------------------------------------------
def test_plan_improves_conformity_over_the_preliminary_plan(case, plan):
    assert plan.dose.shape == case.grid.shape and plan.dose.dtype == np.float32
    body = case.structures.body
    ptv = case.structures["PTV"]
    ci0 = float(metrics.paddick_ci(plan.initial_dose(), ptv, rx=50.0, body=body))
    ci = float(metrics.paddick_ci(plan.dose, ptv, rx=50.0, body=body))
    assert ci == pytest.approx(plan.scores["ci_paddick"])
    assert ci > ci0 + 0.2 and ci > 0.6
    assert plan.scores["structures"]["PTV"]["D95"] > 45.0
    assert plan.scores["structures"]["Core"]["D10"] < plan.scores["structures"]["PTV"]["D95"]
    t = plan.timings
    assert t["iterations"] >= 1 and t["build_s"] > 0 and t["optimize_s"] > 0
    assert len(plan.history) == t["iterations"] + 1
    assert plan.mu.shape == (5,) and np.all(plan.mu > 0)
    # MU per fraction = the MU of the weights of one fraction (a 30-fraction course)
    np.testing.assert_allclose(plan.mu_per_fraction(30), plan.influence.beam_mu(plan.x / 30), rtol=1e-12)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_fractions must be a positive int"):
            plan.mu_per_fraction(bad)
    # the dose is the engine's dose of the optimised weights, not rescaled
    np.testing.assert_allclose(plan.dose, plan.influence.dose(plan.x, on="ct"), rtol=1e-4, atol=1e-3)
    table = plan.score_table()
    row = table[(table.structure == "PTV") & (table.metric == "CI_paddick")]
    assert float(row.value.iloc[0]) == pytest.approx(ci)


def test_review_session_starts_optimised_and_reoptimises(plan):
    s = plan.review(max_iter=5)
    assert s.state == "optimised" and s.result is plan.result
    s.edit(weights={"PTV coverage": 0.2})
    r = s.reoptimise(start="optimised")
    assert r.iterations <= 5 and s.state == "optimised"
    assert s.accept() is r and [e["action"] for e in s.log][-3:] == ["edit", "reoptimise", "accept"]


def test_callback_can_stop_and_bad_arguments(case):
    seen = []
    res = plan_case(case, ANGLES[:3], dose_grid_mm=12.0, callback=lambda r: seen.append(r["iteration"]) or len(seen) >= 3)
    assert res.timings["status"] == "cancelled" and res.iterations == 3 and seen == [1, 2, 3]
    with pytest.raises(TypeError, match="case must be"):
        plan_case("tg119", ANGLES)
    with pytest.raises(ValueError, match="objective"):
        plan_case(case, ANGLES, "ipopt")
    with pytest.raises(ValueError, match="angles is empty"):
        plan_case(case, [])
    with pytest.raises(ValueError, match="bixel_mm"):
        plan_case(case, ANGLES, bixel_mm=0)


def test_score_summary_needs_a_target(case):
    from rtlab.case import Case
    from rtlab.geometry import StructureSet

    ss = StructureSet(case.grid)
    ss.add(case.structures["Body"])
    bare = Case("bare", case.grid, case.ct, ss)
    with pytest.raises(ValueError, match="no target"):
        score_summary(bare, np.zeros(case.grid.shape))


# -- command line ------------------------------------------------------------------------------
def test_cli_plan_json_and_out_round_trip(capsys, tmp_path, case):
    f = tmp_path / "plan.npz"
    code, out, err = run(capsys, "plan", "--phantom", "tg119_cshape_easy", "--spacing", SPACING, "--angles",
                         "0,120,240", "--grid", 12, "--max-iter", 15, "--json", "--out", f)
    assert code == 0, err
    res = json.loads(out)
    for k in ("ci_paddick", "ci_rtog", "gi", "hi", "structures", "build_s", "optimize_s", "iterations", "mu_total"):
        assert k in res
    assert set(res["structures"]["PTV"]) == {"D95", "D98", "D2", "D10", "Dmean", "Dmax"}
    # iterations: all runs; the default recipe's goal re-weighting (#18) adds at most 3 rounds of
    # 0.5 * max_iter to the first run's 15
    assert 1 <= res["iterations"] <= 15 + 3 * 8 and res["mu_total"] > 0
    code, out2, err = run(capsys, "score", "--dose", f, "--phantom", "tg119_cshape_easy", "--spacing", SPACING, "--json")
    assert code == 0, err
    sc = json.loads(out2)
    for k in ("ci_paddick", "ci_rtog", "gi", "hi"):
        assert sc[k] == pytest.approx(res[k], rel=1e-9, abs=1e-12)
    assert sc["structures"] == res["structures"]
    # text output: timings and the score table
    code, out3, err = run(capsys, "plan", "--phantom", "tg119_cshape_easy", "--spacing", SPACING, "--angles",
                          "0,120,240", "--grid", 12, "--max-iter", 3, "--objective", "quadratic")
    assert code == 0, err
    assert "optimise" in out3 and "CI_paddick" in out3


@pytest.mark.parametrize("argv, msg", [
    (["--objective", "ipopt"], "--objective"),
    (["--falloff", "-2"], "--falloff"),
    (["--grid", "0"], "--grid"),
    (["--bixel", "nan"], "--bixel"),
    (["--out", "dose.txt"], ".npz"),
    (["--angles", "a,b"], "--angles"),
])
def test_cli_plan_bad_arguments_exit_2(capsys, argv, msg):
    code, out, err = run(capsys, "plan", "--phantom", "tg119_cshape_easy", "--spacing", "12", *argv)
    assert code == 2 and msg in err and out == ""


def test_cli_plan_unknown_phantom_and_missing_source(capsys):
    code, _, err = run(capsys, "plan", "--phantom", "no_such_phantom")
    assert code == 2 and "unknown phantom" in err
    with pytest.raises(SystemExit) as e:
        main(["plan"])
    assert e.value.code == 2


def test_control_points_add_their_term(case):
    p = plan_case(case, ANGLES[:3], control_points=True, dose_grid_mm=12.0, max_iter=5)
    pts = p.info["control_points"]
    assert pts is not None and pts.n_control > 0
    term = p.objective["control points"]
    # the term sees exactly the evaluated control-point voxels, with the bounds of the method
    flat = p.operator.ct_index[term.rows]
    assert set(flat) <= set(pts.flat_index())
    from rtlab.methods.control_points import ControlPointTerm

    e = p.operator.matvec(p.x)
    cp = ControlPointTerm.from_control_points(pts, 50.0, 45.0)
    full = np.zeros(case.grid.size)
    full[p.operator.ct_index] = e[: p.operator.n_ct]
    keep = np.isin(cp.voxel_index, flat)
    ref = ControlPointTerm(cp.voxel_index[keep], cp.inside[keep], cp.bound[keep], weight=term.weight)
    assert term.value(e) == pytest.approx(ref.value(full), rel=1e-9, abs=1e-15)
    g = term.gradient(e)
    np.testing.assert_allclose(g[term.rows], ref.gradient(full)[flat], rtol=1e-9, atol=1e-15)


def test_control_points_on_every_level():
    """Patent 000, para. 179-181: every target gets control points at its own dose; an outside
    point of a lower level that lies in a higher-dose target is dropped."""
    from rtlab.methods.control_points import ControlPointTerm
    from rtlab.phantoms import get_phantom
    from rtlab.planning import prepare_plan

    mt = get_phantom("tg119_multitarget", spacing=6.0)
    prob = prepare_plan(mt, ANGLES[:3], control_points=True, dose_grid_mm=12.0)
    by = prob.info["control_points_by_target"]
    targets = [s for s in mt.structures.values() if s.kind == "target"]
    assert set(by) == {t.name for t in targets} and all(by[t.name].n_control > 0 for t in targets)
    assert prob.info["control_points"] is by[targets[0].name]
    names = set(prob.objective.names)
    assert "control points" in names and all(f"control points {t.name}" in names for t in targets[1:])
    op = prob.operator
    for t in targets[1:]:
        term = prob.objective[f"control points {t.name}"]
        d = t.prescription
        higher = np.zeros(mt.grid.shape, bool)
        for u in targets:
            if u.prescription > d:
                higher |= u.mask
        cp = ControlPointTerm.from_control_points(by[t.name], d, 0.9 * d)
        rows = op.ct_rows_of_flat(cp.voxel_index)
        expect = (rows >= 0) & (cp.inside | ~higher.ravel()[cp.voxel_index])
        assert sorted(op.ct_index[term.rows]) == sorted(cp.voxel_index[expect])
    # a lower level's outside points inside a higher-dose target are dropped: a synthetic higher
    # target covering a 3-voxel shell around the Superior target removes all of its outside points
    sup = mt.structures["SuperiorTarget"]
    cen = mt.structures["CenterTarget"]
    from scipy.ndimage import binary_dilation

    grown = cen.mask | (binary_dilation(sup.mask, iterations=3) & ~sup.mask)
    from dataclasses import replace as _replace
    mt2 = _replace(mt, structures=mt.structures.__class__(
        mt.grid, [(_replace(s, mask=grown) if s.name == "CenterTarget" else s) for s in mt.structures.values()]))
    prob2 = prepare_plan(mt2, ANGLES[:3], control_points=True, dose_grid_mm=12.0)
    cp2 = ControlPointTerm.from_control_points(prob2.info["control_points_by_target"]["SuperiorTarget"], 25.0, 22.5)
    assert (~cp2.inside).any() and (~cp2.inside & grown.ravel()[cp2.voxel_index]).all()
    if cp2.inside.any():
        kept = set(prob2.operator.ct_index[prob2.objective["control points SuperiorTarget"].rows])
        assert kept <= set(cp2.voxel_index[cp2.inside])
    else:  # every point was outside, in the higher target: no term is left
        assert "control points SuperiorTarget" not in prob2.objective.names
    assert "control points SuperiorTarget" in prob.objective.names  # the same points without the overlap
