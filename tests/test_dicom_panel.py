"""DicomPanel: driven from Python as a user would, checked against the library calls it wraps."""

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pydicom = pytest.importorskip("pydicom")

from rtlab.core.geometry import Grid  # noqa: E402
from rtlab.evaluate.dose_volume import score_dicom_rt  # noqa: E402
from rtlab.io import ROI, load_dicom_rt, save_rois, save_rtdose  # noqa: E402
from rtlab.widgets import DicomPanel  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("panel")
    g = Grid((20, 30, 30), (3.0, 3.0, 3.0), (-28.5, -43.5, -43.5))
    z, y, x = np.meshgrid(*g.axes(), indexing="ij")
    dose = 60.0 * np.exp(-(x**2 + y**2 + z**2) / 30.0**2)
    rd = save_rtdose(dose, g, d / "RD.dcm")
    a = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    ring = np.c_[12 * np.sin(a), 12 * np.cos(a)]
    rois = [ROI(1, "PTV", "PTV", "target", contours=[(float(zz), ring) for zz in np.arange(-10.0, 11.0, 2.0)]),
            ROI(2, "OAR x", "ORGAN", "oar", contours=[(float(zz), ring * 0.4 + [0, 25]) for zz in (-2.0, 0.0, 2.0)])]
    rs = save_rois(rois, d / "RS.dcm", reference=pydicom.dcmread(rd))
    return rd, rs


def test_open_scores_like_the_library(files):
    rd, rs = files
    panel = DicomPanel(rd, rs, rx=50)
    seen = []
    panel.on("opened", seen.append)
    panel.open_button.click()
    out = panel.wait(timeout=120)
    ref = score_dicom_rt(load_dicom_rt(rd, rs), rx=50)
    assert seen == [out]
    assert out["structures"] == ref["structures"] and out["ci_paddick"] == pytest.approx(ref["ci_paddick"])
    assert "PTV" in panel.table.value and "OAR x" in panel.table.value
    assert panel.image.value[:4] == b"\x89PNG"
    assert panel.slice_slider.max == 19 and panel.slice_slider.value == 9  # the slice of the maximum
    panel.slice_slider.value = 3  # redraw another slice
    assert panel.image.value[:4] == b"\x89PNG"


def test_bad_paths(files, tmp_path):
    rd, rs = files
    panel = DicomPanel()
    with pytest.raises(ValueError, match="paths first"):
        panel.open_files()
    bad = tmp_path / "x.dcm"
    bad.write_text("no")
    panel.rtdose_path.value, panel.rtstruct_path.value = str(bad), str(rs)
    panel.open_files()
    with pytest.raises(RuntimeError):
        panel.wait(timeout=60)
    assert "not a DICOM file" in panel.status.value
