"""ControlPointsPanel: dose control points of patent 000 (section D, para. 154-197) as a live panel.

Set the sampling band, the inside / outside filter sizes (ring or disk, radii in mm), the
decision thresholds and 2D / 3D; the panel finds the control points of a target with
:func:`rtlab.methods.control_points.find_control_points` (in a background thread), draws them on
a :class:`~rtlab.widgets.SliceViewer` as two extra structures (inside points, outside points) and
lists their counts. With a dose (:meth:`ControlPointsPanel.set_dose`) it also counts the points
that miss their bounds (para. 180): inside points below ``D1`` (the target's dose) and outside
points above ``D2 = outside x D1``.

The panel holds no algorithm: every number comes from :mod:`rtlab.methods.control_points`.
:attr:`ControlPointsPanel.enabled` says whether a plan should add the control-point bounds
(``control_points=True`` of :func:`rtlab.planning.prepare_plan`), and
:attr:`ControlPointsPanel.recipe` gives the matching recipe entries: ``D2 / D1``, the weight and,
when they differ from the planning default, the find settings (recipe entry
``control_point_find``), so that the plan uses the control points the panel shows.
"""

from __future__ import annotations

import html
import threading
import time

import numpy as np

from ..core.geometry import Structure
from ..methods.control_points import (ControlPointTerm, RingFilter, Thresholds, control_point_targets,
                                      find_control_points)
from ..planning import control_point_find_options
from .falloff_panel import case_targets, replace_overlay
from .panel import Panel, ipywidgets
from .slice_viewer import SliceViewer, largest_target_slice

__all__ = ["ControlPointsPanel"]

INSIDE_COLOR = (0.10, 0.80, 0.20)
OUTSIDE_COLOR = (1.00, 0.15, 0.15)


def _mm(value, description, vmax=50.0):
    return ipywidgets.BoundedFloatText(value=float(value), min=0.0, max=vmax, step=0.5, description=description,
                                       style={"description_width": "initial"}, layout={"width": "11em"})


