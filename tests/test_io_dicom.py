"""Tests for rtlab.io.dicom: CT series + RTSTRUCT in, RTDOSE out and in.

The reader is checked against series and structure sets written *by hand in this file* with
pydicom (explicit ImagePositionPatient / ImageOrientationPatient / contour coordinates), so a
consistent mistake in rtlab's writer and reader cannot hide; rtlab's own writers are then
checked by round trips.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from rtlab.case import Case  # noqa: E402
from rtlab.geometry import Grid, Structure, StructureSet  # noqa: E402
from rtlab.io import (  # noqa: E402
    ROI,
    load_dicom,
    load_rtdose,
    mask_to_polygons,
    rasterize_polygons,
    save_dicom,
    save_dicom_ct,
    save_rois,
    save_rtdose,
    save_rtstruct,
)

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
RS_SOP = "1.2.840.10008.5.1.4.1.1.481.3"


# ---------------------------------------------------------------------------------------
# hand-written DICOM (independent of rtlab's writers)
# ---------------------------------------------------------------------------------------
def _file_ds(sop_class):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "T1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.FrameOfReferenceUID = "1.2.3.5"
    return ds


def write_series(directory, pixels, ipp_first, row_dir, col_dir, pixel_spacing, slice_step,
                 slope=1.0, intercept=-1024.0, series_uid=None, positions=None, drop=()):
    """Write stored values ``pixels[s, j, i]`` (uint16) as CT slices.

    Pixel (j, i) of slice s is centred at ``ipp_first + i*dc*row_dir + j*dr*col_dir + s*step*n``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    r, c = np.asarray(row_dir, float), np.asarray(col_dir, float)
    n = np.cross(r, c)
    series_uid = series_uid or generate_uid()
    files = []
    for s in range(pixels.shape[0]):
        ds = _file_ds(CT_SOP)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = s + 1
        pos = np.asarray(ipp_first, float) + (s * slice_step if positions is None else positions[s]) * n
        if "ImagePositionPatient" not in drop:
            ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.r_[r, c]]
        ds.PixelSpacing = [f"{pixel_spacing[0]:.4f}", f"{pixel_spacing[1]:.4f}"]
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(pixels[s]).astype("<u2").tobytes()
        f = d / f"slice{s:03d}.dcm"
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
        files.append(f)
    return files


def write_rtstruct(path, rois):
    """``rois``: list of (name, interpreted type, list of (m, 3) world x, y, z contours)."""
    ds = _file_ds(RS_SOP)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ref = Dataset()
    ref.FrameOfReferenceUID = "1.2.3.5"
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ss, rc_items, obs = [], [], []
    for num, (name, typ, contours) in enumerate(rois, start=1):
        it = Dataset()
        it.ROINumber = num
        it.ROIName = name
        ss.append(it)
        rc = Dataset()
        rc.ReferencedROINumber = num
        cs = []
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.4f}" for v in np.asarray(pts, float).ravel()]
            cs.append(c)
        if cs:
            rc.ContourSequence = Sequence(cs)
        rc_items.append(rc)
        o = Dataset()
        o.ObservationNumber = num
        o.ReferencedROINumber = num
        o.RTROIInterpretedType = typ
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ss)
    ds.ROIContourSequence = Sequence(rc_items)
    ds.RTROIObservationsSequence = Sequence(obs)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def square(cx, cy, half, z):
    return np.array([[cx - half, cy - half, z], [cx + half, cy - half, z], [cx + half, cy + half, z], [cx - half, cy + half, z]])


# series geometry used by several tests: 20 slices x 32 rows x 32 columns, 2 mm pixels, 3 mm slices
NS, NR, NC = 20, 32, 32
DX = DY = 2.0
DZ = 3.0


def _marker_pixels():
    px = np.full((NS, NR, NC), 1024, np.uint16)  # 0 HU with intercept -1024
    return px


def test_axial_series_geometry_and_hu(tmp_path):
    px = _marker_pixels()
    px[4, 7, 25] = 1024 + 500  # slice 4, row 7 (y), column 25 (x)
    ipp = np.array([-31.0, -31.0, -30.0])
    write_series(tmp_path, px, ipp, (1, 0, 0), (0, 1, 0), (DY, DX), DZ, slope=1.0, intercept=-1024.0)
    with pytest.warns(UserWarning, match="no RTSTRUCT"):
        case = load_dicom(tmp_path)
    g = case.grid
    assert g.shape == (NS, NR, NC)
    assert np.allclose(g.spacing, (DZ, DY, DX))
    assert np.allclose(g.origin, (-30.0, -31.0, -31.0))
    world = ipp + np.array([25 * DX, 7 * DY, 4 * DZ])  # x, y, z of the marker
    k, j, i = g.nearest_index(world[::-1])
    assert case.ct[k, j, i] == pytest.approx(500.0)
    assert np.count_nonzero(case.ct) == 1
    assert len(case.structures) == 0


