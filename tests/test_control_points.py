"""Tests for rtlab.methods.control_points (patent 000, FIGs 11-18)."""

import math

import numpy as np
import pytest

from rtlab.geometry import Grid, Structure
from rtlab.methods.control_points import (
    ControlPoints,
    ControlPointTerm,
    RingFilter,
    Thresholds,
    control_point_targets,
    find_control_points,
    sampling_points,
)


def _square(n=60, lo=15, hi=45):
    m = np.zeros((n, n), bool)
    m[lo:hi, lo:hi] = True
    return m


def _disk(R, h=(1.0, 1.0), margin=14.0):
    ny = int(math.ceil(2 * (R + margin) / h[0]))
    nx = int(math.ceil(2 * (R + margin) / h[1]))
    y, x = np.indices((ny, nx)).astype(float)
    y = (y - (ny - 1) / 2) * h[0]
    x = (x - (nx - 1) / 2) * h[1]
    return y * y + x * x <= R * R


def _by_index(cp):
    return {tuple(i): k for k, i in enumerate(cp.index)}


# ---------------------------------------------------------------------------------------------
# 2D shapes
# ---------------------------------------------------------------------------------------------
def test_square_flat_edges_not_control_corners_control():
    m = _square()
    cp = find_control_points(m, (1.0, 1.0), r_in=4, r_out=4)
    assert isinstance(cp, ControlPoints)
    # flat middle of the edges: farther than b = 8 mm from every corner along the edge
    mid = (np.abs(cp.index[:, 0] - 29.5) < 5) | (np.abs(cp.index[:, 1] - 29.5) < 5)
    assert mid.sum() > 50
    assert not cp.is_control[mid].any()
    np.testing.assert_allclose(cp.ratio[mid], 1.0, atol=1e-5)  # a straight piece is its chord
    assert np.abs(cp.bulge[mid]).max() < 0.01
    # points on the diagonals through the four corners, inside and outside
    ix = _by_index(cp)
    for (y, x) in [(13, 13), (16, 16), (13, 46), (17, 43), (46, 46), (43, 43), (46, 13)]:
        k = ix[(y, x)]
        assert cp.is_control[k], (y, x)
        assert cp.bulge[k] > 0.1  # convex
        assert cp.ratio[k] > 1.3  # 90-degree corner: legs / chord = sqrt(2)


def test_l_shape_concave_corner_is_control_with_negative_bulge():
    m = np.zeros((60, 60), bool)
    m[10:50, 10:50] = True
    m[30:50, 30:50] = False  # inner (concave) corner at (29.5, 29.5)
    cp = find_control_points(m, (1.0, 1.0), r_in=4, r_out=4)
    ix = _by_index(cp)
    for (y, x) in [(30, 30), (31, 31), (32, 32), (29, 29), (28, 28)]:
        k = ix[(y, x)]
        assert cp.is_control[k]
        assert cp.bulge[k] < -0.1, (y, x, cp.bulge[k])
    # convex corners of the same shape bulge the other way
    assert cp.bulge[ix[(8, 8)]] > 0.1


def test_disk_small_radius_all_large_radius_few():
    small = find_control_points(_disk(6.0), (1.0, 1.0), r_in=3, r_out=3)
    assert small.has_boundary.all() and small.is_control.all()
    large = find_control_points(_disk(40.0), (1.0, 1.0), r_in=3, r_out=3)
    assert large.is_control.mean() < 0.02
    # bulge ~ kappa b / (3 pi) for a disk filter on a gently curved boundary (module docstring)
    on = large.distance < 1.0
    np.testing.assert_allclose(np.median(large.bulge[on]), 8.0 / 40.0 / (3 * np.pi), rtol=0.2)


def test_slanted_straight_boundary_not_control():
    y, x = np.indices((60, 60))
    for slope in (0.2, 1 / 3, 0.5, 1.0):
        m = (y - 30) < slope * (x - 30)
        cp = find_control_points(m, (1.0, 1.0), r_in=4, r_out=4)
        interior = np.all((cp.index > 12) & (cp.index < 48), axis=1)
        assert not cp.is_control[interior].any(), slope


