"""Beam-angle selection by ant colony optimisation (paper 003, "Optimal angle combination", eq. 4).

The paper scores a fluence map by the pheromone

    phi = alpha * eta + beta * theta + gamma * objValue + lambda * TNMU          (paper 003, eq. 4)

with ``eta`` the smoothness along the leaf travel (:func:`rtlab.methods.smoothing.smoothness_eta`),
``theta`` the tongue-and-groove parameter (:func:`rtlab.methods.smoothing.tongue_groove_theta`),
``objValue`` the dose objective and ``TNMU`` the total monitor units; its experiments use
``alpha, beta, gamma, lambda = 0.2, 0.2, 0.5, 0.1``. All four are costs (lower is better).

How rtlab runs it
-----------------
* **Candidates.** Coplanar gantry angles on a regular grid (default ``n_beams * ceil(18 /
  n_beams)`` angles, so that the equispaced arrangements are candidates too). One influence
  matrix over all candidates is built once (:func:`candidate_influence`); the rows are the
  voxels that matter for the objective (targets, organs at risk and the body within
  ``margin_mm`` of a target, :func:`planning_voxels`), which keeps it small.
* **One ant = one beam set.** An ant picks ``n_beams`` candidates one after the other, with
  probability proportional to ``tau * eta_vis`` of each allowed angle (pheromone times the
  visibility ``1 / Phi`` of the angle's single-beam plan; angles closer than
  ``min_separation_deg`` to a chosen one are not allowed). Its plan is optimised on the chosen
  columns only (a few L-BFGS-B iterations, :func:`optimise_beams`, on a quadratic or
  conformity objective, :func:`default_objective`). Evaluations are memoised by beam set.
* **Normalisation (our choice; the paper does not say how the four quantities are made
  comparable).** Each quantity is divided by its mean over the *equispaced reference sets* (all
  rotations of the equispaced arrangement on the candidate grid), which are evaluated first:
  ``eta_hat = eta / eta_ref`` etc. So the reference sets score about 1 on every quantity and the
  weights are the quantities' shares of the cost. Per beam ``b`` of a plan,
  ``phi_b = alpha eta_b/eta_ref + beta theta_b/theta_ref + gamma f/f_ref + lambda MU_b/MU_ref``
  (``eta_ref``, ``theta_ref``, ``MU_ref`` per beam, ``f`` the plan's objective); the plan's cost
  is the mean of ``phi_b`` over its beams, i.e.
  ``Phi = alpha mean(eta_hat) + beta mean(theta_hat) + gamma f_hat + lambda TNMU/TNMU_ref``.
* **Pheromone update** (rank-based ant system with an elitist ant): ``tau <- (1 - rho) tau``;
  the better half of the iteration's ants deposit ``Q (n_rank - r) / n_rank / Phi`` on each of
  their angles (``deposit='all'``: every ant ``Q / phi_b``, rtlab's first version, which with no
  visibility kept returning the best equispaced set: see :func:`select_beam_angles`), and the best
  set so far deposits ``elite / Phi_best`` on each of its angles; ``tau`` is kept within ``[tau_min, tau_max]`` (as in
  the MAX-MIN ant system) so no angle is ever ruled out for good.
* ``eta`` is computed with ``dx = 1`` (per bixel, dimensionless), ``theta`` and ``TNMU`` on the
  fluence maps in MU per fraction (engine calibration, ``fractions`` default
  ``round(prescription / 2 Gy)``), ``TNMU`` as the MU lower bound of paper 003, eq. 8
  (``sum_i max_j sum_k (x_ijk - x_ij(k-1))^+``, the MU of a sweep / infinitely fast sliding
  window).

Everything is seeded (``numpy.random.default_rng(seed)``) and deterministic.

Size: about 900 lines: the candidate influence, the fixed-set optimiser, its dense
single-threaded path (:func:`dense_candidates`, :class:`DenseColumns`, :class:`single_thread_blas`),
the shared :class:`SetEvaluator` and the ant colony of paper 003 share their helpers; the searches
beside the colony (greedy, exhaustive) are in :mod:`rtlab.methods.angle_search`.
"""

from __future__ import annotations

import ctypes
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numba
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from ..dose import build_influence
from ..dose.mu import mu_per_unit_fluence
from ..evaluate import metrics as M
from ..optimize import MeanDose, Objective, SquaredOverdose, SquaredUnderdose, rows_for, solve
from ..phantoms import get_phantom
from . import sequencing as sq
from . import smoothing as sm
from .conformity import ConformityTerm

__all__ = [
    "PAPER_WEIGHTS",
    "planning_voxels",
    "candidate_influence",
    "default_objective",
    "dense_candidates",
    "DenseColumns",
    "optimise_beams",
    "SetEvaluator",
    "plan_quantities",
    "equispaced_sets",
    "reference_normalisers",
    "single_thread_blas",
    "ACOResult",
    "select_beam_angles",
    "compare_angle_sets",
    "rescore",
    "tg119_angle_study",
]

#: ``(alpha, beta, gamma, lambda)`` of paper 003, eq. 4, as used in its experiments.
PAPER_WEIGHTS = (0.2, 0.2, 0.5, 0.1)


