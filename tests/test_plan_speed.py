"""What issue #18 item 3 (end-to-end speed of `rtlab plan`) changed, checked against references."""

from __future__ import annotations

import numpy as np
import pytest

from rtlab.core.geometry import signed_distance
from rtlab.phantoms import get_phantom
from rtlab.planning import recipes


def _roi_whole_grid(case, roi_mm):
    """The region of interest as it was computed before: the distance on the whole CT grid."""
    tm = np.zeros(case.grid.shape, bool)
    for t in case.structures.targets:
        tm |= t.mask
    roi = signed_distance(tm, case.grid.spacing) <= roi_mm
    for name in recipes.goal_limits(case):
        roi |= case.structures[name].mask
    return roi & case.structures.body_mask().astype(bool)


@pytest.mark.parametrize("name", ["tg119_cshape_easy", "tg119_headneck", "sphere"])
@pytest.mark.parametrize("roi_mm", [3.0, 20.0, 45.0, 400.0])
def test_region_of_interest_in_the_target_box_equals_the_whole_grid(name, roi_mm):
    case = get_phantom(name, spacing=6.0)
    got = recipes.region_of_interest(case, roi_mm)
    want = _roi_whole_grid(case, roi_mm)
    assert got.shape == case.grid.shape and got.dtype == bool
    np.testing.assert_array_equal(got, want)
    assert got.sum() > 0


def _resample_map_coordinates(values, source, target, fill=0.0):
    """The former order-1 resample: scipy.ndimage.map_coordinates on the clamped coordinates."""
    from scipy import ndimage

    coords = []
    for ax_t, o, d, n in zip(target.axes(), source.origin, source.spacing, source.shape):
        c = (ax_t - o) / d
        c = np.where((c < 0) & (c >= -0.5), 0.0, c)
        c = np.where((c > n - 1) & (c <= n - 0.5), n - 1.0, c)
        coords.append(c)
    cz, cy, cx = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(np.asarray(values, float), [cz, cy, cx], order=1, mode="constant", cval=fill)


@pytest.mark.parametrize("seed", range(12))
def test_separable_trilinear_resample_equals_map_coordinates(seed):
    from rtlab.core.geometry import Grid, resample

    rng = np.random.default_rng(seed)
    src = Grid(tuple(int(v) for v in rng.integers(1, 9, 3)), tuple(rng.uniform(1, 6, 3)), tuple(rng.uniform(-5, 5, 3)))
    tgt = Grid(tuple(int(v) for v in rng.integers(1, 14, 3)), tuple(rng.uniform(0.5, 4, 3)),
               tuple(rng.uniform(-10, 5, 3)))
    v = rng.normal(size=src.shape)
    for fill in (0.0, 3.5):
        got = resample(v, src, tgt, order=1, fill=fill)
        want = _resample_map_coordinates(v, src, tgt, fill)
        assert got.shape == tgt.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
