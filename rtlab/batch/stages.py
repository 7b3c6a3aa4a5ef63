"""Stage functions of a batch, as data: :class:`Stages`, plus rtlab's default stages.

A batch runs, per case (patent 001, steps 1-6):

================  ====================================================  ==================
stage             call                                                  patent 001
================  ====================================================  ==================
``load``          ``load(case_ref) -> case``                            step 1 (data in)
``delineate``     ``delineate(case) -> case`` (optional, off by default) step 2 (claim 4)
``n_beams``       ``n_beams(case) -> int``                              task decomposition
``influence``     ``influence(case, beam_index) -> beam data``          step 3 (per beam)
``optimize``      ``optimize(case, [beam data...]) -> standard plan``   step 3
``convert``       ``convert(case, standard, machine, attempt) -> plan`` step 4 (claims 5-6)
``qa``            ``qa(case, standard, plan, machine) -> dict``         claim 7
================  ====================================================  ==================

``delineate`` is opt-in (``None`` by default: no task, and the fingerprint of a batch without
it is what it was before the stage existed); when set, every later stage sees its case.

``qa`` returns a dict with at least ``"passed"`` (bool); when it is False the master calls
``convert`` again with ``attempt + 1`` (claim 7: "returning to step (4)"), up to
``max_qa_attempts``. ``convert`` must return a dict (ndarray values are saved to the ``.npz``,
the rest to the JSON sidecar). Every function must be importable by the workers (a module-level
function or a ``functools.partial`` of one; not a lambda defined in a notebook cell when the
workers are separate processes, unless cloudpickle can ship it by value).

rtlab's stages (:func:`rtlab_stages`, the defaults)
---------------------------------------------------
``load``
    :func:`rtlab_load`: a :class:`~rtlab.core.case.Case` passes through; a :class:`CaseRef` or a
    string names a built-in phantom (:func:`rtlab.phantoms.get_phantom`, optionally at
    ``spacing``) or a case file (rtlab ``.npz``, matRad ``.mat``, DICOM directory) that the
    worker reads (workers need the path: a shared file system on a multi-node cluster).
``delineate`` (opt-in: ``rtlab_stages(delineate=True)`` or a dict of options)
    :func:`rtlab_delineate`: patent 001's automatic delineation (step 2) by
    :func:`rtlab.methods.delineation.delineate_case` - body by HU thresholding, targets from an
    atlas of rtlab's built-in phantoms registered by the body (or region growing from seeds).
    A **stand-in for a clinical auto-contouring model** (:data:`DELINEATION_STAGE_LABEL`). The
    plan is made on the automatic contours; the Dice of each against the case's own structures
    (the ground truth of a phantom) is recorded in ``case.meta['delineation']``, which the master
    copies into every record's sidecar and ``summary['delineation']``.
``n_beams`` / ``influence``
    The gantry angles (``angles=`` or the case's suggested beams); one task per beam builds
    that beam's influence matrix with the **standard machine's** source
    (:func:`rtlab.dose.influence.build_influence`, CPU, no progress bar).
``optimize``
    :func:`merge_influences` joins the beams' matrices column-wise (the rows - the selected
    voxels - do not depend on the beam, so the result equals ``build_influence`` of all beams
    at once, tested), then :func:`plan_from_influence` runs the rest of
    :func:`rtlab.planning.plan_case` on it (same operator, objective recipe, start point,
    solver; tested equal to ``plan_case``): the **standard plan** (step 3).
``convert``
    :func:`rtlab.methods.conversion.convert_plan` of the standard plan to the machine (step 4:
    coincidence check, leaf-row resampling, dose recalculation, re-optimisation with the
    standard plan's DVH points and isodose lines, QA with ``attempts_per_task`` internal
    regenerations). A master-level retry (``attempt`` >= 1, after a failed QA) runs it again with
    ``escalate**attempt`` times the iterations and ``tighten**attempt`` times the constraint
    weights.
``qa``
    :func:`rtlab.evaluate.qa.qa_report` of the converted dose against the standard dose (gamma 3 %/3 mm
    >= 95 %, 2 %/2 mm >= 90 %, |DVH difference| <= 3 % of Rx by default): the report that
    ``convert_plan`` computed on the same doses with the same settings when there is one, else
    computed here (a plan used as is).

Per task only small things travel: a case reference (string), a beam index, a machine name
and futures. The case is built on a worker by ``load`` and moved once to the workers that need
it; the standard plan (weights, dose, its influence matrix) moves to the converting workers;
the master receives only the converted plan's weights and dose (float32) and JSON metadata.
Machine models are rebuilt from their names on the worker (cheap); numba kernels are compiled
once per worker process and cached on disk (``cache=True``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..core.case import Case
from ..dose import build_influence, resolve_machine
from ..dose.influence import join_influence
from ..evaluate.qa import qa_report
from ..io import load_dicom, load_matrad, load_npz
from ..methods.conversion import METHODS, convert_plan, get_machine
from ..methods.delineation import REGISTRATIONS, STAND_IN, delineate_case
from ..phantoms import get_phantom, list_phantoms
from ..planning import meet_goals, optimise_plan, prepare_plan
from .persist import check_id

__all__ = ["Stages", "default_stages", "rtlab_stages", "CaseRef", "merge_influences", "plan_from_influence",
           "rtlab_delineate", "delineation_report", "DELINEATION_STAGE_LABEL", "OPTIONAL_STAGES", "rtlab_load", "rtlab_n_beams", "rtlab_influence", "rtlab_optimize", "rtlab_convert", "rtlab_qa"]

_CASE_SUFFIXES = (".npz", ".mat")


@dataclass(frozen=True)
class CaseRef:
    """A case to load on a worker: ``name`` (the case id in file names) and ``source``.

    Parameters
    ----------
    name : str
        Case id (letters, digits, ``.``, ``_``, ``+``, ``-``).
    source : str
        A phantom name (:func:`rtlab.phantoms.list_phantoms`) or the path of a case file
        (rtlab ``.npz`` with a case, matRad ``.mat``) or of a DICOM directory.
    spacing : float, optional
        Phantom voxel size (mm); ignored for files.
    """

    name: str
    source: str
    spacing: float | None = None

    @classmethod
    def parse(cls, text: str, spacing: float | None = None) -> "CaseRef":
        """A phantom name or a path; the id is the phantom name or the file's stem."""

        text = str(text)
        if text in list_phantoms():
            return cls(text, text, spacing)
        p = Path(text)
        if p.is_dir() or (p.is_file() and p.suffix.lower() in _CASE_SUFFIXES):

            return cls(check_id("case (file stem)", p.stem if p.is_file() else p.name), str(p.resolve()), None)
        if p.exists():
            raise ValueError(f"case {text!r} is a {p.suffix or 'file'} file; give an rtlab .npz, a matRad .mat or "
                             "a DICOM directory")
        raise ValueError(f"case {text!r} is neither a built-in phantom ({', '.join(list_phantoms())}) nor an "
                         "existing case file or DICOM directory")