def test_flat_boundary_closed_forms():
    """Length, chord, distance and enclosed fraction against the flat-boundary closed forms."""
    m = np.zeros((50, 60), bool)
    m[:, :30] = True  # boundary at x = 29.5 voxel, i.e. 0.5 * dx between voxel centres
    sp = (1.0, 1.5)
    a, b = 3.0, 7.0
    flt = RingFilter(b, a)
    cp = find_control_points(m, sp, r_in=6, r_out=6, inside_filter=flt, outside_filter=flt)
    rows = cp.index[:, 0] == 25
    p = np.abs(cp.index[rows, 1] - 29.5) * sp[1]
    np.testing.assert_allclose(cp.distance[rows], p, atol=1e-9)
    expect = 2 * np.sqrt(b * b - p * p) - 2 * np.sqrt(np.clip(a * a - p * p, 0, None))
    np.testing.assert_allclose(cp.length[rows], expect, rtol=1e-9)
    np.testing.assert_allclose(cp.reference[rows], expect, rtol=1e-9)
    seg = lambda r: r * r * np.arccos(np.minimum(p / r, 1)) - p * np.sqrt(np.clip(r * r - p * p, 0, None))
    beyond = (seg(b) - seg(a)) / (np.pi * (b * b - a * a))
    expect_frac = np.where(cp.inside[rows], 1 - beyond, beyond)
    np.testing.assert_allclose(cp.enclosed_fraction[rows], expect_frac, atol=0.01)
    assert not cp.is_control.any()


def test_no_boundary_in_filter_is_never_control():
    # band wider than the filter: far points see no boundary
    m = _disk(5.0)
    cp = find_control_points(m, (1.0, 1.0), r_in=0, r_out=12, outside_filter=RingFilter(4.0),
                             thresholds=Thresholds(ratio=1.0, bulge=0.0, enclosed=0.0, count=0))
    far = ~cp.has_boundary
    assert far.any() and cp.has_boundary.any()
    assert not cp.is_control[far].any()
    assert np.all(np.isinf(cp.distance[far]))
    # ring: a small island wholly inside the inner circle is not "between the boundaries"
    isl = np.zeros((40, 40), bool)
    isl[19:22, 19:22] = True
    ring = find_control_points(isl, (1.0, 1.0), r_in=0, r_out=2, outside_filter=RingFilter(9.0, 6.0))
    assert not ring.has_boundary.any() and ring.n_control == 0
    disk = find_control_points(isl, (1.0, 1.0), r_in=0, r_out=2, outside_filter=RingFilter(9.0))
    assert disk.is_control.all()  # the whole island lies in the disk: a closed loop has no chord
    assert np.all(np.isinf(disk.ratio))


def test_separate_inside_outside_filters_and_counts():
    m = _square()
    fin, fout = RingFilter(5.0), RingFilter(9.0, 3.0)
    cp = find_control_points(m, (1.0, 1.0), r_in=3, r_out=3, inside_filter=fin, outside_filter=fout,
                             thresholds=Thresholds(ratio=None, bulge=None, count=0))
    ix = _by_index(cp)
    # boundary grid points: the outermost target ring of the square; count them by brute force
    bnd = np.zeros_like(m)
    bnd[15:45, 15:45] = True
    bnd[16:44, 16:44] = False
    for (y, x) in [(16, 30), (12, 30), (30, 13)]:
        k = ix[(y, x)]
        f = fin if cp.inside[k] else fout
        yy, xx = np.nonzero(bnd)
        r = np.hypot(yy - y, xx - x)
        assert cp.count[k] == np.sum((r >= f.inner_mm) & (r <= f.outer_mm))
    # enclosed area inside a disk filter fully inside the target equals the disk area
    deep = find_control_points(m, (1.0, 1.0), r_in=16, r_out=1, inside_filter=RingFilter(3.0))
    k = _by_index(deep)[(29, 29)]
    np.testing.assert_allclose(deep.enclosed[k], np.pi * 9.0, rtol=0.02)


