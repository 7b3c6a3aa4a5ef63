"""Fixtures shared by rtlab's tests (``tests/browser/conftest.py`` adds the browser ones).

* ``case`` - a phantom built once per test module with :func:`rtlab.phantoms.get_phantom`:
  ``tg119_cshape_easy`` at 5 mm unless the module sets ``CASE``, a dict of ``get_phantom``
  arguments (``name`` and keywords) that override :data:`DEFAULT_CASE`, e.g.
  ``CASE = {"name": "horseshoe", "spacing": 6.0}``.
* ``fd_grad`` - :func:`central_difference`, the finite-difference gradient the gradient
  checks compare against.
* ``matrad_machine_file`` - a small photon machine written in matRad's ``.mat`` layout
  (:func:`write_matrad_machine`; no download), for the ``--machine-file`` paths.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from rtlab.phantoms import get_phantom

#: The phantom of the ``case`` fixture when a test module does not set ``CASE``.
DEFAULT_CASE = {"name": "tg119_cshape_easy", "spacing": 5.0}


@pytest.fixture(scope="module")
def case(request):
    """The test module's phantom (``CASE`` over :data:`DEFAULT_CASE`), built once per module."""
    spec = dict(DEFAULT_CASE, **getattr(request.module, "CASE", {}))
    name = spec.pop("name")
    return get_phantom(name, **spec)


def central_difference(fun, x, h=1e-6):
    """Central-difference gradient of the scalar function ``fun`` at ``x`` (step ``h``, one entry at a time)."""
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        g.flat[i] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


@pytest.fixture
def fd_grad():
    """:func:`central_difference` (``fd_grad(fun, x, h=1e-6)``)."""
    return central_difference


def write_matrad_machine(path, ssds=(900.0, 1000.0), name="tiny", betas=(0.3252, 0.016, 0.0051), mu=0.005066,
                         fwhm=5.0):
    """Write a matRad photon machine (``machine.meta`` / ``machine.data``) with three radial kernels.

    Kernel 1 has matRad's spike at r = 0 (a point mass of 0.8) plus a 2 mm and a 15 mm Gaussian;
    kernel 2 is signed; kernel 3 is broad (25 and 60 mm). Tables on 0-180 mm in 0.5 mm steps.
    """
    pos = np.arange(0.0, 180.0, 0.5)

    def g(s):
        return np.exp(-pos**2 / (2 * s * s)) / (2 * np.pi * s * s)

    k1 = 0.30 * g(2.0) + 0.08 * g(15.0)
    k1[0] += 0.80 / 0.25
    k2 = 0.05 * g(4.0) + 0.06 * g(20.0) - 0.12 * g(70.0)
    k3 = 0.25 * g(25.0) + 0.35 * g(60.0)
    kern = np.zeros((len(ssds),), dtype=[("SSD", "O"), ("kernel1", "O"), ("kernel2", "O"), ("kernel3", "O")])
    for j, s in enumerate(ssds):
        kern[j] = (float(s), k1, k2, k3)
    machine = {"meta": {"SAD": 1000.0, "SCD": 500.0, "name": name},
               "data": {"betas": np.asarray(betas, float), "m": float(mu), "kernelPos": pos, "kernel": kern,
                        "penumbraFWHMatIso": float(fwhm)}}
    scipy.io.savemat(path, {"machine": machine})
    return path


@pytest.fixture(scope="session")
def matrad_machine_file(tmp_path_factory):
    """Path of a small matRad photon machine file (:func:`write_matrad_machine`)."""
    return write_matrad_machine(tmp_path_factory.mktemp("machines") / "photons_tiny.mat")
