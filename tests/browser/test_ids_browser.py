"""IDSPanel in a real browser: notebook 05 in JupyterLab 4 with headless Chromium.

Opens ``notebooks/05_interactive_dose_shaping.ipynb`` (a copy, in a temporary directory), runs
every cell through JupyterLab's command registry, clicks an organ-at-risk voxel on the panel's
SliceViewer canvas, types a lower requested dose into the panel's field and presses *Apply to
selected voxel* in the page. Checks, through a second kernel client, that the click selected the
voxel and that the session's dose there fell; checks that the canvas redrew with different
pixels. Any page error fails the test; screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import ast
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "05_interactive_dose_shaping.ipynb"


@pytest.fixture(scope="module")
def ids_lab(jupyter_server_factory, tmp_path_factory):
    d = tmp_path_factory.mktemp("ids_nbroot")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, d / NOTEBOOK)
    return jupyter_server_factory("lab", d)


def _kernel(server, expr, timeout=30):
    return ast.literal_eval(server.kernel_eval(NOTEBOOK, expr, timeout=timeout))


def _poll(fn, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # noqa: BLE001 - the kernel may not be ready yet
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.3)


def _draw_count(page) -> int:
    return int(page.evaluate("() => Number(document.querySelector('.rtlab-sv').dataset.drawCount || 0)"))


def _wait_draw_after(page, n, timeout=30_000):
    page.wait_for_function(
        f"() => Number(document.querySelector('.rtlab-sv').dataset.drawCount || 0) > {n}", timeout=timeout)


# an organ-at-risk voxel on the shown slice, on the row through the organ's centre, at its
# left (lowest x) edge: far from the notebook's request (posterior rim) and near 100 % dose
PICK = ("(lambda z, o: (z, int(round(o[0].mean())), int(o[1][o[0] == int(round(o[0].mean()))].min()) + 1))"
        "(panel.viewer.slice_index, np.nonzero(s.oar_mask[panel.viewer.slice_index]))")


def test_ids_panel_click_and_request(ids_lab, page_factory, artifacts, notebook_runner):
    page = page_factory()
    t0 = time.monotonic()
    notebook_runner.open_and_run_all(page, ids_lab, NOTEBOOK, "'summary' in globals() and not panel.busy", 300)
    print(f"\nnotebook 05 opened and run in {time.monotonic() - t0:.1f} s")
    canvas = page.locator(".rtlab-sv-canvas")
    assert canvas.count() == 1, "expected exactly one SliceViewer (the IDS panel's)"
    page.wait_for_function("() => Number(document.querySelector('.rtlab-sv').dataset.drawCount || 0) >= 1",
                           timeout=30_000)
    canvas.scroll_into_view_if_needed()
    ref = float(ids_lab.kernel_eval(NOTEBOOK, "s.reference_gy"))
    rows, cols = _kernel(ids_lab, "tuple(panel.viewer.slice_shape)")
    z, row, col = _kernel(ids_lab, PICK)
    assert _kernel(ids_lab, f"bool(s.oar_mask[{z}, {row}, {col}])")
    d_before = float(ids_lab.kernel_eval(NOTEBOOK, f"s.dose_at(({z}, {row}, {col}))"))
    assert d_before > 0.8 * ref

    # --- click the voxel on the canvas -> selected in the kernel, marker drawn
    n = _draw_count(page)
    box = canvas.bounding_box()
    canvas.click(position={"x": (col + 0.5) * box["width"] / cols, "y": (row + 0.5) * box["height"] / rows})
    _poll(lambda: _kernel(ids_lab, "panel.selected_index") == (z, row, col), 30, "the click to select the voxel")
    _wait_draw_after(page, n)
    page.wait_for_timeout(300)
    before = notebook_runner.canvas_png(canvas)
    page.screenshot(path=str(artifacts / "ids-panel-selected.png"), full_page=True)

    # --- type a lower dose into the panel's field, press the panel's button
    field = page.locator(".widget-text:has(label:text-is('requested')) input")
    field.fill("45")
    field.press("Enter")
    _poll(lambda: _kernel(ids_lab, "panel.dose_input.value") == 45.0, 30, "the requested dose to reach the kernel")
    assert _kernel(ids_lab, "panel.unit_input.value") == "%"
    jobs = _kernel(ids_lab, "panel.n_jobs")
    n = _draw_count(page)
    page.get_by_role("button", name="Apply to selected voxel").click()
    _poll(lambda: _kernel(ids_lab, f"panel.n_jobs > {jobs} and not panel.busy"), 120, "the request to finish")
    assert _kernel(ids_lab, "panel.last_error") == ""
    d_after = float(ids_lab.kernel_eval(NOTEBOOK, f"s.dose_at(({z}, {row}, {col}))"))
    print(f"voxel {(z, row, col)}: {100 * d_before / ref:.1f} % -> {100 * d_after / ref:.1f} % (requested 45 %)")
    assert d_after < d_before - 0.25 * ref, "the dose at the selected voxel did not fall"
    assert abs(d_after - 0.45 * ref) < 0.1 * ref
    assert _kernel(ids_lab, f"float(panel.viewer.dose[{z}, {row}, {col}])") == pytest.approx(d_after, rel=1e-5)

    # --- the view changed: canvas redrawn with the new dose, status line updated
    _wait_draw_after(page, n)
    page.wait_for_timeout(300)
    after = notebook_runner.canvas_png(canvas)
    changed = float(np.mean(np.any(before != after, axis=-1)))
    print(f"{100 * changed:.2f} % of the canvas pixels changed")
    assert changed > 0.001, "the canvas did not change after the request"
    status = page.locator(".widget-html:has-text('request: voxel')")
    status.first.wait_for(timeout=10_000)
    page.screenshot(path=str(artifacts / "ids-panel-after-request.png"), full_page=True)
