"""Reproduction rows of patent 001 (standardised cloud planning; :mod:`rtlab.reproduce`).

Rows (ids of :data:`ROWS`):

``conversion`` (two rows from one run)
    Notebook 08's setting (:func:`rtlab.batch.rtlab_stages` with ``spacing=10, angles=[0, 120,
    240], max_iter=15, convert_max_iter=10, attempts_per_task=1``; the five TG-119 cases on
    ``linac_10mm_hard`` and ``linac_5mm_soft``; at most 2 attempts, claim 7's "return to step
    (4)"), run serially through the batch's own stage functions with the master's retry rule
    (convert again with ``attempt + 1`` while the whole QA fails). Row 1: conversions whose kept
    plan passes gamma 3 %/3 mm >= 95 % (held at >= 90 % of the conversions: 9 of 10), and the
    whole-QA passes of the converted plan (gamma and DVH tolerances). Row 2, the deliverable plan:
    ``convert_plan``'s own deliverable check (the kept leaf-row maps sequenced for the target
    MLC, the dose re-computed from the delivered fluence, QA'd against the standard dose): the
    default sliding window (held at >= 90 % passing gamma 3 %/3 mm) and, beside it, step and
    shoot with 10 levels. The rows call :func:`rtlab.methods.conversion.convert_plan` with the
    options :func:`rtlab.batch.stages.rtlab_convert` uses (to keep both deliverable variants).
``congestion``
    Queue loads measured by :func:`rtlab.batch.measure_queue_loads` on a running in-process dask
    cluster (one worker pool per machine, dask resources) while known tasks are queued: held when
    the measured loads equal the submitted tasks per machine and the congestion model, fed the
    measured loads, picks the idle machine.
``delineation``
    Dice of :func:`rtlab.methods.delineation.delineate_case` (a stand-in for a clinical
    auto-contouring model) per TG-119 case on a test patient (anatomy scaled 0.94/0.95/0.92,
    shifted (3, -2.5, 4) mm, 200 HU noise; the setting of ``scripts/delineation_dice.py``);
    held when every target's Dice >= :data:`DICE_MIN` (rtlab's threshold; the patent gives none).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._lazy import load
from ..batch import CongestionModel, measure_queue_loads, rtlab_stages
from ..batch.stages import standard_treatment_machine
from ..evaluate.qa import qa_report
from ..methods.conversion import convert_plan
from ..methods.delineation import delineate_case, perturb_case
from ..phantoms import get_phantom
from .schema import row

distributed = load("distributed", extra="batch", purpose="the congestion row of rtlab reproduce")

__all__ = ["ROWS", "TG119", "MACHINES", "GAMMA_MIN", "DICE_MIN", "PASS_FRACTION", "conversion_rows",
           "congestion_row", "delineation_row", "sleep_task"]

TG119 = ["tg119_cshape_easy", "tg119_cshape_hard", "tg119_multitarget", "tg119_prostate", "tg119_headneck"]
MACHINES = ["linac_10mm_hard", "linac_5mm_soft"]
#: Gamma 3 %/3 mm pass rate (%) a conversion must reach.
GAMMA_MIN = 95.0
#: Fraction of conversions that must pass (issue #20: 9 of 10).
PASS_FRACTION = 0.9
#: Dice every delineated target must reach (rtlab's threshold).
DICE_MIN = 0.9
PERTURB = dict(scale=(0.94, 0.95, 0.92), shift_mm=(3.0, -2.5, 4.0), noise_hu=200.0, seed=1)
GAMMA_KEY = "3%/3mm"
#: The distance (mm) of the conversion row's distance-consistent DVH tolerance (gamma's 3 mm).
DVH_DTA_MM = 3.0


def _r(v, nd=2):
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


def _convert(case, std, machine, attempt, max_iter, escalate=2.0, tighten=4.0, deliverable="sliding"):
    """:func:`rtlab.batch.stages.rtlab_convert`'s call of ``convert_plan`` (same options), keeping the result."""
    f = float(tighten) ** attempt
    opts = dict(isodose_weight=1.0 * f, dvh_weight=1.0 * f, fidelity_weight=0.1 * f, mimic_weight=10.0 * f)
    return convert_plan(case, std["x"], std["im"], machine, standard_treatment_machine("standard", None),
                        method="fluence", max_iter=int(round(max_iter * escalate ** attempt)), max_attempts=1,
                        tighten=tighten, qa_kwargs={}, deliverable=deliverable, **opts)


def _reasons(reasons):
    """The QA reasons, shortened: which criteria failed."""
    out = []
    for r in reasons:
        if r.startswith("gamma"):
            out.append(r.split(" pass rate")[0])
        elif " differs by " in r:
            out.append("DVH " + r.split(" differs by ")[0])
    return sorted(set(out))


