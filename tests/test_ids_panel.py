"""IDSPanel (paper 004): requests through the panel, redraws, undo/redo, isodose drags, errors, export.

No browser: the tests set ``viewer.selected_voxel`` / call ``viewer.select`` and the panel's
public methods, or feed the viewer the message a browser drag sends.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("anywidget")

from rtlab.methods.ids import IDSSession  # noqa: E402
from rtlab.widgets.ids_panel import IDSPanel  # noqa: E402


#: The ``case`` fixture's phantom (tests/conftest.py).
CASE = {"name": "horseshoe", "spacing": 6.0}


@pytest.fixture()
def panel(case):
    return IDSPanel(IDSSession(case, kernel_sigma_mm=4.0), display_size=200, dvh_bins=50)


def _rim_voxel(s):
    oar = s.oar_mask
    z = int(np.round(np.mean(np.nonzero(oar)[0])))
    ys, xs = np.nonzero(oar[z])
    j = np.argmax(ys)
    return (z, int(ys[j]), int(xs[j]))


def _outside_voxel(s):
    return tuple(int(v) for v in np.argwhere(~s.body_mask)[0])


def test_panel_shows_session_dose(panel):
    s = panel.session
    assert panel.viewer.slice_index == _rim_voxel(s)[0]
    np.testing.assert_array_equal(panel.viewer.dose, s.dose.astype(np.float32))
    assert panel.dvh.n_updates == 1 and set(panel.dvh.dvhs) == {"PTV", "OAR"}
    summ = panel.score_summary()
    # score table against numpy references
    assert summ[("OAR", "Dmean")][1] == pytest.approx(s.dose[s.oar_mask].mean(), rel=1e-9)
    ptv = s.case.structures["PTV"].mask
    cov = np.mean(s.dose[ptv] >= 0.95 * s.reference_gy)
    assert summ[("PTV", "coverage")][1] == pytest.approx(cov, abs=1e-12)
    assert not panel.apply_button.disabled and panel.undo_button.disabled


def test_request_through_selected_voxel_runs_in_background(panel):
    s = panel.session
    vox = _rim_voxel(s)
    before = s.dose.copy()
    d0 = before[vox]
    # a click on the viewer: (row, col) on the axial slice = (y, x)
    panel.viewer.select(vox[1], vox[2])
    assert panel.selected_index == vox
    assert f"{d0:.3f} Gy" in panel.selected_label.value
    panel.dose_input.value = 55.0
    panel.unit_input.value = "%"
    panel.steps_input.value = 6
    goal = 0.55 * s.reference_gy
    n_dvh = panel.dvh.n_updates
    # the kernel does not block: hold the session lock, the job waits, the method returns
    with panel._lock:
        th = panel.request_voxel()
        assert isinstance(th, threading.Thread) and th.is_alive() and panel.running
        assert panel.apply_button.disabled
        with pytest.raises(TimeoutError):
            panel.wait(timeout=0.05)
    assert panel.wait() is panel.dose and not panel.running
    d1 = s.dose_at(vox)
    assert abs(d1 - goal) < 0.2 * abs(d0 - goal)  # moved (nearly all the way) to the request
    assert len(s.timings["step_ms"]) == 6  # the recovery steps ran
    # viewer, DVH and scores got the new dose
    np.testing.assert_array_equal(panel.viewer.dose, s.dose.astype(np.float32))
    assert panel.viewer.dose[vox] == pytest.approx(d1, rel=1e-6)
    assert panel.dvh.n_updates == n_dvh + 1
    oar_mean = s.dose[s.oar_mask].mean()
    assert panel.score_summary()[("OAR", "Dmean")] == pytest.approx((before[s.oar_mask].mean(), oar_mean), rel=1e-9)
    assert "request: voxel" in panel.status.value and panel.progress.value == panel.progress.max
    assert not panel.undo_button.disabled and panel.redo_button.disabled
    assert any("request: voxel" in o["text"] for o in panel.out.outputs)
    assert f"{d1:.3f} Gy" in panel.selected_label.value

    # undo restores the previous dose exactly, redo the new one
    after = s.dose.copy()
    panel.undo()
    panel.wait()
    np.testing.assert_array_equal(s.dose, before)
    np.testing.assert_array_equal(panel.viewer.dose, before.astype(np.float32))
    assert panel.dvh.n_updates == n_dvh + 2
    panel.redo()
    panel.wait()
    np.testing.assert_array_equal(s.dose, after)
    # more recovery, explicit index and Gy
    panel.recover(2)
    panel.request_voxel(vox, 0.7 * s.reference_gy, recover=0)
    panel.wait()
    assert s.dose_at(vox) == pytest.approx(0.7 * s.reference_gy, rel=1e-6)


def test_isodose_drag_triggers_request(panel):
    s = panel.session
    z = panel.viewer.slice_index
    oar = np.argwhere(s.oar_mask[z])
    yc, xc = oar.mean(axis=0)
    # a line through the organ at risk, left to right; its voxels get the dragged level
    path = [[yc + 1, xc - 2], [yc + 1, xc + 2]]
    level = 0.6 * s.reference_gy
    vox = [(z, int(round(yc + 1)), x) for x in range(int(round(xc - 2)), int(round(xc + 2)) + 1)]
    d0 = np.array([s.dose_at(v) for v in vox])
    n_hist = len(s._history)
    panel.steps_input.value = 0
    panel.viewer._handle_frontend_msg(panel.viewer, {"type": "isodose_edit", "level": level, "path": path,
                                                     "orientation": "axial", "slice_index": z}, [])
    panel.wait()
    assert len(s._history) == n_hist + 1
    d1 = np.array([s.dose_at(v) for v in vox])
    assert np.abs(d1 - level).mean() < 0.3 * np.abs(d0 - level).mean()
    assert "isodose" in panel.status.value
    np.testing.assert_array_equal(panel.viewer.dose, s.dose.astype(np.float32))


def test_bad_requests_raise_and_show(panel):
    s = panel.session
    with pytest.raises(ValueError, match="no voxel selected"):
        panel.request_voxel()
    assert "no voxel selected" in panel.status.value
    out = _outside_voxel(s)
    with pytest.raises(ValueError, match="outside the body"):
        panel.request_voxel(out, 10.0)
    assert "outside the body" in panel.status.value and "error" in panel.status.value
    with pytest.raises(ValueError, match=">= 0 Gy"):
        panel.request_voxel(_rim_voxel(s), -5.0)
    assert ">= 0 Gy" in panel.last_error
    with pytest.raises(ValueError, match="outside the grid"):
        panel.request_voxel((0, 0, 10_000), 1.0)
    with pytest.raises(ValueError, match="unit"):
        panel.request_voxel(_rim_voxel(s), 50.0, unit="cGy")
    # the button: same check, no exception escapes the click handler
    panel.viewer.selected_voxel = {"index": list(out)}
    assert "outside the body" in panel.selected_label.value
    panel.apply_button.click()
    assert "outside the body" in panel.status.value
    with pytest.raises(ValueError, match="nothing to undo"):
        panel.undo()
    with pytest.raises(ValueError, match="no request"):
        panel.recover()
    # an isodose drag through air: error in the status line, none raised into the comm handler
    z = panel.viewer.slice_index
    panel.viewer._handle_frontend_msg(panel.viewer, {"type": "isodose_edit", "level": 1.0, "path": [[0, 0], [0, 3]],
                                                     "orientation": "axial", "slice_index": z}, [])
    assert "outside the body" in panel.status.value
    assert panel.wait() is panel.dose and len(s._history) == 1  # nothing was queued


def test_export_plan(panel, tmp_path):
    from rtlab.io.npz import load_npz

    s = panel.session
    panel.request_voxel(_rim_voxel(s), 0.6 * s.reference_gy, recover=3)
    f = tmp_path / "plan.npz"
    panel.export_plan(f)  # queued after the request
    panel.wait()
    c = load_npz(f)
    np.testing.assert_allclose(c.dose, s.dose)
    for b in range(s.n_beams):
        np.testing.assert_array_equal(c.arrays[f"fluence_{b}"], s.fluence[b])
    # the plan's bixel weights are the mean fluence of each 5 x 5 amplitude block
    fl = s.fluence[0]
    R, C = s.beams[0].bixels.shape
    np.testing.assert_allclose(panel.plan.fluence_maps()[0], fl.reshape(R, s.sub, C, s.sub).mean(axis=(1, 3)))
    np.testing.assert_array_equal(c.arrays["weights"], panel.plan.weights)
    assert c.case.grid.shape == s.grid.shape and "wrote" in panel.status.value
    with pytest.raises(ValueError, match="directory"):
        panel.export_plan(tmp_path)


def test_panel_from_case_and_bad_arguments(case):
    with pytest.raises(TypeError, match="IDSSession or a Case"):
        IDSPanel(np.zeros(3))
    s = IDSSession(case, kernel_sigma_mm=4.0)
    with pytest.raises(TypeError, match="only apply when a Case"):
        IDSPanel(s, kernel_sigma_mm=3.0)
    p = IDSPanel(case, kernel_sigma_mm=4.0, recovery_steps=7)
    assert p.session.kernel_sigma_mm == 4.0 and p.steps_input.value == 7


def test_old_attribute_names_warn(panel):
    with pytest.warns(DeprecationWarning, match="running"):
        assert panel.busy is False
    with pytest.warns(DeprecationWarning, match="out"):
        assert panel.output is panel.out
