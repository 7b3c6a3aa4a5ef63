"""matRad machine kernels: encircled mass, signed point-mass + Gaussian fit, loader, dose against a numpy emulation.

No download: the machine files are written here in matRad's layout with ``scipy.io.savemat``
(a spike at r = 0 like matRad's generic kernel 1, a signed kernel 2, a broad kernel 3).
"""

import numpy as np
import pytest
import scipy.io
from scipy.signal import fftconvolve
from scipy.special import ndtr

from rtlab.dose import load_matrad_machine
from rtlab.dose.kernels import influence_dense_numpy
from rtlab.dose.machine import (FWHM_TO_SIGMA, MATRAD_CONV_MM, encircled_mass, fit_radial_kernels,
                                gaussian_encircled_mass)

POS = np.arange(0.0, 180.0, 0.5)
H = MATRAD_CONV_MM


def g2(s, r=POS):
    return np.exp(-r**2 / (2 * s * s)) / (2 * np.pi * s * s)


def spiky_tables():
    """Three matRad-like kernels (1/mm^2): spike + Gaussians, signed, broad."""
    k1 = 0.30 * g2(2.0) + 0.08 * g2(15.0)
    k1[0] += 0.80 / H**2  # point mass 0.80 (matRad's generic kernel 1: 0.799)
    k2 = 0.05 * g2(4.0) + 0.06 * g2(20.0) - 0.12 * g2(70.0)
    k2[0] += -0.066 / H**2
    k3 = 0.25 * g2(25.0) + 0.35 * g2(60.0)
    k3[0] += 0.06 / H**2
    return k1, k2, k3


def matrad_grid_mass(values, R, h=H):
    """Reference: matRad's discrete kernel (linear interpolation sampled on an h grid, x h^2) summed inside R."""
    n = int(np.ceil(POS[-1] / h))
    g = np.arange(-n, n) * h
    X, Z = np.meshgrid(g, g)
    r = np.hypot(X, Z)
    K = h * h * np.interp(r, POS, values, right=0.0)
    return np.array([K[r <= Ri].sum() for Ri in R])


@pytest.mark.parametrize("s", [3.0, 10.0, 40.0])
def test_encircled_mass_of_a_gaussian_table(s):
    R = np.array([1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 179.0])
    got = encircled_mass(POS, g2(s), R)
    exact = gaussian_encircled_mass([s], R)[:, 0]
    # the table's linear interpolation (what matRad samples) overestimates a Gaussian's convex tail
    # by ~ h^2/8 k'': 0.2 % of the mass for s = 3 mm
    assert np.abs(got - exact).max() < 7e-3 / s


def test_encircled_mass_of_a_spike_is_a_point_mass():
    k = np.zeros_like(POS)
    k[0] = 3.2  # matRad's generic kernel 1 at r = 0
    R = np.array([0.1, 0.3, 0.5, 10.0, 170.0])
    got = encircled_mass(POS, k, R)
    np.testing.assert_allclose(got, [0.0, 0.8, 0.8, 0.8, 0.8], atol=1e-12)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_encircled_mass_matches_matrads_discrete_grid(i):
    k = spiky_tables()[i]
    R = np.array([2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 170.0])
    ref = matrad_grid_mass(k, R)
    got = encircled_mass(POS, k, R)
    assert np.abs(got - ref)[1:].max() < 1e-3
    assert abs(got[0] - ref[0]) < 3e-3  # a few grid shells inside 2 mm vs a circle


def test_fit_keeps_point_mass_sign_and_encircled_mass():
    tabs = np.array(spiky_tables())
    for i in range(3):
        s, point, w, err = fit_radial_kernels(POS, tabs[i][None], n_gauss=4)
        assert point[0] == pytest.approx(H**2 * tabs[i][0], rel=1e-12)
        assert np.all(np.diff(s) > 0) and np.all(s[1:] / s[:-1] >= 1.5 - 1e-9)
        R = np.array([1.0, 3.0, 10.0, 30.0, 60.0, 120.0, 179.5])
        fit = point[0] + gaussian_encircled_mass(s, R) @ w[0]
        target = encircled_mass(POS, tabs[i], R)
        assert np.abs(fit - target).max() < 3e-3, (i, fit - target)
        assert err[0] < 3e-3
    # kernel 2 keeps its negative origin mass and its negative far lobe
    s, point, w, _ = fit_radial_kernels(POS, tabs[1][None])
    assert point[0] < 0 and w[0][np.argmax(s)] < 0


def write_machine(path, tables_by_ssd, fwhm=5.0):
    kern = np.zeros((len(tables_by_ssd),), dtype=[("SSD", "O"), ("kernel1", "O"), ("kernel2", "O"), ("kernel3", "O")])
    for j, (ssd, (k1, k2, k3)) in enumerate(tables_by_ssd.items()):
        kern[j] = (float(ssd), k1, k2, k3)
    machine = {"meta": {"SAD": 1000.0, "SCD": 500.0, "name": "spiky"},
               "data": {"betas": np.array([0.3252, 0.016, 0.0051]), "m": 0.005066, "kernelPos": POS, "kernel": kern,
                        "penumbraFWHMatIso": fwhm}}
    scipy.io.savemat(path, {"machine": machine})


