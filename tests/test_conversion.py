"""Standard-plan conversion to specific machines with QA and regeneration (patent 001, step 4, claims 5-7, 13)."""

import numpy as np
import pytest

from rtlab.dose import build_influence
from rtlab.dose.machines import TreatmentMachine, get_machine, make_source
from rtlab.methods.conversion import (DoseFidelity, MeanDoseMin, rows_of_structures, conversion_objective, convert_plan,
                                      convert_to_machines, leaf_row_parameterisation)
from rtlab.mlc import MLC
from rtlab.optimize import Objective, SquaredOverdose, SquaredUnderdose, rows_for, solve
from rtlab.phantoms import get_phantom

ANGLES = [0.0, 72.0, 144.0, 216.0, 288.0]


@pytest.fixture(scope="module")
def plan():
    """Coarse TG-119 C-shape (6 mm voxels), 5 beams, a standard plan on the standard machine."""
    case = get_phantom("tg119_cshape_easy", spacing=6.0)
    im = build_influence(case, ANGLES, progress=False)  # default machine = the standard source
    S = case.structures
    r = lambda n: rows_for(S[n], im.voxel_index)  # noqa: E731
    obj = Objective([SquaredUnderdose(r("PTV"), 50, 100, "ptv_min"), SquaredOverdose(r("PTV"), 53, 50, "ptv_max"),
                     SquaredOverdose(r("Core"), 20, 10, "core"), SquaredOverdose(r("Body"), 30, 1, "body")])
    x = solve(im.operator(), obj, max_iter=80).x
    return case, im, x


@pytest.fixture(scope="module")
def converted(plan):
    case, im, x = plan
    return convert_to_machines(case, x, im, ["linac_10mm_hard", "linac_5mm_soft"])


def _d95(dose, case):
    from rtlab.metrics import dose_at_volume

    return float(dose_at_volume(dose, case.structures["PTV"], pct=95))


def test_conversion_to_the_standard_machine_returns_the_plan_unchanged(plan):
    case, im, x = plan
    res = convert_plan(case, x, im, "standard")
    assert res.method == "as_is" and not res.converted and res.passed and res.coincidence.coincide
    assert np.array_equal(res.x, x) and res.influence is im and res.attempts == []
    np.testing.assert_array_equal(res.dose, im.dose(x))


def test_objective_is_zero_at_the_standard_dose(plan):
    case, im, x = plan
    d = im.dose_vector(x)
    obj, points = conversion_objective(case, im, d)
    v, g = obj.value_and_gradient(d)
    assert v == 0.0 and not np.any(g)
    assert {(p["structure"], p["metric"]) for p in points} >= {("PTV", "D95"), ("PTV", "D2"), ("Core", "D10"),
                                                                ("Core", "Dmean")}
    assert obj.value(0.9 * d) > 0 and obj.value(1.1 * d) > 0


def test_extra_terms_have_correct_gradients():
    rng = np.random.default_rng(3)
    d = rng.uniform(0, 10, 40)
    rows = np.arange(5, 35)
    for term in (DoseFidelity(rows, rng.uniform(0, 10, rows.size), 2.0), MeanDoseMin(rows, 8.0, 3.0)):
        v, g = term.value_and_gradient(d)
        assert v > 0 and not np.any(g[:5]) and not np.any(g[35:])
        e = np.zeros_like(d)
        for i in (5, 17, 34):
            e[:] = 0
            e[i] = 1e-6
            fd = (term.value(d + e) - term.value(d - e)) / 2e-6
            assert fd == pytest.approx(g[i], rel=1e-5, abs=1e-9)


def test_leaf_rows_average_bixel_rows_in_pairs(plan):
    case, im, x = plan
    # same leaf width, grid alignment: identity
    P, y0, _ = leaf_row_parameterisation(im, x, "generic_5mm_60", "grid")
    np.testing.assert_allclose(P @ y0, x, rtol=1e-12)
    # 10 mm leaves on 5 mm bixels, grid alignment: each bixel gets the mean of its row pair (numpy reference)
    P, y0, layout = leaf_row_parameterisation(im, x, "generic_10mm_40_noid", "grid")
    xr = P @ y0
    for b, sl in zip(im.beams, im.beamlet_slices):
        f = b.bixels.to_map(x[sl])
        f = np.vstack([f, np.zeros((f.shape[0] % 2, f.shape[1]))])
        pair = 0.5 * (f[0::2] + f[1::2])
        expect = np.repeat(pair, 2, axis=0)[: b.bixels.shape[0]]
        np.testing.assert_allclose(xr[sl], expect[b.bixels.mask], rtol=1e-12, atol=1e-15)
    assert sum(int((lay["var"] >= 0).sum()) for lay in layout) == y0.size < x.size


