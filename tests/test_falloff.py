"""Tests for rtlab.methods.falloff (patent 000, eqs 16-17, para. 106-123)."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from rtlab.geometry import Grid, Structure, StructureSet
from rtlab.methods.conformity import ConformityTerm, paddick_ci
from rtlab.methods.falloff import (
    adjust_targets, conformity_pairs, extension_region, falling_distance,
    falloff_conformity_terms, low_dose_region,
)
from rtlab.optimize import Objective, solve


def brute_distance(mask, spacing):
    """Distance (mm) of every voxel centre to the nearest centre inside ``mask`` (reference)."""
    idx = np.argwhere(np.ones(mask.shape, bool)) * np.asarray(spacing)
    inside = np.argwhere(mask) * np.asarray(spacing)
    return cdist(idx, inside).min(1).reshape(mask.shape)


def test_patent_worked_example_3mm():
    # para. 122: 6000 cGy and 5400 cGy, 200 cGy/mm -> 3 mm
    assert falling_distance(6000, 5400, 200) == pytest.approx(3.0)
    assert falling_distance(60.0, 54.0, 2.0) == pytest.approx(3.0)  # the same in Gy
    assert falling_distance(60.0, 54.0, 1.0) == pytest.approx(6.0)  # 100 cGy/mm
    with pytest.raises(ValueError, match="sort the targets"):
        falling_distance(54, 60, 2)
    with pytest.raises(ValueError, match="gradient"):
        falling_distance(60, 54, 0)


def test_extension_shell_anisotropic_matches_brute_force():
    rng = np.random.default_rng(2)
    spacing = (2.5, 1.0, 1.5)
    mask = np.zeros((8, 14, 12), bool)
    mask[3:5, 5:8, 4:7] = True
    mask[4, 8, 5] = True
    mask &= rng.random(mask.shape) > 0.1
    mask[4, 6, 5] = True
    L = 3.0
    shell = extension_region(mask, L, spacing)
    dist = brute_distance(mask, spacing)
    np.testing.assert_array_equal(shell, (dist > 0) & (dist <= L + 1e-9))
    # anisotropy: one voxel along z (2.5 mm), three along y (1 mm), two along x (1.5 mm)
    single = np.zeros((7, 9, 9), bool)
    single[3, 4, 4] = True
    sh = extension_region(single, 3.0, spacing)
    assert sh[4, 4, 4] and not sh[5, 4, 4]
    assert sh[3, 7, 4] and not sh[3, 8, 4]
    assert sh[3, 4, 6] and not sh[3, 4, 7]
    assert not extension_region(single, 0.0, spacing).any()
    body = np.zeros_like(single)
    body[:, :, :5] = True
    assert not (extension_region(single, 3.0, spacing, within=body) & ~body).any()


def two_targets(shape=(5, 30, 30), spacing=(2.0, 1.0, 1.0)):
    g = Grid(shape, spacing)
    t1 = np.zeros(shape, bool)
    t1[1:4, 8:16, 8:16] = True
    t2 = np.zeros(shape, bool)
    t2[1:4, 8:16, 16:24] = True  # abuts T1 along x
    return g, t1, t2


def test_adjusted_lower_target_nasopharynx_layout():
    g, t1, t2 = two_targets()
    ss = StructureSet(g, [Structure("PTV60", t1, g, kind="target", prescription=60.0),
                          Structure("PTV54", t2, g, kind="target", prescription=54.0)])
    levels = adjust_targets(ss, gradient=2.0)  # 200 cGy/mm
    assert [lv.name for lv in levels] == ["PTV60", "PTV54"]
    hi, lo = levels
    assert hi.distance_mm == 0 and np.array_equal(hi.region, t1)
    assert lo.distance_mm == pytest.approx(3.0)
    dist = brute_distance(t1, g.spacing)
    expected_ext = (dist > 0) & (dist <= 3.0 + 1e-9)
    np.testing.assert_array_equal(lo.extension, expected_ext)
    np.testing.assert_array_equal(lo.region, (t2 | expected_ext) & ~t1)
    assert not (lo.region & t1).any()  # the part inside the higher-dose target is excluded
    assert lo.region[2, 12, 5] and not lo.region[2, 12, 4]  # 3 mm beyond T1's x-edge, not 4 mm
    # z spacing 2 mm: the slices just below and above T1 (2 mm away) are in the extension
    assert lo.region[0, 12, 12] and lo.region[4, 12, 12]
    pairs = conformity_pairs(levels)
    assert [p[1] for p in pairs] == [60.0, 54.0]


def test_nested_targets_and_three_levels_union_mode():
    shape, sp_ = (1, 41, 41), (1.0, 1.0, 1.0)
    yy, xx = np.mgrid[0:41, 0:41]
    r = np.hypot(yy - 20, xx - 20)[None]
    boost = r <= 4
    ptv = r <= 9
    node = np.zeros(shape, bool)
    node[0, 2:6, 2:6] = True
    levels = adjust_targets([("ptv", ptv, 60.0), ("boost", boost, 70.0), ("node", node, 50.0)],
                            gradient=2.0, spacing=sp_)
    assert [lv.name for lv in levels] == ["boost", "ptv", "node"]
    b, p, n = levels
    # nested: the boost is cut out of the PTV; the 5 mm shell around the boost lies inside the PTV
    assert not (p.region & boost).any() and (p.region | boost).sum() == ptv.sum()
    assert p.distance_mm == pytest.approx(5.0)
    # union mode: the 50 Gy level grows 5 mm around (boost | adjusted ptv); around the boost the
    # 50 Gy isodose sits (70 - 50) / 2 = 10 mm away
    d_hi = brute_distance(ptv | boost, sp_)
    np.testing.assert_array_equal(n.extension, (d_hi > 0) & (d_hi <= 5.0 + 1e-9))
    assert n.region[node].all() and not (n.region & (ptv | boost)).any()
    # 'previous' mode: shell around the original PTV only (same here since boost is inside PTV)
    lv_prev = adjust_targets([("ptv", ptv, 60.0), ("boost", boost, 70.0), ("node", node, 50.0)],
                             gradient=2.0, spacing=sp_, mode="previous")
    np.testing.assert_array_equal(lv_prev[2].extension, n.extension)


def test_low_dose_ring_single_target():
    g = Grid((3, 25, 25), (3.0, 1.0, 1.0))
    t = np.zeros(g.shape, bool)
    t[1, 8:17, 8:17] = True
    ptv = Structure("PTV", t, g, kind="target", prescription=50.0)
    ring = low_dose_region(ptv, 50.0, 40.0, gradient=2.0)  # 80 % level, 5 mm ring
    assert ring.distance_mm == pytest.approx(5.0) and ring.dose == 40.0
    dist = brute_distance(t, g.spacing)
    np.testing.assert_array_equal(ring.region, (dist > 0) & (dist <= 5.0 + 1e-9))
    np.testing.assert_array_equal(ring.exclude, t)
    # the same through adjust_targets(low_dose=0.8)
    levels = adjust_targets([ptv], gradient=2.0, low_dose=0.8)
    assert [lv.dose for lv in levels] == [50.0, 40.0] and levels[1].name == "low_dose_80%"
    np.testing.assert_array_equal(levels[1].region, ring.region)
    with pytest.raises(ValueError, match="below"):
        low_dose_region(ptv, 50.0, 55.0)
    with pytest.raises(ValueError, match="fractions"):
        adjust_targets([ptv], low_dose=1.2)


def test_bad_input():
    g, t1, t2 = two_targets()
    with pytest.raises(ValueError, match="spacing"):
        adjust_targets([("a", t1, 60.0)])
    with pytest.raises(ValueError, match="empty"):
        adjust_targets([("a", np.zeros_like(t1), 60.0)], spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="prescription"):
        adjust_targets(StructureSet(g, [Structure("T", t1, g, kind="target")]))
    with pytest.raises(ValueError, match="mode"):
        adjust_targets([("a", t1, 60.0)], spacing=(1, 1, 1), mode="all")
    with pytest.raises(ValueError, match="distance_mm"):
        extension_region(t1, -1.0, (1, 1, 1))


def test_falloff_conformity_terms_and_toy_optimisation():
    """Each adjusted level gets its own conformity term at its own dose; optimising their sum on a
    1-D toy (Gaussian beamlets) makes both exact conformity indices high."""
    n = 120
    xs = np.arange(n, dtype=float)
    A = np.stack([np.exp(-(xs - c) ** 2 / (2 * 1.5 ** 2)) for c in np.arange(2, n - 2, 1.5)], 1)
    A[A < 1e-4] = 0
    A = sp.csr_matrix(A.astype(np.float32))
    t1 = np.zeros((1, 1, n), bool)
    t1[..., 40:60] = True
    t2 = np.zeros((1, 1, n), bool)
    t2[..., 60:80] = True
    levels = adjust_targets([("T60", t1, 60.0), ("T54", t2, 54.0)], gradient=2.0, spacing=(1, 1, 1))
    # T54 gains 3 mm on the far side of T60 (37..39) and keeps 60..79
    np.testing.assert_array_equal(np.flatnonzero(levels[1].region[0, 0]),
                                  np.r_[37:40, 60:80])
    terms = falloff_conformity_terms(levels, weight=[1.0, 1.0], steepness=20)
    assert [t.dose_level for t in terms] == [60.0, 54.0]
    assert isinstance(terms[0], ConformityTerm)
    # domain of the 54 Gy term excludes the 60 Gy target
    assert not np.isin(np.arange(40, 60), terms[1].rows).any()
    x0 = np.full(A.shape[1], 57.0 / (A @ np.ones(A.shape[1])).max())
    res = solve(A, Objective(terms), x0, max_iter=300)
    rep = res.history[-1]["reports"]
    assert rep["conformity:T60"]["f_C_exact"] > 0.9
    assert rep["conformity:T54"]["f_C_exact"] > 0.9
    assert paddick_ci(res.dose, t1[0, 0], 60.0) == pytest.approx(rep["conformity:T60"]["f_C_exact"])
