"""ReviewPanel: accept, edit or re-optimise a plan (patent 000, para. 101, claim 12).

A thin layer over :meth:`rtlab.planning.PlanResult.review`, which opens a
:class:`rtlab.optimize.PlanSession` on an optimised plan. The user confirms the plan
(:meth:`ReviewPanel.accept`), modifies term weights (:meth:`ReviewPanel.edit`) or asks for the
optimisation to run again from the preliminary or the optimised parameters
(:meth:`ReviewPanel.reoptimise`, in a background thread). Every decision is in the session's log,
shown as a table.
"""

from __future__ import annotations

import datetime
import html
from typing import Mapping

from ..planning import PlanResult
from .panel import Panel, ipywidgets

__all__ = ["ReviewPanel"]

#: Events that :meth:`ReviewPanel.on` accepts.
EVENTS = ("accepted", "reoptimised", "edited")


def log_table(log) -> str:
    """HTML table of a :class:`~rtlab.optimize.PlanSession` decision log."""
    rows = []
    for i, e in enumerate(log, 1):
        when = datetime.datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S")
        detail = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in e.items() if k not in ("action", "time") and v not in ({}, None, False))
        rows.append(f"<tr><td>{i}</td><td>{when}</td><td><b>{html.escape(e['action'])}</b></td>"
                    f"<td style='text-align:left'>{html.escape(detail)}</td></tr>")
    style = "border-collapse:collapse;font-size:11px"
    return (f"<table style='{style}'><tr><th>#</th><th>time</th><th>action</th><th>details</th></tr>"
            f"{''.join(rows)}</table>")


