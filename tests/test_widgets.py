"""rtlab.widgets without a browser: what the widgets send, how they handle browser messages,
and the geometry they build (meshes in world mm, beam sources)."""

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("anywidget")

from rtlab.geometry import Grid, Structure, StructureSet  # noqa: E402
from rtlab.widgets import (  # noqa: E402
    DVHPlot,
    SliceViewer,
    View3D,
    asset_path,
    beam_source,
    enclosed_volume,
    isodose_mesh,
    slice_of,
    slice_to_index,
    structure_mesh,
)

ROOT = Path(__file__).resolve().parents[1]


class FakeComm:
    """Stands in for the kernel comm: records what the widget would send to the browser."""

    comm_id = "fake-comm"
    kernel = object()

    def __init__(self):
        self.sent = []

    def send(self, data=None, buffers=None, **kw):
        self.sent.append((data, list(buffers or [])))

    def on_msg(self, cb):
        pass

    def close(self, *a, **k):
        pass

    def updates(self):
        """The state updates sent, each as {name: value} with buffers put back in place."""
        out = []
        for data, bufs in self.sent:
            if data.get("method") != "update":
                continue
            st = dict(data["state"])
            for path, b in zip(data.get("buffer_paths", []), bufs):
                assert len(path) == 1
                st[path[0]] = bytes(b)
            out.append(st)
        return out


@pytest.fixture
def phantom():
    """A small anisotropic grid with a sphere target, a box OAR, a CT and a radial dose."""
    grid = Grid((12, 16, 20), (2.5, 2.0, 1.5), origin=(-10.0, 5.0, -7.0))
    Z, Y, X = grid.mesh()
    c = grid.center
    r = np.sqrt((Z - c[0]) ** 2 + (Y - c[1]) ** 2 + (X - c[2]) ** 2)
    ptv = Structure("ptv", r <= 8.0, grid, kind="target", prescription=60.0, color=(1, 0, 0))
    oar = np.zeros(grid.shape, bool)
    oar[2:5, 3:6, 10:14] = True
    ss = StructureSet(grid, [ptv, Structure("oar", oar, grid)])
    ct = np.arange(np.prod(grid.shape), dtype=np.int32).reshape(grid.shape) % 2000 - 1000
    dose = np.clip(70.0 - 2.0 * r, 0, None)
    return grid, ss, ct, dose, r


def make_viewer(phantom, **kw):
    grid, ss, ct, dose, _ = phantom
    sv = SliceViewer(ct, grid, ss, dose=dose, **kw)
    sv.comm = FakeComm()
    return sv


def expected_slice(vol, orientation, k):
    """Independent statement of the display convention (see rtlab.widgets.slice_viewer)."""
    nz, ny, nx = vol.shape
    if orientation == "axial":
        return np.array([[vol[k, j, i] for i in range(nx)] for j in range(ny)])
    if orientation == "coronal":  # top row = most superior slice
        return np.array([[vol[nz - 1 - r, k, i] for i in range(nx)] for r in range(nz)])
    return np.array([[vol[nz - 1 - r, j, k] for j in range(ny)] for r in range(nz)])


# --------------------------------------------------------------------------- slicing
@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_slice_of_and_slice_to_index_agree(orientation, phantom):
    grid, _, ct, _, _ = phantom
    ax = {"axial": 0, "coronal": 1, "sagittal": 2}[orientation]
    k = grid.shape[ax] - 2
    s = slice_of(ct, orientation, k)
    np.testing.assert_array_equal(s, expected_slice(ct, orientation, k))
    rows, cols = np.meshgrid(np.arange(s.shape[0]), np.arange(s.shape[1]), indexing="ij")
    idx = slice_to_index(grid.shape, orientation, k, rows, cols).astype(int)
    np.testing.assert_array_equal(ct[idx[..., 0], idx[..., 1], idx[..., 2]], s)


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_slice_buffers_sent_for_each_orientation(orientation, phantom):
    grid, ss, ct, dose, _ = phantom
    sv = make_viewer(phantom)
    sv.orientation = orientation
    ax = {"axial": 0, "coronal": 1, "sagittal": 2}[orientation]
    sv.comm.sent.clear()
    k = 1
    sv.slice_index = k
    ups = sv.comm.updates()
    assert len(ups) == 1, "one slice change must travel as one message"
    st = ups[0]
    want = expected_slice(ct, orientation, k).astype(np.float32)
    assert sv.slice_shape == list(want.shape)
    assert len(st["ct_slice"]) == want.size * 4
    np.testing.assert_array_equal(np.frombuffer(st["ct_slice"], np.float32).reshape(want.shape), want)
    d = np.frombuffer(st["dose_slice"], np.float32).reshape(want.shape)
    np.testing.assert_allclose(d, expected_slice(dose, orientation, k), rtol=1e-6)
    assert sv.n_slices == grid.shape[ax]
    assert sv.pixel_spacing == [s for a, s in enumerate(grid.spacing) if a != ax]


