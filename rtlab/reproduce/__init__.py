"""Reproduction of the source documents' claims: one row per claim, computed live (issue #20).

Each row is a plain dict with exactly the keys of :data:`ROW_KEYS`::

    {"seed": "000", "claim": str, "source_figure": str, "rtlab_figure": dict,
     "baseline": str, "held": bool, "why": str}

``source_figure`` is what the source document states (the patents give no numbers; where the
issue sets the figure to reach, it is quoted as such), ``rtlab_figure`` holds rtlab's measured
numbers (finite floats, ints, bools, strings; nested dicts/lists), ``baseline`` names what the
figure is compared with (same case, beams, grid and iteration budget) and ``held`` is the
stated criterion applied to ``rtlab_figure`` (``why`` says the criterion and the outcome).

Rows are registered per seed (:data:`REGISTRY`: ``seed -> [(row id, function)]``); a row
function takes ``reduced`` (fewer and coarser cases, for the tests) and returns one row dict or a
list of rows (when two rows share one expensive computation). :func:`run` runs them with a
tqdm progress bar; :func:`check_row` validates a row's schema. ``benchmarks/reproduce.py`` and
``rtlab reproduce`` print them.

The rows themselves live in :mod:`rtlab.reproduce.seed000` (patent 000: conformity objective,
falloff, control points, region model) and :mod:`rtlab.reproduce.seed001` (patent 001:
conversion, deliverable-plan QA, congestion, delineation), :mod:`rtlab.reproduce.seed002` (patent 002:
learning through the dose, the projected subgradient of eq. 9), :mod:`rtlab.reproduce.seed003` (paper
003: smoothing inside the optimisation) and :mod:`rtlab.reproduce.seed004` (paper 004: interactive dose
shaping at the paper's kernel); paper 003's beam-angle rows are in
:mod:`rtlab.reproduce.seed003_angles`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from tqdm.auto import tqdm

from . import seed000, seed001, seed002, seed003, seed003_angles, seed004
from .schema import ROW_KEYS, check_row, row

__all__ = ["ROW_KEYS", "REGISTRY", "SEEDS", "row", "run", "check_row", "rows_table", "sweep_tables"]

#: seed -> [(row id, row function(reduced: bool) -> row dict or list of row dicts)]
REGISTRY: dict[str, list[tuple[str, Callable]]] = {
    "000": list(seed000.ROWS),
    "001": list(seed001.ROWS),
    "002": list(seed002.ROWS),
    "003": list(seed003.ROWS) + list(seed003_angles.ROWS),
    "004": list(seed004.ROWS),
}

SEEDS = tuple(REGISTRY)


def run(seeds: Iterable[str] | str | None = None, reduced: bool = False, progress: bool = True,
        only: Iterable[str] | None = None) -> list[dict]:
    """Compute the rows of ``seeds`` (default: all of :data:`SEEDS`).

    Parameters
    ----------
    seeds : str or iterable of str, optional
        ``'000'``, ``'001'``, ...
    reduced : bool
        Fewer and coarser cases (the CI tests); the full rows are those of docs/reproduction.md.
    progress : bool
        A tqdm bar over the rows.
    only : iterable of str, optional
        Row ids to run (default all of each seed's rows).

    Returns
    -------
    list of dict
        The rows (:func:`check_row`-valid), each computed live.
    """
    if seeds is None:
        seeds = SEEDS
    elif isinstance(seeds, str):
        seeds = [seeds]
    seeds = [str(s).zfill(3) for s in seeds]
    unknown = [s for s in seeds if s not in REGISTRY]
    if unknown:
        raise ValueError(f"no reproduction rows for seed(s) {unknown}; seeds with rows: {list(SEEDS)}")
    todo = [(s, rid, fn) for s in seeds for rid, fn in REGISTRY[s]]
    if only is not None:
        only = set(only)
        bad = only - {rid for _, rid, _ in todo}
        if bad:
            raise ValueError(f"unknown row id(s) {sorted(bad)}; rows: {[rid for _, rid, _ in todo]}")
        todo = [t for t in todo if t[1] in only]
    out: list[dict] = []
    bar = tqdm(todo, desc="reproduce", disable=not progress, leave=False)
    for seed, rid, fn in bar:
        bar.set_postfix_str(f"{seed}:{rid}")
        t0 = time.perf_counter()
        got = fn(reduced=bool(reduced))
        for r in got if isinstance(got, list) else [got]:
            check_row(r)
            r["rtlab_figure"].setdefault("run_s", round(time.perf_counter() - t0, 1))
            out.append(r)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def rows_table(rows: list[dict]) -> str:
    """A markdown table of rows (``rtlab_figure`` as its ``summary`` entry when there is one)."""
    lines = ["| seed | claim | source | rtlab | baseline | held | why |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fig = r["rtlab_figure"]
        shown = fig.get("summary") if isinstance(fig.get("summary"), str) else \
            ", ".join(f"{k} {_fmt(v)}" for k, v in fig.items() if not isinstance(v, (dict, list)))
        cells = [r["seed"], r["claim"], r["source_figure"], shown, r["baseline"], "held" if r["held"] else "NOT held",
                 r["why"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def _na(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def sweep_tables(rows: list[dict]) -> str:
    """Markdown tables of the rows' sweeps (the parameter that matters, issue #20 item 2); '' if none.

    Conformity: the lower levels' conformity weight (CI per level, in the body outside higher
    targets / in the nearest-target domain, goals); falloff: the gradient G; control points: the
    weight; warm start: the region model's level; conversion: the DVH rows beyond the fixed 3 %
    tolerance with their structure's size and a 3 mm shift's effect.
    """
    out = []
    for r in rows:
        f, c = r["rtlab_figure"], r["claim"]
        sw = f.get("sweep")
        if c.startswith("Conformity objective") and sw:
            names = list(next(iter(sw.values()))["levels"])
            lines = [f"**{c}: sweep of the lower levels' conformity weight w (tg119_multitarget)**", "",
                     "| w | " + " | ".join(f"CI {n}" for n in names) + " | " + " | ".join(
                         f"CI nearest {n}" for n in names) + " | goals failed | iterations | every level >= 0.6, goals met |",
                     "|---" * (2 * len(names) + 4) + "|"]
            for k, v in sw.items():
                lines.append(f"| {k} | " + " | ".join(_na(v["levels"][n]["ci"]) for n in names) + " | " + " | ".join(
                    _na(v["levels"][n]["ci_nearest"]) for n in names) + f" | {', '.join(v['goals_failed']) or '-'} | "
                    f"{v.get('iterations', '-')} | {'yes' if v['criterion_met'] else 'no'} |")
            out.append("\n".join(lines))
        elif c.startswith("Dose-falloff") and sw:
            lines = [f"**{c}: sweep of the gradient G (first case, equal D95)**", "", "| G (Gy/mm) | GI | CI |",
                     "|---|---|---|"]
            lines += [f"| {k[2:]} | {_na(v['gi'], '{:.2f}')} | {_na(v['ci'])} |" for k, v in sw.items()]
            out.append("\n".join(lines))
        elif c.startswith("Dose control points (para. 154") and sw:
            base = f["cases"][f["sweep_case"]]["without"]
            lines = [f"**{c}: sweep of the control-point weight ({f['sweep_case']}; without control points: RMS "
                     f"{base['rms_violation_gy']:.2f} Gy, CI {base['ci']:.3f})**", "",
                     "| setting | RMS violation (Gy) | CI | criterion met |", "|---|---|---|---|"]
            lines += [f"| {k} | {_na(v['rms_violation_gy'], '{:.2f}')} | {_na(v['ci'])} | "
                      f"{'yes' if v['criterion_met'] else 'no'} |" for k, v in sw.items()]
            out.append("\n".join(lines))
        elif c.startswith("Dose-region model") and f.get("level_sweep"):
            m = f["mean"]
            lines = [f"**{c}: sweep of the model's level (mean over {len(f['cases'])} held-out generated case(s); "
                     f"uniform {_na(m['uniform']['mean_iterations'], '{:.1f}')} it / "
                     f"{_na(m['uniform']['mean_time_s'], '{:.2f}')} s, target-shaped "
                     f"{_na(m['target']['mean_iterations'], '{:.1f}')} it / {_na(m['target']['mean_time_s'], '{:.2f}')}"
                     f" s)**", "", "| level | cases reaching the common value | iterations / s there | target-shaped "
                     "there | Dice(region, target) | criterion met |", "|---|---|---|---|---|---|"]
            lines += [f"| {k} | {v['n_reached']}/{v['n_cases']} | "
                      f"{_na(v['mean_iterations_where_reached'], '{:.1f}')} / {_na(v['mean_time_s_where_reached'], '{:.2f}')}"
                      f" | {_na(v['target_mean_iterations_same_cases'], '{:.1f}')} / "
                      f"{_na(v['target_mean_time_s_same_cases'], '{:.2f}')} | "
                      f"{_na(v['mean_dice_vs_target'])} | {'yes' if v['criterion_met'] else 'no'} |"
                      for k, v in f["level_sweep"].items()]
            out.append("\n".join(lines))
        elif c.startswith("Plan conversion") and "dvh_dta_mm" in f:
            lines = [f"**{c}: DVH rows beyond the fixed tolerance (3 % of the prescription), measured; whole QA "
                     f"{f['n_whole_qa_pass']}/{f['n_conversions']} -> {f['n_whole_qa_pass_dvh_dta']}/{f['n_conversions']}"
                     f" with the {f['dvh_dta_mm']:g} mm-consistent tolerance**", "",
                     "| conversion | structure | metric | voxels | diff (Gy) | 3 % (Gy) | change under a "
                     f"{f['dvh_dta_mm']:g} mm shift (Gy) | within max of both |", "|---|---|---|---|---|---|---|---|"]
            for k, v in f["conversions"].items():
                lines += [f"| {k} | {d['structure']} | {d['metric']} | {d['n_voxels']} | {d['diff_gy']:+.2f} | "
                          f"{d['fixed_tolerance_gy']:.2f} | {_na(d['shift_spread_gy'], '{:.2f}')} | "
                          f"{'yes' if d['passes_dta_tolerance'] else 'no'} |" for d in v["dvh_fails"]]
            out.append("\n".join(lines))
    return "\n\n".join(out)
