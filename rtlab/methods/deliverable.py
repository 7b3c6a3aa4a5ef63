"""Deliverable dose: sequence an optimised plan on an MLC and recompute its dose (paper 003, sec. 3).

An optimiser returns beamlet weights ``x`` (unit fluence per bixel, the columns of an
:class:`rtlab.dose.InfluenceMatrix`). What a linac delivers is what an MLC sequence of those
fluence maps delivers. :func:`sequence_plan` takes the plan the whole way:

1. **Fluence maps.** Per beam, the weights are scattered onto the beam's bixel grid
   (:meth:`rtlab.core.beams.BixelGrid.to_map`): rows are the beam's-eye-view ``v`` axis (across the
   leaves; the gantry axis for a coplanar beam), columns the ``u`` axis (along the leaf
   travel), exactly the ``(n_rows, n_cols)`` convention of :mod:`rtlab.methods.sequencing`.
2. **Monitor units.** The engine's calibration (:func:`rtlab.dose.mu_per_unit_fluence`: 1 MU =
   1 cGy at d_max, 10 x 10 cm, SSD 100 cm) converts a weight to MU for the whole course; dividing
   by ``fractions`` gives MU per fraction, which is what the sequencer and the leaf speed see.
3. **Leaf rows.** Rows are resampled onto the MLC's leaf pairs
   (:func:`~rtlab.methods.sequencing.fluence_to_leaf_rows`: each leaf gets the area-weighted mean
   of the bixel rows it covers). ``leaf_alignment='grid'`` (default) places a leaf boundary on the
   first bixel edge, as a planning system does when it lays its fluence grid on the leaves (with
   equal leaf and bixel widths the rows map one to one); ``'isocentre'`` keeps the MLC's own
   geometry (central axis on a leaf boundary for an even number of pairs), so a bixel grid
   centred on the axis (rtlab's, as matRad's) straddles two leaves and the sequencer sees the
   rows averaged in pairs.
4. **Sequencing.** ``method='sliding'`` (dynamic MLC,
   :func:`~rtlab.methods.sequencing.sliding_window`; delivers the leaf-row map exactly) or
   ``'step'`` (step-and-shoot, :func:`~rtlab.methods.sequencing.step_and_shoot`; delivers the map
   quantised to multiples of ``step_mu``), honouring the MLC's minimum gap, interdigitation and
   field limits. Field MU ``MU_i = max_j I_T(j, n)`` and ``TNMU = sum_i MU_i`` (paper 003).
5. **Back to the bixels.** The delivered leaf-row fluence is mapped back with the same overlap
   weights (a leaf wider than a bixel delivers one value across its width; the bixel's weight is
   the mean fluence over its area), converted back to weights, and the influence matrix gives the
   deliverable dose. Fluence that lands on bixels without a column (outside the beam's bixel
   mask) is dropped and reported as ``outside_mu``.

The deliverable dose differs from the optimised one only through step 3 (leaf-row averaging) and
step 4's quantisation: with equal widths and grid alignment a sliding-window plan reproduces the
optimised dose exactly and a step-and-shoot plan within ``|A (x' - x)|_i <= (step / 2) sum_j A_ij``
per voxel (``step`` in weight units), which the tests check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core.mlc import MLC, get_mlc
from ..dose.mu import mu_per_unit_fluence
from ..evaluate import metrics as M
from . import sequencing as sq

__all__ = ["BeamDelivery", "DeliverableResult", "sequence_plan", "beam_fluence_maps", "METHODS"]

#: Accepted values of ``method`` in :func:`sequence_plan`.
METHODS = ("sliding", "step")


def beam_fluence_maps(im, x) -> list[np.ndarray]:
    """Per-beam fluence maps ``(n_rows v, n_cols u)`` of beamlet weights ``x`` on ``im``'s bixel grids.

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
    x : ndarray (n_beamlets,)
        Beamlet weights (unit fluence per bixel).
    """
    x = _check_weights(im, x)
    return [b.bixels.to_map(x[sl]) for b, sl in zip(im.beams, im.beamlet_slices)]


def _check_weights(im, x) -> np.ndarray:
    if not hasattr(im, "beamlet_slices") or not hasattr(im, "beams"):
        raise TypeError(f"im must be an rtlab.dose.InfluenceMatrix (from build_influence), got {type(im).__name__}")
    w = np.asarray(x, dtype=float).ravel()
    n = im.shape[1]
    if w.size != n:
        raise ValueError(f"x has {w.size} entries but the influence matrix has {n} beamlets; pass the optimised weights")
    if not np.all(np.isfinite(w)):
        raise ValueError("x contains NaN or inf; pass finite beamlet weights")
    if np.any(w < 0):
        raise ValueError(f"x has negative weights (min {w.min():.3g}); beamlet weights must be >= 0")
    return w


@dataclass
class BeamDelivery:
    """Sequencing of one beam.

    Attributes
    ----------
    gantry : float
        Gantry angle (deg).
    sequence : rtlab.methods.sequencing.Sequence
        The sequencer's result on the leaf rows (MU per fraction).
    fluence_mu : ndarray (n_rows, n_cols)
        Optimised fluence on the bixel grid, MU per fraction.
    delivered_mu : ndarray (n_rows, n_cols)
        Delivered fluence mapped back to the bixel grid, MU per fraction.
    leaf_edges : ndarray
        y edges (mm, isocentre plane, BEV v) of the leaf pairs used.
    outside_mu : float
        Delivered fluence (MU summed over bixels) that fell on bixels outside the beam's mask.
    """

    gantry: float
    sequence: sq.Sequence
    fluence_mu: np.ndarray
    delivered_mu: np.ndarray
    leaf_edges: np.ndarray
    outside_mu: float = 0.0

    @property
    def mu(self) -> float:
        """Field MU per fraction (``max_j I_T(j, n)``; sum of segment MU for step-and-shoot)."""
        return float(self.sequence.mu)

    @property
    def n_segments(self) -> int:
        """Static segments (step-and-shoot) or control points of the dynamic delivery (sliding)."""
        s = self.sequence
        if s.method != "sliding":
            return s.n_segments
        mu = np.unique(np.round(np.r_[0.0, s.lead.ravel(), s.trail.ravel()], 9))
        return int(mu.size)


@dataclass
class DeliverableResult:
    """Outcome of :func:`sequence_plan`.

    Attributes
    ----------
    method : str
        ``'sliding'`` or ``'step'``.
    mlc : MLC
    fractions : int
        MU are per fraction; ``mu_per_unit`` converts a weight to MU for the whole course.
    mu_per_unit : float
        MU per unit beamlet weight (whole course), from the engine's calibration.
    beams : list of BeamDelivery
    x_optimised, x_delivered : ndarray (n_beamlets,)
        Beamlet weights before and after sequencing.
    dose : ndarray (z, y, x)
        Deliverable dose (Gy) on the CT grid (``on`` of :func:`sequence_plan`).
    dose_optimised : ndarray (z, y, x)
        Dose of the optimised weights on the same grid.
    grid : rtlab.core.geometry.Grid
        The grid of ``dose``.
    timings : dict
        ``sequence_s`` per beam (list) and ``dose_s``.
    leaf_alignment : str
        ``'grid'`` or ``'isocentre'`` (:func:`sequence_plan`); an RT Plan export needs the leaves'
        true geometry ('isocentre', or a bixel grid whose rows fall on the leaf boundaries).
    dose_rate_mu_min : float
        Dose rate of the sliding window's leaf-speed term.
    """

    method: str
    mlc: MLC
    fractions: int
    mu_per_unit: float
    beams: list
    x_optimised: np.ndarray
    x_delivered: np.ndarray
    dose: np.ndarray
    dose_optimised: np.ndarray
    grid: object
    timings: dict = field(default_factory=dict)
    leaf_alignment: str = "grid"
    dose_rate_mu_min: float = 600.0

    # -- MU and segments ----------------------------------------------------------------------
    @property
    def mu_per_beam(self) -> np.ndarray:
        """Calibrated MU per beam, per fraction."""
        return np.array([b.mu for b in self.beams])

    @property
    def mu(self) -> np.ndarray:
        """Alias of :attr:`mu_per_beam` (what :func:`rtlab.evaluate.compare.score` reads; it sums them)."""
        return self.mu_per_beam

    @property
    def mu_total(self) -> float:
        """TNMU per fraction, ``sum_i MU_i`` (paper 003)."""
        return float(self.mu_per_beam.sum())

    @property
    def mu_lower_bound(self) -> float:
        """``sum_i max_j sum_k (f_k - f_{k-1})^+`` of the sequenced leaf-row maps (MU per fraction)."""
        return float(sum(b.sequence.mu_lower_bound for b in self.beams))

    @property
    def segments_per_beam(self) -> list[int]:
        """Segments per beam (control points for the sliding window, see :attr:`BeamDelivery.n_segments`)."""
        return [b.n_segments for b in self.beams]

    @property
    def n_segments(self) -> int:
        return int(sum(self.segments_per_beam))

    @property
    def segment_mu(self) -> list[np.ndarray]:
        """MU (per fraction) of each step-and-shoot segment, per beam (empty for the sliding window)."""
        return [np.array([s.mu for s in b.sequence.segments]) for b in self.beams]

    @property
    def outside_mu(self) -> float:
        return float(sum(b.outside_mu for b in self.beams))

    # -- quality ------------------------------------------------------------------------------
    def report(self, case, rx=None):
        """Paddick CI and D95 of every target, optimised vs deliverable (a pandas DataFrame).

        Parameters
        ----------
        case : rtlab.core.case.Case
            Supplies the targets, their prescriptions (the isodose level of the CI) and the body.
        rx : float or mapping, optional
            Isodose level(s) in Gy overriding the prescriptions.

        Returns
        -------
        pandas.DataFrame
            Index: target names; columns ``rx``, ``ci_paddick_optimised``,
            ``ci_paddick_deliverable``, ``ci_loss`` (optimised - deliverable),
            ``d95_optimised``, ``d95_deliverable`` (Gy), ``d95_loss`` (Gy).
        """

        targets = [t for t in case.structures.targets if t.mask.any()]
        if not targets:
            raise ValueError("case has no non-empty target; the deliverable report needs one")
        body = next((s for s in case.structures.values() if s.kind == "body"), None)
        rows = {}
        for t in targets:
            level = rx.get(t.name) if isinstance(rx, dict) else rx
            if level is None:
                level = t.prescription if t.prescription is not None else case.prescription
            if level is None:
                raise ValueError(f"target {t.name!r} has no prescription; pass rx=<Gy>")
            r = {"rx": float(level)}
            for tag, d in (("optimised", self.dose_optimised), ("deliverable", self.dose)):
                r[f"ci_paddick_{tag}"] = float(M.paddick_ci(d, t, rx=level, body=body, grid=self.grid))
                r[f"d95_{tag}"] = float(M.dose_at_volume(d, t, pct=95, grid=self.grid))
            r["ci_loss"] = r["ci_paddick_optimised"] - r["ci_paddick_deliverable"]
            r["d95_loss"] = r["d95_optimised"] - r["d95_deliverable"]
            rows[t.name] = r
        cols = ["rx", "ci_paddick_optimised", "ci_paddick_deliverable", "ci_loss", "d95_optimised",
                "d95_deliverable", "d95_loss"]
        return pd.DataFrame.from_dict(rows, orient="index")[cols]

    def summary(self, case=None) -> dict:
        """JSON-ready numbers: ``mu_total``, ``mu_per_beam``, ``segments``, ``segments_per_beam``, and
        with a ``case`` the first target's ``deliverable_ci_paddick``, ``optimised_ci_paddick``,
        ``ci_loss``, ``d95_deliverable``, ``d95_optimised``, ``d95_loss``."""
        out = {
            "sequence": self.method,
            "machine": self.mlc.name,
            "fractions": int(self.fractions),
            "mu_total": round(self.mu_total, 3),
            "mu_lower_bound": round(self.mu_lower_bound, 3),
            "mu_per_beam": [round(float(v), 3) for v in self.mu_per_beam],
            "segments": self.n_segments,
            "segments_per_beam": self.segments_per_beam,
        }
        if case is not None:
            rep = self.report(case)
            r = rep.iloc[0]
            out.update({
                "deliverable_ci_paddick": round(float(r["ci_paddick_deliverable"]), 4),
                "optimised_ci_paddick": round(float(r["ci_paddick_optimised"]), 4),
                "ci_loss": round(float(r["ci_loss"]), 4),
                "d95_deliverable": round(float(r["d95_deliverable"]), 3),
                "d95_optimised": round(float(r["d95_optimised"]), 3),
                "d95_loss": round(float(r["d95_loss"]), 3),
            })
        return out

    def __repr__(self) -> str:
        return (f"DeliverableResult(method={self.method!r}, mlc={self.mlc.name!r}, beams={len(self.beams)}, "
                f"mu_total={self.mu_total:.1f} MU/fx, segments={self.n_segments})")


def _leaf_y0(bixels, h: float, mlc: MLC, alignment: str) -> float:
    """First bixel edge (mm) in the MLC's y frame for the chosen leaf alignment."""
    y_true = (bixels.r0 - 0.5) * h
    if alignment == "isocentre":
        return y_true
    # 'grid': the nearest leaf boundary takes the first bixel edge
    edges = mlc.boundaries_mm
    return float(edges[int(np.argmin(np.abs(edges - y_true)))])


