"""The ``rtlab`` command line.

Subcommands
-----------
``rtlab phantoms``
    List the built-in phantoms.
``rtlab score --dose FILE.npz (--phantom NAME | --matrad FILE | --dicom DIR) [--rx GY] [--json]``
    Score a dose (array ``dose`` in Gy on the case's own grid, ``(z, y, x)``).
``rtlab score --rtdose FILE [FILE ...] --rtstruct FILE [--ct DIR] [--rx GY] [--target NAME] [--skip-outside] [--json]``
    Score a planning system's RTDOSE over its RTSTRUCT (:func:`rtlab.io.load_dicom_rt`,
    :func:`rtlab.evaluate.dose_volume.score_dicom_rt`): structures on the dose grid with
    sub-voxel resolution (or on the CT with ``--ct``), the TPS's DVHSequence figures beside
    rtlab's with the differences.
``rtlab dose --rtplan FILE (--dicom DIR | --ct DIR | --matrad FILE | --phantom NAME) [--rtdose FILE] [--out RD.dcm] [--machine-file FILE] [--json]``
    Re-compute a DICOM RT Plan's dose (:func:`rtlab.planning.recompute_rtplan`) and, with
    ``--rtdose``, its 3D gamma against the plan's RTDOSE (``--gamma 3,3`` in %, mm).
``rtlab dose (--phantom NAME | --matrad FILE | --dicom DIR) [--angles 0,72,...] [--bixel MM] [--grid MM] [--gpu] [--machine-file FILE] [--out FILE.npz] [--json]``
    Build the influence matrix and report sizes, timings, the isocentre and the beamlet count;
    ``--out`` saves the dose of unit beamlet weights (Gy per unit weight, CT grid).

``--machine-file FILE`` (``dose``, ``plan``, ``batch``, ``score``) names the beam model: a matRad
photon machine file (:func:`rtlab.dose.load_matrad_machine`) or a built-in name
(:func:`rtlab.dose.resolve_machine`). ``score --machine-file`` re-computes the dose of a plan file's
beamlet weights (written by ``plan --out``) with that model before scoring.
``rtlab plan (--phantom NAME | --matrad FILE | --dicom DIR) [--angles ...] [--objective conformity|quadratic] [--falloff G] [--control-points] [--grid MM] [--json] [--out FILE.npz]``
    Build the dose, optimise (:func:`rtlab.planning.plan_case`), print timings and the score
    table (``--json``: ``timings`` holds the wall seconds of each stage: ``import_s`` from the
    process start to the planning modules imported, ``load_s``, ``build_s``, ``optimize_s``
    with the goal rounds, ``score_s`` (CT-grid dose, MU, scores), ``write_s``, ``total_s`` from
    the process start); ``--grid`` defaults to 5 mm for ``--matrad`` (matRad's own default dose
    grid; ``--grid ct`` plans on the CT grid) and to the CT grid otherwise; ``--falloff`` is in Gy/mm; ``--out`` saves the dose in the format ``score`` reads;
    ``--sequence step|sliding --rtplan-out RP.dcm`` writes the sequenced plan as an RT Plan with
    its CT, RTSTRUCT and RTDOSE beside it (:func:`rtlab.planning.export_plan_dicom`).

The plan and engine settings go into one :class:`rtlab.planning.PlanSettings`, which checks them
(``--grid MM`` is its ``dose_grid_mm``, ``--bixel`` its ``bixel_mm``, ``--falloff`` its
``falloff_gy_per_mm``).

Size: about 910 lines: every subcommand's argument checks (all made before any work starts,
issue #15) and its one-screen report live beside its parser entry; the work itself is one
library call per subcommand.
``rtlab reproduce [--seed 000|001|002|003|004 ...] [--reduced] [--json]``
    The reproduction rows of :mod:`rtlab.reproduce` (issue #20): one row per claim of the source
    documents, computed live (minutes; ``--reduced``: fewer and coarser cases); ``--json`` prints
    ``{"rows": [...]}``.
``rtlab lab [--notebooks DIR] [JUPYTER OPTIONS ...]``
    Open JupyterLab on the notebooks, as ``scripts/lab.sh`` does: every other option goes to
    ``jupyter lab`` untouched and in order, and ``--allow-root`` is added when run as root.
``rtlab batch --cases NAME|FILE ... --machines NAME[=LOAD] ... [--scheduler ADDRESS] [--workers N] [--out DIR] [--spacing MM] [--angles ...] [--max-iter N] [--fanout K] [--policy P] [--delineate [ATLAS]] [--measure-loads] [--dashboard-address HOST:PORT|none] [--json]``
    Patent 001 batch planning on dask (:func:`rtlab.batch.run_batch_cli`): a standard plan per
    case, converted for the machines, QA'd, persisted; prints progress, the dashboard link and
    the QA table. ``--delineate`` adds the automatic delineation stage (a stand-in for a
    clinical auto-contouring model; Dice against the case's own contours in the records);
    ``--measure-loads`` takes the machines' queue loads from the cluster (``--scheduler``).
    Exit status 1 when a case failed or a plan failed QA.

Every argument is checked before any work starts. Every subcommand exits with status 2 and a
one-line message on bad input (no traceback; ``RTLAB_DEBUG=1`` shows it); an unexpected
internal error exits with status 1 and one line. Warnings are printed one line each as
``rtlab CMD: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

# numba's parallel kernels run on OpenMP (its default threading layer here). GNU OpenMP's
# threads spin-wait between parallel regions by default; on a machine whose cores are shared
# with other processes a spinning thread that lost its core stalls every kernel (measured on
# TG119.mat, 2 cores with two other busy processes: a dose product 24 ms instead of 4 ms).
# Passive waiting costs nothing measurable when the cores are free. Set before numba starts
# OpenMP; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._lazy import load  # noqa: E402
from ._util import check_output_path, json_safe  # noqa: E402
from .core.validate import check_angles, check_spacing  # noqa: E402

# Deferred imports (rtlab._lazy.load): a subcommand imports only what it uses, so that
# `rtlab plan` does not pay for the batch, DICOM, sequencing, Gamma-Knife or plotting modules
# at start-up (issue #18: the whole command is timed as a fresh process).
pd = load("pandas")
phantoms = load("rtlab.phantoms")
batch = load("rtlab.batch")
mlc = load("rtlab.core.mlc")
dose_pkg = load("rtlab.dose")
compare = load("rtlab.evaluate.compare")
dose_volume = load("rtlab.evaluate.dose_volume")
rtio = load("rtlab.io")
deliverable = load("rtlab.methods.deliverable")
gkplan = load("rtlab.methods.gk.plan")
planning = load("rtlab.planning")
intent = load("rtlab.planning.intent")

def plan_case(*args, **kwargs):
    """:func:`rtlab.planning.plan_case` (imported on first use; a name of this module, so that
    the work a command starts can be replaced in tests)."""
    return planning.plan_case(*args, **kwargs)


def run_batch_cli(*args, **kwargs):
    """:func:`rtlab.batch.run_batch_cli` (imported on first use; see :func:`plan_case`)."""
    return batch.run_batch_cli(*args, **kwargs)


#: Dose grid (mm) of `rtlab plan --matrad FILE` without --grid: matRad's own default dose grid
#: (matRad and pyRadPlan plan on a 5 x 5 x 5 mm dose grid unless one is set), so that a matRad
#: case is planned as matRad would. ``--grid ct`` plans on the file's CT grid instead.
MATRAD_DOSE_GRID_MM = 5.0

#: Conformity-recipe entries of `rtlab plan --matrad FILE`: the guard on every 2nd dose-grid
#: voxel per axis, so that an iteration streams about a quarter of the influence matrix
#: (:func:`rtlab.planning.recipes.guard_mask`; issue #18: TG119.mat's plan moves by < 0.03 Gy).
#: Built-in phantoms and DICOM cases keep the recipe's default (every voxel): on the built-in
#: C-shape at a 5 mm grid the subsample moved the core's D10 from 24.95 to 25.03 Gy.
MATRAD_RECIPE_DEFAULTS = {"guard_stride": 2}

#: Iteration limit of `rtlab plan --matrad FILE --objective conformity` when ``--max-iter`` is
#: not given (else 100). On TG119.mat the plan has converged for every goal well before 100: at 50
#: iterations D95 / D10 / Core D10 are 50.19 / 54.59 / 21.86 Gy against 50.20 / 54.58 / 21.45 Gy
#: at the 95 the change rule stopped at (5 beams; 9 beams 50.58 / 54.07 / 17.86 against 50.62 /
#: 54.07 / 17.72), every TG-119 goal met either way; the goal rounds still run if a goal fails.
MATRAD_MAX_ITER = 50
DEFAULT_MAX_ITER = 100


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; 10 ms steps), or None where unknown.

    ``rtlab plan --json`` reports it as ``timings.import_s`` (interpreter start-up and imports)
    and ``timings.total_s``, so that the whole command is timed from inside too.
    """
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _grid_arg(text: str):
    """``--grid`` of `rtlab plan`: a spacing in mm, or ``ct`` for the CT grid."""
    if text.strip().lower() == "ct":
        return "ct"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a spacing in mm or 'ct', got {text!r}") from None

