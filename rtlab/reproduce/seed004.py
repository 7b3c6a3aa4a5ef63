"""Reproduction rows of paper 004 (interactive dose shaping; :mod:`rtlab.reproduce`).

The paper's phantom experiment (section 3.1, figure 7): on the horseshoe phantom at the paper's
resolution (1.952 x 1.952 x 2 mm, 9 equispaced beams, open fields filling the target, median
target dose 100 %), the OAR rim voxel ``m`` at the bottom of the organ at risk is lowered to
55 %, then 25 recovery steps follow. The paper: "All target voxels show a dose higher than 95 %
of the prescribed dose while the dose at the rim of the OAR was lowered to 55 %".

Rows (ids of :data:`ROWS`):

``w2`` (two rows from one session)
    Row 1, at the paper's kernel: the patch kernel ``K`` from the machine's second lateral
    component ``w_2`` (16.13 mm for rtlab's commissioned 6 MV machine), the session's defaults
    (recovery scale fitted over the voxels a patch reaches, the request held, the significance
    filter on the furthest-first order). Held when every target voxel is >= 95 % after 25 steps
    (``target_ge95_pct == 100``) and the rim voxel lies within :data:`RIM_TOL_PCT` percentage
    points of 55 %. Its ``sweep`` re-runs the same request with one choice changed at a time
    (the paper's exact single-voxel scale, no hold of the request, the pure furthest-first
    order, 50 steps): the measurement behind every deviation from the paper's rules.
    Row 2, the order: the paper's pure furthest-first order (``significance=0``) against the
    significance filter, both at ``w_2``. Held when the pure order meets row 1's criterion
    (then no reordering is needed); otherwise the row says how far it falls short.
``narrow``
    The same experiment with the narrow 3 mm kernel (``kernel_sigma_mm=3``, the option), same
    criterion.

Reduced rows (the tests): the phantom at 4 mm voxels and fewer sweep entries; the criterion
and the code are the same.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..methods.ids import IDSSession, reproduce_paper
from ..phantoms import get_phantom
from .schema import row

__all__ = ["ROWS", "RIM_TOL_PCT", "REQUEST_PCT", "N_STEPS", "w2_rows", "narrow_row", "run_config"]

#: The requested rim dose (% of the prescription; paper 004 figure 7).
REQUEST_PCT = 55.0
#: Largest allowed distance of the rim voxel's final dose from the request (percentage points; issue #21).
RIM_TOL_PCT = 1.0
#: Recovery steps after the request (paper 004: 25).
N_STEPS = 25
#: The paper's sentence the rows test.
PAPER = ("Paper 004 section 3.1 / figure 7: after 25 recovery steps 'all target voxels show a dose higher than "
         "95 % of the prescribed dose while the dose at the rim of the OAR was lowered to 55 %'")


def _r(v, nd=3):
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


def _case(reduced: bool):
    return get_phantom("horseshoe", spacing=4.0) if reduced else get_phantom("horseshoe")


def run_config(session: IDSSession, voxel, n_steps: int = N_STEPS, **options) -> dict:
    """One request at ``voxel`` (55 %) with ``n_steps`` recoveries under ``options``; undone afterwards.

    ``options`` are session attributes (``step_rule``, ``hold_request``, ``significance``,
    ``band_mm``) set for this run and restored after it. Returns the figures of the result.
    """
    s = session
    saved = {k: getattr(s, k) for k in options}
    for k, v in options.items():
        setattr(s, k, v)
    ref = s.reference_gy
    try:
        t0 = time.perf_counter()
        s.request_voxel(voxel, REQUEST_PCT / 100 * ref, recover=0)
        mod_cov = s.target_coverage(95.0)
        s.recover(n_steps)
        dt = time.perf_counter() - t0
        d = s.dose
        t = d[s.target_mask]
        cold = s.target_mask & (d < 0.95 * ref - 1e-9)
        wm = s.grid.index_to_world(voxel)
        dist = np.linalg.norm(s.grid.index_to_world(np.argwhere(cold)) - wm, axis=1) if cold.any() else None
        out = {"options": {k: (v if not isinstance(v, (np.floating, float)) else float(v)) for k, v in options.items()},
               "n_steps": int(n_steps),
               "target_ge95_pct_modified": _r(100 * mod_cov),
               "target_ge95_pct": _r(100 * np.mean(t >= 0.95 * ref - 1e-9)),
               "target_min_pct": _r(100 * t.min() / ref, 2),
               "rim_pct": _r(100 * d[tuple(voxel)] / ref),
               "cold_target_voxels": int(cold.sum()),
               "cold_max_distance_mm": None if dist is None else _r(dist.max(), 1),
               "request_s": _r(dt, 2)}
        return out
    finally:
        while s.can_undo:
            s.undo()
        for k, v in saved.items():
            setattr(s, k, v)


def _held(fig) -> bool:
    return fig["target_ge95_pct"] >= 100.0 and abs(fig["rim_pct"] - REQUEST_PCT) <= RIM_TOL_PCT


def _verdict(fig) -> str:
    return (f"target voxels >= 95 %: {fig['target_ge95_pct']:.3f} % (need 100), rim {fig['rim_pct']:.2f} % "
            f"(need {REQUEST_PCT:g} +- {RIM_TOL_PCT:g})")


def _sweep(reduced: bool) -> list[dict]:
    """Each entry changes one choice of the session's defaults (the measurement behind it)."""
    sw = [dict(label="paper's exact single-voxel scale (step_rule='voxel'), no hold", step_rule="voxel",
               hold_request=False),
          dict(label="pure furthest-first order (significance=0)", significance=0.0)]
    if not reduced:
        sw += [dict(label="fitted scale, request not held (hold_request=False)", hold_request=False),
               dict(label="paper's scale and pure furthest-first (the paper's rules throughout)", step_rule="voxel",
                    hold_request=False, significance=0.0),
               dict(label="50 recovery steps", n_steps=50)]
    return sw


