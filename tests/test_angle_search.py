"""Angle searches beside the ant colony (rtlab.methods.angle_search) and the dense evaluation path."""

import itertools
import math

import numpy as np
import pytest
import scipy.optimize

from rtlab.methods import angle_search as asr
from rtlab.methods import beam_angles as ba
from rtlab.optimize import Objective, SquaredDeviation, rows_for
from rtlab.phantoms import get_phantom


@pytest.fixture(scope="module")
def toy():
    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    im = ba.candidate_influence(case, np.arange(8) * 45.0, margin_mm=12.0, cutoff_mm=20.0, progress=False)
    return case, im, ba.dense_candidates(im)


def _cycle_count(n, k):
    """k-subsets of an n-cycle with no two neighbours (closed form n/(n-k) C(n-k, k))."""
    return n * math.comb(n - k, k) // (n - k)


def test_allowed_sets_count_and_separation():
    c15 = np.arange(15) * 24.0
    sets = asr.allowed_sets(c15, 5, 40.0)  # 24 deg grid: no two neighbours
    assert len(sets) == _cycle_count(15, 5) == 378
    assert len(asr.allowed_sets(np.arange(12) * 30.0, 4, 40.0)) == _cycle_count(12, 4) == 105
    assert len(asr.allowed_sets(np.arange(10) * 36.0, 5, 0.0)) == math.comb(10, 5)
    for s in sets[::17]:
        a = c15[list(s)]
        d = np.abs((a[:, None] - a[None, :] + 180) % 360 - 180)
        assert d[~np.eye(5, dtype=bool)].min() >= 40.0
    with pytest.raises(ValueError, match="n_beams"):
        asr.allowed_sets(c15, 16)
    with pytest.raises(ValueError, match="min_separation"):
        asr.allowed_sets(c15, 2, -1.0)


def test_dense_matrix_and_operator_match_the_influence_matrix(toy):
    _, im, D = toy
    rng = np.random.default_rng(1)
    x, g = rng.uniform(0, 1, im.shape[1]), rng.normal(size=im.shape[0])
    ref_d, ref_g = im.matvec(x), im.rmatvec(g)
    np.testing.assert_allclose(D.astype(float) @ x, ref_d, rtol=1e-5, atol=1e-6 * np.abs(ref_d).max())
    np.testing.assert_allclose(D.T.astype(float) @ g, ref_g, rtol=1e-5, atol=1e-6 * np.abs(ref_g).max())
    cols = np.arange(im.beamlet_slices[2].start, im.beamlet_slices[5].stop)
    op = ba.DenseColumns(D[:, cols])
    g[::3] = 0.0  # rows skipped by the kernel
    np.testing.assert_allclose(op.matvec(x[cols]), D[:, cols].astype(float) @ x[cols], rtol=1e-10)
    np.testing.assert_allclose(op.rmatvec(g), D[:, cols].T.astype(float) @ g, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="max_bytes"):
        ba.dense_candidates(im, max_bytes=10)
    with pytest.raises(ValueError, match="dense"):
        ba.optimise_beams(im, ba.default_objective(toy[0], im), [0], dense=D[:, :5])


def test_single_thread_blas_restores_the_thread_count():
    before = [fg() for _, fg in ba._openblas_handles()]
    with ba.single_thread_blas():
        assert all(fg() == 1 for _, fg in ba._openblas_handles())
    assert [fg() for _, fg in ba._openblas_handles()] == before


def test_integral_objective_is_the_mean_non_target_dose(toy):
    case, im, D = toy
    obj = ba.default_objective(case, im, "integral", nt_weight=0.1)
    term = obj["mean non-target dose"]
    d = np.random.default_rng(2).uniform(0, 60, im.shape[0])
    tmask = case.structures["PTV"].mask.ravel()[im.voxel_index]
    assert term.name == "mean non-target dose"
    assert obj.value(d) == pytest.approx(Objective([t for t in obj if t is not term]).value(d) + 0.1 * d[~tmask].mean())
    with pytest.raises(ValueError, match="nt_weight"):
        ba.default_objective(case, im, "integral", nt_weight=-1)


