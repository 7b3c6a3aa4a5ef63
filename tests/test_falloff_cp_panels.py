"""FalloffPanel and ControlPointsPanel without a browser: traits are set from Python and the
results compared with direct calls of rtlab.methods.falloff / rtlab.methods.control_points and
with independent references (scipy's Euclidean distance transform, closed-form violations)."""

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("anywidget")

from rtlab.case import Case  # noqa: E402
from rtlab.geometry import Grid, Structure, StructureSet  # noqa: E402
from rtlab.methods.control_points import RingFilter, Thresholds, find_control_points  # noqa: E402
from rtlab.methods.falloff import adjust_targets  # noqa: E402
from rtlab.phantoms import get_phantom  # noqa: E402
from rtlab.widgets import ControlPointsPanel, FalloffPanel, SliceViewer  # noqa: E402


@pytest.fixture(scope="module")
def multi():
    return get_phantom("tg119_multitarget", spacing=5.0)


@pytest.fixture(scope="module")
def cshape():
    return get_phantom("tg119_cshape_easy", spacing=5.0)


def _no_target_case():
    grid = Grid((6, 8, 8), (3.0, 3.0, 3.0))
    body = np.zeros(grid.shape, bool)
    body[1:5, 1:7, 1:7] = True
    ss = StructureSet(grid, [Structure("Body", body, grid, kind="body")])
    return Case("no_target", grid, np.where(body, 0.0, -1000.0), ss)


def _names(viewer):
    return [s.name for s in viewer.structures]


# ------------------------------------------------------------------------------------ falloff
def test_falloff_slider_equals_direct_call(multi):
    p = FalloffPanel(multi)
    events = []
    p.on("changed", events.append)
    assert p.falloff is None and p.levels is None and p.rows == []
    assert not any(n.startswith("falloff") for n in _names(p.viewer))
    items = [(t.name, t.mask, t.prescription) for t in multi.structures.targets]
    body = multi.structures.body_mask()
    p.enable.value = True
    for g in (2.0, 1.0, 3.5):  # a user moving the slider
        p.gradient.value = g
        assert p.falloff == pytest.approx(g)
        ref = adjust_targets(items, gradient=g, spacing=multi.grid.spacing, body=body, low_dose=0.8)
        assert [lv.name for lv in p.levels] == [lv.name for lv in ref]
        for a, b in zip(p.levels, ref):
            assert a.dose == b.dose and a.distance_mm == pytest.approx(b.distance_mm)
            np.testing.assert_array_equal(a.region, b.region)
            np.testing.assert_array_equal(a.extension, b.extension)
        cc = multi.grid.voxel_volume_cc
        assert [r["region_cc"] for r in p.rows] == pytest.approx([lv.region.sum() * cc for lv in ref])
        assert [r["extension_cc"] for r in p.rows] == pytest.approx([lv.extension.sum() * cc for lv in ref])
        # eq 17: L = (D_{j-1} - D_j) / G
        doses = [r["dose_gy"] for r in p.rows]
        assert [r["distance_mm"] for r in p.rows[1:]] == pytest.approx(
            [(hi - lo) / g for hi, lo in zip(doses, doses[1:])])
        # drawn on the viewer: one structure per lower level, mask = adjusted region
        drawn = {s.name: s.mask for s in p.viewer.structures if s.name.startswith("falloff")}
        assert len(drawn) == len(ref) - 1
        for lv in ref[1:]:
            np.testing.assert_array_equal(drawn[f"falloff {lv.name} ({lv.dose:.3g} Gy)"], lv.region)
    assert events == [2.0, 1.0, 3.5]
    assert "cm&sup3;" in p.table.value and "SuperiorTarget" in p.table.value
    # the extension shells only
    p.show.value = "extensions"
    drawn = {s.name: s.mask for s in p.viewer.structures if s.name.startswith("falloff")}
    for lv in p.levels[1:]:
        np.testing.assert_array_equal(drawn[f"falloff {lv.name} ({lv.dose:.3g} Gy)"], lv.extension)
    # the drawn contours reach the browser-side list of the current slice
    k = int(np.argmax(p.levels[1].extension.sum(axis=(1, 2))))
    p.viewer.slice_index = k
    assert any(c["name"].startswith("falloff SuperiorTarget") for c in p.viewer.contours)
    # switching off removes the overlay and reports None
    p.enable.value = False
    assert p.falloff is None and events[-1] is None
    assert not any(n.startswith("falloff") for n in _names(p.viewer))


