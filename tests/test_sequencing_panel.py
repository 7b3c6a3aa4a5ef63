"""SequencingPanel: driven from Python as a user would, checked against direct library calls."""

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from rtlab.dose import build_influence, mu_per_unit_fluence
from rtlab.methods import sequencing as sq
from rtlab.methods import smoothing as sm
from rtlab.methods.beam_angles import default_objective, optimise_beams
from rtlab.methods.deliverable import sequence_plan
from rtlab.phantoms import get_phantom
from rtlab.widgets import SequencingPanel


@pytest.fixture(scope="module")
def plan():
    case = get_phantom("sphere", spacing=6.0, radius=15.0, oar_radius=8.0)
    im = build_influence(case, [0.0, 120.0, 240.0], progress=False, cutoff_mm=20.0)
    x, _ = optimise_beams(im, default_objective(case, im, "quadratic"), max_iter=30)
    return case, im, x


def test_slider_smooths_exactly_like_the_library(plan):
    case, im, x = plan
    panel = SequencingPanel(case, im, x, fractions=25)
    assert panel.metrics["strength"] == 0.0
    np.testing.assert_array_equal(panel.x_smoothed, x)
    panel.strength.value = 0.3                      # a user moves the slider
    ref = sm.apply_per_beam(im, lambda m: sm.convolve_along_leaves(m, (0.3, 0.4, 0.3)), x)
    np.testing.assert_allclose(panel.x_smoothed, ref)
    k = mu_per_unit_fluence(im.machine) / 25
    maps = [m * k for m in sm.split_maps(sm.weights_to_maps(im, ref), sm.map_shapes(im))]
    assert panel.metrics["tnmu"] == pytest.approx(sq.tnmu(maps))
    assert panel.metrics["eta"] == pytest.approx(np.mean([sm.smoothness_eta(m) for m in maps]))
    assert "s=0.30" in panel.out.outputs[-1]["text"]
    assert panel.image.value[:4] == b"\x89PNG"


def test_smoothing_lowers_eta_and_tnmu(plan):
    case, im, x = plan
    panel = SequencingPanel(case, im, x)
    rough = dict(panel.metrics)
    smooth = panel.smooth(0.4)
    assert smooth["eta"] < rough["eta"] and smooth["tnmu"] < rough["tnmu"]


def test_sequence_button_runs_in_background_and_matches_sequence_plan(plan):
    case, im, x = plan
    panel = SequencingPanel(case, im, x, fractions=25)
    seen = []
    panel.on("sequenced", seen.append)
    panel.method.value = "step"
    panel.n_levels.value = 5
    panel.sequence_button.click()                   # returns at once; work runs in a thread
    res = panel.wait(timeout=120)
    ref = sequence_plan(im, x, "generic_5mm_60", "step", fractions=25, n_levels=5)
    assert seen == [res]
    assert res.mu_total == pytest.approx(ref.mu_total)
    assert res.n_segments == ref.n_segments
    np.testing.assert_allclose(res.dose, ref.dose)
    assert "Paddick CI" in panel.table.value and "segments" in panel.out.outputs[-1]["text"]
    assert not panel.sequence_button.disabled


def test_bad_input_and_errors_are_clear(plan):
    case, im, x = plan
    with pytest.raises(ValueError, match="beamlets"):
        SequencingPanel(case, im, x[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        SequencingPanel(case, im, -x)
    with pytest.raises(ValueError, match="MLC|mlc"):
        SequencingPanel(case, im, x, mlc="no_such_mlc")
    panel = SequencingPanel(case, im, x)
    with pytest.raises(ValueError, match="strength"):
        panel.smooth(0.6)
    with pytest.raises(ValueError, match="event"):
        panel.on("nope", print)
