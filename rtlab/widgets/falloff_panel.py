"""FalloffPanel: the dose-falloff rule of patent 000 (section B, eqs 16-17) as a live panel.

A slider sets the dose falloff gradient ``G`` (Gy/mm). For every lower-dose level the panel
shows on a :class:`~rtlab.widgets.SliceViewer` the region the rule builds (the adjusted lower-dose
target, or only its extension shell) and the automatic low-dose ring (para. 80), and lists each
level's dose, falling distance ``L = (D_{j-1} - D_j) / G`` (eqs 16-17) and volumes.

The panel holds no algorithm: the regions come from
:func:`rtlab.methods.falloff.adjust_targets` with the case's targets, its body and
``low_dose=ring_fraction`` -- the same call :func:`rtlab.planning.build_objective` makes for
``falloff=G`` (whose recipe entry ``ring_fraction`` is :attr:`FalloffPanel.recipe`).
"""

from __future__ import annotations

import html

import numpy as np

from ..core.case import Case
from ..core.geometry import Structure
from ..methods.falloff import adjust_targets
from .panel import Panel, ipywidgets
from .slice_viewer import SliceViewer, largest_target_slice

__all__ = ["FalloffPanel", "case_targets", "replace_overlay"]

#: Contour colours (RGB 0-1) of the lower levels, cycled.
LEVEL_COLORS = ((0.10, 0.45, 1.00), (1.00, 0.55, 0.00), (0.70, 0.20, 0.95), (0.00, 0.75, 0.65))
#: Colour of the automatic low-dose ring.
RING_COLOR = (1.00, 0.20, 0.80)


