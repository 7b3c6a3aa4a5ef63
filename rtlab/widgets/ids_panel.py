"""IDSPanel: interactive dose shaping in the notebook (paper 004, Ziegenhein et al. 2016).

A thin layer over :class:`rtlab.methods.ids.IDSSession`. The planner clicks a voxel on the
:class:`~rtlab.widgets.SliceViewer`, types a dose (Gy or % of the prescription) and presses
*Apply to selected voxel*, drags an isodose line on the slice, or pushes an isodose surface in 3D
(a point picked in the 3D view of :meth:`IDSPanel.show_3d` or on a slice, the surface level, the push
in mm and the region's radius: *Push isodose surface*); the session's modification
(Algorithm 1, eqs 1-3) and recovery (section 2.3) run in a background thread, then the dose
colourwash and isodose lines, the :class:`~rtlab.widgets.DVHPlot` and the score table
(:func:`rtlab.evaluate.compare.score`: Paddick CI, coverage, D95, organ mean ...) are redrawn.
Undo / redo step through the session's history; *export plan* writes the fluence maps, the
bixel weights of :meth:`IDSSession.to_plan` and the dose to an ``.npz`` file.

The panel holds no algorithm: every button is a public method (:meth:`IDSPanel.request_voxel`,
:meth:`IDSPanel.request_isodose`, :meth:`IDSPanel.request_surface`, :meth:`IDSPanel.pick_surface_point`,
:meth:`IDSPanel.recover`, :meth:`IDSPanel.undo`,
:meth:`IDSPanel.redo`, :meth:`IDSPanel.export_plan`) that checks its input with the session's
own checks (so a bad request raises the library's error at once, and the status line shows
it), then queues the library call. Jobs run one after another in a daemon thread, in the
order they were asked for; :meth:`IDSPanel.wait` joins them and returns the dose they left
(:attr:`IDSPanel.result`), as every panel's ``wait()`` does (:mod:`rtlab.widgets.panel`).

Size: over 600 lines because the panel's five requests (voxel, isodose line, isodose surface,
recovery, undo/redo) each check their input and queue their job here, next to the controls they
read; the algorithms are in :mod:`rtlab.methods.ids`.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np

from ..core.case import Case
from ..evaluate.compare import score
from ..io.npz import save_npz
from .._lazy import load
from ..methods.ids import IDSSession, isodose_surface_request
from .dvh import DVHPlot
from .panel import Panel, esc, ipywidgets
from .slice_viewer import SliceViewer
from .view3d import View3D

traitlets = load("traitlets", extra="lab", purpose="IDSPanel's surface point")

__all__ = ["IDSPanel", "SCORE_ROWS"]

#: Rows of the score table: (structure kind, metric of :func:`rtlab.evaluate.compare.score`).
SCORE_ROWS = (
    ("target", "CI_paddick"), ("target", "coverage"), ("target", "D98"), ("target", "D95"),
    ("target", "Dmean"), ("oar", "Dmean"), ("oar", "D2"), ("oar", "Dmax"),
)


class IDSPanel(Panel):
    """Slice view, DVH, scores and request controls over an interactive dose shaping session.

    Parameters
    ----------
    session : rtlab.methods.ids.IDSSession or rtlab.core.case.Case
        The session to drive; a :class:`~rtlab.core.case.Case` starts a new one with
        ``IDSSession(case, **session_kwargs)``.
    slice_index : int, optional
        Axial slice shown first (default: the slice through the centre of the organs at
        risk, else of the targets).
    isodose_levels_pct : sequence of float
        Isodose lines in % of ``session.reference_gy`` (paper 004: 55, 95, 107 %).
    request_pct : float
        Initial value of the requested-dose field (in %).
    score_level_pct : float
        Isodose (% of ``session.reference_gy``) of the conformity rows of the score table
        (Paddick CI, coverage); default 95 %, the paper's criterion.
    display_size : int
        Longer side of the slice view in CSS pixels.
    dvh_bins : int
        Dose points per DVH curve.
    **session_kwargs
        Passed to :class:`~rtlab.methods.ids.IDSSession` when ``session`` is a case.

    Attributes
    ----------
    session : IDSSession
    viewer : SliceViewer
        Click a voxel (``selected_voxel``), drag an isodose line (an isodose request).
    dvh : DVHPlot
        Dashed: the session's starting dose; solid: the current dose.
    dose : ndarray
        The displayed dose cube (Gy), a copy of ``session.dose`` after the latest job.
    scores : pandas.DataFrame
        :func:`rtlab.evaluate.compare.score` of the current dose (all rows); ``scores_start`` the same
        for the dose the panel started with.
    dose_input : ipywidgets.FloatText
        Requested dose, in the unit of ``unit_input`` (``'%'`` of ``reference_gy`` or ``'Gy'``).
    steps_input : ipywidgets.BoundedIntText
        Recovery steps after a request (and for *Recover more*).
    status : ipywidgets.HTML
        One status line; errors in red. ``last_error`` holds the latest error text.
    out : ipywidgets.Output
        One line per finished job (``output`` is its old name).
    result : ndarray
        What :meth:`wait` returns: :attr:`dose` after the latest job.
    running : bool
        True while a job is queued or running (``busy`` is its old name).
    plan : rtlab.dose.Plan or None
        The latest exported plan (:meth:`export_plan`).
    """

    #: Picked point of the isodose-surface request, world ``(z, y, x)`` mm (``[]``: none). Set by a
    #: click in the 3D view (:meth:`show_3d`), by :meth:`pick_surface_point` (the voxel selected on
    #: the slice, in any of the viewer's three orientations) or from Python.
    surface_point = traitlets.List(traitlets.Float(), default_value=[])

    def __init__(self, session, *, slice_index: int | None = None, isodose_levels_pct=(55.0, 95.0, 107.0),
                 request_pct: float = 55.0, score_level_pct: float = 95.0, display_size: int = 420,
                 dvh_bins: int = 200, **session_kwargs):
        if isinstance(session, Case):
            session = IDSSession(session, **session_kwargs)
        elif session_kwargs:
            raise TypeError(f"session_kwargs {sorted(session_kwargs)} only apply when a Case is given, not a session")
        if not isinstance(session, IDSSession):
            raise TypeError(f"session must be an rtlab.methods.ids.IDSSession or a Case, got {type(session).__name__}")
        self.session = session
        case = session.case
        ref = session.reference_gy
        if slice_index is None:
            m = session.oar_mask if session.oar_mask.any() else session.target_mask
            slice_index = int(np.round(np.mean(np.nonzero(m)[0])))
        if not (np.isfinite(score_level_pct) and score_level_pct > 0):
            raise ValueError(f"score_level_pct must be a positive percentage, got {score_level_pct!r}")
        self.score_level_gy = score_level_pct / 100.0 * ref
        self._init_panel("ready", out_height="160px")
        self._lock = threading.Lock()  # held while a job runs the session
        self._step_total = 0
        self.last_error = ""
        self.plan = None
        self.n_jobs = 0

        self.dose = np.array(session.dose)
        self.viewer = SliceViewer(case.ct, case.grid, case.structures, dose=self.dose,
                                  isodose_levels=tuple(isodose_levels_pct), reference_dose=ref,
                                  dose_max=1.2 * ref, slice_index=slice_index, display_size=display_size)
        structs = [s for s in case.structures.values() if s.kind != "body" and s.mask.any()]
        self.dvh = DVHPlot(case.grid, structs, dose=self.dose, bins=dvh_bins, keep_reference=True, size=(5.2, 3.2),
                           title="DVH (dashed: start)")
        self.scores_start = self._score(self.dose)
        self.scores = self.scores_start
        self.score_table = ipywidgets.HTML()

        lay = ipywidgets.Layout(width="auto")
        self.selected_label = ipywidgets.HTML("<i>click a voxel on the slice</i>")
        self.dose_input = ipywidgets.FloatText(value=float(request_pct), description="requested",
                                               layout=ipywidgets.Layout(width="190px"))
        self.unit_input = ipywidgets.Dropdown(options=["%", "Gy"], value="%", layout=ipywidgets.Layout(width="70px"))
        self.steps_input = ipywidgets.BoundedIntText(value=session.recovery_steps, min=0, max=1000,
                                                     description="recovery steps",
                                                     layout=ipywidgets.Layout(width="190px"),
                                                     style={"description_width": "initial"})
        self.apply_button = ipywidgets.Button(description="Apply to selected voxel", button_style="primary", layout=lay)
        self.recover_button = ipywidgets.Button(description="Recover more", layout=lay)
        self.undo_button = ipywidgets.Button(description="Undo", icon="undo", layout=lay)
        self.redo_button = ipywidgets.Button(description="Redo", icon="repeat", layout=lay)
        self.export_path = ipywidgets.Text(value="ids_plan.npz", description="file",
                                           layout=ipywidgets.Layout(width="230px"))
        self.export_button = ipywidgets.Button(description="Export plan", icon="save", layout=lay)
        self.progress = ipywidgets.IntProgress(value=0, min=0, max=1, description="recovery",
                                               layout=ipywidgets.Layout(width="320px"),
                                               style={"description_width": "initial"})

        fw = ipywidgets.Layout(width="190px")
        self.surface_level_input = ipywidgets.FloatText(value=float(request_pct), description="surface %",
                                                        layout=fw)
        self.surface_shift_input = ipywidgets.FloatText(value=-3.0, description="push (mm)", layout=fw)
        self.surface_radius_input = ipywidgets.FloatText(value=10.0, description="radius (mm)", layout=fw)
        self.surface_label = ipywidgets.HTML("<i>no surface point picked</i>")
        self.pick_button = ipywidgets.Button(description="Surface point = selected voxel", layout=lay)
        self.surface_button = ipywidgets.Button(description="Push isodose surface", layout=lay)
        self.view3d = None
        self.last_surface = None
        self.pick_button.on_click(lambda _b: self._from_ui(self.pick_surface_point))
        self.surface_button.on_click(lambda _b: self._from_ui(self.request_surface))
        self.observe(self._on_surface_point, names="surface_point")

        self.apply_button.on_click(lambda _b: self._from_ui(self.request_voxel))
        self.recover_button.on_click(lambda _b: self._from_ui(self.recover))
        self.undo_button.on_click(lambda _b: self._from_ui(self.undo))
        self.redo_button.on_click(lambda _b: self._from_ui(self.redo))
        self.export_button.on_click(lambda _b: self._from_ui(self.export_plan))
        self.viewer.observe(self._on_select, names="selected_voxel")
        self.viewer.on_isodose_edit(self._on_isodose_edit)
        session.add_callback(self._on_event)

        controls = ipywidgets.VBox([
            self.selected_label,
            ipywidgets.HBox([self.dose_input, self.unit_input]),
            self.steps_input,
            ipywidgets.HBox([self.apply_button, self.recover_button]),
            ipywidgets.HBox([self.undo_button, self.redo_button]),
            ipywidgets.HBox([self.export_path, self.export_button]),
            ipywidgets.HTML("<b>isodose surface (3D)</b>"),
            ipywidgets.HBox([self.surface_level_input, self.surface_shift_input]),
            self.surface_radius_input,
            ipywidgets.HBox([self.pick_button, self.surface_button]),
            self.surface_label,
            self.progress,
            self.status,
            ipywidgets.HTML("<small>drag an isodose line on the slice to move it "
                            "(its voxels get the line's dose)</small>"),
        ], layout=ipywidgets.Layout(min_width="330px"))
        title = ipywidgets.HTML(f"<b>Interactive dose shaping</b> (paper 004) &mdash; {esc(case.name)}, "
                                f"100 % = {ref:g} Gy, {session.n_beams} beams")
        super().__init__([title, ipywidgets.HBox([self.viewer, controls]),
                          ipywidgets.HBox([self.dvh, self.score_table]), self.out])
        self._show_scores()
        self._update_buttons()

    # ------------------------------------------------------------------ helpers
    @property
    def reference_gy(self) -> float:
        """100 % dose (Gy) of the session."""
        return self.session.reference_gy

    @property
    def result(self) -> np.ndarray:
        """What :meth:`wait` returns: the displayed dose (Gy) after the latest job (:attr:`dose`)."""
        return self.dose

    @property
    def busy(self) -> bool:
        """Old name of :attr:`running` (kept for one release)."""
        warnings.warn("IDSPanel.busy is now IDSPanel.running", DeprecationWarning, stacklevel=2)
        return self.running

    @property
    def output(self):
        """Old name of :attr:`out` (kept for one release)."""
        warnings.warn("IDSPanel.output is now IDSPanel.out", DeprecationWarning, stacklevel=2)
        return self.out

    @property
    def selected_index(self) -> tuple | None:
        """``(z, y, x)`` of the voxel selected on the viewer, or None."""
        sel = self.viewer.selected_voxel
        if not sel or "index" not in sel:
            return None
        return tuple(int(v) for v in sel["index"])

    def to_gy(self, value: float, unit: str = "%") -> float:
        """A dose in ``unit`` ('%' of :attr:`reference_gy` or 'Gy') in Gy."""
        if unit not in ("%", "Gy"):
            raise ValueError(f"unit must be '%' or 'Gy', got {unit!r}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"dose must be a number, got {value!r}") from None
        return v / 100.0 * self.reference_gy if unit == "%" else v

    def _fail(self, exc: BaseException):
        """Show a refused request in the status line (and :attr:`last_error`); returns ``exc``."""
        self.last_error = str(exc)
        self._set_status(f"<b>error:</b> {esc(exc)}", error=True)
        return exc

    def _job_failed(self, name: str, exc: Exception) -> None:
        self.last_error = str(exc)
        super()._job_failed(name, exc)

    def _from_ui(self, method) -> None:
        """Run a button's method; its error is already shown in the status line."""
        try:
            method()
        except (ValueError, TypeError):
            pass

    def _update_buttons(self) -> None:
        busy = self.running
        s = self.session
        self.apply_button.disabled = busy
        self.surface_button.disabled = busy
        self.recover_button.disabled = busy or not s.has_request
        self.undo_button.disabled = busy or not s.can_undo
        self.redo_button.disabled = busy or not s.can_redo

    def _score(self, dose):
        plan = {"dose": dose, "grid": self.session.grid}  # the table shows no MU
        return score({"IDS": plan}, self.session.case, rx=self.score_level_gy)

    def score_summary(self) -> dict:
        """``{(structure, metric): (start, now)}`` for the rows of :data:`SCORE_ROWS`."""
        kinds = {s.name: s.kind for s in self.session.case.structures.values()}
        out = {}
        for kind, met in SCORE_ROWS:
            for name, k in kinds.items():
                if k != kind:
                    continue
                a = self.scores_start[(self.scores_start.structure == name) & (self.scores_start.metric == met)]
                b = self.scores[(self.scores.structure == name) & (self.scores.metric == met)]
                if len(a) and len(b):
                    out[(name, met)] = (float(a.value.iloc[0]), float(b.value.iloc[0]))
        return out

    def _show_scores(self) -> None:
        rows = []
        for (name, met), (a, b) in self.score_summary().items():
            unit = "Gy" if met.startswith("D") else ""
            rows.append(f"<tr><td>{esc(name)}</td><td>{met}</td><td>{a:.3f}</td><td><b>{b:.3f}</b></td>"
                        f"<td>{unit}</td></tr>")
        cov = self.session.target_coverage(95.0)
        rows.append(f"<tr><td>targets</td><td>&ge; 95 % (tracked)</td><td></td><td><b>{100 * cov:.1f}</b></td>"
                    "<td>%</td></tr>")
        self.score_table.value = ("<table style='border-collapse:collapse' cellpadding='3'><tr><th>structure</th>"
                                  "<th>metric</th><th>start</th><th>now</th><th></th></tr>"
                                  + "".join(rows) + "</table>")

    # ------------------------------------------------------------------ jobs
    def _submit(self, label: str, fn) -> threading.Thread:
        """Queue ``fn()`` (returns a message) after the pending jobs; redraw when it is done."""
        def work():
            t0 = time.perf_counter()
            self._set_status(esc(f"{label} ..."))
            with self._lock:
                msg = fn()
                self._refresh()
            dt = time.perf_counter() - t0
            self._set_status(esc(f"{label}: {msg} ({dt:.2f} s)"))
            self.out.append_stdout(f"{label}: {msg}\n")

        def done():
            self.n_jobs += 1
            self._update_buttons()

        th = self._start_job(work, label, done=done, when_busy="queue")
        self._update_buttons()
        return th

    def _refresh(self) -> None:
        """Redraw viewer, DVH and scores from the session's current dose (worker thread)."""
        self.dose = np.array(self.session.dose)
        self.viewer.set_dose(self.dose)
        self.dvh.update(self.dose)
        self.scores = self._score(self.dose)
        self._show_scores()
        self._on_select({"new": self.viewer.selected_voxel})
        if self.view3d is not None:
            self._redraw_3d()

    def _on_event(self, ev) -> None:
        """Session callback (every modification / recovery step): progress bar."""
        if ev.kind == "request":
            self._step_total = ev.n_steps
            self.progress.max = max(1, ev.n_steps)
            self.progress.value = 0
        elif ev.kind == "recovery":
            self.progress.max = max(1, ev.n_steps)
            self.progress.value = ev.step
            self.progress.description = f"step {ev.step}/{ev.n_steps}"
        elif ev.kind == "recovery_done":
            self.progress.value = self.progress.max
            self.progress.description = f"{ev.n_disturbed} disturbed"

    def _on_select(self, change) -> None:
        sel = change.get("new") or {}
        if "index" not in sel:
            return
        idx = tuple(int(v) for v in sel["index"])
        d = float(self.dose[idx])
        where = ("target" if self.session.target_mask[idx] else "organ at risk" if self.session.oar_mask[idx]
                 else "body" if self.session.body_mask[idx] else "outside the body")
        self.selected_label.value = (f"voxel <b>{idx}</b> ({where}): <b>{d:.3f} Gy</b> "
                                     f"({100 * d / self.reference_gy:.1f} %)")

    def _on_isodose_edit(self, edit: dict) -> None:
        """Viewer callback: a dragged isodose line becomes an isodose request."""
        try:
            self.request_isodose(edit["level_gy"], edit["path_index"])
        except (ValueError, TypeError):
            pass  # shown in the status line

    # ------------------------------------------------------------------ actions (public)
    def request_voxel(self, index=None, dose=None, unit: str | None = None,
                      recover: int | None = None) -> threading.Thread:
        """Ask for a new dose in one voxel (paper 004 section 2.2 + recovery), in the background.

        Parameters
        ----------
        index : (z, y, x) ints, optional
            Default: the voxel selected on the viewer.
        dose : float, optional
            Requested dose; default the value of :attr:`dose_input` in its unit.
        unit : {'Gy', '%'}, optional
            Unit of ``dose`` ('%' of :attr:`reference_gy`); default 'Gy' when ``dose`` is
            given, else the unit field.
        recover : int, optional
            Recovery steps; default :attr:`steps_input`.

        Returns
        -------
        threading.Thread
            The job (also joined by :meth:`wait`).

        Raises
        ------
        ValueError, TypeError
            No voxel selected, a voxel outside the body or the grid, a negative or non-finite
            dose (the session's messages); also shown in the status line.
        """
        try:
            if index is None:
                index = self.selected_index
                if index is None:
                    raise ValueError("no voxel selected: click a voxel on the slice (or pass index=(z, y, x))")
            if dose is None:
                dose, unit = self.dose_input.value, self.unit_input.value
            dose_gy = self.to_gy(dose, "Gy" if unit is None else unit)
            # the session's own checks: voxel inside grid and body, finite dose >= 0, steps >= 0
            v = self.session.validate_request(index=index, dose_gy=dose_gy, n_steps=recover)
            dose_gy = v["dose_gy"]
            n = int(self.steps_input.value) if recover is None else v["n_steps"]
        except (ValueError, TypeError) as exc:
            raise self._fail(exc)
        idx = tuple(int(i) for i in index)

        def job():
            d0 = self.session.dose_at(idx)
            self.session.request_voxel(idx, dose_gy, recover=n)
            d1 = self.session.dose_at(idx)
            return (f"voxel {idx} {d0:.3f} -> {d1:.3f} Gy (requested {dose_gy:.3f} Gy, {n} recovery steps); "
                    f"targets >= 95 %: {100 * self.session.target_coverage(95.0):.1f} %")

        return self._submit("request", job)

    def request_isodose(self, level, path, unit: str = "Gy", recover: int | None = None) -> threading.Thread:
        """Move an isodose line: the voxels along ``path`` get ``level`` (paper 004 section 2.2), in the background.

        Parameters
        ----------
        level : float
            Dose of the line, in ``unit`` ('Gy' or '%' of :attr:`reference_gy`).
        path : sequence of (z, y, x)
            Polyline in voxel indices (may be fractional) within one axial slice, e.g. the
            viewer's ``path_index`` of an isodose drag.
        unit : {'Gy', '%'}
        recover : int, optional
            Recovery steps; default :attr:`steps_input`.

        Raises
        ------
        ValueError, TypeError
            A path leaving the body / grid or not in one axial slice, a negative level.
        """
        try:
            v = self.session.validate_request(dose_gy=self.to_gy(level, unit), path=path, n_steps=recover,
                                              dose_name="level_gy")
            level_gy, vox = v["dose_gy"], v["voxels"]
            n = int(self.steps_input.value) if recover is None else v["n_steps"]
        except (ValueError, TypeError) as exc:
            raise self._fail(exc)
        pts = [tuple(float(c) for c in p) for p in np.asarray(path, float)]

        def job():
            self.session.request_isodose_line(level_gy, pts, recover=n)
            dv = np.array([self.session.dose_at(tuple(v)) for v in vox])
            return (f"isodose {level_gy:.3f} Gy along {len(vox)} voxels (mean now {dv.mean():.3f} Gy, {n} recovery "
                    f"steps); targets >= 95 %: {100 * self.session.target_coverage(95.0):.1f} %")

        return self._submit("isodose", job)

    def recover(self, n_steps: int | None = None) -> threading.Thread:
        """More recovery steps for the latest request (:meth:`IDSSession.recover`), in the background."""
        try:
            n = int(self.steps_input.value) if n_steps is None else self.session.validate_request(n_steps=n_steps)[
                "n_steps"]
            if not self.session.has_request and not self.running:
                raise ValueError("no request to recover from; make a request first (Apply to selected voxel)")
        except (ValueError, TypeError) as exc:
            raise self._fail(exc)

        def job():
            done = self.session.recover(n)
            return f"{done} recovery steps; targets >= 95 %: {100 * self.session.target_coverage(95.0):.1f} %"

        return self._submit("recover", job)

    # -- the 3D isodose-surface request ---------------------------------------------------------
    def _surface_level_gy(self) -> float:
        return self.to_gy(self.surface_level_input.value, "%")

    def _on_surface_point(self, change) -> None:
        p = change["new"]
        self.surface_label.value = ("<i>no surface point picked</i>" if not p else
                                    "surface point <b>(" + ", ".join(f"{v:.1f}" for v in p) + ") mm</b> (z, y, x)")

    def pick_surface_point(self, index=None) -> list:
        """Set :attr:`surface_point` to a voxel's centre (default: the voxel selected on the slice).

        The viewer shows axial, coronal or sagittal slices (its ``orientation``), so the point can
        be picked on any of the three orthogonal slices. Returns the point (world mm).
        """
        try:
            if index is None:
                index = self.selected_index
                if index is None:
                    raise ValueError("no voxel selected: click the isodose surface on the slice (or pass index=)")
            idx = self.session.validate_request(index=index)["index"]
        except (ValueError, TypeError) as exc:
            raise self._fail(exc)
        self.surface_point = [float(v) for v in self.session.grid.index_to_world(idx)]
        return list(self.surface_point)

    def show_3d(self, step_size: int = 2, width: int = 480, height: int = 380, max_points: int = 1500) -> View3D:
        """A :class:`~rtlab.widgets.View3D` of the structures and the surface level, its points clickable.

        A click on a marker of the isodose surface (its vertices, at most ``max_points``) sets
        :attr:`surface_point`; the view is redrawn after every job. Returns the view (display
        ``view.figure``).
        """
        s = self.session
        structs = [st for st in s.case.structures.values() if st.kind != "body" and st.mask.any()]
        self.view3d = View3D(s.grid, structs, dose=self.dose, dose_levels=[self._surface_level_gy()],
                             step_size=step_size, width=width, height=height)
        self._pick_max = int(max_points)
        self._redraw_3d()
        return self.view3d

    def _redraw_3d(self) -> None:
        v = self.view3d
        v.set_dose(self.dose, [self._surface_level_gy()])
        pts = v.dose_meshes[0].vertices if v.dose_meshes and len(v.dose_meshes[0].vertices) else None
        if pts is None:
            return
        k = max(1, int(np.ceil(len(pts) / self._pick_max)))
        v.add_pick_points(pts[::k], lambda p: setattr(self, "surface_point", [float(c) for c in p]),
                          description="surface points (click to pick)")

    def request_surface(self, point=None, level=None, shift_mm=None, radius_mm=None, unit: str = "%",
                        recover: int | None = None) -> threading.Thread:
        """Push the isodose surface at the picked point (paper 004, section 3.2), in the background.

        A plain call of :meth:`rtlab.methods.ids.IDSSession.request_isodose_surface` (the region
        and its move: :func:`rtlab.methods.ids.isodose_surface_request`).

        Parameters
        ----------
        point : (z, y, x) mm, optional
            Default :attr:`surface_point`.
        level : float, optional
            Surface level in ``unit``; default the *surface %* field.
        shift_mm, radius_mm : float, optional
            Push along the outward normal (> 0 grows the enclosed volume) and the region's radius;
            default the fields.
        unit : {'%', 'Gy'}
        recover : int, optional
            Recovery steps; default :attr:`steps_input`.

        Raises
        ------
        ValueError, TypeError
            No point picked, a point off the surface, a level without a surface (the library's
            messages); also shown in the status line.
        """
        try:
            pt = list(self.surface_point) if point is None else [float(v) for v in point]
            if len(pt) != 3:
                raise ValueError("no surface point: click the isodose surface in the 3D view or pick the selected "
                                 "voxel (Surface point = selected voxel), or pass point=(z, y, x) mm")
            level_gy = self._surface_level_gy() if level is None else self.to_gy(level, unit)
            shift = float(self.surface_shift_input.value if shift_mm is None else shift_mm)
            radius = float(self.surface_radius_input.value if radius_mm is None else radius_mm)
            n = int(self.steps_input.value) if recover is None else \
                self.session.validate_request(n_steps=recover)["n_steps"]
            # checked now on the displayed dose, so that a bad pick fails at once
            isodose_surface_request(self.dose, self.session.grid, level_gy, pt, shift, radius)
        except (ValueError, TypeError) as exc:
            raise self._fail(exc)

        def job():
            info = self.session.request_isodose_surface(level_gy, pt, shift, radius, recover=n)
            self.last_surface = info
            dv = np.array([self.session.dose_at(tuple(v)) for v in info["voxels"]])
            return (f"surface {level_gy:.3f} Gy pushed {shift:+.1f} mm at {tuple(info['picked_index'])}: "
                    f"{len(info['voxels'])} voxels (mean now {dv.mean():.3f} Gy, {n} recovery steps); "
                    f"targets >= 95 %: {100 * self.session.target_coverage(95.0):.1f} %")

        return self._submit("surface", job)

    def undo(self) -> threading.Thread:
        """Return to the state before the latest request / recovery (exactly), in the background."""
        if not self.running and not self.session.can_undo:
            raise self._fail(ValueError("nothing to undo"))

        def job():
            self.session.undo()
            return "back one action"

        return self._submit("undo", job)

    def redo(self) -> threading.Thread:
        """Re-apply the latest undone action (exactly), in the background."""
        if not self.running and not self.session.can_redo:
            raise self._fail(ValueError("nothing to redo"))

        def job():
            self.session.redo()
            return "forward one action"

        return self._submit("redo", job)

    def export_plan(self, path=None) -> threading.Thread:
        """Export the current plan (after the queued jobs), in the background.

        :meth:`IDSSession.to_plan` becomes :attr:`plan`; with a ``path`` (default: the file
        field; ``''`` for none) an ``.npz`` is written atomically with
        :func:`rtlab.io.npz.save_npz`: the case, ``dose`` (Gy, the exact IDS dose),
        ``fluence_<b>`` (the fine fluence maps), ``weights`` (the plan's bixel weights),
        ``gantry_deg``, ``couch_deg`` and ``mu`` (per beam).
        """
        if path is None:
            path = self.export_path.value
        path = None if path in ("", None) else Path(path)
        if path is not None and path.is_dir():
            raise self._fail(ValueError(f"export path {str(path)!r} is a directory; "
                                        "give a file name like ids_plan.npz"))

        def job():
            s = self.session
            self.plan = s.to_plan()
            if path is None:
                return f"plan with {self.plan.n_beamlets} bixels (not written)"
            fl = {f"fluence_{b}": f for b, f in enumerate(s.fluence)}
            save_npz(path, s.case, dose=s.dose, weights=self.plan.weights,
                     gantry_deg=np.array([b.gantry for b in s.beams]), couch_deg=np.array([b.couch for b in s.beams]),
                     mu=np.asarray(s.mu()), **fl)
            return f"wrote {path} ({self.plan.n_beamlets} bixels, {s.n_beams} beams)"

        return self._submit("export", job)