def test_anisotropic_spacing():
    # a circle of radius 6 mm on a 1 x 0.5 mm grid: strongly curved -> all control points
    small = find_control_points(_disk(6.0, (1.0, 0.5)), (1.0, 0.5), r_in=2, r_out=2)
    assert small.is_control.all()
    big = find_control_points(_disk(40.0, (1.0, 0.5)), (1.0, 0.5), r_in=2, r_out=2)
    assert big.is_control.mean() < 0.02
    # the same physical square on two grids has the same flat-edge length (mm)
    m1 = np.zeros((60, 60), bool)
    m1[10:50, 10:50] = True
    m2 = np.zeros((60, 120), bool)
    m2[10:50, 20:100] = True
    c1 = find_control_points(m1, (1.0, 1.0), r_in=2, r_out=2)
    c2 = find_control_points(m2, (1.0, 0.5), r_in=2, r_out=2)
    k1 = _by_index(c1)[(8, 30)]
    k2 = _by_index(c2)[(8, 60)]
    np.testing.assert_allclose(c2.length[k2], c1.length[k1], rtol=1e-9)
    np.testing.assert_allclose(c2.distance[k2], 1.5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# 3D shapes
# ---------------------------------------------------------------------------------------------
def test_box_faces_edges_corners_3d():
    sp = (2.0, 1.5, 1.5)
    m = np.zeros((26, 36, 36), bool)
    m[4:22, 5:31, 5:31] = True  # faces at index 3.5 / 21.5 (z) and 4.5 / 30.5 (y, x)
    b = 5.0
    cp = find_control_points(m, sp, r_in=3, r_out=3, inside_filter=RingFilter(b), outside_filter=RingFilter(b))
    lo = np.array([3.5, 4.5, 4.5])
    hi = np.array([21.5, 30.5, 30.5])
    # distance (mm) of each point to the two face planes of each axis
    dface = np.minimum(np.abs(cp.index - lo), np.abs(cp.index - hi)) * np.asarray(sp)
    near = (dface < b + 3.0).sum(axis=1)
    faces = near == 1
    assert faces.sum() > 500
    assert not cp.is_control[faces].any()
    # flat face: area in the ball = pi (b^2 - p^2)
    on = faces & cp.has_boundary
    np.testing.assert_allclose(cp.length[on], np.pi * (b * b - cp.distance[on] ** 2), rtol=0.03, atol=0.5)
    # points on the diagonals through the corners, and on the bisectors of the edges
    ix = _by_index(cp)
    for pt in [(3, 4, 4), (22, 31, 31), (3, 4, 18), (13, 31, 31)]:  # outside: the chord test fires
        assert cp.is_control[ix[pt]] and not cp.inside[ix[pt]], pt
        assert cp.ratio[ix[pt]] > 1.2
    for pt in [(4, 5, 5), (21, 30, 5), (4, 18, 5), (21, 18, 30)]:  # inside: the bulge is large
        assert cp.is_control[ix[pt]] and cp.inside[ix[pt]], pt
        assert cp.bulge[ix[pt]] > 0.1


def test_sphere_3d():
    def ball(R, h=1.5):
        n = int(2 * R / h + 12)
        z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) * h
        return z * z + y * y + x * x <= R * R

    small = find_control_points(ball(4.0), (1.5,) * 3, r_in=2, r_out=2,
                                inside_filter=RingFilter(6.0), outside_filter=RingFilter(6.0))
    assert small.is_control.all()
    big = find_control_points(ball(30.0), (1.5,) * 3, r_in=1.5, r_out=1.5,
                              inside_filter=RingFilter(6.0), outside_filter=RingFilter(6.0))
    assert big.is_control.mean() < 0.05
    h = big.has_boundary
    assert np.mean(big.bulge[h] > 0) > 0.95  # convex
    # bulge ~ 3 kappa b / 16 on the surface (module docstring); voxelisation costs ~30 %
    on = h & (big.distance < 0.5)
    np.testing.assert_allclose(np.median(big.bulge[on]), 3 * 6.0 / 16 / 30.0, rtol=0.4)


