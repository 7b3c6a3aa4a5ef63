"""The 3D isodose-surface request (paper 004, section 3.2) against closed forms on a spherical dose."""

import numpy as np
import pytest

from rtlab.core.geometry import Grid
from rtlab.methods.ids import isodose_surface_request


def _sphere_dose(shape=(41, 45, 49), spacing=(2.0, 1.5, 1.5)):
    grid = Grid(shape, spacing)
    zz, yy, xx = np.meshgrid(*grid.axes(), indexing="ij")
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    return grid, 100.0 - r  # Gy; the 70 Gy isodose is the sphere r = 30 mm


@pytest.mark.parametrize("shift", [-6.0, 4.0])
def test_moved_cap_lies_on_the_shifted_sphere(shift):
    grid, dose = _sphere_dose()
    point = np.array([0.0, 0.0, 30.0])                      # on the 70 Gy surface, +x side
    out = isodose_surface_request(dose, grid, 70.0, point, shift, radius_mm=8.0)
    # outward normal of a dose falling with r: +x here (closed form)
    np.testing.assert_allclose(out["normal"], [0, 0, 1], atol=0.02)
    w = grid.index_to_world(out["voxels"])
    r = np.linalg.norm(w, axis=1)
    # the region is the surface voxels within 8 mm of the point, each moved by `shift` along +x:
    # their radius is 30 + shift up to the cap's curvature and a voxel's rounding
    half_diag = 0.5 * np.linalg.norm(grid.spacing)
    sag = 30 - np.sqrt(30**2 - 8**2)
    assert np.all(np.abs(r - (30 + shift)) <= half_diag + sag + 1.0)
    assert np.all(np.linalg.norm(w[:, :2], axis=1) <= 8.0 + half_diag)
    # before the move the region voxels sat on the 70 Gy surface (inner boundary: dose >= 70)
    d_region = dose[tuple(out["region"].T)]
    assert np.all(d_region >= 70) and np.all(d_region < 70 + max(grid.spacing) + 1e-9)
    assert len(out["voxels"]) >= 0.5 * len(out["region"])


def test_point_is_snapped_and_checked():
    grid, dose = _sphere_dose()
    out = isodose_surface_request(dose, grid, 70.0, [0.0, 3.0, 27.0], -3.0)
    assert abs(np.linalg.norm(out["picked_mm"]) - 30) <= 1.5
    with pytest.raises(ValueError, match="from the 70 Gy isodose surface"):
        isodose_surface_request(dose, grid, 70.0, [0.0, 0.0, 0.0], -3.0)   # centre: 30 mm away
    with pytest.raises(ValueError, match="no isodose surface"):
        isodose_surface_request(dose, grid, 150.0, [0.0, 0.0, 30.0], -3.0)
    with pytest.raises(ValueError, match="grid shape"):
        isodose_surface_request(dose[:-1], grid, 70.0, [0.0, 0.0, 30.0], -3.0)
    with pytest.raises(ValueError, match="NaN"):
        bad = dose.copy(); bad[0, 0, 0] = np.nan
        isodose_surface_request(bad, grid, 70.0, [0.0, 0.0, 30.0], -3.0)
    with pytest.raises(ValueError, match="point_mm"):
        isodose_surface_request(dose, grid, 70.0, [0.0, np.nan, 30.0], -3.0)
    with pytest.raises(ValueError, match="radius_mm"):
        isodose_surface_request(dose, grid, 70.0, [0.0, 0.0, 30.0], -3.0, radius_mm=0)


# -- the panel: a point picked in 3D or on a slice, then the library call -----------------------------
def _panel():
    pytest.importorskip("anywidget")
    pytest.importorskip("ipyvolume")
    from rtlab.methods.ids import IDSSession
    from rtlab.phantoms import get_phantom
    from rtlab.widgets.ids_panel import IDSPanel

    c = get_phantom("horseshoe", spacing=6.0)
    return IDSPanel(IDSSession(c, kernel_sigma_mm=4.0), display_size=200, dvh_bins=50)


def test_panel_surface_request_from_3d_pick():
    panel = _panel()
    s = panel.session
    ref = s.reference_gy
    panel.surface_level_input.value = 80.0
    panel.surface_shift_input.value = -9.0
    panel.surface_radius_input.value = 12.0
    panel.steps_input.value = 0
    v3 = panel.show_3d(step_size=1)
    pts = v3.pick_points
    assert panel.surface_point == []
    # a click on a marker (what the browser reports): its vertex becomes the surface point
    i = len(pts) // 3
    v3.pick_scatter.clicked_index = i
    np.testing.assert_allclose(panel.surface_point, pts[i])
    # the panel's request is the library's: same voxels as isodose_surface_request on the shown dose
    ref_req = isodose_surface_request(panel.dose, s.grid, 0.8 * ref, pts[i], -9.0, 12.0)
    before = np.array([s.dose_at(tuple(v)) for v in ref_req["voxels"]])
    panel.request_surface()
    panel.wait(120)
    np.testing.assert_array_equal(panel.last_surface["voxels"], ref_req["voxels"])
    after = np.array([s.dose_at(tuple(v)) for v in ref_req["voxels"]])
    level = 0.8 * ref
    assert before.mean() > level + 0.05 * ref          # pushed inwards: the voxels were hotter than the level
    assert np.abs(after - level).mean() < 0.5 * np.abs(before - level).mean()
    # the 3D view follows the new dose, its markers on the new surface
    assert v3.pick_scatter is not None and len(v3.pick_points) > 0


def test_panel_surface_point_from_slice_and_errors():
    panel = _panel()
    s = panel.session
    with pytest.raises(ValueError, match="no surface point"):
        panel.request_surface()
    assert "no surface point" in panel.last_error
    with pytest.raises(ValueError, match="no voxel selected"):
        panel.pick_surface_point()
    # the slice viewer in another orientation: the clicked voxel is the point (world mm)
    panel.viewer.orientation = "coronal"
    z, y, x = (int(v) for v in np.argwhere(s.target_mask)[0])
    pt = panel.pick_surface_point(index=(z, y, x))
    np.testing.assert_allclose(pt, s.grid.index_to_world((z, y, x)))
    # a level with no surface is refused before anything runs
    with pytest.raises(ValueError, match="no isodose surface"):
        panel.request_surface(level=500.0)
    assert not s.has_request