def test_rescale_slope_intercept_applied(tmp_path):
    px = _marker_pixels()
    px[0, 0, 0] = 3000
    write_series(tmp_path, px, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0, slope=2.0, intercept=-1000.0)
    with pytest.warns(UserWarning):
        case = load_dicom(tmp_path)
    assert case.ct[0, 0, 0] == pytest.approx(2 * 3000 - 1000)
    assert case.ct[1, 1, 1] == pytest.approx(2 * 1024 - 1000)


def test_slices_sorted_by_position_not_file_order(tmp_path):
    px = _marker_pixels()
    for s in range(NS):
        px[s] = 1024 + 10 * s
    # write positions in scrambled order: file s sits at position perm[s]
    perm = np.random.default_rng(1).permutation(NS)
    pixels = np.empty_like(px)
    pixels[np.arange(NS)] = px[perm]
    write_series(tmp_path, pixels, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.5, positions=perm * 2.5)
    with pytest.warns(UserWarning):
        case = load_dicom(tmp_path)
    assert np.allclose(case.ct[:, 0, 0], 10 * np.arange(NS))


@pytest.mark.parametrize(
    "row_dir,col_dir",
    [((1, 0, 0), (0, 1, 0)), ((-1, 0, 0), (0, 1, 0)), ((1, 0, 0), (0, -1, 0)), ((-1, 0, 0), (0, -1, 0)), ((0, 1, 0), (1, 0, 0))],
)
def test_orientation_marker_and_contour_land_on_the_right_side(tmp_path, row_dir, col_dir):
    """An off-centre marker and an off-centre ROI with a hole land where their world coordinates say."""
    r, c = np.asarray(row_dir, float), np.asarray(col_dir, float)
    n = np.cross(r, c)
    # choose IPP so that the volume covers x, y in [-31, 31], z in [-28.5, 28.5] for any flip
    lo = np.array([-31.0, -31.0, -28.5])
    hi = np.array([31.0, 31.0, 28.5])
    ipp = np.where((r + c + n) < 0, hi, lo)
    marker = np.array([21.0, -11.0, 10.5])  # patient's left, anterior, superior (x, y, z): a voxel centre
    px = _marker_pixels()
    # find the image index (s, j, i) of the marker: solve marker = ipp + i*DX*r + j*DY*c + s*DZ*n
    i = int(round((marker - ipp) @ r / DX))
    j = int(round((marker - ipp) @ c / DY))
    s = int(round((marker - ipp) @ n / DZ))
    px[s, j, i] = 1024 + 1000
    write_series(tmp_path, px, ipp, r, c, (DY, DX), DZ)
    # ROI: 16 mm square centred at (x=14, y=-10) with an 8 mm square hole, on the slices z = -7.5 .. 7.5
    zs = -28.5 + DZ * np.arange(NS)
    zsel = zs[np.abs(zs) < 8]
    contours = []
    for z in zsel:
        contours.append(square(14.0, -10.0, 8.0, z))
        contours.append(square(14.0, -10.0, 4.0, z)[::-1])  # hole, opposite winding
    write_rtstruct(tmp_path / "rs.dcm", [("Lesion", "PTV", contours), ("Empty", "ORGAN", [])])
    with pytest.warns(UserWarning, match="Empty"):
        case = load_dicom(tmp_path)
    g = case.grid
    assert all(sp > 0 for sp in g.spacing)
    assert np.allclose(g.bounds[:, 0], [-30.0, -32.0, -32.0])  # z, y, x voxel edges
    k, jj, ii = g.nearest_index(marker[::-1])
    assert case.ct[k, jj, ii] == pytest.approx(1000.0)
    assert np.count_nonzero(case.ct) == 1
    # expected mask, independent of the rasteriser: voxel centres inside the outer square, not the hole
    Z, Y, X = g.mesh(sparse=False)
    ax, ay = np.abs(X - 14.0), np.abs(Y + 10.0)
    expected = (np.maximum(ax, ay) < 8) & ~(np.maximum(ax, ay) < 4) & (np.abs(Z) < 8)
    assert list(case.structures) == ["Lesion"]
    les = case.structures["Lesion"]
    assert les.kind == "target"
    assert np.array_equal(les.mask, expected)
    # the lesion is on the patient's left (+x) and anterior (-y) of the grid centre
    cz, cy, cx = les.centroid()
    assert cx > 10 and cy < -5


