"""Tests for rtlab.io.matrad: matRad ``ct``/``cst`` files to a Case.

The files are written here directly in matRad layout with ``scipy.io.savemat`` (and, for
v7.3, with h5py in MATLAB's HDF5 layout); voxel indices are computed with the explicit
column-major formula ``l = 1 + y + Ny*x + Ny*Nx*z``, independent of the loader's unravel.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.io as sio

from rtlab.case import Case
from rtlab.geometry import Grid, Structure, StructureSet
from rtlab.io import load_matrad, read_mat, save_matrad
from rtlab.materials import density_to_hu, hu_to_density


def cell(*items, shape=None):
    c = np.empty(shape or (1, len(items)), dtype=object)
    for i, it in enumerate(items):
        c.flat[i] = it
    return c


def linear_index(y, x, z, ny, nx):
    """matRad's 1-based column-major linear index of 0-based (y, x, z)."""
    return 1 + np.asarray(y) + ny * np.asarray(x) + ny * nx * np.asarray(z)


def cst_row(i, name, typ, idx, objectives):
    return [float(i), name, typ, cell(np.asarray(idx, float).reshape(-1, 1)), {"Priority": 1.0}, objectives]


def cst_array(rows):
    c = np.empty((len(rows), 6), dtype=object)
    for r, row in enumerate(rows):
        for k, v in enumerate(row):
            c[r, k] = v
    return c


# ---------------------------------------------------------------------------------------
# small asymmetric cube: index order and orientation
# ---------------------------------------------------------------------------------------
NY, NX, NZ = 4, 5, 3


def _asym_file(path, coords=None, with_hu=False, objectives=None):
    j, i, k = np.meshgrid(np.arange(NY), np.arange(NX), np.arange(NZ), indexing="ij")
    cube = 1.0 + 0.1 * j + 0.01 * i + 0.001 * k  # [Ny, Nx, Nz], every value distinct
    ct = {
        "cube": cell(cube),
        "cubeDim": np.array([[NY, NX, NZ]], float),
        "resolution": {"x": 2.0, "y": 3.0, "z": 4.0},
        "numOfCtScen": 1.0,
    }
    if with_hu:
        ct["cubeHU"] = cell(100 * j + 10 * i + k - 500.0)
    if coords is not None:
        ct.update(coords)
    one = linear_index(2, 3, 1, NY, NX)  # the voxel y=2, x=3, z=1
    if objectives is None:
        objectives = {"type": "square deviation", "dose": 60.0, "penalty": 800.0}
    rows = [
        cst_row(0, "PTV", "TARGET", [one], objectives),
        cst_row(1, "Körper", "OAR", np.arange(1, NY * NX * NZ + 1), np.zeros((0, 0))),
        cst_row(2, "lung", "OAR", [linear_index(0, 0, 0, NY, NX), linear_index(3, 4, 2, NY, NX)], np.zeros((0, 0))),
    ]
    sio.savemat(path, {"ct": ct, "cst": cst_array(rows)})
    return cube


def test_index_order_and_known_voxel(tmp_path):
    p = tmp_path / "asym.mat"
    cube = _asym_file(p)
    case = load_matrad(p)
    assert case.grid.shape == (NZ, NY, NX)
    assert case.grid.spacing == (4.0, 3.0, 2.0)
    # density[k, j, i] == cube[j, i, k]
    assert np.allclose(case.density, np.transpose(cube, (2, 0, 1)))
    assert case.density[1, 2, 3] == pytest.approx(1.0 + 0.2 + 0.03 + 0.001)
    ptv = case.structures["PTV"]
    assert ptv.n_voxels == 1 and ptv.mask[1, 2, 3]
    lung = case.structures["lung"]
    assert lung.mask[0, 0, 0] and lung.mask[2, 3, 4] and lung.n_voxels == 2
    # default origin: voxel (1,1,1) centred at the resolution -> world = 1-based index * res
    assert case.grid.origin == (4.0, 3.0, 2.0)
    assert np.allclose(ptv.centroid(), [(1 + 1) * 4.0, (2 + 1) * 3.0, (3 + 1) * 2.0])
    # kinds and prescription
    assert ptv.kind == "target" and ptv.prescription == 60.0 and case.prescription == 60.0
    assert case.structures["Körper"].kind == "body"
    assert lung.kind == "oar"
    assert case.meta["matrad"]["PTV"]["objectives"][0]["type"] == "square deviation"
    # only density present: HU derived with the table, density kept as is
    assert np.allclose(case.ct, density_to_hu(case.density), atol=1e-3)
    assert case.ct[0, 0, 0] == pytest.approx(0.0, abs=1e-3)  # density 1.0 is water


