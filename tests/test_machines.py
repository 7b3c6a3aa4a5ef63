"""Treatment-machine registry and parameter coincidence (patent 001, claims 10-12)."""

import dataclasses

import numpy as np
import pytest
from scipy.special import erf

from rtlab.dose import generic_6mv
from rtlab.dose.machine import GENERIC_6MV
from rtlab.dose.machines import (CoincidenceThresholds, TreatmentMachine, _curve_gamma, compare_machines,
                                 dose_curves, get_machine, list_machines, make_source, register_machine)
from rtlab.dose.mu import reference_dose
from rtlab.mlc import MLC, get_mlc


def test_registry_has_a_standard_and_two_specific_machines():
    names = list_machines()
    assert names[0] == "standard" and len(names) >= 3
    std, hard, soft = (get_machine(n) for n in ("standard", "linac_10mm_hard", "linac_5mm_soft"))
    assert std.mlc.name == "generic_5mm_60" and std.source.key()[1:] == generic_6mv().key()[1:]
    assert hard.mlc.leaf_width_mm == 10 and not hard.mlc.interdigitation and hard.source.mu < std.source.mu
    assert soft.mlc == std.mlc and soft.source.mu > std.source.mu and soft.source.penumbra_fwhm > 5
    # fresh copies: editing one does not leak into the registry
    std.source.mu = 1.0
    assert get_machine("standard").source.mu == pytest.approx(GENERIC_6MV["mu"])
    assert get_machine(hard) is hard


def test_registry_errors_and_registration():
    with pytest.raises(ValueError, match="unknown machine 'nope'.*standard"):
        get_machine("nope")
    with pytest.raises(TypeError, match="source must be an rtlab.dose.Machine"):
        TreatmentMachine("x", "generic_6mv", "generic_5mm_60")
    with pytest.raises(ValueError, match="unknown MLC"):
        TreatmentMachine("x", generic_6mv(), "no_such_mlc")
    with pytest.raises(ValueError, match="built-in"):
        register_machine(TreatmentMachine("standard", generic_6mv(), "generic_5mm_60"))
    m = register_machine(TreatmentMachine("test_reg_machine", generic_6mv(), "generic_10mm_60"))
    assert "test_reg_machine" in list_machines() and get_machine("test_reg_machine").mlc.name == "generic_10mm_60"
    with pytest.raises(ValueError, match="already registered"):
        register_machine(m)
    register_machine(m, overwrite=True)


def _generic_kernels():
    p = GENERIC_6MV
    return dict(scatter_sigmas=p["sigmas"][1:], scatter_weights=p["weights"][1:], head_scatter=p["head_scatter"])


def test_make_source_is_normalised_like_the_generic_machine():
    g = generic_6mv()
    m = make_source("copy", g.betas, g.mu, **_generic_kernels())
    assert m.norm == pytest.approx(g.norm, rel=1e-12)
    # the engine's own calibration (fluence-map engine, mu.reference_dose) gives ~1 Gy at d_max
    for name in ("linac_10mm_hard", "linac_5mm_soft"):
        assert reference_dose(get_machine(name).source) == pytest.approx(1.0, abs=0.02)


def test_pdd_matches_the_closed_form_on_the_axis():
    src = get_machine("linac_10mm_hard").source
    c = dose_curves(src)
    d = c.depth_mm
    comp, sig, wts = src.gaussians(1000.0)  # head scatter included
    ref = (src.depth_dose(d)[:, comp] * wts * erf(50 / (np.sqrt(2) * sig)) ** 2).sum(-1)
    ref *= (src.sad / (src.sad + d)) ** 2
    ref = 100 * ref / ref.max()
    # beyond the build-up (where the voxelised surface shifts depths by up to half a voxel)
    deep = d >= 20
    assert np.max(np.abs(c.pdd[deep] - ref[deep])) < 0.3  # percentage points
    assert abs(c.dmax_mm - d[np.argmax(ref)]) <= 1.5
    assert c.profile[np.argmin(np.abs(c.x_mm))] == pytest.approx(100.0)