def test_falloff_ring_against_distance_transform(cshape):
    """The automatic 80 % ring of a 50 Gy target at G = 2 Gy/mm is the 5 mm shell (para. 80)."""
    p = FalloffPanel(cshape, enabled=True, gradient=2.0, ring_fraction=0.8)
    assert [r["level"] for r in p.rows] == ["PTV", "low_dose_80%"]
    ring = p.levels[1]
    assert ring.dose == pytest.approx(40.0) and ring.distance_mm == pytest.approx(5.0)
    ptv = cshape.structures["PTV"].mask
    dist = ndimage.distance_transform_edt(~ptv, sampling=cshape.grid.spacing)  # independent of rtlab
    ref = (dist > 0) & (dist <= 5.0 + 1e-6) & cshape.structures.body_mask()
    np.testing.assert_array_equal(ring.region, ref)
    assert p.rows[1]["region_cc"] == pytest.approx(ref.sum() * 0.125)
    assert p.recipe == {"ring_fraction": 0.8}
    p.ring.value = 0.6  # ring at 30 Gy: L = 10 mm
    assert p.levels[1].distance_mm == pytest.approx(10.0) and p.recipe == {"ring_fraction": 0.6}
    ref10 = (dist > 0) & (dist <= 10.0 + 1e-6) & cshape.structures.body_mask()
    np.testing.assert_array_equal(p.levels[1].region, ref10)


def test_falloff_setter_and_shared_viewer(cshape):
    v = SliceViewer(cshape.ct, cshape.grid, cshape.structures)
    fp = FalloffPanel(cshape, viewer=v)
    cp = ControlPointsPanel(cshape, viewer=v)
    assert v not in fp.children and v not in cp.children  # the host shows a shared viewer
    events = []
    fp.on("changed", events.append)
    fp.falloff = 1.5
    assert events == [1.5] and fp.enable.value and fp.gradient.value == pytest.approx(1.5)
    cp.update()
    cp.wait(60)
    names = _names(v)
    assert names[:3] == ["Body", "PTV", "Core"]
    assert sum(n.startswith("falloff") for n in names) == 1
    assert sum(n.startswith("control points") for n in names) == 2
    fp.falloff = 3.0  # redrawing the falloff overlay keeps the control points
    assert sum(n.startswith("control points") for n in _names(v)) == 2
    assert fp.levels[1].distance_mm == pytest.approx(10.0 / 3.0)
    cp.set_dose(np.full(cshape.grid.shape, 10.0))  # counts only: the host owns the viewer's dose
    assert v.dose is None and cp.counts["inside_below_d1"] == cp.counts["inside"]
    fp.falloff = None
    assert events == [1.5, 3.0, None]
    assert not any(n.startswith("falloff") for n in _names(v))


def test_falloff_bad_input(cshape, multi):
    with pytest.raises(ValueError, match="no target"):
        FalloffPanel(_no_target_case())
    with pytest.raises(TypeError, match="case must be an rtlab.core.case.Case"):
        FalloffPanel(cshape.structures)
    p = FalloffPanel(cshape)
    with pytest.raises(ValueError, match="Gy/mm"):
        p.falloff = 0.0
    with pytest.raises(TypeError, match="Gy/mm"):
        p.falloff = "2"
    with pytest.raises(ValueError, match="ring_fraction"):
        FalloffPanel(cshape, ring_fraction=1.2)
    with pytest.raises(ValueError, match="event must be one of"):
        p.on("iteration", print)
    other = SliceViewer(multi.ct, multi.grid)
    with pytest.raises(ValueError, match="viewer"):
        FalloffPanel(cshape, viewer=other)


