"""Exhaustive and greedy beam-angle searches beside the ant colony, on one shared evaluation.

Paper 003 chooses gantry angles with an ant colony scored by eq. 4,
``phi = alpha eta + beta theta + gamma objValue + lambda TNMU``
(:func:`rtlab.methods.beam_angles.select_beam_angles`). To say whether the colony finds good
sets, the same cost is minimised here over the same candidate sets by

* :func:`exhaustive_search` - every allowed set (all ``n_beams``-subsets of the candidates whose
  angles are at least ``min_separation_deg`` apart; :func:`allowed_sets` counts them), and
* :func:`greedy_search` - forward selection: add, one beam at a time, the candidate that gives
  the partial set the lowest cost (``sum_{k < n} (n_c - k)`` evaluations).

All three call one :class:`rtlab.methods.beam_angles.SetEvaluator`, which optimises each set
once (memoised); so they compare identical numbers for identical sets, and the plan quantities
(eta, theta, MU, objective) do not depend on the weights: :func:`set_table` holds them for every
evaluated set and :func:`score` re-weighs them for any ``(alpha, beta, gamma, lambda)`` without
re-optimising. The cost is that of the colony (:func:`rtlab.methods.beam_angles.reference_normalisers`:
each quantity divided by its mean over the equispaced reference sets)::

    Phi = alpha mean(eta)/eta_ref + beta mean(theta)/theta_ref + gamma f/f_ref + lambda mean(MU)/MU_ref
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import beam_angles as ba

__all__ = ["allowed_sets", "set_table", "score", "SearchResult", "exhaustive_search", "greedy_search",
           "gain"]


def _sep(cand: np.ndarray) -> np.ndarray:
    return np.abs((cand[:, None] - cand[None, :] + 180.0) % 360.0 - 180.0)


def allowed_sets(candidates, n_beams: int, min_separation_deg: float = 0.0) -> list[tuple[int, ...]]:
    """Every ``n_beams``-subset of the candidate indices whose angles are pairwise >= ``min_separation_deg``.

    Parameters
    ----------
    candidates : sequence of float
        Candidate gantry angles (deg).
    n_beams : int
    min_separation_deg : float
        Smallest allowed angle between two beams (deg, on the circle).

    Returns
    -------
    list of tuple of int
        Sorted index tuples, in lexicographic order.
    """
    cand = np.asarray(candidates, float).ravel()
    if int(n_beams) != n_beams or not 1 <= n_beams <= cand.size:
        raise ValueError(f"n_beams must be an integer in 1..{cand.size} (the number of candidates), got {n_beams!r}")
    if not min_separation_deg >= 0:
        raise ValueError(f"min_separation_deg must be >= 0 deg, got {min_separation_deg!r}")
    ok = _sep(cand) >= float(min_separation_deg) - 1e-9
    out = []
    for c in itertools.combinations(range(cand.size), int(n_beams)):
        if all(ok[i, j] for i, j in itertools.combinations(c, 2)):
            out.append(c)
    return out


def set_table(evaluator: ba.SetEvaluator, keys=None) -> pd.DataFrame:
    """The plan quantities of evaluated beam sets (no optimisation: ``keys`` must be evaluated).

    Parameters
    ----------
    evaluator : SetEvaluator
    keys : iterable of tuple, optional
        Default: every set the evaluator holds.

    Returns
    -------
    pandas.DataFrame
        ``key`` (tuple of candidate indices), ``angles`` (str, deg), ``n_beams``, ``eta``,
        ``theta``, ``mu`` (beam means), ``tnmu`` (MU per fraction) and ``objective``.
    """
    keys = list(evaluator.cache) if keys is None else [tuple(sorted(int(i) for i in k)) for k in keys]
    rows = []
    for k in keys:
        if k not in evaluator.cache:
            raise KeyError(f"beam set {k} has not been evaluated; call evaluator({k}) first")
        ev = evaluator.cache[k]
        rows.append({"key": k, "angles": " ".join(f"{a:g}" for a in ev["angles"]), "n_beams": len(k),
                     "eta": float(np.mean(ev["eta"])), "theta": float(np.mean(ev["theta"])),
                     "mu": float(np.mean(ev["mu"])), "tnmu": float(ev["tnmu"]), "objective": float(ev["objective"])})
    return pd.DataFrame(rows, columns=["key", "angles", "n_beams", "eta", "theta", "mu", "tnmu", "objective"])


def score(table: pd.DataFrame, reference: dict, weights=ba.PAPER_WEIGHTS) -> np.ndarray:
    """``Phi`` of each row of :func:`set_table` (paper 003, eq. 4 with rtlab's normalisation).

    Equals :func:`rtlab.methods.beam_angles.select_beam_angles`' cost of the same set (the mean of
    the per-beam ``phi_b``, which is linear in the beam means).
    """
    w = tuple(float(v) for v in weights)
    if len(w) != 4 or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be four non-negative numbers (alpha, beta, gamma, lambda), got {weights!r}")
    a, b, g, l = w
    return (a * table["eta"].to_numpy() / reference["eta"] + b * table["theta"].to_numpy() / reference["theta"]
            + g * table["objective"].to_numpy() / reference["objective"] + l * table["mu"].to_numpy() / reference["mu"])


def gain(cost: float, baseline: float) -> float:
    """Relative improvement ``(baseline - cost) / baseline`` (0.05 = 5 % lower cost than the baseline)."""
    if not baseline > 0:
        raise ValueError(f"baseline cost must be > 0, got {baseline!r}")
    return float((baseline - cost) / baseline)


@dataclass
class SearchResult:
    """Outcome of :func:`exhaustive_search` or :func:`greedy_search`.

    Attributes
    ----------
    best_set : tuple of int
        Candidate indices of the lowest-cost set.
    angles : list of float
        Its gantry angles (deg).
    cost : float
        Its ``Phi``.
    n_evaluations : int
        Beam sets the search optimised (partial sets included for the greedy search).
    table : pandas.DataFrame
        :func:`set_table` of the full-size sets it considered, with ``cost``, sorted by cost.
    path : list
        Greedy: the partial sets in the order built (empty for the exhaustive search).
    """

    best_set: tuple
    angles: list
    cost: float
    n_evaluations: int
    table: pd.DataFrame
    path: list


def exhaustive_search(evaluator: ba.SetEvaluator, n_beams: int, reference: dict, weights=ba.PAPER_WEIGHTS,
                      min_separation_deg: float = 0.0, progress: bool = True) -> SearchResult:
    """Evaluate every allowed set (:func:`allowed_sets`) and return the lowest ``Phi``.

    Parameters
    ----------
    evaluator : SetEvaluator
        Shared with the colony and the greedy search (memoised).
    n_beams : int
    reference : dict
        Normalisers (:func:`rtlab.methods.beam_angles.reference_normalisers`).
    weights : (alpha, beta, gamma, lambda)
    min_separation_deg : float
    progress : bool
        tqdm.auto bar over the sets.
    """
    keys = allowed_sets(evaluator.candidates, n_beams, min_separation_deg)
    if not keys:
        raise ValueError(f"no {n_beams}-beam set of {evaluator.candidates.size} candidates keeps "
                         f"{min_separation_deg:g} deg between beams; lower min_separation_deg")
    n0 = evaluator.n_evaluated
    with ba.single_thread_blas():
        for k in tqdm(keys, desc="exhaustive", disable=not progress, leave=False):
            evaluator(k)
    t = set_table(evaluator, keys)
    t["cost"] = score(t, reference, weights)
    t = t.sort_values(["cost", "angles"], ignore_index=True)
    best = tuple(t["key"][0])
    return SearchResult(best, [float(evaluator.candidates[i]) for i in best], float(t["cost"][0]),
                        evaluator.n_evaluated - n0, t, [])


def greedy_search(evaluator: ba.SetEvaluator, n_beams: int, reference: dict, weights=ba.PAPER_WEIGHTS,
                  min_separation_deg: float = 0.0) -> SearchResult:
    """Forward selection: add the candidate that gives the partial set the lowest ``Phi``, ``n_beams`` times.

    A partial set of ``k`` beams is optimised on its own (same objective, same iterations) and
    scored with the same normalisers (beam means, so sets of different size are comparable as
    a cost per beam). Deterministic (ties go to the lower candidate index).
    """
    cand = evaluator.candidates
    if int(n_beams) != n_beams or not 1 <= n_beams <= cand.size:
        raise ValueError(f"n_beams must be an integer in 1..{cand.size}, got {n_beams!r}")
    ok = _sep(cand) >= float(min_separation_deg) - 1e-9
    chosen: list[int] = []
    path, considered = [], set()
    with ba.single_thread_blas():
        for _ in range(int(n_beams)):
            options = [c for c in range(cand.size) if c not in chosen and all(ok[c, j] for j in chosen)]
            if not options:
                raise ValueError(f"the greedy search ran out of candidates {min_separation_deg:g} deg apart after "
                                 f"{len(chosen)} beams; lower min_separation_deg")
            keys = [tuple(sorted(chosen + [c])) for c in options]
            for k in keys:
                evaluator(k)
                considered.add(k)
            t = set_table(evaluator, keys)
            costs = score(t, reference, weights)
            i = int(np.argmin(costs))
            chosen = list(keys[i])
            path.append((tuple(chosen), float(costs[i])))
    full = [k for k in considered if len(k) == int(n_beams)]
    t = set_table(evaluator, full)
    t["cost"] = score(t, reference, weights)
    t = t.sort_values(["cost", "angles"], ignore_index=True)
    best = tuple(chosen)
    return SearchResult(best, [float(cand[i]) for i in best], path[-1][1], len(considered), t, path)