__all__ = ["main", "load_case", "build_parser"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_case_args(p: argparse.ArgumentParser, required: bool = True, ct_alias: bool = False) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--phantom", metavar="NAME", help="a built-in phantom (see `rtlab phantoms`)")
    src.add_argument("--matrad", metavar="FILE", help="a matRad phantom .mat file (ct + cst)")
    names = ("--dicom", "--ct") if ct_alias else ("--dicom",)
    src.add_argument(*names, dest="dicom", metavar="DIR", help="a directory with a CT series and an RTSTRUCT")
    p.add_argument("--spacing", metavar="MM", help="phantom voxel size: one number or dz,dy,dx (only with --phantom)")


def _add_goals_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--goals", choices=intent.GOAL_SETS, default="auto",
                   help="goals to plan towards and score: auto (TG-119's for a recognised TG-119 case such as "
                        "matRad's TG119.mat, else the case's own; default), file (the case's own, e.g. read from a "
                        "matRad cst), tg119, none")


#: PlanSettings field (as its messages name it) -> the command-line flag that sets it.
_FLAGS = {"dose_grid_mm": "--grid", "bixel_mm": "--bixel", "falloff (Gy/mm)": "--falloff", "cutoff_mm": "--cutoff",
          "rx (Gy)": "--rx", "max_iter": "--max-iter"}


def _settings(**kw) -> PlanSettings:
    """:class:`PlanSettings` from the command line; a bad value is a :class:`CLIError` naming the flag."""
    try:
        return planning.PlanSettings(**kw)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        for name, flag in _FLAGS.items():
            if msg.startswith(name + " "):
                raise CLIError(f"{flag} ({name}) {msg[len(name):].lstrip()}") from None
        raise CLIError(msg) from None


def _machine(args):
    """The beam model of ``--machine-file`` (a matRad photon machine file or a built-in name), or None."""
    f = getattr(args, "machine_file", None)
    if f is None:
        return None
    try:
        return dose_pkg.resolve_machine(f, "--machine-file")
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _add_machine_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--machine-file", metavar="FILE", help=f"beam model {what}: a matRad photon machine file "
                   "(photons_<name>.mat) or a built-in name (generic_6mv, generic_6mv_v1); default generic_6mv")


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _parse_angles(text: str | None) -> list[float] | None:
    """``--angles`` as finite degrees (None when not given)."""
    if text is None:
        return None
    try:
        return check_angles("--angles", _parse_floats(text, "--angles"))
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None


def _parse_spacing(args) -> float | tuple | None:
    """``--spacing`` of a case (one number or dz,dy,dx, mm), checked; only with ``--phantom``."""
    text = getattr(args, "spacing", None)
    if not text:
        return None
    if not getattr(args, "phantom", None):
        raise CLIError("--spacing only applies to --phantom; files keep their own grid")
    sp = _parse_floats(text, "--spacing")
    try:
        sp = check_spacing("--spacing", sp)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    if len(sp) not in (1, 3):
        raise CLIError(f"--spacing must be one number or three (dz,dy,dx) in mm, got {text!r}")
    return sp[0] if len(sp) == 1 else tuple(sp)


def _positive(flag: str, v, unit: str):
    if v is not None and not (math.isfinite(v) and v > 0):
        raise CLIError(f"{flag} must be a positive number ({unit}), got {v}")
    return v


