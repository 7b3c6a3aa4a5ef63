"""The ``rtlab`` command line.

Subcommands
-----------
``rtlab phantoms``
    List the built-in phantoms.
``rtlab score --dose FILE.npz (--phantom NAME | --matrad FILE | --dicom DIR) [--rx GY] [--json]``
    Score a dose (array ``dose`` in Gy on the case's own grid, ``(z, y, x)``).
``rtlab dose (--phantom NAME | --matrad FILE | --dicom DIR) [--angles 0,72,...] [--bixel MM] [--grid MM] [--gpu] [--json]``
    Build the influence matrix and report sizes and timings.
``rtlab lab``
    Open JupyterLab on the notebooks.

Every subcommand exits with status 2 and a one-line message on bad input (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["main", "load_case"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_case_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantom", metavar="NAME", help="a built-in phantom (see `rtlab phantoms`)")
    src.add_argument("--matrad", metavar="FILE", help="a matRad phantom .mat file (ct + cst)")
    src.add_argument("--dicom", metavar="DIR", help="a directory with a CT series and an RTSTRUCT")
    p.add_argument("--spacing", metavar="MM", help="phantom voxel size: one number or dz,dy,dx (only with --phantom)")


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated numbers, got {text!r}") from None


def load_case(args: argparse.Namespace):
    """The :class:`rtlab.case.Case` named by ``--phantom``, ``--matrad`` or ``--dicom``."""
    if args.phantom:
        from . import phantoms

        kw = {}
        if getattr(args, "spacing", None):
            sp = _parse_floats(args.spacing, "--spacing")
            kw["spacing"] = sp[0] if len(sp) == 1 else tuple(sp)
        return phantoms.get_phantom(args.phantom, **kw)
    if getattr(args, "spacing", None):
        raise CLIError("--spacing only applies to --phantom; files keep their own grid")
    if args.matrad:
        from .io import load_matrad

        return load_matrad(args.matrad)
    from .io import load_dicom

    return load_dicom(args.dicom)


def _clean(v):
    """JSON-safe float (NaN/inf become null)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None


def cmd_phantoms(args) -> int:
    from .phantoms import describe_phantoms

    rows = describe_phantoms()
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


def cmd_score(args) -> int:
    from . import metrics
    from .compare import score
    from .io import load_dose_npz

    case = load_case(args)
    dose = load_dose_npz(args.dose, expected_shape=case.grid.shape)
    targets = case.structures.targets
    if not targets:
        raise CLIError(f"case {case.name!r} has no target structure; CI/GI/HI need one")
    rx = args.rx if args.rx is not None else (case.prescription or targets[0].prescription)
    if rx is None:
        raise CLIError("no prescription known for the target: pass --rx GY")
    if args.json:
        report = metrics.conformity_report(dose, case.structures, rx=rx)
        out = {
            "case": case.name,
            "target": targets[0].name,
            "rx_gy": float(rx),
            **{k: _clean(report[k]) for k in ("ci_paddick", "ci_rtog", "gi", "hi", "coverage", "selectivity")},
            "structures": {},
            "goals": [],
        }
        for s in case.structures.values():
            st = metrics.structure_stats(dose, s)
            out["structures"][s.name] = {k: _clean(st[k]) for k in ("D95", "D98", "D2", "D10", "Dmean", "Dmax")}
        for g in case.goals:
            v = metrics.evaluate(dose, case.structures[g.structure], g.metric)
            out["goals"].append({"goal": str(g), "value": _clean(v), "passed": g.passed(v)})
        print(json.dumps(out))
        return 0
    table = score({Path(args.dose).stem: dose}, case, rx=rx)
    import pandas as pd

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
    from .dose import engine_summary

    case = load_case(args)
    angles = _angles(args, case)
    if args.bixel <= 0:
        raise CLIError(f"--bixel must be positive, got {args.bixel}")
    if args.grid is not None and args.grid <= 0:
        raise CLIError(f"--grid must be positive, got {args.grid}")
    out = engine_summary(case, angles, bixel_mm=args.bixel, dose_grid_mm=args.grid, gpu=args.gpu,
                         cutoff_mm=args.cutoff)
    out = {"case": case.name, "angles": angles, "bixel_mm": args.bixel, "grid_mm": args.grid, **out}
    if args.json:
        print(json.dumps(out, default=_clean))
        return 0
    print(f"{case.name}: {len(angles)} beams at {', '.join(f'{a:g}' for a in angles)} deg, "
          f"{args.bixel:g} mm bixels, dose grid {args.grid or 'CT'} mm")
    for k in ("n_voxels", "n_beamlets", "nnz", "build_s", "compile_s", "matvec_ms", "matvec_scipy_ms",
              "patch_update_ms", "cutoff_mm", "gpu"):
        print(f"  {k:<16} {out[k]}")
    return 0


def cmd_lab(args) -> int:
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    nb = Path(args.notebooks) if args.notebooks else root / "notebooks"
    if not nb.is_dir():
        raise CLIError(f"notebook directory {nb} does not exist; pass --notebooks DIR")
    jupyter = shutil.which("jupyter") or str(Path(sys.executable).with_name("jupyter"))
    cmd = [jupyter, "lab", f"--notebook-dir={nb}", *args.extra]
    return subprocess.call(cmd)


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
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("dose", help="build the influence matrix of a case and report sizes and timings")
    _add_case_args(sp)
    sp.add_argument("--angles", metavar="DEG,...", help="gantry angles (default: the case's suggested beams)")
    sp.add_argument("--bixel", type=float, default=5.0, metavar="MM", help="bixel size (default 5 mm)")
    sp.add_argument("--grid", type=float, metavar="MM", help="dose grid spacing (default: the CT grid)")
    sp.add_argument("--cutoff", type=float, metavar="MM", help="lateral kernel cut-off (default: the engine's)")
    sp.add_argument("--gpu", action="store_true", help="use the CUDA mat-vec path (fails without a device)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_dose)

    sp = sub.add_parser("lab", help="open JupyterLab on the notebooks")
    sp.add_argument("--notebooks", metavar="DIR", help="notebook directory (default: the repository's notebooks/)")
    sp.add_argument("extra", nargs=argparse.REMAINDER, help="further arguments for `jupyter lab`")
    sp.set_defaults(func=cmd_lab)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


#: Functions ``register(subparsers)`` that add further subcommands (dose, plan, batch, ...).
_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