def rtlab_load(case_ref, spacing: float | None = None):
    """Default ``load``: a Case passes through; a :class:`CaseRef` or a string is loaded.

    Parameters
    ----------
    case_ref : Case, CaseRef or str
        A string is parsed with :meth:`CaseRef.parse` (phantom name or case file).
    spacing : float, optional
        Phantom voxel size (mm) when the reference does not give one.
    """

    if isinstance(case_ref, Case):
        return case_ref
    ref = case_ref if isinstance(case_ref, CaseRef) else CaseRef.parse(str(case_ref), spacing)

    if ref.source in list_phantoms():
        sp = ref.spacing if ref.spacing is not None else spacing
        return get_phantom(ref.source, spacing=sp)
    p = Path(ref.source)
    if p.is_dir():

        return load_dicom(p)
    if p.suffix.lower() == ".mat":

        return load_matrad(p)

    c = load_npz(p).case
    if c is None:
        raise ValueError(f"{p.name} holds no case (write one with rtlab.io.save_npz(path, case))")
    return c


#: What the ``delineate`` stage is, in every record it touches.
DELINEATION_STAGE_LABEL = "delineate (patent 001 step 2): " + STAND_IN

#: Stages that may be None (not run); a None optional stage is left out of the fingerprint.
OPTIONAL_STAGES = ("delineate",)


