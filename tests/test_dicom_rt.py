"""Scoring a planning system's RTDOSE + RTSTRUCT (rtlab.io.load_dicom_rt, rtlab score --rtdose).

References are analytic: spheres and cylinders of known volume drawn as polygon contours, a dose
that is linear in x (so the mean over a shape symmetric in x is the value at its centre, and the
cumulative DVH of a sphere is the volume of a spherical cap, ``pi h^2 (3R - h) / 3``), and an
independent DVH program (dicompyler-core) on the same files.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from rtlab.cli import main  # noqa: E402
from rtlab.core.geometry import Grid  # noqa: E402
from rtlab.evaluate.dose_volume import score_dicom_rt  # noqa: E402
from rtlab.io import ROI, add_dvh_sequence, load_dicom_rt, read_rtdose, save_rois, save_rtdose  # noqa: E402
from rtlab.io.dicom.contours import roi_volume  # noqa: E402

GRID = Grid((30, 40, 40), (3.0, 3.0, 3.0), (-43.5, -58.5, -58.5))
SLOPE = 0.5  # Gy/mm along x
D0 = 40.0  # Gy at x = 0 (the dose stays positive on the grid)


def linear_dose(grid=GRID):
    z, y, x = np.meshgrid(*grid.axes(), indexing="ij")
    return D0 + SLOPE * x + 0.0 * z + 0.0 * y


def circle(r, n=180, cy=0.0, cx=0.0):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[cy + r * np.sin(a), cx + r * np.cos(a)]


def sphere_roi(number, name, R, t=1.0, cz=0.0, cy=0.0, cx=0.0, kind="target", itype="PTV"):
    """A sphere of radius R as contours every t mm (planes at slab centres, so the prism model
    is a midpoint rule for the sphere's volume)."""
    cont = []
    for z in np.arange(-R + t / 2, R, t):
        cont.append((float(cz + z), circle(np.sqrt(R * R - z * z), cy=cy, cx=cx)))
    return ROI(number, name, itype, kind, contours=cont)


def cylinder_roi(number, name, r, h, t=2.0, cx=0.0):
    return ROI(number, name, "ORGAN", "oar", contours=[(float(z), circle(r, cx=cx)) for z in
                                                        np.arange(-h / 2 + t / 2, h / 2, t)])


def sphere_cc(R):
    return 4 / 3 * np.pi * R**3 / 1000.0


def cap_cc(R, h):
    h = np.clip(h, 0, 2 * R)
    return np.pi * h**2 * (3 * R - h) / 3 / 1000.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    rd = save_rtdose(linear_dose(), GRID, d / "RD.dcm")
    rois = [sphere_roi(1, "PTV big sphere", 15.0), sphere_roi(7, "tiny  Sphere", 5.0, t=1.0, cx=-20.0, cy=20.0,
                                                               kind="oar", itype="ORGAN"),
            cylinder_roi(3, "Cord cyl", 6.0, 40.0, cx=30.0)]
    rs = save_rois(rois, d / "RS.dcm", reference=pydicom.dcmread(rd))
    return d, rd, rs, rois


def test_volumes_of_analytic_shapes_on_the_dose_grid(files):
    _, rd, rs, rois = files
    rt = load_dicom_rt(rd, rs)
    assert rt.names == ["PTV big sphere", "tiny  Sphere", "Cord cyl"]  # exact names, inner spaces kept
    exact = {"PTV big sphere": sphere_cc(15.0), "tiny  Sphere": sphere_cc(5.0), "Cord cyl": np.pi * 36 * 40 / 1000}
    for roi, s in zip(rois, rt.structures):
        prism, inside = roi_volume(roi, s.thickness_mm, GRID)  # polygons, shoelace: the contours' own volume
        assert inside == pytest.approx(prism)
        # sub-voxel raster vs the contours' exact volume, then vs the analytic shape
        assert s.subvoxels.volume_cc == pytest.approx(prism, rel=0.01)
        assert s.subvoxels.volume_cc == pytest.approx(exact[s.name], rel=0.015)
    # the 0.52 cc sphere is ~19 voxels of 27 mm^3: voxel centres alone miss its volume badly
    coarse = load_dicom_rt(rd, rs, supersample=1)
    err_fine = abs(rt.structure("tiny  Sphere").subvoxels.volume_cc / exact["tiny  Sphere"] - 1)
    err_coarse = abs(coarse.structure("tiny  Sphere").subvoxels.volume_cc / exact["tiny  Sphere"] - 1)
    assert err_fine < 0.015 and err_fine < err_coarse


def test_dose_statistics_of_a_linear_dose_over_a_sphere(files):
    _, rd, rs, _ = files
    out = score_dicom_rt(load_dicom_rt(rd, rs))
    st = out["structures"]["PTV big sphere"]
    R = 15.0
    assert st["Dmean"] == pytest.approx(D0, abs=0.01)  # symmetric in x: the centre's dose
    assert st["Dmax"] == pytest.approx(D0 + SLOPE * R, abs=SLOPE * 1.0)  # within a sub-pixel + polygon
    assert st["Dmin"] == pytest.approx(D0 - SLOPE * R, abs=SLOPE * 1.0)
    V = sphere_cc(R)
    for key, frac in (("D95", 0.95), ("D50", 0.50), ("D2", 0.02)):
        # dose d = D0 + SLOPE x is received by the cap x >= (d - D0) / SLOPE, of height R - x
        xs = np.linspace(-R, R, 200001)
        x = np.interp(frac * V, cap_cc(R, R - xs)[::-1], xs[::-1])
        assert st[key] == pytest.approx(D0 + SLOPE * x, abs=0.2), key
    # D2cc: the 2 cc cap
    xs = np.linspace(-R, R, 200001)
    x2 = np.interp(2.0, cap_cc(R, R - xs)[::-1], xs[::-1])
    # the samples sit on 0.6 mm sub-pixels (0.3 Gy apart along x): D-values within half of that
    assert st["D2cc"] == pytest.approx(D0 + SLOPE * x2, abs=0.2)
    assert out["structures"]["tiny  Sphere"]["D2cc"] is None  # smaller than 2 cc
    assert out["ci_paddick"] is None and out["gi"] is None and out["rx_gy"] is None  # no prescription


def test_score_reports_the_tps_dvh_beside_rtlabs(files, tmp_path):
    d, rd, rs, _ = files
    rd2 = tmp_path / "RD_dvh.dcm"
    rd2.write_bytes(rd.read_bytes())
    R, w = 15.0, 0.05
    edges = np.arange(0, D0 + SLOPE * R + 2 * w, w)
    # exact cumulative DVH of the true sphere: V(d) = cap above x(d)
    cum = cap_cc(R, R - (edges[:-1] - D0) / SLOPE)
    add_dvh_sequence(rd2, {1: (edges, cum, D0 - SLOPE * R, D0 + SLOPE * R, D0)},
                     str(pydicom.dcmread(rs).SOPInstanceUID))
    dose = read_rtdose(rd2)
    assert len(dose.dvhs) == 1 and dose.dvhs[0].roi_number == 1 and dose.dvhs[0].volume_units == "CM3"
    out = score_dicom_rt(load_dicom_rt(rd2, rs), rx=D0)
    tps, diff = out["tps"]["PTV big sphere"], out["tps_difference"]["PTV big sphere"]
    assert tps["volume_cc"] == pytest.approx(sphere_cc(R), rel=1e-3)
    assert tps["Dmean"] == pytest.approx(D0)
    for k in ("volume_cc", "Dmean", "D95", "D50", "D2"):
        assert abs(diff[k]) < (0.015 * sphere_cc(R) if k == "volume_cc" else 0.1), (k, diff[k])
    assert out["ci_paddick"] is not None and out["target"] == "PTV big sphere"


def test_cli_score_rtdose_json(files, capsys):
    _, rd, rs, _ = files
    code = main(["score", "--rtdose", str(rd), "--rtstruct", str(rs), "--rx", "40", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert list(out["structures"]) == ["PTV big sphere", "tiny  Sphere", "Cord cyl"]
    for k in ("volume_cc", "Dmin", "Dmean", "Dmax", "D98", "D95", "D10", "D2", "D2cc"):
        assert k in out["structures"]["Cord cyl"]
    assert out["structures"]["Cord cyl"]["volume_cc"] == pytest.approx(np.pi * 36 * 40 / 1000, rel=0.015)
    assert out["dose_units"] == "GY" and out["rx_gy"] == 40.0
    code = main(["score", "--rtdose", str(rd), "--rtstruct", str(rs)])
    text = capsys.readouterr().out
    assert code == 0 and "PTV big sphere" in text and "volume_cc" in text


def _rewrite(src, dst, **changes):
    ds = pydicom.dcmread(src)
    for k, v in changes.items():
        if v is None:
            del ds[k]
        else:
            setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def test_rtdose_tags_scaling_units_offsets(files, tmp_path):
    _, rd, _, _ = files
    ref = read_rtdose(rd)
    # DoseGridScaling multiplies the stored values
    ds = pydicom.dcmread(rd)
    p = _rewrite(rd, tmp_path / "s.dcm", DoseGridScaling=float(ds.DoseGridScaling) * 2)
    np.testing.assert_allclose(read_rtdose(p).dose, 2 * ref.dose, rtol=1e-9)
    # RELATIVE is kept and reported
    p = _rewrite(rd, tmp_path / "rel.dcm", DoseUnits="RELATIVE")
    assert read_rtdose(p).units == "RELATIVE"
    # absolute GridFrameOffsetVector (first value = z of ImagePositionPatient) gives the same grid
    z0 = float(ds.ImagePositionPatient[2])
    off = [z0 + float(v) for v in ds.GridFrameOffsetVector]
    p = _rewrite(rd, tmp_path / "abs.dcm", GridFrameOffsetVector=off)
    assert read_rtdose(p).grid.is_same(ref.grid, atol=1e-6)


def test_bad_dicom_gets_errors_naming_file_and_tag(files, tmp_path):
    d, rd, rs, _ = files
    p = _rewrite(rd, tmp_path / "obl.dcm", ImageOrientationPatient=[0.96592583, 0.25881905, 0, -0.25881905,
                                                                     0.96592583, 0])
    with pytest.raises(ValueError, match="obl.dcm.*ImageOrientationPatient|ImageOrientationPatient.*obl.dcm"):
        read_rtdose(p)
    p = _rewrite(rd, tmp_path / "nops.dcm", PixelSpacing=None)
    with pytest.raises(ValueError, match=r"nops.dcm.*PixelSpacing \(0028,0030\)"):
        read_rtdose(p)
    p = _rewrite(rd, tmp_path / "nogfov.dcm", GridFrameOffsetVector=[0.0, 3.0])
    with pytest.raises(ValueError, match=r"nogfov.dcm.*GridFrameOffsetVector \(3004,000C\)"):
        read_rtdose(p)
    txt = tmp_path / "notdicom.dcm"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="notdicom.dcm is not a DICOM file"):
        load_dicom_rt(txt, rs)
    with pytest.raises(ValueError, match="RS.dcm has Modality"):
        load_dicom_rt(rs, rs)  # an RTSTRUCT given as the dose
    far = save_rois([sphere_roi(1, "far away", 5.0, cz=500.0)], tmp_path / "far.dcm",
                    reference=pydicom.dcmread(rd))
    with pytest.raises(ValueError, match=r"far.dcm: ROI 'far away'.*outside the dose grid.*ContourData \(3006,0050\)"):
        load_dicom_rt(rd, far)
    assert main(["score", "--rtdose", str(txt), "--rtstruct", str(rs)]) == 2


def test_structure_partly_outside_the_dose_grid(files, tmp_path):
    _, rd, _, _ = files
    # a sphere centred on the grid's x edge (x = 60 mm): half of it is outside
    rs = save_rois([sphere_roi(1, "edge", 10.0, cx=60.0)], tmp_path / "edge.dcm", reference=pydicom.dcmread(rd))
    with pytest.warns(UserWarning, match="outside the dose"):
        rt = load_dicom_rt(rd, rs)
    s = rt.structure("edge")
    assert s.subvoxels.volume_cc == pytest.approx(sphere_cc(10.0) / 2, rel=0.02)
    assert s.outside_cc == pytest.approx(sphere_cc(10.0) / 2, rel=0.02)


# ---------------------------------------------------------------------------------------
# dicompyler-core, an independent DVH calculator (docs/io.md)
# ---------------------------------------------------------------------------------------
def _dicompyler():
    dcp = pytest.importorskip("dicompylercore.dvhcalc", reason="dicompyler-core is in the dev extra")
    return dcp


@pytest.fixture(scope="module", autouse=False)
def dvhcalc():
    import pydicom.dicomio as dio

    if not hasattr(dio, "read_file"):  # dicompyler-core 0.5.6 imports the pydicom 2 name
        dio.read_file = pydicom.dcmread
    try:
        from dicompylercore import dvhcalc as mod
    except ImportError:
        pytest.skip("dicompyler-core is not installed (dev extra)")
    return mod


def _compare(dvhcalc, rd, rs, roi, ours, spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dvhcalc.get_dvh(str(rs), str(rd), roi, interpolation_resolution=(spacing / 4, spacing / 4))
    theirs = {"volume_cc": res.volume, "Dmean": res.mean, "Dmax": res.max, "D95": float(res.D95.value)}
    return {k: (ours[k], theirs[k], ours[k] / theirs[k] - 1) for k in theirs}


def test_against_dicompyler_core_on_test_made_files(files, dvhcalc):
    _, rd, rs, _ = files
    out = score_dicom_rt(load_dicom_rt(rd, rs))
    for num, name in ((1, "PTV big sphere"), (3, "Cord cyl")):
        for k, (a, b, rel) in _compare(dvhcalc, rd, rs, num, out["structures"][name], 3.0).items():
            assert abs(rel) < 0.03, (name, k, a, b)


def test_pydicoms_rtdose_against_brute_force_and_dicompyler_core(dvhcalc, tmp_path):
    from pydicom.data import get_testdata_file
    from scipy.ndimage import map_coordinates

    # pydicom's rtstruct.dcm lies 500 mm away from its rtdose.dcm (they are not one plan): the
    # reader says so, naming the ROI and the grid; spheres drawn inside the dose grid are scored
    rd = get_testdata_file("rtdose.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="outside the dose grid"):
            load_dicom_rt(rd, get_testdata_file("rtstruct.dcm"))
        dose = read_rtdose(rd)
        g = dose.grid
        c = g.index_to_world((np.asarray(g.shape) - 1) / 2.0)
        rs = save_rois([sphere_roi(1, "ball", 25.0, t=2.5, cz=c[0], cy=c[1], cx=c[2]),
                        sphere_roi(2, "small", 8.0, t=2.5, cz=c[0], cy=c[1] + 25, cx=c[2] + 25, kind="oar")],
                       tmp_path / "rs.dcm", reference=pydicom.dcmread(rd, force=True))
        rt = load_dicom_rt(rd, rs)
    assert rt.units == "RELATIVE" and g.spacing == (5.0, 10.0, 10.0)
    ball = score_dicom_rt(rt)["structures"]["ball"]
    # brute force: a 0.5 mm lattice inside the true sphere, dose interpolated by scipy (order 1)
    h = 0.5
    ax = np.arange(-25 + h / 2, 25, h)
    Z, Y, X = np.meshgrid(ax, ax, ax, indexing="ij")
    m = Z**2 + Y**2 + X**2 <= 25.0**2
    idx = g.world_to_index(np.c_[Z[m] + c[0], Y[m] + c[1], X[m] + c[2]]).T
    vals = map_coordinates(dose.dose, idx, order=1, mode="nearest")
    assert ball["volume_cc"] == pytest.approx(m.sum() * h**3 / 1000, rel=0.01)
    assert ball["Dmean"] == pytest.approx(vals.mean(), rel=0.001)
    assert ball["D95"] == pytest.approx(np.percentile(vals, 5), rel=0.005)
    assert ball["D50"] == pytest.approx(np.percentile(vals, 50), rel=0.005)
    assert ball["Dmax"] == pytest.approx(vals.max(), rel=0.01)
    # dicompyler-core bins doses in 0.01 units (cGy for Gy): its RELATIVE ~1.0 doses are scaled x 50
    ds = pydicom.dcmread(rd, force=True)
    ds.DoseGridScaling = float(ds.DoseGridScaling) * 50
    ds.DoseUnits = "GY"
    rd50 = tmp_path / "rd50.dcm"
    ds.save_as(rd50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = score_dicom_rt(load_dicom_rt(rd50, rs))
    for num, name in ((1, "ball"), (2, "small")):
        for k, (a, b, rel) in _compare(dvhcalc, rd50, rs, num, out["structures"][name], 10.0).items():
            assert abs(rel) < 0.03, (name, k, a, b)


def test_with_ct_structures_are_the_cases_masks(tmp_path):
    from rtlab.io import save_dicom
    from rtlab.phantoms import get_phantom

    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    save_dicom(case, tmp_path)
    z, y, x = np.meshgrid(*case.grid.axes(), indexing="ij")
    dose = 50.0 + 0.2 * x + 0.1 * z - 0.05 * y
    dose = dose - dose.min() + 1.0
    rd = save_rtdose(dose, case.grid, tmp_path / "RD.dcm", reference=case)
    rt = load_dicom_rt(rd, tmp_path / "RS.dcm", ct=tmp_path)
    assert rt.case is not None and rt.supersample == 1 and rt.score_grid.is_same(case.grid)
    out = score_dicom_rt(rt)
    for name, s in case.structures.items():
        m = s.mask
        st = out["structures"][name]
        assert st["volume_cc"] == pytest.approx(m.sum() * case.grid.voxel_volume_cc, rel=1e-9)
        assert st["Dmean"] == pytest.approx(dose[m].mean(), rel=1e-6)  # uint32 quantisation only
        assert st["Dmax"] == pytest.approx(dose[m].max(), rel=1e-6)
    assert main(["score", "--rtdose", str(rd), "--rtstruct", str(tmp_path / "RS.dcm"), "--ct", str(tmp_path),
                 "--json"]) == 0


def test_rtdoses_on_different_grids_are_not_summed(files, tmp_path):
    _, rd, rs, _ = files
    g2 = Grid((30, 40, 40), (3.0, 3.0, 3.0), (-43.5, -58.5, -57.0))
    other = save_rtdose(np.ones(g2.shape), g2, tmp_path / "RD_b.dcm")
    with pytest.raises(ValueError, match="RD_b.dcm is on another grid"):
        load_dicom_rt([rd, other], rs)
    stranger = save_rtdose(np.ones(GRID.shape), GRID, tmp_path / "RD_c.dcm")  # new frame of reference
    with pytest.raises(ValueError, match=r"RD_c.dcm has another FrameOfReferenceUID \(0020,0052\)"):
        load_dicom_rt([rd, stranger], rs)
    same = save_rtdose(np.ones(GRID.shape), GRID, tmp_path / "RD_d.dcm", reference=pydicom.dcmread(rd))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = load_dicom_rt([rd, same], rs)
    np.testing.assert_allclose(both.dose, read_rtdose(rd).dose + 1.0, rtol=1e-6)