def test_coordinates_cubehu_and_custom_table(tmp_path):
    p = tmp_path / "coords.mat"
    coords = {"x": -10.0 + 2.0 * np.arange(NX)[None, :], "y": (50.0 - 3.0 * np.arange(NY))[None, :],
              "z": 7.0 + 4.0 * np.arange(NZ)[None, :]}
    cube = _asym_file(p, coords=coords, with_hu=True)
    table = np.array([[-1000.0, 0.0], [0.0, 1.0], [2000.0, 3.0]])
    case = load_matrad(p, hu_table=table)
    # y decreasing in the file -> flipped so spacing is positive; origin = the smallest y
    assert case.grid.origin == (7.0, 50.0 - 3.0 * (NY - 1), -10.0)
    assert case.grid.spacing == (4.0, 3.0, 2.0)
    # the voxel y=2, x=3, z=1 of the file sits at world (z, y, x) = (11, 44, -4)
    k, j, i = case.grid.nearest_index((11.0, 44.0, -4.0))
    assert case.structures["PTV"].mask[k, j, i]
    assert case.ct[k, j, i] == pytest.approx(100 * 2 + 10 * 3 + 1 - 500.0)
    assert case.density[k, j, i] == pytest.approx(cube[2, 3, 1])
    assert case.meta["hu_table"] == table.tolist()


def test_hu_only_uses_table(tmp_path):
    p = tmp_path / "hu.mat"
    hu = np.full((3, 3, 2), 500.0)
    ct = {"cubeHU": cell(hu), "cubeDim": np.array([[3, 3, 2]], float), "resolution": {"x": 1.0, "y": 1.0, "z": 1.0}}
    sio.savemat(p, {"ct": ct, "cst": cst_array([cst_row(0, "a", "OAR", [1, 2], np.zeros((0, 0)))])})
    table = np.array([[-1000.0, 0.0], [1000.0, 2.0]])
    case = load_matrad(p, hu_table=table)
    assert np.allclose(case.density, 1.5)
    assert np.allclose(case.density, hu_to_density(case.ct, table))


@pytest.mark.parametrize(
    "objectives,rx",
    [
        # matRad 3: cell array of structs with className / parameters
        (cell({"className": "DoseObjectives.matRad_SquaredOverdosing", "parameters": cell(70.0), "penalty": 10.0},
              {"className": "DoseObjectives.matRad_SquaredDeviation", "parameters": cell(54.0), "penalty": 800.0}), 54.0),
        # old struct array, underdosing only
        ([{"type": "square overdosing", "dose": 70.0, "penalty": 1.0}, {"type": "square underdosing", "dose": 45.0, "penalty": 1.0}], 45.0),
        # no dose-defining objective
        ({"type": "mean", "dose": 10.0, "penalty": 1.0}, None),
    ],
)
def test_prescription_from_objectives(tmp_path, objectives, rx):
    if isinstance(objectives, list):  # struct array
        arr = np.zeros((1, len(objectives)), dtype=[("type", object), ("dose", object), ("penalty", object)])
        for n, o in enumerate(objectives):
            arr[0, n] = (o["type"], o["dose"], o["penalty"])
        objectives = arr
    p = tmp_path / "obj.mat"
    _asym_file(p, objectives=objectives)
    case = load_matrad(p)
    assert case.structures["PTV"].prescription == rx


# ---------------------------------------------------------------------------------------
# TG119-layout phantom: 167 x 167 x 129 voxels at 3 x 3 x 2.5 mm
# ---------------------------------------------------------------------------------------
def _strip_area(R, a):
    """Area of a disc of radius R inside the strip |x| < a."""
    if a >= R:
        return np.pi * R**2
    return 2 * (a * np.sqrt(R**2 - a**2) + R**2 * np.arcsin(a / R))