def test_exhaustive_optimum_matches_a_brute_force_nnls(toy):
    """Least-squares objective: each set's optimum by scipy NNLS on its own columns, argmin by numpy."""
    case, im, D = toy
    rows = rows_for(case.structures["PTV"].mask, im.voxel_index, missing="raise")
    nt = np.setdiff1d(np.arange(im.shape[0]), rows)  # every other row pulled to 0 Gy: a real trade-off
    obj = Objective([SquaredDeviation(rows, 60.0, 1.0, name="PTV"), SquaredDeviation(nt, 0.0, 0.3, name="rest")])
    ev = ba.SetEvaluator(im, obj, max_iter=400, fractions=1, dense=D)
    ref = ba.reference_normalisers([ev(k)[1] for k in ba.equispaced_sets(ev.candidates, 2)])
    ex = asr.exhaustive_search(ev, 2, ref, weights=(0, 0, 1, 0), min_separation_deg=50.0, progress=False)
    keys = [k for k in itertools.combinations(range(8), 2)
            if min(abs((45.0 * (j - i) + 180) % 360 - 180) for i, j in itertools.combinations(k, 2)) >= 50]
    assert len(ex.table) == len(keys) == _cycle_count(8, 2) == 20
    f = {}
    for k in keys:
        cols = np.concatenate([np.arange(im.beamlet_slices[b].start, im.beamlet_slices[b].stop) for b in k])
        s1, s2 = np.sqrt(1.0 / len(rows)), np.sqrt(0.3 / len(nt))
        A = np.vstack([s1 * D[rows][:, cols], s2 * D[nt][:, cols]]).astype(float)
        b = np.concatenate([np.full(len(rows), 60.0 * s1), np.zeros(len(nt))])
        _, rnorm = scipy.optimize.nnls(A, b, maxiter=50 * A.shape[1])
        f[k] = rnorm ** 2
    best = min(f, key=f.get)
    got = {tuple(k): o for k, o in zip(ex.table["key"], ex.table["objective"])}
    for k in keys:  # the evaluator's L-BFGS-B reaches the NNLS optimum
        assert got[k] == pytest.approx(f[k], rel=0.02, abs=1e-3)
    assert ex.best_set == best or got[best] == pytest.approx(got[ex.best_set], rel=0.02)
    assert ex.cost == pytest.approx(min(got.values()) / ref["objective"], rel=1e-12)


def test_greedy_path_and_colony_share_the_evaluations(toy):
    case, im, D = toy
    ev = ba.SetEvaluator(im, ba.default_objective(case, im, "integral"), max_iter=15, fractions=1, dense=D)
    ref = ba.reference_normalisers([ev(k)[1] for k in ba.equispaced_sets(ev.candidates, 2)])
    gr = asr.greedy_search(ev, 2, ref, min_separation_deg=50.0)
    # step 1: the best single beam; step 2: the best partner of it (recomputed by hand)
    a, b, g, l = ba.PAPER_WEIGHTS

    def phi(k):
        e = ev.cache[k]
        return (a * np.mean(e["eta"]) / ref["eta"] + b * np.mean(e["theta"]) / ref["theta"]
                + g * e["objective"] / ref["objective"] + l * np.mean(e["mu"]) / ref["mu"])

    first = min(((i,) for i in range(8)), key=phi)
    assert gr.path[0][0] == first
    partners = [tuple(sorted(first + (j,))) for j in range(8)
                if j != first[0] and abs((45.0 * (j - first[0]) + 180) % 360 - 180) >= 50]
    assert gr.best_set == min(partners, key=phi)
    assert gr.cost == pytest.approx(phi(gr.best_set))
    assert gr.n_evaluations == 8 + len(partners)
    # the colony's cost of a set equals score() of the same set (one formula)
    col = ba.select_beam_angles(case, 2, evaluator=ev, n_ants=3, n_iter=2, min_separation_deg=50.0, seed=0,
                                progress=False)
    t = asr.set_table(ev, [col.best_set])
    assert asr.score(t, col.reference)[0] == pytest.approx(col.cost, rel=1e-12)
    assert col.reference == pytest.approx(ref)
    with pytest.raises(KeyError, match="not been evaluated"):
        asr.set_table(ev, [(0, 1, 2, 3, 4, 5, 6)])
    with pytest.raises(ValueError, match="distinct"):
        ev((1, 1))
    with pytest.raises(ValueError, match="baseline"):
        asr.gain(1.0, 0.0)