# ----------------------------------------------------------------------------------------------
# problem set-up
# ----------------------------------------------------------------------------------------------
def planning_voxels(case, margin_mm: float = 20.0) -> np.ndarray:
    """Voxels an angle study needs: targets, organs at risk, and the body within ``margin_mm`` of a target.

    Returns a boolean mask on the CT grid (for ``build_influence(voxels=...)``).
    """

    if not margin_mm >= 0:
        raise ValueError(f"margin_mm must be >= 0 mm, got {margin_mm!r}")
    targets = [t for t in case.structures.targets if t.mask.any()]
    if not targets:
        raise ValueError("case has no non-empty target; beam-angle selection needs one")
    tmask = np.zeros(case.grid.shape, bool)
    for t in targets:
        tmask |= t.mask
    body = case.structures.body_mask().astype(bool)
    dist = ndimage.distance_transform_edt(~tmask, sampling=case.grid.spacing)
    out = tmask | (body & (dist <= margin_mm))
    for s in case.structures.values():
        if s.kind == "oar":
            out |= s.mask
    return out


def candidate_influence(case, angles, *, margin_mm: float = 15.0, cutoff_mm: float = 25.0, bixel_mm: float = 5.0,
                        machine=None, progress: bool = True):
    """One influence matrix over all candidate gantry angles (columns beam after beam).

    Parameters
    ----------
    case : rtlab.core.case.Case
    angles : sequence of float
        Candidate gantry angles (deg), couch 0, isocentre ``case.isocenter()``.
    margin_mm : float
        Body voxels within this distance of a target are rows (:func:`planning_voxels`).
    cutoff_mm : float
        Lateral cut-off of the pencil beams (mm).
    bixel_mm : float
        Bixel size (mm).
    machine : rtlab.dose.Machine, optional
    progress : bool

    Returns
    -------
    rtlab.dose.InfluenceMatrix
    """

    angles = [float(a) for a in angles]
    if len(angles) < 1:
        raise ValueError("angles is empty; pass candidate gantry angles in degrees")
    return build_influence(case, angles, machine, cutoff_mm=cutoff_mm, voxels=planning_voxels(case, margin_mm),
                           progress=progress, bixel_mm=bixel_mm)


def _oar_limit(case, s) -> float:
    rx = float(case.prescription or max(t.prescription or 0 for t in case.structures.targets))
    lims = [g.value for g in case.goals if g.structure == s.name and g.comparator in ("<=", "<")
            and g.metric.upper().startswith("D")]
    return float(min(lims)) if lims else 0.5 * rx


def default_objective(case, im, kind: str = "quadratic", nt_margin_mm: float = 5.0, nt_weight: float = 0.05):
    """A small objective over ``im``'s rows built from the case's targets, organs and goals.

    ``'quadratic'``: per target ``SquaredUnderdose(rx)`` (weight 1) and ``SquaredOverdose(1.05 rx)``
    (1); per organ at risk ``SquaredOverdose(limit)`` (0.3; ``limit`` = the smallest ``<=`` dose
    goal of the organ, else rx / 2); normal tissue further than ``nt_margin_mm`` from every target
    ``SquaredOverdose(0.8 rx)`` (0.3). ``'integral'``: the quadratic terms, with the normal-tissue
    term replaced by the mean non-target dose ``MeanDose`` (weight ``nt_weight``, Gy, linear) over
    every row outside the targets, so that every beam set pays for the dose it spreads (paper 003's
    "non-target" objective; with it the objective cannot reach 0 and the angles always matter).
    ``'conformity'``: per target a
    :class:`~rtlab.methods.conformity.ConformityTerm` (patent 000 eq. 8, steepness 20, domain all
    rows) plus ``SquaredUnderdose(rx)`` (0.01) and the organ terms (0.003).

    Returns
    -------
    rtlab.optimize.Objective
    """

    if kind not in ("quadratic", "conformity", "integral"):
        raise ValueError(f"kind must be 'quadratic', 'integral' or 'conformity', got {kind!r}")
    if not nt_weight >= 0:
        raise ValueError(f"nt_weight must be >= 0 (per Gy of mean non-target dose), got {nt_weight!r}")
    vi = im.voxel_index
    if not im.grid.is_same(case.grid):
        raise ValueError("default_objective needs an influence matrix on the CT grid (dose_grid_mm=None)")
    terms = []
    tmask = np.zeros(case.grid.shape, bool)
    targets = [t for t in case.structures.targets if t.mask.any()]
    if not targets:
        raise ValueError("case has no non-empty target")
    for t in targets:
        rx = float(t.prescription if t.prescription is not None else case.prescription)
        rows = rows_for(t.mask, vi, missing="raise")
        tmask |= t.mask
        if kind != "conformity":
            terms += [SquaredUnderdose(rows, rx, 1.0, name=f"{t.name} under"),
                      SquaredOverdose(rows, 1.05 * rx, 1.0, name=f"{t.name} over")]
        else:

            terms += [ConformityTerm(rows, rx, None, 1.0, steepness=20.0, n_rows=len(vi), name=f"{t.name} conformity"),
                      SquaredUnderdose(rows, rx, 0.01, name=f"{t.name} under")]
    w_oar = 0.003 if kind == "conformity" else 0.3
    for s in case.structures.values():
        if s.kind == "oar" and s.mask.any():
            rows = rows_for(s.mask & ~tmask, vi, missing="ignore") if (s.mask & ~tmask).any() else None
            if rows is not None:
                terms.append(SquaredOverdose(rows, _oar_limit(case, s), w_oar, name=f"{s.name} over"))
    if kind == "quadratic":
        dist = ndimage.distance_transform_edt(~tmask, sampling=case.grid.spacing)
        nt = np.zeros(case.grid.size, bool)
        nt[vi] = True
        nt = nt.reshape(case.grid.shape) & (dist > nt_margin_mm)
        if nt.any():
            rx0 = float(case.prescription or targets[0].prescription)
            terms.append(SquaredOverdose(rows_for(nt, vi, missing="ignore"), 0.8 * rx0, 0.3, name="normal tissue"))
    elif kind == "integral" and nt_weight > 0:
        nt_rows = np.flatnonzero(~tmask.ravel()[np.asarray(vi)])
        if nt_rows.size:
            terms.append(MeanDose(nt_rows, None, float(nt_weight), name="mean non-target dose"))
    return Objective(terms)


