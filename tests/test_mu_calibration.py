"""MU calibration at the 10 x 10 cm reference with the final (commissioned, split) engine (issue 17, item 4).

The reference condition of :mod:`rtlab.dose.mu`: 1 MU = 0.01 Gy at d_max on the central axis of a
10 x 10 cm field at SSD 1000 mm in water. :func:`rtlab.dose.reference_dose` computes it with the
fluence-map engine; here three independent routes must agree with it:

* the beamlet engine the planner uses (:func:`rtlab.dose.build_influence`: narrow Gaussians in the
  sparse matrix, broad ones on node grids), 25 x 25 bixels of 4 mm whose edges are exactly
  +-50 mm, all weights 1: ``mu_per_unit_fluence`` MU must give 0.01 Gy per MU at d_max;
* the closed-form water curves of :func:`rtlab.dose.commission.water_curves` (no voxels, no
  ray tracing): the same dose at d_max;
* the machine normalisation: ``norm`` was chosen so that unit fluence gives 1 Gy at d_max, so
  ``mu_per_unit_fluence`` is 100 MU within the discretisation.
"""

import numpy as np
import pytest

from rtlab.core.beams import Beam, BixelGrid
from rtlab.dose import build_influence, generic_6mv, mu_per_unit_fluence, reference_dose
from rtlab.dose._testcases import water_box
from rtlab.dose.commission import water_curves
from rtlab.dose.mu import GY_PER_MU_REF, _shift


@pytest.mark.parametrize("machine", [generic_6mv(), generic_6mv(1)], ids=["generic_6mv", "generic_6mv_v1"])
def test_mu_calibration_with_the_split_beamlet_engine(machine):
    dref = reference_dose(machine)
    k = mu_per_unit_fluence(machine)
    assert k == pytest.approx(dref / GY_PER_MU_REF)
    assert k == pytest.approx(100.0, rel=0.02)
    # water from y = 0 (surface at the isocentre plane, SSD 1000 mm) to 300 mm, thin around the axis
    case = _shift(water_box(shape=(3, 341, 3), spacing=(1.0, 1.0, 1.0), surface_y=0.0))
    bx = BixelGrid(4.0, -12, -12, np.ones((25, 25), bool))  # edges at -50 and +50 mm
    beam = Beam(0.0, 0.0, (0.0, 0.0, 0.0), 4.0, machine.sad, bx)
    im = build_influence(case, [beam], machine=machine, voxels="all", progress=False, gpu=False)
    if machine.name == generic_6mv().name:
        assert im.broad is not None  # the commissioned machine's scatter takes the node path
    dose = im.dose(np.ones(im.shape[1]), on="ct")[1, :, 1]
    y = case.grid.axes()[1]
    d_beamlet = float(dose[y >= 0].max())
    wc = water_curves(machine, 100.0)
    d_closed = float(wc.dose.max())
    # 1 unit weight = k MU -> the dose per MU at d_max is the reference 0.01 Gy
    assert d_beamlet / k == pytest.approx(GY_PER_MU_REF, rel=0.01)
    assert d_closed / k == pytest.approx(GY_PER_MU_REF, rel=0.01)
    assert d_beamlet == pytest.approx(d_closed, rel=0.01)
    assert y[y >= 0][np.argmax(dose[y >= 0])] == pytest.approx(wc.dmax_mm, abs=1.5)