def _dvh_tolerance_check(case, r) -> dict:
    """The kept plan's whole QA again with the DVH tolerance consistent with gamma's 3 mm (``dvh_dta_mm=3``).

    ``dvh_fails``: every DVH row that fails the fixed tolerance (3 % of the prescription), with
    its structure's voxel count, the difference, and how much a 3 mm shift of the standard dose
    alone moves that metric (:func:`rtlab.evaluate.qa.dvh_shift_spread`).
    """
    q = qa_report(r.standard_dose, r.dose, case, dvh_dta_mm=DVH_DTA_MM)
    fixed = float(q.max_dvh_diff_gy)
    rows = [{"structure": x.structure, "metric": x.metric, "n_voxels": int(x.n_voxels), "diff_gy": _r(x.diff, 3),
             "fixed_tolerance_gy": _r(fixed, 3), "shift_spread_gy": _r(x.shift_spread_gy, 3),
             "passes_dta_tolerance": bool(abs(x.diff) <= x.tolerance_gy)}
            for x in q.dvh.itertuples(index=False) if math.isfinite(x.diff) and abs(x.diff) > fixed]
    return {"qa_passed_dvh_dta": bool(q.passed), "failed_dvh_dta": _reasons(q.reasons), "dvh_fails": rows}


def conversion_rows(reduced: bool = False) -> list:
    """Conversion QA within the retry budget, and the deliverable (sequenced) plan's QA (module docstring)."""
    names = ["tg119_cshape_easy"] if reduced else TG119
    max_attempts = 2
    st = rtlab_stages(spacing=10.0, angles=[0, 120, 240], max_iter=15, convert_max_iter=10, attempts_per_task=1)
    conv, deliv = {}, {}
    for name in names:
        case = st.load(name)
        std = st.optimize(case, [st.influence(case, i) for i in range(st.n_beams(case))])
        for m in MACHINES:
            attempts = []
            for k in range(max_attempts):
                r = _convert(case, std, m, k, max_iter=10)
                q = r.qa
                attempts.append({"attempt": k, "gamma_3_3_pct": _r(100 * q.pass_rates[GAMMA_KEY]),
                                 "qa_passed": bool(q.passed), "failed": _reasons(q.reasons)})
                if q.passed:
                    break
            key = f"{name}/{m}"
            conv[key] = {"attempts": attempts, "gamma_3_3_pct": attempts[-1]["gamma_3_3_pct"],
                         "gamma_3_3_pct_first": attempts[0]["gamma_3_3_pct"], "qa_passed": attempts[-1]["qa_passed"],
                         **_dvh_tolerance_check(case, r)}
            # the deliverable plan: convert_plan's own check (the kept leaf-row maps sequenced for the MLC,
            # the dose re-computed from the delivered fluence): sliding window (default, exact) and
            # step and shoot (10 levels per beam, quantised; the same conversion run again)
            rs = _convert(case, std, m, k, max_iter=10, deliverable="step")
            deliv[key] = {}
            for kind, res in (("sliding", r), ("step", rs)):
                dq = res.deliverable_qa
                deliv[key][kind] = {"gamma_3_3_pct": _r(100 * dq.pass_rates[GAMMA_KEY]), "qa_passed": bool(dq.passed),
                                    "max_dose_diff_gy": _r(res.deliverable["max_dose_diff_gy"], 3),
                                    "failed": _reasons(dq.reasons)}
            deliv[key]["gamma_3_3_pct"] = deliv[key]["sliding"]["gamma_3_3_pct"]
    n = len(conv)
    need = math.ceil(PASS_FRACTION * n)
    n_gamma = sum(1 for v in conv.values() if v["gamma_3_3_pct"] >= GAMMA_MIN)
    n_first = sum(1 for v in conv.values() if v["gamma_3_3_pct_first"] >= GAMMA_MIN)
    n_qa = sum(1 for v in conv.values() if v["qa_passed"])
    fails = sorted({f for v in conv.values() if not v["qa_passed"] for f in v["attempts"][-1]["failed"]})
    n_qa_dta = sum(1 for v in conv.values() if v["qa_passed_dvh_dta"])
    dfl = [d for v in conv.values() for d in v["dvh_fails"]]
    summary = (f"{n_gamma}/{n} pass gamma 3%/3mm >= {GAMMA_MIN:g} % within {max_attempts} attempts ({n_first}/{n} at "
               f"the first); whole QA passes {n_qa}/{n}; with the DVH tolerance consistent with gamma's "
               f"{DVH_DTA_MM:g} mm (max of 3 % and the metric's change under a {DVH_DTA_MM:g} mm shift of the standard "
               f"dose) {n_qa_dta}/{n}")
    if dfl:
        summary += (f" ({sum(d['passes_dta_tolerance'] for d in dfl)} of the {len(dfl)} DVH rows beyond 3 % lie within "
                    f"what a {DVH_DTA_MM:g} mm shift moves; their structures hold {min(d['n_voxels'] for d in dfl)}-"
                    f"{max(d['n_voxels'] for d in dfl)} voxels)")
    setting = ("notebook 08's setting: rtlab_stages(spacing=10, angles=[0, 120, 240], max_iter=15, convert_max_iter=10,"
               f" attempts_per_task=1), {len(names)} TG-119 case(s) x {', '.join(MACHINES)}, at most {max_attempts} "
               "attempts (retry while the whole QA fails)")
    held = n_gamma >= need
    r1 = row("001", "Plan conversion to a specific machine passes QA within the retry budget (claims 5-7)",
             "Patent 001: the converted plan is verified by QA and regenerated until correct (no figure given); "
             f"issue #20: at least 9 of 10 conversions pass gamma 3 %/3 mm >= {GAMMA_MIN:g} % within the retry budget",
             {"summary": summary, "n_conversions": n, "n_gamma_pass": n_gamma, "n_gamma_pass_first_attempt": n_first,
              "n_whole_qa_pass": n_qa, "n_whole_qa_pass_dvh_dta": n_qa_dta, "dvh_dta_mm": DVH_DTA_MM,
              "gamma_min_pct": GAMMA_MIN, "conversions": conv},
             f"the standard plan's dose (standard machine, same case, beams, 10 mm grid); {setting}",
             held,
             f"criterion: >= {need}/{n} conversions at gamma 3%/3mm >= {GAMMA_MIN:g} % (kept plan): "
             + ("met" if held else "not met") + f" ({summary}). The whole QA also applies DVH tolerances "
             f"(D95/D50/D2/Dmean within 3 % of the prescription); failing criteria: {', '.join(fails) or 'none'}. "
             f"Measured per failing DVH row (dvh_fails): the structure's voxel count at 10 mm and how much the metric "
             f"of the standard dose itself moves under a {DVH_DTA_MM:g} mm shift (the distance gamma 3%/3mm accepts); "
             "with the tolerance max(3 %, that shift spread) - qa_report(..., dvh_dta_mm=3), rtlab's rule, not a "
             f"published one - the whole QA passes {n_qa_dta}/{n}")
    n_d = sum(1 for v in deliv.values() if v["gamma_3_3_pct"] >= GAMMA_MIN)
    held_d = n_d >= need
    n_step = sum(1 for v in deliv.values() if v["step"]["gamma_3_3_pct"] >= GAMMA_MIN)
    n_dqa = {k: sum(1 for v in deliv.values() if v[k]["qa_passed"]) for k in ("sliding", "step")}
    dsum = (f"{n_d}/{n} deliverable plans (sliding window) pass gamma 3%/3mm >= {GAMMA_MIN:g} % against the standard "
            f"dose; step and shoot (10 levels): {n_step}/{n}; whole deliverable QA passes {n_dqa['sliding']}/{n} "
            f"(sliding), {n_dqa['step']}/{n} (step)")
    r2 = row("001", "QA of the deliverable (sequenced) converted plan",
             "Issue #20: QA also checks the deliverable plan (sequenced for the target machine's MLC, dose "
             "re-computed from the sequenced fluence)",
             {"summary": dsum, "n_conversions": n, "n_gamma_pass": n_d, "n_gamma_pass_step": n_step,
              "n_whole_qa_pass": n_dqa, "gamma_min_pct": GAMMA_MIN, "conversions": deliv},
             f"the standard plan's dose, as for the conversion row ({setting})",
             held_d,
             f"criterion: >= {need}/{n} deliverable plans (convert_plan's default sliding-window check) at gamma "
             f"3%/3mm >= {GAMMA_MIN:g} %: " + ("met" if held_d else "not met") + f" ({dsum}). convert_plan sequences "
             "the kept leaf-row maps for the target MLC and re-computes the dose from the delivered fluence; the "
             "sliding window delivers the maps exactly (max_dose_diff_gy), step and shoot quantises them")
    return [r1, r2]


