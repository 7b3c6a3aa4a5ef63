"""Influence matrix, fluence engine, patch updates, MU and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp

from rtlab.dose import build_influence, FluenceDose, generic_6mv, beam_mu, mu_per_unit_fluence
from rtlab.dose.kernels import influence_dense_numpy
from rtlab.dose.influence import beam_voxels
from rtlab.dose._testcases import water_box
from rtlab.plan import Beam


@pytest.fixture(scope="module")
def box():
    return water_box(shape=(21, 41, 21), spacing=(3.0, 3.0, 3.0), surface_y=-45.0, target_halfwidth=(10, 10))


def test_numba_matches_numpy_reference(box):
    im = build_influence(box, [0, 90], cutoff_mm=25.0, progress=False, broad_sigma_mm=None)  # all in the matrix
    assert isinstance(im.matrix, sp.csr_matrix) and im.matrix.dtype == np.float32
    pts = box.grid.index_to_world(np.stack(np.unravel_index(im.voxel_index, box.grid.shape), 1))
    for b, beam in enumerate(im.beams):
        bv = beam_voxels(box, beam, im.machine, pts, 25.0)
        comp, sig, w = im.machine.gaussians()
        ref = influence_dense_numpy(bv.u, bv.v, bv.w, beam.bixels.centers(), beam.bixel_mm, comp, sig, w, 25.0)
        got = im.matrix[:, im.beamlet_slices[b]].toarray()
        np.testing.assert_allclose(got, ref, atol=2e-6 * ref.max(), rtol=1e-4)


def test_influence_equals_fluence_dose(box):
    beams = [0, 120, 240]
    im = build_influence(box, beams, cutoff_mm=200.0, progress=False)
    fd = FluenceDose(box, im.beams, fluence_mm=0.5)
    w = np.random.default_rng(0).uniform(0.2, 1.0, im.shape[1])
    d_im = im.dose_vector(w)
    d_fd = fd.set_bixel_weights(w).copy()
    m = d_im.max()
    # bilinear interpolation of the primary convolution between 0.5 mm nodes (see fluence.py)
    assert np.abs(d_im - d_fd).max() < 0.01 * m
    assert np.abs(d_im - d_fd).mean() < 0.001 * m


def test_patch_update_equals_full_recompute(box):
    fd = FluenceDose(box, [0, 90], dose_grid_mm=6.0, fluence_mm=1.0)
    fd.set_bixel_weights(np.ones(sum(b.bixels.n for b in fd.beams)))
    rng = np.random.default_rng(2)
    fd.patch_update(0, 3, 4, rng.uniform(-0.3, 0.5, (10, 10)))
    fd.patch_update(1, 0, 0, rng.uniform(0, 0.5, (7, 12)))
    inc = fd.dose_vector.copy()
    full = fd.compute().copy()
    assert np.abs(inc - full).max() <= 1e-5 * np.abs(full).max()


def test_opposed_beams_symmetric_and_inverse_square():
    case = water_box(shape=(11, 41, 11), spacing=(3.0, 3.0, 3.0), surface_y=-61.0, target_halfwidth=(5, 5))
    case.density[:] = 1.0  # all water, symmetric in y
    from rtlab.plan import BixelGrid

    bx = BixelGrid(5.0, -2, -2, np.ones((5, 5), bool))
    im = build_influence(case, [Beam(0.0, bixels=bx), Beam(180.0, bixels=bx)], voxels="all", progress=False,
                         cutoff_mm=60)
    d = im.dose(np.ones(im.shape[1]))
    prof = d[5, :, 5]
    np.testing.assert_allclose(prof, prof[::-1], rtol=2e-3)
    # inverse square: vacuum-like medium (depth ~ 0 effect removed by dividing D_i) -> scale (SAD/t)^2
    pts = np.array([[0.0, -30.0, 0.0], [0.0, 30.0, 0.0]])
    bv = beam_voxels(case, im.beams[0], im.machine, pts, 60)
    ratio = bv.w[0, 0] / im.machine.depth_dose(bv.depth[0])[0] / (bv.w[1, 0] / im.machine.depth_dose(bv.depth[1])[0])
    assert ratio == pytest.approx((1030.0 / 970.0) ** 2, rel=1e-6)


def test_low_density_slab_raises_dose_behind_it(box):
    im = build_influence(box, [0], progress=False)
    w = np.ones(im.shape[1])
    d0 = im.dose(w)
    lung = box.density.copy()
    lung[:, 18:24, :] = 0.25
    from rtlab.case import Case

    case2 = Case("lung", box.grid, box.ct, box.structures, density=lung)
    d1 = build_influence(case2, [0], progress=False).dose(w)
    assert d1[10, 30, 10] > 1.05 * d0[10, 30, 10]


def test_coarse_dose_grid_resamples_to_ct(box):
    im = build_influence(box, [0], dose_grid_mm=6.0, progress=False)
    assert im.grid.spacing == (6.0, 6.0, 6.0)
    d = im.dose(np.ones(im.shape[1]), on="ct")
    assert d.shape == box.grid.shape and d[~box.structures.body_mask()].max() == 0
    fine = build_influence(box, [0], progress=False).dose(np.ones(im.shape[1]))
    c = (slice(8, 13), slice(25, 35), slice(8, 13))
    np.testing.assert_allclose(d[c], fine[c], rtol=0.03)


def test_dose_grid_old_keyword_still_works_for_one_release(box):
    new = build_influence(box, [0], dose_grid_mm=6.0, progress=False)
    with pytest.warns(PendingDeprecationWarning, match="dose_grid_mm"):
        old = build_influence(box, [0], dose_grid=6.0, progress=False)
    assert (old.matrix != new.matrix).nnz == 0 and old.grid.is_same(new.grid)
    with pytest.raises(TypeError, match="both dose_grid= and dose_grid_mm="):
        build_influence(box, [0], dose_grid=6.0, dose_grid_mm=6.0, progress=False)
    with pytest.warns(PendingDeprecationWarning):
        fd = FluenceDose(box, [0], dose_grid=6.0)
    assert fd.grid.is_same(new.grid)


def test_engines_follow_the_dose_engine_protocol(box):
    """InfluenceMatrix, PlanOperator, FluenceDose and the point kernel: dose(x) and vjp(x, g)."""
    from rtlab.dose import DoseEngine, PatchDoseEngine, PlanOperator, PointKernelDose

    im = build_influence(box, [0, 90], dose_grid_mm=6.0, progress=False)
    fd = FluenceDose(box, im.beams, dose_grid_mm=6.0)
    pk = PointKernelDose(box.grid, indices=np.flatnonzero(box.structures.body_mask().ravel())[:50])
    for engine in (im, PlanOperator(im), fd, pk):
        assert isinstance(engine, DoseEngine)
    assert isinstance(fd, PatchDoseEngine) and not isinstance(im, PatchDoseEngine)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, im.shape[1])
    for on in ("ct", "dose"):  # vjp is the adjoint of dose: <g, A x> = <A^T g, x>
        g = rng.normal(size=im.dose(x, on=on).shape)
        assert np.sum(g * im.dose(x, on=on)) == pytest.approx(np.dot(im.vjp(x, g, on=on), x), rel=1e-5)
    op = PlanOperator(im)
    g = rng.normal(size=op.shape[0])
    assert np.dot(g, op.dose(x)) == pytest.approx(np.dot(op.vjp(x, g), x), rel=1e-5)


def test_mu_calibration():
    k = mu_per_unit_fluence(generic_6mv())
    assert k == pytest.approx(100.0, rel=0.02)  # ~1 Gy per unit fluence -> 100 MU
    np.testing.assert_allclose(beam_mu([np.full((3, 3), 2.0), np.zeros((2, 2))]), [2 * k, 0.0])


def test_bad_geometry_raises(box):
    with pytest.raises(ValueError, match="outside the CT grid"):
        build_influence(box, [Beam(0.0, isocenter=(0, 500, 0))], progress=False)
    with pytest.raises(ValueError, match="beams is empty"):
        build_influence(box, [], progress=False)
    bad = water_box(shape=(9, 9, 9), spacing=(3.0, 3.0, 3.0), surface_y=-20.0)
    bad.density[4, 4, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        build_influence(bad, [0], progress=False)
    with pytest.raises(ValueError, match="cutoff_mm"):
        build_influence(box, [0], cutoff_mm=0, progress=False)
    with pytest.raises(ValueError, match="bixel_mm"):
        Beam(0.0, bixel_mm=-5)
    from rtlab.case import Case
    from rtlab.geometry import Structure, StructureSet

    ss = StructureSet(box.grid, [Structure("body", box.structures["body"].mask, box.grid, "body"),
                                 Structure("t", np.zeros(box.grid.shape, bool), box.grid, "target", allow_empty=True)])
    with pytest.raises(ValueError, match="zero field|empty"):
        build_influence(Case("e", box.grid, box.ct, ss), [0], progress=False)


def test_holey_bixel_mask_matches_numpy_reference(box):
    """Rows of the bixel mask with several runs of active bixels (and empty rows)."""
    from rtlab.plan import BixelGrid

    mask = np.ones((6, 7), bool)
    mask[1, 2:4] = False  # two runs
    mask[3, :] = False  # empty row
    mask[4, ::2] = False  # four one-bixel runs
    beam = Beam(30.0, bixels=BixelGrid(5.0, -3, -3, mask))
    im = build_influence(box, [beam], cutoff_mm=18.0, progress=False, gpu=False, broad_sigma_mm=None)
    pts = box.grid.index_to_world(np.stack(np.unravel_index(im.voxel_index, box.grid.shape), 1))
    bv = beam_voxels(box, im.beams[0], im.machine, pts, 18.0)
    comp, sig, w = im.machine.gaussians()
    ref = influence_dense_numpy(bv.u, bv.v, bv.w, beam.bixels.centers(), 5.0, comp, sig, w, 18.0)
    got = im.matrix.toarray()
    np.testing.assert_allclose(got, ref, atol=2e-6 * ref.max(), rtol=1e-4)
    assert im.matrix.nnz == np.count_nonzero(ref)  # same cut-off decisions entry by entry
    assert im.backend == "cpu" and im.matrix.has_sorted_indices