def test_tg119_layout_volumes(tmp_path):
    ny, nx, nz = 167, 167, 129
    rx, ry, rz = 3.0, 3.0, 2.5
    # centre: voxel 84 in x/y; in z between voxels so that 100 mm / 80 mm lengths are whole slices
    y = (np.arange(1, ny + 1) * ry - 84 * ry)[:, None, None]
    x = (np.arange(1, nx + 1) * rx - 84 * rx)[None, :, None]
    z = (np.arange(1, nz + 1) * rz - 65 * rz - rz / 2)[None, None, :]
    r2 = x**2 + y**2
    core = (r2 < 10.0**2) & (np.abs(z) < 50.0)
    r_in, r_out, gap = 15.0, 37.0, 16.5  # gap edges on voxel edges
    ctarget = (r2 > r_in**2) & (r2 < r_out**2) & ~((y < 0) & (np.abs(x) < gap)) & (np.abs(z) < 40.0)
    body = ((x / 200.0) ** 2 + (y / 150.0) ** 2 < 1.0) & np.ones_like(z, bool)
    cube = np.where(body, 1.0, 0.001)
    jj, ii, kk = np.nonzero(core)
    core_idx = linear_index(jj, ii, kk, ny, nx)
    jj, ii, kk = np.nonzero(ctarget)
    target_idx = linear_index(jj, ii, kk, ny, nx)
    jj, ii, kk = np.nonzero(body)
    body_idx = linear_index(jj, ii, kk, ny, nx)
    ct = {"cube": cell(cube), "cubeDim": np.array([[ny, nx, nz]], float),
          "resolution": {"x": rx, "y": ry, "z": rz}, "numOfCtScen": 1.0}
    obj = {"type": "square deviation", "dose": 50.0, "penalty": 1000.0}
    cst = cst_array([
        cst_row(0, "Core", "OAR", core_idx, {"type": "square overdosing", "dose": 25.0, "penalty": 300.0}),
        cst_row(1, "OuterTarget", "TARGET", target_idx, obj),
        cst_row(2, "BODY", "OAR", body_idx, {"type": "square overdosing", "dose": 30.0, "penalty": 100.0}),
    ])
    p = tmp_path / "TG119.mat"
    sio.savemat(p, {"ct": ct, "cst": cst}, do_compression=True)

    case = load_matrad(p)
    assert case.grid.shape == (129, 167, 167)
    assert case.grid.spacing == (2.5, 3.0, 3.0)
    vox_cc = 3.0 * 3.0 * 2.5 / 1000.0
    s = case.structures
    assert [n for n in s] == ["Core", "OuterTarget", "BODY"]
    assert (s["Core"].kind, s["OuterTarget"].kind, s["BODY"].kind) == ("oar", "target", "body")
    assert s["OuterTarget"].prescription == 50.0
    # exact: voxel counts times voxel volume, and the very same voxels
    for name, m in (("Core", core), ("OuterTarget", ctarget), ("BODY", body)):
        assert s[name].volume_cc == pytest.approx(m.sum() * vox_cc, rel=1e-12)
        assert np.array_equal(s[name].mask, np.transpose(m, (2, 0, 1)))
    # analytic volumes (cc); the 10 mm core on 3 mm voxels carries the largest staircase error
    v_core = np.pi * 10.0**2 * 100.0 / 1000
    area_c = np.pi * (r_out**2 - r_in**2) - (_strip_area(r_out, gap) - _strip_area(r_in, gap)) / 2
    v_target = area_c * 80.0 / 1000
    v_body = np.pi * 200.0 * 150.0 * nz * rz / 1000
    assert s["Core"].volume_cc == pytest.approx(v_core, rel=0.08)
    assert s["OuterTarget"].volume_cc == pytest.approx(v_target, rel=0.02)
    assert s["BODY"].volume_cc == pytest.approx(v_body, rel=0.002)
    # the C opens anteriorly (-y): no target voxel on the anterior axis, some posterior
    c = s["OuterTarget"].mask
    k, j, i = case.grid.nearest_index((case.grid.center[0], case.grid.origin[1] + 83 * 3.0 - 25.0, case.grid.origin[2] + 83 * 3.0))
    assert not c[:, j, i].any()
    k, j, i = case.grid.nearest_index((case.grid.center[0], case.grid.origin[1] + 83 * 3.0 + 25.0, case.grid.origin[2] + 83 * 3.0))
    assert c[:, j, i].any()


