#!/usr/bin/env python
"""Measure how much the notebooks' checked figures move between machines and settings.

Every figure a notebook checks (``rtlab.testing.check`` and friends) is logged when the
notebook runs with ``RTLAB_FIGURES_LOG`` set. This script runs the notebooks under several
configurations (numba code-generation target, thread count, optionally another Python
environment with other library versions), collects the logs and reports, per figure, the spread
across configurations next to the tolerance the notebook states. ``docs/notebooks.md`` explains
how the tolerances were chosen from it.

    python scripts/notebook_figures.py run --out /tmp/figs                  # all notebooks, all configs
    python scripts/notebook_figures.py run --out /tmp/figs --notebooks 02 03 --configs host-2t generic-1t
    python scripts/notebook_figures.py run --out /tmp/figs --configs altdeps-2t --python /path/to/venv/bin/python
    python scripts/notebook_figures.py report /tmp/figs                     # table of spreads (markdown)
    python scripts/notebook_figures.py report /tmp/figs --json
    python scripts/notebook_figures.py update /tmp/figs --config host-2t   # after an intended change:
                                            # rewrite the expected values of check(...) calls from a run
    python scripts/notebook_figures.py widen /tmp/figs   # raise every tolerance below 3x its figure's
                                            # largest measured deviation to a readable value above it

Configurations are named ``<target>-<n>t`` (``n`` numba threads):

``host``
    numba's default: this CPU's full instruction set.
``generic``
    ``NUMBA_CPU_NAME=generic``: numba emits baseline x86-64 code (SSE2).
``x86-64-v2``, ``x86-64-v3``, ``skylake``, ... (any LLVM CPU name)
    numba code for that CPU's own feature set (``NUMBA_CPU_FEATURES`` is cleared; without that
    numba keeps the host's features and only the scheduling model changes). A target this CPU
    cannot run (e.g. AVX-512 on an AVX2 machine) crashes.
``baseline``
    ``scripts/baseline_env.sh``: numba generic, numpy restricted to its x86-64-v2 kernels
    (``NPY_DISABLE_CPU_FEATURES``), OpenBLAS's Nehalem kernels (``OPENBLAS_CORETYPE``): the code
    every x86-64 machine runs; CI's second pass.
``alt...``
    any label starting with ``alt`` when ``--python`` points at another environment (other
    library versions), host target there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_CONFIGS = ["host-2t", "host-1t", "generic-1t", "x86-64-v2-2t", "baseline-1t"]


BASELINE_ENV = {"NUMBA_CPU_NAME": "generic", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
                "OPENBLAS_CORETYPE": "Nehalem"}   # the same as scripts/baseline_env.sh (a test keeps them equal)


def _env_for(config: str) -> dict:
    target, _, threads = config.rpartition("-")
    if not target or not threads.endswith("t") or not threads[:-1].isdigit():
        raise SystemExit(f"config {config!r}: expected <target>-<n>t, e.g. generic-1t")
    env = dict(os.environ)
    for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", *BASELINE_ENV):
        env.pop(k, None)
    env["NUMBA_NUM_THREADS"] = threads[:-1]
    if target == "baseline":
        env.update(BASELINE_ENV)
    elif target == "generic":
        env["NUMBA_CPU_NAME"] = "generic"
    elif target != "host" and not target.startswith("alt"):
        env["NUMBA_CPU_NAME"] = target
        env["NUMBA_CPU_FEATURES"] = ""   # the named CPU's own features, not the host's
    return env


def _notebooks(selection) -> list[Path]:
    nbs = sorted(NOTEBOOKS.glob("*.ipynb"))
    if selection:
        nbs = [p for p in nbs if any(p.name.startswith(s) for s in selection)]
    if not nbs:
        raise SystemExit(f"no notebook matches {selection}")
    return nbs


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = args.python or sys.executable
    failures = 0
    for config in args.configs:
        env = _env_for(config)
        cdir = out / config
        cdir.mkdir(exist_ok=True)
        for nb in _notebooks(args.notebooks):
            log = cdir / f"{nb.stem}.jsonl"
            log.unlink(missing_ok=True)
            env.update(RTLAB_FIGURES_LOG=str(log), RTLAB_FIGURES_MODE="record",
                       RTLAB_FIGURES_CONTEXT=f"{nb.stem}|{config}")
            t0 = time.perf_counter()
            cmd = [python, "-m", "jupyter", "execute", "--allow-errors", f"--timeout={args.timeout}",
                   f"--output={cdir / nb.name}", str(nb)]
            proc = subprocess.run(cmd, cwd=NOTEBOOKS, env=env, capture_output=True, text=True)
            errors = _cell_errors(cdir / nb.name)
            status = "ok" if proc.returncode == 0 and not errors else f"FAILED ({proc.returncode}, {len(errors)} cell errors)"
            failures += status != "ok"
            print(f"{config:>14}  {nb.stem:<32} {time.perf_counter() - t0:6.0f} s  {status}", flush=True)
            for e in errors:
                print(f"{'':>16}cell {e[0]}: {e[1]}", flush=True)
    return 1 if failures else 0


def _cell_errors(path: Path) -> list[tuple[int, str]]:
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return [(-1, "no executed notebook written")]
    errs = []
    for i, c in enumerate(nb.get("cells", [])):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                errs.append((i, f"{o.get('ename')}: {str(o.get('evalue'))[:200]}"))
    return errs


def _load(out: Path):
    figs = defaultdict(dict)   # (notebook, figure) -> {config: record}
    for log in sorted(out.glob("*/*.jsonl")):
        config = log.parent.name
        seen = Counter()
        for line in log.read_text().splitlines():
            r = json.loads(line)
            nb = r.get("context", "").split("|")[0] or log.stem
            seen[r["name"]] += 1   # a name checked twice in one notebook keeps each occurrence
            name = r["name"] if seen[r["name"]] == 1 else f"{r['name']} #{seen[r['name']]}"
            figs[(nb, name)][config] = r
    return figs


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _reference(per: dict, config: str | None = None):
    """The value a figure's deviations are measured from: ``config``'s measured value (the one
    ``update --config`` wrote into the notebook), else the expected value the run logged."""
    ref = per.get(config) if config else None
    if ref is not None and _number(ref.get("value")):
        return ref["value"]
    exp = next(iter(per.values())).get("expected")
    return exp if _number(exp) else None


def _max_deviation(per: dict, config: str | None = None):
    """Largest ``|value - reference|`` over the configurations (None without numbers)."""
    exp = _reference(per, config)
    vals = [r["value"] for r in per.values() if _number(r.get("value"))]
    return max((abs(v - exp) for v in vals), default=None) if exp is not None and vals else None


def report(args) -> int:
    figs = _load(Path(args.out))
    rows = []
    for (nb, name), per in sorted(figs.items()):
        recs = list(per.values())
        first = recs[0]
        vals = [r["value"] for r in recs if _number(r["value"])]
        spread = (max(vals) - min(vals)) if vals else None
        exp = first.get("expected")
        tol = first.get("tolerance")
        dev = _max_deviation(per)
        rows.append({"notebook": nb, "figure": name, "configs": len(recs),
                     "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                     "spread": spread, "expected": exp, "tolerance": tol, "max_dev": dev,
                     "low": first.get("low"), "high": first.get("high"),
                     "failed_in": sorted(c for c, r in per.items() if not r["passed"])})
    if args.json:
        print(json.dumps(rows))
        return 0
    print("| notebook | figure | configs | spread | max deviation | tolerance | tol / spread | fails in |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp, tol = r["spread"], r["tolerance"]
        ratio = "-" if not sp or tol in (None, 0) else f"{tol / sp:.0f}"
        def f(v):
            return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))
        bound = "" if r["low"] is None and r["high"] is None else f" (bound {f(r['low'])}..{f(r['high'])})"
        print(f"| {r['notebook']} | {r['figure']}{bound} | {r['configs']} | {f(sp)} | {f(r['max_dev'])} | "
              f"{f(tol)} | {ratio} | {', '.join(r['failed_in']) or ''} |")
    return 0


def _expected_literal(value: float, tol: float) -> str:
    """The measured value with as many decimals as keep the rounding below a tenth of the tolerance."""
    for dec in range(0, 10):
        text = f"{value:.{dec}f}"
        if abs(float(text) - value) <= tol / 10:
            return text
    return repr(float(value))


def _write_notebook(path: Path, nb: dict) -> None:
    """Write a notebook atomically, as nbformat writes it (sorted keys, indent 1, a final newline)."""
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)


def _apply_edits(cell: dict, lines: list[str], edits: list) -> int:
    """Splice ``(line, col, end_col, text)`` edits (ast offsets: UTF-8 bytes) into a code cell's lines."""
    for ln, c0, c1, new in sorted(edits, reverse=True):
        b = lines[ln - 1].encode()
        lines[ln - 1] = (b[:c0] + new.encode() + b[c1:]).decode()
    if edits:
        cell["source"] = "\n".join(lines).splitlines(keepends=True)
    return len(edits)