def test_curves_order_the_machines_physically():
    std, hard, soft = (dose_curves(get_machine(n)) for n in ("standard", "linac_10mm_hard", "linac_5mm_soft"))
    assert 64 < std.pdd10 < 70 and 10 < std.dmax_mm < 18  # documented generic 6 MV: ~67 %, ~14 mm
    assert hard.pdd10 > std.pdd10 + 1 > soft.pdd10 + 2
    assert soft.penumbra_mm > std.penumbra_mm + 1.5
    assert abs(hard.penumbra_mm - std.penumbra_mm) < 0.3  # same lateral kernels


def test_curve_gamma_on_flat_and_scaled_curves():
    x = np.arange(0.0, 100.0, 1.0)
    d = np.full_like(x, 100.0)
    assert _curve_gamma(x, d, x, d, 1.0, 1.0) == 1.0
    assert _curve_gamma(x, d, x, d * 1.009, 1.0, 1.0) == 1.0
    assert _curve_gamma(x, d, x, d * 1.011, 1.0, 1.0) == 0.0  # flat: distance cannot help
    ramp = x.copy()  # slope 1 %/mm of the max (99): a 0.5 mm shift passes 1 %/1 mm, a 3 mm shift does not
    assert _curve_gamma(x, ramp, x + 0.5, ramp, 1.0, 1.0) > 0.95
    assert _curve_gamma(x, ramp, x + 3.0, ramp, 1.0, 1.0) < 0.1


def test_machine_coincides_with_itself_and_a_near_copy():
    r = compare_machines("standard", "standard")
    assert r.coincide and r.reasons == [] and all(c.ok for c in r.checks)
    g = generic_6mv()
    near = TreatmentMachine("near", make_source("near", g.betas, g.mu * 1.001, primary_fwhm_mm=5.05, **_generic_kernels()),
                            MLC("near_mlc", 5.02, 60, 400.5))
    r = compare_machines("standard", near)
    assert r.coincide, r.reasons
    assert r.differences["MLC.leaf width"] == pytest.approx(0.02)


def test_specific_machines_differ_with_readable_reasons():
    r = compare_machines("standard", "linac_10mm_hard")
    assert not r.coincide and not r.mlc_coincide
    text = "\n".join(r.reasons)
    for word in ("leaf width: standard 5 vs specific 10 mm", "leaf pairs", "interdigitation", "PDD"):
        assert word in text
    assert "penumbra" not in text  # same lateral kernels
    r = compare_machines("standard", "linac_5mm_soft")
    assert not r.coincide and r.mlc_coincide and not r.source_coincide
    assert any("penumbra" in s for s in r.reasons) and any("PDD(100 mm)" in s for s in r.reasons)
    # the source check is what separates them: MLC + SAD alone coincide
    assert compare_machines("standard", "linac_5mm_soft", compare_source=False).coincide
    # and looser thresholds accept the softer beam
    loose = CoincidenceThresholds(curve_dose_pct=5.0, curve_dta_mm=3.0, curve_pass_rate=0.9, pdd10_pct=3.0,
                                  penumbra_mm=3.0, dmax_mm=3.0)
    assert compare_machines("standard", "linac_5mm_soft", loose).coincide


def test_threshold_and_curve_input_errors():
    with pytest.raises(ValueError, match="leaf_width_mm"):
        CoincidenceThresholds(leaf_width_mm=-1)
    with pytest.raises(ValueError, match="curve_pass_rate"):
        CoincidenceThresholds(curve_pass_rate=95)
    with pytest.raises(TypeError, match="thresholds"):
        compare_machines("standard", "standard", thresholds={"leaf_width_mm": 1})
    with pytest.raises(ValueError, match="field_mm"):
        dose_curves(generic_6mv(), field_mm=5)
    with pytest.raises(TypeError, match="source"):
        dose_curves("generic_6mv")
    assert dataclasses.replace(get_mlc("generic_5mm_60"), n_pairs=40).n_pairs == 40
