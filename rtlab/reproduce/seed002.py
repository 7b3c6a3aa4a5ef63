"""Reproduction rows of patent 002 (planning through the differentiable dose; :mod:`rtlab.reproduce`).

Rows (ids of :data:`ROWS`):

``learning`` (one row)
    The torch shot network of :mod:`rtlab.methods.gk.shotnet` (target mask + distance map ->
    shot positions and sector-collimator times, trained end to end through the point-kernel dose
    with the eq. 8 dose loss; the weights shipped in ``rtlab/data/gk_shotnet.pt``) on the held-out
    targets of its seeded target family, against the iterative optimiser
    (:func:`rtlab.methods.gk.plan_gamma_knife`, its defaults: up to 6 shots, 40 Adam-PGD
    iterations, up to 3 re-planning rounds) and against the feature MLP of
    :mod:`rtlab.methods.gk.learning` (trained here, unsupervised eq. 8, on the same training
    targets). Every plan is normalised to 96 % coverage; the objective is eq. 8 of the normalised
    plan. The sweep (item 5): the network's shots with their times re-optimised by L-BFGS-B
    (:data:`POLISH` iterations, shots fixed), which separates the shot placement from the times.
    Held (issue #21) when the network's mean objective is within 10 % of the optimiser's
    (ratio of the means <= 1.10) at >= 20x its speed (ratio of the mean wall times).
``subgradient`` (one row)
    Eq. 9's projected subgradient step (``optimize_pgd(step='subgradient')``) beside the Adam
    variant: on a problem with a closed-form optimum (one target point at the shot) and on
    held-out targets (same start, same iterations). Held when the subgradient method reaches the
    closed-form optimum within 0.5 %, keeps ``t >= 0`` and the shots in the box, and lowers the
    loss on every target.

Reduced form: 3 held-out targets, the MLP trained on 8 targets for 5 epochs, the optimiser with 15
iterations and one round; 2 targets for the subgradient comparison.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ..dose import pointkernel as pk
from ..methods.gk import isocentres as iso
from ..methods.gk import shotnet as sn
from ..methods.gk.problem import PlanningProblem, plan_loss
from .schema import row

__all__ = ["ROWS", "OBJECTIVE_RATIO_MAX", "SPEEDUP_MIN", "learning_row", "subgradient_row", "held_out_targets"]

#: Network objective / optimiser objective that still holds (issue #21: within 10 %).
OBJECTIVE_RATIO_MAX = 1.10
#: Optimiser wall time / network wall time that must be reached (issue #21: >= 20x).
SPEEDUP_MIN = 20.0
#: The sweep (item 5): the network's shots with the times re-optimised for this many L-BFGS-B iterations.
POLISH = (10, 30, 100)
_KEYS = ("objective", "ci_paddick", "gi", "beam_on_min", "coverage", "seconds", "cpu_s")


def _r(v, nd=4):
    v = float(v)
    return round(v, nd) if math.isfinite(v) else None


def held_out_targets(reduced: bool = False):
    """The shipped network's target family split as in its training: ``(net, info, train, held_out)``."""
    net, info = sn.load_shipped()
    cfg = info["settings"]
    cases = sn.make_target_set(cfg["n_targets"], seed=cfg["set_seed"])
    tr, te = sn.split(cases, cfg["n_test"], seed=cfg["split_seed"])
    return net, info, tr, (te[:3] if reduced else te)


def _means(rows, who):
    return {k: _r(np.mean([r[who][k] for r in rows])) for k in _KEYS}


