"""Deliverable dose after leaf sequencing (paper 003, sec. 3): exact reproduction, MU, quantisation bound."""

import numpy as np
import pytest

from rtlab.compare import score
from rtlab.dose import build_influence, mu_per_unit_fluence
from rtlab.methods import sequencing as sq
from rtlab.methods.deliverable import beam_fluence_maps, sequence_plan
from rtlab.phantoms import get_phantom

FX = 5


@pytest.fixture(scope="module")
def setup():
    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    im = build_influence(case, [0.0, 120.0, 240.0], progress=False, cutoff_mm=20.0)
    k = mu_per_unit_fluence(im.machine)
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 1.0, im.shape[1]) * 0.05
    return case, im, k, x


def test_fluence_maps_follow_the_bixel_grids(setup):
    _, im, _, x = setup
    maps = beam_fluence_maps(im, x)
    for b, sl, m in zip(im.beams, im.beamlet_slices, maps):
        assert m.shape == b.bixels.shape  # rows v (across leaves), columns u (along travel)
        assert np.array_equal(m[b.bixels.mask], x[sl])
        assert np.all(m[~b.bixels.mask] == 0)


def test_plan_on_mlc_levels_reproduces_its_dose_after_step_and_shoot(setup):
    _, im, k, _ = setup
    step_mu = 2.0  # MU per fraction
    rng = np.random.default_rng(7)
    levels = rng.integers(0, 6, im.shape[1]).astype(float)
    levels[0] = 5
    x = levels * step_mu * FX / k  # weights whose MU maps are multiples of step_mu
    res = sequence_plan(im, x, "generic_5mm_60", "step", fractions=FX, step_mu=step_mu)
    np.testing.assert_allclose(res.x_delivered, x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.dose, res.dose_optimised, rtol=1e-6, atol=1e-9)
    assert res.n_segments == sum(len(b.sequence.segments) for b in res.beams) > 0
    assert all(sq.check_segments(b.sequence) == [] for b in res.beams)


def test_mu_per_beam_equals_the_sequencing_result(setup):
    _, im, k, x = setup
    maps_mu = [m * k / FX for m in beam_fluence_maps(im, x)]
    # infinitely fast sliding window: MU = max_j sum_k (f_k - f_{k-1})^+ of each map (5 mm leaves = bixels)
    res = sequence_plan(im, x, "generic_5mm_60", "sliding", fractions=FX, finite_speed=False)
    expect = [sq.field_mu_lower_bound(m) for m in maps_mu]
    np.testing.assert_allclose(res.mu_per_beam, expect, rtol=1e-10)
    assert res.mu_total == pytest.approx(sum(expect))
    assert res.mu == pytest.approx(res.mu_per_beam)  # what compare.score sums
    # finite leaf speed adds transit MU: h = dx / v * rate per bixel crossed
    slow = sequence_plan(im, x, "generic_5mm_60", "sliding", fractions=FX)
    assert np.all(slow.mu_per_beam > res.mu_per_beam)
    assert np.all(slow.mu_per_beam == [b.sequence.trail[:, -1].max() for b in slow.beams])
    # step-and-shoot: MU of a beam = sum of its segments' MU
    st = sequence_plan(im, x, "generic_5mm_60", "step", fractions=FX, n_levels=8)
    np.testing.assert_allclose(st.mu_per_beam, [m.sum() for m in st.segment_mu])
    assert st.segments_per_beam == [len(m) for m in st.segment_mu]


def test_sliding_window_is_exact_with_matching_leaves(setup):
    _, im, _, x = setup
    res = sequence_plan(im, x, "generic_5mm_60", "sliding", fractions=FX)
    np.testing.assert_allclose(res.x_delivered, x, rtol=1e-10)
    np.testing.assert_allclose(res.dose, res.dose_optimised, rtol=1e-6, atol=1e-9)


