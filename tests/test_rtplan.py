"""DICOM RT Plans in and out: load_rtplan, save_rtplan / export_plan_dicom, recompute_rtplan, the CLI.

Reading is checked on pydicom's shipped rtplan.dcm and on plans written by hand in this file with
pydicom (so rtlab's writer cannot hide a reader mistake), with fluences known in closed form; the
export by a round trip (RT Plan -> control-point fluence = the sequencer's delivered fluence,
dose gamma) and by reading the file back with plain pydicom.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from rtlab.cli import main  # noqa: E402
from rtlab.core.mlc import MLC, get_mlc  # noqa: E402
from rtlab.dose import build_influence  # noqa: E402
from rtlab.evaluate.qa import gamma  # noqa: E402
from rtlab.io import load_rtplan, read_rtdose  # noqa: E402
from rtlab.io.dicom.rtplan import RT_PLAN_STORAGE  # noqa: E402
from rtlab.methods.deliverable import sequence_plan  # noqa: E402
from rtlab.phantoms import get_phantom  # noqa: E402
from rtlab.planning import export_plan_dicom, gamma_against, recompute_rtplan  # noqa: E402

FX = 5


# ---------------------------------------------------------------------------------------
# hand-written RT Plans
# ---------------------------------------------------------------------------------------
def _plan_ds(beams, n_fx=2):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_PLAN_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("rp", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RT_PLAN_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTPLAN"
    ds.RTPlanLabel = "hand"
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = n_fx
    refs = []
    seq = []
    for num, (mu, devices, cps) in enumerate(beams, start=1):
        r = Dataset()
        r.ReferencedBeamNumber = num
        r.BeamMeterset = mu
        refs.append(r)
        b = Dataset()
        b.BeamNumber = num
        b.BeamName = f"B{num}"
        b.BeamType = "DYNAMIC"
        b.RadiationType = "PHOTON"
        b.TreatmentDeliveryType = "TREATMENT"
        b.SourceAxisDistance = 1000
        b.BeamLimitingDeviceSequence = Sequence(devices)
        items = []
        for k, (w, pos) in enumerate(cps):
            c = Dataset()
            c.ControlPointIndex = k
            c.CumulativeMetersetWeight = w
            if k == 0:
                c.GantryAngle = 90
                c.BeamLimitingDeviceAngle = 0
                c.PatientSupportAngle = 0
                c.IsocenterPosition = [10.0, 20.0, 30.0]  # x, y, z
                c.SourceToSurfaceDistance = 900
            ps = []
            for t, v in pos:
                p = Dataset()
                p.RTBeamLimitingDeviceType = t
                p.LeafJawPositions = list(v)
                ps.append(p)
            if ps:
                c.BeamLimitingDevicePositionSequence = Sequence(ps)
            items.append(c)
        b.NumberOfControlPoints = len(items)
        b.ControlPointSequence = Sequence(items)
        b.FinalCumulativeMetersetWeight = cps[-1][0]
        seq.append(b)
    fg.ReferencedBeamSequence = Sequence(refs)
    fg.NumberOfBeams = len(beams)
    ds.FractionGroupSequence = Sequence([fg])
    ds.BeamSequence = Sequence(seq)
    return ds


def _device(t, n, bnd=None):
    d = Dataset()
    d.RTBeamLimitingDeviceType = t
    d.NumberOfLeafJawPairs = n
    if bnd is not None:
        d.LeafPositionBoundaries = list(bnd)
    return d


def _leaves(n, left, right):
    return np.r_[np.full(n, float(left)), np.full(n, float(right))]


def test_pydicoms_rtplan_as_plain_pydicom_reads_it():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("rtplan.dcm")
    ds = pydicom.dcmread(path, force=True)
    plan = load_rtplan(path)
    assert plan.fractions == int(ds.FractionGroupSequence[0].NumberOfFractionsPlanned)
    assert len(plan.beams) == 1
    b, rb = plan.beams[0], ds.BeamSequence[0]
    cp0 = rb.ControlPointSequence[0]
    assert b.mu == pytest.approx(float(ds.FractionGroupSequence[0].ReferencedBeamSequence[0].BeamMeterset))
    assert b.gantry == float(cp0.GantryAngle) and b.sad == float(rb.SourceAxisDistance)
    assert b.isocenter == pytest.approx([float(v) for v in cp0.IsocenterPosition][::-1])  # (z, y, x)
    assert b.ssd == pytest.approx(float(cp0.SourceToSurfaceDistance))
    jaws = {p.RTBeamLimitingDeviceType: [float(v) for v in p.LeafJawPositions]
            for p in cp0.BeamLimitingDevicePositionSequence}
    assert b.control_points[0].jaws.tolist() == jaws["X"] + jaws["Y"]
    assert b.mlc_type is None
    # an open 200 x 200 mm field: fluence = MU inside the jaws, 0 outside
    e = np.arange(-120.0, 121.0, 10.0)
    f = b.fluence(e, e)
    c = 0.5 * (e[1:] + e[:-1])
    inside = (np.abs(c)[:, None] < 100) & (np.abs(c)[None, :] < 100)
    np.testing.assert_allclose(f, np.where(inside, b.mu, 0.0), atol=1e-9)


def test_millennium_boundaries_and_analytic_fluences(tmp_path):
    mil = get_mlc("millennium_120")
    bnd = mil.boundaries_mm
    assert bnd.size == 61 and bnd[0] == -200 and bnd[-1] == 200 and np.diff(bnd)[[0, 10, 30, 50, 59]].tolist() == [
        10, 5, 5, 10, 10]
    n = 60
    jaws = [("ASYMX", [-50, 50]), ("ASYMY", [-30, 30])]
    # beam 1, step-and-shoot: leaves -20..20 for 6 MU, then -10..10 for 4 MU
    step = [(0.0, jaws + [("MLCX", _leaves(n, -20, 20))]), (0.6, []),
            (0.6, [("MLCX", _leaves(n, -10, 10))]), (1.0, [])]
    # beam 2, dynamic: leaves open from (0, 0) to (-20, 20) over 10 MU: fluence(x) = 10 - |x| / 2
    dyn = [(0.0, jaws + [("MLCX", _leaves(n, 0, 0))]), (1.0, [("MLCX", _leaves(n, -20, 20))])]
    devs = [_device("ASYMX", 1), _device("ASYMY", 1), _device("MLCX", n, bnd)]
    p = tmp_path / "rp.dcm"
    _plan_ds([(10.0, devs, step), (10.0, devs, dyn)]).save_as(p)
    plan = load_rtplan(p)
    b1, b2 = plan.beams
    np.testing.assert_allclose(b1.boundaries, bnd)
    assert b1.isocenter == (30.0, 20.0, 10.0) and b1.gantry == 90 and b1.ssd == 900
    np.testing.assert_allclose(b1.meterset(), [0, 6, 6, 10])
    assert b1.leaf_positions().shape == (4, 60, 2)
    e = np.arange(-40.0, 40.5, 0.5)
    c = 0.5 * (e[1:] + e[:-1])
    f1 = b1.fluence(e, e)
    expect_x = np.where(np.abs(c) < 10, 10.0, np.where(np.abs(c) < 20, 6.0, 0.0))
    rows = np.abs(c) < 30
    np.testing.assert_allclose(f1[rows], np.broadcast_to(expect_x, (rows.sum(), c.size)), atol=1e-9)
    assert np.all(f1[~rows] == 0)
    f2 = b2.fluence(e, e)
    np.testing.assert_allclose(f2[rows][0], np.clip(10 - np.abs(c) / 2, 0, None), atol=0.02)  # 0.5 mm pixels

    # an HD120 without LeafPositionBoundaries: the model gives them, else a clear error
    devs = [_device("ASYMX", 1), _device("ASYMY", 1), _device("MLCX", 60)]
    p2 = tmp_path / "hd.dcm"
    _plan_ds([(10.0, devs, step)]).save_as(p2)
    with pytest.raises(ValueError, match=r"hd.dcm.*LeafPositionBoundaries \(300A,00BE\)"):
        load_rtplan(p2)
    hd = load_rtplan(p2, mlc="hd_120").beams[0]
    assert hd.boundaries[0] == -110 and hd.boundaries[-1] == 110 and np.diff(hd.boundaries).min() == 2.5


def test_bad_rtplans_name_file_and_tag(tmp_path):
    n = 60
    bnd = get_mlc("millennium_120").boundaries_mm
    devs = [_device("ASYMX", 1), _device("ASYMY", 1), _device("MLCX", n, bnd)]
    good = [(0.0, [("ASYMX", [-50, 50]), ("ASYMY", [-30, 30]), ("MLCX", _leaves(n, -20, 20))]), (1.0, [])]
    ds = _plan_ds([(10.0, devs, good)])
    ds.BeamSequence[0].ControlPointSequence[0].BeamLimitingDevicePositionSequence[2].LeafJawPositions = [0.0] * 100
    p = tmp_path / "short.dcm"
    ds.save_as(p)
    with pytest.raises(ValueError, match=r"short.dcm.*LeafJawPositions \(300A,011C\) of MLCX must hold 120"):
        load_rtplan(p)
    ds = _plan_ds([(10.0, devs, good)])
    del ds.BeamSequence[0].ControlPointSequence[0].GantryAngle
    p = tmp_path / "nogantry.dcm"
    ds.save_as(p)
    with pytest.raises(ValueError, match=r"nogantry.dcm.*GantryAngle"):
        load_rtplan(p)
    txt = tmp_path / "plan.dcm"
    txt.write_text("not dicom")
    with pytest.raises(ValueError, match="plan.dcm is not a DICOM file"):
        load_rtplan(txt)


# ---------------------------------------------------------------------------------------
# export -> load -> re-compute
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planned():
    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    im = build_influence(case, [0.0, 120.0, 240.0], progress=False, cutoff_mm=20.0)
    x = np.random.default_rng(1).uniform(0.2, 1.0, im.shape[1]) * 2.0
    return case, im, x


def _delivered_on_pixels(bd, vc, uc, f=1.0):
    """The sequence's delivered fluence (constant on leaf rows x bixel columns) averaged over pixels."""
    def ov(cent, e):
        lo = np.maximum(cent[:, None] - f / 2, e[None, :-1])
        hi = np.minimum(cent[:, None] + f / 2, e[None, 1:])
        return np.clip(hi - lo, 0, None) / f
    return ov(vc, np.asarray(bd.leaf_edges)) @ bd.sequence.delivered @ ov(uc, np.asarray(bd.sequence.x_edges)).T