def case_targets(case) -> list[tuple[Structure, float]]:
    """The case's non-empty targets with their dose (Gy), highest dose first.

    A first target without a prescription takes ``case.prescription`` (as
    :func:`rtlab.planning.plan_case` does).

    Raises
    ------
    ValueError
        When the case has no non-empty target, or a target has no prescription.
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.core.case.Case (e.g. rtlab.phantoms.get_phantom(...)), got {type(case).__name__}")
    ts = [t for t in case.structures.targets if t.mask.any()]
    if not ts:
        raise ValueError(
            f"case {case.name!r} has no target structure (kind='target' with voxels); add one, e.g. "
            "case.structures.add(Structure('PTV', mask, case.grid, kind='target', prescription=60.0))"
        )
    out = []
    for i, t in enumerate(ts):
        d = t.prescription if t.prescription is not None else (case.prescription if i == 0 else None)
        if d is None:
            raise ValueError(f"target {t.name!r} of case {case.name!r} has no prescription; set Structure.prescription (Gy)")
        out.append((t, float(d)))
    out.sort(key=lambda it: -it[1])
    return out


def replace_overlay(viewer: SliceViewer, old_names, new_structures) -> list[str]:
    """Swap the structures a panel drew on ``viewer``: drop ``old_names``, append the new ones.

    Other structures on the viewer (the case's, other panels') are kept. Returns the new names.
    """
    old = set(old_names)
    keep = [s for s in viewer.structures if s.name not in old]
    new = list(new_structures)
    viewer.set_structures(keep + new)
    return [s.name for s in new]


class FalloffPanel(Panel):
    """Live dose-falloff regions (patent 000, eqs 16-17, para. 80 and 106-123).

    Parameters
    ----------
    case : rtlab.core.case.Case
        Needs at least one target with a prescription (Gy).
    viewer : SliceViewer, optional
        Viewer to draw the regions on (as extra structure contours). Default: the panel makes
        its own (axial slice through the largest section of the highest-dose target) and shows
        it below the controls.
    gradient : float
        Initial dose falloff gradient ``G`` in Gy/mm (2.0 = the patent's 200 cGy/mm).
    ring_fraction : float
        Automatic low-dose ring at this fraction of the lowest target dose (para. 80), in
        ``[0.5, 0.95]``; default 0.8 as :data:`rtlab.planning.CONFORMITY_RECIPE`.
    enabled : bool
        Whether the rule is switched on (:attr:`falloff` is None when off).
    show : {'regions', 'extensions'}
        Draw the adjusted regions of the lower levels, or only their extension shells.

    Attributes
    ----------
    enable : ipywidgets.Checkbox
    gradient : ipywidgets.FloatSlider
        ``G`` in Gy/mm.
    ring : ipywidgets.FloatSlider
        Ring fraction of the lowest target dose.
    show : ipywidgets.ToggleButtons
    table : ipywidgets.HTML
        One row per level: dose (Gy), ``L`` (mm), region / extension / delineated volume (cm3).
    levels : list of FalloffLevel or None
        The last result of :func:`~rtlab.methods.falloff.adjust_targets` (None while off).
    rows : list of dict
        The table as data (``level``, ``dose_gy``, ``distance_mm``, ``region_cc``,
        ``extension_cc``, ``delineated_cc``).
    out : ipywidgets.Output
    status : ipywidgets.HTML
    result : list of FalloffLevel or None
        :attr:`levels` (the panel computes in the calling thread: :meth:`wait` returns at once).

    Events
    ------
    ``"changed"``: payload :attr:`falloff` (Gy/mm or None), after the regions were redrawn.
    """

    EVENTS = ("changed",)
    G_MIN, G_MAX = 0.1, 10.0

    def __init__(self, case, viewer: SliceViewer | None = None, *, gradient: float = 2.0,
                 ring_fraction: float = 0.8, enabled: bool = False, show: str = "regions"):
        self._targets = case_targets(case)  # validates case
        self.case = case
        g = self._check_gradient(gradient, "gradient")
        rf = self._check_ring(ring_fraction)
        if show not in ("regions", "extensions"):
            raise ValueError(f"show must be 'regions' or 'extensions', got {show!r}")
        if viewer is not None and not isinstance(viewer, SliceViewer):
            raise TypeError(f"viewer must be an rtlab SliceViewer or None, got {type(viewer).__name__}")
        if viewer is not None:
            viewer.grid.require_same(case.grid, "viewer")
        self._init_panel(out_height="8em")
        self._own_viewer = viewer is None
        if viewer is None:
            viewer = SliceViewer(case.ct, case.grid, case.structures,
                                 slice_index=largest_target_slice(self._targets[0][0].mask), display_size=420)
        self.viewer = viewer
        self._body = case.structures.body_mask().astype(bool)
        self._drawn: list[str] = []
        self.levels = None
        self.rows: list[dict] = []

        self.enable = ipywidgets.Checkbox(value=bool(enabled), description="use the falloff rule (eqs 16-17)",
                                          indent=False)
        self.gradient = ipywidgets.FloatSlider(value=g, min=self.G_MIN, max=self.G_MAX, step=0.1,
                                               description="G (Gy/mm)", continuous_update=False,
                                               readout_format=".1f", style={"description_width": "initial"})
        self.ring = ipywidgets.FloatSlider(value=rf, min=0.5, max=0.95, step=0.05, description="ring (x D_low)",
                                           continuous_update=False, readout_format=".2f",
                                           style={"description_width": "initial"})
        self.show = ipywidgets.ToggleButtons(options=[("adjusted regions", "regions"), ("extension shells", "extensions")],
                                             value=show, style={"button_width": "auto"})
        self.table = ipywidgets.HTML()
        kids = [self.enable, ipywidgets.HBox([self.gradient, self.ring]), self.show]
        if self._own_viewer:
            kids.append(self.viewer)
        super().__init__(kids + [self.table, self.status, self.out])
        self.update()
        for w in (self.enable, self.gradient, self.ring):
            w.observe(self._on_setting, names="value")
        self.show.observe(lambda _c: self._draw(), names="value")

    # ------------------------------------------------------------------ checks
    @classmethod
    def _check_gradient(cls, g, name="falloff"):
        if isinstance(g, bool) or not isinstance(g, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a dose falloff gradient in Gy/mm (a number, e.g. 2.0), got {g!r}")
        g = float(g)
        if not (np.isfinite(g) and cls.G_MIN <= g <= cls.G_MAX):
            raise ValueError(f"{name} must lie in [{cls.G_MIN:g}, {cls.G_MAX:g}] Gy/mm (2.0 Gy/mm = 200 cGy/mm), "
                             f"got {g!r}; use None to switch the rule off")
        return g

    @staticmethod
    def _check_ring(f):
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) or not 0.5 <= f <= 0.95:
            raise ValueError(f"ring_fraction must be a fraction of the lowest target dose in [0.5, 0.95], got {f!r}")
        return float(f)

    # ------------------------------------------------------------------ public
    @property
    def falloff(self) -> float | None:
        """Dose falloff gradient ``G`` in Gy/mm for :func:`rtlab.planning.prepare_plan`, or None when off."""
        return float(self.gradient.value) if self.enable.value else None

    @falloff.setter
    def falloff(self, g: float | None) -> None:
        if g is None:
            self.enable.value = False
            return
        g = self._check_gradient(g)
        self._quiet = True
        try:
            self.gradient.value = g
            self.enable.value = True
        finally:
            self._quiet = False
        self._on_setting(None)

    @property
    def ring_fraction(self) -> float:
        """Automatic low-dose ring level as a fraction of the lowest target dose."""
        return float(self.ring.value)

    @property
    def recipe(self) -> dict:
        """Recipe overrides for :func:`rtlab.planning.build_objective` (``{'ring_fraction': f}``)."""
        return {"ring_fraction": self.ring_fraction}

    def compute(self, gradient: float | None = None):
        """The falloff levels for ``gradient`` (default: the slider's ``G``), without drawing.

        Calls :func:`rtlab.methods.falloff.adjust_targets` with the case's targets (highest dose
        first), ``spacing`` of the case grid, ``body`` = the body mask and
        ``low_dose = ring_fraction``.

        Returns
        -------
        list of FalloffLevel
        """
        g = self._check_gradient(self.gradient.value if gradient is None else gradient, "gradient")
        items = [(t.name, t.mask, d) for t, d in self._targets]
        return adjust_targets(items, gradient=g, spacing=self.case.grid.spacing, body=self._body,
                              low_dose=self.ring_fraction)

    def update(self) -> None:
        """Recompute the levels at the current settings, redraw, refresh the table; emit ``"changed"``."""
        if self.enable.value:
            self.levels = self.compute()
        else:
            self.levels = None
        self.result = self.levels
        self.rows = self._rows(self.levels)
        self._draw()
        self._render_table()
        g = self.falloff
        if g is None:
            self.status.value = "falloff rule <b>off</b>"
        else:
            empty = [r["level"] for r in self.rows if r["region_cc"] == 0]
            note = (f"; empty at this grid spacing (left out of a plan): {html.escape(', '.join(empty))}"
                    if empty else "")
            self.status.value = f"G = <b>{g:.3g} Gy/mm</b> ({100 * g:.0f} cGy/mm); {len(self.levels)} levels{note}"
        if g is not None:
            self.out.append_stdout(f"G = {g:.3g} Gy/mm: " + ", ".join(
                f"{r['level']} {r['region_cc']:.1f} cc" for r in self.rows) + "\n")
        self._emit("changed", g)

    # ------------------------------------------------------------------ internals
    _quiet = False

    def _on_setting(self, _change) -> None:
        if self._quiet:
            return
        try:
            self.update()
        except (ValueError, TypeError) as exc:  # shown in the status line, then raised
            self._set_status(html.escape(str(exc)), error=True)
            raise

    def _rows(self, levels) -> list[dict]:
        if levels is None:
            return []
        cc = self.case.grid.voxel_volume_cc
        return [{"level": lv.name, "dose_gy": lv.dose, "distance_mm": lv.distance_mm,
                 "region_cc": float(lv.region.sum() * cc), "extension_cc": float(lv.extension.sum() * cc),
                 "delineated_cc": float(lv.original.sum() * cc)} for lv in levels]

    def overlay_structures(self) -> list[Structure]:
        """The structures drawn on the viewer for the current levels (empty when off).

        Every level below the highest one gives ``"falloff <name> (<dose> Gy)"`` -- its adjusted
        region, or its extension shell when ``show`` is ``'extensions'``.
        """
        if not self.levels:
            return []
        grid = self.case.grid
        out, k = [], 0
        for lv in self.levels[1:]:
            auto = not lv.original.any()
            color = RING_COLOR if auto else LEVEL_COLORS[k % len(LEVEL_COLORS)]
            k += 0 if auto else 1
            mask = lv.extension if self.show.value == "extensions" else lv.region
            out.append(Structure(f"falloff {lv.name} ({lv.dose:.3g} Gy)", mask, grid, "oar", color=color,
                                 allow_empty=True))
        return out

    def _draw(self) -> None:
        self._drawn = replace_overlay(self.viewer, self._drawn, self.overlay_structures())

    def _render_table(self) -> None:
        if not self.rows:
            self.table.value = "<i>switch the rule on to see the falloff levels</i>"
            return
        head = ("<tr><th>level</th><th>dose (Gy)</th><th>L (mm)</th><th>region (cm&sup3;)</th>"
                "<th>extension (cm&sup3;)</th><th>delineated (cm&sup3;)</th></tr>")
        body = "".join(
            f"<tr><td>{html.escape(r['level'])}</td><td>{r['dose_gy']:.4g}</td><td>{r['distance_mm']:.3g}</td>"
            f"<td>{r['region_cc']:.2f}</td><td>{r['extension_cc']:.2f}</td><td>{r['delineated_cc']:.2f}</td></tr>"
            for r in self.rows)
        self.table.value = f'<table style="border-collapse:collapse;text-align:right">{head}{body}</table>'
