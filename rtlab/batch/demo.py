"""Stand-in stages that do real numpy work, for tests, benchmarks and trying the scheduler.

A demo case is a small 3D problem: a spherical target in a ``n``-cube of 2 mm voxels, beams
that are random non-negative "influence" matrices (voxels x bixels), a standard plan from
projected-gradient least squares to the prescription, a "machine" that perturbs the plan by a
machine-dependent output factor, and QA by the real :func:`rtlab.evaluate.qa.gamma` (3 %/3 mm) of the
converted dose against the standard dose. Pass them with ``functools.partial`` to set the
amount of work, e.g. ``Stages(optimize=partial(demo_optimize, work_s=0.5))``.
"""

from __future__ import annotations

import time
import zlib
from functools import partial

import numpy as np

from ..core.geometry import Grid
from ..evaluate.qa import gamma
from .stages import Stages

__all__ = ["demo_stages", "demo_load", "demo_n_beams", "demo_influence", "demo_optimize",
           "demo_convert", "demo_qa", "noop"]


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def demo_load(case_ref, n: int = 12, n_beams: int = 3, fail_ids=()) -> dict:
    """A demo case (dict): id, grid size ``n``, target mask, beam count.

    Case ids listed in ``fail_ids`` raise ``RuntimeError`` (to exercise failure handling).
    """
    case_id = str(case_ref)
    if case_id in fail_ids:
        raise RuntimeError(f"demo_load: case {case_id!r} is marked to fail")
    c = (np.arange(n) - (n - 1) / 2) * 2.0
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    target = z ** 2 + y ** 2 + x ** 2 <= (0.3 * n * 2.0) ** 2
    return dict(id=case_id, n=n, target=target, n_beams=n_beams, rx=2.0)


def demo_n_beams(case) -> int:
    """Number of beams of a demo case."""
    return int(case["n_beams"])


def demo_influence(case, beam_index: int, n_bixels: int = 64) -> np.ndarray:
    """A random non-negative influence matrix (voxels x bixels), deterministic per (case, beam)."""
    rng = np.random.default_rng(_seed(case["id"], beam_index))
    nvox = case["n"] ** 3
    a = rng.random((nvox, n_bixels)) ** 8  # sparse-ish, non-negative
    return (a / a.sum(axis=0, keepdims=True) * 40.0).astype(np.float64)


def demo_optimize(case, influences, work_s: float = 0.0, sleep_s: float = 0.0, max_iter: int = 200) -> dict:
    """Standard plan: projected gradient on ``|A x - rx|^2`` over target voxels, ``x >= 0``.

    Iterates at least ``max_iter`` times and keeps iterating until ``work_s`` seconds of numpy
    work have passed; then sleeps ``sleep_s`` (to emulate a long task without CPU use).
    """
    A = np.hstack(influences)
    t = case["target"].ravel()
    At = A[t]
    x = np.ones(A.shape[1])
    step = 1.0 / (np.linalg.norm(At, 2) ** 2)
    t0 = time.perf_counter()
    it = 0
    while it < max_iter or time.perf_counter() - t0 < work_s:
        x = np.maximum(x - step * (At.T @ (At @ x - case["rx"])), 0.0)
        it += 1
    if sleep_s:
        time.sleep(sleep_s)
    dose = (A @ x).reshape((case["n"],) * 3)
    return dict(weights=x, dose=dose, iterations=it)


def demo_convert(case, standard, machine: str, attempt: int, bad_attempts: int = 0, sleep_s: float = 0.0) -> dict:
    """Machine-specific plan: the standard plan with a machine output factor within +-1 %.

    Attempts ``< bad_attempts`` return a plan 8 % too hot (so that QA fails and the master
    regenerates it, claim 7).
    """
    if sleep_s:
        time.sleep(sleep_s)
    factor = 1.0 + 0.02 * ((_seed(machine) % 1000) / 1000.0 - 0.5)
    if attempt < bad_attempts:
        factor *= 1.08
    return dict(weights=standard["weights"] * factor, dose=standard["dose"] * factor,
                machine=machine, attempt=int(attempt), output_factor=float(factor))


def demo_qa(case, standard, plan, machine: str) -> dict:
    """QA: gamma 3 %/3 mm (rtlab.evaluate.qa.gamma) of the converted dose; pass rate >= 95 %."""

    n = case["n"]
    r = gamma(standard["dose"], plan["dose"], Grid((n, n, n), (2.0, 2.0, 2.0)), interp_fraction=5)
    passed = bool(r.pass_rate >= 0.95)
    reasons = [] if passed else [f"gamma 3%/3mm pass rate {100 * r.pass_rate:.1f} % < 95 %"]
    return dict(passed=passed, pass_rates={"3%/3mm": r.pass_rate}, reasons=reasons)


def noop(*args, **kwargs):
    """Does nothing (scheduling-overhead measurements)."""
    return None


def demo_stages(work_s: float = 0.0, sleep_s: float = 0.0, n: int = 12, n_beams: int = 3,
                bad_attempts: int = 0, fail_ids=()) -> Stages:
    """The demo stages with the given amount of work per case (see the functions)."""

    return Stages(
        load=partial(demo_load, n=n, n_beams=n_beams, fail_ids=tuple(fail_ids)),
        n_beams=demo_n_beams,
        influence=demo_influence,
        optimize=partial(demo_optimize, work_s=work_s, sleep_s=sleep_s),
        convert=partial(demo_convert, bad_attempts=bad_attempts),
        qa=demo_qa,
    )