def sleep_task(s: float, *deps) -> float:
    """A task that sleeps ``s`` seconds (the load submitted to a machine pool)."""
    time.sleep(s)
    return s


def congestion_row(reduced: bool = False) -> dict:
    """Queue loads measured from a running dask cluster (module docstring)."""
    machines = ["linac_a", "linac_b", "linac_c"]
    submitted = {"linac_a": 3, "linac_b": 2, "linac_c": 0}
    workers = {m: {"cls": distributed.Worker, "options": {"nthreads": 1, "resources": {m: 1}, "name": f"pool-{m}"}}
               for m in machines}
    workers["compute"] = {"cls": distributed.Worker, "options": {"nthreads": 1, "name": "compute"}}
    cluster = distributed.SpecCluster(workers=workers, scheduler={"cls": distributed.Scheduler,
                                                                  "options": {"dashboard_address": None}},
                                      silence_logs=50)
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(len(workers))
        futs = [client.submit(sleep_task, 3.0, resources={"linac_a": 1}, pure=False) for _ in range(3)]
        b = client.submit(sleep_task, 3.0, resources={"linac_b": 1}, pure=False)
        futs += [b, client.submit(sleep_task, 0.0, b, resources={"linac_b": 1}, pure=False)]
        t0 = time.time()
        while True:  # tasks reach the scheduler asynchronously
            d = measure_queue_loads(client, machines, detail=True)
            if sum(v["load"] for v in d.values()) == sum(submitted.values()) or time.time() - t0 > 15:
                break
            time.sleep(0.05)
        measured = {m: float(v["load"]) for m, v in d.items()}
        model = CongestionModel(machines, "shortest_queue")
        model.set_measured(measured)
        choice = model.choose()[0][0]
        client.cancel(futs)
    finally:
        client.close()
        cluster.close()
    equal = all(measured[m] == submitted[m] for m in machines)
    held = equal and choice == "linac_c"
    summary = (f"measured {', '.join(f'{m} {measured[m]:g}' for m in machines)} for submitted "
               f"{', '.join(f'{m} {submitted[m]}' for m in machines)}; shortest queue picks {choice}")
    return row("001", "Machine choice by congestion from queue loads measured on the cluster (claim 8)",
               "Patent 001 claim 8: the standard plan is converted preferentially for an idle machine or one with a "
               "short queue; issue #20: loads measured from the running cluster, not typed in",
               {"summary": summary, "submitted": submitted, "measured": measured,
                "processing": {m: int(v["processing"]) for m, v in d.items()},
                "waiting": {m: int(v["waiting"]) for m, v in d.items()}, "choice": choice},
               "the tasks submitted to each machine's worker pool (dask resources; 3 on linac_a, 1 running + 1 "
               "waiting for its dependency on linac_b, none on linac_c)",
               held, f"criterion: measured loads equal the submitted tasks on every machine and the congestion "
               f"model picks the idle linac_c: " + ("met" if held else "not met") + f" ({summary})")