def rtlab_delineate(case, atlas: str | None = None, structures="targets", registration: str = "moments",
                    threshold_hu: float = -500.0, seeds: Mapping | None = None):
    """Optional ``delineate`` stage: automatic contours (a STAND-IN for a clinical auto-contouring model).

    :func:`rtlab.methods.delineation.delineate_case` on the loaded case: the body by HU
    thresholding, the targets (``structures``) from the atlas entry ``atlas`` (default: the case's
    own built-in phantom) registered by the body, or by region growing from ``seeds``. The case's
    input structures of the same names are the ground truth of the Dice report.

    Returns
    -------
    Case
        The case with the automatic contours; ``case.meta['delineation']`` holds the report
        (``stage`` = :data:`DELINEATION_STAGE_LABEL`, ``dice`` per structure where ground truth
        exists, registration, volumes).
    """
    out, report = delineate_case(case, atlas=atlas, seeds=seeds, structures=structures, threshold_hu=threshold_hu,
                                 registration=registration)
    report["stage"] = DELINEATION_STAGE_LABEL
    out.meta["delineation"] = report
    return out


def delineation_report(case) -> dict | None:
    """The ``delineate`` stage's report of a case (``case.meta['delineation']``), or None."""
    meta = getattr(case, "meta", None)
    return dict(meta["delineation"]) if isinstance(meta, Mapping) and "delineation" in meta else None


def _angles(case, angles) -> list[float]:
    if angles is not None:
        a = [float(v) for v in angles]
        if not a:
            raise ValueError("angles is empty; give at least one gantry angle (degrees)")
        return a
    if case.beams:
        return [float(b.gantry) for b in case.beams]
    return [0.0, 72.0, 144.0, 216.0, 288.0]


def rtlab_n_beams(case, angles: Sequence[float] | None = None) -> int:
    """Default ``n_beams``: the number of gantry angles (``angles`` or the case's suggested beams)."""
    return len(_angles(case, angles))


def standard_treatment_machine(standard="standard", machine_file=None):
    """The standard treatment machine, its source replaced by ``machine_file``'s beam model when given.

    ``machine_file``: a matRad photon machine file or built-in beam-model name
    (:func:`rtlab.dose.resolve_machine`; loaded once per worker process); the MLC stays the
    standard machine's. Returns a :class:`rtlab.methods.conversion.TreatmentMachine`.
    """
    std = get_machine(standard)
    if machine_file is None:
        return std
    return replace(std, source=resolve_machine(machine_file, "machine_file"))


def rtlab_influence(case, beam_index: int, angles: Sequence[float] | None = None, bixel_mm: float = 5.0,
                    dose_grid_mm: float | None = None, cutoff_mm: float | None = None, standard: str = "standard",
                    machine_file=None):
    """Default ``influence``: the influence matrix of beam ``beam_index`` on the standard machine.

    Parameters
    ----------
    case : Case
    beam_index : int
        Index into the gantry angles.
    angles : sequence of float, optional
        Gantry angles (deg); default the case's suggested beams.
    bixel_mm, dose_grid_mm, cutoff_mm
        As in :func:`rtlab.planning.plan_case` (mm).
    standard : str
        The standard machine (:mod:`rtlab.methods.conversion.machines`); its source computes the dose.
    machine_file : str, optional
        A matRad machine file (or built-in beam-model name) replacing the standard machine's
        source (:func:`standard_treatment_machine`).
    """

    a = _angles(case, angles)
    return build_influence(case, [a[int(beam_index)]], machine=standard_treatment_machine(standard, machine_file).source, dose_grid_mm=dose_grid_mm,
                           cutoff_mm=cutoff_mm, progress=False,
                           bixel_mm=bixel_mm, gpu=False)


def merge_influences(parts):
    """Join per-beam influence matrices (same case, grid, voxels, source) column-wise.

    Parameters
    ----------
    parts : list of rtlab.dose.InfluenceMatrix
        One per beam, in beam order.

    Returns
    -------
    InfluenceMatrix
        Columns beam after beam, as :func:`rtlab.dose.influence.build_influence` of all beams
        (:func:`rtlab.dose.influence.join_influence`: the narrow matrices side by side, the
        broad Gaussians' node paths joined).
    """
    return join_influence(parts)


