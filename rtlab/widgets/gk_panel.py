"""GKPanel: live editor of a Gamma-Knife-like plan over the point-kernel dose (patent 002, eqs 7-10).

Pick a shot, move it with x / y / z sliders (mm), choose each sector's collimator (4, 8, 16 mm
or blocked) and the shot's time, and see at once

* the dose slice through the shot (:class:`SliceViewer`, target contour, isodose lines in % of
  the prescription),
* the gradient arrows ``-dL/dr'_i`` of the plan loss (eq. 8) with respect to every shot position
  (eq. 10, the analytic kernel derivative), drawn as a matplotlib quiver over the axial slice
  (an :class:`ipywidgets.Image`),
* the read-out: coverage, selectivity, Paddick CI, GI, beam-on time and the loss.

"Optimise" runs the projected (sub)gradient descent of :mod:`rtlab.methods.gk`
(eq. 9) from the current plan in a background thread, then normalises the plan to the coverage
goal; :meth:`GKPanel.wait` joins it.

The panel holds no algorithm: dose from :func:`rtlab.dose.pointkernel.dose`, loss and gradient
from :func:`rtlab.methods.gk.plan_loss`, metrics from
:func:`rtlab.methods.gk.evaluate_plan`, optimisation from
:func:`~rtlab.methods.gk.optimize_pgd` and
:func:`~rtlab.methods.gk.normalize_coverage`.

Editing rules (so that an optimised plan survives small edits):

* a sector's collimator drop-down moves that sector's whole time to the chosen collimator
  (``'blocked'`` sets it to zero; opening a blocked sector gives it the shot's time);
* the time slider scales all of the shot's sector times so that the shot's duration
  ``max_s sum_c t[i, s, c]`` (min) equals the slider value.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..core.geometry import Grid
from ..dose import pointkernel as pk
from ..methods import gk as iso
from ..methods.gk.problem import target_as_mask
from .panel import Panel, ipywidgets
from .slice_viewer import SliceViewer

__all__ = ["GKPanel", "BLOCKED"]

#: Drop-down value of a blocked sector.
BLOCKED = "blocked"


class GKPanel(Panel):
    """Shot editor with live dose, loss gradient arrows and conformity read-out.

    Parameters
    ----------
    grid : Grid
        Dose grid (keep it small: e.g. 1 mm voxels in a 50-60 mm box).
    target : Structure or ndarray of bool
        Target mask on ``grid``.
    rx : float
        Prescription (Gy).
    shots : array_like (S, 3), optional
        Shot positions (z, y, x) mm. Default: the heuristic shots of
        :func:`rtlab.methods.gk.initial_shots` with times from
        :func:`~rtlab.methods.gk.optimize_times`, normalised to ``coverage_goal``.
    times : array_like (S, 8, 3), optional
        Minutes per shot, sector and collimator (4, 8, 16 mm). Required with ``shots``.
    body : ndarray of bool, optional
        Region of the prescription isodose volume for the metrics (default the whole grid).
    oars : sequence of (mask, limit_Gy)
        Organs at risk of the loss (eq. 8).
    model : rtlab.dose.pointkernel.GammaKnifeModel, optional
    problem_kw : dict, optional
        Passed to :func:`rtlab.methods.gk.build_problem` (loss weights, shell...).
    coverage_goal : float
        Coverage the "optimise" result is normalised to.
    ct : ndarray, optional
        Background image (HU) of the slice view (default water, 0 HU).
    display_size : int
        Longer side of the slice view (CSS pixels).
    draw : bool
        Render the quiver image (matplotlib); ``False`` skips it (faster tests).

    Attributes
    ----------
    shot_select : ipywidgets.Dropdown
        Index of the shot being edited.
    z_slider, y_slider, x_slider : ipywidgets.FloatSlider
        Position of the selected shot (mm).
    sector_select : list of 8 ipywidgets.Dropdown
        Collimator per sector (4, 8, 16 or ``'blocked'``).
    time_slider : ipywidgets.FloatSlider
        Duration of the selected shot (min).
    optimise_button : ipywidgets.Button
    viewer : SliceViewer
    arrows : ipywidgets.Image
        PNG of the axial dose slice through the selected shot with the arrows.
    readout : ipywidgets.HTML
    out : ipywidgets.Output
        Live text of the optimisation.
    shots, times : ndarray
        The current plan (copies are made on every edit).
    dose : ndarray ``grid.shape``
        Dose (Gy) of the current plan.
    loss : float
        Eq. 8 of the current plan.
    gradient : ndarray (S, 3)
        ``dL/dr'_i`` (per mm) of the current plan: what the arrows show (negated).
    metrics : dict
        :func:`rtlab.methods.gk.evaluate_plan` of the current plan plus ``loss``.
    """

    def __init__(self, grid: Grid, target, rx: float, shots=None, times=None, body=None, oars=(), model=None,
                 problem_kw=None, coverage_goal: float = 0.96, ct=None, display_size: int = 320,
                 draw: bool = True):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
        self.grid = grid
        self.target = np.asarray(target_as_mask(target, grid), bool)
        (self.rx,) = (float(rx),)
        if not (np.isfinite(self.rx) and self.rx > 0):
            raise ValueError(f"rx must be a positive dose in Gy, got {rx!r}")
        if not (0.0 < coverage_goal <= 1.0):
            raise ValueError(f"coverage_goal must lie in (0, 1], got {coverage_goal!r}")
        self.coverage_goal = float(coverage_goal)
        self.body = None if body is None else grid.check_array("body", body).astype(bool)
        self.model = pk.as_model(model)
        self.problem = iso.build_problem(grid, self.target, self.rx, oars=oars, **(problem_kw or {}))
        self._tidx = np.flatnonzero(self.target.ravel())
        if shots is None:
            if times is not None:
                raise ValueError("times given without shots; pass both or neither")
            s0, _ = iso.initial_shots(grid, self.target, model=self.model)
            t0, _ = iso.optimize_times(self.problem, s0, model=self.model)
            plan, _ = iso.normalize_coverage(iso.GKPlan(s0, t0), pk.dose(grid, s0, t0, self.model, indices=self._tidx),
                                             self.rx, self.coverage_goal)
            shots, times = plan.shots, plan.times
        elif times is None:
            raise ValueError("shots given without times; pass times of shape (n_shots, 8, 3) in minutes")
        self.shots, self.times = pk.check_shots(shots, times)
        if self.shots.shape[0] == 0:
            raise ValueError("the plan has no shots")
        self.draw = bool(draw)
        self.error: BaseException | None = None
        self._init_panel(out_height="120px")
        self._busy = False  # widget callbacks are ignored while the panel sets widget values
        self.dose = None
        self.loss = float("nan")
        self.gradient = np.zeros_like(self.shots)
        self.metrics: dict = {}
        self.history: list = []

        b = grid.bounds
        self.shot_select = ipywidgets.Dropdown(options=self._shot_options(), value=0, description="shot")
        mk = lambda lab, ax: ipywidgets.FloatSlider(  # noqa: E731
            value=0.0, min=float(b[ax, 0]), max=float(b[ax, 1]), step=0.25, description=f"{lab} (mm)",
            continuous_update=False, readout_format=".2f")
        self.z_slider, self.y_slider, self.x_slider = mk("z", 0), mk("y", 1), mk("x", 2)
        opts = [(f"{c} mm", c) for c in pk.COLLIMATORS_MM] + [("blocked", BLOCKED)]
        self.sector_select = [ipywidgets.Dropdown(options=opts, value=16, description=f"s{s}",
                                                  layout=ipywidgets.Layout(width="130px"),
                                                  style={"description_width": "22px"})
                              for s in range(pk.N_SECTORS)]
        self.time_slider = ipywidgets.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.01, description="time (min)",
                                                  continuous_update=False, readout_format=".2f")
        self.optimise_button = ipywidgets.Button(description="Optimise", icon="play",
                                                 tooltip="projected gradient descent on eq. 8 (background thread)")
        self.readout = ipywidgets.HTML()
        self.arrows = ipywidgets.Image(format="png")
        self.viewer = SliceViewer(np.zeros(grid.shape, np.float32) if ct is None else ct, grid,
                                  structures={"Target": self.target}, dose=None, reference_dose=self.rx,
                                  isodose_levels=(50.0, 100.0), dose_max=None, display_size=int(display_size))
        super().__init__()
        self._sync_controls()
        self.update()
        self.children = [
            ipywidgets.HBox([self.shot_select, self.optimise_button]),
            ipywidgets.HBox([self.x_slider, self.y_slider, self.z_slider]),
            ipywidgets.HBox(self.sector_select[:4]), ipywidgets.HBox(self.sector_select[4:]),
            self.time_slider,
            ipywidgets.HBox([self.viewer, self.arrows]),
            self.readout, self.status, self.out,
        ]
        self.shot_select.observe(lambda ch: self._guard(self._sync_controls, redraw=True), names="value")
        for ax, sl in enumerate((self.z_slider, self.y_slider, self.x_slider)):
            sl.observe(lambda ch, ax=ax: self._guard(self._move_from_sliders), names="value")
        for s, dd in enumerate(self.sector_select):
            dd.observe(lambda ch, s=s: self._guard(lambda: self.set_collimator(s, ch["new"])), names="value")
        self.time_slider.observe(lambda ch: self._guard(lambda: self.set_time(ch["new"])), names="value")
        self.optimise_button.on_click(lambda _b: self.optimise())

    # ------------------------------------------------------------------ plan editing (library calls)
    @property
    def selected(self) -> int:
        """Index of the shot being edited."""
        return int(self.shot_select.value)

    def shot_duration(self, i: int | None = None) -> float:
        """Duration ``max_s sum_c t[i, s, c]`` (min) of shot ``i`` (default the selected one)."""
        i = self.selected if i is None else int(i)
        return float(self.times[i].sum(axis=1).max())

    def sector_collimators(self, i: int | None = None) -> list:
        """Per sector of shot ``i``: the collimator (mm) carrying most of its time, or ``'blocked'``."""
        i = self.selected if i is None else int(i)
        out = []
        for s in range(pk.N_SECTORS):
            row = self.times[i, s]
            out.append(BLOCKED if row.sum() <= 0 else int(pk.COLLIMATORS_MM[int(np.argmax(row))]))
        return out

    def set_plan(self, shots, times) -> None:
        """Replace the whole plan (validated by :func:`rtlab.dose.pointkernel.check_shots`) and refresh."""
        s, t = pk.check_shots(shots, times)
        if s.shape[0] == 0:
            raise ValueError("the plan has no shots")
        self.shots, self.times = s.copy(), t.copy()
        opts = self._shot_options()
        self._busy = True
        try:
            if self.shot_select.value >= len(opts):
                self.shot_select.value = 0
            self.shot_select.options = opts
        finally:
            self._busy = False
        self._sync_controls()
        self.update()

    def move_shot(self, i: int, position) -> None:
        """Put shot ``i`` at ``position`` (z, y, x) mm and refresh dose, arrows and read-out."""
        i = self._check_shot(i)
        p = np.asarray(position, float).ravel()
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"position must be three finite numbers (z, y, x) in mm, got {position!r}")
        shots = self.shots.copy()
        shots[i] = p
        self.shots = shots
        if i == self.selected:
            self._sync_controls()
        self.update()

    def set_collimator(self, sector: int, collimator, i: int | None = None) -> None:
        """Give sector ``sector`` of shot ``i`` one collimator (4, 8, 16 mm) or ``'blocked'`` (see module docstring)."""
        i = self.selected if i is None else self._check_shot(i)
        s = int(sector)
        if not 0 <= s < pk.N_SECTORS:
            raise ValueError(f"sector must be 0..7, got {sector!r}")
        t = self.times.copy()
        total = float(t[i, s].sum())
        t[i, s] = 0.0
        if collimator != BLOCKED:
            c = pk.collimator_index(collimator)
            t[i, s, c] = total if total > 0 else self.shot_duration(i)
        self.times = t
        if i == self.selected:
            self._sync_controls()
        self.update()

    def set_time(self, minutes: float, i: int | None = None) -> None:
        """Scale shot ``i``'s sector times so that its duration is ``minutes`` (min)."""
        i = self.selected if i is None else self._check_shot(i)
        m = float(minutes)
        if not (np.isfinite(m) and m >= 0):
            raise ValueError(f"minutes must be a time >= 0 in minutes, got {minutes!r}")
        t = self.times.copy()
        cur = self.shot_duration(i)
        if cur > 0:
            t[i] *= m / cur
        else:  # a shot with no time: open every sector with the 16 mm collimator
            t[i, :, 2] = m
        self.times = t
        if i == self.selected:
            self._sync_controls()
        self.update()

    # ------------------------------------------------------------------ evaluation (library calls)
    def update(self) -> dict:
        """Recompute dose, loss, gradient and metrics of the current plan and redraw; returns the metrics."""
        self.dose = pk.dose(self.grid, self.shots, self.times, self.model)
        self.loss, self.gradient, _ = iso.plan_loss(self.problem, self.shots, self.times, self.model)
        mt = iso.evaluate_plan(iso.GKPlan(self.shots, self.times), self.grid, self.target, self.rx, body=self.body,
                               dose=self.dose)
        mt["loss"] = float(self.loss)
        self.metrics = mt
        self.viewer.set_dose(self.dose)
        k = int(np.clip(np.rint(self.grid.world_to_index(self.shots[self.selected])[0]), 0, self.grid.shape[0] - 1))
        if self.viewer.slice_index != k:
            self.viewer.slice_index = k
        self.readout.value = self._readout_html(mt)
        if self.draw:
            self.arrows.value = self.render_arrows()
        return mt

    def arrow_vectors(self) -> np.ndarray:
        """The arrows: ``-dL/dr'_i`` (per mm), shape (S, 3) (z, y, x); the quiver shows the (x, y) part."""
        return -np.asarray(self.gradient, float)

    def render_arrows(self) -> bytes:
        """PNG bytes of the axial dose slice through the selected shot, shots and descent arrows."""
        matplotlib.use("Agg", force=False)
        g = self.grid
        k = int(np.clip(np.rint(g.world_to_index(self.shots[self.selected])[0]), 0, g.shape[0] - 1))
        z0 = g.index_to_world(np.array([k, 0, 0]))[0]
        Z, Y, X = g.mesh(sparse=True)
        xs, ys = np.ravel(X), np.ravel(Y)
        fig = Figure(figsize=(3.6, 3.4), dpi=80)
        ax = fig.add_subplot(1, 1, 1)
        d = self.dose[k] / self.rx
        ax.imshow(d, origin="upper", extent=(xs[0] - g.spacing[2] / 2, xs[-1] + g.spacing[2] / 2,
                                             ys[-1] + g.spacing[1] / 2, ys[0] - g.spacing[1] / 2),
                  cmap="viridis", vmin=0.0, vmax=max(1.2, float(d.max())))
        if self.target[k].any():
            ax.contour(xs, ys, self.target[k].astype(float), levels=[0.5], colors="red", linewidths=1)
        if (d >= 1.0).any():
            ax.contour(xs, ys, d, levels=[0.5, 1.0], colors=["white", "orange"], linewidths=0.8)
        v = self.arrow_vectors()
        near = np.abs(self.shots[:, 0] - z0) <= 1.5 * g.spacing[0] + 1e-9
        ax.plot(self.shots[:, 2], self.shots[:, 1], "w+", ms=6)
        ax.plot(self.shots[self.selected, 2], self.shots[self.selected, 1], "o", mfc="none", mec="magenta", ms=9)
        if near.any():
            vmax = float(np.abs(v[:, 1:]).max()) or 1.0
            scale = 5.0 / vmax  # the longest arrow is 5 mm
            ax.quiver(self.shots[near, 2], self.shots[near, 1], v[near, 2] * scale, v[near, 1] * scale,
                      angles="xy", scale_units="xy", scale=1.0, color="magenta", width=0.012)
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        ax.set_title(f"z = {z0:.1f} mm: dose / rx, -dL/dr'", fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()

    def summary(self) -> dict:
        """Deterministic numbers of the current plan (rounded): metrics, loss and shots."""
        mt = self.metrics
        return {
            "n_shots": int(self.shots.shape[0]),
            "coverage": round(mt["coverage"], 4), "selectivity": round(mt["selectivity"], 4),
            "ci_paddick": round(mt["ci_paddick"], 4), "gi": round(mt["gi"], 3),
            "beam_on_min": round(mt["beam_on_min"], 3), "loss": round(mt["loss"], 6),
        }

    # ------------------------------------------------------------------ optimisation (background)
    def optimise(self, n_iter: int = 40, normalise: bool = True, block: bool = False):
        """Projected gradient descent (eq. 9) from the current plan in a background thread.

        Runs :func:`rtlab.methods.gk.optimize_pgd` (``n_iter`` iterations), then, if
        ``normalise``, scales the times to ``coverage_goal``
        (:func:`~rtlab.methods.gk.normalize_coverage`), and installs the plan. Progress
        goes to :attr:`out`. Returns the job's thread; :meth:`wait` (or ``block=True``) joins it and
        returns :attr:`metrics` of the new plan. A call while one runs is ignored (``out`` says so).
        """
        if self.running:
            self.out.append_stdout("optimisation already running\n")
            return self._jobs[-1]
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be a positive number of iterations, got {n_iter!r}")
        self.error = None
        shots, times = self.shots.copy(), self.times.copy()
        self.optimise_button.disabled = True
        self.out.append_stdout(f"optimising {shots.shape[0]} shots, {int(n_iter)} iterations...\n")

        def cb(k, L):
            if k == 1 or k % 10 == 0:
                self.out.append_stdout(f"  iteration {k}: loss {L:.5f}\n")

        def work():
            try:
                with iso.blas_single_thread():
                    s, t, hist = iso.optimize_pgd(self.problem, shots, times, model=self.model, n_iter=int(n_iter),
                                                  callback=cb)
                if normalise:
                    plan, _ = iso.normalize_coverage(iso.GKPlan(s, t), pk.dose(self.grid, s, t, self.model,
                                                                               indices=self._tidx),
                                                     self.rx, self.coverage_goal)
                    s, t = plan.shots, plan.times
                self.history = list(hist)
                self.set_plan(s, t)
                self.out.append_stdout(f"done: loss {hist[0]:.5f} -> {min(hist):.5f}; CI {self.metrics['ci_paddick']:.3f}\n")
                return self.metrics
            except Exception as exc:  # reported by the job runner, re-raised by wait()
                self.error = exc
                raise

        return self._start_job(work, "optimisation", block=block,
                               done=lambda: setattr(self.optimise_button, "disabled", False))

    # ------------------------------------------------------------------ internals
    def _check_shot(self, i) -> int:
        i = int(i)
        if not 0 <= i < self.shots.shape[0]:
            raise ValueError(f"shot index must be 0..{self.shots.shape[0] - 1}, got {i}")
        return i

    def _shot_options(self):
        return [(f"shot {i}", i) for i in range(self.shots.shape[0])]

    def _guard(self, fn, redraw: bool = False):
        if self._busy:
            return
        fn()
        if redraw:
            self.update()

    def _move_from_sliders(self):
        self.move_shot(self.selected, (self.z_slider.value, self.y_slider.value, self.x_slider.value))

    def _sync_controls(self):
        """Set the widgets from the plan without triggering edits."""
        i = self.selected
        self._busy = True
        try:
            for sl, v in zip((self.z_slider, self.y_slider, self.x_slider), self.shots[i]):
                sl.value = float(v)
            for dd, c in zip(self.sector_select, self.sector_collimators(i)):
                dd.value = c
            dur = self.shot_duration(i)
            self.time_slider.max = max(self.time_slider.max, 2.0 * dur, 1.0)
            self.time_slider.value = dur
        finally:
            self._busy = False

    def _readout_html(self, mt) -> str:
        return ("<b>coverage</b> {coverage:.3f} &nbsp; <b>selectivity</b> {selectivity:.3f} &nbsp; "
                "<b>Paddick CI</b> {ci_paddick:.3f} &nbsp; <b>GI</b> {gi:.2f} &nbsp; "
                "<b>beam-on</b> {beam_on_min:.2f} min &nbsp; <b>loss</b> {loss:.5f} &nbsp; "
                "({n_shots} shots, rx = {rx:g} Gy at {isodose_pct:.0f} % of max)").format(rx=self.rx, **mt)
