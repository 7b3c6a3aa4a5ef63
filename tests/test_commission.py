"""Commissioning: beam-data CSV, closed-form water curves against the engine, fit, the refitted generic 6 MV."""

import numpy as np
import pytest

from rtlab.dose import generic_6mv, mu_per_unit_fluence, reference_dose
from rtlab.dose.commission import (FIT_TOLERANCE, BeamData, compare_to_data, example_beam_data, fit_machine, in_air_output_ratio,
                                   model_values, read_beam_data, water_curves, water_dose)
from rtlab.dose.machine import Machine

CSV = """# test data
kind,field_mm,ssd_mm,depth_mm,x_mm,value
pdd,100,1000,100,0,67.5
output_factor,30,1000,100,0,0.83
"""


def test_read_beam_data_and_errors(tmp_path):
    d = read_beam_data(CSV)
    assert isinstance(d, BeamData) and len(d) == 2 and d.comments == ["test data"]
    assert d.select("pdd").value.tolist() == [67.5]
    p = tmp_path / "b.csv"
    p.write_text(CSV)
    assert len(read_beam_data(p)) == 2
    with pytest.raises(ValueError, match="kind"):
        read_beam_data(CSV.replace("output_factor", "tpr"))
    with pytest.raises(ValueError, match="column"):
        read_beam_data(CSV.replace("x_mm,", ""))
    with pytest.raises(ValueError, match="not a number"):
        read_beam_data(CSV.replace("67.5", "abc"))
    with pytest.raises(ValueError, match="positive"):
        read_beam_data(CSV.replace("pdd,100", "pdd,-100"))
    with pytest.raises(ValueError, match="does not exist"):
        read_beam_data(tmp_path / "missing.csv")
    ex = example_beam_data()
    assert set(ex.kind.tolist()) == {"pdd", "dmax", "output_factor"} and any("BJR" in c for c in ex.comments)


@pytest.mark.parametrize("field", [50.0])
def test_closed_form_water_curves_equal_the_engine(field):
    m = generic_6mv()
    cf = water_curves(m, field, profile_depths=(100.0,))
    en = water_curves(m, field, profile_depths=(100.0,), engine=True)
    ok = cf.depth_mm >= 5.0  # the engine's 1 mm voxels, interpolated, smear the steep build-up
    assert np.abs(cf.pdd[ok] - en.pdd[ok]).max() < 0.5
    assert abs(cf.dmax_mm - en.dmax_mm) < 1.0
    assert abs(cf.penumbra_mm[100.0] - en.penumbra_mm[100.0]) < 0.3
    assert en.output_factor == pytest.approx(cf.output_factor, rel=0.005)
    # absolute: the engine's dose per unit fluence equals the closed form
    i = int(np.argmin(np.abs(cf.depth_mm - 100.0)))
    assert en.dose[i] == pytest.approx(cf.dose[i], rel=0.005)


def test_water_dose_inverse_square_and_symmetry():
    m = generic_6mv()
    x = np.array([-30.0, 30.0])
    a = water_dose(m, 100.0, 50.0, x)
    assert a[0] == pytest.approx(a[1], rel=1e-12)
    # a broad field at large depth: the dose at SSD 900 exceeds SSD 1000 by about the inverse square
    r = water_dose(m, 100.0, 100.0, 0.0, 900.0) / water_dose(m, 100.0, 100.0, 0.0, 1000.0)
    assert 1.15 < r < 1.30
    with pytest.raises(ValueError, match="field_mm"):
        water_curves(m, -1.0)
    with pytest.raises(TypeError):
        water_curves("generic", 100.0)


def test_fit_recovers_a_known_machine():
    truth = generic_6mv()
    rows = ["kind,field_mm,ssd_mm,depth_mm,x_mm,value"]
    for L in (30, 60, 100, 200):
        for d in (15, 50, 100, 200):
            rows.append(f"pdd,{L},1000,{d},0,0")
        rows.append(f"output_factor,{L},1000,100,0,0")
    for x in (-60, -52, -48, -40, 40, 48, 52, 60):
        rows.append(f"profile,100,1000,100,{x},0")
    rows.append("dmax,100,1000,0,0,0")
    data = read_beam_data("\n".join(rows) + "\n")
    data.value[:] = model_values(truth, data)
    fit = fit_machine(data, starts=2)
    assert fit.within_tolerance and max(fit.max_difference.values()) < 0.2
    p = fit.parameters
    assert p["mu_per_mm"] == pytest.approx(truth.mu, rel=0.05)
    assert p["b1_per_mm"] == pytest.approx(truth.betas[0], rel=0.1)
    assert p["head_scatter_weight"] == pytest.approx(truth.head_scatter_weight, rel=0.25)
    assert p["primary_sigma_mm"] == pytest.approx(5.0 / 2.3548, rel=0.05)  # fitted: the data hold profiles


def test_fit_needs_depth_and_output_data():
    with pytest.raises(ValueError, match="output_factor"):
        fit_machine(read_beam_data("kind,field_mm,ssd_mm,depth_mm,x_mm,value\npdd,100,1000,100,0,67\n"))
    with pytest.raises(ValueError, match="PDD"):
        fit_machine(read_beam_data("kind,field_mm,ssd_mm,depth_mm,x_mm,value\noutput_factor,30,1000,100,0,0.9\n"))


