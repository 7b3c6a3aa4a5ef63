"""matRad machine files end to end (issue 17, item 1): resolve_machine, plan_case(machine=path),
``rtlab dose|plan|score|batch --machine-file``, ``rtlab dose --out``, the matRad default isocentre.

The machine files are small matRad-layout files written here (``conftest.write_matrad_machine``).
References: :func:`rtlab.dose.load_matrad_machine` + :func:`rtlab.dose.build_influence` called
directly (the CLI must give the same numbers), and the numpy centre of mass of the target voxels.
"""

import json

import numpy as np
import pytest

from tests.conftest import write_matrad_machine
from rtlab.batch.stages import rtlab_influence, standard_treatment_machine
from rtlab.cli import main
from rtlab.core.case import Case
from rtlab.core.geometry import Structure, StructureSet
from rtlab.dose import build_influence, generic_6mv, list_dose_machines, load_matrad_machine, resolve_machine
from rtlab.io import load_dose_npz
from rtlab.phantoms import get_phantom
from rtlab.planning import plan_case

SPHERE = ["--phantom", "sphere", "--spacing", "6"]


@pytest.fixture(scope="module")
def mfile(tmp_path_factory):
    # other betas than the built-in machine, so that a silently ignored file would show
    return write_matrad_machine(tmp_path_factory.mktemp("mf") / "photons_small.mat", name="small",
                                betas=(0.45, 0.02, 0.004), mu=0.006)


@pytest.fixture(scope="module")
def sphere():
    return get_phantom("sphere", spacing=6.0)


def test_resolve_machine_accepts_names_machines_and_files(mfile):
    m = resolve_machine(mfile)
    assert m.name == "small" and m.betas == load_matrad_machine(mfile).betas
    assert resolve_machine(str(mfile)) is m  # fitted once per process and file
    assert resolve_machine(None).key() == generic_6mv().key()
    assert resolve_machine("generic_6mv_v1").key() == generic_6mv(1).key()
    g = generic_6mv()
    assert resolve_machine(g) is g
    assert set(list_dose_machines()) == {"generic_6mv", "generic_6mv_v1"}


def test_resolve_machine_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--machine-file: file .*missing.mat.* does not exist"):
        resolve_machine(tmp_path / "missing.mat", "--machine-file")
    with pytest.raises(ValueError, match="unknown machine 'varian'.*generic_6mv"):
        resolve_machine("varian")
    bad = tmp_path / "photons_bad.mat"
    bad.write_text("not a mat file")
    with pytest.raises(ValueError, match="--machine-file: .*photons_bad.mat.*not a readable"):
        resolve_machine(bad, "--machine-file")
    with pytest.raises(TypeError, match="machine must be"):
        resolve_machine(3.0)


def test_plan_case_accepts_a_machine_file(sphere, mfile):
    kw = dict(angles=[0, 120, 240], max_iter=3, dose_grid_mm=6.0)
    by_path = plan_case(sphere, machine=str(mfile), **kw)
    by_obj = plan_case(sphere, machine=load_matrad_machine(mfile), **kw)
    assert by_path.influence.machine.name == "small"
    np.testing.assert_allclose(by_path.dose, by_obj.dose, rtol=1e-6, atol=1e-9)
    default = plan_case(sphere, **kw)
    assert default.influence.machine.name == generic_6mv().name
    assert np.abs(default.dose - by_path.dose).max() > 1e-3  # the file is really used