def test_orientation_change_sends_middle_slice_once(phantom):
    sv = make_viewer(phantom)
    sv.comm.sent.clear()
    sv.orientation = "sagittal"
    ups = sv.comm.updates()
    assert len(ups) == 1
    st = ups[0]
    assert st["slice_index"] == 10 and st["slice_shape"] == [12, 16] and st["n_slices"] == 20
    assert len(st["ct_slice"]) == 12 * 16 * 4


def test_slice_index_from_browser_is_clipped(phantom):
    sv = make_viewer(phantom)
    sv.slice_index = 99
    assert sv.slice_index == sv.n_slices - 1
    sv.slice_index = -3
    assert sv.slice_index == 0


def test_window_level_traits_sent(phantom):
    sv = make_viewer(phantom, window=350, level=-20)
    st = sv.get_state()
    assert st["window"] == 350 and st["level"] == -20
    sv.comm.sent.clear()
    sv.window = 1500
    assert sv.comm.updates() == [{"window": 1500.0}]
    with pytest.raises(ValueError, match="window"):
        SliceViewer(phantom[2], phantom[0], window=0)


def test_dose_overlay_appears_and_disappears(phantom):
    grid, ss, ct, dose, _ = phantom
    sv = SliceViewer(ct, grid, ss)
    sv.comm = FakeComm()
    assert sv.dose_slice == b"" and all(c["kind"] == "structure" for c in sv.contours)
    assert sv.isodose_levels_gy == pytest.approx([30, 48, 57, 60, 64.2])  # % of the 60 Gy Rx
    sv.set_dose(dose)
    (st,) = sv.comm.updates()
    n = sv.slice_shape[0] * sv.slice_shape[1]
    assert len(st["dose_slice"]) == 4 * n
    assert st["dose_max"] == pytest.approx(dose.max()) and st["dose_threshold"] == pytest.approx(0.1 * dose.max())
    iso = [c for c in st["contours"] if c["kind"] == "isodose"]
    assert {c["level"] for c in iso} <= set(sv.isodose_levels_gy) and len(iso) >= 3
    sv.comm.sent.clear()
    sv.set_dose(None)
    (st,) = sv.comm.updates()
    assert st["dose_slice"] == b""
    assert not [c for c in st["contours"] if c["kind"] == "isodose"]
    with pytest.raises(ValueError, match="dose"):
        sv.set_dose(np.full(grid.shape, np.nan))
    with pytest.raises(ValueError, match="shape"):
        sv.set_dose(dose[:-1])


def test_contour_polylines_lie_on_structure_edges(phantom):
    """Structure contours (marching squares at 0.5) lie within half a pixel of the sphere's
    voxelised edge; isodose lines of a radial dose 70 - 2 r lie at r = (70 - L) / 2."""
    grid, ss, ct, dose, r = phantom
    sv = make_viewer(phantom)  # axial, middle slice
    pts = np.frombuffer(sv.contour_points, np.float32).reshape(-1, 2)
    k = sv.slice_index
    for c in sv.contours:
        p = pts[c["start"]: c["start"] + c["count"]]
        world = grid.index_to_world(slice_to_index(grid.shape, "axial", k, p[:, 0], p[:, 1]))
        rad = np.linalg.norm(world - grid.center, axis=1)
        if c["kind"] == "isodose":
            np.testing.assert_allclose(rad, (70 - c["level"]) / 2, atol=0.15)
        elif c["name"] == "ptv":
            assert np.all(np.abs(rad - 8.0) <= max(grid.spacing[1:]) / 2 + 1e-6)
            assert abs(rad.mean() - 8.0) < 1.0
            assert c["color"] == "#ff0000"


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_click_sets_selected_voxel(orientation, phantom):
    grid, ss, ct, dose, _ = phantom
    sv = make_viewer(phantom)
    sv.orientation = orientation
    sv._handle_frontend_msg(sv, {"type": "click", "row": 2.2, "col": 3.7, "orientation": orientation,
                                 "slice_index": sv.slice_index}, [])
    sel = sv.selected_voxel
    zyx = tuple(np.rint(slice_to_index(grid.shape, orientation, sv.slice_index, 2, 4)).astype(int))
    assert tuple(sel["index"]) == zyx
    assert sel["world_mm"] == pytest.approx(grid.index_to_world(zyx).tolist())
    assert sel["dose_gy"] == pytest.approx(dose[zyx], rel=1e-6)
    assert sel["hu"] == ct[zyx]
    assert expected_slice(ct, orientation, sv.slice_index)[2, 4] == ct[zyx]
    # the trait change is what the browser gets back
    assert any("selected_voxel" in u for u in sv.comm.updates())