def test_generic_6mv_reproduces_the_shipped_data():
    """The built-in machine is the fit of rtlab/data/beam_data_6mv_representative.csv (docs table)."""
    m = generic_6mv()
    data = example_beam_data()
    model = model_values(m, data)
    for k, v, mv in zip(data.kind, data.value, model):
        diff = (mv / v - 1) * 100 if k == "output_factor" else mv - v
        assert abs(diff) <= FIT_TOLERANCE[k], (k, v, mv)
    cmp = compare_to_data(m, data)
    assert cmp.within_tolerance and max(cmp.max_difference.values()) < 0.2  # the docs' table
    assert "| output factor | 30 | 1000 | 100 | 0.8275 | 0.8284 | +0.10 % |" in cmp.to_markdown()
    # and refitting the data gives the same curves (the stored parameters are rounded fits)
    fit = fit_machine(data, starts=1)
    assert fit.within_tolerance
    for L in (30.0, 100.0, 200.0):
        a, b = water_curves(m, L, profile_depths=(100.0,)), water_curves(fit.machine, L, profile_depths=(100.0,))
        assert np.abs(a.pdd - b.pdd).max() < 0.3
        assert a.output_factor == pytest.approx(b.output_factor, rel=0.003)


def test_generic_6mv_beam_properties():
    """The issue's ranges for a 6 MV beam (docs/dose_engine.md); 3 x 3 is outside 0.85-0.90 (data-driven)."""
    m = generic_6mv()
    w = {L: water_curves(m, L, profile_depths=(100.0,)) for L in (30.0, 50.0, 100.0, 200.0)}
    assert 14.0 <= w[100.0].dmax_mm <= 16.0
    assert 66.0 <= w[100.0].pdd100 <= 68.0
    assert 4.0 <= w[100.0].penumbra_mm[100.0] <= 7.0
    assert 0.92 <= w[50.0].output_factor <= 0.95
    assert 1.04 <= w[200.0].output_factor <= 1.08
    # 3 x 3: the cited output factor at 100 mm depth (0.8275) and the model's PDD give 0.918 at d_max
    assert w[30.0].output_factor == pytest.approx(0.918, abs=0.005)
    # output and PDD rise with field size
    of = [w[L].output_factor for L in sorted(w)]
    pdd = [w[L].pdd100 for L in sorted(w)]
    assert np.all(np.diff(of) > 0) and np.all(np.diff(pdd) > 0)
    # the head-scatter part alone (in-air output ratio)
    assert in_air_output_ratio(m, 30.0) == pytest.approx(0.943, abs=0.005)
    assert in_air_output_ratio(m, 200.0) == pytest.approx(1.037, abs=0.005)
    assert in_air_output_ratio(generic_6mv(version=1), 30.0) == 1.0


def test_mu_calibration_with_the_commissioned_machine():
    """1 MU = 1 cGy at d_max, 10 x 10, SSD 1000 (engine); other fields get their output factor per MU."""
    m = generic_6mv()
    dref, (z, dose) = reference_dose(m, return_curve=True)
    assert dref == pytest.approx(1.0, abs=0.01)  # norm: unit fluence ~ 1 Gy at d_max
    k = mu_per_unit_fluence(m)
    assert k == pytest.approx(dref / 0.01, rel=1e-12)
    cf = water_curves(m, 100.0)
    assert z[np.argmax(dose)] == pytest.approx(cf.dmax_mm, abs=1.0)
    # per MU at the reference point: 1 cGy
    assert dose.max() / k == pytest.approx(0.01, rel=1e-12)
    # the engine's reference dose equals the closed form (so MU of any field follow its output factor)
    assert dref == pytest.approx(cf.dose.max(), rel=0.005)
    w3 = water_curves(m, 30.0)
    assert w3.dose[np.argmin(np.abs(w3.depth_mm - cf.dmax_mm))] / k == pytest.approx(0.01 * w3.output_factor, rel=0.005)


def test_head_scatter_in_the_machine():
    m = generic_6mv()
    comp, sig, w = m.gaussians()
    assert comp.tolist() == [0, 0, 1, 2]
    assert sig[1] == pytest.approx(np.hypot(sig[0], 40.0))
    assert w[1] == pytest.approx(m.head_scatter_weight * w[0])
    r = np.linspace(0, 400, 40001)
    integral = np.trapezoid(2 * np.pi * r * m.lateral_kernel(r, 0), r)
    assert integral == pytest.approx(1 + m.head_scatter_weight, rel=1e-4)
    assert m.key() != generic_6mv(version=1).key()
    with pytest.raises(ValueError, match="head_scatter_sigma"):
        Machine("x", (0.3, 0.016, 0.005), 0.005, 1000.0, [[[2.0], [10.0], [30.0]]], [[[1.0], [0.2], [0.1]]],
                head_scatter_weight=0.1)
    with pytest.raises(ValueError, match="head_scatter_weight"):
        Machine("x", (0.3, 0.016, 0.005), 0.005, 1000.0, [[[2.0], [10.0], [30.0]]], [[[1.0], [0.2], [0.1]]],
                head_scatter_weight=-0.1, head_scatter_sigma=5.0)