@pytest.mark.parametrize("method, mlc", [("step", "generic_5mm_60"), ("sliding", "nogap"),
                                         ("step", "millennium_120")])
def test_round_trip_fluence_and_dose(planned, tmp_path, method, mlc):
    case, im, x = planned
    if mlc == "nogap":  # a sliding window whose closed pairs leak nothing (min gap 0)
        mlc = MLC("nogap_5mm", 5.0, 60, 400.0, 0.0, True, 25.0)
    res = sequence_plan(im, x, mlc, method, fractions=FX, leaf_alignment="isocentre")
    files = export_plan_dicom(case, res, im.beams, tmp_path / "RP.dcm")
    plan = load_rtplan(files["rtplan"])
    assert plan.fractions == FX
    np.testing.assert_allclose([b.mu for b in plan.beams], [b.mu for b in res.beams] if method == "step"
                               else [b.mu for b in plan.beams])
    rc = recompute_rtplan(plan, case, dose_grid=res.grid)
    fd = rc.engine
    for i, bd in enumerate(res.beams):
        vc, uc = fd.pixel_centres(i)
        ref = _delivered_on_pixels(bd, vc, uc)
        got = rc.fluence_mu[i]
        assert np.abs(got - ref).max() <= 0.01 * ref.max()  # fluence equal within 1 %
        assert got.sum() == pytest.approx(ref.sum(), rel=1e-6)
        fd.set_fluence(i, ref * plan.fractions / rc.mu_per_unit)
    fd.compute()
    original = fd.dose(on="dose")  # the sequencer's fluence through the same engine
    g = gamma(original, rc.dose, rc.grid, dose_criterion=0.02, dta_mm=2.0, cutoff=0.1)
    assert g.pass_rate >= 0.99
    # the exported RTDOSE is the written plan's own re-computation (dose="plan")
    ga = gamma_against(rc, files["rtdose"], 0.02, 2.0)
    assert ga["pass_rate"] >= 0.999 and files["dose_source"] == "plan"
    # the sequencer's own dose (influence matrix of bixel-averaged fluence) leaves out the fluence
    # beyond the bixel mask: never more than the plan's, and within a few %
    gap = files["sequencer_gap"]
    assert 1.0 <= gap["total_ratio"] < 1.08
    seq_rd = export_plan_dicom(case, res, im.beams, tmp_path / "s" / "RP.dcm", dose="sequencer")
    np.testing.assert_allclose(read_rtdose(seq_rd["rtdose"]).dose, np.clip(res.dose, 0, None),
                               atol=2e-4 * res.dose.max())


