"""PlanLab: the whole planning workflow on one screen.

``PlanLab()`` opens a TG-119 C-shape (easy) phantom on a 3 mm grid with five beams and shows

* a **phantom picker** (every :func:`rtlab.phantoms.list_phantoms` entry, voxel size) and a
  **Quick plan** button (compute the dose, optimise, score -- with the current settings);
* a **status line** that says what to do next and what just happened;
* the :class:`SliceViewer` (CT, contours, dose), the :class:`DVHPlot` (dashed: open fields,
  solid: the latest plan) and the **score table** (:func:`rtlab.evaluate.compare.score`: Paddick and
  RTOG CI, GI, HI, coverage and the case's goals, open fields against the optimised plan);
* tabs with the five panels: **Dose engine** (:class:`DoseEnginePanel`), **Falloff**
  (:class:`FalloffPanel`), **Control points** (:class:`ControlPointsPanel`), **Optimiser**
  (:class:`OptimizerPanel`) and **Review** (:class:`ReviewPanel`).

Wiring: the dose engine's ``"computed"`` gives the optimiser its problem (with the falloff and
control-point settings applied through :meth:`rtlab.planning.PlanProblem.with_objective`) and
the viewer the open-field dose; the optimiser's ``"iteration"`` updates the status line and
(throttled) the viewer and the DVH; ``"finished"`` fills the score table and hands the result
to the review panel; falloff / control-point changes re-derive the optimiser's problem without
rebuilding the influence matrix. Changing the phantom starts over with fresh panels.

Everything is reachable from Python: ``lab.quick_plan()`` runs compute + optimise + wait and
returns the :class:`~rtlab.planning.PlanResult`; ``lab.wait()`` joins a background quick plan
and the panels' jobs and returns :attr:`PlanLab.result`; ``lab.load_phantom(name, spacing_mm)``
switches the case; the panels are ``lab.dose_panel``, ``lab.falloff_panel``,
``lab.control_points_panel``, ``lab.optimizer``, ``lab.review``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import phantoms
from ..core.case import Case
from ..evaluate.compare import score
from .control_points_panel import ControlPointsPanel
from .dose_panel import DoseEnginePanel
from .dvh import DVHPlot
from .falloff_panel import FalloffPanel
from .optimizer_panel import OptimizerPanel
from .panel import Panel, esc, ipywidgets
from .review_panel import ReviewPanel
from .slice_viewer import SliceViewer

__all__ = ["PlanLab", "TAB_TITLES", "SPACING_CHOICES", "summary_table"]

#: Titles of the five tabs, in order.
TAB_TITLES = ("Dose engine", "Falloff", "Control points", "Optimiser", "Review")

#: Voxel sizes (mm) the phantom picker offers.
SPACING_CHOICES = (2.0, 2.5, 3.0, 4.0, 5.0)

#: Metric rows of the score table (per target), in order.
_SUMMARY_METRICS = ("CI_paddick", "CI_rtog", "GI", "HI", "coverage", "D95", "D2")

#: Short names some users type for the default phantom.
_ALIASES = {"tg119_c_easy": "tg119_cshape_easy", "tg119_c_hard": "tg119_cshape_hard"}


def summary_table(table):
    """Condense a :func:`rtlab.evaluate.compare.score` table to the rows a planner looks at first.

    Parameters
    ----------
    table : pandas.DataFrame
        Tidy score table (columns ``plan, structure, metric, value, unit, goal, passed, mu``).

    Returns
    -------
    pandas.DataFrame
        Index ``(structure, metric, goal)``; one column per plan (values), plus one
        ``passed: <plan>`` column per plan for the goal rows; a last row ``MU`` when known.
        Rows: for every target the metrics :data:`_SUMMARY_METRICS`, then every goal.
    """
    targets = [s for s in dict.fromkeys(table.loc[table["metric"] == "CI_paddick", "structure"])]
    keep = table["goal"].astype(str).ne("") | (table["structure"].isin(targets) & table["metric"].isin(_SUMMARY_METRICS))
    t = table.loc[keep].copy()
    t["goal"] = t["goal"].astype(str)
    t["unit"] = t["unit"].astype(str)
    order = {m: i for i, m in enumerate(_SUMMARY_METRICS)}
    t["_is_goal"] = t["goal"].ne("")
    t["_ord"] = t["metric"].map(order).fillna(len(order))
    plans = list(dict.fromkeys(t["plan"]))
    key = ["_is_goal", "structure", "_ord", "metric", "unit", "goal"]
    t = t.sort_values(key, kind="stable")
    vals = t.pivot_table(index=key, columns="plan", values="value", aggfunc="first", sort=False)[plans]
    out = vals.copy()
    passed = t[t["_is_goal"]].pivot_table(index=key, columns="plan", values="passed", aggfunc="first", sort=False)
    for p in plans:
        col = passed[p] if p in passed else pd.Series(dtype=object)
        out[f"passed: {p}"] = [col.get(i, pd.NA) if i[0] else pd.NA for i in out.index]
    out.index = pd.MultiIndex.from_tuples([(i[1], i[3] + (f" ({i[4]})" if i[4] else ""), i[5]) for i in out.index],
                                          names=["structure", "metric", "goal"])
    mus = t.groupby("plan", sort=False)["mu"].first()
    if mus.notna().any():
        row = {p: float(mus.get(p, np.nan)) for p in plans}
        row.update({f"passed: {p}": pd.NA for p in plans})
        out.loc[("plan", "MU", ""), :] = pd.Series(row)
    return out


_PAD = ' style="padding:1px 8px"'


def _table_html(df) -> str:
    plans = [c for c in df.columns if not str(c).startswith("passed: ")]
    head = "".join(f"<th{_PAD}>{esc(str(p))}</th>" for p in plans)
    rows = []
    for (s, m, g), r in df.iterrows():
        cells = []
        for p in plans:
            v = r[p]
            ok = r.get(f"passed: {p}")
            txt = "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{float(v):.3g}"
            colour = ""
            if ok is True or ok is np.True_:
                colour, txt = "color:#070;", txt + " &#10003;"
            elif ok is False or ok is np.False_:
                colour, txt = "color:#b00;", txt + " &#10007;"
            cells.append(f'<td style="{colour}padding:1px 8px">{txt}</td>')
        rows.append(f"<tr><td{_PAD}>{esc(str(s))}</td><td{_PAD}>{esc(str(m))}</td>"
                    f"<td{_PAD}>{esc(str(g))}</td>{''.join(cells)}</tr>")
    th = "".join(f"<th{_PAD}>{h}</th>" for h in ("structure", "metric", "goal"))
    return ('<table class="rtlab-score-table" style="border-collapse:collapse;font-size:12px">'
            f"<thead><tr>{th}{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _target_slice(case) -> int:
    ts = [t for t in case.structures.targets if t.mask.any()]
    if not ts:
        return case.grid.shape[0] // 2
    return int(np.argmax(ts[0].mask.sum(axis=(1, 2))))


class PlanLab(Panel):
    """Phantom, viewer, DVH, score table and the five planning panels, wired together.

    Parameters
    ----------
    case : rtlab.core.case.Case, optional
        A case to plan (e.g. from :func:`rtlab.io.load_matrad`); default: build ``phantom``.
    phantom : str
        Built-in phantom (:func:`rtlab.phantoms.list_phantoms`) when ``case`` is None.
    spacing_mm : float
        Voxel size of the phantom (mm, isotropic).
    n_beams : int
        Equispaced coplanar beams of the phantom (the dose engine's default angles).
    bixel_mm : float
        Initial bixel size (mm) of the dose engine.
    dose_grid_mm : float or None
        Initial dose-grid spacing (mm; ``None`` = the CT grid).
    display_size : int
        Longer side of the slice view (CSS pixels).
    region_model : RegionModel or path-like, optional
        Offered as the ``'region'`` start of the Optimiser tab (patent 000, para. 134-136; see
        :func:`rtlab.planning.warm_start`).

    Attributes
    ----------
    case : Case
    viewer : SliceViewer
    dvh : DVHPlot
    score_html : ipywidgets.HTML
        The score table (HTML ``table.rtlab-score-table``).
    scores : pandas.DataFrame or None
        :func:`summary_table` of the open-field and optimised doses.
    tabs : ipywidgets.Tab
        The five panels (titles :data:`TAB_TITLES`).
    dose_panel, falloff_panel, control_points_panel, optimizer, review
        The panels.
    result : PlanResult or None
        The latest finished plan (what :meth:`wait` and :meth:`quick_plan` return).
    status : ipywidgets.HTML
        The status line.
    out : ipywidgets.Output
        Log.
    """

    def __init__(self, case=None, phantom: str = "tg119_cshape_easy", spacing_mm: float = 3.0, n_beams: int = 5,
                 bixel_mm: float = 5.0, dose_grid_mm: float | None = 5.0, display_size: int = 420,
                 region_model=None):
        if case is not None and not isinstance(case, Case):
            raise TypeError(f"case must be an rtlab.core.case.Case or None (then `phantom` is built), got {type(case).__name__}")
        phantom = _ALIASES.get(phantom, phantom)
        if case is None and phantom not in phantoms.list_phantoms():
            raise ValueError(f"unknown phantom {phantom!r}; choose one of {', '.join(phantoms.list_phantoms())}")
        if not (np.isfinite(spacing_mm) and spacing_mm > 0):
            raise ValueError(f"spacing_mm must be a positive voxel size in mm, got {spacing_mm!r}")
        if int(n_beams) != n_beams or n_beams < 1:
            raise ValueError(f"n_beams must be a positive integer, got {n_beams!r}")
        self._n_beams = int(n_beams)
        self._bixel_mm = float(bixel_mm)
        self._dose_grid_mm = dose_grid_mm
        self._display_size = int(display_size)
        self._region_model = region_model
        self._user_case = case
        self._gen = 0
        self._last_live = 0.0
        self.live_interval_s = 2.0  # s between live viewer / DVH updates while optimising
        self._init_panel(out_height="120px")
        self.result = None
        self.scores = None
        self.open_dose = None

        desc = {r["name"]: r["description"].split(".")[0] for r in phantoms.describe_phantoms()}
        options = [(f"{n}  ({desc.get(n, '')})", n) for n in phantoms.list_phantoms()]
        if case is not None:
            options = [(f"your case: {case.name}", "__case__")] + options
        spacings = sorted(set(SPACING_CHOICES) | {float(spacing_mm)})
        self.phantom_select = ipywidgets.Dropdown(options=options, value="__case__" if case is not None else phantom,
                                                  description="phantom", layout=ipywidgets.Layout(width="520px"))
        self.spacing_select = ipywidgets.Dropdown(options=[(f"{s:g} mm", s) for s in spacings], value=float(spacing_mm),
                                                  description="voxel size", layout=ipywidgets.Layout(width="200px"))
        self.quick_button = ipywidgets.Button(description="Quick plan", icon="bolt", button_style="success",
                                              tooltip="compute the dose, optimise and score with the current settings")
        self.quick_button.on_click(lambda _b: self.quick_plan(block=False))
        self.score_html = ipywidgets.HTML("<i>No plan yet: the score table appears after an optimisation.</i>")
        intro = ipywidgets.HTML(
            "<b>rtlab PlanLab</b> &mdash; 1. pick a phantom; 2. <b>Dose engine</b> tab: set beams, "
            "<b>Compute dose</b>; 3. optional <b>Falloff</b> / <b>Control points</b>; 4. <b>Optimiser</b> tab: "
            "<b>Run</b>; 5. <b>Review</b>: accept or edit and re-optimise. <b>Quick plan</b> does 2 and 4 in one go.")
        self._view_box = ipywidgets.HBox()
        self.tabs = ipywidgets.Tab()
        super().__init__([intro, ipywidgets.HBox([self.phantom_select, self.spacing_select, self.quick_button]),
                          self.status, self._view_box, self.tabs, self.out])
        self.add_class("rtlab-planlab")
        if case is not None:
            self._set_case(case)
        else:
            self.load_phantom(phantom, spacing_mm)
        self.phantom_select.observe(self._on_pick, names="value")
        self.spacing_select.observe(self._on_pick, names="value")

    # ------------------------------------------------------------------ case
    def load_phantom(self, name: str, spacing_mm: float | None = None) -> None:
        """Build phantom ``name`` (voxel size ``spacing_mm``, default the picker's) and start over.

        Stops a running optimisation; the panels, viewer, DVH and score table are rebuilt.
        """
        name = _ALIASES.get(name, name)
        sp = float(self.spacing_select.value if spacing_mm is None else spacing_mm)
        self._set_status(f"Building phantom <b>{esc(name)}</b> at {sp:g} mm...")
        case = phantoms.get_phantom(name, spacing=sp, n_beams=self._n_beams)
        self._quiet_pick(name, sp)
        self._set_case(case)

    def set_case(self, case) -> None:
        """Plan another :class:`~rtlab.core.case.Case` (starts over, like picking a phantom)."""
        if not isinstance(case, Case):
            raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")
        self._user_case = case
        opts = [o for o in self.phantom_select.options if o[1] != "__case__"]
        self._quiet = True
        try:
            self.phantom_select.options = [(f"your case: {case.name}", "__case__")] + opts
            self.phantom_select.value = "__case__"
        finally:
            self._quiet = False
        self._set_case(case)

    _quiet = False

    def _quiet_pick(self, name, sp):
        self._quiet = True
        try:
            self.phantom_select.value = name
            if sp not in [v for _, v in self.spacing_select.options]:
                self.spacing_select.options = list(self.spacing_select.options) + [(f"{sp:g} mm", sp)]
            self.spacing_select.value = sp
        finally:
            self._quiet = False

    def _on_pick(self, _change) -> None:
        if self._quiet:
            return
        v = self.phantom_select.value
        try:
            if v == "__case__":
                self._set_case(self._user_case)
            else:
                self.load_phantom(v, self.spacing_select.value)
        except (ValueError, TypeError) as e:
            self._set_status(esc(e), error=True)
            self.out.append_stderr(f"{e}\n")

    def _set_case(self, case) -> None:
        old = getattr(self, "optimizer", None)
        if old is not None and getattr(old, "running", False):
            old.stop()
        self._gen += 1
        gen = self._gen
        self.case = case
        self.result = None
        self.scores = None
        self.open_dose = None
        self.viewer = SliceViewer(case.ct, case.grid, case.structures, slice_index=_target_slice(case),
                                  display_size=self._display_size)
        self.dvh = DVHPlot(case.grid, case.structures, keep_reference=True, size=(5.0, 3.2),
                           title="DVH (dashed: open fields)")
        self.score_html.value = "<i>No plan yet: the score table appears after an optimisation.</i>"
        self.dose_panel = DoseEnginePanel(case, viewer=self.viewer, bixel_mm=self._bixel_mm,
                                          dose_grid_mm=self._dose_grid_mm)
        self.falloff_panel = FalloffPanel(case, viewer=self.viewer)
        self.control_points_panel = ControlPointsPanel(case, viewer=self.viewer)
        # the optimiser shows the current iterate on the viewer and the DVH itself (throttled)
        self.optimizer = OptimizerPanel(case, viewer=self.viewer, dvh=self.dvh, update_interval=self.live_interval_s,
                                        region_model=self._region_model)
        self.review = ReviewPanel()

        def guard(fn):
            return lambda payload: fn(payload) if gen == self._gen else None

        self.dose_panel.on("computed", guard(self._on_computed))
        self.falloff_panel.on("changed", guard(self._on_objective_change))
        self.control_points_panel.on("changed", guard(self._on_objective_change))
        self.optimizer.on("iteration", guard(self._on_iteration))
        self.optimizer.on("finished", guard(self._on_finished))
        for ev in ("accepted", "reoptimised", "edited"):
            self.review.on(ev, guard(lambda p, ev=ev: self._on_review(ev, p)))
        self._view_box.children = [self.viewer, ipywidgets.VBox([self.dvh, self.score_html])]
        self.tabs.children = [self.dose_panel, self.falloff_panel, self.control_points_panel, self.optimizer,
                              self.review]
        for i, t in enumerate(TAB_TITLES):
            self.tabs.set_title(i, t)
        self.tabs.selected_index = 0
        n = len(self.dose_panel.settings()["angles"])
        self._set_status(f"Loaded <b>{esc(case.name)}</b> ({' x '.join(map(str, case.grid.shape))} voxels "
                         f"of {' x '.join(f'{s:g}' for s in case.grid.spacing)} mm, {n} beams). Next: "
                         "<b>Compute dose</b> in the Dose engine tab, or <b>Quick plan</b>.")

    # ------------------------------------------------------------------ wiring
    def _derived_problem(self, problem):
        """``problem`` with the falloff and control-point settings of the panels applied.

        Uses :meth:`rtlab.planning.PlanProblem.with_objective` (same influence matrix and
        operator); returns ``problem`` itself when nothing changes.
        """
        s = problem.settings
        if s.objective != "conformity":
            return problem
        fo = self.falloff_panel.falloff
        cp = bool(self.control_points_panel.enabled)
        fo_rec = dict(getattr(self.falloff_panel, "recipe", {}) or {})
        # the control-point panel owns its recipe entries (D2/D1, weight, find settings): the
        # base problem's values of them are dropped, the panel's (incl. control_point_find) used
        cp_keys = set(getattr(self.control_points_panel, "RECIPE_KEYS", ()))
        cp_rec = dict(getattr(self.control_points_panel, "recipe", {}) or {}) if cp else {}
        rec = {k: v for k, v in (s.recipe_overrides or {}).items()
               if k not in fo_rec and k not in cp_rec and k not in cp_keys}
        if fo is not None:
            rec.update(fo_rec)
        if cp:
            rec.update(cp_rec)
        same = (fo == s.falloff_gy_per_mm and cp == bool(s.control_points)
                and rec == dict(s.recipe_overrides or {}))
        if same:
            return problem
        return problem.with_objective(falloff=fo, control_points=cp, recipe=rec or None)

    def _on_computed(self, problem) -> None:
        self.open_dose = self.dose_panel.dose
        self.dvh.reference_dvhs = {}
        self.dvh.update(self.open_dose)
        self.control_points_panel.set_dose(self.open_dose)
        self.optimizer.set_problem(self._derived_problem(problem))
        self._set_status(f"Dose engine done ({problem.operator.shape[1]} beamlets). The viewer shows the open "
                         "fields. Next: <b>Run</b> in the Optimiser tab.")

    def _on_objective_change(self, _payload) -> None:
        base = self.dose_panel.problem
        if base is None:
            return
        try:
            self.optimizer.set_problem(self._derived_problem(base))
            fo = self.falloff_panel.falloff
            self._set_status("Objective updated (falloff "
                             + ("off" if fo is None else f"{fo:g} Gy/mm") + ", control points "
                             + ("on" if self.control_points_panel.enabled else "off")
                             + "); no dose rebuild needed. Run the optimiser again.")
        except (ValueError, TypeError, RuntimeError) as e:
            self._set_status(esc(e), error=True)

    def _on_iteration(self, rec) -> None:
        it, f = rec.get("iteration"), rec.get("objective")
        now = time.monotonic()
        if now - self._last_live < self.live_interval_s:
            return
        self._last_live = now
        self._set_status(f"Optimising: iteration {it}, objective {f:.4g}" if f is not None else
                         f"Optimising: iteration {it}")

    def _on_finished(self, result) -> None:
        self.result = result
        if getattr(result, "dose", None) is None:
            return
        self.viewer.set_dose(result.dose)
        self.dvh.update(result.dose)
        self._update_scores(result.dose, getattr(result, "mu_total", None))
        self.review.set_result(result)
        ci = result.scores.get("ci_paddick")
        status = result.timings.get("status", "")
        self._set_status(f"Plan ready: Paddick CI {ci:.3f}, {result.iterations} iterations ({status}). "
                         "See the score table; <b>Review</b> to accept or edit.")

    def _on_review(self, event, payload) -> None:
        if event == "accepted":
            self._set_status("Plan <b>accepted</b> (see the Review tab's decision log).")
            return
        dose = getattr(payload, "dose", None)  # a PlanResult
        if dose is None:
            return
        self.viewer.set_dose(dose)
        self.dvh.update(dose)
        name = "edited" if event == "edited" else "re-optimised"
        self._update_scores(dose, getattr(payload, "mu_total", None), name=name, keep_optimised=True)
        ci = payload.scores.get("ci_paddick")
        self._set_status(f"{name.capitalize()} plan shown (Paddick CI {ci:.3f}); the score table compares it "
                         "with the optimised plan. <b>Accept</b> it in the Review tab.")

    def _update_scores(self, dose, mu=None, name: str = "optimised", keep_optimised: bool = False) -> None:
        plans = {}
        if self.open_dose is not None:
            plans["open fields"] = {"dose": self.open_dose}
        if keep_optimised and self.result is not None:
            plans["optimised"] = {"dose": self.result.dose, "mu": self.result.mu_total}
        plans[name] = {"dose": dose, "mu": mu} if mu is not None else {"dose": dose}
        table = score(plans, self.case)
        self.score_table = table
        self.scores = summary_table(table)
        self.score_html.value = _table_html(self.scores)

    def _set_status(self, text: str, error: bool = False) -> None:
        """The status line (``text`` is HTML; ``error=True``: in red)."""
        if error:
            text = f'<span style="color:#b00">{text}</span>'
        self.status.value = f'<div class="rtlab-planlab-status">{text}</div>'

    # ------------------------------------------------------------------ one-call workflow
    def quick_plan(self, block: bool = True, timeout: float | None = None):
        """Compute the dose and optimise with the panels' current settings; fill the score table.

        Parameters
        ----------
        block : bool
            Wait for the plan (notebooks, tests). ``False`` runs it in a background thread
            (the **Quick plan** button; a second request while one runs is ignored) and
            returns None; :meth:`wait` joins it.
        timeout : float, optional
            Seconds to wait for each of the two steps.

        Returns
        -------
        PlanResult or None
            The optimised plan (``block=True``).

        Raises
        ------
        RuntimeError
            The dose computation or the optimisation failed (the status line says why).
        """
        if not block:
            self._start_job(lambda: self._quick(timeout), "quick plan", when_busy="ignore")
            return None
        if self.running:
            raise RuntimeError("a quick plan is in progress; wait() for it first")
        try:
            return self._quick(timeout)
        except Exception as e:
            self._job_failed("quick plan", e)
            raise

    def _quick(self, timeout=None):
        try:
            self.quick_button.disabled = True
            self.tabs.selected_index = 0
            self.dose_panel.compute()
            self.dose_panel.wait(timeout)  # TimeoutError, or RuntimeError when it failed
            if self.dose_panel.problem is None:
                raise RuntimeError("the dose computation produced no problem")
            self.tabs.selected_index = 3
            self.optimizer.run()
            self.optimizer.wait(timeout)  # TimeoutError, or RuntimeError when the run failed
            if self.optimizer.result is not None and self.result is not self.optimizer.result:
                self._on_finished(self.optimizer.result)  # in case the event fired after wait()
            return self.result
        finally:
            self.quick_button.disabled = False

    def wait(self, timeout: float | None = None, raise_error: bool = True):
        """Join a background quick plan, then the dose panel's and the optimiser's jobs.

        Returns :attr:`result` (the latest finished plan, or None), as every panel's
        ``wait()`` does; ``timeout`` (s) bounds the three waits together.

        Raises
        ------
        TimeoutError
            Something still runs after ``timeout`` seconds.
        RuntimeError
            A quick plan, dose computation or optimisation failed since the last ``wait()``
            (``raise_error=True``).
        """
        t0 = time.monotonic()

        def left():
            return None if timeout is None else max(0.0, timeout - (time.monotonic() - t0))

        super().wait(left(), raise_error=raise_error)
        self.dose_panel.wait(left(), raise_error=raise_error)
        self.optimizer.wait(left(), raise_error=raise_error)
        return self.result

    def __repr__(self) -> str:
        ci = None if self.result is None else self.result.scores.get("ci_paddick")
        return f"PlanLab({self.case.name!r}, grid {self.case.grid.shape}, plan CI={ci})"
