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