# ---------------------------------------------------------------------------------------
# save_matrad round trip
# ---------------------------------------------------------------------------------------
def _case():
    g = Grid((6, 7, 8), (2.5, 2.0, 3.0), (-5.0, 3.0, -11.0))
    Z, Y, X = g.mesh(sparse=False)
    body = (Y - 9) ** 2 / 49 + (X + 1) ** 2 / 100 < 1
    ptv = body & (X > 3) & (Z > 0)
    oar = body & (X < -5)
    ct = np.where(body, 20.0, -1000.0)
    ss = StructureSet(g, [Structure("BODY", body, g, "body"), Structure("PTV", ptv, g, "target", prescription=66.0),
                          Structure("Rectum", oar, g, "oar")])
    return Case("rt", g, ct, ss)


def test_save_matrad_round_trip(tmp_path):
    case = _case()
    p = save_matrad(case, tmp_path / "out.mat")
    raw = read_mat(p)
    assert raw["ct"]["cubeDim"].ravel().tolist() == [7, 8, 6]  # [Ny Nx Nz]
    back = load_matrad(p)
    assert back.grid.is_same(case.grid)
    assert np.allclose(back.ct, case.ct) and np.allclose(back.density, case.density)
    for n, s in case.structures.items():
        assert np.array_equal(back.structures[n].mask, s.mask)
        assert back.structures[n].kind == s.kind
    assert back.structures["PTV"].prescription == 66.0
    assert list(tmp_path.iterdir()) == [p]


# ---------------------------------------------------------------------------------------
# MAT v7.3 (HDF5) written in MATLAB's layout
# ---------------------------------------------------------------------------------------
def _write_v73(path, variables):
    h5py = pytest.importorskip("h5py")
    counter = [0]

    def put(parent, name, value, f):
        if isinstance(value, dict):
            g = parent.create_group(name)
            g.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, v in value.items():
                put(g, k, v, f)
        elif isinstance(value, list):  # struct array: fields are arrays of references
            g = parent.create_group(name)
            g.attrs["MATLAB_class"] = np.bytes_("struct")
            for k in value[0]:
                refs = []
                for el in value:
                    counter[0] += 1
                    nm = f"r{counter[0]}"
                    put(f["#refs#"], nm, el[k], f)
                    refs.append(f["#refs#"][nm].ref)
                g.create_dataset(k, data=np.array(refs, dtype=h5py.ref_dtype).reshape(len(value), 1))
        elif isinstance(value, str):
            d = parent.create_dataset(name, data=np.array([ord(ch) for ch in value], np.uint16).reshape(-1, 1))
            d.attrs["MATLAB_class"] = np.bytes_("char")
        elif isinstance(value, np.ndarray) and value.dtype == object:
            refs = np.empty(value.T.shape, dtype=h5py.ref_dtype)
            for idx in np.ndindex(value.shape):
                counter[0] += 1
                nm = f"r{counter[0]}"
                put(f["#refs#"], nm, value[idx], f)
                refs[idx[::-1]] = f["#refs#"][nm].ref
            d = parent.create_dataset(name, data=refs)
            d.attrs["MATLAB_class"] = np.bytes_("cell")
        else:
            a = np.atleast_2d(np.asarray(value, float))
            if a.size == 0:
                d = parent.create_dataset(name, data=np.array([0, 0], np.uint64))
                d.attrs["MATLAB_empty"] = np.uint8(1)
            else:
                d = parent.create_dataset(name, data=a.T)
            d.attrs["MATLAB_class"] = np.bytes_("double")

    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_group("#refs#")
        for k, v in variables.items():
            put(f, k, v, f)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")