def _literal_checks(source: str) -> list:
    """The ``check("literal", ...)`` call nodes of a cell (none when it does not parse)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "check"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]


def _check_calls(source: str):
    """``check("literal", expr, <number>, ...)`` calls in a cell, in reading order.

    Returns (name, line, col, end_col) of each expected-value literal (a number, or a negated one).
    """
    import ast

    calls = []
    for node in _literal_checks(source):
        if len(node.args) < 3:
            continue
        num = node.args[2]
        inner = num.operand if isinstance(num, ast.UnaryOp) and isinstance(num.op, ast.USub) else num
        if isinstance(inner, ast.Constant) and isinstance(inner.value, (int, float)) and num.lineno == num.end_lineno:
            calls.append((node.args[0].value, num.lineno, num.col_offset, num.end_col_offset))
    return sorted(calls, key=lambda c: (c[1], c[2]))


def _tolerance_keywords(source: str):
    """``check("literal", ...)`` calls: (name, {keyword: (line, col, end_col, value)}) in reading order."""
    import ast

    out = []
    for node in _literal_checks(source):
        kws = {k.arg: (k.value.lineno, k.value.col_offset, k.value.end_col_offset, k.value.value)
               for k in node.keywords if k.arg in ("abs", "rel") and isinstance(k.value, ast.Constant)}
        out.append((node.lineno, node.col_offset, node.args[0].value, kws))
    return [(name, kws) for _, _, name, kws in sorted(out)]


def _readable_above(x: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k that is >= x."""
    k = math.floor(math.log10(x))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        v = float(f"{m * 10.0 ** k:.12g}")
        if v >= x * (1 - 1e-12):
            return v
    return 10.0 ** (k + 1)