def _input_file(flag: str, path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{flag} {str(path)!r} does not exist or is not a file")
    return p


def _check_case_source(args) -> None:
    """The case arguments, checked before anything is loaded (the files' contents are the readers' job)."""
    _parse_spacing(args)
    if getattr(args, "matrad", None):
        _input_file("--matrad", args.matrad)
    if getattr(args, "dicom", None) and not Path(args.dicom).is_dir():
        raise CLIError(f"--dicom {args.dicom!r} does not exist or is not a folder")
    if getattr(args, "phantom", None) and args.phantom not in phantoms.list_phantoms():
        raise CLIError(f"unknown phantom {args.phantom!r}; valid names: {', '.join(phantoms.list_phantoms())}")


def load_case(args: argparse.Namespace):
    """The :class:`rtlab.core.case.Case` named by ``--phantom``, ``--matrad`` or ``--dicom``."""
    if args.phantom:
        kw = {}
        spacing = _parse_spacing(args)
        if spacing is not None:
            kw["spacing"] = spacing
        try:
            return phantoms.get_phantom(args.phantom, **kw)
        except ValueError as e:
            if spacing is None:
                raise
            raise CLIError(f"--phantom {args.phantom} --spacing {args.spacing}: {e}") from None
    _parse_spacing(args)
    if args.matrad:
        return rtio.load_matrad(args.matrad)
    return rtio.load_dicom(args.dicom)


def cmd_phantoms(args) -> int:
    rows = phantoms.describe_phantoms()
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    print(f"{'name':<20} {'rx (Gy)':>8} {'spacing (z,y,x) mm':>22} {'grid (z,y,x)':>16}  description")
    for r in rows:
        sp = ",".join(f"{v:g}" for v in r["spacing"])
        shape = "x".join(str(v) for v in r["shape"])
        rx = f"{r['prescription']:g}" if r.get("prescription") else "-"
        desc = r["description"].split(". ")[0]
        print(f"{r['name']:<20} {rx:>8} {sp:>22} {shape:>16}  {desc}")
    return 0


def _with_goals(case, args):
    try:
        return intent.with_goals(case, args.goals)
    except ValueError as exc:
        raise CLIError(f"--goals {args.goals}: {exc}") from None


def _recompute_dose(args, case, machine):
    """Dose of the plan file's beamlet weights re-computed with ``machine`` (``score --machine-file``)."""
    with np.load(args.dose) as z:
        missing = [k for k in ("x", "angles", "bixel_mm") if k not in z.files]
        if missing:
            raise CLIError(f"--machine-file re-computes the dose from the plan's beamlet weights, but {args.dose} "
                           f"lacks {missing}; write it with `rtlab plan ... --out FILE.npz`")
        x, angles, bixel = np.asarray(z["x"], float), [float(a) for a in z["angles"]], float(z["bixel_mm"])
        grid = float(z["dose_grid_mm"]) if "dose_grid_mm" in z.files else float("nan")
    im = dose_pkg.build_influence(case, angles, machine=machine, bixel_mm=bixel, dose_grid_mm=None if np.isnan(grid) else grid,
                         progress=False)
    if x.size != im.shape[1]:
        raise CLIError(f"{args.dose} holds {x.size} beamlet weights but this case and angles have {im.shape[1]} "
                       "beamlets; was the plan made on another case?")
    return im.dose(x, on="ct")


def cmd_score(args) -> int:
    _positive("--rx", args.rx, "Gy")
    if args.rtdose or args.rtstruct:
        return cmd_score_rt(args)
    if args.ct or args.target or args.skip_outside:
        raise CLIError("--ct, --target and --skip-outside go with --rtdose FILE --rtstruct FILE")
    if not args.dose or not (args.phantom or args.matrad or args.dicom):
        raise CLIError("give --dose FILE.npz with --phantom/--matrad/--dicom, or --rtdose FILE --rtstruct FILE")
    _input_file("--dose", args.dose)
    _check_case_source(args)
    case = _with_goals(load_case(args), args)
    dose = rtio.load_dose_npz(args.dose, expected_shape=case.grid.shape)
    machine = _machine(args)
    stored = None
    if machine is not None:
        stored, dose = dose, _recompute_dose(args, case, machine)
    out = compare.score_summary(case, dose, args.rx)
    if stored is not None:
        out.update(recomputed_with=machine.name, dose_change_max_gy=round(float(abs(dose - stored).max()), 4))
    out["goal_set"] = case.meta.get("goal_set")
    if args.json:
        print(json.dumps(out))
        return 0
    table = compare.score({Path(args.dose).stem: dose}, case, rx=out["rx_gy"])
    with pd.option_context("display.max_rows", None, "display.width", 140):
        print(table.to_string(index=False))
    return 0


def cmd_score_rt(args) -> int:
    """``rtlab score --rtdose ... --rtstruct ...``: a planning system's dose over its structures."""
    if not args.rtdose or not args.rtstruct:
        raise CLIError("--rtdose FILE and --rtstruct FILE go together (a planning system's dose and structures)")
    if args.dose or args.phantom or args.matrad or args.dicom:
        raise CLIError("--rtdose/--rtstruct score a DICOM RT dose; leave out --dose/--phantom/--matrad/--dicom "
                       "(the CT goes with --ct DIR)")
    rt = rtio.load_dicom_rt(args.rtdose, args.rtstruct, ct=args.ct, supersample=args.supersample,
                       outside="skip" if args.skip_outside else "error",
                       progress=not args.json and sys.stderr.isatty())
    out = dose_volume.score_dicom_rt(rt, rx=args.rx, target=args.target, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(rt.summary())
    for k in ("target", "rx_gy", "ci_paddick", "ci_rtog", "gi", "hi", "coverage"):
        v = out[k]
        print(f"  {k:<11} {v:.4g}" if isinstance(v, float) else f"  {k:<11} {v}")
    cols = ("volume_cc", "Dmin", "Dmean", "Dmax", "D98", "D95", "D50", "D2", "D2cc")
    rows = []
    for nm, st in out["structures"].items():
        rows.append({"structure": nm, "source": "rtlab", **{c: st.get(c) for c in cols}})
        if nm in out.get("tps", {}):
            rows.append({"structure": nm, "source": "TPS", **{c: out["tps"][nm].get(c) for c in cols}})
            rows.append({"structure": nm, "source": "diff", **{c: out["tps_difference"][nm].get(c) for c in cols}})
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_dose_rtplan(args) -> int:
    """``rtlab dose --rtplan FILE ...``: re-compute an RT Plan on a case, gamma against its RTDOSE."""
    if args.out is not None and not str(args.out).lower().endswith(".dcm"):
        raise CLIError(f"--out must name a .dcm file (an RTDOSE), got {args.out!r}")
    crit = _parse_floats(args.gamma, "--gamma")
    if len(crit) != 2 or not all(math.isfinite(v) and v > 0 for v in crit):
        raise CLIError(f"--gamma must be two positive numbers 'PERCENT,MM', got {args.gamma!r}")
    plan = rtio.load_rtplan(args.rtplan, mlc=args.mlc)
    case = load_case(args)
    grid = rtio.read_rtdose(args.rtdose).grid if (args.rtdose and args.dose_grid_mm is None) else args.dose_grid_mm
    rc = planning.recompute_rtplan(plan, case, machine=_machine(args), dose_grid=grid, progress=not args.json and sys.stderr.isatty())
    out = {"case": case.name, "rtplan": str(args.rtplan), "beams": len(plan.beams), "fractions": plan.fractions,
           "mu_per_fraction": plan.mu_per_fraction, "dose_max_gy": float(rc.dose.max()),
           "grid_shape": list(rc.grid.shape), "grid_spacing_mm": list(rc.grid.spacing),
           **{k: round(v, 3) for k, v in rc.timings.items()}}
    if args.rtdose:
        out["gamma"] = planning.gamma_against(rc, args.rtdose, crit[0] / 100.0, crit[1], normalise=args.normalise)
    if args.out:
        rtio.save_rtdose(np.clip(rc.dose, 0, None), rc.grid, args.out, reference=case, plan_uid=plan.sop_instance_uid or None,
                    description="rtlab re-computed RT Plan")
        out["out"] = str(args.out)
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(plan.summary())
    print(f"  re-computed on {case.name}: max {out['dose_max_gy']:.4g} Gy (whole course) on a {rc.grid.shape} grid "
          f"of {rc.grid.spacing} mm; fluence {rc.timings['fluence_s']:.2f} s, dose {rc.timings['dose_s']:.2f} s")
    if "gamma" in out:
        g = out["gamma"]
        print(f"  gamma {g['criterion']} against {Path(args.rtdose).name}: pass rate {100 * g['pass_rate']:.2f} % "
              f"of {g['n_evaluated']} voxels (mean {g['mean']:.3f}, max {g['max']:.3f})")
    if args.out:
        print(f"  dose saved to {args.out}")
    return 0


def _angles(args, case, given: list[float] | None = None) -> list[float]:
    if given is not None:
        return given
    if args.angles:
        return _parse_angles(args.angles)
    if case.beams:
        return [b.gantry for b in case.beams]
    return [0.0, 72.0, 144.0, 216.0, 288.0]


def cmd_dose(args) -> int:
    if args.rtplan:
        return cmd_dose_rtplan(args)
    if args.rtdose:
        raise CLIError("--rtdose goes with --rtplan FILE")
    if args.out is not None:
        try:
            check_output_path(args.out, "--out", suffix=".npz")
        except ValueError as e:
            raise CLIError(str(e)) from None
    settings = _settings(bixel_mm=args.bixel, dose_grid_mm=args.dose_grid_mm, cutoff_mm=args.cutoff)
    given = _parse_angles(args.angles)
    _check_case_source(args)
    case = load_case(args)
    angles = _angles(args, case, given)
    out, im = dose_pkg.engine_summary(case, angles, bixel_mm=settings.bixel_mm, dose_grid_mm=settings.dose_grid_mm,
                             gpu=args.gpu, cutoff_mm=settings.cutoff_mm, machine=_machine(args), return_influence=True)
    out = {"case": case.name, "angles": angles, "bixel_mm": settings.bixel_mm, "dose_grid_mm": settings.dose_grid_mm,
           **out}
    if args.out:
        # every beamlet weight 1: Gy per unit weight on the CT grid (z, y, x)
        dose = im.dose(np.ones(im.shape[1]), on="ct")
        rtio.save_npz(args.out, dose=dose, grid=case.grid, isocenter_mm=np.asarray(out["isocenter_mm"]),
                 angles=np.asarray(angles, float), bixel_mm=np.asarray(settings.bixel_mm))
        out["out"] = str(args.out)
        out["dose_max_gy_per_unit_weight"] = round(float(dose.max()), 6)
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(f"{case.name}: {len(angles)} beams at {', '.join(f'{a:g}' for a in angles)} deg, "
          f"{settings.bixel_mm:g} mm bixels, dose grid {settings.dose_grid_mm or 'CT'} mm")
    for k in ("machine", "isocenter_mm", "n_voxels", "n_beamlets", "nnz", "build_s", "compile_s", "matvec_ms",
              "matvec_scipy_ms", "patch_update_ms", "cutoff_mm", "gpu"):
        print(f"  {k:<16} {out[k]}")
    if args.out:
        print(f"  unit-weight dose saved to {args.out} (max {out['dose_max_gy_per_unit_weight']} Gy per unit weight)")
    return 0


def cmd_plan(args) -> int:
    # every argument first: nothing below may fail on an argument after minutes of planning
    if args.objective not in planning.OBJECTIVES:
        raise CLIError(f"--objective must be one of {', '.join(planning.OBJECTIVES)}, got {args.objective!r}")
    if args.max_iter is not None and not args.max_iter > 0:
        raise CLIError(f"--max-iter must be a positive number, got {args.max_iter}")
    max_iter = args.max_iter
    if max_iter is None:
        max_iter = MATRAD_MAX_ITER if args.matrad and args.objective == "conformity" else DEFAULT_MAX_ITER
    grid = args.dose_grid_mm
    if grid is None and args.matrad:
        grid = MATRAD_DOSE_GRID_MM  # matRad's default dose grid (module constant)
    recipe = dict(MATRAD_RECIPE_DEFAULTS) if args.matrad and args.objective == "conformity" else None
    settings = _settings(objective=args.objective, falloff_gy_per_mm=args.falloff,
                         control_points=args.control_points, bixel_mm=args.bixel,
                         dose_grid_mm=None if grid == "ct" else grid, rx=args.rx, max_iter=int(max_iter),
                         recipe_overrides=recipe)
    if args.out is not None:
        try:
            check_output_path(args.out, "--out", suffix=".npz")
        except ValueError as e:
            raise CLIError(str(e)) from None
    if args.sequence:
        args.machine = args.machine or "generic_5mm_60"
        try:
            mlc.get_mlc(args.machine)
        except ValueError as e:
            raise CLIError(f"--machine: {e}") from None
    elif args.machine is not None:
        raise CLIError("--machine only applies with --sequence (the MLC the fluence is sequenced on)")
    given = _parse_angles(args.angles)
    _check_case_source(args)
    if args.rtplan_out is not None and not args.sequence:
        raise CLIError("--rtplan-out needs --sequence step|sliding (an RT Plan holds leaf motions)")
    if args.rtplan_out is not None and not str(args.rtplan_out).lower().endswith(".dcm"):
        raise CLIError(f"--rtplan-out must name a .dcm file, got {args.rtplan_out!r}")
    # the modules of the planning path, imported now so that the load stage times the load only
    _ = (planning.plan_case, rtio.load_matrad, compare.score_summary)
    timings = {"import_s": process_age_s()}
    t0 = time.perf_counter()
    case = _with_goals(load_case(args), args)
    timings["load_s"] = time.perf_counter() - t0
    if settings.objective == "matrad" and "matrad" not in case.meta:
        raise CLIError("--objective matrad plans with a matRad file's own cst objectives; use it with --matrad FILE")
    angles = _angles(args, case, given)
    if not angles:
        raise CLIError("--angles is empty; give gantry angles in degrees, e.g. 0,72,144,216,288")
    machine = _machine(args)
    t0 = time.perf_counter()
    res = plan_case(case, angles, settings=settings, machine=machine, progress=not args.json and sys.stderr.isatty())
    plan_s = time.perf_counter() - t0
    out = dict(res.scores)  # score_summary(case, res.dose, settings.rx), made by plan_case
    t = res.timings
    timings.update(build_s=t["build_s"], optimize_s=t["optimize_s"],
                   score_s=max(0.0, plan_s - t["build_s"] - t["optimize_s"]))
    out.update(build_s=round(t["build_s"], 3), optimize_s=round(t["optimize_s"], 3), iterations=int(t["iterations"]),
               max_iter=settings.max_iter,
               mu_total=round(res.mu_total, 1), status=t["status"], objective=settings.objective, angles=angles,
               falloff_gy_per_mm=settings.falloff_gy_per_mm, control_points=settings.control_points,
               dose_grid_mm=settings.dose_grid_mm, bixel_mm=settings.bixel_mm, machine_model=res.influence.machine.name,
               recipe_overrides=recipe or {},
               goal_set=case.meta.get("goal_set"))
    seq = None
    if args.sequence:
        fractions = max(1, int(round((case.prescription or settings.rx or 2.0) / 2.0)))
        seq = deliverable.sequence_plan(res.influence, res.x, machine=args.machine, method=args.sequence, fractions=fractions,
                            leaf_alignment="isocentre" if args.rtplan_out else "grid")
        # the optimised fluence's MU (whole prescription) stays available; mu_total becomes the
        # sequenced delivery's MU per fraction
        out["mu_total_fluence"] = out["mu_total"]
        out.update(seq.summary(case))
    t0 = time.perf_counter()
    if args.out:
        res.save(args.out)
        out["out"] = str(args.out)
    timings["write_s"] = time.perf_counter() - t0
    if args.rtplan_out:
        files = planning.export_plan_dicom(case, seq, res.influence.beams, args.rtplan_out, prescription_gy=settings.rx
                                  or case.prescription, machine=res.influence.machine)
        out["rtplan_out"] = {k: str(files[k]) for k in ("rtplan", "rtstruct", "rtdose")}
        out["rtplan_out"]["ct_files"] = len(files["ct"])
        out["rtplan_out"]["sequencer_gap"] = {k: round(v, 4) for k, v in files["sequencer_gap"].items()}
    timings["total_s"] = process_age_s()
    out["timings"] = {k: (None if v is None else round(v, 3)) for k, v in timings.items()}
    if t.get("goal_rounds"):
        out["goal_rounds"] = int(t["goal_rounds"])
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(f"{case.name}: {len(angles)} beams at {', '.join(f'{a:g}' for a in angles)} deg, objective "
          f"{settings.objective}, {settings.bixel_mm:g} mm bixels, dose grid {settings.dose_grid_mm or 'CT'} mm"
          + (f", falloff {settings.falloff_gy_per_mm:g} Gy/mm" if settings.falloff_gy_per_mm else "")
          + (", control points" if args.control_points else ""))
    print(f"  build {t['build_s']:.2f} s, optimise {t['optimize_s']:.2f} s, {t['iterations']} iterations "
          f"({t['status']}), {res.mu_total:.0f} MU")
    print("  wall time (s): " + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in timings.items() if v is not None))
    table = res.score_table(Path(args.out).stem if args.out else "plan")
    with pd.option_context("display.max_rows", None, "display.width", 140):
        print(table.to_string(index=False))
    if seq is not None:
        sm = seq.summary(case)
        print(f"  sequenced ({args.sequence}, {args.machine}, {sm['fractions']} fractions): "
              f"{sm['mu_total']:.0f} MU per fraction (lower bound {sm['mu_lower_bound']:.0f}), "
              f"{sm['segments']} segments; deliverable CI {sm['deliverable_ci_paddick']:.3f} "
              f"(optimised {sm['optimised_ci_paddick']:.3f}), D95 {sm['d95_deliverable']:.2f} Gy")
    if args.out:
        print(f"  dose saved to {args.out}")
    if args.rtplan_out:
        f = out["rtplan_out"]
        print(f"  RT Plan written to {f['rtplan']} (with {f['rtstruct']}, {f['rtdose']} and {f['ct_files']} CT files)")
    return 0


def cmd_gk(args) -> int:
    try:
        check_spacing("--spacing", args.spacing_mm)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    if args.phantom not in phantoms.list_phantoms():
        raise CLIError(f"unknown phantom {args.phantom!r}; built-ins: {phantoms.list_phantoms()}")
    out = gkplan.gk_summary(args.phantom, spacing=args.spacing_mm, target=args.target, method=args.method)
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(f"{out.get('case', args.phantom)}: {out['n_shots']} shots ({args.method}), beam-on {out['beam_on_min']:.1f} min")
    for k in ("coverage", "selectivity", "ci_paddick", "gi", "isodose_pct", "optimize_s"):
        if k in out and out[k] is not None:
            print(f"  {k:<12} {out[k]:.3f}")
    return 0


def jupyter_executable() -> str | None:
    """``jupyter`` of this Python's environment (as ``scripts/lab.sh`` uses ``.venv/bin/jupyter``), else on PATH."""
    here = Path(sys.executable).with_name("jupyter")
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("jupyter")


def lab_command(argv: list[str]) -> list[str]:
    """The ``jupyter lab`` command line of ``rtlab lab ARGV`` (what ``scripts/lab.sh`` runs).

    ``--notebooks DIR`` (or ``--notebooks=DIR``) is rtlab's own option; every other argument
    goes to ``jupyter lab`` untouched and in the order given. As root ``--allow-root`` is
    added (Jupyter refuses to run as root without it; in a container that is the usual user).
    """
    root = Path(__file__).resolve().parents[1]
    nb, extra = None, []
    it = iter(argv)
    for a in it:
        if a == "--notebooks":
            nb = next(it, None)
            if nb is None:
                raise CLIError("--notebooks needs a directory")
        elif a.startswith("--notebooks="):
            nb = a.split("=", 1)[1]
        else:
            extra.append(a)
    nb = Path(nb) if nb else root / "notebooks"
    if not nb.is_dir():
        raise CLIError(f"notebook directory {nb} does not exist; pass --notebooks DIR")
    jupyter = jupyter_executable()
    if jupyter is None:
        raise CLIError("jupyter is not installed in this environment; pip install 'rtlab[lab]' (or run bash scripts/lab.sh)")
    cmd = [jupyter, "lab", f"--notebook-dir={nb}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        cmd.append("--allow-root")
    return cmd + extra


def cmd_lab(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv[:1]):
        build_parser().parse_args(["lab", "--help"])
    return subprocess.call(lab_command(argv))


def cmd_batch(args) -> int:
    opts = {}
    angles = _parse_angles(args.angles)
    if angles is not None:
        opts["angles"] = angles
    for flag, v in (("--max-iter", args.max_iter), ("--workers", args.workers), ("--qa-attempts", args.qa_attempts),
                    ("--fanout", args.fanout)):
        if v is not None and v < 1:
            raise CLIError(f"{flag} must be >= 1, got {v}")
    if args.spacing is not None:
        try:
            check_spacing("--spacing", args.spacing)
        except (TypeError, ValueError) as e:
            raise CLIError(str(e)) from None
    if args.max_iter is not None:
        opts["max_iter"] = opts["convert_max_iter"] = int(args.max_iter)
    dash = args.dashboard_address
    if dash is not None and dash.strip().lower() in ("none", "off", ""):
        dash = None
    kw = dict(policy=args.policy, max_qa_attempts=args.qa_attempts, dashboard_address=dash)
    if args.fanout is not None:
        kw["fanout"] = args.fanout
    if args.machine_file is not None:
        _machine(args)  # fail here, before any worker starts, on a missing or broken file
        opts["machine_file"] = str(Path(args.machine_file).resolve()) if Path(args.machine_file).is_file() \
            else args.machine_file
    if args.delineate is not None:
        opts["delineate"] = True if args.delineate is True else dict(atlas=args.delineate)
    if args.measure_loads:
        if args.scheduler is None:
            raise CLIError("--measure-loads needs --scheduler: the local cluster's workers have no machine pools "
                           "(start workers with --resources MACHINE=1 on your scheduler)")
        kw["measure_loads"] = True
    quiet = bool(args.json)
    summary = run_batch_cli(args.cases, args.machines, args.scheduler, args.workers, args.out, spacing=args.spacing,
                            stage_options=opts, progress=not quiet and sys.stderr.isatty(), verbose=not quiet, **kw)
    if args.json:
        print(json.dumps(dict(out=summary["out"], files=summary["files"], persisted=summary["persisted"],
                              replanned=summary.get("replanned", {}), failed=summary["failed"],
                              qa_failed=summary["qa_failed"], all_passed=summary["all_passed"],
                              dashboard=summary["dashboard"], elapsed_s=round(summary["elapsed_s"], 3),
                              **{k: summary[k] for k in ("delineation", "measured_loads") if k in summary}),
                         default=json_safe))
    return 0 if not summary["failed"] and not summary["qa_failed"] else 1


REPRODUCE_SEEDS = ("000", "001", "002", "003", "004")


def cmd_reproduce(args) -> int:
    seeds = REPRODUCE_SEEDS if not args.seed else tuple(dict.fromkeys(str(s).zfill(3) for s in args.seed))
    unknown = [s for s in seeds if s not in REPRODUCE_SEEDS]
    if unknown:
        raise CLIError(f"--seed: no reproduction rows for {', '.join(unknown)}; seeds with rows: "
                       f"{', '.join(REPRODUCE_SEEDS)}")
    # imported here: the rows pull in planning, batch (dask) and the region model (torch)
    reproduce = importlib.import_module("rtlab.reproduce")
    t0 = time.perf_counter()
    rows = reproduce.run(seeds, reduced=args.reduced, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps({"rows": rows}, default=json_safe))
    else:
        print(reproduce.rows_table(rows))
        held = sum(r["held"] for r in rows)
        print(f"\n{held}/{len(rows)} rows held; {time.perf_counter() - t0:.0f} s"
              + (" (reduced)" if args.reduced else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtlab", description="rtlab: a laboratory for radiotherapy planning algorithms")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("phantoms", help="list the built-in phantoms")
    sp.add_argument("--json", action="store_true", help="print one JSON array")
    sp.set_defaults(func=cmd_phantoms)

    sp = sub.add_parser("score", help="score a dose against a case's structures and goals")
    sp.add_argument("--dose", metavar="FILE.npz", help="npz with an array `dose` in Gy, (z, y, x), on the case grid")
    _add_case_args(sp, required=False)
    sp.add_argument("--rtdose", nargs="+", metavar="FILE", help="a planning system's RTDOSE file(s) (summed; with --rtstruct)")
    sp.add_argument("--rtstruct", metavar="FILE", help="the RTSTRUCT of --rtdose")
    sp.add_argument("--ct", metavar="DIR", help="with --rtdose: the CT series; structures on the CT grid instead of "
                    "sub-voxel structures on the dose grid")
    sp.add_argument("--target", metavar="NAME", help="with --rtdose: the target of CI/GI (default: the first PTV/CTV/GTV)")
    sp.add_argument("--skip-outside", action="store_true", help="with --rtdose: leave out structures outside the dose grid")
    sp.add_argument("--supersample", type=int, metavar="S",
                    help="with --rtdose: in-plane sub-pixels per dose voxel and axis (default: >= 5, at most 1 mm)")
    sp.add_argument("--rx", type=float, metavar="GY", help="prescription for CI/GI/HI (default: the case's)")
    _add_machine_arg(sp, "to re-compute the dose with from the plan file's beamlet weights (a file written by "
                     "`rtlab plan --out`) before scoring")
    _add_goals_arg(sp)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("dose", help="build the influence matrix of a case and report sizes and timings")
    _add_case_args(sp, ct_alias=True)
    sp.add_argument("--rtplan", metavar="FILE", help="re-compute this DICOM RT Plan's dose on the case")
    sp.add_argument("--rtdose", metavar="FILE", help="with --rtplan: the plan's RTDOSE for a 3D gamma (and its grid)")
    sp.add_argument("--gamma", default="3,3", metavar="PCT,MM", help="with --rtdose: gamma criterion (default 3,3)")
    sp.add_argument("--normalise", action="store_true", help="with --rtdose: scale to its maximum first (shape only)")
    sp.add_argument("--mlc", metavar="NAME", help="with --rtplan: MLC model when the plan lacks LeafPositionBoundaries")
    sp.add_argument("--angles", metavar="DEG,...", help="gantry angles (default: the case's suggested beams)")
    sp.add_argument("--bixel", type=float, default=5.0, metavar="MM", help="bixel size (default 5 mm)")
    sp.add_argument("--grid", "--dose-grid-mm", dest="dose_grid_mm", type=float, metavar="MM",
                    help="dose-grid spacing dose_grid_mm (default: the CT grid)")
    sp.add_argument("--cutoff", type=float, metavar="MM", help="lateral kernel cut-off (default: the engine's)")
    sp.add_argument("--gpu", action="store_true", help="use the CUDA mat-vec path (fails without a device)")
    _add_machine_arg(sp, "")
    sp.add_argument("--out", metavar="FILE", help="save the dose of unit beamlet weights as FILE.npz (array `dose`, "
                    "Gy per unit weight, CT grid (z, y, x)) with the isocentre; with --rtplan: the re-computed dose "
                    "as an RTDOSE FILE.dcm")
    sp.add_argument("--json", action="store_true", help="print one JSON object (with isocentre and beamlet count)")
    sp.set_defaults(func=cmd_dose)

    sp = sub.add_parser("plan", help="build the dose, optimise and score a plan")
    _add_case_args(sp)
    sp.add_argument("--angles", metavar="DEG,...", help="gantry angles (default: the case's suggested beams)")
    sp.add_argument("--objective", default="conformity", metavar="NAME",
                    help="objective recipe: conformity (patent 000, default), quadratic, or matrad (a matRad "
                         "file's own cst objectives and penalties)")
    _add_goals_arg(sp)
    sp.add_argument("--falloff", type=float, metavar="GY_PER_MM",
                    help="dose falloff gradient G in Gy/mm (2 = 200 cGy/mm): falloff-adjusted targets and a low-dose ring")
    sp.add_argument("--control-points", action="store_true", help="add control-point dose bounds on the first target")
    sp.add_argument("--bixel", type=float, default=5.0, metavar="MM", help="bixel size (default 5 mm)")
    sp.add_argument("--grid", "--dose-grid-mm", dest="dose_grid_mm", type=_grid_arg, metavar="MM|ct",
                    help="dose-grid spacing dose_grid_mm in mm, or 'ct' for the CT grid (default: 5 mm for --matrad, "
                         "matRad's own default dose grid; else the CT grid; 5 is much faster)")
    sp.add_argument("--rx", type=float, metavar="GY", help="prescription for a target without one")
    sp.add_argument("--max-iter", type=int, metavar="N",
                    help=f"iteration limit (default {DEFAULT_MAX_ITER}; {MATRAD_MAX_ITER} for --matrad with the "
                         "conformity objective, where TG119.mat's plan has converged)")
    sp.add_argument("--sequence", choices=("sliding", "step"),
                    help="sequence the optimised fluence into MLC leaf motions (sliding window or step-and-shoot)")
    sp.add_argument("--machine", metavar="NAME",
                    help="MLC model for --sequence (default generic_5mm_60; see rtlab.core.mlc.list_mlcs)")
    _add_machine_arg(sp, "of the dose engine")
    sp.add_argument("--out", metavar="FILE.npz", help="save the dose (array `dose`, Gy, CT grid) for `rtlab score`")
    sp.add_argument("--rtplan-out", metavar="FILE.dcm", help="with --sequence: write the plan as a DICOM RT Plan "
                    "(CT, RTSTRUCT and RTDOSE beside it)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("gk", help="plan a Gamma-Knife-style case by isocentre optimisation (patent 002)")
    sp.add_argument("--phantom", default="head", metavar="NAME", help="phantom with a small target (default head)")
    sp.add_argument("--spacing", dest="spacing_mm", type=float, default=1.0, metavar="MM", help="voxel size (default 1 mm)")
    sp.add_argument("--target", default="sphere", choices=("sphere", "irregular"), help="head phantom target shape")
    sp.add_argument("--method", default="pgd", choices=("pgd", "smooth", "times"),
                    help="projected subgradient (eq 9), smooth reformulation (eq 11) or times only")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_gk)

    sp = sub.add_parser("lab", help="open JupyterLab on the notebooks (like scripts/lab.sh)",
                        description="Open JupyterLab on the notebooks, as scripts/lab.sh does: every option other "
                                    "than --notebooks goes to `jupyter lab` untouched and in order; as root "
                                    "--allow-root is added.")
    sp.add_argument("--notebooks", metavar="DIR", help="notebook directory (default: the repository's notebooks/)")
    sp.add_argument("extra", nargs=argparse.REMAINDER, help="further arguments for `jupyter lab`, passed as given")
    sp.set_defaults(func=None)

    sp = sub.add_parser("batch", help="plan cases for treatment machines on a dask cluster (patent 001)")
    sp.add_argument("--cases", nargs="+", required=True, metavar="NAME|FILE",
                    help="phantom names (see `rtlab phantoms`) or case files (rtlab .npz, matRad .mat, DICOM dir)")
    sp.add_argument("--machines", nargs="+", required=True, metavar="NAME[=LOAD]",
                    help="treatment machines (standard, linac_10mm_hard, linac_5mm_soft, ...); =LOAD: plans waiting")
    sp.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler, e.g. tcp://host:8786 (default: local cluster)")
    sp.add_argument("--workers", type=int, default=2, metavar="N",
                    help="local worker processes (default 2; at most 4 per CPU core)")
    sp.add_argument("--out", default="batch_out", metavar="DIR",
                    help="output directory (default batch_out; resumable: records whose case file, settings and "
                         "rtlab version match are kept)")
    sp.add_argument("--dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                    help="where the local cluster's dask dashboard listens (default 127.0.0.1:0: this machine "
                         "only, a free port; ':8787' or '0.0.0.0:8787' exposes it to the network; 'none' turns it off)")
    sp.add_argument("--spacing", type=float, metavar="MM", help="phantom voxel size in mm (e.g. 6 for a quick run)")
    sp.add_argument("--angles", metavar="DEG,...", help="gantry angles (default: each case's suggested beams)")
    sp.add_argument("--max-iter", type=int, metavar="N", help="optimiser iterations per plan and conversion (default 50)")
    sp.add_argument("--fanout", type=int, metavar="K", help="machines per standard plan (default: all listed)")
    sp.add_argument("--policy", default="shortest_queue", choices=("idle", "shortest_queue"),
                    help="machine choice by congestion when --fanout is less than the machines")
    sp.add_argument("--qa-attempts", type=int, default=2, metavar="N", help="conversions tried per plan until QA passes")
    _add_machine_arg(sp, "of the standard plans (the conversion targets keep their own sources)")
    sp.add_argument("--delineate", nargs="?", const=True, default=None, metavar="ATLAS",
                    help="run the automatic delineation stage first (patent 001 step 2; a STAND-IN for a clinical "
                         "auto-contouring model: body by HU threshold, targets from the atlas phantom ATLAS, default "
                         "the case's own phantom); records hold each contour's Dice against the case's contours")
    sp.add_argument("--measure-loads", action="store_true",
                    help="measure each machine's queue load from the cluster (tasks on the workers with dask "
                         "resource MACHINE) before every machine choice; needs --scheduler")
    sp.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    sp.set_defaults(func=cmd_batch)

    sp = sub.add_parser("reproduce", help="reproduce the source documents' claims: one row per claim (issue #20)",
                        description="Compute the reproduction rows (rtlab.reproduce): each claim of the source "
                                    "documents, the source's statement, rtlab's measured figure, the baseline and "
                                    "whether the claim held. Takes minutes (docs/reproduction.md).")
    sp.add_argument("--seed", action="append", metavar="NNN",
                    help="source document: 000, 001, 002 (patents 000-002), 003 or 004 (papers 003, 004); repeat for several "
                         "(default: all)")
    sp.add_argument("--reduced", action="store_true", help="fewer and coarser cases (what the tests run)")
    sp.add_argument("--json", action="store_true", help='print one JSON object {"rows": [...]}')
    sp.set_defaults(func=cmd_reproduce)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


#: Functions ``register(subparsers)`` that add further subcommands (dose, plan, batch, ...).
_EXTRA_COMMANDS: list = []


#: Exceptions that mean bad input (a value, a file, a path, a missing optional package): status 2.
INPUT_ERRORS = (CLIError, ValueError, TypeError, KeyError, OSError, MemoryError, RecursionError, ImportError,
                zipfile.BadZipFile, OverflowError)


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    text = " ".join(str(msg).split())
    if isinstance(e, MemoryError):
        text = f"out of memory ({text or 'MemoryError'}); the input is larger than this machine can hold"
    elif isinstance(e, RecursionError):
        text = f"the input nests too deeply ({text})"
    return text or type(e).__name__


def _run(command: str, fn) -> int:
    """Run one subcommand: warnings as one line each, errors as one line and an exit status."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"rtlab {command}: warning: {text}", file=sys.stderr)

    debug = bool(os.environ.get("RTLAB_DEBUG"))
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return int(fn() or 0)
        except KeyboardInterrupt:
            print(f"rtlab {command}: interrupted", file=sys.stderr)
            return 130
        except INPUT_ERRORS as e:
            if debug:
                raise
            print(f"rtlab {command}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        except Exception as e:  # an rtlab bug, not the input: still one line
            if debug:
                raise
            print(f"rtlab {command}: internal error: {type(e).__name__}: {_one_line(e)} "
                  "(run with RTLAB_DEBUG=1 to see the traceback, and please report it)", file=sys.stderr)
            return 1


#: Subcommands whose process ends with :func:`os._exit` once their output is written, when
#: run as a program (``rtlab ...`` / ``python -m rtlab.cli``, not ``main([...])`` from Python).
FAST_EXIT_COMMANDS = ("plan",)


def _fast_exit(code: int) -> None:
    """End the process now with ``code``, skipping the interpreter's teardown.

    After `rtlab plan` has printed its line and written its files (each atomically, closed),
    the normal shutdown spends 0.3-0.5 s disposing of numba's LLVM objects module by module
    (TG119.mat, 5 beams: 4.0 s -> 3.7 s wall, benchmarks/RESULTS.md), a tenth of the command.
    Logging is shut down (its handlers flushed and closed) and stdout/stderr are flushed first,
    so nothing a user sees or a file holds is lost; other exit handlers (numba's and tqdm's
    bookkeeping) are skipped. ``RTLAB_NO_FAST_EXIT=1`` turns this off.
    """
    try:
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(int(code))


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "lab":  # options go to jupyter lab untouched and in order
        return _run("lab", lambda: cmd_lab(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _run(args.command, lambda: args.func(args))
    if as_program and args.command in FAST_EXIT_COMMANDS and os.environ.get("RTLAB_NO_FAST_EXIT") is None:
        _fast_exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
