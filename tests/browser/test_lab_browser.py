"""rtlab's widgets in a real browser: JupyterLab 4 and Notebook 7 with headless Chromium.

The notebook (written to a temporary directory) builds a sphere phantom on a 512 x 512 axial
grid and shows a SliceViewer and a View3D. The Lab test runs every cell through JupyterLab's
command registry, clicks a voxel and checks the kernel's ``selected_voxel`` through a second
kernel client, moves the slice slider and checks the canvas redrew (and how fast), and checks
the WebGL canvas of the 3D view shows the structure. Any page error fails the test.
"""

from __future__ import annotations

import ast
import json
import statistics
import time

import numpy as np
import pytest

pytestmark = pytest.mark.browser

NOTEBOOK = "widgets_smoke.ipynb"
CELLS = [
    """\
import numpy as np
from rtlab.geometry import Grid, Structure, StructureSet
from rtlab.widgets import SliceViewer, View3D

grid = Grid((24, 512, 512), (3.0, 0.5, 0.5))   # 512 x 512 axial slices
Z, Y, X = grid.mesh()
r = np.sqrt(Z**2 + Y**2 + X**2)
ptv = Structure("ptv", r <= 30.0, grid, kind="target", prescription=60.0, color=(1.0, 0.0, 0.0))
body = Structure("body", (Y**2 + X**2 <= 110.0**2) & (Z == Z), grid, kind="body", color=(0.2, 0.8, 0.2))
ss = StructureSet(grid, [body, ptv])
ct = np.where(body.mask, 40.0, -1000.0).astype(np.float32) + 10.0 * np.cos(Y / 7.0 + Z / 5.0)
ct[ptv.mask] += 60.0
dose = (62.0 * np.exp(-np.maximum(r - 28.0, 0.0) ** 2 / (2 * 12.0**2)) * body.mask).astype(np.float32)
""",
    """\
sv = SliceViewer(ct, grid, ss, dose=dose)
sv
""",
    """\
v3 = View3D(grid, [ptv], dose=dose, dose_levels=[30.0], step_size=2,
            beams=[(0.0, 0.0, (0.0, 0.0, 0.0)), (90.0, 0.0, (0.0, 0.0, 0.0))], width=420, height=360)
v3.figure
""",
    "READY = True",
]


def write_notebook(path):
    nb = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
             "source": src.splitlines(keepends=True)}
            for src in CELLS
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nbroot")
    write_notebook(d / NOTEBOOK)
    return d


def wait_drawn(page, min_count=1, slice_index=None, timeout=30_000):
    cond = f"Number(el.dataset.drawCount || 0) >= {min_count}"
    if slice_index is not None:
        cond += f" && el.dataset.drawnSlice === '{slice_index}'"
    page.wait_for_function(f"() => {{ const el = document.querySelector('.rtlab-sv'); return el && {cond}; }}",
                           timeout=timeout)


@pytest.fixture(scope="module")
def lab(jupyter_server_factory, notebook_dir):
    return jupyter_server_factory("lab", notebook_dir)