def widen(args) -> int:
    """Raise tolerances below ``factor`` x the largest measured deviation (the rule of docs/notebooks.md)."""
    figs = _load(Path(args.out))
    need = {}   # (notebook, name, occurrence) -> tolerance needed
    for (nb, name), per in figs.items():
        recs = [r for r in per.values() if r.get("tolerance") and _number(r.get("value"))]
        if not recs:
            continue
        # the spread around the value ``update --config`` wrote (else the expected value logged)
        dev = _max_deviation({c: r for c, r in per.items() if r in recs}, args.config) or 0.0
        if dev > 0 and recs[0]["tolerance"] < args.factor * dev:
            base, _, occ = name.partition(" #")
            need[(nb, base, int(occ) if occ else 1)] = args.factor * dev
    changed = 0
    for nb_name in sorted({k[0] for k in need}):
        nb_path = Path(args.notebooks_dir) / f"{nb_name}.ipynb"
        nb = json.loads(nb_path.read_text())
        seen = Counter()
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            lines = src.split("\n")
            edits = []
            for name, kws in _tolerance_keywords(src):
                seen[name] += 1
                want = need.get((nb_name, name, seen[name]))
                if want is None:
                    continue
                # one tolerance keyword carries it: abs if present, else rel as a fraction of expected
                key = "abs" if "abs" in kws or "rel" not in kws else "rel"
                if key not in kws:
                    print(f"{nb_name}: {name}: no literal tolerance to widen; edit by hand")
                    continue
                ln, c0, c1, old = kws[key]
                if key == "rel":
                    exp = _reference(figs[(nb_name, name if seen[name] == 1 else f"{name} #{seen[name]}")], args.config)
                    want = want / abs(exp)
                new = _readable_above(want)
                edits.append((ln, c0, c1, f"{new:g}"))
                print(f"{nb_name}: {name}: {key}={old:g} -> {new:g} (needed {want:.3g})")
            changed += _apply_edits(cell, lines, edits)
        _write_notebook(nb_path, nb)
    print(f"{changed} tolerance(s) widened; re-execute the notebooks and review the diff")
    return 0


