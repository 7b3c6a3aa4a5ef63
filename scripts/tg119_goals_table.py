"""TG-119 goals of every built-in TG-119 case and of matRad's TG119.mat, old recipe vs new.

Plans each case as ``rtlab plan`` does with its defaults (conformity objective, 5 mm bixels,
the case's suggested beams or 0/72/144/216/288, CT dose grid, max_iter 100, goals ``auto``),
once with the conformity recipe before #18 item 2 (no goal terms, no re-weighting: the
recipe entries ``goal_target_weight = goal_oar_weight = goal_rounds = 0``) and once with
the default recipe, on the same influence matrix. Prints one JSON line per case and plan;
docs/methods/planning.md ("TG-119 goals met") holds the table made from it.

    python scripts/tg119_goals_table.py [--matrad TG119.mat] [--cases tg119_cshape_easy,...]
"""

from __future__ import annotations

import argparse
import json
import time

from rtlab.evaluate.metrics import evaluate
from rtlab.io import load_matrad
from rtlab.phantoms import get_phantom
from rtlab.planning import PlanSettings, optimise_plan, prepare_plan
from rtlab.planning.intent import with_goals
from rtlab.planning.pipeline import meet_goals

CASES = ["tg119_cshape_easy", "tg119_cshape_hard", "tg119_prostate", "tg119_headneck", "tg119_multitarget"]
OLD = {"goal_target_weight": 0.0, "goal_oar_weight": 0.0, "goal_rounds": 0}


def run(case, label):
    angles = [b.gantry for b in case.beams] if case.beams else [0.0, 72.0, 144.0, 216.0, 288.0]
    influence = None
    for name, rec in (("old", OLD), ("new", None)):
        s = PlanSettings(objective="conformity", recipe_overrides=rec)
        t0 = time.perf_counter()
        prob = prepare_plan(case, angles, settings=s, influence=influence)
        influence = prob.influence
        res = meet_goals(prob, optimise_plan(prob, settings=s), settings=s)
        wall = time.perf_counter() - t0
        goals = []
        for g in case.goals:
            v = float(evaluate(res.dose, case.structures[g.structure], g.metric, case.grid))
            goals.append({"goal": str(g), "value": round(v, 2), "passed": g.passed(v)})
        sc = res.scores
        print(json.dumps({"case": label, "recipe": name, "ci_paddick": round(sc["ci_paddick"], 4),
                          "d95": round(float(evaluate(res.dose, case.structures[sc["target"]], "D95", case.grid)), 2),
                          "goals": goals, "all_passed": all(g["passed"] for g in goals),
                          "iterations": res.timings["iterations"], "goal_rounds": res.timings.get("goal_rounds", 0),
                          "optimize_s": round(res.timings["optimize_s"], 1), "wall_s": round(wall, 1),
                          "reweighted": res.timings.get("goal_reweighted", {})}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrad", default=None)
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    for n in [c for c in a.cases.split(",") if c]:
        run(with_goals(get_phantom(n), "auto"), n)
    if a.matrad:
        run(with_goals(load_matrad(a.matrad), "auto"), "TG119.mat")


if __name__ == "__main__":
    main()