def plan_from_influence(case, im, objective: str = "conformity", falloff: float | None = None,
                        control_points: bool = False, *, rx: float | None = None, roi_mm: float = 20.0,
                        recipe: Mapping | None = None, max_iter: int = 100, change_threshold: float | None = 1e-4,
                        change_window: int = 5, method: str = "lbfgsb", backend: str = "numba"):
    """:func:`rtlab.planning.plan_case` on an influence matrix that is already built.

    ``meet_goals(optimise_plan(prepare_plan(case, ..., influence=im)))``: the same operator,
    objective recipe, start point, solver and goal re-weighting as ``plan_case``; the result
    equals ``plan_case`` with the
    same settings (tested). Used by the batch so that the beams' matrices can be built by
    separate tasks.

    Returns
    -------
    rtlab.planning.PlanResult
    """

    problem = prepare_plan(case, objective=objective, falloff=falloff, control_points=control_points, rx=rx,
                           roi_mm=roi_mm, recipe=recipe, backend=backend, influence=im)
    solver = replace(problem.settings, max_iter=max_iter, change_threshold=change_threshold,
                     change_window=change_window, method=method)
    return meet_goals(problem, optimise_plan(problem, settings=solver), settings=solver)


def rtlab_optimize(case, influences, objective: str = "conformity", max_iter: int = 50, rx: float | None = None,
                   **plan_options) -> dict:
    """Default ``optimize``: the standard plan from the beams' influence matrices.

    Returns
    -------
    dict
        ``x`` (beamlet weights), ``dose`` (Gy, CT grid, float32), ``im`` (the merged standard
        influence matrix, needed by the conversion), ``scores``, ``iterations``, ``optimize_s``,
        ``angles``.
    """
    im = merge_influences(influences)
    p = plan_from_influence(case, im, objective, rx=rx, max_iter=max_iter, **plan_options)
    return dict(x=np.asarray(p.x, np.float64), dose=np.asarray(p.dose, np.float32), im=im, scores=p.scores,
                iterations=int(p.iterations), optimize_s=float(p.timings["optimize_s"]), angles=list(p.angles),
                mu_total=float(p.mu_total))


def _dvh_rows(qa) -> list:
    return [dict(structure=str(r.structure), metric=str(r.metric), reference=float(r.reference),
                 evaluated=float(r.evaluated), diff=float(r.diff)) for r in qa.dvh.itertuples(index=False)]


def _qa_dict(qa) -> dict:
    d = qa.to_dict()
    d["dvh"] = _dvh_rows(qa)
    return d


def rtlab_convert(case, standard, machine: str, attempt: int, method: str = "fluence", max_iter: int = 50,
                  attempts_per_task: int = 2, escalate: float = 2.0, tighten: float = 4.0,
                  qa_kwargs: Mapping | None = None, standard_machine: str = "standard", machine_file=None,
                  **convert_options) -> dict:
    """Default ``convert``: :func:`rtlab.methods.conversion.convert_plan` of the standard plan.

    Parameters
    ----------
    case, standard, machine, attempt
        See the module docstring; ``standard`` is what :func:`rtlab_optimize` returned.
    method : {'fluence', 'dao', 'recalc'}
        Conversion method.
    max_iter : int
        L-BFGS-B iterations per optimisation on attempt 0; ``escalate**attempt`` times more on a
        master-level retry.
    attempts_per_task : int
        ``max_attempts`` of ``convert_plan`` (optimisations with tightened constraints inside one
        task).
    escalate, tighten : float
        Retry ``attempt`` multiplies the iterations by ``escalate**attempt`` and the isodose,
        DVH, fidelity and mimicking weights by ``tighten**attempt``.
    qa_kwargs : dict, optional
        :func:`rtlab.evaluate.qa.qa_report` settings (criteria, thresholds, max_dvh_diff_gy).
    machine_file : str, optional
        The standard plan's beam model (:func:`standard_treatment_machine`).

    Returns
    -------
    dict
        ``x`` (weights on the machine's influence matrix), ``dose`` (Gy, float32), ``method``,
        ``coincide``, ``passed``, ``reasons``, ``qa`` (the QA of the returned plan with its DVH
        table, or None when used as is), ``recalc_pass_rates``, ``conversion_attempts`` (the
        internal attempt history), ``timings``, ``max_iter``, ``retry`` (= ``attempt``).
    """

    k = int(attempt)
    f = float(tighten) ** k
    opts = dict(isodose_weight=1.0 * f, dvh_weight=1.0 * f, fidelity_weight=0.1 * f, mimic_weight=10.0 * f)
    opts.update(convert_options)
    n_iter = int(round(max_iter * float(escalate) ** k))
    std = standard_treatment_machine(standard_machine, machine_file)
    r = convert_plan(case, standard["x"], standard["im"], machine, std, method=method,
                     max_iter=n_iter, max_attempts=int(attempts_per_task), tighten=tighten,
                     qa_kwargs=dict(qa_kwargs or {}), **opts)
    hist = [{kk: v for kk, v in a.items() if kk != "time_s"} for a in r.attempts]
    return dict(x=np.asarray(r.x, np.float64), dose=np.asarray(r.dose, np.float32), machine=r.machine,
                method=r.method, coincide=bool(r.coincidence.coincide), passed=r.passed, reasons=list(r.reasons),
                qa=None if r.qa is None else _qa_dict(r.qa),
                recalc_pass_rates=None if r.recalc_qa is None else dict(r.recalc_qa.pass_rates),
                coincidence_reasons=list(r.coincidence.reasons), conversion_attempts=hist,
                timings={kk: float(v) for kk, v in r.timings.items()}, max_iter=n_iter, retry=k)


