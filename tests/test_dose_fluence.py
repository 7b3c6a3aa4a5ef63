"""Fluence engine kernels (rtlab.dose.fluence) against pure-numpy references; patch updates."""

import numpy as np
import pytest
from scipy.special import ndtr

from rtlab.dose import FluenceDose
from rtlab.dose import fluence_kernels as F
from rtlab.dose._testcases import water_box


def _kern(s, mk, f=1.0):
    m = np.arange(-mk, mk + 1) * f
    return ndtr((m + f / 2) / s) - ndtr((m - f / 2) / s)


def _gaussians():
    sig = np.array([2.0, 5.0, 9.0])
    stride = np.maximum(1, np.floor(sig / 4).astype(np.int64))
    mk = np.ceil(3 * sig).astype(np.int64)
    moff = (np.ceil(mk / stride) * stride).astype(np.int64)
    kerns = [_kern(s, m) for s, m in zip(sig, mk)]
    return stride, mk, moff, kerns


def _direct_conv(psi, row0, col0, kern, mk, stride, moff, box):
    """Node values by the defining double sum (independent of both implementations)."""
    nr_lo, nr_hi, nc_lo, nc_hi = box
    out = np.zeros((nr_hi - nr_lo, nc_hi - nc_lo))
    for jr in range(out.shape[0]):
        pr = (nr_lo + jr) * stride - moff
        for jc in range(out.shape[1]):
            pc = (nc_lo + jc) * stride - moff
            for r in range(psi.shape[0]):
                for c in range(psi.shape[1]):
                    dr, dc = pr - (row0 + r), pc - (col0 + c)
                    if abs(dr) <= mk and abs(dc) <= mk:
                        out[jr, jc] += psi[r, c] * kern[dr + mk] * kern[dc + mk]
    return out


