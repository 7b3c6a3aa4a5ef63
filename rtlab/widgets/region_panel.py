"""RegionPanel: browse the dose-region model's predictions on held-out cases (patent 000, section C).

A small live panel over :mod:`rtlab.methods.region_model`: pick a case of a data-set split and a
reference level (100 % = the prescription isodose, 80 % = the patent's low-dose region, para.
125) and a probability threshold; the panel shows the CT slice through the target with three
contours -- the target, the optimised dose region (the historical plan's
``body & dose >= level * d_ref``) and the region the model predicts -- and reads out the Dice
and surface distances of the prediction and of the trivial "region = target" guess against the
optimised region. *Evaluate split* scores every offered case in a background thread.

The panel holds no algorithm: data come from :func:`~rtlab.methods.region_model.load_dataset`,
predictions from :meth:`~rtlab.methods.region_model.RegionModel.predict_proba`, scores from
:func:`~rtlab.methods.region_model.dice`, :func:`~rtlab.methods.region_model.surface_distances`
and :func:`~rtlab.methods.region_model.evaluate_model`, and the drawing from :class:`SliceViewer`.
See ``docs/panels/region_panel.md``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from ..core.geometry import Structure
from ..methods import region_model as rm
from .panel import Panel, ipywidgets
from .slice_viewer import SliceViewer, rgb_hex

__all__ = ["RegionPanel", "COLORS"]

#: Contour colours (RGB 0-1) of the three masks the panel draws.
COLORS = {"target": (0.90, 0.10, 0.10), "optimised region": (0.20, 0.80, 0.20),
          "predicted region": (0.10, 0.60, 0.95)}


def _level_label(level: float) -> str:
    return f"{100.0 * level:g} %"


class RegionPanel(Panel):
    """Case / level / threshold chooser, slice view and score read-out for dose-region predictions.

    Its background job (:meth:`evaluate`) produces :attr:`table`, which :meth:`wait` returns
    (``RESULT = "table"``); :attr:`result` is the read-out of the shown case.

    Parameters
    ----------
    data : path-like or RegionDataset
        A data set written by :func:`rtlab.methods.region_model.generate_dataset`. For each
        level in ``models`` the panel uses ``data`` itself when its ``level`` matches, else
        loads the same directory again at that level
        (:func:`~rtlab.methods.region_model.load_dataset`).
    models : mapping level -> RegionModel
        Reference level as a fraction of ``d_ref`` (e.g. ``{1.0: m100, 0.8: m80}``) to the
        model trained at that level.
    split : {'test', 'val', 'train'}
        Which cases the drop-down offers (default: the held-out test cases).
    indices : sequence of int, optional
        Case indices to offer instead of ``split``.
    threshold : float
        Initial probability threshold of the predicted region, in (0, 1) (default 0.5).
    display_size : int
        Longer side of the slice view in CSS pixels.

    Attributes
    ----------
    case_select : ipywidgets.Dropdown
        Value = case index in the data set.
    level_select : ipywidgets.ToggleButtons
        Value = reference level (fraction of ``d_ref``).
    threshold_slider : ipywidgets.FloatSlider
        Probability threshold of the predicted region.
    evaluate_button : ipywidgets.Button
        Runs :meth:`evaluate` in the background.
    viewer : SliceViewer
        The slice view (axial slice through the target's largest cross-section; its slider
        moves through the volume). The same widget is reused across cases on one grid.
    score : ipywidgets.HTML
        The read-out of :attr:`result`.
    out : ipywidgets.Output
        Live text of :meth:`evaluate`.
    status : ipywidgets.HTML
        What the last evaluation did (or why it failed).
    result : dict
        The shown case (what :meth:`show` returns): ``index``, ``seed``, ``level``, ``threshold``, ``slice_index``,
        ``dice`` (prediction vs optimised region, whole volume), ``asd_mm``, ``hd95_mm``
        (surface distances, NaN when a mask is empty), ``dice_target`` (target vs optimised
        region), ``n_region``, ``n_predicted`` (voxels).
    table : pandas.DataFrame or None
        Per-case scores of the last :meth:`evaluate` (``evaluate_model`` columns plus ``level``);
        what :meth:`wait` returns.
    """

    RESULT = "table"

    def __init__(self, data, models: Mapping[float, object], split: str = "test", indices=None,
                 threshold: float = 0.5, display_size: int = 384):
        self._init_panel(out_height=None)
        if not isinstance(models, Mapping) or not models:
            raise TypeError("models must be a non-empty dict level -> RegionModel, e.g. {1.0: model_100, 0.8: model_80}")
        for lv, m in models.items():
            if isinstance(lv, bool) or not (isinstance(lv, (int, float, np.integer, np.floating))
                                            and np.isfinite(lv) and lv > 0):
                raise ValueError(f"model levels must be positive fractions of d_ref (1.0 = 100 %), got {lv!r}")
            if not isinstance(m, rm.RegionModel):
                raise TypeError(f"models[{lv!r}] must be an rtlab RegionModel, got {type(m).__name__}")
        if not (isinstance(threshold, (int, float, np.floating)) and 0.0 < threshold < 1.0):
            raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
        if isinstance(data, rm.RegionDataset):
            base = data
        elif isinstance(data, (str, Path)):
            base = rm.load_dataset(Path(data))
        else:
            raise TypeError(f"data must be a RegionDataset or a data-set directory, got {type(data).__name__}")
        self._models = {float(lv): m for lv, m in models.items()}
        self._data = {lv: base if base.level == lv else rm.load_dataset(base.path, lv) for lv in self._models}
        idx = base.split(split) if indices is None else [int(i) for i in indices]
        if not idx:
            raise ValueError(f"no cases to show: split {split!r} is empty and no indices were given")
        bad = [i for i in idx if not 0 <= i < len(base)]
        if bad:
            raise ValueError(f"indices {bad} are outside the data set (0..{len(base) - 1}); pass valid case indices")
        self.indices = list(idx)
        self._display_size = int(display_size)
        self._quiet = False
        self._proba: dict = {}
        self._lock = threading.Lock()
        self.result: dict = {}
        self.table = None
        recs = base.manifest["cases"]
        self.case_select = ipywidgets.Dropdown(
            options=[(f"case {i} (seed {recs[i]['seed']}, {recs[i]['params']['n_beams']} beams)", i) for i in idx],
            value=idx[0], description="case")
        levels = sorted(self._models, reverse=True)
        self.level_select = ipywidgets.ToggleButtons(
            options=[(_level_label(lv), lv) for lv in levels], value=levels[0], description="level")
        self.threshold_slider = ipywidgets.FloatSlider(value=float(threshold), min=0.05, max=0.95, step=0.05,
                                                       description="threshold", continuous_update=False)
        self.evaluate_button = ipywidgets.Button(description="Evaluate split", icon="table",
                                                 tooltip="Dice / ASD / HD95 of every offered case at this level")
        self.score = ipywidgets.HTML()
        self.viewer: SliceViewer | None = None
        super().__init__()
        self._controls = ipywidgets.HBox([self.case_select, self.level_select, self.threshold_slider,
                                          self.evaluate_button])
        self._show()
        for w in (self.case_select, self.level_select, self.threshold_slider):
            w.observe(self._on_change, names="value")
        self.evaluate_button.on_click(lambda _b: self.evaluate())

    # ------------------------------------------------------------------ data
    @property
    def levels(self) -> list[float]:
        """Reference levels (fractions of ``d_ref``) the panel has models for, highest first."""
        return sorted(self._models, reverse=True)

    def dataset(self, level: float):
        """The :class:`~rtlab.methods.region_model.RegionDataset` loaded at ``level``."""
        return self._data[self._check_level(level)]

    def _check_level(self, level) -> float:
        lv = float(level)
        if lv not in self._models:
            raise ValueError(f"level {level!r} has no model; choose one of {self.levels}")
        return lv

    def probability(self, index: int, level: float) -> np.ndarray:
        """Predicted probability ``(z, y, x)`` of case ``index`` at ``level``, zero outside the body (cached)."""
        lv = self._check_level(level)
        key = (int(index), lv)
        with self._lock:
            p = self._proba.get(key)
        if p is None:
            c = self._data[lv].cases[int(index)]
            p = self._models[lv].predict_proba(c["ct"], c["target"], c["organ"], c["grid"].spacing) * c["body"]
            with self._lock:
                self._proba[key] = p
        return p

    def masks(self, index: int, level: float, threshold: float | None = None) -> dict:
        """CT, grid and the three masks of case ``index`` at ``level``.

        Returns ``ct`` (HU), ``grid``, ``target``, ``region`` (optimised dose region at
        ``level``), ``predicted`` (``probability >= threshold`` inside the body; default the
        slider's threshold) and ``probability``.
        """
        lv = self._check_level(level)
        thr = float(self.threshold_slider.value if threshold is None else threshold)
        c = self._data[lv].cases[int(index)]
        p = self.probability(index, lv)
        return {"ct": c["ct"], "grid": c["grid"], "target": c["target"], "region": c["region"],
                "predicted": (p >= thr) & c["body"], "probability": p}

    # ------------------------------------------------------------------ user actions
    def show(self, index: int | None = None, level: float | None = None, threshold: float | None = None) -> dict:
        """Select a case / level / threshold (what the controls do) and return :attr:`result`."""
        if index is not None and int(index) not in self.indices:
            raise ValueError(f"case {index!r} is not offered by this panel; choose one of {self.indices}")
        if level is not None:
            level = self._check_level(level)
        if threshold is not None and not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
        self._quiet = True  # one redraw for all three changes
        try:
            if index is not None:
                self.case_select.value = int(index)
            if level is not None:
                self.level_select.value = level
            if threshold is not None:
                self.threshold_slider.value = float(threshold)
        finally:
            self._quiet = False
        self._show()
        return self.result

    def evaluate(self, level: float | None = None, background: bool = True):
        """Score every offered case at ``level`` (default: the selected one).

        Runs :func:`~rtlab.methods.region_model.evaluate_model`; the table goes to :attr:`table`
        and a summary to :attr:`out`. Runs in a daemon thread unless ``background=False``; join
        it with :meth:`wait` (which returns the table and re-raises a failure).

        Returns
        -------
        threading.Thread or pandas.DataFrame
            The thread, or with ``background=False`` the table.
        """
        lv = self._check_level(self.level_select.value if level is None else level)
        thr = float(self.threshold_slider.value)
        if self.running:
            raise RuntimeError("an evaluation is still running; call wait() first")
        self.evaluate_button.disabled = True

        def work():
            df = rm.evaluate_model(self._models[lv], self._data[lv], indices=self.indices, threshold=thr)
            df.insert(1, "level", lv)
            m = df.mean(numeric_only=True)
            self._set_status(f"Evaluated {len(df)} cases at level {_level_label(lv)}.")
            self.out.append_stdout(
                f"level {_level_label(lv)}, threshold {thr:g}, {len(df)} cases: Dice {m['dice']:.3f} "
                f"(region = target {m['dice_target']:.3f}), ASD {m['asd_mm']:.2f} mm "
                f"({m['asd_target_mm']:.2f}), HD95 {m['hd95_mm']:.2f} mm ({m['hd95_target_mm']:.2f})\n")
            return df  # -> self.table

        def done():
            self.evaluate_button.disabled = False

        thread = self._start_job(work, "evaluation", done=done, block=not background)
        return thread if background else self.table

    # ------------------------------------------------------------------ view
    def _on_change(self, _change) -> None:
        if not self._quiet:
            self._show()

    def _show(self) -> None:
        i, lv = int(self.case_select.value), float(self.level_select.value)
        thr = float(self.threshold_slider.value)
        m = self.masks(i, lv, thr)
        k = int(np.argmax(m["target"].sum(axis=(1, 2))))  # axial slice with the largest target section
        structs = self._structures({"target": m["target"], "optimised region": m["region"],
                                    "predicted region": m["predicted"]}, m["grid"])
        if self.viewer is not None and self.viewer.grid.is_same(m["grid"]):
            with self.viewer.hold_sync():
                self.viewer.set_ct(m["ct"])
                self.viewer.set_structures(structs)
                self.viewer.slice_index = k
        else:
            self.viewer = SliceViewer(m["ct"], m["grid"], structs, slice_index=k, display_size=self._display_size)
        d = rm.dice(m["predicted"], m["region"])
        dt = rm.dice(m["target"], m["region"])
        if m["predicted"].any() and m["region"].any():
            sd = rm.surface_distances(m["predicted"], m["region"], m["grid"].spacing)
            asd, hd95 = sd["asd"], sd["hd95"]
        else:
            asd = hd95 = float("nan")
        seed = self._data[lv].manifest["cases"][i]["seed"]
        self.result = {"index": i, "seed": int(seed), "level": lv, "threshold": thr, "slice_index": k,
                       "dice": d, "asd_mm": asd, "hd95_mm": hd95, "dice_target": dt,
                       "n_region": int(m["region"].sum()), "n_predicted": int(m["predicted"].sum())}
        sw = "".join(f'<span style="color:{rgb_hex(c)}">&#9632; {n}</span> ' for n, c in COLORS.items())
        self.score.value = (f"<b>case {i}</b>, level {_level_label(lv)}, threshold {thr:g}: "
                            f"Dice (predicted vs optimised) <b>{d:.3f}</b>, ASD {asd:.2f} mm, HD95 {hd95:.2f} mm; "
                            f"region = target: Dice {dt:.3f} &nbsp; {sw}")
        self.children = [self._controls, self.viewer, self.score, self.status, self.out]

    @staticmethod
    def _structures(masks: dict, grid):
        return [Structure(n, v, grid, "oar", color=COLORS[n], allow_empty=True) for n, v in masks.items()]