def test_sliding_window_min_gap_leaks_as_on_a_machine(planned, tmp_path):
    case, im, x = planned
    res = sequence_plan(im, x, "generic_5mm_60", "sliding", fractions=FX, leaf_alignment="isocentre")
    files = export_plan_dicom(case, res, im.beams, tmp_path / "RP.dcm")
    plan = load_rtplan(files["rtplan"])
    rc = recompute_rtplan(plan, case, dose_grid=res.grid)
    for i, bd in enumerate(res.beams):
        vc, uc = rc.engine.pixel_centres(i)
        ref = _delivered_on_pixels(bd, vc, uc)
        extra = rc.fluence_mu[i].sum() / ref.sum() - 1
        assert 0 < extra < 0.05  # the 0.5 mm minimum gap: a few % more fluence, never less
        assert rc.fluence_mu[i].min() >= ref.min() - 1e-9 and np.all(rc.fluence_mu[i] >= ref - 1e-6 * ref.max())


def test_exported_rtplan_read_by_plain_pydicom(planned, tmp_path):
    case, im, x = planned
    res = sequence_plan(im, x, "millennium_120", "step", fractions=FX, leaf_alignment="isocentre")
    files = export_plan_dicom(case, res, im.beams, tmp_path / "RP.dcm", prescription_gy=60.0)
    plan = files["plan"]
    ds = pydicom.dcmread(files["rtplan"])
    rs = pydicom.dcmread(files["rtstruct"])
    rd = pydicom.dcmread(files["rtdose"])
    # IOD basics: SOP class, modality, UIDs valid and unique, one frame of reference and study
    assert ds.SOPClassUID == RT_PLAN_STORAGE and ds.Modality == "RTPLAN"
    assert ds.file_meta.MediaStorageSOPClassUID == RT_PLAN_STORAGE
    uids = [ds.SOPInstanceUID, rs.SOPInstanceUID, rd.SOPInstanceUID, ds.SeriesInstanceUID]
    assert all(pydicom.uid.UID(u).is_valid for u in uids) and len(set(uids)) == 4
    assert ds.StudyInstanceUID == rs.StudyInstanceUID == rd.StudyInstanceUID
    assert ds.FrameOfReferenceUID == rs.FrameOfReferenceUID == rd.FrameOfReferenceUID
    for kw in ("PatientID", "PatientName", "RTPlanLabel", "RTPlanGeometry", "PatientSetupSequence",
               "SeriesNumber", "InstanceNumber", "ApprovalStatus"):
        assert kw in ds, kw
    # the links: plan -> structure set and dose, dose -> plan
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert ds.ReferencedDoseSequence[0].ReferencedSOPInstanceUID == rd.SOPInstanceUID
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    # MU per beam, meterset weights and leaves as written
    fg = ds.FractionGroupSequence[0]
    assert int(fg.NumberOfFractionsPlanned) == FX and int(fg.NumberOfBeams) == len(res.beams)
    for rb, b, pb, bd in zip(fg.ReferencedBeamSequence, ds.BeamSequence, plan.beams, res.beams):
        assert float(rb.BeamMeterset) == pytest.approx(bd.mu, rel=1e-9)
        w = [float(cp.CumulativeMetersetWeight) for cp in b.ControlPointSequence]
        assert w[0] == 0 and np.all(np.diff(w) >= 0) and w[-1] == pytest.approx(float(b.FinalCumulativeMetersetWeight))
        assert int(b.NumberOfControlPoints) == len(b.ControlPointSequence)
        dev = {d.RTBeamLimitingDeviceType: d for d in b.BeamLimitingDeviceSequence}
        np.testing.assert_allclose([float(v) for v in dev["MLCX"].LeafPositionBoundaries],
                                   get_mlc("millennium_120").boundaries_mm)
        leaves = None
        for k, cp in enumerate(b.ControlPointSequence):
            for p in cp.get("BeamLimitingDevicePositionSequence", []):
                if p.RTBeamLimitingDeviceType == "MLCX":
                    leaves = np.asarray([float(v) for v in p.LeafJawPositions])
            np.testing.assert_allclose(leaves, np.r_[pb.control_points[k].leaves[:, 0], pb.control_points[k].leaves[:, 1]],
                                       atol=1e-6)
    assert float(ds.DoseReferenceSequence[0].TargetPrescriptionDose) == 60.0