def test_lab_slice_viewer_and_view3d(lab, page_factory, artifacts, notebook_runner):
    page = page_factory()
    t0 = time.monotonic()
    notebook_runner.open_and_run_all(page, lab, NOTEBOOK, "globals().get('READY', False)", 120)
    print(f"\nnotebook opened and run in {time.monotonic() - t0:.1f} s")
    sv = page.locator(".rtlab-sv")
    sv.wait_for(timeout=30_000)
    wait_drawn(page)
    canvas = page.locator(".rtlab-sv-canvas")
    canvas.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "lab-notebook.png"), full_page=True)

    # --- geometry of the canvas: 512 x 512 pixels of 0.5 mm shown on a 512 CSS px square
    box = canvas.bounding_box()
    assert box["width"] == pytest.approx(512, abs=1) and box["height"] == pytest.approx(512, abs=1)
    k0 = int(ast.literal_eval(lab.kernel_eval(NOTEBOOK, "sv.slice_index")))
    assert k0 == 12

    # --- click a voxel -> the kernel's selected_voxel
    row, col = 300, 200
    canvas.click(position={"x": (col + 0.5) * box["width"] / 512, "y": (row + 0.5) * box["height"] / 512})
    sel = None
    for _ in range(60):
        sel = ast.literal_eval(lab.kernel_eval(NOTEBOOK, "dict(sv.selected_voxel)"))
        if sel:
            break
        time.sleep(0.25)
    assert sel, "the click did not reach the kernel"
    assert sel["index"] == [k0, row, col]
    want_world = ast.literal_eval(lab.kernel_eval(NOTEBOOK, f"grid.index_to_world(({k0}, {row}, {col})).tolist()"))
    assert sel["world_mm"] == pytest.approx(want_world)
    want_dose = float(lab.kernel_eval(NOTEBOOK, f"float(dose[{k0}, {row}, {col}])"))
    assert sel["dose_gy"] == pytest.approx(want_dose, rel=1e-6)

    # --- the slice slider redraws the canvas; time the draw of a 512 x 512 slice
    before = notebook_runner.canvas_png(canvas)
    draw_ms, round_ms = [], []
    for k in (k0 + 3, k0 + 4, k0 + 5, k0 - 2, k0 - 3):
        res = page.evaluate(
            """async (k) => {
                 const el = document.querySelector('.rtlab-sv');
                 const s = el.querySelector('.rtlab-sv-slider');
                 const t0 = performance.now();
                 s.value = String(k);
                 s.dispatchEvent(new Event('input', {bubbles: true}));
                 const t_end = t0 + 20000;
                 while (el.dataset.drawnSlice !== String(k)) {
                   if (performance.now() > t_end) return null;
                   await new Promise(r => setTimeout(r, 5));
                 }
                 const d = globalThis.__rtlab_draws[globalThis.__rtlab_draws.length - 1];
                 return {draw_ms: d.ms, round_trip_ms: d.t + d.ms - t0, slice: d.slice};
               }""",
            k,
        )
        assert res is not None, f"no redraw for slice {k}"
        assert res["slice"] == k
        draw_ms.append(res["draw_ms"])
        round_ms.append(res["round_trip_ms"])
    assert int(ast.literal_eval(lab.kernel_eval(NOTEBOOK, "sv.slice_index"))) == k0 - 3
    after = notebook_runner.canvas_png(canvas)
    changed = np.mean(np.any(before != after, axis=-1))
    print(f"slice redraw (512 x 512, in-page draw): median {statistics.median(draw_ms):.1f} ms, "
          f"max {max(draw_ms):.1f} ms; slider -> kernel -> redraw round trip: median "
          f"{statistics.median(round_ms):.0f} ms; {100 * changed:.1f} % of canvas pixels changed")
    assert changed > 0.001, "the canvas did not change after moving the slider"
    assert statistics.median(draw_ms) < 250, f"drawing a 512 x 512 slice took {draw_ms} ms (target < 100 ms)"
    page.screenshot(path=str(artifacts / "lab-after-slider.png"), full_page=True)

    # --- drag the 30 Gy isodose line -> an isodose edit in the kernel
    p0 = ast.literal_eval(lab.kernel_eval(NOTEBOOK, (
        "(lambda p: [[c['level'], *map(float, p[c['start'] + c['count'] // 4])] for c in sv.contours "
        "if c['kind'] == 'isodose' and abs(c['level'] - 30.0) < 1e-6][0])"
        "(np.frombuffer(sv.contour_points, np.float32).reshape(-1, 2))")))
    level, r0, c0 = p0
    box = canvas.bounding_box()
    x0 = box["x"] + (c0 + 0.5) * box["width"] / 512
    y0 = box["y"] + (r0 + 0.5) * box["height"] / 512
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + 2 * i, y0 + 1.5 * i)
    page.mouse.up()
    edit = {}
    for _ in range(40):
        edit = ast.literal_eval(lab.kernel_eval(NOTEBOOK, "dict(sv.last_isodose_edit)"))
        if edit:
            break
        time.sleep(0.25)
    assert edit, "dragging the isodose line sent no isodose edit"
    assert edit["level_gy"] == pytest.approx(level) and edit["slice_index"] == k0 - 3
    start, end = np.array(edit["path_index"][0]), np.array(edit["path_index"][-1])
    assert start == pytest.approx([k0 - 3, r0, c0], abs=1.0)
    assert end - start == pytest.approx([0, 15 * 512 / box["height"], 20 * 512 / box["width"]], abs=1.0)

    # --- the 3D view rendered: WebGL canvas with the red PTV surface in it
    # the WebGL canvas of the ipyvolume figure (asking a 2D canvas for webgl gives null)
    gl_canvas = None
    others = page.locator(".jp-OutputArea-output canvas:not(.rtlab-sv-canvas):not(.rtlab-sv-legend)")
    for i in range(others.count()):
        c = others.nth(i)
        if page.evaluate("(c) => c.width > 100 && !!(c.getContext('webgl2') || c.getContext('webgl'))",
                         c.element_handle()):
            gl_canvas = c
            break
    assert gl_canvas is not None, "no WebGL canvas found in the 3D view output"
    gl_canvas.scroll_into_view_if_needed()
    red = coloured = 0
    for _ in range(40):
        img = notebook_runner.canvas_png(gl_canvas)
        sat = img.max(axis=-1) - img.min(axis=-1)
        coloured = int(np.sum(sat > 80))  # surfaces and beam lines (the box and text are grey)
        red = int(np.sum((img[..., 0] - img[..., 1] > 60) & (img[..., 0] - img[..., 2] > 60)))
        if coloured > 500 and red > 100:
            break
        time.sleep(0.25)
    gl_canvas.screenshot(path=str(artifacts / "lab-view3d.png"))
    print(f"3D view: {coloured} coloured pixels, {red} of them red (PTV seen through the "
          f"translucent 30 Gy surface)")
    assert coloured > 500, "the WebGL canvas of the 3D view is blank"
    assert red > 100, "the PTV surface is not visible in the 3D view"
    assert img.std() > 5


@pytest.fixture(scope="module")
def notebook7(jupyter_server_factory, notebook_dir):
    return jupyter_server_factory("notebook", notebook_dir)


# Notebook 7.6.5 itself throws this on the first menu or command use (its keyboard-shortcut
# settings handler, in its own notebook_core bundle); seen with an empty notebook and no
# widgets too, so it is not an rtlab error. Any other page error still fails the test.
NB7_KNOWN_ERRORS = (("Cannot read properties of undefined (reading 'schema')", "/static/notebook/notebook_core"),)


def test_notebook7_renders_slice_viewer(notebook7, page_factory, artifacts, notebook_runner):
    page = page_factory(ignore=NB7_KNOWN_ERRORS)
    t0 = time.monotonic()
    notebook_runner.open_and_run_all(page, notebook7, NOTEBOOK, "globals().get('READY', False)", 120)
    page.locator(".rtlab-sv-canvas").wait_for(timeout=30_000)
    wait_drawn(page)
    canvas = page.locator(".rtlab-sv-canvas")
    canvas.scroll_into_view_if_needed()
    img = notebook_runner.canvas_png(canvas)
    page.screenshot(path=str(artifacts / "notebook7.png"), full_page=True)
    print(f"\nNotebook 7: opened, ran and drew in {time.monotonic() - t0:.1f} s")
    assert img.shape[0] > 100 and img.std() > 5, "the SliceViewer canvas is blank"
