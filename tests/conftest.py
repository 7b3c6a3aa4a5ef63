"""Fixtures shared by rtlab's tests (``tests/browser/conftest.py`` adds the browser ones).

* ``case`` - a phantom built once per test module with :func:`rtlab.phantoms.get_phantom`:
  ``tg119_cshape_easy`` at 5 mm unless the module sets ``CASE``, a dict of ``get_phantom``
  arguments (``name`` and keywords) that override :data:`DEFAULT_CASE`, e.g.
  ``CASE = {"name": "horseshoe", "spacing": 6.0}``.
* ``fd_grad`` - :func:`central_difference`, the finite-difference gradient the gradient
  checks compare against.
"""

from __future__ import annotations

import numpy as np
import pytest

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