def rtlab_qa(case, standard, plan, machine: str, qa_kwargs: Mapping | None = None) -> dict:
    """Default ``qa``: :func:`rtlab.evaluate.qa.qa_report` of ``plan['dose']`` against ``standard['dose']``.

    When the convert stage already reported the QA of this dose with the same settings
    (``plan['qa']``, from :func:`rtlab_convert`) that report is returned; otherwise it is
    computed. The dict has ``passed``, ``pass_rates``, ``thresholds``, ``reasons``,
    ``max_abs_dvh_diff_gy``, ``dvh`` (rows of D95/D50/D2/Dmean differences) and, for converted
    plans, the conversion's own ``reasons`` under ``conversion_reasons``.
    """

    q = plan.get("qa") if isinstance(plan, Mapping) else None
    if isinstance(q, Mapping) and "passed" in q:
        out = dict(q)
    else:
        out = _qa_dict(qa_report(np.asarray(standard["dose"], np.float64), np.asarray(plan["dose"], np.float64), case,
                                 **dict(qa_kwargs or {})))
    if isinstance(plan, Mapping) and plan.get("reasons"):
        out["conversion_reasons"] = list(plan["reasons"])
    return out


@dataclass(frozen=True)
class Stages:
    """The callables of a batch (see the module docstring for their signatures)."""

    load: Callable = rtlab_load
    n_beams: Callable = rtlab_n_beams
    influence: Callable = rtlab_influence
    optimize: Callable = rtlab_optimize
    convert: Callable = rtlab_convert
    qa: Callable = rtlab_qa
    delineate: Callable | None = None

    def __post_init__(self):
        for f in fields(self):
            if f.name in OPTIONAL_STAGES and getattr(self, f.name) is None:
                continue
            if not callable(getattr(self, f.name)):
                raise TypeError(f"stage {f.name!r} must be callable, got {getattr(self, f.name)!r}")

    @classmethod
    def coerce(cls, stages) -> "Stages":
        """``None`` -> defaults; a dict -> defaults with those stages replaced; a Stages -> itself."""
        if stages is None:
            return cls()
        if isinstance(stages, Stages):
            return stages
        if isinstance(stages, Mapping):
            names = {f.name for f in fields(cls)}
            unknown = set(stages) - names
            if unknown:
                raise ValueError(f"unknown stage name(s) {sorted(unknown)}; stages are {sorted(names)}")
            return replace(cls(), **dict(stages))
        raise TypeError(f"stages must be None, a dict of stage callables or a Stages, got {type(stages).__name__}")