class ReviewPanel(Panel):
    """Accept / Edit / Re-optimise buttons, term-weight editor and the decision log.

    Parameters
    ----------
    result : rtlab.planning.PlanResult, optional
        The optimised plan to review (:meth:`set_result`).
    solver_options : dict, optional
        Solver settings of the session's re-optimisations (e.g. ``{'max_iter': 20}``), on top
        of those of the plan's run.

    Attributes
    ----------
    plan : PlanResult or None
        The plan under review (as given to :meth:`set_result`).
    session : rtlab.optimize.PlanSession or None
    current : PlanResult or None
        The session's current plan as a PlanResult (dose, MU, scores on the CT grid).
    accepted : PlanResult or None
        Set by :meth:`accept`.
    weights : dict term name -> ipywidgets.BoundedFloatText
        One weight per objective term (the session's copy of the objective).
    start : ipywidgets.ToggleButtons
        ``'preliminary'`` or ``'optimised'``: where the Re-optimise button starts.
    accept_button, edit_button, reoptimise_button : ipywidgets.Button
    log_view : ipywidgets.HTML
        The decision log table.
    status : ipywidgets.HTML
    out : ipywidgets.Output
    running : bool
    error : BaseException or None
    """

    EVENTS = EVENTS

    def __init__(self, result=None, *, solver_options: Mapping | None = None):
        self.solver_options = dict(solver_options or {})
        self.plan = None
        self.session = None
        self.current = None
        self.accepted = None
        self.error = None
        self._init_panel("no plan to review", out_height="120px")
        self.weights: dict[str, ipywidgets.BoundedFloatText] = {}
        self.weights_box = ipywidgets.VBox()
        self.start = ipywidgets.ToggleButtons(options=["optimised", "preliminary"], value="optimised",
                                              description="start from")
        self.accept_button = ipywidgets.Button(description="Accept", button_style="success", icon="check")
        self.edit_button = ipywidgets.Button(description="Apply edit", icon="pencil")
        self.reoptimise_button = ipywidgets.Button(description="Re-optimise", button_style="warning", icon="refresh")
        self.summary = ipywidgets.HTML("")
        self.log_view = ipywidgets.HTML(log_table([]))
        self.accept_button.on_click(lambda _b: self.accept())
        self.edit_button.on_click(lambda _b: self.edit())
        self.reoptimise_button.on_click(lambda _b: self.reoptimise(self.start.value))
        super().__init__([
            self.status, self.summary,
            ipywidgets.HBox([ipywidgets.VBox([ipywidgets.HTML("<b>term weights</b>"), self.weights_box]),
                             ipywidgets.VBox([self.start,
                                              ipywidgets.HBox([self.accept_button, self.edit_button,
                                                               self.reoptimise_button]),
                                              ipywidgets.HTML("<b>decision log</b>"), self.log_view])]),
            self.out])
        self._enable(False)
        if result is not None:
            self.set_result(result)

    # -- state --------------------------------------------------------------------------------
    @property
    def result(self):
        """What :meth:`wait` returns: the plan under review now (:attr:`current`, a PlanResult)."""
        return self.current

    @result.setter
    def result(self, value):
        self.current = value

    def _need_session(self):
        if self.session is None:
            raise RuntimeError("no plan to review; call set_result(plan) with a PlanResult first")
        if self.running:
            raise RuntimeError("a re-optimisation is running; wait() for it first")

    def _enable(self, on: bool):
        for b in (self.accept_button, self.edit_button, self.reoptimise_button):
            b.disabled = not on

    def set_result(self, result) -> None:
        """Review ``result`` (a PlanResult): open ``result.review(**solver_options)``."""
        if not isinstance(result, PlanResult):
            raise TypeError(f"result must be an rtlab.planning.PlanResult, got {type(result).__name__}")
        if self.running:
            raise RuntimeError("a re-optimisation is running; wait() for it before reviewing another plan")
        self.plan = result
        self.session = result.review(**self.solver_options)
        self.current = result
        self.accepted = None
        lay = ipywidgets.Layout(width="230px")
        self.weights = {
            t.name: ipywidgets.BoundedFloatText(value=float(t.weight), min=0.0, max=1e9, description=t.name,
                                                layout=lay, style={"description_width": "130px"})
            for t in self.session.objective}
        self.weights_box.children = tuple(self.weights.values())
        self._enable(True)
        self._show()

    def _show(self):
        s = self.session
        self.log_view.value = log_table(s.log)
        p = self.current
        ci = p.scores.get("ci_paddick") if p is not None else None
        f = s.result.objective if s.result is not None else s.preliminary.objective
        ci_txt = f", CI {ci:.3f}" if ci is not None else ""
        self.status.value = f"state <b>{s.state}</b>, objective {f:.5g}{ci_txt}"
        if p is not None:
            self.summary.value = (f"{len(p.angles)} beams, {p.iterations} iterations ({p.timings['status']}), "
                                  f"MU {p.mu_total:.0f}")

    # -- actions ------------------------------------------------------------------------------
    def accept(self):
        """Confirm the current plan (:meth:`PlanSession.accept`); returns it as a PlanResult and
        fires ``'accepted'``."""
        self._need_session()
        r = self.session.accept()
        self.current = self.plan.with_result(r, objective=self.session.objective)
        self.accepted = self.current
        self.out.append_stdout(f"accepted: objective {r.objective:.5g}\n")
        self._show()
        self._emit("accepted", self.accepted)
        return self.accepted

    def edit(self, weights: Mapping[str, float] | None = None, doses: Mapping[str, float] | None = None):
        """Modify term weights / dose levels (:meth:`PlanSession.edit`).

        Without arguments the changed weight widgets are applied. The widgets follow the
        session's objective afterwards. Returns the re-evaluated plan (OptimizationResult,
        status ``'edited'``) and fires ``'edited'``.
        """
        self._need_session()
        if weights is None and doses is None:
            weights = {n: float(w.value) for n, w in self.weights.items()
                       if float(w.value) != float(self.session.objective[n].weight)}
            if not weights:
                raise ValueError("no weight was changed; set a weight widget or pass weights={term: value}")
        r = self.session.edit(weights=weights, doses=doses)
        for n, w in self.weights.items():
            w.value = float(self.session.objective[n].weight)
        self.current = self.plan.with_result(r, objective=self.session.objective)
        self.out.append_stdout(f"edited: {dict(weights or {})} {dict(doses or {})}\n")
        self._show()
        self._emit("edited", self.current)
        return r

    def reoptimise(self, start: str = "optimised") -> None:
        """Re-optimise from ``'optimised'`` or ``'preliminary'`` in a background thread.

        Returns at once; :meth:`wait` joins the run and returns the new PlanResult, which
        ``'reoptimised'`` also carries.
        """
        self._need_session()
        if start not in ("preliminary", "optimised"):
            raise ValueError(f"start must be 'preliminary' or 'optimised', got {start!r}")
        self.error = None
        self._enable(False)
        self.status.value = f"re-optimising from the {start} plan ..."
        self._start_job(lambda: self._work(start), "re-optimisation", done=lambda: self._enable(True))

    def stop(self) -> None:
        """Cancel a running re-optimisation (it keeps the best point so far)."""
        if self.session is not None:
            self.session.cancel()

    def _work(self, start):
        try:
            r = self.session.reoptimise(start=start)
        except Exception as e:
            self.error = e
            raise
        self.current = self.plan.with_result(r, objective=self.session.objective)
        self.out.append_stdout(f"re-optimised from the {start} plan: {r.status}, objective {r.objective:.5g}\n")
        self._show()
        self._emit("reoptimised", self.current)
        return self.current