def _columns(im, beam_idx) -> np.ndarray:
    return np.concatenate([np.arange(im.beamlet_slices[b].start, im.beamlet_slices[b].stop) for b in beam_idx])


def dense_candidates(im, dtype=np.float32, max_bytes: float = 1.5e9, progress: bool = False) -> np.ndarray:
    """The whole influence matrix as one dense array (Gy per unit bixel fluence), broad part included.

    Angle searches solve many small problems on column subsets of the same matrix; on a dense
    array a column subset is a plain slice and each product a BLAS call, 20-100x faster than the
    sparse kernel on these ~40 %-full matrices. Column ``j`` equals ``im.matvec(e_j)`` (the
    narrow matrix plus the broad node path).

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
    dtype : numpy dtype
        float32 (default) or float64.
    max_bytes : float
        Refuse (ValueError) beyond this size; pass ``dense=None`` to the searches instead.
    progress : bool
        tqdm.auto bar over the broad part's unit products.

    Returns
    -------
    ndarray (n_rows, n_beamlets)
    """

    n, m = im.shape
    nbytes = float(n) * m * np.dtype(dtype).itemsize
    if nbytes > max_bytes:
        raise ValueError(f"the dense candidate matrix would take {nbytes / 1e9:.2f} GB (> max_bytes "
                         f"{max_bytes / 1e9:.2f} GB); use fewer candidates, coarser voxels, or dense=None")
    D = np.asarray(im.matrix.toarray(), dtype=dtype)
    if im.broad is not None:
        # one beam at a time: a unit weight only reaches its own beam's node groups
        for b in tqdm(range(len(im.beams)), desc="dense broad part", disable=not progress, leave=False):
            sl = im.beamlet_slices[b]
            sub = im.select_beams([b]).broad
            e = np.zeros(sl.stop - sl.start)
            for j in range(e.size):
                e[j] = 1.0
                D[:, sl.start + j] += sub.matvec(e).astype(dtype)
                e[j] = 0.0
    return D


_BLAS_SET = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
             "openblas_set_num_threads")
_BLAS_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
             "openblas_get_num_threads")


@functools.lru_cache(maxsize=1)
def _openblas_handles() -> list:
    """(set, get) function pairs of every OpenBLAS this process has loaded (Linux; else none)."""
    out = []
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({ln.split()[-1] for ln in fh
                            if len(ln.split()) >= 6 and "openblas" in ln.split()[-1].lower() and ".so" in ln.split()[-1]})
    except OSError:
        return out
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        fs = next((getattr(lib, n) for n in _BLAS_SET if hasattr(lib, n)), None)
        fg = next((getattr(lib, n) for n in _BLAS_GET if hasattr(lib, n)), None)
        if fs is not None and fg is not None:
            fs.argtypes, fs.restype, fg.restype = [ctypes.c_int], None, ctypes.c_int
            out.append((fs, fg))
    return out


class single_thread_blas:
    """Context manager: OpenBLAS (numpy's and scipy's) on one thread inside, restored after.

    The angle searches solve hundreds of small problems; L-BFGS-B's BLAS calls on ~1000
    variables take ~0.2 ms on one thread but ~10 ms with two threads on a loaded 2-core
    machine (thread wake-up and contention). A no-op where no OpenBLAS is found.
    """

    def __enter__(self):
        self._h = _openblas_handles()
        self._old = [fg() for _, fg in self._h]
        for fs, _ in self._h:
            fs(1)
        return self

    def __exit__(self, *exc):
        for (fs, _), n in zip(self._h, self._old):
            fs(max(1, int(n)))
        return False


@numba.njit(cache=True)
def _dense_matvec(A, x, out):  # pragma: no cover - numba (numpy reference: A @ x)
    n, m = A.shape
    for i in range(n):
        s = 0.0
        for j in range(m):
            s += A[i, j] * x[j]
        out[i] = s


@numba.njit(cache=True)
def _dense_rmatvec(A, g, out):  # pragma: no cover - numba (numpy reference: A.T @ g)
    n, m = A.shape
    for j in range(m):
        out[j] = 0.0
    for i in range(n):
        gi = g[i]
        if gi != 0.0:
            for j in range(m):
                out[j] += A[i, j] * gi


