"""Beam geometry (IEC 61217), bixel grids and Siddon ray tracing (numba vs numpy)."""

import numpy as np
import pytest

from rtlab.geometry import Grid
from rtlab.plan import Beam, fit_bixel_grid, rotation_matrix
from rtlab.dose.raytrace import siddon_numpy, siddon_depths, radiological_depth, radiological_depth_numpy, fan_depth


def test_iec_source_positions():
    b0 = Beam(0.0, isocenter=(0, 0, 0))
    np.testing.assert_allclose(b0.source, [0, -1000, 0], atol=1e-9)  # (z, y, x): anterior, -y
    b90 = Beam(90.0, isocenter=(0, 0, 0))
    np.testing.assert_allclose(b90.source, [0, 0, 1000], atol=1e-9)  # +x
    b180 = Beam(180.0, isocenter=(10, 20, 30))
    np.testing.assert_allclose(b180.source, [10, 1020, 30], atol=1e-9)
    bc = Beam(90.0, couch=90.0, isocenter=(0, 0, 0))
    np.testing.assert_allclose(bc.source, [-1000, 0, 0], atol=1e-9)  # rotated into z (inferior)
    # rotation matrices are orthonormal and frames right-angled
    r = rotation_matrix(37.0, 21.0)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    eu, ev, eb = Beam(37.0, 21.0).frame()
    np.testing.assert_allclose([eu @ ev, eu @ eb, ev @ eb], 0, atol=1e-12)


def test_projection_inverse_square_geometry():
    b = Beam(0.0, isocenter=(0, 0, 0))
    u, v, t = b.project(np.array([[20.0, 100.0, 10.0]]))  # (z, y, x)
    assert t[0] == pytest.approx(1100.0)
    assert u[0] == pytest.approx(10.0 * 1000 / 1100)
    assert v[0] == pytest.approx(20.0 * 1000 / 1100)


def test_bixel_grid_covers_target_with_margin():
    g = Grid((21, 21, 21), (2.0, 2.0, 2.0))
    m = np.zeros(g.shape, bool)
    m[8:13, 8:13, 8:13] = True  # 10 mm cube at the centre
    bx = fit_bixel_grid(Beam(0.0, bixel_mm=5.0), g, m, margin=1)
    c = bx.centers()
    assert c[:, 1].min() <= -7.5 and c[:, 1].max() >= 7.5  # projection + 1 bixel margin
    assert bx.n == bx.mask.size and bx.n >= 25
    with pytest.raises(ValueError, match="empty"):
        fit_bixel_grid(Beam(0.0), g, np.zeros(g.shape, bool))


def test_prepare_beams_fits_each_beam_as_fit_bixel_grid_does():
    """prepare_beams computes the targets' corners and the isocentre once for all beams; the
    bixel grids must be those of fit_bixel_grid beam by beam (the per-beam reference)."""
    from rtlab.core.beams import prepare_beams, target_union
    from rtlab.phantoms import get_phantom

    case = get_phantom("tg119_cshape_easy", spacing=(7.5, 9.0, 9.0))
    angles = [0.0, 50.0, 130.0, 222.5, 300.0]
    beams = prepare_beams(case, angles, bixel_mm=5.0, margin=1)
    iso = tuple(case.isocenter())
    tm = target_union(case)
    for a, b in zip(angles, beams):
        assert b.isocenter == iso
        ref = fit_bixel_grid(Beam(a, 0.0, iso, 5.0), case.grid, tm, margin=1)
        assert (b.bixels.r0, b.bixels.c0) == (ref.r0, ref.c0)
        np.testing.assert_array_equal(b.bixels.mask, ref.mask)
    with pytest.raises(ValueError, match="margin"):
        prepare_beams(case, angles, margin=-1)


def test_beam_validation():
    with pytest.raises(ValueError, match="bixel_mm"):
        Beam(0.0, bixel_mm=0.0)
    with pytest.raises(ValueError, match="isocenter"):
        Beam(0.0, isocenter=(0, np.nan, 0))
    with pytest.raises(ValueError, match="gantry"):
        Beam(np.nan)


def test_siddon_numba_matches_numpy_random_rays():
    rng = np.random.default_rng(1)
    dens = rng.uniform(0.1, 2.0, (7, 9, 11))
    origin, spacing = np.array([-3.0, -8.0, -10.0]), np.array([1.0, 2.0, 2.0])
    lo = origin - spacing / 2
    for _ in range(30):
        a = rng.uniform(-40, 40, 3)
        bpt = rng.uniform(-40, 40, 3)
        s_b, cum = siddon_numpy(dens, origin, spacing, a, bpt)
        L = np.linalg.norm(bpt - a)
        samples = np.sort(rng.uniform(0, L, 20))
        out = np.empty(20)
        siddon_depths(dens, lo, spacing, a, (bpt - a) / L, samples, out)
        np.testing.assert_allclose(out, np.interp(samples, s_b, cum), rtol=1e-9, atol=1e-9)


def test_siddon_axis_aligned_closed_form():
    dens = np.ones((3, 10, 3))
    dens[:, 5:, :] = 0.5
    g = Grid(dens.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    # ray along +y through the middle, from y=-100 to y=9.5 (last voxel edge)
    d = radiological_depth(dens, g, (1.0, -100.0, 1.0), np.array([[1.0, 7.0, 1.0]]))
    assert d[0] == pytest.approx(5.0 + 0.5 * 2.5)
    ref = radiological_depth_numpy(dens, g, (1.0, -100.0, 1.0), np.array([[1.0, 7.0, 1.0]]))
    assert ref[0] == pytest.approx(d[0])


def test_fan_depth_matches_per_voxel_trace_in_water():
    from rtlab.dose._testcases import water_box

    case = water_box(shape=(15, 31, 15), spacing=(2.0, 2.0, 2.0), surface_y=-20.0)
    beam = Beam(30.0, 10.0, (0.0, 0.0, 0.0))
    pts = case.grid.index_to_world(np.argwhere(case.structures.body_mask()))
    # rays that stay inside the water laterally (the box is only 30 mm wide; rays crossing its
    # side faces see the lateral interpolation between rays, which is not what this checks)
    pts = pts[(np.abs(pts[:, 0]) <= 6) & (np.abs(pts[:, 2]) <= 6)]
    u, v, t = beam.project(pts)
    fan = fan_depth(case.density, case.grid, beam, (u.min(), u.max()), (v.min(), v.max()), (t.min(), t.max()))
    got = fan(u, v, t)
    ref = radiological_depth_numpy(case.density, case.grid, beam.source, pts)
    # exact within water far from the lateral box faces; 1 mm overall (interface sampling)
    assert np.abs(got - ref).max() < 1.5  # entrance surface: one axial step (1 mm) x density jump
    assert np.median(np.abs(got - ref)) < 0.05