def test_interpreted_types_map_to_kinds(tmp_path):
    px = _marker_pixels()
    write_series(tmp_path, px, (-31, -31, 0), (1, 0, 0), (0, 1, 0), (DY, DX), DZ)
    z = 6.0
    write_rtstruct(tmp_path / "rs.dcm", [
        ("Outline", "EXTERNAL", [square(0, 0, 28, z)]),
        ("CTV1", "CTV", [square(5, 5, 3, z)]),
        ("GTVp", "GTV", [square(-5, 5, 3, z)]),
        ("Cord", "ORGAN", [square(0, 15, 3, z)]),
        ("BODY", "", [square(0, 0, 20, z)]),
    ])
    case = load_dicom(tmp_path)
    kinds = {n: s.kind for n, s in case.structures.items()}
    assert kinds == {"Outline": "body", "CTV1": "target", "GTVp": "target", "Cord": "oar", "BODY": "body"}
    # the 6 mm square centred at (5, 5) on 2 mm pixels centred at -31 + 2i covers 3 x 3 voxels
    assert case.structures["CTV1"].n_voxels == 9


# ---------------------------------------------------------------------------------------
# rasteriser against an independent brute-force crossing-number test
# ---------------------------------------------------------------------------------------
def _brute_force_even_odd(polys, shape):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    py, px = rows.ravel()[:, None].astype(float), cols.ravel()[:, None].astype(float)
    inside = np.zeros(py.shape[0], bool)
    for p in polys:
        y0, x0 = p[:, 0][None], p[:, 1][None]
        y1, x1 = np.roll(p[:, 0], -1)[None], np.roll(p[:, 1], -1)[None]
        cond = (y0 <= py) != (y1 <= py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        crossings = np.sum(cond & (xint < px), axis=1)
        inside ^= crossings % 2 == 1
    return inside.reshape(shape)


def test_rasterize_matches_brute_force_on_random_polygons():
    rng = np.random.default_rng(7)
    for _ in range(30):
        polys = [rng.uniform(-3, 25, size=(rng.integers(3, 12), 2)) for _ in range(rng.integers(1, 4))]
        got = rasterize_polygons(polys, (20, 23))
        assert np.array_equal(got, _brute_force_even_odd(polys, (20, 23)))


def test_rasterize_hole_and_area():
    outer = np.array([[2.5, 2.5], [2.5, 17.5], [17.5, 17.5], [17.5, 2.5]])
    hole = np.array([[7.5, 7.5], [12.5, 7.5], [12.5, 12.5], [7.5, 12.5]])
    m = rasterize_polygons([outer, hole], (20, 20))
    assert m.sum() == 15 * 15 - 5 * 5
    assert not m[10, 10] and m[4, 4] and not m[1, 1]


def test_mask_to_polygons_round_trip_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((15, 17)) < 0.45
        polys = mask_to_polygons(m)
        assert np.array_equal(rasterize_polygons(polys, m.shape), m)
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:8, 4:8] = False
    polys = mask_to_polygons(ring)
    assert len(polys) == 2 and all(len(p) == 4 for p in polys)  # collinear points removed


# ---------------------------------------------------------------------------------------
# rtlab's writers: round trips
# ---------------------------------------------------------------------------------------
def _small_case():
    g = Grid((20, 32, 30), (2.5, 2.0, 3.0), (-20.0, -31.0, -40.0))
    Z, Y, X = g.mesh(sparse=False)
    r = np.hypot(Y, X)
    body = r < 28
    ring = (r < 20) & (r > 8) & (np.abs(Z) < 15)
    ptv = ((X - 20) ** 2 + (Y + 10) ** 2 < 36) & (np.abs(Z - 5) < 8)
    ct = np.where(body, 40.0, -1000.0)
    ct[ptv] = 250.0
    ss = StructureSet(g, [Structure("BODY", body, g, "body"), Structure("ring", ring, g, "oar"),
                          Structure("PTV", ptv, g, "target", prescription=60.0)])
    return Case("small", g, ct, ss)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)])
def test_save_dicom_round_trip(tmp_path, orientation):
    case = _small_case()
    save_dicom(case, tmp_path, orientation=orientation)
    back = load_dicom(tmp_path)
    assert back.grid.is_same(case.grid)
    assert np.array_equal(back.ct, case.ct)
    assert list(back.structures) == ["BODY", "ring", "PTV"]
    for n, s in case.structures.items():
        assert back.structures[n].kind == s.kind
        assert np.array_equal(back.structures[n].mask, s.mask), n
    ds = pydicom.dcmread(sorted(tmp_path.glob("CT_*.dcm"))[0])
    assert [float(v) for v in ds.ImageOrientationPatient] == [float(v) for v in orientation]
    rs = pydicom.dcmread(tmp_path / "RS.dcm")
    assert rs.FrameOfReferenceUID == ds.FrameOfReferenceUID
    assert {o.RTROIInterpretedType for o in rs.RTROIObservationsSequence} == {"EXTERNAL", "ORGAN", "PTV"}