class ControlPointsPanel(Panel):
    """Find, draw and count dose control points (patent 000, FIGs 11-18, para. 154-197).

    Parameters
    ----------
    case : rtlab.core.case.Case
        Needs at least one target with a prescription (Gy).
    dose : ndarray, shape ``case.grid.shape``, optional
        Dose (Gy) on the CT grid; see :meth:`set_dose`.
    viewer : SliceViewer, optional
        Viewer to draw the points on. Default: the panel makes its own and shows it.
    target : str, optional
        Target name (default: the highest-dose target, the one :func:`rtlab.planning.plan_case`
        uses).
    enabled : bool
        Whether a plan should use the control points (:attr:`enabled`).
    mode : {'2d', '3d'}
        Circles per axial slice or spheres (default '2d', as the planning recipe).
    r_in, r_out : float
        Sampling band inside / outside the target, mm (para. 161).
    inside_filter, outside_filter : (outer_mm, inner_mm)
        Filter radii in mm for points inside / outside the target; ``inner_mm = 0`` is a disk
        (ball) filter, else a ring (shell).
    ratio, bulge : float or None
        Decision thresholds (:class:`~rtlab.methods.control_points.Thresholds`); None disables
        a test.
    outside : float
        ``D2 / D1``: outside points should stay below this fraction of the target dose.
    weight : float
        Weight of the control-point term in the plan (recipe entry ``control_point_weight``).
    auto : bool
        Recompute whenever a setting changes (after the first computation).

    Attributes
    ----------
    points : ControlPoints or None
        The last result of :func:`~rtlab.methods.control_points.find_control_points`.
    counts : dict
        ``sampling``, ``control``, ``inside``, ``outside`` and, with a dose,
        ``inside_below_d1``, ``outside_above_d2``, ``rms_violation_gy`` (else None).
    error : Exception or None
        The error of the last background run (also raised by :meth:`wait`).
    result : ControlPoints or None
        What :meth:`wait` returns: the points of the last finished run.
    out : ipywidgets.Output
    status : ipywidgets.HTML

    Events
    ------
    ``"changed"``: payload :attr:`points`, after new points were drawn (so also after a change
    of the find settings, which recomputes with :attr:`auto`), and when :attr:`enabled`,
    ``D2 / D1`` or the weight (:attr:`recipe`) change.
    """

    EVENTS = ("changed",)

    def __init__(self, case, dose=None, viewer: SliceViewer | None = None, *, target: str | None = None,
                 enabled: bool = False, mode: str = "2d", r_in: float = 10.0, r_out: float = 10.0,
                 inside_filter=(8.0, 0.0), outside_filter=(8.0, 0.0), ratio: float | None = 1.1,
                 bulge: float | None = 0.06, outside: float = 0.9, weight: float = 1e-3, auto: bool = True):
        targets = case_targets(case)  # validates case
        self.case = case
        self._doses = {t.name: d for t, d in targets}
        self._structs = {t.name: t for t, _ in targets}
        if target is None:
            target = targets[0][0].name
        if target not in self._doses:
            raise ValueError(f"target must be one of the case's targets {list(self._doses)}, got {target!r}")
        if mode not in ("2d", "3d"):
            raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
        fin, fout = self._pair(inside_filter, "inside_filter"), self._pair(outside_filter, "outside_filter")
        if viewer is not None and not isinstance(viewer, SliceViewer):
            raise TypeError(f"viewer must be an rtlab SliceViewer or None, got {type(viewer).__name__}")
        if viewer is not None:
            viewer.grid.require_same(case.grid, "viewer")
        self._init_panel("press <b>Compute</b> (or tick the box) to find the control points", out_height="8em")
        self._dose = None if dose is None else self._check_dose(dose)
        self._own_viewer = viewer is None
        if viewer is None:
            viewer = SliceViewer(case.ct, case.grid, case.structures, dose=self._dose,
                                 slice_index=largest_target_slice(self._structs[target].mask), display_size=420)
        self.viewer = viewer
        self.points = None
        self.counts: dict = {}
        self.error: BaseException | None = None
        self._drawn: list[str] = []
        self._lock = threading.Lock()  # guards _serial (jobs run one at a time, queued)
        self._serial = 0

        st = {"description_width": "initial"}
        self.enable = ipywidgets.Checkbox(value=bool(enabled), description="use control points in the plan",
                                          indent=False)
        self.target = ipywidgets.Dropdown(options=list(self._doses), value=target, description="target", style=st)
        self.mode = ipywidgets.ToggleButtons(options=[("2D (circles per slice)", "2d"), ("3D (spheres)", "3d")],
                                             value=mode, style={"button_width": "auto"})
        self.r_in, self.r_out = _mm(r_in, "band inside (mm)"), _mm(r_out, "band outside (mm)")
        self.in_outer, self.in_inner = _mm(fin[0], "inside filter b (mm)"), _mm(fin[1], "a (mm)")
        self.out_outer, self.out_inner = _mm(fout[0], "outside filter b (mm)"), _mm(fout[1], "a (mm)")
        self.use_ratio = ipywidgets.Checkbox(value=ratio is not None, description="chord ratio >", indent=False,
                                             layout={"width": "8em"})
        self.ratio = ipywidgets.BoundedFloatText(value=1.1 if ratio is None else float(ratio), min=1.0, max=5.0,
                                                 step=0.05, layout={"width": "6em"})
        self.use_bulge = ipywidgets.Checkbox(value=bulge is not None, description="|bulge| >", indent=False,
                                             layout={"width": "8em"})
        self.bulge = ipywidgets.BoundedFloatText(value=0.06 if bulge is None else float(bulge), min=0.0, max=1.0,
                                                 step=0.01, layout={"width": "6em"})
        self.outside = ipywidgets.BoundedFloatText(value=float(outside), min=0.0, max=1.0, step=0.05,
                                                   description="D2 / D1", style=st, layout={"width": "11em"})
        self.weight = ipywidgets.FloatLogSlider(value=float(weight), base=10, min=-5, max=0, step=0.25,
                                                description="weight", readout_format=".1e", continuous_update=False)
        self.auto = ipywidgets.Checkbox(value=bool(auto), description="recompute on change", indent=False)
        self.button = ipywidgets.Button(description="Compute", icon="crosshairs", button_style="primary")
        self.button.on_click(lambda _b: self._guarded(self.update))
        self.table = ipywidgets.HTML()
        kids = [
            ipywidgets.HBox([self.enable, self.target]),
            self.mode,
            ipywidgets.HBox([self.r_in, self.r_out]),
            ipywidgets.HBox([self.in_outer, self.in_inner]),
            ipywidgets.HBox([self.out_outer, self.out_inner]),
            ipywidgets.HBox([self.use_ratio, self.ratio, self.use_bulge, self.bulge]),
            ipywidgets.HBox([self.outside, self.weight]),
            ipywidgets.HBox([self.button, self.auto]),
        ]
        if self._own_viewer:
            kids.append(self.viewer)
        super().__init__(kids + [self.table, self.status, self.out])
        self._render_table()
        for w in (self.target, self.mode, self.r_in, self.r_out, self.in_outer, self.in_inner, self.out_outer,
                  self.out_inner, self.use_ratio, self.ratio, self.use_bulge, self.bulge):
            w.observe(self._on_setting, names="value")
        self.outside.observe(self._on_recipe, names="value")
        self.weight.observe(self._on_recipe, names="value")
        self.enable.observe(self._on_enable, names="value")

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _pair(f, name):
        try:
            b, a = (float(v) for v in f)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be (outer_mm, inner_mm), e.g. (8.0, 0.0) for a disk of radius 8 mm, "
                            f"got {f!r}") from None
        return b, a

    def _check_dose(self, dose):
        a = np.asarray(dose)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"dose must be a numeric array in Gy, got dtype {a.dtype}")
        self.case.grid.check_array("dose", a)
        if not np.all(np.isfinite(a)):
            raise ValueError("dose contains NaN or inf; replace them (np.nan_to_num) first")
        if a.min() < 0:
            raise ValueError("dose contains negative values; dose must be >= 0 Gy")
        return a.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ public
    @property
    def enabled(self) -> bool:
        """Whether a plan should add the control-point dose bounds (``control_points=True``)."""
        return bool(self.enable.value)

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.enable.value = bool(value)

    @property
    def dose(self):
        """The dose (Gy, float32, CT grid) the counts refer to, or None."""
        return self._dose

    @property
    def d1(self) -> float:
        """First dose threshold ``D1`` (Gy): the selected target's dose."""
        return self._doses[self.target.value]

    @property
    def d2(self) -> float:
        """Second dose threshold ``D2 = outside x D1`` (Gy)."""
        return float(self.outside.value) * self.d1

    #: Recipe entries of :data:`rtlab.planning.CONFORMITY_RECIPE` that this panel sets.
    RECIPE_KEYS = ("control_point_outside", "control_point_weight", "control_point_find")

    @property
    def recipe(self) -> dict:
        """Recipe overrides for :func:`rtlab.planning.build_objective` / ``prepare_plan``.

        ``control_point_outside`` (``D2 / D1``), ``control_point_weight`` and, when the find
        settings differ from the planning default (library defaults, ``mode='2d'``),
        ``control_point_find`` = :meth:`find_kwargs`, so that a plan finds the same control
        points as the panel.

        Raises
        ------
        ValueError
            For invalid find settings (as :meth:`find_kwargs`).
        """
        rec = {"control_point_outside": float(self.outside.value), "control_point_weight": float(self.weight.value)}
        kw = self.find_kwargs()
        if control_point_find_options(kw) != control_point_find_options(None):
            rec["control_point_find"] = kw
        return rec

    def find_kwargs(self) -> dict:
        """Keyword arguments of :func:`~rtlab.methods.control_points.find_control_points` set in the panel.

        Raises
        ------
        ValueError
            For invalid filter radii (inner >= outer) or when no threshold test is enabled.
        """
        kw = {"r_in": float(self.r_in.value), "r_out": float(self.r_out.value), "mode": self.mode.value}
        if kw["r_in"] == 0 and kw["r_out"] == 0:
            raise ValueError("band inside and band outside are both 0 mm; widen at least one (e.g. 10 mm)")
        for key, b, a, label in (("inside_filter", self.in_outer, self.in_inner, "inside filter"),
                                 ("outside_filter", self.out_outer, self.out_inner, "outside filter")):
            try:
                kw[key] = RingFilter(float(b.value), float(a.value))
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        try:
            kw["thresholds"] = Thresholds(ratio=float(self.ratio.value) if self.use_ratio.value else None,
                                          bulge=float(self.bulge.value) if self.use_bulge.value else None)
        except ValueError as exc:
            raise ValueError(f"thresholds: {exc}; tick 'chord ratio' or '|bulge|'") from None
        return kw

    def update(self) -> threading.Thread:
        """Find the control points at the current settings in a background thread.

        Returns the job's thread at once; :meth:`wait` joins and returns the points
        (:attr:`result`, a :class:`~rtlab.methods.control_points.ControlPoints`). When the run
        ends the points are drawn on the viewer, the counts are refreshed and ``"changed"`` is
        emitted. Runs are queued; a newer call supersedes an older one that has not started.

        Raises
        ------
        ValueError
            For invalid settings (checked before the thread starts).
        """
        kw = self.find_kwargs()
        target = self._structs[self.target.value]
        with self._lock:
            self._serial += 1
            serial = self._serial
            self.error = None
        self.status.value = f"finding control points of <b>{html.escape(target.name)}</b> ..."
        return self._start_job(lambda: self._run(serial, target, kw), "control-point search", when_busy="queue")

    def set_dose(self, dose) -> None:
        """Use ``dose`` (Gy, CT grid; None to drop it) for the bound-violation counts.

        The panel's own viewer (if it made one) shows it too.
        """
        self._dose = None if dose is None else self._check_dose(dose)
        if self._own_viewer:
            self.viewer.set_dose(self._dose)
        self._refresh_counts()

    def overlay_structures(self) -> list[Structure]:
        """The two structures drawn on the viewer: inside and outside control points."""
        if self.points is None:
            return []
        g = self.case.grid
        return [Structure(f"control points inside (>= {self.d1:.3g} Gy)", self.points.as_mask("inside"), g, "oar",
                          color=INSIDE_COLOR, allow_empty=True),
                Structure("control points outside (<= D2)", self.points.as_mask("outside"), g, "oar",
                          color=OUTSIDE_COLOR, allow_empty=True)]

    # ------------------------------------------------------------------ internals
    def _guarded(self, fn):
        try:
            fn()
        except (ValueError, TypeError) as exc:
            self.error = exc
            self.status.value = f'<span style="color:#c00">{html.escape(str(exc))}</span>'
            raise

    def _on_setting(self, _change) -> None:
        if self.auto.value and (self.points is not None or self.enabled):
            self._guarded(self.update)

    def _on_recipe(self, _change) -> None:
        self._refresh_counts()
        self._emit("changed", self.points)

    def _on_enable(self, _change) -> None:
        if self.enabled and self.points is None:
            self._guarded(self.update)  # emits "changed" when done
        else:
            self._emit("changed", self.points)

    def _run(self, serial, target, kw):
        """The job: find, draw, count, emit; returns the points (None when superseded)."""
        if serial != self._serial:
            return None  # superseded before it started
        t0 = time.perf_counter()
        try:
            pts = find_control_points(target.mask, self.case.grid.spacing, **kw)
        except Exception as exc:
            if serial != self._serial:
                return None  # a newer run will report
            self.error = exc
            raise
        if serial != self._serial:
            return None
        dt = time.perf_counter() - t0
        self.points = pts
        self._drawn = replace_overlay(self.viewer, self._drawn, self.overlay_structures())
        self._refresh_counts()
        c = self.counts
        self.status.value = (f"<b>{html.escape(target.name)}</b>: {c['control']} control points "
                             f"({c['inside']} inside, {c['outside']} outside) of {c['sampling']} "
                             f"sampling points, {kw['mode']}")
        self.out.append_stdout(f"{target.name}: {c['control']} control points ({kw['mode']}) in {dt:.2f} s\n")
        self._emit("changed", pts)
        return pts

    def _refresh_counts(self) -> None:
        p = self.points
        if p is None:
            self.counts = {}
            self._render_table()
            return
        c = {"sampling": len(p), "control": p.n_control, "inside": int((p.is_control & p.inside).sum()),
             "outside": int((p.is_control & ~p.inside).sum()), "inside_below_d1": None, "outside_above_d2": None,
             "rms_violation_gy": None}
        if self._dose is not None:
            vi, ins, bound = control_point_targets(p, self.d1, self.d2)
            d = self._dose.ravel()[vi].astype(np.float64)
            c["inside_below_d1"] = int((ins & (d < bound)).sum())
            c["outside_above_d2"] = int((~ins & (d > bound)).sum())
            term = ControlPointTerm(vi, ins, bound, weight=1.0)
            c["rms_violation_gy"] = float(np.sqrt(term.value(self._dose)))
        self.counts = c
        self._render_table()

    def _render_table(self) -> None:
        c = self.counts
        if not c:
            self.table.value = "<i>no control points yet</i>"
            return
        rows = [("sampling points", c["sampling"]), ("control points", c["control"]),
                (f"inside (dose &ge; D1 = {self.d1:.3g} Gy)", c["inside"]),
                (f"outside (dose &le; D2 = {self.d2:.3g} Gy)", c["outside"])]
        if c["inside_below_d1"] is not None:
            rows += [("inside points below D1", c["inside_below_d1"]), ("outside points above D2", c["outside_above_d2"]),
                     ("RMS bound violation (Gy)", f"{c['rms_violation_gy']:.3g}")]
        body = "".join(f"<tr><td style='text-align:left'>{k}</td><td>{v}</td></tr>" for k, v in rows)
        self.table.value = f'<table style="border-collapse:collapse;text-align:right">{body}</table>'
