"""DoseEnginePanel: choose beams and dose-engine settings, build the influence matrix.

A thin panel over :func:`rtlab.planning.prepare_plan` (which builds the beamlet influence
matrix with :func:`rtlab.dose.build_influence`, the evaluation operator and the objective).
The user sets the gantry angles, the bixel size, the dose-grid spacing, the lateral
kernel cut-off and the beam model (a built-in machine or a matRad photon machine file: the
machine picker, :func:`rtlab.dose.resolve_machine`) and presses **Compute**; the work runs in a background thread (the kernel
stays responsive) with a progress bar and a status line. When it is done the panel holds

* ``problem`` -- the :class:`~rtlab.planning.PlanProblem` (influence matrix, operator,
  objective, preliminary weights ``x0``), ready for :class:`OptimizerPanel`;
* ``dose`` -- the open-field dose of the preliminary weights ``x0`` (every beamlet equal,
  scaled so that the first target's median dose is its prescription), Gy on the CT grid,

shows that dose on the optional :class:`SliceViewer`, and fires the ``"computed"`` event.

Everything a button does is a public method: ``panel.compute(); panel.wait()`` from Python is
the same as pressing the button and waiting.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from .. import planning
from ..core.case import Case
from ..dose import Machine, list_dose_machines, resolve_machine
from ..planning import PlanSettings
from .panel import Panel, esc, ipywidgets

__all__ = ["DoseEnginePanel", "parse_angles", "DOSE_GRID_CHOICES"]

#: Dose-grid spacings (mm) offered besides the CT grid itself.
DOSE_GRID_CHOICES = (2.5, 3.0, 5.0)

#: Machine-picker values besides the built-in names: a matRad file (path box), a Machine given in Python.
MATRAD_FILE, GIVEN = "matrad-file", "given"


def parse_angles(text) -> list[float]:
    """Gantry angles (degrees, IEC 61217) from a comma- or space-separated string.

    Parameters
    ----------
    text : str or sequence of float
        E.g. ``"0, 72, 144, 216, 288"``.

    Returns
    -------
    list of float

    Raises
    ------
    ValueError
        Empty text or an entry that is not a finite number.
    """
    if isinstance(text, str):
        parts = [p for p in text.replace(",", " ").replace(";", " ").split() if p]
    else:
        parts = list(text)
    if not parts:
        raise ValueError("gantry angles are empty; type a comma list in degrees, e.g. 0, 72, 144, 216, 288")
    out = []
    for p in parts:
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"gantry angle {p!r} is not a number; type a comma list in degrees, "
                             "e.g. 0, 72, 144, 216, 288") from None
        if not np.isfinite(v):
            raise ValueError(f"gantry angle {p!r} is not finite; type degrees, e.g. 0, 72, 144")
        out.append(v % 360.0)
    return out


def _fmt_angles(angles) -> str:
    return ", ".join(f"{a:g}" for a in angles)


def _prepare(case, **kw):
    """:func:`rtlab.planning.prepare_plan` (looked up at call time, so that tests can replace it)."""
    return planning.prepare_plan(case, **kw)


class DoseEnginePanel(Panel):
    """Beam and dose-engine settings with a Compute button (background thread).

    Parameters
    ----------
    case : rtlab.core.case.Case
        The patient / phantom.
    viewer : SliceViewer, optional
        Shows the open-field dose when a computation finishes.
    angles : sequence of float, optional
        Initial gantry angles (degrees); default the case's suggested beams
        (``case.gantry_angles()``), else 0, 72, 144, 216, 288.
    bixel_mm : float
        Initial bixel size at the isocentre plane (mm).
    dose_grid_mm : float, optional
        Initial dose-grid spacing (mm); ``None`` = the CT grid. Values other than the CT grid
        and :data:`DOSE_GRID_CHOICES` are added to the choices.
    cutoff_mm : float, optional
        Initial lateral cut-off (mm) of the sparse matrix's narrow Gaussians; default (None, shown
        as 0) automatic (:func:`rtlab.dose.broad.auto_cutoff_mm`; the broad Gaussians are never
        truncated).
    machine : None, str, path-like or rtlab.dose.Machine
        Initial beam model: None (default :func:`rtlab.dose.generic_6mv`), a built-in name, or a
        matRad photon machine file (its path goes into :attr:`machine_file`); a Machine object is
        used as long as the picker is not changed (shown as "(given)").

    Attributes
    ----------
    angles_text : ipywidgets.Text
        Gantry angles, comma list in degrees (IEC 61217).
    bixel : ipywidgets.BoundedFloatText
        Bixel size (mm).
    dose_grid_mm : ipywidgets.Dropdown
        Dose-grid spacing: value ``None`` (CT grid) or mm (``dose_grid`` is its old name).
    cutoff : ipywidgets.BoundedFloatText
        Lateral cut-off (mm) of the narrow Gaussians; 0 = automatic.
    machine_choice : ipywidgets.Dropdown
        The beam model: the built-in names (:func:`rtlab.dose.list_dose_machines`) or
        ``'matRad file'`` (then :attr:`machine_file` names it).
    machine_file : ipywidgets.Text
        Path of a matRad photon machine file (``photons_<name>.mat``), used with ``'matRad file'``.
    compute_button : ipywidgets.Button
    progress : ipywidgets.FloatProgress
        0-1 over the stages (build, open-field dose); during the build it creeps towards 0.9
        with the elapsed time (the build itself reports no fraction).
    status : ipywidgets.HTML
        One line: what happened last.
    out : ipywidgets.Output
        Log of the computations (sizes, timings).
    problem : PlanProblem or None
        The last computed problem.
    dose : ndarray of float32 or None
        Open-field dose of ``problem.x0`` on the CT grid (Gy, ``(z, y, x)``).
    error : Exception or None
        The exception of the last computation, if it failed.
    result : PlanProblem or None
        What :meth:`wait` returns: :attr:`problem`.
    timings : dict
        ``build_s`` and ``dose_s`` (seconds) of the last computation.

    Events
    ------
    ``"computed"``: ``fn(problem)`` after a successful computation (called in the worker
    thread). Register with :meth:`on`.
    """

    EVENTS = ("computed",)

    def __init__(self, case, viewer=None, angles=None, bixel_mm: float = 5.0, dose_grid_mm: float | None = None,
                 cutoff_mm: float | None = None, machine=None):
        if not isinstance(case, Case):
            raise TypeError(f"case must be an rtlab.core.case.Case (e.g. rtlab.phantoms.get_phantom(...)), "
                            f"got {type(case).__name__}")
        self.case = case
        self.viewer = viewer
        if angles is None:
            angles = case.gantry_angles() or [0.0, 72.0, 144.0, 216.0, 288.0]
        angles = parse_angles(angles)
        s = PlanSettings(bixel_mm=bixel_mm, dose_grid_mm=dose_grid_mm, cutoff_mm=cutoff_mm)  # checks them

        self.problem = None
        self.dose: np.ndarray | None = None
        self.error: Exception | None = None
        self.timings: dict = {}
        self._init_panel("Set the beams and press <b>Compute dose</b>.")
        self._lock = threading.Lock()
        bixel_mm, dose_grid_mm, cutoff_mm = s.bixel_mm, s.dose_grid_mm, s.cutoff_mm

        style = {"description_width": "150px"}
        lay = ipywidgets.Layout(width="420px")
        self.angles_text = ipywidgets.Text(value=_fmt_angles(angles), description="gantry angles (deg)",
                                           placeholder="e.g. 0, 72, 144, 216, 288", style=style, layout=lay)
        self.bixel = ipywidgets.BoundedFloatText(value=float(bixel_mm), min=1.0, max=20.0, step=0.5,
                                                 description="bixel size (mm)", style=style, layout=lay)
        ct = case.grid.spacing
        ct_label = "CT grid (" + " x ".join(f"{s:g}" for s in ct) + " mm)"
        choices = [(ct_label, None)] + [(f"{v:g} mm", float(v)) for v in DOSE_GRID_CHOICES]
        if dose_grid_mm is not None and float(dose_grid_mm) not in DOSE_GRID_CHOICES:
            choices.append((f"{float(dose_grid_mm):g} mm", float(dose_grid_mm)))
        self.dose_grid_mm = ipywidgets.Dropdown(options=choices,
                                             value=None if dose_grid_mm is None else float(dose_grid_mm),
                                             description="dose grid", style=style, layout=lay)
        self.cutoff = ipywidgets.BoundedFloatText(value=0.0 if cutoff_mm is None else float(cutoff_mm), min=0.0,
                                                  max=400.0, step=5.0, description="cut-off (mm, 0 = auto)",
                                                  style=style, layout=lay)
        opts = [(n, n) for n in list_dose_machines()] + [("matRad file", MATRAD_FILE)]
        self._given_machine = machine if isinstance(machine, Machine) else None
        if self._given_machine is not None:
            opts.insert(0, (f"{machine.name} (given)", GIVEN))
            value, path = GIVEN, ""
        elif machine is None or (isinstance(machine, str) and machine in list_dose_machines()):
            value, path = machine or list_dose_machines()[0], ""
        else:
            resolve_machine(machine, "machine")  # a missing or broken file fails here, with its name
            value, path = MATRAD_FILE, os.fspath(machine)
        self.machine_choice = ipywidgets.Dropdown(options=opts, value=value, description="machine", style=style,
                                                  layout=lay)
        self.machine_file = ipywidgets.Text(value=path, description="matRad machine file",
                                            placeholder="path/to/photons_Generic.mat", style=style, layout=lay)
        self.compute_button = ipywidgets.Button(description="Compute dose", button_style="primary", icon="play",
                                                tooltip="build the beamlet influence matrix (runs in the background)")
        self.progress = ipywidgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="",
                                                 layout=ipywidgets.Layout(width="260px"))
        self.compute_button.on_click(lambda _b: self.compute())
        help_ = ipywidgets.HTML(
            "<small>Beamlet influence matrix with the SVD pencil-beam engine (narrow Gaussians in a sparse "
            "matrix up to the cut-off, broad ones untruncated on node grids). A coarser dose grid is faster; "
            "the plan is always scored on the CT grid.</small>")
        super().__init__([help_, self.angles_text, self.bixel, self.dose_grid_mm, self.cutoff, self.machine_choice,
                          self.machine_file,
                          ipywidgets.HBox([self.compute_button, self.progress]), self.status, self.out])

    # ------------------------------------------------------------------ state
    @property
    def dose_grid(self):
        """Old name of :attr:`dose_grid_mm` (the dropdown; kept for one release)."""
        return self.dose_grid_mm

    @property
    def result(self):
        """What :meth:`wait` returns: the last computed :attr:`problem`."""
        return self.problem

    @result.setter
    def result(self, value):
        self.problem = value

    def settings(self) -> dict:
        """The current widget values as ``prepare_plan`` keyword arguments.

        Returns
        -------
        dict
            ``angles`` (list of deg), ``bixel_mm``, ``dose_grid_mm`` (mm or None),
            ``cutoff_mm`` (mm, or None for automatic when the box holds 0), ``machine``
            (an :class:`rtlab.dose.Machine`, :func:`rtlab.dose.resolve_machine` of the picker).

        Raises
        ------
        ValueError
            Unparseable angles, a non-positive size, or a missing / broken machine file.
        """
        angles = parse_angles(self.angles_text.value)
        cut = float(self.cutoff.value)
        s = PlanSettings(bixel_mm=float(self.bixel.value), dose_grid_mm=self.dose_grid_mm.value,
                         cutoff_mm=None if cut == 0 else cut)  # checks them
        return {"angles": angles, "bixel_mm": s.bixel_mm, "dose_grid_mm": s.dose_grid_mm, "cutoff_mm": s.cutoff_mm,
                "machine": self.machine()}

    def machine(self):
        """The beam model the picker names (:func:`rtlab.dose.resolve_machine`; files fitted once)."""
        choice = self.machine_choice.value
        if choice == GIVEN:
            return self._given_machine
        if choice == MATRAD_FILE:
            path = self.machine_file.value.strip()
            if not path:
                raise ValueError("machine: choose a built-in machine or type the path of a matRad photon machine "
                                 "file (photons_<name>.mat) into 'matRad machine file'")
            return resolve_machine(path, "matRad machine file")
        return resolve_machine(choice, "machine")

    # ------------------------------------------------------------------ work
    def compute(self, block: bool = False) -> threading.Thread | None:
        """Build the influence matrix for the current settings in a background thread.

        Calls :func:`rtlab.planning.prepare_plan` with :meth:`settings`, then the open-field
        dose ``problem.operator.dose_ct(problem.x0)``; sets :attr:`problem` and :attr:`dose`,
        updates the viewer and fires ``"computed"``. Returns immediately (``block=False``)
        with the worker thread; :meth:`wait` joins it. A second call while one runs is ignored
        (the status line says so).

        Parameters
        ----------
        block : bool
            Wait for the computation (as :meth:`wait`: raises if it failed).

        Raises
        ------
        ValueError
            Bad settings (checked before the thread starts).
        """
        with self._lock:
            if self.running:
                self.status.value = "<b>Busy</b>: a dose computation is already running."
                return self._jobs[-1]
            try:
                kw = self.settings()
            except ValueError as e:
                self.error = e
                self._set_status(esc(e), error=True)
                raise
            self.error = None
            self.compute_button.disabled = True
            return self._start_job(lambda: self._work(kw), "dose computation", block=block,
                                   done=lambda: setattr(self.compute_button, "disabled", False))

    def _work(self, kw: dict):
        done = threading.Event()
        t0 = time.perf_counter()
        self.progress.bar_style = "info"
        self.progress.value = 0.02
        n = len(kw["angles"])
        grid_txt = "CT grid" if kw["dose_grid_mm"] is None else f"{kw['dose_grid_mm']:g} mm grid"
        self.status.value = f"Building the influence matrix: {n} beams, {kw['bixel_mm']:g} mm bixels, {grid_txt}..."

        def tick():  # the build reports no fraction: creep towards 0.9 with the elapsed time
            while not done.wait(0.25):
                el = time.perf_counter() - t0
                self.progress.value = 0.9 * (1.0 - np.exp(-el / 4.0))
                self.progress.description = f"{el:.0f} s"

        ticker = threading.Thread(target=tick, daemon=True, name="rtlab-dose-progress")
        ticker.start()
        try:
            problem = _prepare(self.case, angles=kw["angles"], bixel_mm=kw["bixel_mm"],
                               dose_grid_mm=kw["dose_grid_mm"], cutoff_mm=kw["cutoff_mm"], machine=kw["machine"])
            build_s = time.perf_counter() - t0
            done.set()
            ticker.join()
            self.progress.value = 0.92
            t1 = time.perf_counter()
            dose = np.asarray(problem.operator.dose_ct(problem.x0), np.float32)
            dose_s = time.perf_counter() - t1
            self.problem, self.dose = problem, dose
            self.timings = {"build_s": build_s, "dose_s": dose_s}
            im = problem.influence
            msg = (f"{im.machine.name}: influence matrix {im.shape[0]} voxels x {im.shape[1]} beamlets "
                   f"({im.nnz / 1e6:.1f} M non-zeros) for {n} beams in {build_s:.1f} s; "
                   f"open-field dose max {float(dose.max()):.1f} Gy")
            self.out.append_stdout(msg + "\n")
            if self.viewer is not None:
                self.viewer.set_dose(dose)
            self.progress.value = 1.0
            self.progress.bar_style = "success"
            self.progress.description = f"{build_s + dose_s:.1f} s"
            self.status.value = (f"<b>Done</b>: {im.shape[1]} beamlets, {n} beams, built in {build_s:.1f} s. "
                                 "The viewer shows the open-field dose; go on to the <b>Optimiser</b>.")
            self._emit("computed", problem)
            return problem
        except Exception as e:  # the job runner reports it in the status line and re-raises it in wait()
            self.error = e
            self.progress.bar_style = "danger"
            raise
        finally:
            done.set()

    def __repr__(self) -> str:
        state = "running" if self.running else ("computed" if self.problem is not None else "idle")
        return f"DoseEnginePanel({self.case.name!r}, angles=[{self.angles_text.value}], {state})"
