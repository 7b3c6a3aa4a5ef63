"""Leaf sequencing: MU bounds, exact fluence reproduction, MLC constraints (paper 003)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from rtlab.methods import sequencing as sq
from rtlab.mlc import MLC, get_mlc, list_mlcs

maps = arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=st.integers(0, 6))


def _tg_shared(seq):
    """MU during which both bixels of each vertical neighbour pair are open."""
    shared = 0.0
    for s in seq.segments:
        shared = shared + s.mu * (s.open[:-1] & s.open[1:])
    return shared


def test_known_profile_mu():
    # positive increments of 1, 3, 2, 4, 0: 1 + 2 + 2 = 5
    f = np.array([[1.0, 3, 2, 4, 0]])
    assert sq.row_mu_lower_bound(f)[0] == 5
    seq = sq.sliding_window(f, finite_speed=False)
    assert seq.mu == pytest.approx(5)
    assert np.allclose(seq.delivered, f)
    # two rows: the field MU is the maximum over rows
    f2 = np.array([[1.0, 3, 2, 4, 0], [6.0, 0, 0, 0, 1]])
    assert sq.field_mu_lower_bound(f2) == 7
    assert sq.tnmu([f, f2]) == 12


def test_finite_leaf_speed_adds_transit_mu():
    f = np.array([[2.0, 2, 2, 2]])
    mlc = get_mlc("generic_5mm_60")
    seq = sq.sliding_window(f, mlc, dx=5.0, dose_rate_mu_min=600)
    h = 5.0 / mlc.leaf_speed_mm_s * 10.0  # 600 MU/min = 10 MU/s
    assert seq.mu == pytest.approx(2 + 3 * h)
    assert np.allclose(seq.delivered, f)
    # the leading leaf never moves faster than the maximum speed
    assert np.all(np.diff(seq.lead, axis=1) >= h - 1e-12)
    assert np.all(np.diff(seq.trail, axis=1) >= h - 1e-12)


@settings(max_examples=60, deadline=None)
@given(maps)
def test_sweep_reproduces_map_and_attains_lower_bound(F):
    if F.max() == 0:
        return
    seq = sq.step_and_shoot(F.astype(float), "generic_5mm_60", step_mu=1.0, method="sweep")
    assert np.array_equal(seq.delivered, F)
    assert seq.mu == pytest.approx(sq.field_mu_lower_bound(F))
    assert sq.check_segments(seq) == []


@settings(max_examples=60, deadline=None)
@given(maps)
def test_no_interdigitation_is_never_violated(F):
    if F.max() == 0:
        return
    mlc = get_mlc("generic_10mm_40_noid")
    seq = sq.step_and_shoot(F.astype(float), mlc, dx=5.0, step_mu=1.0, method="sweep")
    assert np.array_equal(seq.delivered, F)
    assert sq.check_segments(seq) == []
    assert seq.mu >= sq.field_mu_lower_bound(F) - 1e-9
    sw = sq.sliding_window(F.astype(float), mlc, dx=5.0, finite_speed=False)
    assert np.allclose(sw.delivered, F)
    # trailing leaf of a row never passes the leading leaf of its neighbours
    assert np.all(sw.trail[:-1] >= sw.lead[1:] - 1e-9)
    assert np.all(sw.trail[1:] >= sw.lead[:-1] - 1e-9)


@settings(max_examples=40, deadline=None)
@given(maps)
def test_tongue_and_groove_sync_removes_underdose(F):
    if F.max() == 0 or F.shape[0] < 2:
        return
    seq = sq.step_and_shoot(F.astype(float), "generic_5mm_60", step_mu=1.0, method="sweep", tongue_and_groove=True)
    assert np.array_equal(seq.delivered, F)
    assert np.array_equal(_tg_shared(seq), np.minimum(F[:-1], F[1:]))


def test_tongue_and_groove_underdose_exists_without_sync():
    F = np.array([[0, 1, 2], [2, 1, 0]], float)  # row 0 rises, row 1 falls: disjoint exposures
    plain = sq.step_and_shoot(F, step_mu=1.0)
    synced = sq.step_and_shoot(F, step_mu=1.0, tongue_and_groove=True)
    assert (_tg_shared(plain) < np.minimum(F[:-1], F[1:])).any()
    assert np.array_equal(_tg_shared(synced), np.minimum(F[:-1], F[1:]))
    assert synced.mu >= plain.mu


@settings(max_examples=40, deadline=None)
@given(maps)
def test_xia_verhey_reproduces_map(F):
    if F.max() == 0:
        return
    seq = sq.step_and_shoot(F.astype(float), step_mu=1.0, method="xia_verhey")
    assert np.array_equal(seq.delivered, F)
    assert seq.mu >= sq.field_mu_lower_bound(F) - 1e-9
    for s in seq.segments:  # one interval per row per segment
        for row in s.open:
            assert np.count_nonzero(np.diff(np.r_[0, row.astype(int), 0]) == 1) <= 1


def test_quantisation_levels():
    rng = np.random.default_rng(1)
    f = rng.random((5, 8)) * 10
    seq = sq.step_and_shoot(f, n_levels=5)
    step = f.max() / 5
    assert np.allclose(seq.delivered, np.rint(f / step) * step)
    assert np.max(np.abs(seq.delivered - f)) <= step / 2 + 1e-12


def test_leaf_row_resampling_roundtrip():
    f = np.arange(24, dtype=float).reshape(8, 3)  # 8 bixel rows of 5 mm
    rows, edges, w = sq.fluence_to_leaf_rows(f, 5.0, "generic_10mm_60")
    assert rows.shape == (4, 3) and np.allclose(np.diff(edges), 10.0)
    assert np.allclose(rows, 0.5 * (f[0::2] + f[1::2]))
    back = sq.leaf_rows_to_fluence(rows, w)
    assert np.allclose(back[0], back[1]) and np.allclose(back[0], rows[0])
    same, _, _ = sq.fluence_to_leaf_rows(f, 5.0, "generic_5mm_60")
    assert np.allclose(same, f)


def test_sliding_window_leaf_positions_are_monotone_and_consistent():
    f = np.array([[0, 1, 3, 2, 0], [1, 1, 1, 1, 1]], float)
    seq = sq.sliding_window(f, finite_speed=False)
    mus = np.linspace(0, seq.mu, 50)
    pos = np.array([seq.leaf_positions(m) for m in mus])  # (t, 2, rows)
    assert np.all(pos[:, 0] <= pos[:, 1] + 1e-12)  # no collision
    assert np.all(np.diff(pos, axis=0) >= -1e-12)  # unidirectional


def test_bad_input():
    with pytest.raises(ValueError, match="negative"):
        sq.sliding_window(-np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN|non-finite"):
        sq.sliding_window(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="2D"):
        sq.sliding_window(np.ones(4))
    with pytest.raises(ValueError, match="pairs"):
        sq.sliding_window(np.ones((100, 3)), "generic_10mm_40_noid")
    with pytest.raises(ValueError, match="maximum field"):
        sq.sliding_window(np.ones((2, 100)), dx=5.0)
    with pytest.raises(ValueError, match="zero everywhere"):
        sq.step_and_shoot(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown MLC"):
        sq.sliding_window(np.ones((2, 2)), "nope")
    with pytest.raises(ValueError, match="method"):
        sq.step_and_shoot(np.ones((2, 2)), method="magic")


def test_mlc_models():
    assert len(list_mlcs()) >= 3
    m = get_mlc("generic_10mm_40_noid")
    assert not m.interdigitation and m.field_length_mm == 400
    with pytest.raises(ValueError):
        MLC("bad", -1, 10, 100)
    with pytest.raises(ValueError):
        MLC("bad", 5, 0, 100)
