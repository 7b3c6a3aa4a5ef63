"""Tests for rtlab.widgets.region_panel.RegionPanel (patent 000, section C), without a browser.

The panel is driven as a notebook or a user would drive it: by setting its widgets' values or
calling its public methods; every check compares against an independent computation with
rtlab.methods.region_model on the same arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ipywidgets")

from rtlab.methods import region_model as rm  # noqa: E402
from rtlab.widgets.region_panel import RegionPanel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 6-case stand-in data set (16^3 @ 6 mm) and two tiny models (levels 1.0 and 0.8)."""
    d = rm.generate_dataset(tmp_path_factory.mktemp("region_panel") / "ds", 6, seed=5, shape=16, spacing=6.0,
                            split=(2, 1, 3), progress=False)
    ds = rm.load_dataset(d)
    models = {}
    for lv in (1.0, 0.8):
        cfg = rm.TrainConfig(epochs=3, batch_size=2, lr=1e-2, base=4, depth=2, level=lv, threads=1)
        models[lv] = rm.train_region_model(rm.load_dataset(d, lv), cfg, progress=False)
    return d, ds, models


def _reference(d, models, index, level, threshold=0.5):
    """Independent masks for case ``index``: label rebuilt from the stored dose, prediction by the model."""
    c = rm.load_case_file(Path(d) / f"case_{index:04d}.npz")
    region = c["body"] & (c["dose"] >= level * c["d_ref"] - 1e-6)
    pred = models[level].predict(c["ct"], c["target"], c["organ"], c["grid"].spacing, threshold=threshold) & c["body"]
    return c, region, pred


def _viewer_masks(panel):
    return {s.name: s.mask for s in panel.viewer.structures}


def test_choosing_case_and_level_shows_the_right_contours(setup):
    d, ds, models = setup
    test = ds.split("test")
    p = RegionPanel(ds, models)
    assert [o[1] for o in p.case_select.options] == test
    assert p.result["index"] == test[0] and p.result["level"] == 1.0
    # the simulated user: pick another case and the 80 % level through the widgets themselves
    for index, level in ((test[1], 0.8), (test[2], 1.0), (test[2], 0.8)):
        p.case_select.value = index
        p.level_select.value = level
        c, region, pred = _reference(d, models, index, level)
        vm = _viewer_masks(p)
        assert set(vm) == {"target", "optimised region", "predicted region"}
        assert np.array_equal(vm["target"], c["target"])
        assert np.array_equal(vm["optimised region"], region)
        assert np.array_equal(vm["predicted region"], pred)
        assert np.array_equal(p.viewer.ct, c["ct"])
        # the slice shown is the target's largest axial cross-section, and its contours are drawn
        k = int(np.argmax(c["target"].sum(axis=(1, 2))))
        assert p.viewer.slice_index == k == p.result["slice_index"]
        drawn = {m["name"] for m in p.viewer.contours}
        expect = {n for n, m in vm.items() if m[k].any()}
        assert "target" in drawn and drawn == expect
        assert p.result["seed"] == ds.manifest["cases"][index]["seed"]
    # 80 % region is a superset of the 100 % region on the same case (monotone in the level)
    r80 = _viewer_masks(p)["optimised region"]
    p.show(level=1.0)
    r100 = _viewer_masks(p)["optimised region"]
    assert r80.sum() > r100.sum() and not (r100 & ~r80).any()


