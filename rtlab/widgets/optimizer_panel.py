"""OptimizerPanel: run the plan optimisation live, with its settings, and stop it at any time.

A thin layer over :mod:`rtlab.planning`: the panel's settings (objective recipe, per-target
weights, ``w1``/``w2`` of patent 000 eq 7, the sigmoid steepness of eqs 9-10, the stopping
rules of para. 83 / claim 6) become a :class:`~rtlab.planning.PlanProblem` through
:meth:`~rtlab.planning.PlanProblem.with_objective` (same influence matrix, no rebuild), and
:meth:`OptimizerPanel.run` calls :func:`~rtlab.planning.optimise_plan` in a background thread.
:meth:`OptimizerPanel.stop` sets the run's cancel event; the run then ends with the best plan
evaluated so far (status ``'cancelled'``).

While it runs the panel shows, per iteration, the objective and the relaxed and exact ``F``,
``S`` and ``f_C`` (eqs 1-3) of each per-target term, in a table and a small plot of the
objective; the display is refreshed at most every ``update_interval`` seconds.
"""

from __future__ import annotations

import html
import io
import threading
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.case import Case
from ..planning import (CONFORMITY_RECIPE, OBJECTIVES, WARM_STARTS, PlanProblem, optimise_plan, prepare_plan,
                        warm_start)
from .panel import Panel, ipywidgets

__all__ = ["OptimizerPanel"]

#: Events that :meth:`OptimizerPanel.on` accepts.
EVENTS = ("iteration", "finished")

#: Report entries shown per term in the live table.
TABLE_KEYS = ("F", "S", "f_C", "f_C_exact")