def w2_rows(reduced: bool = False) -> list[dict]:
    """Rows 1-2 (module docstring): the experiment at the paper's ``w_2`` kernel, its sweep, the order."""
    case = _case(reduced)
    t0 = time.perf_counter()
    probe = reproduce_paper(case, n_steps=0, kernel_sigma_mm="w2")  # the paper's voxel m (same rule as notebook 05)
    s, vox = probe["session"], probe["voxel"]
    while s.can_undo:
        s.undo()
    main = run_config(s, vox)
    sweep = []
    for cfg in _sweep(reduced):
        cfg = dict(cfg)
        label, n = cfg.pop("label"), cfg.pop("n_steps", N_STEPS)
        f = run_config(s, vox, n_steps=n, **cfg)
        sweep.append({"label": label, **f, "held": _held(f)})
    held = _held(main)
    base = {"kernel_sigma_mm": _r(s.kernel_sigma_mm, 2), "voxel_m": list(vox), "spacing_mm": list(case.grid.spacing),
            "defaults": {"step_rule": s.step_rule, "hold_request": s.hold_request, "significance": s.significance,
                         "band_mm": s.band_mm, "tol_pct": 1.0, "request_tol_pct": 2.0}}
    summary = (f"w2 = {s.kernel_sigma_mm:.2f} mm: target >= 95 % {main['target_ge95_pct_modified']:.1f} % after the "
               f"modification -> {main['target_ge95_pct']:.2f} % after {N_STEPS} steps (min {main['target_min_pct']:.1f} %),"
               f" rim {main['rim_pct']:.2f} %")
    r1 = row("004", "Dose modification and recovery at the paper's kernel w2: target >= 95 %, rim at 55 % (sec. 3.1)",
             PAPER, {"summary": summary, **base, **main, "sweep": sweep},
             "the open-field start plan (all target voxels >= 95 %, rim voxel 100.5 %) and the paper's figure 7; "
             "sweep: the same request with one of rtlab's choices reverted",
             held, f"criterion: every target voxel >= 95 % after {N_STEPS} steps and |rim - {REQUEST_PCT:g}| <= "
             f"{RIM_TOL_PCT:g} point: " + ("met" if held else "not met") + f" ({_verdict(main)}); sweep: "
             + "; ".join(f"{e['label']}: {e['target_ge95_pct']:.2f} %, rim {e['rim_pct']:.1f} %" for e in sweep))
    pure = next(e for e in sweep if e["label"].startswith("pure furthest-first"))
    ok = pure["held"]
    gain = main["target_ge95_pct"] - pure["target_ge95_pct"]
    r2 = row("004", "Recovery order furthest first ('close in', sec. 2.3) at w2",
             "Paper 004 section 2.3: voxels are restored furthest from m first (distance transform); 'second-degree "
             "deviations ... can be selected based on their location and absolute dose deviance'",
             {"summary": f"pure furthest-first {pure['target_ge95_pct']:.2f} % (rim {pure['rim_pct']:.1f} %) vs "
                         f"significance filter {main['target_ge95_pct']:.2f} % (rim {main['rim_pct']:.1f} %)",
              "pure_order": pure, "significance_filter": {"significance": s.significance, **main},
              "coverage_gain_pct": _r(gain), "run_s": _r(time.perf_counter() - t0, 1)},
             "the same session, request and steps with the pure order (significance=0, the paper's rule)",
             ok, "criterion: the pure furthest-first order meets row 1's criterion (then no reordering is needed): "
             + ("met" if ok else f"not met ({_verdict(pure)}); the significance filter (candidates with a deviation "
                                 f">= {s.significance:g} x the largest, furthest band of {s.band_mm:g} mm) is the "
                                 f"measured reason for reordering: {gain:+.2f} points of coverage"))
    return [r1, r2]


def narrow_row(reduced: bool = False) -> dict:
    """Row 3: the experiment with the narrow 3 mm kernel (the option)."""
    case = _case(reduced)
    probe = reproduce_paper(case, n_steps=0, kernel_sigma_mm=3.0)
    s, vox = probe["session"], probe["voxel"]
    while s.can_undo:
        s.undo()
    f = run_config(s, vox)
    held = _held(f)
    summary = (f"3 mm kernel: {f['target_ge95_pct_modified']:.1f} % -> {f['target_ge95_pct']:.2f} % (min "
               f"{f['target_min_pct']:.1f} %), rim {f['rim_pct']:.2f} %")
    return row("004", "Dose modification and recovery with the narrow 3 mm kernel (option)", PAPER,
               {"summary": summary, "kernel_sigma_mm": 3.0, "voxel_m": list(vox), **f},
               "the open-field start plan and the paper's figure 7 (the paper's own kernel is row 1's w2)",
               held, f"criterion: every target voxel >= 95 % after {N_STEPS} steps and |rim - {REQUEST_PCT:g}| <= "
               f"{RIM_TOL_PCT:g} point: " + ("met" if held else "not met") + f" ({_verdict(f)})")


ROWS = [("w2", w2_rows), ("narrow", narrow_row)]