def test_cli_plan_rtplan_out_and_dose_rtplan(tmp_path, capsys):
    rp = tmp_path / "out" / "RP.dcm"
    code = main(["plan", "--phantom", "sphere", "--spacing", "8", "--angles", "0,120,240", "--max-iter", "10",
                 "--sequence", "step", "--rtplan-out", str(rp), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["rtplan_out"]["rtplan"] == str(rp) and rp.is_file()
    code = main(["dose", "--rtplan", str(rp), "--ct", str(rp.parent), "--rtdose", str(rp.parent / "RD.dcm"),
                 "--out", str(tmp_path / "re.dcm"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["beams"] == 3
    assert out["gamma"]["pass_rate"] >= 0.99 and out["gamma"]["criterion"] == "3%/3mm"
    assert read_rtdose(tmp_path / "re.dcm").grid.shape == tuple(out["grid_shape"])
    assert main(["plan", "--phantom", "sphere", "--spacing", "8", "--rtplan-out", str(rp)]) == 2  # needs --sequence
    assert "needs --sequence" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_exported_set_passes_dciodvfy(planned, tmp_path):
    case, im, x = planned
    res = sequence_plan(im, x, "hd_120", "sliding", fractions=FX, leaf_alignment="isocentre")
    files = export_plan_dicom(case, res, im.beams, tmp_path / "RP.dcm", prescription_gy=60.0)
    # dciodvfy cannot read 32-bit pixel data (it asserts, on pydicom's own rtdose.dcm too): the
    # RTDOSE's attributes are checked on a 16-bit copy
    rd = pydicom.dcmread(files["rtdose"])
    px = rd.pixel_array
    rd.BitsAllocated, rd.BitsStored, rd.HighBit = 16, 16, 15
    rd.PixelData = (px >> 16).astype("<u2").tobytes()
    rd.save_as(tmp_path / "RD16.dcm")
    for f in (files["rtplan"], files["rtstruct"], tmp_path / "RD16.dcm", files["ct"][0]):
        r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (f.name, errors)


def test_export_writes_the_ct_unless_the_case_came_from_dicom(planned, tmp_path):
    from rtlab.io import load_dicom

    case, im, x = planned
    res = sequence_plan(im, x, "generic_5mm_60", "step", fractions=FX, leaf_alignment="isocentre")
    a = export_plan_dicom(case, res, im.beams, tmp_path / "a" / "RP.dcm")
    b = export_plan_dicom(case, res, im.beams, tmp_path / "b" / "RP.dcm")  # the same case again, elsewhere
    assert len(a["ct"]) == len(b["ct"]) == case.grid.shape[0]
    loaded = load_dicom(tmp_path / "a")
    c = export_plan_dicom(loaded, res, im.beams, tmp_path / "c" / "RP.dcm")
    assert c["ct"] == []  # references the series it was read from
    rs = pydicom.dcmread(c["rtstruct"])
    ct0 = pydicom.dcmread(a["ct"][0])
    assert rs.FrameOfReferenceUID == ct0.FrameOfReferenceUID and rs.StudyInstanceUID == ct0.StudyInstanceUID
    assert pydicom.dcmread(c["rtplan"]).FrameOfReferenceUID == ct0.FrameOfReferenceUID