def delineation_row(reduced: bool = False) -> dict:
    """Atlas delineation Dice per TG-119 case (module docstring)."""
    spacing = 10.0 if reduced else 5.0
    names = ["tg119_cshape_easy", "tg119_multitarget"] if reduced else TG119
    cases, worst = {}, 1.0
    for name in names:
        c = get_phantom(name, spacing=spacing)
        _, rep = delineate_case(perturb_case(c, **PERTURB), structures="all", registration="moments")
        targets = [s.name for s in c.structures.targets]
        cases[name] = {"dice": {k: _r(v, 4) for k, v in rep["dice"].items()}, "targets": targets}
        worst = min([worst] + [rep["dice"][t] for t in targets])
    held = worst >= DICE_MIN
    summary = "; ".join(f"{n}: " + ", ".join(f"{t} {c['dice'][t]:.3f}" for t in c["targets"]) for n, c in cases.items())
    return row("001", "Automatic delineation of the targets (step 2, claim 4)",
               "Patent 001 claim 4: the delineation may be automatic (no figure given); issue #20: an automatic "
               "delineation stage evaluated by Dice against the ground truth",
               {"summary": summary, "spacing_mm": spacing, "min_target_dice": _r(worst, 4), "dice_min": DICE_MIN,
                "stand_in": "atlas of rtlab's built-in phantoms registered by body moments - a stand-in for a "
                            "clinical auto-contouring model", "cases": cases},
               "the phantom's own contours moved with the anatomy (ground truth) on a test patient: anatomy scaled "
               f"0.94/0.95/0.92, shifted (3, -2.5, 4) mm, 200 HU noise, {spacing:g} mm voxels",
               held, f"criterion (rtlab's; the patent has no figure): every target Dice >= {DICE_MIN}: "
               + ("met" if held else "not met") + f" (lowest {worst:.3f}; {summary})")


ROWS = [("conversion", conversion_rows), ("congestion", congestion_row), ("delineation", delineation_row)]
