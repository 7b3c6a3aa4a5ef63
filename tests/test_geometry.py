"""Grid, Structure, StructureSet, signed distances and resampling."""

import numpy as np
import pytest
from scipy import ndimage

from rtlab.geometry import Grid, Structure, StructureSet, resample, signed_distance


def test_grid_index_world_roundtrip_anisotropic():
    g = Grid((7, 11, 13), (2.5, 3.0, 1.5), origin=(-10.0, 5.0, 100.0))
    idx = np.array([[0, 0, 0], [6, 10, 12], [3.5, 2.25, 7.0]])
    w = g.index_to_world(idx)
    assert np.allclose(w[0], [-10.0, 5.0, 100.0])
    assert np.allclose(w[1], [-10 + 6 * 2.5, 5 + 10 * 3.0, 100 + 12 * 1.5])
    assert np.allclose(g.world_to_index(w), idx)
    assert g.nearest_index(w[1] + 0.4) == (6, 10, 12)
    with pytest.raises(ValueError, match="outside the grid"):
        g.nearest_index(w[1] + 10)


def test_grid_default_origin_is_centred_and_bounds():
    g = Grid((4, 5, 6), 2.0)
    assert g.spacing == (2.0, 2.0, 2.0)
    assert np.allclose(g.center, 0.0)
    assert np.allclose(g.bounds[:, 1] - g.bounds[:, 0], g.extent_mm)
    assert g.voxel_volume_cc == pytest.approx(0.008)
    assert g.contains((0, 0, 0)) and not g.contains((0, 0, 7))


@pytest.mark.parametrize(
    "kw",
    [dict(shape=(0, 4, 4), spacing=1), dict(shape=(4, 4), spacing=1), dict(shape=(4, 4, 4), spacing=0),
     dict(shape=(4, 4, 4), spacing=(1, -1, 1)), dict(shape=(4, 4, 4), spacing=float("nan")),
     dict(shape=(4.5, 4, 4), spacing=1)],
)
def test_grid_rejects_bad_input(kw):
    with pytest.raises(ValueError):
        Grid(**kw)


def test_with_spacing_covers_same_box():
    g = Grid((40, 60, 80), (2.5, 3.0, 3.0))
    c = g.with_spacing(5.0)
    assert c.shape == (20, 36, 48)
    assert np.allclose(c.center, g.center)


def _ball(grid, r):
    z, y, x = grid.mesh()
    return z**2 + y**2 + x**2 <= r**2


def test_structure_volume_and_errors():
    g = Grid((41, 41, 41), 1.0)
    s = Structure("ptv", _ball(g, 10), g, kind="target", prescription=60)
    assert s.volume_cc == pytest.approx(4 / 3 * np.pi * 10**3 / 1000, rel=0.02)
    assert np.allclose(s.centroid(), 0, atol=1e-9)
    with pytest.raises(ValueError, match="empty"):
        Structure("nothing", np.zeros(g.shape, bool), g)
    with pytest.raises(ValueError, match="shape"):
        Structure("bad", np.zeros((3, 3, 3), bool), g)
    with pytest.raises(ValueError, match="kind"):
        Structure("bad", _ball(g, 3), g, kind="tumour")
    with pytest.raises(ValueError, match="other than 0 and 1"):
        Structure("bad", _ball(g, 3) * 2, g)
    with pytest.raises(ValueError, match="prescription"):
        Structure("bad", _ball(g, 3), g, kind="target", prescription=-1)


def test_structure_set_grid_mismatch_and_lookup():
    g = Grid((10, 10, 10), 1.0)
    h = Grid((10, 10, 10), 2.0)
    ss = StructureSet(g, [Structure("body", np.ones(g.shape, bool), g, kind="body")])
    ss.add(Structure("t", _ball(g, 3), g, kind="target", prescription=50))
    ss.add(Structure("t2", _ball(g, 2), g, kind="target", prescription=70))
    assert [t.name for t in ss.targets] == ["t2", "t"]
    assert ss.body.name == "body"
    with pytest.raises(ValueError, match="different grid"):
        ss.add(Structure("x", _ball(h, 3), h))
    with pytest.raises(ValueError, match="already"):
        ss.add(Structure("t", _ball(g, 3), g))
    with pytest.raises(KeyError, match="available"):
        ss["nope"]


def _brute_sdf(mask, spacing):
    pts_in = np.argwhere(mask) * spacing
    pts_out = np.argwhere(~mask) * spacing
    out = np.zeros(mask.shape)
    for p in np.argwhere(mask):
        out[tuple(p)] = -np.min(np.linalg.norm(pts_out - p * spacing, axis=1))
    for p in np.argwhere(~mask):
        out[tuple(p)] = np.min(np.linalg.norm(pts_in - p * spacing, axis=1))
    return out


def test_signed_distance_matches_brute_force_anisotropic():
    rng = np.random.default_rng(0)
    mask = ndimage.binary_dilation(rng.random((6, 7, 8)) > 0.9)
    spacing = np.array([2.5, 1.0, 3.0])
    assert np.allclose(signed_distance(mask, spacing), _brute_sdf(mask, spacing))


def test_signed_distance_of_slab_is_exact_in_mm():
    mask = np.zeros((30, 5, 5), bool)
    mask[10:20] = True
    d = signed_distance(mask, (2.0, 1.0, 1.0))
    assert d[25, 2, 2] == pytest.approx(12.0)  # 6 voxels of 2 mm beyond the last inside voxel
    assert d[14, 2, 2] == pytest.approx(-10.0)  # 5 voxels from the first outside voxel
    with pytest.raises(ValueError):
        signed_distance(np.zeros((3, 3, 3), bool))


def test_resample_linear_field_is_exact():
    src = Grid((10, 12, 14), (5.0, 5.0, 5.0), origin=(0, 0, 0))
    dst = Grid((15, 20, 22), (2.5, 3.0, 3.0), origin=(2.0, 1.0, 0.5))
    z, y, x = src.mesh(sparse=False)
    f = 2 * z - y + 0.5 * x + 3
    out = resample(f, src, dst)
    zz, yy, xx = dst.mesh(sparse=False)
    inside = (zz <= 45) & (yy <= 55) & (xx <= 65)
    assert np.allclose(out[inside], (2 * zz - yy + 0.5 * xx + 3)[inside], atol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        resample(f[:-1], src, dst)