class DenseColumns:
    """A column block of :func:`dense_candidates` as a single-threaded linear operator.

    ``matvec(x) = A x`` and ``rmatvec(g) = A^T g`` in float64 (numba loops; rows with ``g_i = 0``
    are skipped, which the one-sided dose terms make common). Single-threaded on purpose: the
    searches solve hundreds of small problems, where a multi-threaded BLAS on a shared machine
    costs more in thread start-up and contention than it saves.
    """

    def __init__(self, A):
        A = np.ascontiguousarray(A)
        if A.ndim != 2 or A.dtype not in (np.float32, np.float64):
            raise ValueError(f"A must be a 2-D float32/float64 array, got {A.dtype} {A.shape}")
        self.A = A
        self.shape = A.shape

    def matvec(self, x) -> np.ndarray:
        out = np.empty(self.shape[0])
        _dense_matvec(self.A, np.ascontiguousarray(x, np.float64), out)
        return out

    def rmatvec(self, g) -> np.ndarray:
        out = np.empty(self.shape[1])
        _dense_rmatvec(self.A, np.ascontiguousarray(g, np.float64), out)
        return out


def optimise_beams(im, objective, beam_idx=None, *, max_iter: int = 30, x0=None, csc=None, callback=None,
                   dense=None, method: str = "lbfgsb"):
    """Quick fluence optimisation of a subset of ``im``'s beams (L-BFGS-B, ``x >= 0``).

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
    objective : rtlab.optimize.Objective
    beam_idx : sequence of int, optional
        Beams (indices into ``im.beams``) to use; default all.
    max_iter : int
        L-BFGS-B iterations.
    x0 : ndarray, optional
        Start on the chosen columns; default uniform weights giving the first target term's
        prescription as mean target dose (a preliminary open-field plan).
    csc : optional
        Ignored (kept for existing calls): :meth:`rtlab.dose.InfluenceMatrix.select_beams` caches
        the column form on ``im``.
    dense : ndarray, optional
        :func:`dense_candidates` of ``im``: the chosen columns are sliced from it (same dose,
        much faster on small problems) instead of :meth:`~rtlab.dose.InfluenceMatrix.select_beams`.
    method : {'lbfgsb', 'pg'}
        Solver (:func:`rtlab.optimize.solve`): L-BFGS-B, or projected gradient with
        Barzilai-Borwein steps (no BLAS-threaded work; the angle searches' default).

    Returns
    -------
    x : ndarray (n_beamlets,)
        Full-length weights (zero on the beams not used).
    result : rtlab.optimize.OptimizationResult
    """

    beam_idx = list(range(len(im.beams))) if beam_idx is None else [int(b) for b in beam_idx]
    if not beam_idx:
        raise ValueError("beam_idx is empty; choose at least one beam")
    if min(beam_idx) < 0 or max(beam_idx) >= len(im.beams):
        raise ValueError(f"beam_idx must index im.beams (0..{len(im.beams) - 1}), got {beam_idx}")
    cols = _columns(im, beam_idx)
    # the chosen beams' engine (narrow matrix and broad node path; columns cached on im)
    if dense is not None:
        if dense.shape != im.shape:
            raise ValueError(f"dense has shape {dense.shape}, im has {im.shape}; pass dense_candidates(im)")
        A = DenseColumns(dense[:, cols])
    else:
        A = im.select_beams(beam_idx).operator()
    if x0 is None:
        t = next((t for t in objective.dose_terms if t.dose_level and t.rows is not None), None)
        d1 = np.asarray(A.matvec(np.ones(A.shape[1])), np.float64)
        if t is not None:
            ref = float(d1[t.rows].mean())
            level = t.dose_level
        else:
            ref, level = float(d1.max()), 1.0
        x0 = np.full(A.shape[1], level / ref if ref > 0 else 1.0)
    res = solve(A, objective, x0, method=method, max_iter=max_iter, callback=callback)
    x = np.zeros(im.shape[1])
    x[cols] = res.x
    return x, res


def plan_quantities(im, x, beam_idx, fractions: int = 1) -> dict:
    """Per-beam ``eta``, ``theta`` and field MU (lower bound) of a plan (paper 003, eqs 4 and 8).

    Fluence maps are in MU per fraction (engine calibration).

    Returns
    -------
    dict
        ``eta``, ``theta``, ``mu`` (arrays over ``beam_idx``) and ``tnmu`` (MU per fraction).
    """

    k = mu_per_unit_fluence(im.machine) / int(fractions)
    eta, theta, mu = [], [], []
    for b in beam_idx:
        beam, sl = im.beams[b], im.beamlet_slices[b]
        m = beam.bixels.to_map(x[sl]) * k
        if m.max() <= 0:
            eta.append(0.0), theta.append(0.0), mu.append(0.0)
            continue
        eta.append(sm.smoothness_eta(m, dx=1.0))
        theta.append(sm.tongue_groove_theta(m))
        mu.append(sq.field_mu_lower_bound(m))
    mu = np.array(mu)
    return {"eta": np.array(eta), "theta": np.array(theta), "mu": mu, "tnmu": float(mu.sum())}