def _objective_png(iterations, values, size=(4.0, 2.4)) -> bytes:
    """PNG of the objective against the iteration (log scale when positive)."""
    fig = Figure(figsize=size, dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    v = np.asarray(values, float)
    if v.size:
        ax.plot(iterations, v, "-", color="C0", lw=1.5)
        ax.plot(iterations[-1:], v[-1:], "o", color="C0", ms=4)
        if np.all(v > 0):
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def history_table(records, terms, last: int = 8) -> str:
    """HTML table of the last ``last`` records: iteration, objective and the term reports.

    Parameters
    ----------
    records : list of dict
        History records (:class:`rtlab.optimize.History`).
    terms : list of str
        Term names whose reports (``F``, ``S``, ``f_C``, ``f_C_exact``) get columns.
    """
    recs = [r for r in records if r.get("reports")][-last:]
    head = "<th>it</th><th>objective</th>" + "".join(
        f"<th>{html.escape(t)}<br>{k}</th>" for t in terms for k in TABLE_KEYS)
    rows = []
    for r in recs:
        cells = [f"<td>{r['iteration']}</td>", f"<td>{r['objective']:.5g}</td>"]
        for t in terms:
            rep = r["reports"].get(t, {})
            for k in TABLE_KEYS:
                v = rep.get(k)
                cells.append(f"<td>{v:.3f}</td>" if v is not None else "<td></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    style = "border-collapse:collapse;font-size:11px;text-align:right"
    return f"<table style='{style}'><tr>{head}</tr>{''.join(rows)}</table>"


class OptimizerPanel(Panel):
    """Settings, Run/Stop and a live view of the plan optimisation.

    Parameters
    ----------
    case : rtlab.core.case.Case
    problem : rtlab.planning.PlanProblem, optional
        The problem to optimise (e.g. from the DoseEnginePanel). Without one, :meth:`run`
        first builds it with :func:`rtlab.planning.prepare_plan` from ``prepare_options``.
    viewer : rtlab.widgets.SliceViewer, optional
        Gets the dose of the current iterate (throttled) and the final dose.
    dvh : rtlab.widgets.DVHPlot, optional
        Updated like ``viewer``.
    prepare_options : dict, optional
        Keyword arguments of :func:`~rtlab.planning.prepare_plan` used when there is no problem
        (e.g. ``{'angles': [0, 120, 240], 'dose_grid_mm': 10.0}``).
    update_interval : float
        Seconds between refreshes of the table, plot, viewer and DVH during a run.
    report_every : int
        F/S/f_C reports every this many iterations (1 = every iteration, the live table).
    region_model : RegionModel or path-like, optional
        The dose-region model of the ``'region'`` start (e.g. ``'datasets/region_model_200_l80'``);
        without one the ``start`` menu has no ``'region'`` entry.

    Attributes
    ----------
    objective : ipywidgets.Dropdown
        ``'conformity'`` or ``'quadratic'``.
    start : ipywidgets.Dropdown
        Start point of the run (:func:`rtlab.planning.warm_start`): ``'uniform'`` (the preliminary
        plan), ``'zero'``, ``'target'`` (weights fitted to the targets) or ``'region'`` (fitted to
        the region model's prediction, patent 000 para. 134-136).
    weights : dict term name -> ipywidgets.BoundedFloatText
        Weight of each per-target term (``PlanProblem.target_terms()``; eq 6's ``w_I``).
    split : ipywidgets.Checkbox
        Use the split form (eq 7) with ``w1``, ``w2`` (conformity only).
    w1, w2 : ipywidgets.BoundedFloatText
    steepness : ipywidgets.BoundedFloatText
        ``k`` of ``sigmoid(k (d - d_ref) / d_ref)`` (eqs 9-10; recipe entry ``steepness``).
    objective_threshold, change_threshold : ipywidgets.FloatText
        Stopping rules (0 = off).
    change_window, max_iter : ipywidgets.BoundedIntText
    run_button, stop_button : ipywidgets.Button
    table : ipywidgets.HTML
        Live F, S, f_C per target term and objective per iteration.
    plot : ipywidgets.Image
        Live objective vs iteration.
    progress : ipywidgets.IntProgress
    status : ipywidgets.HTML
    out : ipywidgets.Output
        Live text (start / end of each run, errors of event handlers).
    problem : PlanProblem or None
        The base problem (:meth:`set_problem`).
    run_problem : PlanProblem or None
        The problem the latest run optimised (base problem plus the panel's settings).
    result : rtlab.planning.PlanResult or None
        The latest finished run.
    history : list of dict
        Records of the current / latest run (without ``x``); the complete solver history once
        the run has finished.
    running : bool
    error : BaseException or None
        What the latest run raised, if anything.
    """

    EVENTS = EVENTS

    def __init__(self, case, problem=None, viewer=None, dvh=None, *, prepare_options: dict | None = None,
                 update_interval: float = 0.2, report_every: int = 1, region_model=None):
        if not isinstance(case, Case):
            raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")
        if not update_interval >= 0:
            raise ValueError(f"update_interval must be >= 0 seconds, got {update_interval!r}")
        if int(report_every) < 1:
            raise ValueError(f"report_every must be >= 1 iteration, got {report_every!r}")
        self.case = case
        self.viewer = viewer
        self.dvh = dvh
        self.prepare_options = dict(prepare_options or {})
        self.update_interval = float(update_interval)
        self.report_every = int(report_every)
        self.problem = None
        self.run_problem = None
        self.result = None
        self.history: list[dict] = []
        self.error = None
        self._init_panel("no problem yet", out_height="120px")
        self._cancel = threading.Event()
        self._last_ui = 0.0
        self._x_last = None
        self._lock = threading.Lock()

        lay = ipywidgets.Layout(width="210px")
        style = {"description_width": "110px"}
        # 'matrad' (the file's own cst objectives) only for cases loaded from matRad files
        choices = [o for o in OBJECTIVES if o != "matrad" or "matrad" in getattr(case, "meta", {})]
        self.objective = ipywidgets.Dropdown(options=choices, value="conformity", description="objective",
                                             layout=lay, style=style)
        self.region_model = region_model
        starts = [k for k in WARM_STARTS if k != "region" or region_model is not None]
        self.start = ipywidgets.Dropdown(options=starts, value="uniform", description="start", layout=lay,
                                         style=style)
        self.weights: dict[str, ipywidgets.BoundedFloatText] = {}
        self.weights_box = ipywidgets.VBox()
        self.split = ipywidgets.Checkbox(value=False, description="split F/S (eq 7)", indent=False)
        self.w1 = ipywidgets.BoundedFloatText(value=1.0, min=0.0, max=1e6, step=0.1, description="w1 (F)",
                                              layout=lay, style=style)
        self.w2 = ipywidgets.BoundedFloatText(value=1.0, min=0.0, max=1e6, step=0.1, description="w2 (S)",
                                              layout=lay, style=style)
        self.steepness = ipywidgets.BoundedFloatText(value=CONFORMITY_RECIPE["steepness"], min=0.1, max=1e4,
                                                     step=5.0, description="steepness k", layout=lay, style=style)
        self.objective_threshold = ipywidgets.FloatText(value=0.0, description="obj. threshold", layout=lay,
                                                        style=style)
        self.change_threshold = ipywidgets.FloatText(value=1e-4, description="change thr.", layout=lay, style=style)
        self.change_window = ipywidgets.BoundedIntText(value=5, min=1, max=1000, description="change window",
                                                       layout=lay, style=style)
        self.max_iter = ipywidgets.BoundedIntText(value=100, min=1, max=100000, description="max iterations",
                                                  layout=lay, style=style)
        self.run_button = ipywidgets.Button(description="Run", button_style="success", icon="play")
        self.stop_button = ipywidgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.progress = ipywidgets.IntProgress(value=0, min=0, max=100, description="iterations")
        self.table = ipywidgets.HTML("")
        self.plot = ipywidgets.Image(format="png", value=_objective_png([], []))

        self.run_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self.objective.observe(self._on_objective, names="value")
        self.split.observe(self._sync_enabled, names="value")
        self._sync_enabled()

        settings = ipywidgets.VBox([
            self.objective, self.start, ipywidgets.HTML("<b>weights</b>"), self.weights_box, self.split, self.w1, self.w2,
            self.steepness, ipywidgets.HTML("<b>stopping</b>"), self.objective_threshold, self.change_threshold,
            self.change_window, self.max_iter])
        live = ipywidgets.VBox([ipywidgets.HBox([self.run_button, self.stop_button]), self.progress, self.status,
                                self.plot, self.table])
        super().__init__([ipywidgets.HBox([settings, live]), self.out])
        if problem is not None:
            self.set_problem(problem)

    # -- settings -----------------------------------------------------------------------------
    def set_problem(self, problem) -> None:
        """Use ``problem`` (a PlanProblem) as the base of the next runs; the widgets take its
        objective, per-target weights, ``w1``/``w2`` and steepness."""
        if not isinstance(problem, PlanProblem):
            raise TypeError(f"problem must be an rtlab.planning.PlanProblem (prepare_plan), got {type(problem).__name__}")
        if self.running:
            raise RuntimeError("a run is in progress; stop() and wait() before changing the problem")
        self.case = problem.case
        self.problem = problem
        s = problem.settings
        with self.objective.hold_trait_notifications():
            self.objective.value = s.objective
        self._rebuild_weights(problem)
        if s.objective == "conformity":
            self.steepness.value = float(s.recipe["steepness"])
        self.split.value = s.w1 is not None or s.w2 is not None
        if self.split.value:
            self.w1.value = 1.0 if s.w1 is None else s.w1
            self.w2.value = 1.0 if s.w2 is None else s.w2
        self._set_status(f"ready: {len(problem.angles)} beams, {problem.operator.shape[1]} beamlets, "
                         f"objective {s.objective!r}")

    def _rebuild_weights(self, problem):
        lay = ipywidgets.Layout(width="210px")
        self.weights = {}
        for name in problem.target_terms():
            w = float(problem.objective[name].weight)
            self.weights[name] = ipywidgets.BoundedFloatText(value=w, min=0.0, max=1e6, step=0.1, description=name,
                                                             layout=lay, style={"description_width": "110px"})
        self.weights_box.children = tuple(self.weights.values())

    def _on_objective(self, change):
        if self.problem is not None and change["new"] != self.problem.settings.objective:
            self._rebuild_weights(self.problem.with_objective(objective=change["new"]))
        elif self.problem is not None:
            self._rebuild_weights(self.problem)
        self._sync_enabled()

    def _sync_enabled(self, *_):
        conf = self.objective.value == "conformity"
        self.split.disabled = not conf
        self.w1.disabled = self.w2.disabled = not (conf and self.split.value)
        self.steepness.disabled = not conf

    def solver_settings(self) -> dict:
        """Keyword arguments of :func:`~rtlab.planning.optimise_plan` from the stopping widgets."""
        ot = float(self.objective_threshold.value)
        ct = float(self.change_threshold.value)
        return {"max_iter": int(self.max_iter.value), "change_threshold": ct if ct > 0 else None,
                "change_window": int(self.change_window.value), "objective_threshold": ot if ot > 0 else None}

    def build_problem(self):
        """The problem the next run optimises: the base problem with the panel's objective,
        weights, ``w1``/``w2`` and steepness (:meth:`PlanProblem.with_objective`, no rebuild of
        the influence matrix). Builds the base problem with ``prepare_plan`` when there is none.
        """
        if self.problem is None:
            self._set_status("building the influence matrix ...")
            self.set_problem(prepare_plan(self.case, objective=self.objective.value, **self.prepare_options))
        base = self.problem
        obj = self.objective.value
        same = obj == base.settings.objective
        recipe = dict(base.settings.recipe_overrides or {}) if same else {}
        if obj == "conformity":
            k = float(self.steepness.value)
            if k != CONFORMITY_RECIPE["steepness"] or "steepness" in recipe:
                recipe["steepness"] = k
        weights = {name: float(w.value) for name, w in self.weights.items()}
        split = obj == "conformity" and bool(self.split.value)
        kw = {}
        if not same:  # falloff and control points follow the base problem when they apply
            conf = obj == "conformity"
            kw = {"falloff": base.settings.falloff_gy_per_mm if conf else None,
                  "control_points": base.settings.control_points if conf else False}
        return base.with_objective(objective=obj, recipe=recipe or None, weights=weights or None,
                                   w1=float(self.w1.value) if split else None,
                                   w2=float(self.w2.value) if split else None, **kw)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> threading.Thread:
        """Start an optimisation in a background thread and return it at once (:meth:`wait` joins).

        The problem is :meth:`build_problem` (errors in the settings raise here, before the
        thread starts); the solver settings are :meth:`solver_settings`. ``'iteration'`` fires
        after every iteration, ``'finished'`` with the :class:`~rtlab.planning.PlanResult`.
        """
        if self.running:
            raise RuntimeError("a run is in progress; stop() it or wait() for it first")
        problem = self.build_problem()
        opts = self.solver_settings()
        self.run_problem = problem
        self.history = []
        self.error = None
        self._x_last = None
        self._cancel = threading.Event()
        self._terms = problem.target_terms()
        self.progress.max = opts["max_iter"]
        self.progress.value = 0
        self.run_button.disabled = True
        self.stop_button.disabled = False
        self._t_start = time.perf_counter()
        self._last_ui = 0.0
        self.out.append_stdout(f"run: objective {problem.settings.objective!r}, "
                               f"max_iter {opts['max_iter']}\n")
        self._set_status("running ...")
        cancel = self._cancel
        start = self.start.value
        return self._start_job(lambda: self._work(problem, opts, cancel, start), "optimisation",
                               done=self._buttons_idle)

    def _buttons_idle(self) -> None:
        self.run_button.disabled = False
        self.stop_button.disabled = True

    def stop(self) -> None:
        """Ask the run to stop; it ends with the best plan so far (status ``'cancelled'``)."""
        self._cancel.set()
        if self.running:
            self._set_status("stopping ...")

    def current_dose(self):
        """Dose (Gy, CT grid) of the latest iterate of the run, else of the result, else None."""
        p = self.run_problem
        if p is None:
            return None
        if self._x_last is not None:
            return p.operator.dose_ct(self._x_last)
        return None if self.result is None else self.result.dose

    def _work(self, problem, opts, cancel, start="uniform"):
        try:
            if start != "uniform":
                self.out.append_stdout(f"start: {start}\n")
                problem = warm_start(problem, start, region_model=self.region_model)
                self.run_problem = problem
            res = optimise_plan(problem, callback=self._on_record, cancel_event=cancel,
                                report_every=self.report_every, **opts)
        except Exception as e:  # reported by the job runner (status, out) and wait()
            self.error = e
            raise
        self.result = res
        self.history = list(res.history.records)
        self._x_last = None
        self._refresh(final=True)
        t = res.timings
        ci = res.scores.get("ci_paddick")
        msg = (f"{t['status']} after {t['iterations']} iterations, objective {res.result.objective:.5g}, "
               f"CI {ci:.3f}" if ci is not None else f"{t['status']} after {t['iterations']} iterations")
        self.out.append_stdout(msg + f" ({t['optimize_s']:.1f} s)\n")
        self._set_status(msg)
        self._emit("finished", res)
        return res

    def _on_record(self, rec):
        x = rec.get("x")
        self.history.append({k: v for k, v in rec.items() if k != "x"})
        if x is not None:
            self._x_last = x
        self._emit("iteration", rec)
        now = time.perf_counter()
        if now - self._last_ui >= self.update_interval:
            self._last_ui = now
            self._refresh()
        return False

    def _refresh(self, final: bool = False):
        recs = self.history
        if not recs:
            return
        it = np.array([r["iteration"] for r in recs])
        f = np.array([r["objective"] for r in recs])
        self.progress.value = int(min(it[-1], self.progress.max))
        self.table.value = history_table(recs, getattr(self, "_terms", []))
        self.plot.value = _objective_png(it, f)
        if not final:
            self._set_status(f"running: iteration {int(it[-1])}, objective {f[-1]:.5g}")
        if self.viewer is not None or self.dvh is not None:
            dose = self.result.dose if final and self.result is not None else self.current_dose()
            if dose is not None:
                if self.viewer is not None:
                    self.viewer.set_dose(dose)
                if self.dvh is not None:
                    self.dvh.update(dose)