def test_v73_hdf5_file(tmp_path):
    j, i, k = np.meshgrid(np.arange(NY), np.arange(NX), np.arange(NZ), indexing="ij")
    cube = 1.0 + 0.1 * j + 0.01 * i + 0.001 * k
    ct = {"cube": cell(cube), "cubeDim": np.array([[NY, NX, NZ]], float),
          "resolution": {"x": 2.0, "y": 3.0, "z": 4.0}}
    objs = [{"type": "square overdosing", "dose": 80.0}, {"type": "square deviation", "dose": 62.0}]
    cst = cst_array([
        cst_row(0, "PTV", "TARGET", [linear_index(2, 3, 1, NY, NX), linear_index(1, 0, 2, NY, NX)], objs),
        cst_row(1, "External", "OAR", np.arange(1, NY * NX * NZ + 1), np.zeros((0, 0))),
    ])
    p = tmp_path / "v73.mat"
    _write_v73(p, {"ct": ct, "cst": cst})
    case = load_matrad(p)
    assert np.allclose(case.density, np.transpose(cube, (2, 0, 1)))
    ptv = case.structures["PTV"]
    assert ptv.mask[1, 2, 3] and ptv.mask[2, 1, 0] and ptv.n_voxels == 2
    assert ptv.prescription == 62.0
    assert case.structures["External"].kind == "body"


def test_v73_without_h5py_names_h5py(tmp_path, monkeypatch):
    p = tmp_path / "v73.mat"
    _write_v73(p, {"ct": {"resolution": {"x": 1.0, "y": 1.0, "z": 1.0}}})
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="h5py"):
        load_matrad(p)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
def test_not_a_mat_file(tmp_path):
    p = tmp_path / "x.mat"
    p.write_text("this is not a MAT file at all, just text " * 10)
    with pytest.raises(ValueError, match="not a readable MATLAB"):
        load_matrad(p)
    with pytest.raises(ValueError, match="does not exist"):
        load_matrad(tmp_path / "missing.mat")


def test_mat_without_ct_or_cst(tmp_path):
    p = tmp_path / "other.mat"
    sio.savemat(p, {"A": np.eye(3)})
    with pytest.raises(ValueError, match=r"not a matRad phantom.*\['ct', 'cst'\]"):
        load_matrad(p)
    sio.savemat(p, {"ct": {"cube": cell(np.ones((2, 2, 2)))}})
    with pytest.raises(ValueError, match=r"\['cst'\]"):
        load_matrad(p)


def test_broken_mat_file(tmp_path):
    p = tmp_path / "asym.mat"
    _asym_file(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="asym.mat"):
        load_matrad(p)


def test_inconsistent_contents(tmp_path):
    p = tmp_path / "bad.mat"
    res = {"x": 1.0, "y": 1.0, "z": 1.0}
    ok_cst = cst_array([cst_row(0, "a", "OAR", [1], np.zeros((0, 0)))])
    sio.savemat(p, {"ct": {"cube": cell(np.ones((3, 4, 5))), "cubeDim": np.array([[4, 3, 5]], float), "resolution": res}, "cst": ok_cst})
    with pytest.raises(ValueError, match="cubeDim"):
        load_matrad(p)
    sio.savemat(p, {"ct": {"cube": cell(np.ones((3, 4, 5))), "resolution": res},
                    "cst": cst_array([cst_row(0, "a", "OAR", [0, 61], np.zeros((0, 0)))])})
    with pytest.raises(ValueError, match=r"voxel indices of structure 'a'.*1\.\.60"):
        load_matrad(p)
    sio.savemat(p, {"ct": {"cube": cell(np.ones((3, 4, 5))), "resolution": {"x": 1.0, "y": 0.0, "z": 1.0}}, "cst": ok_cst})
    with pytest.raises(ValueError, match="resolution must be positive"):
        load_matrad(p)
    sio.savemat(p, {"ct": {"cube": cell(np.ones((3, 4, 5))), "resolution": res, "x": np.arange(3.0)}, "cst": ok_cst})
    with pytest.raises(ValueError, match="ct.x has 3 entries"):
        load_matrad(p)
    sio.savemat(p, {"ct": {"resolution": res}, "cst": ok_cst})
    with pytest.raises(ValueError, match="no field 'cube'"):
        load_matrad(p)


def test_empty_structure_warns_and_is_skipped(tmp_path):
    p = tmp_path / "e.mat"
    sio.savemat(p, {"ct": {"cube": cell(np.ones((2, 2, 2))), "resolution": {"x": 1.0, "y": 1.0, "z": 1.0}},
                    "cst": cst_array([cst_row(0, "a", "OAR", [1], np.zeros((0, 0))), cst_row(1, "empty", "OAR", [], np.zeros((0, 0)))])})
    with pytest.warns(UserWarning, match="'empty' has no voxels"):
        case = load_matrad(p)
    assert list(case.structures) == ["a"]