class SetEvaluator:
    """Optimise and measure a beam set once (memoised): the evaluation every angle search shares.

    ``evaluator(subset)`` returns ``(key, ev)`` with ``key`` the sorted tuple of candidate indices
    and ``ev`` a dict: ``eta``, ``theta``, ``mu`` (per beam), ``tnmu`` (:func:`plan_quantities`),
    ``objective`` (the dose objective after :func:`optimise_beams` with ``max_iter``
    iterations from the uniform start), ``x`` (full-length weights) and ``angles``. The ant
    colony, the greedy and the exhaustive searches of :mod:`rtlab.methods.angle_search` call
    the same evaluator, so they compare the same numbers for the same set.

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
        Candidate matrix (:func:`candidate_influence`).
    objective : rtlab.optimize.Objective
        Over ``im``'s rows (:func:`default_objective`).
    max_iter : int
        L-BFGS-B iterations per set.
    fractions : int
        For MU per fraction.
    dense : ndarray, 'auto' or None
        :func:`dense_candidates` of ``im`` (``'auto'``: build it when it takes at most 1.5 GB).
    keep_x : bool
        Keep each set's weights (``ev['x']``; needed for doses, 8 bytes x n_beamlets per set).
    """

    def __init__(self, im, objective, *, max_iter: int = 20, fractions: int = 1, dense="auto", keep_x: bool = True):
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
        if int(fractions) < 1:
            raise ValueError(f"fractions must be >= 1, got {fractions!r}")
        self.im, self.objective = im, objective
        self.max_iter, self.fractions, self.keep_x = int(max_iter), int(fractions), bool(keep_x)
        if isinstance(dense, str):
            if dense != "auto":
                raise ValueError(f"dense must be an array, 'auto' or None, got {dense!r}")
            try:
                dense = dense_candidates(im)
            except ValueError:
                dense = None
        self.dense = dense
        self.candidates = np.array([b.gantry for b in im.beams], float)
        self.cache: dict = {}

    @property
    def n_evaluated(self) -> int:
        """Distinct beam sets optimised so far."""
        return len(self.cache)

    def __call__(self, subset):
        key = tuple(sorted(int(i) for i in subset))
        if len(set(key)) != len(key) or not key or key[0] < 0 or key[-1] >= self.candidates.size:
            raise ValueError(f"a beam set must hold distinct candidate indices 0..{self.candidates.size - 1}, got {subset}")
        if key not in self.cache:
            with single_thread_blas():
                x, res = optimise_beams(self.im, self.objective, key, max_iter=self.max_iter, dense=self.dense)
            ev = plan_quantities(self.im, x, key, self.fractions)
            ev.update({"objective": float(res.objective), "angles": [float(self.candidates[i]) for i in key]})
            if self.keep_x:
                ev["x"] = x
            self.cache[key] = ev
        return key, self.cache[key]


def equispaced_sets(angles, n_beams: int) -> list[tuple[int, ...]]:
    """Every rotation of the ``n_beams`` equispaced arrangement whose angles are all candidates.

    Returns tuples of candidate indices (sorted), one per start angle in ``[0, 360 / n_beams)``.
    """
    a = np.mod(np.asarray(angles, float), 360.0)
    out = []
    step = 360.0 / n_beams
    for i, start in enumerate(a):
        if start >= step - 1e-6:
            continue
        want = np.mod(start + step * np.arange(n_beams), 360.0)
        idx = []
        for w in want:
            d = np.abs((a - w + 180.0) % 360.0 - 180.0)
            j = int(np.argmin(d))
            if d[j] > 1e-6:
                break
            idx.append(j)
        else:
            out.append(tuple(sorted(idx)))
    return sorted(set(out))


# ----------------------------------------------------------------------------------------------
# ant colony
# ----------------------------------------------------------------------------------------------
@dataclass
class ACOResult:
    """Outcome of :func:`select_beam_angles`.

    Attributes
    ----------
    angles : list of float
        Best beam set found (deg, ascending).
    cost : float
        Its cost ``Phi`` (1 ~ the equispaced reference).
    candidates : ndarray
        Candidate angles (deg).
    weights : tuple
        ``(alpha, beta, gamma, lambda)``.
    reference : dict
        Normalisers ``eta``, ``theta``, ``mu`` (per beam), ``objective`` and ``tnmu`` (plan).
    history : pandas.DataFrame
        One row per iteration: ``iteration``, ``best_cost`` (so far), ``iteration_best``,
        ``iteration_mean``, ``best_angles``, ``n_evaluations``.
    pheromone : ndarray (n_iter + 1, n_candidates)
        ``tau`` after each iteration (row 0: after the reference deposit).
    evaluations : dict
        Beam set (tuple of candidate indices) -> dict of its quantities, cost and weights ``x``.
    equispaced : list of tuple
        The reference sets (candidate indices).
    im : InfluenceMatrix
        The candidate influence matrix (reuse it for further plans).
    objective : Objective
    fractions : int
    time_s : float
    """

    angles: list
    cost: float
    candidates: np.ndarray
    weights: tuple
    reference: dict
    history: object
    pheromone: np.ndarray
    evaluations: dict
    equispaced: list
    im: object
    objective: object
    fractions: int
    time_s: float = 0.0
    best_set: tuple = field(default=())

    def __repr__(self) -> str:
        return (f"ACOResult(angles={[round(a, 1) for a in self.angles]}, cost={self.cost:.4f}, "
                f"evaluations={len(self.evaluations)}, time={self.time_s:.1f} s)")