def test_click_outside_and_bad_messages(phantom):
    sv = make_viewer(phantom)
    sv._handle_frontend_msg(sv, {"type": "click", "row": -3, "col": 1}, [])
    assert sv.selected_voxel == {}
    with pytest.raises(ValueError, match="row"):
        sv._handle_frontend_msg(sv, {"type": "click", "col": 1}, [])
    with pytest.raises(ValueError, match="orientation"):
        sv._handle_frontend_msg(sv, {"type": "click", "row": 1, "col": 1, "orientation": "oblique"}, [])
    with pytest.raises(ValueError, match="path"):
        sv._handle_frontend_msg(sv, {"type": "isodose_edit", "level": 30, "path": [[1, 2]]}, [])


def test_isodose_edit_reaches_callbacks(phantom):
    grid = phantom[0]
    sv = make_viewer(phantom, orientation="coronal")
    got = []
    sv.on_isodose_edit(got.append)
    path = [[1.0, 2.0], [1.5, 3.0], [2.0, 4.5]]
    sv._handle_frontend_msg(sv, {"type": "isodose_edit", "level": 48.0, "path": path,
                                 "orientation": "coronal", "slice_index": 7}, [])
    (edit,) = got
    assert edit is sv.last_isodose_edit or edit == sv.last_isodose_edit
    assert edit["level_gy"] == 48.0 and edit["slice_index"] == 7
    nz = grid.shape[0]
    assert edit["path_index"] == [(nz - 1 - r, 7.0, c) for r, c in path]
    np.testing.assert_allclose(edit["path_world_mm"], grid.index_to_world(np.array(edit["path_index"])))


def test_constructor_rejects_bad_input(phantom):
    grid, ss, ct, dose, _ = phantom
    with pytest.raises(TypeError, match="grid"):
        SliceViewer(ct, grid.shape)
    with pytest.raises(ValueError, match="ct has shape"):
        SliceViewer(ct[:, :, :-1], grid)
    with pytest.raises(ValueError, match="orientation"):
        SliceViewer(ct, grid, orientation="oblique")
    with pytest.raises(ValueError, match="isodose_levels"):
        SliceViewer(ct, grid, isodose_levels=[50, -1])
    other = Grid((12, 16, 20), (1, 1, 1))
    with pytest.raises(ValueError, match="different grid"):
        SliceViewer(ct, grid, [Structure("x", np.ones(other.shape, bool), other)])


def test_isodose_levels_in_gy_and_reference(phantom):
    grid, ss, ct, dose, _ = phantom
    sv = SliceViewer(ct, grid, dose=dose, isodose_levels=[10, 20], isodose_unit="Gy")
    assert sv.isodose_levels_gy == [10, 20]
    sv = SliceViewer(ct, grid, dose=dose, isodose_levels=[50], reference_dose=40)
    assert sv.isodose_levels_gy == [20]
    sv = SliceViewer(ct, grid, dose=dose, isodose_levels=[50])  # no Rx: % of max dose
    assert sv.isodose_levels_gy == pytest.approx([dose.max() / 2])


def test_assets_found_and_es_module_exports_render():
    js = asset_path("slice_viewer.js")
    assert js == ROOT / "widgets" / "slice_viewer.js"
    text = js.read_text()
    assert "export default" in text and "function render" in text
    assert asset_path("slice_viewer.css").is_file()
    with pytest.raises(FileNotFoundError):
        asset_path("missing.js")


