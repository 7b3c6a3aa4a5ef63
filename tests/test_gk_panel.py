"""GKPanel: the panel is a thin layer over pointkernel / isocentres (no browser)."""

import numpy as np
import pytest

from rtlab.dose import pointkernel as pk
from rtlab.geometry import Grid
from rtlab.methods import isocentres as iso
from rtlab.widgets.gk_panel import BLOCKED, GKPanel


@pytest.fixture(scope="module")
def setup():
    g = Grid((20, 20, 20), (1.5, 1.5, 1.5), (-14.25, -14.25, -14.25))
    Z, Y, X = g.mesh()
    m = (Z / 6.0) ** 2 + (Y / 5.0) ** 2 + (X / 7.0) ** 2 <= 1.0
    shots = np.array([[0.0, 0.0, -2.5], [0.0, 0.5, 3.0]])
    times = np.zeros((2, 8, 3))
    times[:, :, 1] = 1.5
    return g, m, shots, times


@pytest.fixture
def panel(setup):
    g, m, shots, times = setup
    return GKPanel(g, m, 20.0, shots=shots, times=times, draw=False)


def test_moving_a_shot_slider_gives_the_direct_pointkernel_dose(panel, setup):
    g, m, shots, times = setup
    np.testing.assert_array_equal(panel.dose, pk.dose(g, shots, times))
    panel.shot_select.value = 1
    panel.x_slider.value = 4.25
    panel.z_slider.value = -1.0
    want = shots.copy()
    want[1] = [-1.0, 0.5, 4.25]
    np.testing.assert_array_equal(panel.shots, want)
    np.testing.assert_array_equal(panel.dose, pk.dose(g, want, times))
    assert not np.array_equal(panel.dose, pk.dose(g, shots, times))
    # the axial slice of the viewer follows the shot
    assert panel.viewer.slice_index == int(np.rint(g.world_to_index(want[1])[0]))


def test_arrows_are_the_analytic_loss_gradient(panel, setup):
    g, m, shots, times = setup
    panel.move_shot(0, (1.0, -1.0, -3.0))
    s = panel.shots
    L, gp, _ = iso.plan_loss(panel.problem, s, times)
    np.testing.assert_allclose(panel.gradient, gp, rtol=1e-12, atol=0)
    np.testing.assert_allclose(panel.arrow_vectors(), -gp, rtol=1e-12, atol=0)
    assert panel.loss == pytest.approx(L)
    # and the gradient is the derivative of the loss (central difference of eq. 8)
    h = 1e-3
    sp, sm = s.copy(), s.copy()
    sp[0, 2] += h
    sm[0, 2] -= h
    fd = (iso.plan_loss(panel.problem, sp, times)[0] - iso.plan_loss(panel.problem, sm, times)[0]) / (2 * h)
    assert panel.gradient[0, 2] == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_collimator_and_time_edits(panel, setup):
    g, m, shots, times = setup
    panel.shot_select.value = 0
    assert panel.sector_collimators() == [8] * 8
    panel.sector_select[3].value = 4
    assert panel.times[0, 3].tolist() == [1.5, 0.0, 0.0]
    panel.sector_select[5].value = BLOCKED
    assert panel.times[0, 5].sum() == 0.0
    panel.time_slider.value = 3.0
    assert panel.shot_duration(0) == pytest.approx(3.0)
    assert panel.times[0, 3, 0] == pytest.approx(3.0) and panel.times[0, 5].sum() == 0.0
    np.testing.assert_array_equal(panel.times[1], times[1])  # the other shot is untouched
    np.testing.assert_array_equal(panel.dose, pk.dose(g, panel.shots, panel.times))
    mt = iso.evaluate_plan(iso.GKPlan(panel.shots, panel.times), g, m, 20.0)
    for k in ("coverage", "selectivity", "ci_paddick", "gi", "beam_on_min"):
        assert panel.metrics[k] == pytest.approx(mt[k], nan_ok=True)
    assert panel.metrics["beam_on_min"] == pytest.approx(3.0 + 1.5)
    assert "Paddick CI" in panel.readout.value


def test_optimise_in_background_lowers_the_loss(setup):
    g, m, shots, times = setup
    p = GKPanel(g, m, 20.0, shots=shots, times=times, draw=True)
    assert p.arrows.value[:8] == b"\x89PNG\r\n\x1a\n"
    L0 = p.loss
    p.optimise(n_iter=15, normalise=False)
    assert p.wait(timeout=120)
    assert p.loss < L0
    assert min(p.history) == pytest.approx(p.loss)
    assert "done" in "".join(o["text"] for o in p.out.outputs)
    np.testing.assert_array_equal(p.dose, pk.dose(g, p.shots, p.times))
    p.optimise(n_iter=5)  # normalised to the coverage goal
    p.wait()
    assert p.metrics["coverage"] >= 0.96 - 1e-9


def test_default_plan_and_bad_input(setup):
    g, m, shots, times = setup
    p = GKPanel(g, m, 20.0, draw=False)
    assert p.metrics["coverage"] >= 0.96 - 1e-9 and p.shots.shape[0] >= 1
    with pytest.raises(ValueError, match="times"):
        GKPanel(g, m, 20.0, shots=shots)
    with pytest.raises(ValueError, match="empty"):
        GKPanel(g, np.zeros(g.shape, bool), 20.0)
    with pytest.raises(ValueError, match="rx"):
        GKPanel(g, m, -1.0, shots=shots, times=times)
    with pytest.raises(ValueError, match="times"):
        GKPanel(g, m, 20.0, shots=shots, times=times[:, :4])
    with pytest.raises(ValueError, match="shot index"):
        p.move_shot(99, (0, 0, 0))
    with pytest.raises(ValueError, match="position"):
        p.move_shot(0, (0, np.nan, 0))
    with pytest.raises(ValueError, match="collimator"):
        p.set_collimator(0, 5)
    with pytest.raises(ValueError, match="minutes"):
        p.set_time(-1.0)