def learning_row(reduced: bool = False) -> dict:
    """Learned shots vs the optimiser and the feature MLP on held-out targets (module docstring)."""
    net, info, tr, te = held_out_targets(reduced)
    t0 = time.perf_counter()
    mlp, mlp_hist = sn.train_mlp(tr[:8] if reduced else tr, n_shots=net.K, epochs=5 if reduced else 30)
    mlp_s = time.perf_counter() - t0
    opt_kw = dict(n_iter=15, max_rounds=1) if reduced else {}
    res = sn.compare(net, te, optimizer_kw=opt_kw, mlp=mlp, polish=POLISH)
    m = {who: _means(res, who) for who in res[0]}
    ratio = m["learned"]["objective"] / m["optimizer"]["objective"]
    speed = m["optimizer"]["seconds"] / m["learned"]["seconds"]
    speed_cpu = m["optimizer"]["cpu_s"] / m["learned"]["cpu_s"]
    per_target = [{who: {k: _r(r[who][k]) for k in _KEYS} for who in r} for r in res]
    within = sum(1 for r in res if r["learned"]["objective"] <= OBJECTIVE_RATIO_MAX * r["optimizer"]["objective"])
    held = ratio <= OBJECTIVE_RATIO_MAX and speed >= SPEEDUP_MIN
    sweep = {n: {"objective_ratio": _r(m[f"learned+polish{n}"]["objective"] / m["optimizer"]["objective"]),
                 "speedup": _r(m["optimizer"]["seconds"] / m[f"learned+polish{n}"]["seconds"], 1),
                 "ci_paddick": m[f"learned+polish{n}"]["ci_paddick"]} for n in POLISH}
    summary = (f"{len(te)} held-out targets: objective learned {m['learned']['objective']:.4g} vs optimiser "
               f"{m['optimizer']['objective']:.4g} (ratio {ratio:.3f}; MLP {m['mlp']['objective']:.4g}), "
               f"{speed:.0f}x faster in wall time ({speed_cpu:.0f}x in CPU time); CI {m['learned']['ci_paddick']:.3f} / {m['optimizer']['ci_paddick']:.3f} / "
               f"{m['mlp']['ci_paddick']:.3f}, GI {m['learned']['gi']:.2f} / {m['optimizer']['gi']:.2f} / "
               f"{m['mlp']['gi']:.2f} (learned / optimiser / MLP)")
    s = info["settings"]
    return row(
        "002", "A model trained through the differentiable dose maps the target image to a Gamma-Knife plan "
        "(learning use, eqs 3-6)",
        "Patent 002: a model trained with a dose-based loss through the differentiable dose maps segmentation/"
        "distance maps to machine parameters (no figure given); issue #21: within 10 % of the optimiser's "
        "objective at >= 20x its speed",
        {"summary": summary, "objective_ratio": _r(ratio), "speedup": _r(speed, 1),
         "speedup_cpu": _r(speed_cpu, 1), "n_within_10pct": within, "n_held_out": len(te), "learned": m["learned"], "optimizer": m["optimizer"],
         "mlp": m["mlp"], "polish_sweep": {f"times_polish_{n}": v for n, v in sweep.items()},
         "learned_polished": {f"times_polish_{n}": m[f"learned+polish{n}"] for n in POLISH}, "mlp_train_s": _r(mlp_s, 1), "mlp_loss_first_last": [_r(mlp_hist[0]), _r(mlp_hist[-1])],
         "net_params": net.n_params(), "net_train_s": info.get("train_s"),
         "net_loss_first_last": [info["loss_history"][0], info["loss_history"][-1]],
         "training": {k: s[k] for k in ("n_targets", "n_test", "set_seed", "split_seed", "epochs", "n_shots")},
         "optimizer_kw": opt_kw or "plan_gamma_knife defaults", "per_target": per_target},
        "the iterative optimiser (plan_gamma_knife) and the feature MLP (rtlab.methods.gk.learning, same training "
        "targets) on the same held-out targets; every plan normalised to 96 % coverage, objective = eq. 8",
        held,
        f"criterion: mean objective ratio learned/optimiser <= {OBJECTIVE_RATIO_MAX:g} and mean wall-time ratio "
        f">= {SPEEDUP_MIN:g}: ratio {ratio:.3f}, speed {speed:.0f}x - " + ("met" if held else "not met")
        + f"; {within}/{len(te)} targets within 10 % individually. Sweep (item 5): the network's shots with "
        "the times re-optimised (L-BFGS-B, shots fixed) for " + ", ".join(
            f"{n} it: ratio {v['objective_ratio']:.2f} at {v['speedup']:.0f}x" for n, v in sweep.items())
        + " - the gap that remains with optimal times is the shot placement")


