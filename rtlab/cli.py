"""The ``rtlab`` command line.

Subcommands
-----------
``rtlab phantoms``
    List the built-in phantoms.
``rtlab score --dose FILE.npz (--phantom NAME | --matrad FILE | --dicom DIR) [--rx GY] [--json]``
    Score a dose (array ``dose`` in Gy on the case's own grid, ``(z, y, x)``).
``rtlab dose (--phantom NAME | --matrad FILE | --dicom DIR) [--angles 0,72,...] [--bixel MM] [--grid MM] [--gpu] [--json]``
    Build the influence matrix and report sizes and timings.
``rtlab plan (--phantom NAME | --matrad FILE | --dicom DIR) [--angles ...] [--objective conformity|quadratic] [--falloff G] [--control-points] [--grid MM] [--json] [--out FILE.npz]``
    Build the dose, optimise (:func:`rtlab.planning.plan_case`), print timings and the score
    table; ``--falloff`` is in Gy/mm; ``--out`` saves the dose in the format ``score`` reads.

The plan and engine settings go into one :class:`rtlab.planning.PlanSettings`, which checks them
(``--grid MM`` is its ``dose_grid_mm``, ``--bixel`` its ``bixel_mm``, ``--falloff`` its
``falloff_gy_per_mm``).
``rtlab lab``
    Open JupyterLab on the notebooks.
``rtlab batch --cases NAME|FILE ... --machines NAME[=LOAD] ... [--scheduler ADDRESS] [--workers N] [--out DIR] [--spacing MM] [--angles ...] [--max-iter N] [--fanout K] [--policy P] [--json]``
    Patent 001 batch planning on dask (:func:`rtlab.batch.run_batch_cli`): a standard plan per
    case, converted for the machines, QA'd, persisted; prints progress, the dashboard link and
    the QA table. Exit status 1 when a case failed or a plan failed QA.

Every subcommand exits with status 2 and a one-line message on bad input (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from . import phantoms
from ._util import json_safe
from .batch import run_batch_cli
from .dose import engine_summary
from .evaluate.compare import score, score_summary
from .io import load_dicom, load_dose_npz, load_matrad
from .methods.deliverable import sequence_plan
from .methods.gk.plan import gk_summary
from .planning import OBJECTIVES, PlanSettings, plan_case
from .planning.intent import GOAL_SETS, with_goals

__all__ = ["main", "load_case", "build_parser"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_case_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantom", metavar="NAME", help="a built-in phantom (see `rtlab phantoms`)")
    src.add_argument("--matrad", metavar="FILE", help="a matRad phantom .mat file (ct + cst)")
    src.add_argument("--dicom", metavar="DIR", help="a directory with a CT series and an RTSTRUCT")
    p.add_argument("--spacing", metavar="MM", help="phantom voxel size: one number or dz,dy,dx (only with --phantom)")


def _add_goals_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--goals", choices=GOAL_SETS, default="auto",
                   help="goals to plan towards and score: auto (TG-119's for a recognised TG-119 case such as "
                        "matRad's TG119.mat, else the case's own; default), file (the case's own, e.g. read from a "
                        "matRad cst), tg119, none")


#: PlanSettings field (as its messages name it) -> the command-line flag that sets it.
_FLAGS = {"dose_grid_mm": "--grid", "bixel_mm": "--bixel", "falloff (Gy/mm)": "--falloff", "cutoff_mm": "--cutoff",
          "rx (Gy)": "--rx", "max_iter": "--max-iter"}


def _settings(**kw) -> PlanSettings:
    """:class:`PlanSettings` from the command line; a bad value is a :class:`CLIError` naming the flag."""
    try:
        return PlanSettings(**kw)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        for name, flag in _FLAGS.items():
            if msg.startswith(name + " "):
                raise CLIError(f"{flag} ({name}) {msg[len(name):].lstrip()}") from None
        raise CLIError(msg) from None


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated numbers, got {text!r}") from None


def load_case(args: argparse.Namespace):
    """The :class:`rtlab.core.case.Case` named by ``--phantom``, ``--matrad`` or ``--dicom``."""
    if args.phantom:
        kw = {}
        if getattr(args, "spacing", None):
            sp = _parse_floats(args.spacing, "--spacing")
            kw["spacing"] = sp[0] if len(sp) == 1 else tuple(sp)
        return phantoms.get_phantom(args.phantom, **kw)
    if getattr(args, "spacing", None):
        raise CLIError("--spacing only applies to --phantom; files keep their own grid")
    if args.matrad:
        return load_matrad(args.matrad)
    return load_dicom(args.dicom)




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
        return with_goals(case, args.goals)
    except ValueError as exc:
        raise CLIError(f"--goals {args.goals}: {exc}") from None


def cmd_score(args) -> int:
    case = _with_goals(load_case(args), args)
    dose = load_dose_npz(args.dose, expected_shape=case.grid.shape)
    out = score_summary(case, dose, args.rx)
    out["goal_set"] = case.meta.get("goal_set")
    if args.json:
        print(json.dumps(out))
        return 0
    table = score({Path(args.dose).stem: dose}, case, rx=out["rx_gy"])
    with pd.option_context("display.max_rows", None, "display.width", 140):
        print(table.to_string(index=False))
    return 0


def _angles(args, case) -> list[float]:
    if args.angles:
        return _parse_floats(args.angles, "--angles")
    if case.beams:
        return [b.gantry for b in case.beams]
    return [0.0, 72.0, 144.0, 216.0, 288.0]


def cmd_dose(args) -> int:
    settings = _settings(bixel_mm=args.bixel, dose_grid_mm=args.dose_grid_mm, cutoff_mm=args.cutoff)
    case = load_case(args)
    angles = _angles(args, case)
    out = engine_summary(case, angles, bixel_mm=settings.bixel_mm, dose_grid_mm=settings.dose_grid_mm, gpu=args.gpu,
                         cutoff_mm=settings.cutoff_mm)
    out = {"case": case.name, "angles": angles, "bixel_mm": settings.bixel_mm, "dose_grid_mm": settings.dose_grid_mm,
           **out}
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(f"{case.name}: {len(angles)} beams at {', '.join(f'{a:g}' for a in angles)} deg, "
          f"{settings.bixel_mm:g} mm bixels, dose grid {settings.dose_grid_mm or 'CT'} mm")
    for k in ("n_voxels", "n_beamlets", "nnz", "build_s", "compile_s", "matvec_ms", "matvec_scipy_ms",
              "patch_update_ms", "cutoff_mm", "gpu"):
        print(f"  {k:<16} {out[k]}")
    return 0


def cmd_plan(args) -> int:
    if args.objective not in OBJECTIVES:
        raise CLIError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {args.objective!r}")
    if args.max_iter is not None and not args.max_iter > 0:
        raise CLIError(f"--max-iter must be a positive number, got {args.max_iter}")
    settings = _settings(objective=args.objective, falloff_gy_per_mm=args.falloff,
                         control_points=args.control_points, bixel_mm=args.bixel, dose_grid_mm=args.dose_grid_mm,
                         rx=args.rx, max_iter=int(args.max_iter))
    if args.out is not None and not str(args.out).endswith(".npz"):
        raise CLIError(f"--out must name an .npz file, got {args.out!r}")
    case = _with_goals(load_case(args), args)
    if settings.objective == "matrad" and "matrad" not in case.meta:
        raise CLIError("--objective matrad plans with a matRad file's own cst objectives; use it with --matrad FILE")
    angles = _angles(args, case)
    if not angles:
        raise CLIError("--angles is empty; give gantry angles in degrees, e.g. 0,72,144,216,288")
    res = plan_case(case, angles, settings=settings, progress=not args.json and sys.stderr.isatty())
    out = score_summary(case, res.dose, settings.rx)
    t = res.timings
    out.update(build_s=round(t["build_s"], 3), optimize_s=round(t["optimize_s"], 3), iterations=int(t["iterations"]),
               mu_total=round(res.mu_total, 1), status=t["status"], objective=settings.objective, angles=angles,
               falloff_gy_per_mm=settings.falloff_gy_per_mm, control_points=settings.control_points,
               dose_grid_mm=settings.dose_grid_mm, bixel_mm=settings.bixel_mm, goal_set=case.meta.get("goal_set"))
    seq = None
    if args.sequence:
        fractions = max(1, int(round((case.prescription or 2.0) / 2.0)))
        seq = sequence_plan(res.influence, res.x, machine=args.machine, method=args.sequence, fractions=fractions)
        # the optimised fluence's MU (whole prescription) stays available; mu_total becomes the
        # sequenced delivery's MU per fraction
        out["mu_total_fluence"] = out["mu_total"]
        out.update(seq.summary(case))
    if args.out:
        res.save(args.out)
        out["out"] = str(args.out)
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(f"{case.name}: {len(angles)} beams at {', '.join(f'{a:g}' for a in angles)} deg, objective "
          f"{settings.objective}, {settings.bixel_mm:g} mm bixels, dose grid {settings.dose_grid_mm or 'CT'} mm"
          + (f", falloff {settings.falloff_gy_per_mm:g} Gy/mm" if settings.falloff_gy_per_mm else "")
          + (", control points" if args.control_points else ""))
    print(f"  build {t['build_s']:.2f} s, optimise {t['optimize_s']:.2f} s, {t['iterations']} iterations "
          f"({t['status']}), {res.mu_total:.0f} MU")
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
    return 0


def cmd_gk(args) -> int:
    if args.spacing_mm <= 0:
        raise CLIError(f"--spacing must be positive, got {args.spacing_mm}")
    if args.phantom not in ("head",):
        if args.phantom not in phantoms.list_phantoms():
            raise CLIError(f"unknown phantom {args.phantom!r}; built-ins: {phantoms.list_phantoms()}")
    out = gk_summary(args.phantom, spacing=args.spacing_mm, target=args.target, method=args.method)
    if args.json:
        print(json.dumps(out, default=json_safe))
        return 0
    print(f"{out.get('case', args.phantom)}: {out['n_shots']} shots ({args.method}), beam-on {out['beam_on_min']:.1f} min")
    for k in ("coverage", "selectivity", "ci_paddick", "gi", "isodose_pct", "optimize_s"):
        if k in out and out[k] is not None:
            print(f"  {k:<12} {out[k]:.3f}")
    return 0


def cmd_lab(args) -> int:
    root = Path(__file__).resolve().parents[1]
    nb = Path(args.notebooks) if args.notebooks else root / "notebooks"
    if not nb.is_dir():
        raise CLIError(f"notebook directory {nb} does not exist; pass --notebooks DIR")
    jupyter = shutil.which("jupyter") or str(Path(sys.executable).with_name("jupyter"))
    cmd = [jupyter, "lab", f"--notebook-dir={nb}", *args.extra]
    return subprocess.call(cmd)


def cmd_batch(args) -> int:
    opts = {}
    if args.angles:
        opts["angles"] = _parse_floats(args.angles, "--angles")
        if not opts["angles"]:
            raise CLIError("--angles is empty; give gantry angles in degrees, e.g. 0,120,240")
    for flag, v in (("--max-iter", args.max_iter), ("--workers", args.workers), ("--qa-attempts", args.qa_attempts)):
        if v is not None and v < 1:
            raise CLIError(f"{flag} must be >= 1, got {v}")
    if args.spacing is not None and not (math.isfinite(args.spacing) and args.spacing > 0):
        raise CLIError(f"--spacing must be a positive voxel size in mm, got {args.spacing}")
    if args.max_iter is not None:
        opts["max_iter"] = opts["convert_max_iter"] = int(args.max_iter)
    kw = dict(policy=args.policy, max_qa_attempts=args.qa_attempts)
    if args.fanout is not None:
        kw["fanout"] = args.fanout
    quiet = bool(args.json)
    summary = run_batch_cli(args.cases, args.machines, args.scheduler, args.workers, args.out, spacing=args.spacing,
                            stage_options=opts, progress=not quiet and sys.stderr.isatty(), verbose=not quiet, **kw)
    if args.json:
        print(json.dumps(dict(out=summary["out"], files=summary["files"], persisted=summary["persisted"],
                              failed=summary["failed"], qa_failed=summary["qa_failed"],
                              all_passed=summary["all_passed"], dashboard=summary["dashboard"],
                              elapsed_s=round(summary["elapsed_s"], 3)), default=json_safe))
    return 0 if not summary["failed"] and not summary["qa_failed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtlab", description="rtlab: a laboratory for radiotherapy planning algorithms")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("phantoms", help="list the built-in phantoms")
    sp.add_argument("--json", action="store_true", help="print one JSON array")
    sp.set_defaults(func=cmd_phantoms)

    sp = sub.add_parser("score", help="score a dose against a case's structures and goals")
    sp.add_argument("--dose", required=True, metavar="FILE.npz", help="npz with an array `dose` in Gy, (z, y, x), on the case grid")
    _add_case_args(sp)
    sp.add_argument("--rx", type=float, metavar="GY", help="prescription for CI/GI/HI (default: the case's)")
    _add_goals_arg(sp)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("dose", help="build the influence matrix of a case and report sizes and timings")
    _add_case_args(sp)
    sp.add_argument("--angles", metavar="DEG,...", help="gantry angles (default: the case's suggested beams)")
    sp.add_argument("--bixel", type=float, default=5.0, metavar="MM", help="bixel size (default 5 mm)")
    sp.add_argument("--grid", "--dose-grid-mm", dest="dose_grid_mm", type=float, metavar="MM",
                    help="dose-grid spacing dose_grid_mm (default: the CT grid)")
    sp.add_argument("--cutoff", type=float, metavar="MM", help="lateral kernel cut-off (default: the engine's)")
    sp.add_argument("--gpu", action="store_true", help="use the CUDA mat-vec path (fails without a device)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
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
    sp.add_argument("--grid", "--dose-grid-mm", dest="dose_grid_mm", type=float, metavar="MM",
                    help="dose-grid spacing dose_grid_mm (default: the CT grid; 5 is much faster)")
    sp.add_argument("--rx", type=float, metavar="GY", help="prescription for a target without one")
    sp.add_argument("--max-iter", type=int, default=100, metavar="N", help="iteration limit (default 100)")
    sp.add_argument("--sequence", choices=("sliding", "step"),
                    help="sequence the optimised fluence into MLC leaf motions (sliding window or step-and-shoot)")
    sp.add_argument("--machine", default="generic_5mm_60", metavar="NAME",
                    help="MLC model for --sequence (see rtlab.core.mlc.list_mlcs)")
    sp.add_argument("--out", metavar="FILE.npz", help="save the dose (array `dose`, Gy, CT grid) for `rtlab score`")
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

    sp = sub.add_parser("lab", help="open JupyterLab on the notebooks")
    sp.add_argument("--notebooks", metavar="DIR", help="notebook directory (default: the repository's notebooks/)")
    sp.add_argument("extra", nargs=argparse.REMAINDER, help="further arguments for `jupyter lab`")
    sp.set_defaults(func=cmd_lab)

    sp = sub.add_parser("batch", help="plan cases for treatment machines on a dask cluster (patent 001)")
    sp.add_argument("--cases", nargs="+", required=True, metavar="NAME|FILE",
                    help="phantom names (see `rtlab phantoms`) or case files (rtlab .npz, matRad .mat, DICOM dir)")
    sp.add_argument("--machines", nargs="+", required=True, metavar="NAME[=LOAD]",
                    help="treatment machines (standard, linac_10mm_hard, linac_5mm_soft, ...); =LOAD: plans waiting")
    sp.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler, e.g. tcp://host:8786 (default: local cluster)")
    sp.add_argument("--workers", type=int, default=2, metavar="N", help="local worker processes (default 2)")
    sp.add_argument("--out", default="batch_out", metavar="DIR", help="output directory (default batch_out; resumable)")
    sp.add_argument("--spacing", type=float, metavar="MM", help="phantom voxel size in mm (e.g. 6 for a quick run)")
    sp.add_argument("--angles", metavar="DEG,...", help="gantry angles (default: each case's suggested beams)")
    sp.add_argument("--max-iter", type=int, metavar="N", help="optimiser iterations per plan and conversion (default 50)")
    sp.add_argument("--fanout", type=int, metavar="K", help="machines per standard plan (default: all listed)")
    sp.add_argument("--policy", default="shortest_queue", choices=("idle", "shortest_queue"),
                    help="machine choice by congestion when --fanout is less than the machines")
    sp.add_argument("--qa-attempts", type=int, default=2, metavar="N", help="conversions tried per plan until QA passes")
    sp.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    sp.set_defaults(func=cmd_batch)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


#: Functions ``register(subparsers)`` that add further subcommands (dose, plan, batch, ...).
_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "lab":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.extra = list(args.extra) + unknown  # options for `jupyter lab` itself
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"rtlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"rtlab {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