def reference_normalisers(evaluations) -> dict:
    """The colony's normalisers: each quantity's mean over the equispaced reference sets' evaluations.

    Returns ``eta``, ``theta``, ``mu`` (per-beam means), ``objective`` and ``tnmu`` (``mu``
    times the beams per set); a quantity that is 0 on every reference set gets 1.
    """
    evs = list(evaluations)
    if not evs:
        raise ValueError("reference_normalisers needs at least one evaluated reference set")
    ref = {
        "eta": float(np.mean([np.mean(e["eta"]) for e in evs])) or 1.0,
        "theta": float(np.mean([np.mean(e["theta"]) for e in evs])) or 1.0,
        "mu": float(np.mean([np.mean(e["mu"]) for e in evs])) or 1.0,
        "objective": float(np.mean([e["objective"] for e in evs])) or 1.0,
    }
    ref["tnmu"] = ref["mu"] * len(evs[0]["mu"])
    return ref


def _cost_parts(ev: dict, ref: dict, weights) -> tuple[float, np.ndarray]:
    a, b, g, l = weights
    phi_b = (a * ev["eta"] / ref["eta"] + b * ev["theta"] / ref["theta"] + g * ev["objective"] / ref["objective"]
             + l * ev["mu"] / ref["mu"])
    return float(phi_b.mean()), phi_b