def _one_point_problem(lam=0.02, rx=20.0):
    return PlanningProblem(pts_T=np.zeros((1, 3)), pts_O=np.zeros((0, 3)), wv_T=np.ones(1), wv_O=np.zeros(0),
                           d_T=rx, d_O=np.zeros(0), rx=rx, w_T=1.0, w_O=1.0, lam=lam,
                           bbox=np.array([[-2.0, 2.0]] * 3))


def subgradient_row(reduced: bool = False) -> dict:
    """Eq. 9's projected subgradient beside the Adam variant (module docstring)."""
    rx, lam = 20.0, 0.02
    prob = _one_point_problem(lam, rx)
    a = pk.default_model().params()[2, 0]  # Gy/min of one 16 mm sector at its focus
    T = (rx - lam * rx**2 / (2 * a)) / a
    L_star = (rx - a * T) ** 2 / rx**2 + lam * T
    _, _, h = iso.optimize_pgd(prob, np.zeros((1, 3)), np.full((1, 8, 3), 0.5), n_iter=100, lr_rel=1.0,
                               step="subgradient")
    closed_err = abs(min(h) - L_star) / L_star
    _, _, tr, te = held_out_targets(reduced)
    n_it = 20 if reduced else 40
    per = []
    ok = True
    for c in te[:2] if reduced else te[:6]:
        shots, cols = iso.initial_shots(c.grid, c.mask, max_shots=4)
        t0, _ = iso.optimize_times(c.problem, shots, max_iter=30)
        L0 = plan_loss(c.problem, shots, t0)[0]
        out = {"start": _r(L0, 5)}
        for step in ("adam", "subgradient"):
            ts = time.perf_counter()
            s, t, hist = iso.optimize_pgd(c.problem, shots, t0, n_iter=n_it, step=step)
            out[step] = _r(min(hist), 5)
            out[f"{step}_s"] = _r(time.perf_counter() - ts, 2)
            inside = bool(np.all(t >= 0) and np.all(s >= c.problem.bbox[:, 0] - 1e-9)
                          and np.all(s <= c.problem.bbox[:, 1] + 1e-9))
            out[f"{step}_feasible"] = inside
            if step == "subgradient":
                ok = ok and inside and min(hist) < L0
        per.append(out)
    mean_ratio = float(np.mean([p["subgradient"] / p["adam"] for p in per]))
    held = closed_err <= 0.005 and ok
    summary = (f"closed-form optimum reached to {100 * closed_err:.2f} %; on {len(per)} held-out targets "
               f"({n_it} iterations from the same start) subgradient/Adam loss ratio {mean_ratio:.3f}")
    return row(
        "002", "Projected subgradient descent (eq. 9) solves the shot/time problem with t >= 0",
        "Patent 002 eq. 9: theta <- proj_{t>=0}(theta - eta g), g any subgradient (no figure given)",
        {"summary": summary, "closed_form_loss": _r(L_star, 6), "closed_form_rel_err": _r(closed_err, 5),
         "subgradient_over_adam": _r(mean_ratio), "n_iter": n_it, "per_target": per},
        "the Adam-scaled variant of optimize_pgd (same start, same iterations) and the closed-form optimum of a "
        "one-point problem",
        held,
        "criterion: closed-form optimum within 0.5 %, t >= 0 and shots in the box after every run, loss lowered "
        "on every target: " + ("met" if held else "not met") + f" ({summary})")


ROWS = [("learning", learning_row), ("subgradient", subgradient_row)]


if __name__ == "__main__":  # pragma: no cover
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rid, fn in ROWS:
            print(rid, fn(reduced=True)["rtlab_figure"]["summary"])