def test_per_slice_mode_equals_2d():
    m2 = np.zeros((40, 40), bool)
    m2[8:30, 10:32] = True
    m2[20:30, 20:32] = False
    m3 = np.zeros((5, 40, 40), bool)
    m3[1:4] = m2
    sp = (3.0, 1.0, 1.25)
    kw = dict(r_in=3, r_out=4, inside_filter=RingFilter(5.0, 1.0), outside_filter=RingFilter(7.0))
    c2 = find_control_points(m2, sp[1:], **kw)
    c3 = find_control_points(m3, sp, mode="2d", **kw)
    for z in (1, 2, 3):
        sel = c3.index[:, 0] == z
        np.testing.assert_array_equal(c3.index[sel, 1:], c2.index)
        for name in ("length", "reference", "enclosed", "count", "bulge", "is_control"):
            np.testing.assert_allclose(getattr(c3, name)[sel], getattr(c2, name), atol=1e-9)
    assert c3.as_mask().sum() == 3 * c2.n_control


# ---------------------------------------------------------------------------------------------
# numba kernels vs numpy reference
# ---------------------------------------------------------------------------------------------
def _compare(a, b):
    for name in ("length", "reference", "enclosed", "count", "bulge"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9, err_msg=name)
    fa, fb = np.isfinite(a.distance), np.isfinite(b.distance)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_allclose(a.distance[fa], b.distance[fb], atol=1e-9)
    np.testing.assert_array_equal(a.is_control, b.is_control)


def test_numba_equals_numpy_2d():
    m = np.zeros((40, 44), bool)
    m[8:32, 8:36] = True
    m[20:32, 22:36] = False
    m[12:15, 12:15] = False  # a hole: an inner contour
    kw = dict(r_in=4, r_out=5, inside_filter=RingFilter(6.0, 2.0), outside_filter=RingFilter(7.5))
    a = find_control_points(m, (1.2, 0.9), **kw)
    b = find_control_points(m, (1.2, 0.9), backend="numpy", **kw)
    _compare(a, b)
    assert a.n_control > 0 and (~a.is_control).sum() > 0


def test_numba_equals_numpy_3d():
    m = np.zeros((14, 18, 18), bool)
    m[3:11, 4:14, 4:14] = True
    m[7:11, 9:14, 9:14] = False
    kw = dict(r_in=2.5, r_out=3, inside_filter=RingFilter(4.0, 1.5), outside_filter=RingFilter(5.0))
    a = find_control_points(m, (2.0, 1.25, 1.5), **kw)
    b = find_control_points(m, (2.0, 1.25, 1.5), backend="numpy", **kw)
    _compare(a, b)
    assert a.n_control > 0 and (~a.is_control).sum() > 0


# ---------------------------------------------------------------------------------------------
# sampling points and validation
# ---------------------------------------------------------------------------------------------
def test_sampling_band_matches_brute_force():
    m = _square(40, 10, 30)
    sp = (1.0, 2.0)
    idx, inside = sampling_points(m, sp, r_in=3.0, r_out=4.5)
    ins = np.argwhere(m)
    outs = np.argwhere(~m)
    got = {tuple(i) for i in idx}
    expect = set()
    for p in np.argwhere(np.ones_like(m)):
        other = outs if m[tuple(p)] else ins
        d = np.min(np.linalg.norm((other - p) * np.asarray(sp), axis=1))
        if d <= (3.0 if m[tuple(p)] else 4.5):
            expect.add(tuple(p))
    assert got == expect
    np.testing.assert_array_equal(inside, m[tuple(idx.T)])
    # a Structure supplies its own spacing
    g = Grid((1, 40, 40), (5.0, 1.0, 2.0))
    s = Structure("PTV", m[None], g, kind="target")
    idx3, _ = sampling_points(s, r_in=3.0, r_out=4.5, mode="2d")
    assert {tuple(i[1:]) for i in idx3} == expect


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(outer_mm=5.0, inner_mm=5.0), ValueError, "inner_mm"),
        (dict(outer_mm=3.0, inner_mm=5.0), ValueError, "inner_mm"),
        (dict(outer_mm=-2.0), ValueError, "outer_mm"),
        (dict(outer_mm=4.0, inner_mm=-1.0), ValueError, "inner_mm"),
        (dict(outer_mm=float("nan")), ValueError, "outer_mm"),
        (dict(outer_mm="4"), TypeError, "outer_mm"),
    ],
)
def test_ring_filter_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RingFilter(**kwargs)


