"""`rtlab batch` (patent 001 on dask) end to end with rtlab's real stages, plus the real stages'
equivalence to plan_case / build_influence and bad-argument errors."""

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

from rtlab.batch import CaseRef, load_record  # noqa: E402
from rtlab.batch.stages import merge_influences, plan_from_influence, rtlab_influence, rtlab_qa, rtlab_stages  # noqa: E402
from rtlab.cli import main  # noqa: E402
from rtlab.dose import build_influence  # noqa: E402
from rtlab.dose.machines import get_machine  # noqa: E402
from rtlab.phantoms import get_phantom  # noqa: E402
from rtlab.planning import plan_case  # noqa: E402

ANGLES = [0.0, 120.0, 240.0]


def test_per_beam_influence_and_plan_equal_plan_case():
    case = get_phantom("tg119_cshape_easy", spacing=10.0)
    parts = [rtlab_influence(case, b, angles=ANGLES) for b in range(3)]
    im = merge_influences(parts)
    full = build_influence(case, ANGLES, machine=get_machine("standard").source, progress=False, gpu=False)
    assert im.shape == full.shape and (im.matrix != full.matrix).nnz == 0
    assert (im.broad.P != full.broad.P).nnz == 0 and im.broad.n_nodes == full.broad.n_nodes
    assert im.beamlet_slices == full.beamlet_slices
    p = plan_from_influence(case, im, max_iter=8)
    q = plan_case(case, ANGLES, machine=get_machine("standard").source, max_iter=8)
    np.testing.assert_array_equal(p.x, q.x)
    np.testing.assert_array_equal(p.dose, q.dose)
    assert p.scores == q.scores and p.iterations == q.iterations
    # the QA stage computes gamma/DVH when the plan carries no report: identical doses pass at 100 %
    qa = rtlab_qa(case, {"dose": p.dose}, {"dose": p.dose.copy()}, "standard")
    assert qa["passed"] and qa["pass_rates"] == {"3%/3mm": 1.0, "2%/2mm": 1.0} and qa["max_abs_dvh_diff_gy"] == 0
    with pytest.raises(ValueError, match="parts\\[1\\]"):
        merge_influences([parts[0], build_influence(case, [0.0], progress=False, gpu=False, cutoff_mm=20.0)])


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    def err(*argv):
        rc = main(["batch", *argv, "--out", str(tmp_path / "o")])
        return rc, capsys.readouterr().err

    rc, e = err("--cases", "no_such_phantom", "--machines", "standard")
    assert rc == 2 and "neither a built-in phantom" in e
    rc, e = err("--cases", "tg119_prostate", "--machines", "linac_x")
    assert rc == 2 and "unknown machine" in e and "linac_10mm_hard" in e
    rc, e = err("--cases", "tg119_prostate", "--machines", "standard=abc")
    assert rc == 2 and "must be a number" in e
    rc, e = err("--cases", "tg119_prostate", "--machines", "standard", "standard")
    assert rc == 2 and "twice" in e
    rc, e = err("--cases", "tg119_prostate", "--machines", "standard", "--workers", "0")
    assert rc == 2 and "--workers" in e
    rc, e = err("--cases", "tg119_prostate", "--machines", "standard", "--spacing", "-1")
    assert rc == 2 and "--spacing" in e
    rc, e = err("--cases", "tg119_prostate", "--machines", "standard", "--fanout", "3")
    assert rc == 2 and "fanout" in e
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    rc, e = err("--cases", str(bad), "--machines", "standard")
    assert rc == 2 and ".txt" in e
    assert not (tmp_path / "o").exists()  # nothing started, nothing written
    with pytest.raises(ValueError, match="convert_method"):
        rtlab_stages(convert_method="magic")
    with pytest.raises(ValueError, match="unknown machine"):
        rtlab_stages(standard="nope")
    assert CaseRef.parse("tg119_prostate", 6.0) == CaseRef("tg119_prostate", "tg119_prostate", 6.0)


def test_cli_real_run_one_case_two_machines(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["batch", "--cases", "tg119_cshape_easy", "--machines", "standard", "linac_10mm_hard",
               "--workers", "1", "--out", str(out), "--spacing", "10", "--angles", "0,120,240", "--max-iter", "12"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "dask dashboard at http" in text and "standard plan tg119_cshape_easy done" in text
    assert "QA tg119_cshape_easy on linac_10mm_hard (attempt 1)" in text and "2 plan(s) written" in text
    names = sorted(p.name for p in out.iterdir())
    assert names == ["batch_qa.csv", "batch_summary.json", "tg119_cshape_easy__linac_10mm_hard.json",
                     "tg119_cshape_easy__linac_10mm_hard.npz", "tg119_cshape_easy__standard.json",
                     "tg119_cshape_easy__standard.npz"]
    # the standard machine coincides with itself: its plan is the standard plan, used as is (claim 10)
    a_std, s_std = load_record(out, "tg119_cshape_easy", "standard")
    a_lin, s_lin = load_record(out, "tg119_cshape_easy", "linac_10mm_hard")
    assert s_std["plan"]["method"] == "as_is" and s_lin["plan"]["method"] == "fluence"
    assert s_std["qa"]["pass_rates"] == {"2%/2mm": 1.0, "3%/3mm": 1.0}
    case = get_phantom("tg119_cshape_easy", spacing=10.0)
    assert a_std["dose"].shape == a_lin["dose"].shape == case.grid.shape
    # the converted plan was re-optimised on the 10 mm MLC: not the standard dose, but close to it
    assert 0 < np.abs(a_lin["dose"] - a_std["dose"]).max() < 0.2 * a_std["dose"].max()
    summ = json.loads((out / "batch_summary.json").read_text())
    assert summ["all_passed"] is (not summ["qa_failed"]) and summ["failed"] == {}
    assert sorted(map(tuple, summ["persisted"])) == [("tg119_cshape_easy", "linac_10mm_hard"),
                                                     ("tg119_cshape_easy", "standard")]
    csv = pd.read_csv(out / "batch_qa.csv")
    assert list(csv["machine"]) == ["linac_10mm_hard", "standard"]
    assert list(csv.columns[:7]) == ["case", "machine", "passed", "attempts", "method", "gamma_3%/3mm_pct",
                                     "gamma_2%/2mm_pct"]
    row = csv.iloc[0]
    assert row["gamma_3%/3mm_pct"] == pytest.approx(100 * s_lin["qa"]["pass_rates"]["3%/3mm"], abs=0.01)
    assert bool(row["passed"]) == s_lin["qa"]["passed"]
    # resume: a second run writes no plan and exits with the same status
    rc2 = main(["batch", "--cases", "tg119_cshape_easy", "--machines", "standard", "linac_10mm_hard",
                "--workers", "1", "--out", str(out), "--spacing", "10", "--angles", "0,120,240", "--max-iter", "12",
                "--json"])
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc2 == 0 and doc["persisted"] == [] and doc["all_passed"] is True
