"""BeamAnglePanel: driven from Python, checked against direct beam_angles calls."""

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from rtlab.methods import beam_angles as ba
from rtlab.phantoms import get_phantom
from rtlab.widgets import BeamAnglePanel


@pytest.fixture(scope="module")
def colony():
    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    im = ba.candidate_influence(case, np.arange(9) * 40.0, progress=False)
    return case, im


def test_run_in_background_equals_select_beam_angles(colony):
    case, im = colony
    panel = BeamAnglePanel(case, im=im, n_beams=3, max_iter=8)
    panel.n_ants.value, panel.n_iter.value, panel.seed.value = 3, 2, 7
    seen = []
    panel.on("iteration", seen.append)
    panel.run_button.click()
    res = panel.wait(timeout=300)
    ref = ba.select_beam_angles(case, 3, im=im, n_ants=3, n_iter=2, seed=7, max_iter=8, progress=False)
    assert list(res.angles) == list(ref.angles) and res.cost == pytest.approx(ref.cost)
    assert len(seen) == 2 and "iteration 1" in "".join(o["text"] for o in panel.out.outputs)
    assert panel.ranking.iloc[0]["cost"] == pytest.approx(ba.rescore(ref, ba.PAPER_WEIGHTS).iloc[0]["cost"])
    assert panel.image.value[:4] == b"\x89PNG" and not panel.run_button.disabled


def test_weight_slider_rescores_without_reoptimising(colony):
    case, im = colony
    res = ba.select_beam_angles(case, 3, im=im, n_ants=3, n_iter=2, seed=1, max_iter=8, progress=False)
    panel = BeamAnglePanel(case, im=im, result=res)
    n_eval = len(res.evaluations)
    panel.weights[2].value = 0.1                 # a user lowers gamma
    w = (0.2, 0.2, 0.1, 0.1)
    ref = ba.rescore(res, w)
    assert list(panel.ranking["angles"]) == list(ref["angles"])
    np.testing.assert_allclose(panel.ranking["cost"], ref["cost"])
    assert len(res.evaluations) == n_eval        # nothing re-optimised


def test_stop_keeps_the_best_so_far(colony):
    case, im = colony
    panel = BeamAnglePanel(case, im=im, n_beams=3, max_iter=8)
    panel.n_ants.value, panel.n_iter.value = 2, 10
    panel.on("iteration", lambda rec: panel.stop())      # the user presses Stop during iteration 0
    panel.run()
    res = panel.wait(timeout=300)
    assert len(res.history) < 10 and len(res.angles) == 3
    assert "stopped" in panel.status.value


def test_errors(colony):
    case, im = colony
    panel = BeamAnglePanel(case, im=im)
    with pytest.raises(RuntimeError, match="run"):
        panel.reweigh()
    with pytest.raises(ValueError, match="event"):
        panel.on("nope", print)
    for s in panel.weights:
        s.value = 0.0
    with pytest.raises(ValueError, match="weight"):
        panel.run()