# ------------------------------------------------------------------------------ control points
def test_control_points_equal_direct_call(cshape):
    p = ControlPointsPanel(cshape)
    assert p.points is None and not p.enabled
    events = []
    p.on("changed", events.append)
    # the user sets the controls
    p.auto.value = False
    p.mode.value = "3d"
    p.r_in.value, p.r_out.value = 6.0, 8.0
    p.in_outer.value, p.in_inner.value = 9.0, 3.0
    p.out_outer.value, p.out_inner.value = 7.0, 0.0
    p.use_bulge.value = False
    p.ratio.value = 1.15
    assert p.points is None  # nothing computed before Compute / update()
    p.update()
    assert p.wait(120)
    ref = find_control_points(cshape.structures["PTV"].mask, cshape.grid.spacing, r_in=6.0, r_out=8.0,
                              inside_filter=RingFilter(9.0, 3.0), outside_filter=RingFilter(7.0),
                              thresholds=Thresholds(ratio=1.15, bulge=None), mode="3d")
    pts = p.points
    assert pts.mode == "3d" and ref.n_control > 0
    np.testing.assert_array_equal(pts.index, ref.index)
    np.testing.assert_array_equal(pts.inside, ref.inside)
    np.testing.assert_array_equal(pts.is_control, ref.is_control)
    assert events == [pts]
    assert p.counts == {"sampling": len(ref), "control": ref.n_control,
                        "inside": int((ref.is_control & ref.inside).sum()),
                        "outside": int((ref.is_control & ~ref.inside).sum()),
                        "inside_below_d1": None, "outside_above_d2": None, "rms_violation_gy": None}
    drawn = {s.name: s.mask for s in p.viewer.structures if s.name.startswith("control points")}
    assert len(drawn) == 2
    np.testing.assert_array_equal(drawn["control points inside (>= 50 Gy)"], ref.as_mask("inside"))
    np.testing.assert_array_equal(drawn["control points outside (<= D2)"], ref.as_mask("outside"))
    # with auto on, changing a setting recomputes (2D, default filters = the planning recipe's call)
    p.auto.value = True
    p.use_bulge.value = True
    p.wait(120)
    p.mode.value = "2d"
    p.r_in.value, p.r_out.value = 10.0, 10.0
    p.in_outer.value, p.in_inner.value = 8.0, 0.0
    p.out_outer.value = 8.0
    p.ratio.value = 1.1
    assert p.wait(120)
    ref2 = find_control_points(cshape.structures["PTV"].mask, cshape.grid.spacing, mode="2d")
    np.testing.assert_array_equal(p.points.index, ref2.index)
    np.testing.assert_array_equal(p.points.is_control, ref2.is_control)
    assert events[-1] is p.points


def test_control_points_dose_counts(cshape):
    ptv = cshape.structures["PTV"].mask
    p = ControlPointsPanel(cshape, dose=np.where(ptv, 50.0, 0.0))
    p.update()
    p.wait(120)
    c = p.counts
    assert c["inside_below_d1"] == 0 and c["outside_above_d2"] == 0 and c["rms_violation_gy"] == 0.0
    # uniform 47 Gy: every inside point misses D1 = 50 Gy by 3 Gy, every outside point
    # exceeds D2 = 0.9 * 50 = 45 Gy by 2 Gy
    p.set_dose(np.full(cshape.grid.shape, 47.0))
    ni, no = c["inside"], c["outside"]
    assert p.counts["inside_below_d1"] == ni and p.counts["outside_above_d2"] == no
    assert p.counts["rms_violation_gy"] == pytest.approx(np.sqrt((9.0 * ni + 4.0 * no) / (ni + no)))
    assert p.viewer.dose is not None and float(p.viewer.dose.max()) == pytest.approx(47.0)
    events = []
    p.on("changed", events.append)
    p.outside.value = 0.95  # D2 = 47.5 Gy: no outside point above it any more
    assert p.counts["outside_above_d2"] == 0 and p.d2 == pytest.approx(47.5)
    assert p.recipe == {"control_point_outside": 0.95, "control_point_weight": pytest.approx(1e-3)}
    p.enabled = True
    assert p.enabled and len(events) == 2 and events[-1] is p.points
    p.set_dose(None)
    assert p.counts["inside_below_d1"] is None


def test_control_points_latest_call_wins(cshape):
    p = ControlPointsPanel(cshape, auto=False)
    p.update()
    p.r_out.value = 4.0
    p.update()
    p.wait(120)
    assert p.points.index.shape[0] == len(
        find_control_points(cshape.structures["PTV"].mask, cshape.grid.spacing, r_out=4.0, mode="2d"))


def test_control_points_bad_input(cshape):
    with pytest.raises(ValueError, match="no target"):
        ControlPointsPanel(_no_target_case())
    with pytest.raises(ValueError, match="target must be one of"):
        ControlPointsPanel(cshape, target="Core")
    with pytest.raises(TypeError, match="inside_filter"):
        ControlPointsPanel(cshape, inside_filter=8.0)
    p = ControlPointsPanel(cshape)
    with pytest.raises(ValueError, match="dose"):
        p.set_dose(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        p.set_dose(np.full(cshape.grid.shape, np.nan))
    p.in_inner.value = 9.0  # a >= b
    with pytest.raises(ValueError, match="inside filter"):
        p.update()
    p.in_inner.value = 0.0
    p.use_ratio.value = False
    p.use_bulge.value = False
    with pytest.raises(ValueError, match="thresholds"):
        p.update()
    # a setting changed after the first run recomputes, and a bad one raises on the spot
    p.use_ratio.value = True
    p.update()
    p.wait(120)
    with pytest.raises(ValueError, match="thresholds"):
        p.use_ratio.value = False
    assert "thresholds" in p.status.value
