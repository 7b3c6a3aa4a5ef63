"""Beam model: depth components, generic 6 MV properties on a water phantom, matRad loader."""

import numpy as np
import pytest
import scipy.io

from rtlab.dose import generic_6mv, load_matrad_machine, depth_components, reference_dose
from rtlab.dose.machine import Machine


def test_depth_components_closed_form_and_limit():
    d = np.array([0.0, 10.0, 100.0])
    b, mu = (0.3252, 0.016, 0.0051), 0.005066
    got = depth_components(d, b, mu)
    ref = np.stack([bi / (bi - mu) * (np.exp(-mu * d) - np.exp(-bi * d)) for bi in b], -1)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)
    # b == mu: limit b d exp(-mu d)
    lim = depth_components(d, (mu, mu, mu), mu)[:, 0]
    np.testing.assert_allclose(lim, mu * d * np.exp(-mu * d), rtol=1e-9)


@pytest.fixture(scope="module")
def cax():
    return reference_dose(generic_6mv(), return_curve=True)


def test_6mv_dmax_and_pdd(cax):
    dref, (z, dose) = cax
    dmax = z[np.argmax(dose)]
    assert 12.0 <= dmax <= 17.0
    pdd100 = np.interp(100.0, z, dose) / dose.max()
    assert 0.62 <= pdd100 <= 0.70
    assert abs(dref - 1.0) < 0.02  # norm makes unit fluence ~ 1 Gy at d_max


def test_6mv_penumbra_and_output_factor():
    from rtlab.dose import FluenceDose
    from rtlab.dose.mu import _shift
    from rtlab.dose._testcases import water_box
    from rtlab.plan import Beam, BixelGrid

    m = generic_6mv()
    case = _shift(water_box(shape=(3, 131, 161), spacing=(1.0, 1.0, 1.0), surface_y=0.0))
    # move grid so x spans -80..80 and y -20..110
    bx = BixelGrid(5.0, -22, -22, np.ones((45, 45), bool))
    fd = FluenceDose(case, [Beam(0.0, 0.0, (0.0, 0.0, 0.0), 5.0, 1000.0, bx)], m, voxels="all", fluence_mm=0.5)
    st = fd._states[0]
    uu = st.pu0 + np.arange(st.shape[1]) * st.f
    vv = st.pv0 + np.arange(st.shape[0]) * st.f
    y = case.grid.axes()[1]
    x = case.grid.axes()[2]
    iy = int(np.argmin(np.abs(y - 100.0)))
    out = []
    for L in (30, 50, 100, 200):
        psi = np.zeros(st.shape)
        psi[np.ix_(np.abs(vv) < L / 2, np.abs(uu) < L / 2)] = 1.0
        fd.set_fluence(0, psi)
        fd.compute()
        d = fd.dose(on="dose")
        out.append(d[1, iy, 80])
        if L == 100:
            prof = d[1, iy, 80:] / d[1, iy, 80]
            x80 = np.interp(-0.8, -prof, x[80:])
            x20 = np.interp(-0.2, -prof, x[80:])
            pen = x20 - x80
            assert 4.0 <= pen <= 8.0, pen
    assert np.all(np.diff(out) > 0), out


def _fake_matrad(path, ssds=(900.0, 1000.0)):
    pos = np.arange(0.0, 180.0, 0.5)
    def g(s):
        return np.exp(-pos**2 / (2 * s * s)) / (2 * np.pi * s * s)
    kern = np.zeros((len(ssds),), dtype=[("SSD", "O"), ("kernel1", "O"), ("kernel2", "O"), ("kernel3", "O")])
    for j, s in enumerate(ssds):
        kern[j] = (s, 2.0 * g(1.0), 0.3 * g(10.0), 0.1 * g(30.0) + 0.05 * g(5.0))
    machine = {"meta": {"SAD": 1000.0, "SCD": 500.0, "name": "fake"},
               "data": {"betas": np.array([0.3, 0.02, 0.006]), "m": 0.005, "kernelPos": pos, "kernel": kern,
                        "penumbraFWHMatIso": 4.0}}
    scipy.io.savemat(path, {"machine": machine})


def test_load_matrad_machine(tmp_path):
    p = tmp_path / "photons_fake.mat"
    _fake_matrad(p)
    m = load_matrad_machine(p)
    assert m.sad == 1000.0 and m.scd == 500.0 and m.betas == (0.3, 0.02, 0.006) and m.mu == 0.005
    assert m.kernel_ssds == (900.0, 1000.0)
    assert m.table_index(960) == 1
    # fitted kernels reproduce the integrals (2, 0.3, 0.15) and the tabulated shape
    comp, sig, w = m.gaussians(1000.0)
    for i, tot in enumerate((2.0, 0.3, 0.15)):
        assert abs(w[comp == i].sum() - tot) < 0.06 * tot
    # and exactly the mass matRad's 0.5 mm grid sees in the table (its linear interpolation adds ~2 % to the
    # narrow 1 mm Gaussian of kernel 1)
    from rtlab.dose.machine import encircled_mass
    pos = np.arange(0.0, 180.0, 0.5)
    tabs = (2.0 * np.exp(-pos**2 / 2) / (2 * np.pi), 0.3 * np.exp(-pos**2 / 200) / (200 * np.pi),
            0.1 * np.exp(-pos**2 / 1800) / (1800 * np.pi) + 0.05 * np.exp(-pos**2 / 50) / (50 * np.pi))
    for i, t in enumerate(tabs):
        assert w[comp == i].sum() == pytest.approx(encircled_mass(pos, t, [pos[-1]])[0], rel=2e-3)
    # the fitted kernel (without penumbra) of component 2 at r = 20 mm matches the table; the point
    # mass (matRad's r = 0 cell, now a Gaussian of the penumbra's width) adds nothing at 20 mm
    sp = 4.0 / 2.3548
    r = 20.0
    k2 = sum(c * np.exp(-r**2 / (2 * (s * s - sp * sp))) / (2 * np.pi * (s * s - sp * sp))
             for s, c in zip(sig[comp == 1], w[comp == 1]) if s > sp * (1 + 1e-9))
    ref = 0.3 * np.exp(-r**2 / 200) / (2 * np.pi * 100)
    assert abs(k2 - ref) < 0.1 * ref


def test_load_matrad_rejects_bad_files(tmp_path):
    bad = tmp_path / "x.mat"
    bad.write_text("not a mat file")
    with pytest.raises(ValueError, match="not a readable"):
        load_matrad_machine(bad)
    other = tmp_path / "y.mat"
    scipy.io.savemat(other, {"foo": 1})
    with pytest.raises(ValueError, match="machine"):
        load_matrad_machine(other)
    with pytest.raises(ValueError, match="does not exist"):
        load_matrad_machine(tmp_path / "missing.mat")


def test_machine_validation():
    with pytest.raises(ValueError, match="betas"):
        Machine("x", (0.1, 0.2), 0.005, 1000.0, [[[1.0], [1.0], [1.0]]], [[[1.0], [1.0], [1.0]]])