def test_dose_cli_out_is_the_unit_weight_dose(capsys, sphere, mfile, tmp_path):
    out = tmp_path / "unit.npz"
    assert main(["dose", *SPHERE, "--angles", "0,120,240", "--machine-file", str(mfile), "--out", str(out),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    im = build_influence(sphere, [0, 120, 240], machine=load_matrad_machine(mfile), progress=False, gpu=False)
    ref = im.dose(np.ones(im.shape[1]), on="ct")
    dose = load_dose_npz(out, expected_shape=sphere.grid.shape)
    np.testing.assert_allclose(dose, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert d["machine"] == "small" and d["n_beamlets"] == im.shape[1] == sum(d["beamlets_per_beam"])
    np.testing.assert_allclose(d["isocenter_mm"], sphere.isocenter(), atol=1e-3)
    with np.load(out) as z:
        np.testing.assert_allclose(z["isocenter_mm"], d["isocenter_mm"])
    assert d["dose_max_gy_per_unit_weight"] == pytest.approx(ref.max(), rel=1e-5)


def test_dose_cli_bad_machine_file_exits_2(capsys, tmp_path):
    assert main(["dose", *SPHERE, "--machine-file", str(tmp_path / "nope.mat")]) == 2
    err = capsys.readouterr().err
    assert "--machine-file" in err and "nope.mat" in err and "does not exist" in err
    assert main(["dose", *SPHERE, "--out", str(tmp_path / "d.txt")]) == 2
    assert "--out must name a .npz" in capsys.readouterr().err


def test_plan_and_score_recompute_with_the_machine_file(capsys, sphere, mfile, tmp_path):
    out = tmp_path / "plan.npz"
    assert main(["plan", *SPHERE, "--angles", "0,120,240", "--max-iter", "3", "--machine-file", str(mfile),
                 "--out", str(out), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["machine_model"] == "small"
    # the same weights re-computed with the same file give the stored dose back ...
    assert main(["score", *SPHERE, "--dose", str(out), "--machine-file", str(mfile), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["recomputed_with"] == "small" and s["dose_change_max_gy"] < 1e-3 * p["rx_gy"]
    # ... and with the built-in machine a different dose, equal to the library's
    assert main(["score", *SPHERE, "--dose", str(out), "--machine-file", "generic_6mv", "--json"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    with np.load(out) as z:
        x = z["x"]
        stored = z["dose"]
    im = build_influence(sphere, [0, 120, 240], progress=False, gpu=False)
    ref = im.dose(x, on="ct")
    assert s2["dose_change_max_gy"] == pytest.approx(float(np.abs(ref - stored).max()), rel=1e-3, abs=1e-4)
    assert s2["dose_change_max_gy"] > 1e-2


def test_score_machine_file_needs_a_plan_file(capsys, sphere, tmp_path, mfile):
    f = tmp_path / "dose_only.npz"
    np.savez(f, dose=np.zeros(sphere.grid.shape))
    assert main(["score", *SPHERE, "--dose", str(f), "--machine-file", str(mfile)]) == 2
    assert "rtlab plan ... --out" in capsys.readouterr().err


def test_batch_stages_use_the_machine_file(sphere, mfile):
    std = standard_treatment_machine("standard", str(mfile))
    assert std.source.name == "small" and std.mlc == standard_treatment_machine("standard").mlc
    im = rtlab_influence(sphere, 0, angles=[0.0, 180.0], machine_file=str(mfile))
    assert im.machine.name == "small"
    with pytest.raises(ValueError, match="machine_file: .*does not exist"):
        standard_treatment_machine("standard", "/no/such/photons_x.mat")


def test_batch_cli_rejects_a_broken_machine_file_before_starting(capsys, tmp_path):
    bad = tmp_path / "photons_bad.mat"
    bad.write_bytes(b"\x00" * 64)
    assert main(["batch", "--cases", "sphere", "--machines", "standard", "--machine-file", str(bad),
                 "--out", str(tmp_path / "b")]) == 2
    assert "photons_bad.mat" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_default_isocentre_is_the_targets_centre_of_mass():
    # two disjoint targets of different size, no beams: matRad's matRad_getIsoCenter (union, mean)
    case = get_phantom("sphere", spacing=6.0)
    g = case.grid
    a = np.zeros(g.shape, bool)
    b = np.zeros(g.shape, bool)
    a[10:14, 10:14, 10:14] = True
    b[20:22, 20:22, 20:26] = True
    ss = StructureSet(g, [Structure("A", a, g, kind="target", prescription=60.0),
                          Structure("B", b, g, kind="target", prescription=50.0), case.structures.body])
    c = Case(name="two", grid=g, ct=case.ct, structures=ss)
    ref = g.index_to_world(np.argwhere(a | b).mean(axis=0))
    np.testing.assert_allclose(c.isocenter(), ref, atol=1e-9)
    assert np.abs(c.isocenter() - c.structures.targets[0].centroid()).max() > 5.0


def test_dose_panel_machine_picker(sphere, mfile, monkeypatch, tmp_path):
    import rtlab.planning
    from rtlab.widgets import DoseEnginePanel
    from rtlab.widgets.dose_panel import MATRAD_FILE

    p = DoseEnginePanel(sphere, angles=[0, 120, 240], dose_grid_mm=6.0)
    names = [v for _, v in p.machine_choice.options]
    assert names[:2] == ["generic_6mv", "generic_6mv_v1"] and MATRAD_FILE in names
    assert p.settings()["machine"].key() == generic_6mv().key()
    # a file typed into the path box reaches prepare_plan as the fitted Machine (the library call)
    p.machine_choice.value = MATRAD_FILE
    with pytest.raises(ValueError, match="type the path"):
        p.settings()
    p.machine_file.value = str(tmp_path / "absent.mat")
    with pytest.raises(ValueError, match="matRad machine file: file .*absent.mat.* does not exist"):
        p.compute()
    p.machine_file.value = str(mfile)
    p.compute(block=True)
    assert p.problem.influence.machine.name == "small"
    ref = rtlab.planning.prepare_plan(sphere, angles=[0, 120, 240], dose_grid_mm=6.0, machine=str(mfile))
    np.testing.assert_allclose(p.dose, ref.operator.dose_ct(ref.x0), rtol=1e-5, atol=1e-5)
    # constructor: a path preselects the file, a Machine is shown as given
    q = DoseEnginePanel(sphere, machine=str(mfile))
    assert q.machine_choice.value == MATRAD_FILE and q.machine_file.value == str(mfile)
    m = generic_6mv(1)
    r = DoseEnginePanel(sphere, machine=m)
    assert r.settings()["machine"] is m
    with pytest.raises(ValueError, match="does not exist"):
        DoseEnginePanel(sphere, machine=str(tmp_path / "nope.mat"))