def test_wheel_ships_widget_assets():
    """pyproject.toml maps the top-level widgets/ folder into the wheel as rtlab/_static/."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool.get("package-dir", {}).get("rtlab._static") == "widgets"
    assert "rtlab._static" in tool.get("packages", [])
    pkgs = set(tool["packages"])
    have = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "rtlab").rglob("__init__.py")}
    assert have <= pkgs, f"packages list misses {sorted(have - pkgs)}"
    assert {"*.js", "*.css"} <= set(tool["package-data"]["rtlab._static"])


# --------------------------------------------------------------------------- 3D
def test_structure_mesh_vertices_on_sphere():
    grid = Grid((24, 30, 36), (2.0, 1.5, 1.0), origin=(100.0, -40.0, 7.0))
    Z, Y, X = grid.mesh()
    c = grid.center + np.array([1.0, -2.0, 3.0])
    r0 = 9.0
    mask = (Z - c[0]) ** 2 + (Y - c[1]) ** 2 + (X - c[2]) ** 2 <= r0**2
    m = structure_mesh(mask, grid)
    rad = np.linalg.norm(m.vertices - c, axis=1)
    # each vertex is the midpoint of an edge joining a voxel centre inside (|p| <= r0) to
    # one outside (> r0), so it lies within half that edge's length of the sphere
    assert np.all(np.abs(rad - r0) <= max(grid.spacing) / 2 + 1e-9)
    np.testing.assert_allclose(m.vertices.mean(axis=0), c, atol=0.5)
    assert m.faces.shape[1] == 3 and m.faces.max() < len(m.vertices)
    with pytest.raises(ValueError, match="empty"):
        structure_mesh(np.zeros(grid.shape, bool), grid)


def test_isodose_mesh_of_radial_dose():
    grid = Grid((20, 24, 28), (2.5, 2.0, 1.5), origin=(-5.0, 3.0, 11.0))
    Z, Y, X = grid.mesh()
    c = grid.center
    dose = 50.0 - 2.0 * np.sqrt((Z - c[0]) ** 2 + (Y - c[1]) ** 2 + (X - c[2]) ** 2)
    dose = np.clip(dose, 0, None)
    m = isodose_mesh(dose, grid, 36.0)  # sphere of radius 7 mm
    rad = np.linalg.norm(m.vertices - c, axis=1)
    # linear interpolation of a cone-shaped field along grid edges: error << a voxel
    assert np.all(np.abs(rad - 7.0) < 0.35)
    assert m.level == 36.0 and m.kind == "isodose"
    assert len(isodose_mesh(dose, grid, 49.9).vertices) >= 0
    with pytest.raises(ValueError, match="level"):
        isodose_mesh(dose, grid, -1.0)


def test_enclosed_volume_closed_forms():
    # a unit cube of 12 outward triangles, scaled and shifted: volume = 2 * 3 * 4 mm^3
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    faces = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
                      [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]])
    v = corners * [2.0, 3.0, 4.0] + [10.0, -5.0, 7.0]
    assert enclosed_volume(v, faces) == pytest.approx(24.0, rel=1e-12)
    assert enclosed_volume(v, faces[:, ::-1]) == pytest.approx(24.0, rel=1e-12)  # orientation-free
    with pytest.raises(ValueError, match="not closed"):
        enclosed_volume(v, faces[:-1])
    assert enclosed_volume(np.zeros((0, 3)), np.zeros((0, 3), int)) == 0.0

    # isosurfaces against the sphere they approximate (4/3 pi r^3) and the voxel count
    grid = Grid((30, 36, 40), (2.0, 1.5, 1.0))
    Z, Y, X = grid.mesh()
    r = np.sqrt(Z**2 + Y**2 + X**2)
    dose = 60.0 * np.exp(-r**2 / (2 * 10.0**2))
    r_half = 10.0 * np.sqrt(2 * np.log(2))  # the 30 Gy sphere
    exact = 4 / 3 * np.pi * r_half**3
    m1 = isodose_mesh(dose, grid, 30.0)
    assert m1.volume_cc * 1000 == pytest.approx(exact, rel=0.02)
    assert m1.volume_cc * 1000 == pytest.approx(np.sum(dose >= 30.0) * np.prod(grid.spacing), rel=0.03)
    m2 = isodose_mesh(dose, grid, 30.0, step_size=2)  # coarser: smaller, still within 6 %
    assert m2.volume_cc * 1000 == pytest.approx(exact, rel=0.06)
    s = structure_mesh(r <= 12.0, grid)
    assert s.volume_cc * 1000 == pytest.approx(4 / 3 * np.pi * 12.0**3, rel=0.03)


def test_beam_source_iec61217():
    iso = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(beam_source(0, 0, iso, 1000), [10, -1020, 30], atol=1e-9)  # anterior
    np.testing.assert_allclose(beam_source(90, 0, iso, 1000), [10, -20, 1030], atol=1e-9)  # left
    np.testing.assert_allclose(beam_source(180, 0, iso, 1000), [10, 980, 30], atol=1e-9)  # posterior
    np.testing.assert_allclose(beam_source(270, 0, iso, 1000), [10, -20, -970], atol=1e-9)  # right
    np.testing.assert_allclose(beam_source(90, 90, iso, 1000), [-990, -20, 30], atol=1e-9)  # inferior
    rng = np.random.default_rng(0)
    for g, cth in rng.uniform(0, 360, (10, 2)):
        assert np.linalg.norm(beam_source(g, cth, iso, 800) - iso) == pytest.approx(800)
    with pytest.raises(ValueError, match="isocenter"):
        beam_source(0, 0, (1, 2))


def test_view3d_figure_uses_world_coordinates(phantom):
    pytest.importorskip("ipyvolume")
    grid, ss, ct, dose, _ = phantom
    iso = tuple(grid.center)
    v = View3D(grid, ss, dose=dose, dose_levels=[40, 60], beams=[(0, 0, iso), (90, 0, iso)])
    assert [m.name for m in v.meshes] == ["ptv", "oar", "40 Gy", "60 Gy"]
    fig = v.figure
    assert v.widget is fig
    w = fig.meshes[0]
    m = v.meshes[0]
    np.testing.assert_allclose(w.x, m.vertices[:, 2])
    np.testing.assert_allclose(w.y, m.vertices[:, 0])
    np.testing.assert_allclose(w.z, -m.vertices[:, 1])
    src, iso_ = v.beam_lines[0]
    np.testing.assert_allclose(src, beam_source(0, 0, iso, 1000.0))
    # the drawn anterior axis points from the isocentre towards the viewer (+display z)
    beam = fig.scatters[0]
    assert beam.z[1] > beam.z[0] and beam.x[1] == pytest.approx(beam.x[0])
    n_before = len(fig.meshes)
    v.set_dose(dose * 0.8)  # the 60 Gy surface disappears (max 56 Gy)
    assert len(fig.meshes) == n_before - 1


def test_ipyvolume_is_imported_lazily():
    code = ("import sys, numpy as np; import rtlab.widgets as w; from rtlab.geometry import Grid; "
            "g = Grid((4, 5, 6), 1.0); m = np.zeros(g.shape, bool); m[1:3, 1:4, 2:5] = True; "
            "v = w.View3D(g, {'a': m}); assert 'ipyvolume' not in sys.modules; v.figure; "
            "assert 'ipyvolume' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


# --------------------------------------------------------------------------- DVH
def test_dvh_plot_updates_from_metrics_dvh(phantom):
    from rtlab.metrics import dvh

    grid, ss, ct, dose, _ = phantom
    p = DVHPlot(grid, ss, keep_reference=True, bins=50)
    blank = p.value
    assert blank[:8] == b"\x89PNG\r\n\x1a\n" and p.dvhs == {}
    p.update(dose)
    first = p.value
    assert first != blank and p.n_updates == 1
    ref = dvh(dose, ss["ptv"], bins=50)
    np.testing.assert_allclose(p.dvhs["ptv"].volume_pct, ref.volume_pct)
    p.update(dose * 0.8)
    assert p.value != first and p.n_updates == 2
    # reference curves are the first dose's, the live ones follow the new dose
    np.testing.assert_allclose(p.reference_dvhs["ptv"].volume_pct, ref.volume_pct)
    assert p.dvhs["ptv"].dose_gy.max() == pytest.approx(0.8 * ref.dose_gy.max())
    with pytest.raises(ValueError, match="dose has shape"):
        p.update(dose[1:])
    with pytest.raises(ValueError, match="structure"):
        DVHPlot(grid, [])