def test_save_rtstruct_hole_contours(tmp_path):
    case = _small_case()
    files = save_dicom_ct(case, tmp_path)
    save_rtstruct(case, tmp_path / "rs.dcm", reference=files)
    rs = pydicom.dcmread(tmp_path / "rs.dcm")
    ring = rs.ROIContourSequence[1]
    zs = [float(c.ContourData[2]) for c in ring.ContourSequence]
    # two contours (outer + hole) on every slice of the ring
    assert len(zs) == 2 * case.structures["ring"].mask.any(axis=(1, 2)).sum()
    assert rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID


def test_one_rtstruct_writer_references_ct_slices_only(tmp_path):
    """save_rtstruct goes through save_rois: both reference a CT series slice by slice, and
    neither lists an RTDOSE (or other non-CT reference) as a contour image."""
    case = _small_case()
    files = save_dicom_ct(case, tmp_path / "ct")
    ct_sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    rd = save_rtdose(np.ones(case.grid.shape), case.grid, tmp_path / "rd.dcm", reference=case)
    sq = np.array([[-5.0, -5.0], [-5.0, 5.0], [5.0, 5.0], [5.0, -5.0]])
    rois = [ROI(4, "box", kind="body", contours=[(0.0, sq)])]

    def contour_images(path):
        frame = pydicom.dcmread(path).ReferencedFrameOfReferenceSequence[0]
        if "RTReferencedStudySequence" not in frame:
            return None
        series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        return [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence]

    expected = [(CT_SOP, u) for u in ct_sops]
    assert contour_images(save_rtstruct(case, tmp_path / "rs_case.dcm")) == expected
    assert contour_images(save_rois(rois, tmp_path / "ro_case.dcm", reference=case)) == expected
    assert contour_images(save_rois(rois, tmp_path / "ro_files.dcm", reference=files)) == expected
    assert contour_images(save_rois(rois, tmp_path / "ro_dose.dcm", reference=pydicom.dcmread(rd))) is None
    assert contour_images(save_rtstruct(case, tmp_path / "rs_dose.dcm", reference=rd)) is None
    assert contour_images(save_rois(rois, tmp_path / "ro_none.dcm")) is None
    # the body ROI gets the same default colour from both entry points (ROI_COLORS)
    rs = pydicom.dcmread(tmp_path / "rs_case.dcm")
    body = [n for n, s in enumerate(case.structures.values()) if s.kind == "body"][0]
    assert list(rs.ROIContourSequence[body].ROIDisplayColor) == [0, 255, 0]
    assert list(pydicom.dcmread(tmp_path / "ro_none.dcm").ROIContourSequence[0].ROIDisplayColor) == [0, 255, 0]


# ---------------------------------------------------------------------------------------
# RTDOSE
# ---------------------------------------------------------------------------------------
def test_rtdose_round_trip_and_tags(tmp_path):
    g = Grid((7, 9, 11), (2.5, 2.0, 3.0), (-7.5, 10.0, -15.0))
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 70, g.shape)
    case = _small_case()
    p = save_rtdose(dose, g, tmp_path / "sub" / "rd.dcm", reference=case)
    ds = pydicom.dcmread(p)
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL"
    assert ds.DoseSummationType == "PLAN" and ds.BitsAllocated == 32 and ds.NumberOfFrames == 7
    assert ds.pixel_array.dtype == np.uint32
    assert np.allclose([float(v) for v in ds.GridFrameOffsetVector], 2.5 * np.arange(7))
    assert np.allclose([float(v) for v in ds.ImagePositionPatient], [-15.0, 10.0, -7.5])
    scale = float(ds.DoseGridScaling)
    assert scale == pytest.approx(dose.max() / (2**32 - 1), rel=1e-9)
    back, g2 = load_rtdose(p)
    assert g2.is_same(g)
    assert np.max(np.abs(back - dose)) <= scale * 0.5 + 1e-12
    assert list(tmp_path.joinpath("sub").iterdir()) == [p]  # no temporary files left