def select_beam_angles(case, n_beams: int = 5, candidates=None, *, weights=PAPER_WEIGHTS, n_ants: int = 5,
                       n_iter: int = 4, rho: float = 0.3, q: float = 1.0, elite: float = 2.0,
                       tau_bounds=(0.2, 5.0), min_separation_deg: float = 20.0, objective="quadratic",
                       max_iter: int = 20, fractions: int | None = None, seed: int = 0, im=None,
                       margin_mm: float = 15.0, cutoff_mm: float = 25.0, progress: bool = True,
                       callback: Callable | None = None, evaluator: SetEvaluator | None = None,
                       dense="auto", deposit: str = "rank", reference_deposit: bool = True,
                       heuristic: float = 1.0) -> ACOResult:
    """Choose ``n_beams`` coplanar gantry angles by ant colony optimisation (paper 003, eq. 4).

    Parameters
    ----------
    case : rtlab.core.case.Case
    n_beams : int
        Beams per plan.
    candidates : sequence of float or int, optional
        Candidate angles (deg), or their number on a regular grid; default
        ``n_beams * ceil(18 / n_beams)`` equispaced angles from 0.
    weights : (alpha, beta, gamma, lambda)
        Weights of eta, theta, objValue and TNMU (paper: 0.2, 0.2, 0.5, 0.1).
    n_ants, n_iter : int
        Ants per iteration and iterations.
    rho : float
        Evaporation rate in (0, 1).
    q, elite : float
        Deposit scale of every ant (``q / phi_b`` per beam) and of the best set (``elite / Phi``).
    tau_bounds : (float, float)
        Pheromone limits (initial pheromone 1).
    min_separation_deg : float
        Smallest angle between two beams of a set.
    objective : {'quadratic', 'conformity'} or Objective
        Dose objective over the candidate matrix's rows (:func:`default_objective`).
    max_iter : int
        L-BFGS-B iterations per ant.
    fractions : int, optional
        For MU per fraction; default ``round(prescription / 2 Gy)``.
    seed : int
        Random seed: the same seed gives the same result.
    im : InfluenceMatrix, optional
        A prebuilt candidate matrix (its beams' gantry angles are the candidates).
    margin_mm, cutoff_mm : float
        Passed to :func:`candidate_influence`.
    progress : bool
        tqdm.auto bar over iterations.
    callback : callable, optional
        ``callback(record)`` after each iteration with the history row (a dict); returning
        ``True`` stops early.
    evaluator : SetEvaluator, optional
        Share the optimised beam sets with other searches (its ``im``, objective, ``max_iter``
        and ``fractions`` are used; ``im``, ``objective``, ``max_iter`` and ``fractions`` here
        are then ignored).
    dense : 'auto', ndarray or None
        Dense candidate matrix for the per-set optimisations (:class:`SetEvaluator`).
    deposit : {'rank', 'all'}
        ``'rank'`` (default): the better half of each iteration's ants deposit, weighted by rank
        (``q (n_rank - r) / n_rank / Phi`` per angle; rank-based ant system); ``'all'``: every ant
        deposits ``q / phi_b / n_ants`` (rtlab's first version).
    reference_deposit : bool
        Let the equispaced reference sets deposit pheromone and start as the best-so-far set.
    heuristic : float
        Exponent ``b`` of the visibility in the transition rule ``p ~ tau * eta_vis^b``, with
        ``eta_vis = 1 / Phi`` of each candidate's single-beam plan (``n_candidates`` extra
        evaluations); 0 switches it off (rtlab's first version).

    Returns
    -------
    ACOResult
    """

    t_start = time.perf_counter()
    if int(n_beams) != n_beams or n_beams < 1:
        raise ValueError(f"n_beams must be a positive integer, got {n_beams!r}")
    n_beams = int(n_beams)
    w = tuple(float(v) for v in weights)
    if len(w) != 4 or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be four non-negative numbers (alpha, beta, gamma, lambda), got {weights!r}")
    if deposit not in ("all", "rank"):
        raise ValueError(f"deposit must be 'all' or 'rank', got {deposit!r}")
    if not heuristic >= 0:
        raise ValueError(f"heuristic (exponent of the single-beam visibility) must be >= 0, got {heuristic!r}")
    if not 0 < rho < 1:
        raise ValueError(f"rho (evaporation) must lie in (0, 1), got {rho!r}")
    if int(n_ants) < 1 or int(n_iter) < 1:
        raise ValueError("n_ants and n_iter must be >= 1")
    tmin, tmax = (float(v) for v in tau_bounds)
    if not 0 < tmin <= 1 <= tmax:
        raise ValueError(f"tau_bounds must satisfy 0 < tau_min <= 1 <= tau_max, got {tau_bounds!r}")
    if evaluator is not None:
        im, objective, fractions = evaluator.im, evaluator.objective, evaluator.fractions
    if im is None:
        if candidates is None:
            candidates = n_beams * math.ceil(18 / n_beams)
        if np.isscalar(candidates):
            nc = int(candidates)
            if nc < n_beams:
                raise ValueError(f"need at least n_beams={n_beams} candidates, got {nc}")
            candidates = np.arange(nc) * 360.0 / nc
        im = candidate_influence(case, candidates, margin_mm=margin_mm, cutoff_mm=cutoff_mm, progress=progress)
    cand = np.array([b.gantry for b in im.beams], float)
    nc = cand.size
    if nc < n_beams:
        raise ValueError(f"need at least n_beams={n_beams} candidates, the matrix has {nc} beams")
    if fractions is None:
        rx = float(case.prescription or max(t.prescription or 0 for t in case.structures.targets))
        fractions = max(1, int(round(rx / 2.0)))
    obj = default_objective(case, im, objective) if isinstance(objective, str) else objective
    if evaluator is None:
        evaluator = SetEvaluator(im, obj, max_iter=max_iter, fractions=fractions, dense=dense)
    evaluations: dict = {}

    def evaluate(subset):
        key, ev = evaluator(subset)
        if key not in evaluations:
            evaluations[key] = dict(ev)
        return key, evaluations[key]

    refs = equispaced_sets(cand, n_beams)
    if not refs:
        raise ValueError(f"no equispaced {n_beams}-beam arrangement lies on the candidate angles; use "
                         f"{n_beams * math.ceil(18 / n_beams)} candidates (a multiple of n_beams)")
    ref = reference_normalisers([evaluate(r)[1] for r in refs])
    for key, ev in evaluations.items():
        ev["cost"], ev["phi"] = _cost_parts(ev, ref, w)

    rng = np.random.default_rng(seed)
    tau = np.ones(nc)
    sep = np.abs((cand[:, None] - cand[None, :] + 180.0) % 360.0 - 180.0)
    ref_best = min(refs, key=lambda k: evaluations[k]["cost"])
    best_key = ref_best if reference_deposit else None
    if reference_deposit:
        for key in refs:  # the references seed the pheromone like one iteration of ants
            ev = evaluations[key]
            tau[list(key)] += q / np.maximum(ev["phi"], 1e-12) / len(refs)
    np.clip(tau, tmin, tmax, out=tau)
    eta_h = np.ones(nc)
    if heuristic > 0:  # visibility of each angle: 1 / cost of its single-beam plan
        single = []
        for i in range(nc):
            k1, e1 = evaluator((i,))
            single.append(_cost_parts(e1, ref, w)[0])
        eta_h = (1.0 / np.maximum(np.array(single), 1e-12)) ** float(heuristic)
    n_rank = max(1, int(n_ants) // 2)
    taus = [tau.copy()]
    rows = []
    bar = None
    if progress:

        bar = tqdm(total=int(n_iter), desc="ant colony", leave=False)
    try:
        for it in range(1, int(n_iter) + 1):
            costs, keys = [], []
            for _ in range(int(n_ants)):
                chosen: list[int] = []
                for _k in range(n_beams):
                    allowed = np.ones(nc, bool)
                    allowed[chosen] = False
                    if chosen:
                        ok = allowed & (sep[:, chosen].min(axis=1) >= min_separation_deg - 1e-9)
                        allowed = ok if ok.any() else allowed
                    p = np.where(allowed, tau * eta_h, 0.0)
                    chosen.append(int(rng.choice(nc, p=p / p.sum())))
                key, ev = evaluate(chosen)
                if "cost" not in ev:
                    ev["cost"], ev["phi"] = _cost_parts(ev, ref, w)
                costs.append(ev["cost"])
                keys.append(key)
            i_best = int(np.argmin(costs))
            if best_key is None or costs[i_best] < evaluations[best_key]["cost"]:
                best_key = keys[i_best]
            tau *= 1.0 - rho
            if deposit == "all":
                for key in keys:
                    tau[list(key)] += q / np.maximum(evaluations[key]["phi"], 1e-12) / int(n_ants)
            else:  # rank-based ant system: the n_ants // 2 best ants, weights n_rank, n_rank - 1, ...
                order = np.argsort(costs, kind="stable")[:n_rank]
                for r, i in enumerate(order):
                    tau[list(keys[i])] += q * (n_rank - r) / n_rank / max(costs[i], 1e-12) / n_beams
            tau[list(best_key)] += elite / evaluations[best_key]["cost"] / n_beams
            np.clip(tau, tmin, tmax, out=tau)
            taus.append(tau.copy())
            rec = {"iteration": it, "best_cost": evaluations[best_key]["cost"], "iteration_best": float(costs[i_best]),
                   "iteration_mean": float(np.mean(costs)), "best_angles": [float(cand[i]) for i in best_key],
                   "n_evaluations": len(evaluations) + (nc if heuristic > 0 else 0)}
            rows.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{rec['best_cost']:.4f}", refresh=False)
            if callback is not None and callback(rec):
                break
    finally:
        if bar is not None:
            bar.close()
    if evaluations[ref_best]["cost"] < evaluations[best_key]["cost"]:
        best_key = ref_best  # never return worse than the best reference set
    best = evaluations[best_key]
    return ACOResult([float(cand[i]) for i in best_key], float(best["cost"]), cand, w, ref, pd.DataFrame(rows),
                     np.array(taus), evaluations, refs, im, obj, int(fractions), time.perf_counter() - t_start,
                     best_key)


def rescore(result: ACOResult, weights=PAPER_WEIGHTS):
    """Re-weigh every beam set ``result`` evaluated with other ``(alpha, beta, gamma, lambda)``.

    No re-optimisation: the stored eta, theta, objective and MU are combined again with the same
    reference normalisation. Returns a pandas DataFrame sorted by cost (``angles``, ``cost``,
    ``equispaced``).
    """

    w = tuple(float(v) for v in weights)
    if len(w) != 4 or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"weights must be four non-negative numbers (alpha, beta, gamma, lambda), got {weights!r}")
    rows = [{"angles": " ".join(f"{a:g}" for a in ev["angles"]), "cost": _cost_parts(ev, result.reference, w)[0],
             "equispaced": key in result.equispaced} for key, ev in result.evaluations.items()]
    return pd.DataFrame(rows).sort_values(["cost", "angles"], ignore_index=True)


