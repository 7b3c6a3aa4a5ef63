"""The rtlab command line: phantoms, score (built-ins, matRad, DICOM), dose, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from rtlab import metrics
from rtlab.cli import main
from rtlab.io import save_dicom, save_matrad, save_npz
from rtlab.phantoms import get_phantom, list_phantoms


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _target_dose(case, scale=1.0):
    """Prescription times ``scale`` inside the targets, a 50 % halo one voxel around, 0 elsewhere."""
    from scipy import ndimage

    dose = np.zeros(case.grid.shape, np.float32)
    t = case.structures.targets[0]
    halo = ndimage.binary_dilation(t.mask, iterations=1) & ~t.mask
    dose[halo] = 0.5 * case.prescription
    dose[t.mask] = scale * case.prescription
    return dose


def test_phantoms_lists_every_builtin(capsys):
    code, out, _ = run(capsys, "phantoms")
    assert code == 0
    for name in list_phantoms():
        assert name in out
    code, out, _ = run(capsys, "phantoms", "--json")
    assert {r["name"] for r in json.loads(out)} == set(list_phantoms())


def test_score_json_on_builtin_matches_library(capsys, tmp_path):
    case = get_phantom("tg119_cshape_easy", spacing=5.0)
    dose = _target_dose(case, 1.02)
    f = tmp_path / "plan.npz"
    np.savez(f, dose=dose)
    code, out, err = run(capsys, "score", "--dose", str(f), "--phantom", "tg119_cshape_easy", "--spacing", "5", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["rx_gy"] == 50.0 and res["target"] == case.structures.targets[0].name
    for k in ("ci_paddick", "ci_rtog", "gi", "hi"):
        assert k in res
    # the target is covered exactly by the 50 Gy isodose: Paddick CI = 1
    assert res["ci_paddick"] == pytest.approx(1.0)
    ptv = case.structures.targets[0]
    assert res["structures"][ptv.name]["D95"] == pytest.approx(51.0, rel=1e-5)
    assert res["gi"] == pytest.approx(
        float(metrics.gradient_index(dose, ptv, rx=50.0, body=case.structures.body)), rel=1e-6)
    assert set(res["structures"]) == set(case.structures)
    for s in res["structures"].values():
        assert set(s) == {"D95", "D98", "D2", "D10", "Dmean", "Dmax"}
    # --rx overrides the prescription
    code, out, _ = run(capsys, "score", "--dose", str(f), "--phantom", "tg119_cshape_easy", "--spacing", "5",
                       "--rx", "60", "--json")
    assert json.loads(out)["ci_paddick"] == 0.0


def test_score_table_prints_goals(capsys, tmp_path):
    f = tmp_path / "p.npz"
    case = get_phantom("tg119_cshape_hard", spacing=5.0)
    np.savez(f, dose=_target_dose(case))
    code, out, _ = run(capsys, "score", "--dose", str(f), "--phantom", "tg119_cshape_hard", "--spacing", "5")
    assert code == 0
    assert "CI_paddick" in out and "passed" in out and "<= 10" in out


def test_score_on_matrad_file_uses_objective_prescription(capsys, tmp_path):
    case = get_phantom("tg119_cshape_easy", spacing=5.0)
    mat = tmp_path / "TG119.mat"
    save_matrad(case, mat)
    f = tmp_path / "plan.npz"
    np.savez(f, dose=_target_dose(case))
    code, out, err = run(capsys, "score", "--dose", str(f), "--matrad", str(mat), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["rx_gy"] == pytest.approx(50.0)
    assert res["ci_paddick"] == pytest.approx(1.0)


def test_score_on_dicom_directory(capsys, tmp_path):
    case = get_phantom("sphere", spacing=4.0)
    save_dicom(case, tmp_path / "dcm")
    f = tmp_path / "plan.npz"
    np.savez(f, dose=_target_dose(case))
    code, out, err = run(capsys, "score", "--dose", str(f), "--dicom", str(tmp_path / "dcm"), "--rx", "60", "--json")
    assert code == 0, err
    assert json.loads(out)["ci_paddick"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "content, match",
    [(dict(dose=np.zeros((3, 3, 3))), "shape"), (dict(other=np.zeros(3)), "dose"),
     ("nan", "NaN|non-finite")],
)
def test_score_bad_dose_files(capsys, tmp_path, content, match):
    f = tmp_path / "bad.npz"
    if content == "nan":
        content = dict(dose=np.full(get_phantom("sphere", spacing=10).grid.shape, np.nan))
    np.savez(f, **content)
    code, _, err = run(capsys, "score", "--dose", str(f), "--phantom", "sphere", "--spacing", "10")
    assert code == 2
    assert "error" in err
    import re

    assert re.search(match, err)


def test_score_missing_and_fake_files(capsys, tmp_path):
    code, _, err = run(capsys, "score", "--dose", str(tmp_path / "nope.npz"), "--phantom", "sphere")
    assert code == 2 and "nope.npz" in err
    fake = tmp_path / "fake.mat"
    fake.write_text("this is not a MAT file")
    f = tmp_path / "d.npz"
    np.savez(f, dose=np.zeros((3, 3, 3)))
    code, _, err = run(capsys, "score", "--dose", str(f), "--matrad", str(fake))
    assert code == 2 and "fake.mat" in err
    code, _, err = run(capsys, "score", "--dose", str(f), "--phantom", "no_such_phantom")
    assert code == 2 and "tg119_cshape_easy" in err


def test_dose_json_keys(capsys):
    code, out, err = run(capsys, "dose", "--phantom", "sphere", "--spacing", "6", "--angles", "0,120,240",
                         "--bixel", "10", "--json")
    assert code == 0, err
    res = json.loads(out)
    for k in ("n_voxels", "n_beamlets", "nnz", "build_s", "matvec_ms", "patch_update_ms"):
        assert k in res
    assert res["n_beamlets"] > 0 and res["nnz"] > res["n_voxels"]
    code, _, err = run(capsys, "dose", "--phantom", "sphere", "--spacing", "6", "--gpu")
    assert code == 2 and "CUDA" in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "rtlab.cli", "phantoms", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)


def test_plan_with_sequencing_adds_delivery_keys(capsys):
    code, out, err = run(capsys, "plan", "--phantom", "tg119_cshape_easy", "--spacing", "6", "--grid", "6",
                         "--angles", "0,72,144,216,288", "--max-iter", "15", "--sequence", "step",
                         "--machine", "generic_10mm_40_noid", "--json")
    assert code == 0, err
    res = json.loads(out)
    for k in ("mu_total", "segments", "deliverable_ci_paddick", "ci_paddick", "build_s", "optimize_s", "iterations"):
        assert k in res
    assert res["segments"] > 0 and res["mu_total"] >= res["mu_lower_bound"] - 1e-6
    assert 0 <= res["deliverable_ci_paddick"] <= 1
    code, _, err = run(capsys, "plan", "--phantom", "sphere", "--spacing", "8", "--sequence", "step", "--machine", "nope")
    assert code == 2 and "unknown MLC" in err


def test_gk_json(capsys):
    code, out, err = run(capsys, "gk", "--phantom", "head", "--spacing", "1.5", "--json")
    assert code == 0, err
    res = json.loads(out)
    for k in ("coverage", "selectivity", "ci_paddick", "gi", "beam_on_min"):
        assert k in res
    assert res["coverage"] >= 0.95 and res["ci_paddick"] >= 0.8 and res["gi"] <= 3.0
    code, _, err = run(capsys, "gk", "--spacing", "-1")
    assert code == 2


def test_lab_launches_jupyter_on_the_notebooks(capsys, monkeypatch, tmp_path):
    import subprocess as sp

    calls = []
    monkeypatch.setattr(sp, "call", lambda cmd: calls.append(cmd) or 0)
    code, _, _ = run(capsys, "lab", "--notebooks", str(tmp_path), "--no-browser")
    assert code == 0
    assert calls[0][1] == "lab" and calls[0][2] == f"--notebook-dir={tmp_path}" and "--no-browser" in calls[0]
    code, _, err = run(capsys, "lab", "--notebooks", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err