def test_conversion_passes_gamma_and_keeps_d95(plan, converted):
    case, im, x = plan
    d_std = im.dose(x)
    for name, res in converted.items():
        assert res.method == "fluence" and res.converted and not res.coincidence.coincide
        assert 1 <= res.n_attempts <= 3
        if res.passed:
            assert res.qa.pass_rates["3%/3mm"] >= 0.95 and res.reasons == []
        else:  # legitimately failed: the report must say why, with the attempt history
            assert res.n_attempts == 3 and any("attempt 3" in r for r in res.reasons)
        assert abs(_d95(res.dose, case) - _d95(d_std, case)) <= 1.5  # 3 % of 50 Gy
        # the converted plan lives on the target leaves: x = P y with y the reported leaf-row maps
        P, _, layout = leaf_row_parameterisation(im, x, get_machine(name).mlc)
        y = np.zeros(P.shape[1])
        for lay, m in zip(layout, res.leaf_fluence):
            y[lay["var"][lay["var"] >= 0]] = m[lay["var"] >= 0]
        np.testing.assert_allclose(P @ y, res.x, rtol=1e-10, atol=1e-12)
        assert res.influence.machine.name == get_machine(name).source.name
    # the soft machine's plain recalculation fails gamma; re-optimisation repairs it
    soft = converted["linac_5mm_soft"]
    assert soft.recalc_qa.pass_rates["3%/3mm"] < 0.9 < soft.qa.pass_rates["3%/3mm"]


def test_failed_qa_regenerates_and_reports_reasons(plan):
    case, im, x = plan
    seen = []
    res = convert_plan(case, x, im, "linac_10mm_hard", max_iter=10, max_attempts=2, callback=seen.append,
                       qa_kwargs={"thresholds": {"3%/3mm": 1.0, "2%/2mm": 1.0}})
    assert res.passed is False and res.n_attempts == 2 and len(seen) == 2
    assert "fidelity" in " ".join(res.attempts[1]["changes"])
    text = "\n".join(res.reasons)
    assert "gamma 3%/3mm pass rate" in text and "attempt 1:" in text and "attempt 2:" in text


def test_direct_aperture_conversion_honours_the_mlc(plan):
    case, im, x = plan
    res = convert_plan(case, x, im, "linac_10mm_hard", method="dao", max_attempts=2)
    assert res.method == "dao" and res.segments is not None and sum(len(s) for s in res.segments) > 5
    for segs in res.segments:
        for s in segs:
            assert s.mu >= 0
            assert not np.any((s.left[:-1] > s.right[1:] + 1e-9) | (s.left[1:] > s.right[:-1] + 1e-9))
    assert res.qa.pass_rates["3%/3mm"] >= 0.9
    # the delivered leaf maps are sums of the weighted apertures
    for m, segs in zip(res.leaf_fluence, res.segments):
        acc = sum((s.mu * s.open for s in segs), np.zeros_like(m))
        np.testing.assert_allclose(m, np.where(m != 0, acc, 0.0), rtol=1e-9, atol=1e-12)