def sequence_plan(im, x, machine="generic_5mm_60", method: str = "sliding", *, fractions: int = 1,
                  n_levels: int = 10, step_mu: float | None = None, step_method: str = "sweep",
                  leaf_alignment: str = "grid", dose_rate_mu_min: float = 600.0, finite_speed: bool = True,
                  tongue_and_groove: bool = False, on: str = "ct", progress: bool = False,
                  callback: Callable | None = None) -> DeliverableResult:
    """Sequence an optimised plan on an MLC and compute its deliverable dose (paper 003, sec. 3).

    Parameters
    ----------
    im : rtlab.dose.InfluenceMatrix
        The plan's influence matrix (beams with bixel grids, Gy per unit weight).
    x : ndarray (n_beamlets,)
        Optimised beamlet weights (>= 0).
    machine : str or MLC
        MLC model (:func:`rtlab.core.mlc.get_mlc`), e.g. ``'generic_5mm_60'``.
    method : {'sliding', 'step'}
        Dynamic sliding window or step-and-shoot.
    fractions : int
        Number of fractions; MU are reported per fraction and the sliding window's leaf-speed
        term uses them (``h = dx / v_max * dose_rate``).
    n_levels : int
        Step-and-shoot intensity levels per beam when ``step_mu`` is not given
        (``step = max(map) / n_levels``).
    step_mu : float, optional
        Step-and-shoot level spacing in MU per fraction (same for every beam).
    step_method : {'sweep', 'xia_verhey'}
        Step-and-shoot decomposition (MU-optimal sweep or reducing levels).
    leaf_alignment : {'grid', 'isocentre'}
        Where the leaf boundaries fall relative to the bixel rows (module docstring, step 3).
    dose_rate_mu_min : float
        Dose rate (MU/min) for the sliding window's finite leaf speed.
    finite_speed : bool
        Sliding window with the MLC's maximum leaf speed (False: infinitely fast leaves).
    tongue_and_groove : bool
        Synchronise neighbouring leaf rows.
    on : {'ct', 'dose'}
        Grid of the returned doses.
    progress : bool
        tqdm.auto bar over beams.
    callback : callable, optional
        ``callback(i_beam, n_beams, BeamDelivery)`` after each beam.

    Returns
    -------
    DeliverableResult
        ``mu_per_beam``, ``mu_total`` (MU per fraction), ``segments_per_beam``, ``n_segments``,
        ``dose`` / ``dose_optimised`` (Gy), ``report(case)``, ``summary(case)``.

    Raises
    ------
    ValueError
        Bad weights, unknown method/alignment, a field larger than the MLC, or an all-zero plan.
    """

    w = _check_weights(im, x)
    mlc = get_mlc(machine)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} ('sliding' = dynamic MLC, 'step' = step-and-shoot), got {method!r}")
    if leaf_alignment not in ("grid", "isocentre"):
        raise ValueError(f"leaf_alignment must be 'grid' or 'isocentre', got {leaf_alignment!r}")
    if int(fractions) != fractions or fractions < 1:
        raise ValueError(f"fractions must be a positive integer, got {fractions!r}")
    fractions = int(fractions)
    if not np.any(w > 0):
        raise ValueError("x is zero everywhere; there is no fluence to sequence")
    k = mu_per_unit_fluence(im.machine)
    scale = k / fractions  # MU per fraction per unit weight
    out_w = np.zeros_like(w)
    beams = []
    t_seq = []
    it = list(zip(im.beams, im.beamlet_slices))
    bar = None
    if progress:

        bar = tqdm(total=len(it), desc=f"sequencing ({method})", leave=False)
    try:
        for i, (beam, sl) in enumerate(it):
            t0 = time.perf_counter()
            bg = beam.bixels
            h = float(bg.bixel_mm)
            fmap = bg.to_map(w[sl]) * scale
            if not np.any(fmap > 0):
                raise ValueError(f"beam {i} (gantry {beam.gantry:g}) has zero fluence; drop it from the plan before sequencing")
            y0 = _leaf_y0(bg, h, mlc, leaf_alignment)
            try:
                rows, edges, ov = sq.fluence_to_leaf_rows(fmap, h, mlc, y0_mm=y0)
            except ValueError as e:
                raise ValueError(f"beam {i} (gantry {beam.gantry:g}): {e}") from None
            x0 = (bg.c0 - 0.5) * h
            try:
                if method == "sliding":
                    seq = sq.sliding_window(rows, mlc, dx=h, x0=x0, dose_rate_mu_min=dose_rate_mu_min,
                                            finite_speed=finite_speed, tongue_and_groove=tongue_and_groove)
                else:
                    seq = sq.step_and_shoot(rows, mlc, dx=h, x0=x0, step_mu=step_mu, n_levels=n_levels,
                                            method=step_method, tongue_and_groove=tongue_and_groove)
            except ValueError as e:
                raise ValueError(f"beam {i} (gantry {beam.gantry:g}): {e}") from None
            back = sq.leaf_rows_to_fluence(seq.delivered, ov)
            outside = float(back[~bg.mask].sum())
            out_w[sl] = bg.from_map(back) / scale
            bd = BeamDelivery(float(beam.gantry), seq, fmap, back, edges, outside)
            beams.append(bd)
            t_seq.append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(i, len(it), bd)
    finally:
        if bar is not None:
            bar.close()
    t0 = time.perf_counter()
    dose = im.dose(out_w, on=on)
    dose_opt = im.dose(w, on=on)
    t_dose = time.perf_counter() - t0
    grid = im.ct_grid if on == "ct" else im.grid
    return DeliverableResult(method, mlc, fractions, float(k), beams, w, out_w, dose, dose_opt, grid,
                             {"sequence_s": t_seq, "dose_s": t_dose}, leaf_alignment, float(dose_rate_mu_min))