def compare_angle_sets(case, result: ACOResult):
    """ACO beam set vs every equispaced reference set: objective, TNMU, eta, theta, CI, D95, cost.

    Returns
    -------
    pandas.DataFrame
        One row per set (``set``: ``'ACO'`` or ``'equispaced@<start>'``), columns ``angles``,
        ``objective``, ``tnmu`` (MU per fraction, eq. 8 lower bound), ``eta``, ``theta`` (beam means),
        ``ci_paddick`` and ``d95`` (Gy) of the first target, ``cost`` (``Phi``).
    """

    im = result.im
    target = next(t for t in case.structures.targets if t.mask.any())
    rx = float(target.prescription if target.prescription is not None else case.prescription)
    body = next((s for s in case.structures.values() if s.kind == "body"), None)
    sets = [("ACO", result.best_set)] + [(f"equispaced@{result.candidates[k[0]]:g}", k) for k in result.equispaced]
    rows = []
    for name, key in sets:
        ev = result.evaluations[key]
        dose = im.dose(ev["x"], on="ct")
        rows.append({
            "set": name, "angles": " ".join(f"{a:g}" for a in ev["angles"]), "objective": ev["objective"],
            "tnmu": ev["tnmu"], "eta": float(ev["eta"].mean()), "theta": float(ev["theta"].mean()),
            "ci_paddick": float(M.paddick_ci(dose, target, rx=rx, body=body)),
            "d95": float(M.dose_at_volume(dose, target, pct=95)), "cost": ev["cost"],
        })
    return pd.DataFrame(rows)


def tg119_angle_study(phantoms: Sequence[str] = ("tg119_cshape_easy", "tg119_headneck"), spacing: float = 5.0,
                      n_beams: int = 5, seed: int = 0, progress: bool = True, **aco_kwargs):
    """Paper 003's Tables 2-3 experiment on TG-119 phantoms: ACO angles vs equispaced beams.

    For each phantom (at ``spacing`` mm voxels) runs :func:`select_beam_angles` and
    :func:`compare_angle_sets`, and adds the relative change of the ACO set against the mean and
    the worst equispaced set.

    Returns
    -------
    pandas.DataFrame
        :func:`compare_angle_sets` rows with a ``phantom`` column, plus ``objective_vs_mean`` and
        ``tnmu_vs_mean`` (ratio to the equispaced mean).
    """

    frames = []
    for name in phantoms:
        case = get_phantom(name, spacing=spacing)
        res = select_beam_angles(case, n_beams, seed=seed, progress=progress, **aco_kwargs)
        df = compare_angle_sets(case, res)
        eq = df[df["set"] != "ACO"]
        df["objective_vs_mean"] = df["objective"] / eq["objective"].mean()
        df["tnmu_vs_mean"] = df["tnmu"] / eq["tnmu"].mean()
        df.insert(0, "phantom", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