def clean(args) -> int:
    """Drop what an execution adds besides outputs: cell timings and the notebook's widget state."""
    changed = 0
    for path in sorted(Path(args.notebooks_dir).glob("*.ipynb")):
        nb = json.loads(path.read_text())
        before = json.dumps(nb, sort_keys=True)
        nb.get("metadata", {}).pop("widgets", None)
        for cell in nb["cells"]:
            cell.get("metadata", {}).pop("execution", None)
        if json.dumps(nb, sort_keys=True) != before:
            _write_notebook(path, nb)
            changed += 1
            print(f"cleaned {path.name}")
    print(f"{changed} notebook(s) cleaned")
    return 0


def update(args) -> int:
    """Rewrite expected values of literal ``check`` calls from one configuration's logs."""
    cdir = Path(args.out) / args.config
    if not cdir.is_dir():
        raise SystemExit(f"no run for configuration {args.config!r} in {args.out}")
    changed = 0
    for log in sorted(cdir.glob("*.jsonl")):
        nb_path = Path(args.notebooks_dir) / f"{log.stem}.ipynb"
        if not nb_path.exists():
            continue
        queue = defaultdict(list)
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r.get("tolerance") and r.get("expected") is not None:
                queue[r["name"]].append(r)
        nb = json.loads(nb_path.read_text())
        nb_changed = False
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            lines = src.split("\n")
            # replace in reading order so repeated names meet their logged values in order
            edits = []
            for name, ln, c0, c1 in _check_calls(src):
                if not queue.get(name):
                    continue
                r = queue[name].pop(0)
                new = _expected_literal(r["value"], r["tolerance"])
                old = lines[ln - 1].encode()[c0:c1].decode()   # ast offsets count UTF-8 bytes
                if float(old) != float(new):
                    edits.append((ln, c0, c1, new))
                    print(f"{log.stem}: {name}: {old} -> {new}")
            if edits:
                nb_changed = True
                changed += _apply_edits(cell, lines, edits)
        if nb_changed:
            _write_notebook(nb_path, nb)
    print(f"{changed} expected value(s) rewritten; re-execute the notebooks and review the diff")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run notebooks under configurations, logging every checked figure")
    r.add_argument("--out", required=True, help="folder for the logs and executed notebooks")
    r.add_argument("--notebooks", nargs="*", help="notebook name prefixes (default all)")
    r.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help=f"default {' '.join(DEFAULT_CONFIGS)}")
    r.add_argument("--python", help="the Python of another environment (other library versions)")
    r.add_argument("--timeout", type=int, default=1800, help="per-cell timeout (s)")
    s = sub.add_parser("report", help="spread of every figure across the configurations run")
    s.add_argument("out")
    s.add_argument("--json", action="store_true")
    u = sub.add_parser("update", help="rewrite check() expected values from a run (after an intended change)")
    u.add_argument("out")
    u.add_argument("--config", default="host-2t")
    u.add_argument("--notebooks-dir", default=str(NOTEBOOKS), help=argparse.SUPPRESS)
    c = sub.add_parser("clean", help="drop execution timings and widget state that `nbconvert --execute` stores")
    c.add_argument("--notebooks-dir", default=str(NOTEBOOKS), help=argparse.SUPPRESS)
    w = sub.add_parser("widen", help="raise tolerances below --factor x the measured deviation")
    w.add_argument("out")
    w.add_argument("--factor", type=float, default=3.0)
    w.add_argument("--config", help="the configuration `update --config` took the expected values from: widen "
                   "to the spread around its values (without it: around the expected values logged by `run`)")
    w.add_argument("--notebooks-dir", default=str(NOTEBOOKS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return {"run": run, "report": report, "update": update, "widen": widen, "clean": clean}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