def test_bad_inputs(plan):
    case, im, x = plan
    with pytest.raises(ValueError, match="x has 3 entries"):
        convert_plan(case, x[:3], im, "linac_10mm_hard")
    bad = x.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        convert_plan(case, bad, im, "linac_10mm_hard")
    with pytest.raises(ValueError, match="negative"):
        convert_plan(case, -x, im, "linac_10mm_hard")
    with pytest.raises(ValueError, match="zero everywhere"):
        convert_plan(case, 0 * x, im, "linac_10mm_hard")
    with pytest.raises(TypeError, match="InfluenceMatrix"):
        convert_plan(case, x, im.matrix, "linac_10mm_hard")
    with pytest.raises(ValueError, match="different CT grid"):
        convert_plan(get_phantom("tg119_cshape_easy", spacing=8.0), x, im, "linac_10mm_hard")
    with pytest.raises(ValueError, match="unknown machine"):
        convert_plan(case, x, im, "linac_9000")
    with pytest.raises(ValueError, match="method"):
        convert_plan(case, x, im, "linac_10mm_hard", method="magic")
    with pytest.raises(ValueError, match="max_attempts"):
        convert_plan(case, x, im, "linac_10mm_hard", max_attempts=0)
    with pytest.raises(ValueError, match="tighten"):
        convert_plan(case, x, im, "linac_10mm_hard", tighten=1.0)
    with pytest.raises(ValueError, match="not the standard machine"):
        convert_plan(case, x, im, "linac_10mm_hard", standard="linac_5mm_soft")
    tiny = TreatmentMachine("tiny_mlc", make_source("t", (0.3, 0.016, 0.0051), 0.0046), MLC("tiny", 5.0, 6, 400.0))
    with pytest.raises(ValueError, match="cannot deliver"):
        convert_plan(case, x, im, tiny)
    with pytest.raises(ValueError, match="empty"):
        convert_to_machines(case, x, im, [])
    with pytest.raises(ValueError, match="duplicate"):
        convert_to_machines(case, x, im, ["linac_5mm_soft", "linac_5mm_soft"])
    with pytest.raises(ValueError, match="isodose_levels"):
        conversion_objective(case, im, im.dose_vector(x), isodose_levels=(2.0,))
    assert set(rows_of_structures(case, im)) == set(case.structures)


def test_dose_mimicking_from_the_first_attempt_raises_gamma(plan):
    """``mimic_weight`` (default 10) adds the voxel-wise fidelity term from the first attempt; 0 is
    patent 001's claim-5 objective alone. One attempt of 10 iterations each (notebook 08's budget)
    on the soft machine, whose plain recalculation fails gamma: mimicking matches the standard dose
    better, voxel by voxel, and the objective holds the fidelity term from the start."""
    case, im, x = plan
    kw = dict(max_iter=10, max_attempts=1)
    claim5 = convert_plan(case, x, im, "linac_5mm_soft", mimic_weight=0.0, **kw)
    mimic = convert_plan(case, x, im, "linac_5mm_soft", **kw)
    d_std = im.dose(x)
    rms = lambda d: float(np.sqrt(np.mean((d - d_std)[d_std > 0.1 * d_std.max()] ** 2)))  # noqa: E731
    print("2%/2mm", claim5.qa.pass_rates["2%/2mm"], mimic.qa.pass_rates["2%/2mm"], "rms", rms(claim5.dose), rms(mimic.dose))
    assert mimic.qa.pass_rates["2%/2mm"] > claim5.qa.pass_rates["2%/2mm"]
    assert rms(mimic.dose) < 0.8 * rms(claim5.dose)
    with pytest.raises(ValueError, match="mimic_weight"):
        convert_plan(case, x, im, "linac_5mm_soft", mimic_weight=-1.0)


def test_qa_of_the_deliverable_plan(plan):
    """The kept plan's leaf-row maps sequenced for the target MLC, the dose re-computed from the
    delivered fluence and QA'd (issue #20). The sliding window delivers each map exactly, so its
    deliverable dose is the converted dose; step-and-shoot quantises the maps to 10 levels, which
    moves the dose (measured: up to 2.4-2.5 Gy on this case) and may fail QA; ``passed`` needs both."""
    case, im, x = plan
    kw = dict(max_iter=10, max_attempts=1)
    sl = convert_plan(case, x, im, "linac_5mm_soft", **kw)  # default deliverable='sliding'
    assert sl.deliverable["method"] == "sliding" and sl.deliverable["max_dose_diff_gy"] < 1e-9
    assert sl.deliverable_qa.pass_rates == sl.qa.pass_rates and sl.deliverable["segments"] > len(im.beams)
    st = convert_plan(case, x, im, "linac_5mm_soft", deliverable="step", **kw)
    assert st.deliverable["method"] == "step" and st.deliverable["max_dose_diff_gy"] > 0.1
    assert st.deliverable["segments"] <= 10 * len(im.beams) * 4  # a few apertures per level and beam
    # the same conversion (deterministic): the plan QA equals the sliding run's
    assert st.qa.pass_rates == pytest.approx(sl.qa.pass_rates, abs=1e-12)
    assert st.passed == (bool(st.qa.passed) and bool(st.deliverable_qa.passed))
    if not st.deliverable_qa.passed:
        assert any(r.startswith("deliverable plan (step") for r in st.reasons)
    none = convert_plan(case, x, im, "linac_5mm_soft", deliverable=None, **kw)
    assert none.deliverable is None and none.deliverable_qa is None and none.passed == none.qa.passed