def test_input_validation():
    m = _square(20, 5, 15)
    with pytest.raises(ValueError, match="empty"):
        find_control_points(np.zeros((20, 20), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="r_in"):
        find_control_points(m, (1.0, 1.0), r_in=-1)
    with pytest.raises(ValueError, match="both 0"):
        find_control_points(m, (1.0, 1.0), r_in=0, r_out=0)
    with pytest.raises(ValueError, match="spacing"):
        find_control_points(m, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        find_control_points(m, (1.0, 0.0))
    with pytest.raises(TypeError, match="spacing"):
        find_control_points(m)
    with pytest.raises(ValueError, match="mode"):
        find_control_points(m, (1.0, 1.0), mode="3d")
    with pytest.raises(ValueError, match="2D"):
        find_control_points(np.ones(5, bool), (1.0,))
    with pytest.raises(ValueError, match="0 and 1"):
        find_control_points(m * 2, (1.0, 1.0))
    with pytest.raises(ValueError, match="NaN|non-finite"):
        find_control_points(np.where(m, np.nan, 0.0), (1.0, 1.0))
    with pytest.raises(TypeError, match="inside_filter"):
        find_control_points(m, (1.0, 1.0), inside_filter=5.0)
    with pytest.raises(ValueError, match="backend"):
        find_control_points(m, (1.0, 1.0), backend="cuda")
    with pytest.raises(ValueError, match="at least one"):
        Thresholds(ratio=None, bulge=None)
    with pytest.raises(ValueError, match="ratio"):
        Thresholds(ratio=0.9)


# ---------------------------------------------------------------------------------------------
# dose targets and the objective term
# ---------------------------------------------------------------------------------------------
def test_control_point_targets_and_term():
    m = np.zeros((3, 30, 30), bool)
    m[:, 8:22, 8:22] = True
    cp = find_control_points(m, (3.0, 1.0, 1.0), r_in=3, r_out=3, mode="2d")
    vi, ins, bound = control_point_targets(cp, dose_inside=60.0, dose_outside=45.0)
    assert len(vi) == cp.n_control > 0
    np.testing.assert_array_equal(ins, m.ravel()[vi])
    np.testing.assert_array_equal(bound, np.where(ins, 60.0, 45.0))
    term = ControlPointTerm.from_control_points(cp, 60.0, 45.0, weight=2.0)
    # a dose meeting every bound costs nothing
    ok = np.where(m, 61.0, 40.0).ravel()
    assert term.value(ok) == 0.0
    assert not term.gradient(ok).any()
    # closed form for a uniform 50 Gy dose: inside short by 10, outside over by 5
    d = np.full(m.size, 50.0)
    expect = 2.0 * np.mean(np.where(ins, 10.0, 5.0) ** 2)
    assert term.value(d) == pytest.approx(expect)
    # finite differences on a random dose (Gy)
    rng = np.random.default_rng(0)
    d = rng.uniform(30, 70, m.size)
    g = term.gradient(d)
    assert g.shape == d.shape
    probe = np.concatenate([vi[:5], vi[-5:], [0]])
    for j in probe:
        e = np.zeros_like(d)
        e[j] = 1e-4
        fd = (term.value(d + e) - term.value(d - e)) / 2e-4
        assert fd == pytest.approx(g[j], rel=1e-5, abs=1e-8)
    # grid-shaped dose works too and returns a grid-shaped gradient
    assert term.gradient(d.reshape(m.shape)).shape == m.shape
    with pytest.raises(ValueError, match="voxel_index"):
        term.value(d[:10])
    with pytest.raises(ValueError, match="inside"):
        ControlPointTerm(vi, ins[:-1], bound)
    with pytest.raises(TypeError, match="ControlPoints"):
        control_point_targets("x", 1.0, 1.0)