@pytest.mark.parametrize("row0,col0,shape", [(0, 0, (6, 5)), (7, 3, (4, 9)), (20, 25, (5, 5))])
def test_conv_boxes_matches_numpy_and_direct_sum(row0, col0, shape):
    rng = np.random.default_rng(row0 + col0)
    stride, mk, moff, kerns = _gaussians()
    psi = rng.uniform(-1, 1, shape)
    nr = np.array([(30 - 1 + 2 * m) // s + 1 for m, s in zip(moff, stride)])
    r1, c1 = row0 + shape[0], col0 + shape[1]
    boxes = []
    for g in range(3):
        s, m, mo = stride[g], mk[g], moff[g]
        boxes.append((max(0, -((m - row0 - mo) // s)), min(nr[g], (r1 - 1 + m + mo) // s + 1),
                      max(0, -((m - col0 - mo) // s)), min(nr[g], (c1 - 1 + m + mo) // s + 1)))
    bx = np.array(boxes, np.int64)
    sizes = (bx[:, 1] - bx[:, 0] + 2) * (bx[:, 3] - bx[:, 2] + 2)
    buf_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    buf = np.full(buf_off[-1], np.nan)
    kern_off = np.concatenate([[0], np.cumsum([len(k) for k in kerns])]).astype(np.int64)
    F.conv_boxes(psi, row0, col0, np.concatenate(kerns), kern_off, mk, stride, moff,
                  bx[:, 0].copy(), bx[:, 1].copy(), bx[:, 2].copy(), bx[:, 3].copy(), buf, buf_off)
    for g in range(3):
        got = buf[buf_off[g] : buf_off[g + 1]].reshape(bx[g, 1] - bx[g, 0] + 2, -1)
        ref = F.conv_boxes_reference(psi, row0, col0, kerns[g], mk[g], stride[g], moff[g], boxes[g])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
        assert np.all(got[0] == 0) and np.all(got[-1] == 0) and np.all(got[:, 0] == 0) and np.all(got[:, -1] == 0)
        direct = _direct_conv(psi, row0, col0, kerns[g], mk[g], stride[g], moff[g], boxes[g])
        np.testing.assert_allclose(got[1:-1, 1:-1], direct, rtol=1e-12, atol=1e-14)


def _box_args(boxes, inv_s, ox, oy):
    """Padded node boxes as the arguments of ``F.apply_boxes``: ``buf, buf_off, hp, wp`` and the
    open pixel interval where each box is non-zero (x in (0, wp - 1), y in (0, hp - 1))."""
    buf = np.concatenate([b.ravel() for b in boxes])
    buf_off = np.concatenate([[0], np.cumsum([b.size for b in boxes])]).astype(np.int64)
    hp = np.array([b.shape[0] for b in boxes], np.int64)
    wp = np.array([b.shape[1] for b in boxes], np.int64)
    u_lo, u_hi = -ox / inv_s, (wp - 1 - ox) / inv_s
    v_lo, v_hi = -oy / inv_s, (hp - 1 - oy) / inv_s
    return buf, buf_off, hp, wp, u_lo, u_hi, v_lo, v_hi


@pytest.mark.parametrize("threads", [1, 2])
def test_apply_boxes_matches_numpy_reference(threads):
    rng = np.random.default_rng(5)
    n = 1000
    # voxels inside, near and far outside the boxes, plus "outside the beam" (-1e6, coef 0)
    up = rng.uniform(-40, 80, n).astype(np.float32)
    vp = rng.uniform(-40, 80, n).astype(np.float32)
    up[::17] = -1e6
    coef = rng.uniform(0, 2, (3, n)).astype(np.float32)
    coef[:, ::17] = 0
    shapes = [(12, 9), (7, 8), (4, 5)]
    boxes = [np.pad(rng.uniform(-1, 1, s), 1).astype(np.float32) for s in shapes]
    inv_s = np.array([1.0, 1 / 3, 1 / 7])
    ox = np.array([-3.0, 2.5, 4.0])
    oy = np.array([1.0, -0.5, 6.0])
    buf, buf_off, hp, wp, u_lo, u_hi, v_lo, v_hi = _box_args(boxes, inv_s, ox, oy)
    bbox = F.block_bbox(up, vp, (coef != 0).any(axis=0))
    dose = np.full(n, 0.5)
    tmp = np.zeros(n, np.float32)
    with F.Threads(threads):
        F.apply_boxes(up, vp, coef, bbox, buf, buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi, tmp)
        F.flush(tmp, dose)
    assert not tmp.any()  # left zero for the next update
    ref = 0.5 + F.apply_boxes_reference(up, vp, coef, boxes, inv_s, ox, oy)
    assert np.abs(ref - 0.5).max() > 0.1  # the test data do reach the boxes
    np.testing.assert_allclose(dose, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("G,sort", [(1, False), (2, True), (3, True), (4, True), (4, False)])
def test_apply_boxes_segments_match_reference(G, sort):
    """Any number of Gaussians (more than three go in groups); voxels sorted along u make the small boxes
    cover a short range of blocks."""
    rng = np.random.default_rng(10 + G)
    n = 40 * F.BLOCK + 7
    up = rng.uniform(-60, 120, n).astype(np.float32)
    if sort:
        up.sort()
    vp = rng.uniform(-30, 60, n).astype(np.float32)
    up[5::23] = -1e6
    coef = rng.uniform(0, 2, (G, n)).astype(np.float32)
    coef[:, 5::23] = 0
    # box g: small (narrow) for even g > 0, large (covering everything) otherwise
    shapes = [(30, 40) if g % 2 == 0 and g > 0 else (9, 11) for g in range(G)]
    shapes[0] = (60, 70)
    boxes = [np.pad(rng.uniform(-1, 1, sh), 1).astype(np.float32) for sh in shapes]
    inv_s = np.array([1.0, 1 / 3, 1.0, 1 / 7][:G])
    ox = np.array([40.0, 2.5, -10.0, 8.0][:G])
    oy = np.array([20.0, 1.0, 5.0, 4.0][:G])
    buf, buf_off, hp, wp, u_lo, u_hi, v_lo, v_hi = _box_args(boxes, inv_s, ox, oy)
    bbox = F.block_bbox(up, vp, (coef != 0).any(axis=0))
    dose = np.full(n, 0.25)
    tmp = np.zeros(n, np.float32)
    evals = F.apply_boxes(up, vp, coef, bbox, buf, buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi, tmp)
    F.flush(tmp, dose)
    ref = 0.25 + F.apply_boxes_reference(up, vp, coef, boxes, inv_s, ox, oy)
    # each Gaussian runs from its first to its last block that meets its box, nothing else
    act = [np.flatnonzero(~((bbox[:, 1] <= u_lo[g]) | (bbox[:, 0] >= u_hi[g]) | (bbox[:, 3] <= v_lo[g])
                            | (bbox[:, 2] >= v_hi[g]))) for g in range(G)]
    assert evals == sum(min(n, (a[-1] + 1) * F.BLOCK) - a[0] * F.BLOCK for a in act if a.size)
    if sort and G > 1:
        assert evals < G * n  # sorted voxels: the small boxes skip blocks
    assert np.abs(ref - 0.25).max() > 0.1
    # float32 node coordinates (x up to ~160 nodes: ulp 1.5e-5) on random +-1 nodes, coef <= 2
    np.testing.assert_allclose(dose, ref, rtol=1e-5, atol=3e-5)


def test_block_bbox_covers_active_voxels():
    rng = np.random.default_rng(1)
    n = 3 * F.BLOCK + 5
    up, vp = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    act = rng.random(n) < 0.5
    bb = F.block_bbox(up, vp, act)
    assert bb.shape == (4, 4)
    for b in range(4):
        sl = slice(b * F.BLOCK, (b + 1) * F.BLOCK)
        a = act[sl]
        assert bb[b, 0] == up[sl][a].min() and bb[b, 1] == up[sl][a].max()
        assert bb[b, 2] == vp[sl][a].min() and bb[b, 3] == vp[sl][a].max()


@pytest.fixture(scope="module")
def box():
    return water_box(shape=(15, 31, 17), spacing=(3.0, 3.0, 3.0), surface_y=-40.0, target_halfwidth=(9, 9))


@pytest.mark.parametrize("threads", [1, 2])
def test_patch_updates_at_edges_equal_full_recompute(box, threads):
    fd = FluenceDose(box, [0, 130, 250], dose_grid_mm=4.0, fluence_mm=1.0, threads=threads)
    fd.set_bixel_weights(np.ones(sum(b.bixels.n for b in fd.beams)))
    rng = np.random.default_rng(3)
    for b, st in enumerate(fd._states):
        R, C = st.shape
        fd.patch_update(b, 0, 0, rng.uniform(-0.2, 0.6, (5, 4)))  # corner
        fd.patch_update(b, R - 3, C - 6, rng.uniform(0, 0.4, (3, 6)))  # opposite corner
        fd.patch_update(b, R // 2, 2, rng.uniform(0, 1.0, (1, C - 4)))  # a full-width row
    inc = fd.dose_vector.copy()
    fluence = [f.copy() for f in fd.fluence]
    full = fd.compute().copy()
    assert np.abs(full).max() > 0
    assert np.abs(inc - full).max() <= 1e-5 * np.abs(full).max()
    # a fresh engine set to the final maps gives the same dose
    fd2 = FluenceDose(box, fd.beams, dose_grid_mm=4.0, fluence_mm=1.0)
    for b, f in enumerate(fluence):
        fd2.set_fluence(b, f)
    np.testing.assert_allclose(fd2.compute(), full, rtol=0, atol=1e-12 * np.abs(full).max())
    # node grids kept by the updates equal the recomputed ones
    g = fd._states[0].g[1]
    assert g.C.shape == (g.nr, g.nc) and np.abs(g.C).max() > 0


def test_patch_update_bad_input(box):
    fd = FluenceDose(box, [0], dose_grid_mm=6.0)
    with pytest.raises(ValueError, match="delta must be a 2D patch"):
        fd.patch_update(0, 0, 0, np.ones(3))
    with pytest.raises(ValueError, match="exceed the fluence map"):
        fd.patch_update(0, -1, 0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="delta"):
        fd.patch_update(0, 0, 0, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="threads must be a positive int"):
        FluenceDose(box, [0], dose_grid_mm=6.0, threads=0)


def test_patch_update_many_equals_one_by_one_and_full_recompute(box):
    """One multi-beam update (two patches on one beam too) = the patches one at a time = a full recompute."""
    rng = np.random.default_rng(7)
    fa = FluenceDose(box, [0, 130, 250], dose_grid_mm=4.0, fluence_mm=1.0)
    fb = FluenceDose(box, fa.beams, dose_grid_mm=4.0, fluence_mm=1.0, threads=1)
    w = rng.uniform(0.2, 1.0, sum(b.bixels.n for b in fa.beams))
    fa.set_bixel_weights(w)
    fb.set_bixel_weights(w)
    patches = []
    for b, st in enumerate(fa._states):
        R, C = st.shape
        patches.append((b, 2, 3, rng.uniform(-0.3, 0.6, (6, 5))))
        patches.append((b, R // 2, C // 3, rng.uniform(0, 0.5, (4, 9))))  # a second patch on the same beam
    before = fa.dose_vector.copy()
    out = fa.patch_update_many(patches)
    assert out is fa.dose_vector and np.abs(out - before).max() > 1e-3 * before.max()
    for p in patches:
        fb.patch_update(*p)
    scale = np.abs(fa.dose_vector).max()
    np.testing.assert_allclose(fa.dose_vector, fb.dose_vector, rtol=0, atol=1e-6 * scale)
    for f1, f2 in zip(fa.fluence, fb.fluence):
        np.testing.assert_array_equal(f1, f2)
    inc = fa.dose_vector.copy()
    assert np.abs(inc - fa.compute()).max() <= 1e-5 * scale
    assert not fa._tmp.any()  # the float32 accumulator is left zero between updates


def test_patch_update_many_checks_every_patch_first(box):
    fd = FluenceDose(box, [0, 90], dose_grid_mm=6.0)
    fd.set_bixel_weights(np.ones(sum(b.bixels.n for b in fd.beams)))
    d0, f0 = fd.dose_vector.copy(), [f.copy() for f in fd.fluence]
    good = (0, 0, 0, np.ones((2, 2)))
    for bad, msg in [((2, 0, 0, np.ones((2, 2))), "beam_index must be an int in 0..1"),
                     ((1, 0, 0, np.full((2, 2), np.inf)), "delta"),
                     ((1, 0, 0), r"\(beam_index, row, col, delta\)"),
                     ((True, 0, 0, np.ones((2, 2))), "beam_index")]:
        with pytest.raises(ValueError, match=msg):
            fd.patch_update_many([good, bad])
        # nothing applied: the good patch before the bad one did not change fluence or dose
        np.testing.assert_array_equal(fd.dose_vector, d0)
        for f, g in zip(fd.fluence, f0):
            np.testing.assert_array_equal(f, g)
    assert fd.patch_update_many([]) is fd.dose_vector


# -- evaluation from the node grids, candidate patches, deferred Gaussians, state -----------------------
def _engine(box, **kw):
    inner = np.zeros(box.grid.shape, bool)
    inner[4:11, 10:25, 4:13] = True
    inner &= box.structures.body_mask().astype(bool)
    fd = FluenceDose(box, [0, 130, 250], fluence_mm=1.0, voxels=inner, eval_voxels="body", threads=1, **kw)
    rng = np.random.default_rng(11)
    fd.set_bixel_weights(rng.uniform(0.5, 1.0, sum(b.bixels.n for b in fd.beams)))
    return fd, rng


def _patches(fd, rng, n=3):
    out = []
    for b in range(n):
        sh = fd.map_shape(b)
        r, c = int(rng.integers(0, sh[0] - 6)), int(rng.integers(0, sh[1] - 6))
        out.append((b, r, c, rng.normal(0, 0.2, (5, 6))))
    return out


def test_evaluate_reads_the_node_grids(box):
    fd, _ = _engine(box)
    full = fd.evaluate()
    assert full.shape == fd.eval_index.shape
    # the selected voxels' float32-accumulated doses agree with the float64 reading of the node grids
    np.testing.assert_allclose(full[fd.eval_position], fd.dose_vector, rtol=1e-5, atol=1e-6 * full.max())
    # one voxel's dose does not depend on which others are read (serial and parallel kernels)
    some = np.array([3, 17, fd.eval_index.size - 1])
    np.testing.assert_array_equal(fd.evaluate(some), full[some])
    # a voxel outside the selection is still exact: compare with an engine that selects it
    ref = FluenceDose(box, fd.beams, fluence_mm=1.0)
    for b in range(fd.n_beams):
        ref.set_fluence(b, fd.fluence[b])
    ref.compute()
    np.testing.assert_allclose(full, ref.dose_vector, rtol=1e-5, atol=1e-5 * full.max())


def test_patch_effect_is_the_change_a_patch_makes(box):
    fd, rng = _engine(box)
    patches = _patches(fd, rng)
    pos = np.arange(0, fd.eval_index.size, 7)
    before = fd.evaluate(pos)
    effect = fd.patch_effect(patches, pos)
    np.testing.assert_array_equal(fd.evaluate(pos), before)  # nothing changed
    fd.patch_update_many(patches)
    np.testing.assert_allclose(fd.evaluate(pos) - before, effect, rtol=1e-9, atol=1e-12 * np.abs(before).max())


def test_lazy_gaussians_wait_for_sync(box):
    eager, rng = _engine(box)
    lazy, _ = _engine(box, lazy_sigma_mm=20.0)
    np.testing.assert_array_equal(lazy.dose_vector, eager.dose_vector)  # full computes apply everything
    patches = _patches(eager, rng)
    eager.patch_update_many(patches)
    lazy.patch_update_many(patches)
    assert lazy.has_pending and not eager.has_pending
    assert np.abs(lazy.dose_vector - eager.dose_vector).max() > 0  # the far scatter is not there yet
    np.testing.assert_array_equal(lazy.evaluate(), eager.evaluate())  # the node grids are current
    lazy.sync()
    assert not lazy.has_pending and lazy.last_sync_change_gy > 0
    np.testing.assert_allclose(lazy.dose_vector, eager.dose_vector, rtol=1e-6, atol=1e-6 * eager.dose_vector.max())


@pytest.mark.parametrize("lazy", [None, 20.0])
def test_sparse_updates_equal_box_updates(box, lazy):
    """update='sparse' (node -> voxel matrix, float64) = update='boxes' (float32 voxel sums), also with lazy sync."""
    boxes, rng = _engine(box, lazy_sigma_mm=lazy)
    sparse, _ = _engine(box, lazy_sigma_mm=lazy, update="sparse")
    np.testing.assert_array_equal(sparse.dose_vector, boxes.dose_vector)  # full computes take the box path
    for _ in range(3):
        patches = _patches(boxes, rng)
        boxes.patch_update_many(patches)
        sparse.patch_update_many(patches)
    boxes.sync()
    sparse.sync()
    np.testing.assert_allclose(sparse.dose_vector, boxes.dose_vector, rtol=1e-6, atol=1e-6 * boxes.dose_vector.max())
    np.testing.assert_array_equal(sparse.evaluate(), boxes.evaluate())  # same node grids
    with pytest.raises(ValueError, match="update must be"):
        FluenceDose(box, [0], update="dense")


def test_state_restore_and_scale(box):
    fd, rng = _engine(box, lazy_sigma_mm=20.0)
    st = fd.state()
    d0, e0 = fd.dose_vector.copy(), fd.evaluate()
    fd.patch_update_many(_patches(fd, rng))
    fd.restore(st)
    np.testing.assert_array_equal(fd.dose_vector, d0)
    np.testing.assert_array_equal(fd.evaluate(), e0)
    assert not fd.has_pending
    fd.scale(2.0)
    np.testing.assert_array_equal(fd.evaluate(), 2.0 * e0)
    np.testing.assert_array_equal(fd.dose_vector, 2.0 * d0)
    with pytest.raises(ValueError, match="eval_voxels must contain"):
        FluenceDose(box, [0], voxels="body", eval_voxels=np.zeros(box.grid.shape, bool) | (np.arange(box.grid.size)
                                                                                           .reshape(box.grid.shape) == 0))