def rtlab_stages(spacing: float | None = None, angles: Sequence[float] | None = None, bixel_mm: float = 5.0,
                 dose_grid_mm: float | None = None, cutoff_mm: float | None = None, objective: str = "conformity",
                 max_iter: int = 50, convert_method: str = "fluence", convert_max_iter: int = 50,
                 attempts_per_task: int = 2, escalate: float = 2.0, tighten: float = 4.0,
                 qa_kwargs: Mapping | None = None, standard: str = "standard", machine_file=None,
                 delineate: bool | Mapping = False, **plan_options) -> Stages:
    """rtlab's real stages with one set of settings (see the module docstring).

    Parameters
    ----------
    spacing : float, optional
        Phantom voxel size (mm) for cases given by phantom name.
    angles : sequence of float, optional
        Gantry angles (deg); default each case's suggested beams.
    bixel_mm, dose_grid_mm, cutoff_mm, objective, max_iter
        Standard plan settings (:func:`rtlab.planning.plan_case`; mm, iterations).
    convert_method, convert_max_iter, attempts_per_task, escalate, tighten
        Conversion settings (:func:`rtlab_convert`).
    qa_kwargs : dict, optional
        :func:`rtlab.evaluate.qa.qa_report` settings for conversion and QA.
    standard : str
        The standard machine's name.
    machine_file : str, optional
        Beam model of the standard plans: a matRad photon machine file or a built-in name
        (``rtlab batch --machine-file``); the standard machine's MLC is kept, and conversion
        targets keep their own sources. The path travels to the workers, which load it once.
    delineate : bool or dict
        Run the optional ``delineate`` stage (:func:`rtlab_delineate`; a stand-in for a clinical
        auto-contouring model): True with its defaults, or a dict of its options (``atlas``,
        ``structures``, ``registration``, ``threshold_hu``, ``seeds``). Default False: no
        delineation, the case's own structures are planned (records and fingerprints unchanged).
    **plan_options
        Further :func:`plan_from_influence` options (``rx``, ``roi_mm``, ``recipe``, ``falloff``, ...).
    """

    standard_treatment_machine(standard, machine_file)  # fail early on an unknown name or a broken file
    if convert_method not in METHODS:
        raise ValueError(f"convert_method must be one of {METHODS}, got {convert_method!r}")
    for name, v in (("max_iter", max_iter), ("convert_max_iter", convert_max_iter),
                    ("attempts_per_task", attempts_per_task)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    if spacing is not None and not float(spacing) > 0:
        raise ValueError(f"spacing must be a positive voxel size in mm, got {spacing!r}")
    a = None if angles is None else tuple(float(v) for v in angles)
    qk = None if qa_kwargs is None else dict(qa_kwargs)
    dl = None
    if delineate is not False and delineate is not None:
        opts = {} if delineate is True else dict(delineate) if isinstance(delineate, Mapping) else None
        if opts is None:
            raise TypeError(f"delineate must be True/False or a dict of rtlab_delineate options, got {delineate!r}")
        unknown = set(opts) - {"atlas", "structures", "registration", "threshold_hu", "seeds"}
        if unknown:
            raise ValueError(f"delineate: unknown option(s) {sorted(unknown)}; use atlas, structures, registration, "
                             "threshold_hu, seeds")
        if opts.get("registration", "moments") not in REGISTRATIONS:
            raise ValueError(f"delineate: registration must be one of {REGISTRATIONS}, got {opts['registration']!r}")
        if "atlas" in opts and opts["atlas"] is not None and opts["atlas"] not in list_phantoms():
            raise ValueError(f"delineate: atlas must be a built-in phantom ({', '.join(list_phantoms())}), "
                             f"got {opts['atlas']!r}")
        dl = partial(rtlab_delineate, **opts)
    return Stages(
        delineate=dl,
        load=partial(rtlab_load, spacing=spacing),
        n_beams=partial(rtlab_n_beams, angles=a),
        influence=partial(rtlab_influence, angles=a, bixel_mm=bixel_mm, dose_grid_mm=dose_grid_mm,
                          cutoff_mm=cutoff_mm, standard=standard, machine_file=machine_file),
        optimize=partial(rtlab_optimize, objective=objective, max_iter=int(max_iter), **plan_options),
        convert=partial(rtlab_convert, method=convert_method, max_iter=int(convert_max_iter),
                        attempts_per_task=int(attempts_per_task), escalate=escalate, tighten=tighten,
                        qa_kwargs=qk, standard_machine=standard, machine_file=machine_file),
        qa=partial(rtlab_qa, qa_kwargs=qk),
    )


def default_stages() -> Stages:
    """rtlab's default stages: :func:`rtlab_stages` with its defaults (= ``Stages()``)."""
    return Stages()
