"""The 3D view of notebooks 00_tour and 05 in a real browser: JupyterLab 4 with headless Chromium.

Copies of ``notebooks/00_tour.ipynb`` and ``notebooks/05_interactive_dose_shaping.ipynb``
(JupyterLab's autosave never touches the repository's notebooks) are opened in a throw-away
JupyterLab (the repository on the kernel's path, see ``conftest.start_jupyter``) and every cell
is run through the app's command registry: the whole notebook, because each 3D view shows what
the cells before it computed (the tour: the plan its PlanLab optimises; 05: the recovered IDS
dose), and the notebook's own checks run on the way. Checked: the output of the cell that builds
the ``View3D`` holds a visible canvas with a WebGL context, and its pixels show the PTV
surface's colour (red, seen through the translucent isodose surface) among other coloured
(non-grey) pixels. Any page error or failing cell fails the test; screenshots of the 3D views go
to ``test-artifacts/view3d-00.png`` and ``view3d-05.png``. Chromium runs with ``--disable-gpu``:
WebGL comes from its software rasteriser (SwiftShader), so the check needs no GPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]

# notebook -> (kernel expression true once every cell ran, source text of the 3D view's cell,
#              structure colours of the View3D, in order)
NOTEBOOKS = {
    "00_tour.ipynb": ("'v25_cc' in globals()", "v3 = View3D(", "['#ff0000', '#0073ff']"),
    "05_interactive_dose_shaping.ipynb": ("'summary' in globals() and 'ptv_mesh' in globals() and not panel.busy",
                                          "v3 = View3D(", "['#ff0000', '#0073ff']"),
}


@pytest.fixture(scope="module")
def lab_for(jupyter_server_factory, tmp_path_factory):
    """``lab_for(notebook)``: a JupyterLab serving a copy of that notebook alone.

    One server per notebook: a second notebook opened in the same server's page restores the
    workspace of the first (both open), and ``run-all`` would run the wrong one.
    """
    servers = {}

    def get(notebook):
        if notebook not in servers:
            d = tmp_path_factory.mktemp("view3d_nbroot")
            shutil.copy(ROOT / "notebooks" / notebook, d / notebook)
            servers[notebook] = jupyter_server_factory("lab", d)
        return servers[notebook]

    return get


def webgl_canvases(page, cell):
    """``(locator, info)`` of the canvases in ``cell``'s output area with a WebGL context.

    ``getContext('webgl2' | 'webgl')`` returns the canvas's existing context; on a canvas that
    already holds a 2D context it returns null, so 2D canvases are not counted.
    """
    canvases = cell.locator(".jp-OutputArea-output canvas")
    found = []
    for i in range(canvases.count()):
        c = canvases.nth(i)
        info = page.evaluate(
            """(c) => { const r = c.getBoundingClientRect();
                        const gl = c.getContext('webgl2') || c.getContext('webgl');
                        return {webgl: !!gl, width: c.width, height: c.height, css_w: r.width, css_h: r.height,
                                visible: r.width > 0 && r.height > 0 && getComputedStyle(c).display !== 'none',
                                cls: c.className}; }""",
            c.element_handle())
        if info["webgl"]:
            found.append((c, info))
    return found


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_notebook_view3d_draws(notebook, lab_for, page_factory, artifacts, notebook_runner):
    ready, cell_text, want_colors = NOTEBOOKS[notebook]
    nb_lab = lab_for(notebook)
    page = page_factory()
    t0 = time.monotonic()
    notebook_runner.open_and_run_all(page, nb_lab, notebook, ready, 600)
    t_run = time.monotonic() - t0
    notebook_runner.fail_on_traceback(page)
    colors = nb_lab.kernel_eval(notebook, "[m.color for m in v3.structure_meshes]")
    assert colors == want_colors, f"unexpected structure colours {colors}"

    cell = page.locator(".jp-CodeCell", has_text=cell_text)
    assert cell.count() == 1, "expected one cell that builds the View3D"
    cell.locator(".jp-OutputArea-output canvas").first.wait_for(timeout=60_000)
    gl = webgl_canvases(page, cell)
    print("\nWebGL canvases in the 3D view's output:", [info for _, info in gl])
    shown = [(c, info) for c, info in gl if info["visible"] and info["css_w"] > 100]
    assert shown, f"no visible WebGL canvas in the 3D view's output ({[i for _, i in gl]})"
    canvas = max(shown, key=lambda ci: ci[1]["css_w"] * ci[1]["css_h"])[0]
    canvas.scroll_into_view_if_needed()

    red = blue = coloured = 0
    img = None
    for _ in range(60):  # the first frames may come before the meshes arrive
        img = notebook_runner.canvas_png(canvas)
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        coloured = int(np.sum(img.max(axis=-1) - img.min(axis=-1) > 80))  # the box and labels are grey
        red = int(np.sum((r - g > 60) & (r - b > 60)))  # PTV (#ff0000) under the translucent surface
        blue = int(np.sum((b - r > 60) & (b >= g)))  # core / OAR (#0073ff), where it is not hidden
        if coloured > 2000 and red > 300:
            break
        time.sleep(0.25)
    t_total = time.monotonic() - t0
    stem = notebook.split("_")[0]
    canvas.screenshot(path=str(artifacts / f"view3d-{stem}.png"))
    print(f"\n{notebook} run in JupyterLab in {t_run:.1f} s, 3D view checked after {t_total:.1f} s; "
          f"canvas {img.shape[1]} x {img.shape[0]} px: {coloured} coloured pixels, {red} PTV-red, {blue} core/OAR-blue")
    notebook_runner.fail_on_traceback(page)
    assert img.std() > 5, "the WebGL canvas of the 3D view is blank"
    assert coloured > 2000, "the 3D view shows (almost) nothing but the grey box"
    assert red > 300, "the PTV surface's colour is not visible in the 3D view"