def test_score_readout_equals_region_model_metrics(setup):
    d, ds, models = setup
    p = RegionPanel(d, models, split="train")
    for index in ds.split("train"):
        for level in (1.0, 0.8):
            r = p.show(index, level)
            c, region, pred = _reference(d, models, index, level)
            assert r["dice"] == rm.dice(pred, region)
            assert r["dice_target"] == rm.dice(c["target"], region)
            assert r["n_predicted"] == int(pred.sum()) and r["n_region"] == int(region.sum())
            if pred.any():
                sd = rm.surface_distances(pred, region, c["grid"].spacing)
                assert r["asd_mm"] == sd["asd"] and r["hd95_mm"] == sd["hd95"]
            else:
                assert np.isnan(r["asd_mm"])
            assert f"{r['dice']:.3f}" in p.score.value
    # the threshold slider changes the predicted region as model.predict does
    index = ds.split("train")[0]
    p.show(index, 0.8)
    sizes = []
    for thr in (0.1, 0.5, 0.9):
        p.threshold_slider.value = thr
        _, region, pred = _reference(d, models, index, 0.8, threshold=thr)
        assert p.result["threshold"] == thr
        assert np.array_equal(_viewer_masks(p)["predicted region"], pred)
        assert p.result["dice"] == rm.dice(pred, region)
        sizes.append(p.result["n_predicted"])
    assert sizes[0] >= sizes[1] >= sizes[2]


def test_evaluate_in_background_matches_evaluate_model(setup):
    d, ds, models = setup
    p = RegionPanel(ds, models)
    p.show(level=0.8)
    th = p.evaluate()
    table = p.wait(timeout=60)
    assert not th.is_alive() and p.evaluate_button.disabled is False
    ref = rm.evaluate_model(models[0.8], rm.load_dataset(d, 0.8), "test")
    assert list(table["index"]) == list(ref["index"]) and set(table["level"]) == {0.8}
    np.testing.assert_allclose(table["dice"], ref["dice"])
    np.testing.assert_allclose(table["dice_target"], ref["dice_target"])
    # the single-case read-out agrees with the batch evaluation
    for _, row in table.iterrows():
        assert p.show(int(row["index"]))["dice"] == pytest.approx(row["dice"], abs=1e-9)
    text = "".join(o.get("text", "") for o in p.out.outputs)
    assert "level 80 %" in text and f"Dice {table['dice'].mean():.3f}" in text


def test_bad_inputs_raise_clear_errors(setup):
    d, ds, models = setup
    with pytest.raises(TypeError, match="models"):
        RegionPanel(ds, {})
    with pytest.raises(TypeError, match="RegionModel"):
        RegionPanel(ds, {1.0: "model"})
    with pytest.raises(ValueError, match="levels"):
        RegionPanel(ds, {-1.0: models[1.0]})
    with pytest.raises(ValueError, match="threshold"):
        RegionPanel(ds, models, threshold=1.5)
    with pytest.raises(ValueError, match="outside the data set"):
        RegionPanel(ds, models, indices=[0, 99])
    with pytest.raises(TypeError, match="data"):
        RegionPanel(42, models)
    with pytest.raises(ValueError, match="manifest"):
        RegionPanel(Path(d) / "nothing_here", models)
    p = RegionPanel(ds, models)
    with pytest.raises(ValueError, match="not offered"):
        p.show(index=ds.split("train")[0])
    with pytest.raises(ValueError, match="no model"):
        p.show(level=0.5)
    with pytest.raises(ValueError, match="no model"):
        p.evaluate(level=0.5)


@pytest.mark.skipif(not (ROOT / "datasets/region_model_small/model.pt").is_file(), reason="shipped model absent")
def test_shipped_model_readout_matches_evaluate_model():
    ds = rm.load_dataset(ROOT / "datasets/region_conformity_48")
    model = rm.RegionModel.load(ROOT / "datasets/region_model_small")
    test = ds.split("test")[:3]
    p = RegionPanel(ds, {1.0: model}, indices=test)
    ref = rm.evaluate_model(model, ds, indices=test)
    for _, row in ref.iterrows():
        r = p.show(int(row["index"]))
        assert r["dice"] == pytest.approx(row["dice"], abs=1e-9)
        assert r["asd_mm"] == pytest.approx(row["asd_mm"], abs=1e-9)
        assert r["dice_target"] == pytest.approx(row["dice_target"], abs=1e-12)