@pytest.fixture(scope="module")
def spiky_machine(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "photons_spiky.mat"
    k1, k2, k3 = spiky_tables()
    write_machine(p, {900: (1.02 * k1, k2, 0.95 * k3), 1000: (k1, k2, k3)})
    return load_matrad_machine(p)


def test_loader_kernel_integrals_equal_the_tables(spiky_machine):
    m = spiky_machine
    assert m.kernel_ssds == (900.0, 1000.0)
    tabs = spiky_tables()
    for ssd, scale in ((1000.0, (1.0, 1.0, 1.0)), (900.0, (1.02, 1.0, 0.95))):
        comp, sig, w = m.gaussians(ssd)
        for i in range(3):
            total = float(encircled_mass(POS, scale[i] * tabs[i], [POS[-1]])[0])
            # Gaussians continue past the table's end: compare the mass inside it
            s0 = np.sqrt(np.maximum(sig[comp == i] ** 2 - (5 * FWHM_TO_SIGMA) ** 2, 1e-12))
            inside = float((w[comp == i] * gaussian_encircled_mass(s0, [POS[-1]])[0]).sum())
            assert inside == pytest.approx(total, abs=3e-3), (ssd, i)
    # the point mass becomes a Gaussian of the penumbra's width carrying h^2 k(0)
    comp, sig, w = m.gaussians(1000.0)
    sp = 5 * FWHM_TO_SIGMA
    assert w[(comp == 0) & np.isclose(sig, sp)].sum() == pytest.approx(H**2 * tabs[0][0], rel=1e-12)
    assert w[(comp == 1) & np.isclose(sig, sp)].sum() == pytest.approx(H**2 * tabs[1][0], rel=1e-12)
    assert m.meta["kernel_fit_max_mass_error"].max() < 3e-3


def matrad_like_bixel_dose(k_tables, u, depth_factors, bixel=5.0, fwhm=5.0, h=H):
    """numpy emulation of matRad's bixel dose at lateral positions ``u`` (v = 0), isocentre plane.

    Fluence: a bixel square on an h grid convolved with the penumbra Gaussian (x h^2);
    kernels: tabulated values sampled on the h grid (x h^2); dose = sum_i D_i conv_i(u).
    """
    n = int(round(bixel / h))
    f = np.ones((n, n))
    sg = fwhm * FWHM_TO_SIGMA
    m = int(np.ceil(5 * sg / h))
    gg = np.arange(-m, m + 1) * h
    G = h * h * np.exp(-(gg[:, None] ** 2 + gg[None] ** 2) / (2 * sg * sg)) / (2 * np.pi * sg * sg)
    F = fftconvolve(f, G)  # centred: odd n + 2m -> centre at ((n - 1)/2 + m)
    L = 60
    kg = np.arange(-L, L + 1) * h
    R = np.hypot(kg[:, None], kg[None])
    out = np.zeros_like(u)
    for i, k in enumerate(k_tables):
        K = h * h * np.interp(R, POS, k, right=0.0)
        C = fftconvolve(F, K)
        c0 = (n - 1) / 2 + m + L  # index of the bixel centre
        x = c0 + u / h
        out += depth_factors[i] * np.interp(x, np.arange(C.shape[1]), C[int(round(c0))])
    return out


def test_bixel_dose_matches_a_numpy_emulation_of_matrad(spiky_machine):
    m = spiky_machine
    tabs = spiky_tables()
    u = np.arange(-20.0, 20.5, 0.5)
    w = np.array([[0.9, 0.3, 0.1]])  # arbitrary depth factors (SAD/t)^2 D_i(d)
    ref = matrad_like_bixel_dose(tabs, u, w[0])
    comp, sig, wt = m.gaussians(1000.0)
    got = influence_dense_numpy(u, np.zeros_like(u), np.repeat(w, len(u), 0), np.array([[0.0, 0.0]]), 5.0, comp, sig,
                                wt, 1e9)[:, 0]
    assert np.abs(got - ref).max() < 0.01 * ref.max(), np.abs(got - ref).max() / ref.max()
    assert got.max() == pytest.approx(ref.max(), rel=0.01)


def test_penumbra_fold_and_n_gauss(tmp_path):
    p = tmp_path / "photons_one.mat"
    write_machine(p, {1000: spiky_tables()}, fwhm=0.0)
    m = load_matrad_machine(p, n_gauss=2)
    comp, sig, w = m.gaussians(1000.0)
    assert np.bincount(comp).tolist() == [3, 3, 3]  # point mass + 2 Gaussians each
    assert sig.min() == pytest.approx(0.05)  # a bare point mass is a 0.05 mm Gaussian
    assert not np.any(np.isnan(ndtr(1.0 / sig)))