def test_rtdose_flipped_orientation_read(tmp_path):
    """An RTDOSE written (by hand) with flipped x rows is reordered to positive spacing."""
    g = Grid((3, 4, 5), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    dose = np.arange(g.size, dtype=float).reshape(g.shape)
    p = save_rtdose(dose, g, tmp_path / "rd.dcm")
    ds = pydicom.dcmread(p)
    px = ds.pixel_array.copy()
    ds.ImageOrientationPatient = ["-1", "0", "0", "0", "1", "0"]
    # x = 8 is the last column of the original grid; the normal r x c is now -z, so the frames
    # run downwards: reverse them too and put IPP at the top slice
    ds.ImagePositionPatient = ["8", "0", "4"]
    ds.PixelData = np.ascontiguousarray(px[::-1, :, ::-1]).tobytes()
    pydicom.dcmwrite(p, ds, enforce_file_format=True)
    back, g2 = load_rtdose(p)
    assert g2.is_same(g)
    assert np.allclose(back, dose, atol=float(ds.DoseGridScaling))


def test_rtdose_bad_input(tmp_path):
    g = Grid((2, 3, 4), (1, 1, 1))
    with pytest.raises(ValueError, match="dose has shape"):
        save_rtdose(np.zeros((2, 3, 5)), g, tmp_path / "a.dcm")
    with pytest.raises(ValueError, match="non-finite"):
        save_rtdose(np.full(g.shape, np.nan), g, tmp_path / "a.dcm")
    with pytest.raises(ValueError, match="negative"):
        save_rtdose(-np.ones(g.shape), g, tmp_path / "a.dcm")
    assert not (tmp_path / "a.dcm").exists()
    (tmp_path / "junk.dcm").write_text("not dicom")
    with pytest.raises(ValueError, match="cannot be read as DICOM"):
        load_rtdose(tmp_path / "junk.dcm")
    # zero dose is legal
    p = save_rtdose(np.zeros(g.shape), g, tmp_path / "z.dcm")
    d, _ = load_rtdose(p)
    assert not d.any()
    ds = pydicom.dcmread(p)
    del ds.DoseGridScaling
    pydicom.dcmwrite(p, ds, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"DoseGridScaling .*z\.dcm|z\.dcm.*DoseGridScaling"):
        load_rtdose(p)


# ---------------------------------------------------------------------------------------
# bad series
# ---------------------------------------------------------------------------------------
def test_missing_tag_names_tag_and_file(tmp_path):
    px = _marker_pixels()[:4]
    files = write_series(tmp_path, px, (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0)
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    pydicom.dcmwrite(files[2], ds, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"slice002\.dcm.*ImagePositionPatient"):
        load_dicom(tmp_path)


def test_missing_rescale_tag(tmp_path):
    files = write_series(tmp_path, _marker_pixels()[:3], (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0)
    ds = pydicom.dcmread(files[0])
    del ds.RescaleIntercept
    pydicom.dcmwrite(files[0], ds, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"slice000\.dcm.*RescaleIntercept"):
        load_dicom(tmp_path)


def test_oblique_rejected(tmp_path):
    a = np.deg2rad(10)
    write_series(tmp_path, _marker_pixels()[:3], (0, 0, 0), (np.cos(a), np.sin(a), 0), (-np.sin(a), np.cos(a), 0), (1, 1), 2.0)
    with pytest.raises(ValueError, match="oblique"):
        load_dicom(tmp_path)


def test_non_uniform_spacing_rejected(tmp_path):
    write_series(tmp_path, _marker_pixels()[:4], (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0,
                 positions=np.array([0.0, 2.0, 4.0, 8.0]))
    with pytest.raises(ValueError, match="non-uniform slice spacing"):
        load_dicom(tmp_path)


def test_mixed_series_rejected_and_selectable(tmp_path):
    write_series(tmp_path / "a", _marker_pixels()[:3], (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0, series_uid="1.2.9.1")
    write_series(tmp_path / "b", _marker_pixels()[:4], (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0, series_uid="1.2.9.2")
    both = tmp_path / "both"
    both.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            (both / f"{sub}_{f.name}").write_bytes(f.read_bytes())
    (both / "README.txt").write_text("not DICOM, ignored")
    with pytest.raises(ValueError, match="several CT series"):
        load_dicom(both)
    with pytest.warns(UserWarning):
        case = load_dicom(both, series_uid="1.2.9.2")
    assert case.grid.shape[0] == 4


def test_not_a_directory_and_no_ct(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_dicom(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="no CT image files"):
        load_dicom(tmp_path)


def test_broken_file_raises(tmp_path):
    files = write_series(tmp_path, _marker_pixels()[:3], (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1), 2.0)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 600])  # truncate the pixel data
    with pytest.raises(ValueError, match="slice001"):
        load_dicom(tmp_path)