def test_step_and_shoot_differs_by_the_quantisation_only(setup):
    _, im, k, x = setup
    step_mu = 0.5
    res = sequence_plan(im, x, "generic_5mm_60", "step", fractions=FX, step_mu=step_mu, on="dose")
    step_w = step_mu * FX / k
    dx = res.x_delivered - x
    assert np.abs(dx).max() <= step_w / 2 * (1 + 1e-9)
    assert np.abs(dx).max() > 0.1 * step_w  # the quantisation is real
    # |A (x' - x)|_i <= step/2 * sum_j A_ij = step/2 * (A 1)_i  (A >= 0: narrow matrix plus node path)
    bound = step_w / 2 * im.matvec(np.ones(im.shape[1]))
    diff = im.matvec(dx)
    assert np.all(np.abs(diff) <= bound * (1 + 1e-6) + 1e-12)
    np.testing.assert_allclose(im.to_grid(diff, on="dose"), res.dose - res.dose_optimised, atol=1e-6)


def test_wide_leaves_deliver_one_value_across_each_leaf(setup):
    _, im, k, x = setup
    res = sequence_plan(im, x, "generic_10mm_60", "sliding", fractions=FX, finite_speed=False)
    for b, bd in zip(im.beams, res.beams):
        d = bd.delivered_mu
        # 10 mm leaves over 5 mm bixels, grid alignment: rows (0, 1), (2, 3), ... share a leaf
        n2 = d.shape[0] // 2 * 2
        assert np.allclose(d[0:n2:2], d[1:n2:2])
        # the leaf gets the area-weighted mean of its two rows, so each column's total is kept
        np.testing.assert_allclose(d[:n2].sum(axis=0), bd.fluence_mu[:n2].sum(axis=0), rtol=1e-10, atol=1e-12)


def test_isocentre_alignment_averages_neighbouring_rows(setup):
    _, im, k, x = setup
    res = sequence_plan(im, x, "generic_5mm_60", "sliding", fractions=FX, finite_speed=False,
                        leaf_alignment="isocentre")
    bd = res.beams[0]
    f = bd.fluence_mu
    # bixel rows are centred on multiples of 5 mm, leaf edges on multiples of 5 mm: each leaf covers
    # half of two bixel rows, each bixel half of two leaves
    leaf = 0.5 * (np.r_[np.zeros((1, f.shape[1])), f] + np.r_[f, np.zeros((1, f.shape[1]))])
    expect = 0.5 * (leaf[:-1] + leaf[1:])
    np.testing.assert_allclose(bd.delivered_mu, expect, rtol=1e-10, atol=1e-12)


def test_report_summary_and_compare_mu_column(setup):
    case, im, _, x = setup
    res = sequence_plan(im, x, "generic_5mm_60", "step", fractions=FX, n_levels=5)
    rep = res.report(case)
    assert list(rep.index) == ["PTV"]
    r = rep.loc["PTV"]
    assert r["ci_loss"] == pytest.approx(r["ci_paddick_optimised"] - r["ci_paddick_deliverable"])
    assert r["d95_loss"] == pytest.approx(r["d95_optimised"] - r["d95_deliverable"])
    s = res.summary(case)
    assert s["mu_total"] == pytest.approx(res.mu_total, abs=1e-3)
    assert s["segments"] == res.n_segments
    assert s["deliverable_ci_paddick"] == pytest.approx(r["ci_paddick_deliverable"], abs=1e-4)
    df = score({"deliverable": res}, case)
    assert np.allclose(df["mu"], res.mu_total)


def test_bad_input(setup):
    _, im, _, x = setup
    with pytest.raises(ValueError, match="beamlets"):
        sequence_plan(im, x[:-1])
    with pytest.raises(ValueError, match="negative"):
        sequence_plan(im, -x)
    with pytest.raises(ValueError, match="method"):
        sequence_plan(im, x, method="vmat")
    with pytest.raises(ValueError, match="leaf_alignment"):
        sequence_plan(im, x, leaf_alignment="left")
    with pytest.raises(ValueError, match="zero"):
        sequence_plan(im, np.zeros_like(x))
    with pytest.raises(ValueError, match="unknown MLC"):
        sequence_plan(im, x, machine="nope")
    with pytest.raises(TypeError, match="InfluenceMatrix"):
        sequence_plan(np.eye(3), x)
