"""RT Plans and rtlab plans: export a sequenced plan as DICOM, re-compute a DICOM plan's dose.

Export (:func:`delivery_to_rtplan`, :func:`export_plan_dicom`)
-------------------------------------------------------------
A plan sequenced by :func:`rtlab.methods.deliverable.sequence_plan` becomes an RT Plan whose
control points deliver exactly the sequenced fluence through the MLC's real leaf-pair edges
(``LeafPositionBoundaries``):

* **step-and-shoot**: every segment is two control points with equal positions, cumulative MU
  before and after it; the X jaws close to the segment's open leaves, the Y jaws to its open
  leaf pairs. Closed pairs sit under the X1 jaw (``[X1 - gap, X1]``) when the MLC allows
  interdigitation, else where the sequencer parked them (their minimum gap then lets a sliver
  through, as it would on the machine). Pairs outside the sequenced rows copy the nearest row
  (they are behind the Y jaws).
* **sliding window**: from the trajectories ``I_L(k)``, ``I_T(k)`` of
  :mod:`rtlab.methods.sequencing` each leaf crosses bixel ``k`` during ``[I(k), I(k) + tau]`` at
  full speed (``tau = dx / v_max * dose rate``, the sequencer's ``h``) and waits at the bixel
  edges in between; both leaves of a pair cross a bixel with the same speed, so every point of
  bixel ``k`` is exposed for exactly ``I_T(k) - I_L(k) = f_k`` MU: the delivered fluence is the
  sequenced map, constant on each bixel. The control points are every breakpoint of every leaf.
  Pairs closer than the MLC's minimum gap are opened to it by moving the leading (bank-2) leaf
  (beyond the X2 jaw once a row has finished). The beam's MU is the sequence's MU plus ``tau``.

The leaves must follow the MLC's true geometry, so the delivery must have been sequenced with
``leaf_alignment='isocentre'`` (or on bixel rows that fall on leaf boundaries);
:func:`delivery_to_rtplan` refuses a 'grid'-aligned delivery that would be shifted.
:func:`export_plan_dicom` writes a consistent set (CT series unless the case came from one,
RTSTRUCT, RTDOSE with the rtlab DVHs, RT Plan) whose UIDs reference each other: the RT Plan
names the RTSTRUCT and RTDOSE, the RTDOSE the RT Plan (and the RTSTRUCT of its DVHs), the
RTSTRUCT the CT images.

Re-computation (:func:`recompute_rtplan`)
-----------------------------------------
Each beam of an :class:`~rtlab.io.dicom.rtplan.RTPlan` becomes an rtlab
:class:`~rtlab.core.beams.Beam` (gantry, couch, isocentre, SAD) with a bixel grid covering its
field; its fluence map is the exact aperture fluence of its control points
(:meth:`~rtlab.io.dicom.rtplan.PlanBeam.fluence`, MU per fraction) on the fine pixels of
:class:`rtlab.dose.FluenceDose`, converted to rtlab's unit fluence with the engine's MU
calibration (:func:`rtlab.dose.mu_per_unit_fluence`) and multiplied by the number of fractions,
so the dose is the whole course, as a ``PLAN`` RTDOSE. :func:`gamma_against` compares it with
the plan's RTDOSE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core.beams import Beam, BixelGrid
from ..core.geometry import Grid
from ..dose.fluence import FluenceDose
from ..dose.machine import Machine, generic_6mv
from ..dose.mu import mu_per_unit_fluence
from ..evaluate.dose_volume import DoseVolume
from ..evaluate.qa import gamma
from ..io.dicom import read_rtdose, save_dicom_ct, save_rtdose, save_rtstruct
from ..io.dicom.common import uid
from ..io.dicom.dose_file import add_dvh_sequence, read_dicom_file
from ..io.dicom.rtplan import PlanBeam, PlanControlPoint, RTPlan, save_rtplan

__all__ = ["delivery_to_rtplan", "export_plan_dicom", "recompute_rtplan", "RecomputedPlan", "gamma_against",
           "source_surface_distance", "rtplan_beam_model"]


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------
def source_surface_distance(case, beam: Beam, threshold: float = 0.5) -> float:
    """Distance (mm) from the source to the first voxel along the central axis with density >= ``threshold``.

    ``beam.sad`` when the axis misses the patient.
    """
    _, _, eb = beam.frame()
    s = np.arange(0.0, beam.sad + max(case.grid.extent_mm), 0.5)
    p = beam.source[None] + s[:, None] * eb[None]
    idx = np.rint(case.grid.world_to_index(p)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(case.grid.shape)), axis=1)
    hit = np.zeros(len(s), bool)
    hit[ok] = case.density[idx[ok, 0], idx[ok, 1], idx[ok, 2]] >= threshold
    return float(s[np.argmax(hit)]) if hit.any() else float(beam.sad)


def _pair_index(boundaries: np.ndarray, edge: float, what: str) -> int:
    k = int(np.argmin(np.abs(boundaries - edge)))
    if abs(boundaries[k] - edge) > 1e-6:
        raise ValueError(f"{what}: the sequenced leaf rows start at y = {edge:g} mm, which is no leaf boundary of the MLC")
    return k


def _check_alignment(delivery, beams):
    if delivery.leaf_alignment == "isocentre":
        return
    b_all = delivery.mlc.boundaries_mm
    for i, (bd, beam) in enumerate(zip(delivery.beams, beams)):
        h = beam.bixels.bixel_mm
        y_true = (beam.bixels.r0 - 0.5) * h + h * np.arange(beam.bixels.shape[0] + 1)
        near = np.min(np.abs(b_all[None, :] - y_true[:, None]), axis=1)
        if np.any(near[np.abs(y_true) <= b_all[-1]] > 1e-6) and h <= np.max(np.diff(b_all)) + 1e-9:
            raise ValueError(
                f"beam {i} (gantry {beam.gantry:g}) was sequenced with leaf_alignment='grid' on bixel rows that do not "
                f"fall on the leaf boundaries of MLC {delivery.mlc.name!r} (a {abs(y_true[0] - b_all[np.argmin(np.abs(b_all - y_true[0]))]):g} "
                "mm shift); the exported leaves would deliver a shifted fluence. Sequence with "
                "leaf_alignment='isocentre' (rtlab plan --rtplan-out does)")


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _full_leaves(used: np.ndarray, first: int, n_pairs: int) -> np.ndarray:
    """Leaf tips ``(n_pairs, 2)`` from the sequenced rows; other pairs copy the nearest sequenced row."""
    out = np.empty((n_pairs, 2))
    n = used.shape[0]
    out[first:first + n] = used
    out[:first] = used[0]
    out[first + n:] = used[-1]
    return out


def _segment_cps(seq, mlc, first: int, leaf_edges: np.ndarray):
    """``(mu, jaws, leaves)`` control points of a step-and-shoot sequence."""
    g = mlc.min_gap_mm
    out = []
    cum = 0.0
    for s in seq.segments:
        open_rows = np.flatnonzero(s.open.any(axis=1))
        left, right = s.left.astype(float).copy(), s.right.astype(float).copy()
        x1 = float(left[open_rows].min())
        x2 = float(right[open_rows].max())
        jaws = np.array([x1, x2, leaf_edges[open_rows[0]], leaf_edges[open_rows[-1] + 1]])
        closed = ~s.open.any(axis=1)
        if mlc.interdigitation:
            left[closed], right[closed] = x1 - g, x1
        leaves = _full_leaves(np.c_[left, right], first, mlc.n_pairs)
        out.append((cum, jaws, leaves))
        cum += float(s.mu)
        out.append((cum, jaws, leaves))
    return out


def _limits(bp_mu: np.ndarray, bp_x: np.ndarray, m: np.ndarray, side: str) -> np.ndarray:
    """A piecewise-linear trajectory through breakpoints ``(bp_mu, bp_x)`` (``bp_mu`` non-decreasing) at ``m``.

    ``side='left'`` gives the limit from below (the position before a jump at ``m``),
    ``'right'`` from above; constant before the first and after the last breakpoint.
    """
    m = np.asarray(m, float)
    n = bp_mu.size
    if side == "right":
        i = np.clip(np.searchsorted(bp_mu, m, side="right") - 1, 0, n - 1)
        j = np.minimum(i + 1, n - 1)
    else:
        j = np.clip(np.searchsorted(bp_mu, m, side="left"), 0, n - 1)
        i = np.maximum(j - 1, 0)
    d = bp_mu[j] - bp_mu[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.where(d > 0, (m - bp_mu[i]) / d, 0.0), 0.0, 1.0)
    x = bp_x[i] + t * (bp_x[j] - bp_x[i])
    x = np.where(m < bp_mu[0] if side == "right" else m <= bp_mu[0], bp_x[0], x)
    return np.where(m >= bp_mu[-1] if side == "right" else m > bp_mu[-1], bp_x[-1], x)


def _sliding_cps(seq, mlc, first: int, leaf_edges: np.ndarray, tau: float):
    """``(mu, jaws, leaves)`` control points of a sliding-window sequence (module docstring)."""
    e = np.asarray(seq.x_edges, float)
    IL, IT = np.asarray(seq.lead, float), np.asarray(seq.trail, float)
    n_rows, n_cols = IL.shape

    def breakpoints(I):
        mu = np.empty((n_rows, 2 * n_cols))
        x = np.empty((n_rows, 2 * n_cols))
        mu[:, 0::2], mu[:, 1::2] = I, I + tau
        x[:, 0::2], x[:, 1::2] = e[:-1], e[1:]
        return mu, x

    lm, lx = breakpoints(IL)
    tm, tx = breakpoints(IT)
    ms = np.unique(np.round(np.r_[0.0, lm.ravel(), tm.ravel()], 9))
    g = mlc.min_gap_mm
    jaws = np.array([e[0], e[-1], leaf_edges[0], leaf_edges[-1]])
    pos = {}
    for side in ("left", "right"):
        right = np.stack([_limits(lm[j], lx[j], ms, side) for j in range(n_rows)])
        left = np.stack([_limits(tm[j], tx[j], ms, side) for j in range(n_rows)])
        pos[side] = (left, np.maximum(right, left + g))  # the minimum gap, opened by the leading leaf
    out = []
    for k, m in enumerate(ms):
        before = np.c_[pos["left"][0][:, k], pos["left"][1][:, k]]
        after = np.c_[pos["right"][0][:, k], pos["right"][1][:, k]]
        if k > 0 and not np.allclose(before, after, atol=1e-9):  # a jump (leaves moving with the beam held)
            out.append((float(m), jaws, _full_leaves(before, first, mlc.n_pairs)))
        out.append((float(m), jaws, _full_leaves(after, first, mlc.n_pairs)))
    return out


def delivery_to_rtplan(delivery, beams, case=None, *, label: str = "rtlab", energy_mv: float = 6.0,
                       prescription_gy: float | None = None, patient_position: str = "HFS") -> RTPlan:
    """An :class:`~rtlab.io.dicom.rtplan.RTPlan` that delivers a sequenced plan (module docstring).

    Parameters
    ----------
    delivery : rtlab.methods.deliverable.DeliverableResult
        The sequenced plan (MU per fraction, ``delivery.fractions`` fractions).
    beams : list of rtlab.core.beams.Beam
        The plan's beams (``influence.beams``): isocentre, couch, SAD and bixel grids.
    case : Case, optional
        For each beam's ``SourceToSurfaceDistance`` (:func:`source_surface_distance`).
    label : str
        ``RTPlanLabel``.
    energy_mv : float
        ``NominalBeamEnergy``.
    prescription_gy : float, optional
        Written as the target's ``TargetPrescriptionDose``.
    patient_position : str

    Raises
    ------
    ValueError
        Beams and deliveries that do not match, or a 'grid'-aligned sequence on bixel rows off
        the leaf boundaries.
    """
    if len(beams) != len(delivery.beams):
        raise ValueError(f"beams has {len(beams)} beams, the delivery {len(delivery.beams)}; pass influence.beams")
    _check_alignment(delivery, beams)
    mlc = delivery.mlc
    bnd = mlc.boundaries_mm
    out = []
    for i, (bd, beam) in enumerate(zip(delivery.beams, beams)):
        seq = bd.sequence
        edges = np.asarray(bd.leaf_edges, float)
        first = _pair_index(bnd, edges[0], f"beam {i}")
        if seq.method == "sliding":
            dx = float(np.diff(seq.x_edges).mean())
            h = dx / mlc.leaf_speed_mm_s * delivery.dose_rate_mu_min / 60.0
            inc = np.r_[np.diff(seq.lead, axis=1).ravel(), np.diff(seq.trail, axis=1).ravel()]
            tau = float(max(0.0, min(h, inc.min() if inc.size else h)))
            cps = _sliding_cps(seq, mlc, first, edges, tau)
            btype = "DYNAMIC"
        else:
            cps = _segment_cps(seq, mlc, first, edges)
            btype = "STATIC"
        ssd = None if case is None else source_surface_distance(case, beam)
        pcps = [PlanControlPoint(k, mu, float(beam.gantry), 0.0, float(beam.couch), tuple(beam.isocenter), ssd,
                                 np.asarray(jaws, float), leaves, "NONE", float(energy_mv), delivery.dose_rate_mu_min)
                for k, (mu, jaws, leaves) in enumerate(cps)]
        mu = pcps[-1].weight
        out.append(PlanBeam(i + 1, f"G{beam.gantry:g}"[:16], btype, float(mu), float(beam.sad), pcps, float(mu), "MLCX",
                            bnd.copy(), f"rtlab {mlc.name}"[:16], "PHOTON"))
    return RTPlan(out, int(delivery.fractions), label[:16], label, patient_position, prescription_gy)


def export_plan_dicom(case, delivery, beams, rtplan_path, *, write_ct: bool | None = None, label: str = "rtlab",
                      prescription_gy: float | None = None, dvh: bool = True, machine: Machine | None = None,
                      dose: str = "plan") -> dict:
    """Write a consistent DICOM set for a sequenced plan: CT, RTSTRUCT, RTDOSE and RT Plan.

    Parameters
    ----------
    case : Case
    delivery : DeliverableResult
        The sequenced plan (:func:`rtlab.methods.deliverable.sequence_plan`); the RTDOSE is on
        ``delivery.grid``.
    beams : list of Beam
        ``influence.beams``.
    rtplan_path : path-like
        The RT Plan file; the others go beside it: ``CT_0000.dcm ...`` (unless ``write_ct`` is
        False), ``RS.dcm``, ``RD.dcm``.
    write_ct : bool, optional
        Default: write the CT unless the case came from a DICOM series (:func:`rtlab.io.load_dicom`:
        ``case.meta['dicom']`` with its SOP Instance UIDs and ``case.meta['source']`` its folder),
        whose images are then referenced. (A case written once by ``save_dicom_ct`` is written
        again: its CT files may not be where the new set goes.)
    machine : Machine, optional
        The beam model of the RTDOSE's re-computation (default :func:`rtlab.dose.generic_6mv`;
        pass ``influence.machine``).
    dose : {"plan", "sequencer"}
        ``"plan"`` (default): the RTDOSE is the dose of the written RT Plan's apertures
        (:func:`recompute_rtplan` on ``delivery.grid``), as a planning system's final dose
        calculation is; it includes the fluence that isocentre-aligned leaves deliver beyond the
        beam's bixel mask, which the sequencer's dose leaves out (``delivery.outside_mu``).
        ``"sequencer"``: ``delivery.dose`` (bixel-averaged fluence through the influence matrix).
        Either way ``sequencer_gap`` in the result compares the two.
    dvh : bool
        Write rtlab's DVHs (voxel-centre masks on the CT grid, bins of max(0.01 Gy, max dose / 1000)) into the
        RTDOSE's ``DVHSequence``, as a planning system does.

    Returns
    -------
    dict
        ``rtplan``, ``rtstruct``, ``rtdose`` paths, ``ct`` (list of paths; empty when not written),
        ``uids`` (``rtplan``, ``rtstruct``, ``rtdose``, ``frame_of_reference``, ``study``),
        ``dose_source`` and ``sequencer_gap`` (``total_ratio``: total dose of the plan's apertures
        over the sequencer's; ``max_abs_diff_gy`` and ``max_gy`` on ``delivery.grid``).
    """
    if dose not in ("plan", "sequencer"):
        raise ValueError(f"dose must be 'plan' (the RT Plan's apertures re-computed) or 'sequencer', got {dose!r}")
    rp = Path(rtplan_path)
    d = rp.parent
    d.mkdir(parents=True, exist_ok=True)
    info = case.meta.get("dicom") if isinstance(case.meta.get("dicom"), dict) else None
    if write_ct is None:  # a case read by load_dicom (meta 'source' = its folder) keeps its CT series
        src = case.meta.get("source")
        write_ct = not (info and info.get("SOPInstanceUIDs") and src and Path(str(src)).is_dir())
    ct_paths = save_dicom_ct(case, d) if write_ct else []
    plan = delivery_to_rtplan(delivery, beams, case, label=label, prescription_gy=prescription_gy)
    rs = save_rtstruct(case, d / "RS.dcm")
    rs_ds = read_dicom_file(rs, "rtstruct", stop_before_pixels=True)
    rs_uid = str(rs_ds.SOPInstanceUID)
    from_uid = str(rs_ds.FrameOfReferenceUID)
    rp_uid = uid.generate_uid()
    planned = recompute_rtplan(plan, case, machine=machine, dose_grid=delivery.grid).dose
    seq_dose = np.asarray(delivery.dose, float)
    gap = {"total_ratio": float(np.sum(planned) / max(np.sum(seq_dose), 1e-30)),
           "max_abs_diff_gy": float(np.max(np.abs(planned - seq_dose))), "max_gy": float(np.max(seq_dose))}
    rd_dose = planned if dose == "plan" else seq_dose
    rd = save_rtdose(np.clip(rd_dose, 0, None), delivery.grid, d / "RD.dcm", reference=case, plan_uid=rp_uid,
                     description=f"rtlab {delivery.method} {delivery.mlc.name}")
    rd_uid = read_rtdose(rd).sop_instance_uid
    if dvh:
        entries = {}
        for num, s in enumerate(case.structures.values(), start=1):
            if not s.mask.any():
                continue
            if not delivery.grid.is_same(case.grid):
                break
            dv = DoseVolume.from_mask(s.name, s.kind, rd_dose, s.mask, case.grid,
                                      bin_width=max(0.01, float(np.max(rd_dose)) / 1000.0))
            edges, cum = dv.cumulative()
            entries[num] = (edges, cum[:-1], dv.dmin, dv.dmax, dv.dmean)
        if entries:
            add_dvh_sequence(rd, entries, rs_uid)
    plan.frame_of_reference_uid = from_uid
    save_rtplan(plan, rp, reference=case, structure_set_uid=rs_uid, dose_uids=[rd_uid], sop_instance_uid=rp_uid)
    return {"rtplan": rp, "rtstruct": rs, "rtdose": rd, "ct": ct_paths, "plan": plan, "dose_source": dose,
            "sequencer_gap": gap,
            "uids": {"rtplan": rp_uid, "rtstruct": rs_uid, "rtdose": rd_uid, "frame_of_reference": from_uid,
                     "study": str(rs_ds.StudyInstanceUID)}}


# ---------------------------------------------------------------------------------------------
# re-computation
# ---------------------------------------------------------------------------------------------
def rtplan_beam_model(pb: PlanBeam, bixel_mm: float = 5.0) -> Beam:
    """An rtlab :class:`~rtlab.core.beams.Beam` for an RT Plan beam: its geometry and a bixel grid over its field.

    The bixel grid covers the field's bounding box in the gantry frame (the collimator-frame
    field rotated by the collimator angle), every bixel active.
    """
    x0, x1, y0, y1 = pb.field_bounds()
    c = np.deg2rad(pb.collimator)
    X, Y = np.meshgrid([x0, x1], [y0, y1])
    U = X * np.cos(c) - Y * np.sin(c)
    V = X * np.sin(c) + Y * np.cos(c)
    h = float(bixel_mm)
    c0 = int(np.floor(U.min() / h + 0.5))
    c1 = int(np.ceil(U.max() / h - 0.5))
    r0 = int(np.floor(V.min() / h + 0.5))
    r1 = int(np.ceil(V.max() / h - 0.5))
    mask = np.ones((max(1, r1 - r0 + 1), max(1, c1 - c0 + 1)), bool)
    return Beam(float(pb.gantry), float(pb.couch), tuple(pb.isocenter), h, float(pb.sad), BixelGrid(h, r0, c0, mask))


@dataclass
class RecomputedPlan:
    """What :func:`recompute_rtplan` computed.

    Attributes
    ----------
    dose : ndarray
        Dose (Gy, whole course) on ``grid``.
    grid : Grid
        The dose grid (the CT grid, a coarser one, or e.g. the RTDOSE's).
    beams : list of Beam
        rtlab's beam models.
    fluence_mu : list of ndarray
        Per beam, the fluence (MU per fraction) on the engine's fine pixels (rows v, columns u).
    mu_per_unit : float
        The engine's MU per unit fluence.
    fractions : int
    ssd : list of (float or None, float)
        Per beam, the plan's ``SourceToSurfaceDistance`` and rtlab's from the CT (mm).
    timings : dict
        ``fluence_s``, ``setup_s``, ``dose_s``.
    engine : FluenceDose
    """

    dose: np.ndarray
    grid: Grid
    beams: list
    fluence_mu: list
    mu_per_unit: float
    fractions: int
    ssd: list
    timings: dict = field(default_factory=dict)
    engine: object = None


def recompute_rtplan(plan: RTPlan, case, machine: Machine | None = None, dose_grid=None, fluence_mm: float = 1.0,
                     bixel_mm: float = 5.0, progress: bool = False) -> RecomputedPlan:
    """Re-compute an RT Plan's dose on a case with rtlab's fluence engine (module docstring).

    Parameters
    ----------
    plan : RTPlan
    case : Case
        The patient (e.g. :func:`rtlab.io.load_dicom` of the plan's CT, or a matRad phantom).
    machine : Machine, optional
        Default :func:`rtlab.dose.generic_6mv`.
    dose_grid : float or Grid, optional
        Dose-grid spacing (mm) or the grid itself (e.g. ``read_rtdose(...).grid``); default the CT grid.
    fluence_mm : float
        Fluence pixel size (mm at the isocentre); must divide ``bixel_mm``.
    bixel_mm : float
        Bixel size of the beam models (only sets the map extent's rounding).
    progress : bool
        tqdm bar over the beams.

    Raises
    ------
    ValueError
        A patient position other than HFS, an arc beam, an isocentre outside the CT.
    """
    if (plan.patient_position or "HFS").upper() != "HFS":
        raise ValueError(f"PatientPosition (0018,5100) is {plan.patient_position!r}; rtlab's beam geometry is "
                         "head-first supine (HFS) only")
    arcs = [b.name for b in plan.beams if b.is_arc]
    if arcs:
        raise ValueError(f"beams {arcs} are arcs (the gantry moves between control points); rtlab re-computes static "
                         "beams (step-and-shoot or sliding window) only")
    machine = generic_6mv() if machine is None else machine
    t0 = time.perf_counter()
    models = [rtplan_beam_model(b, bixel_mm) for b in plan.beams]
    voxels = "body" if case.structures.body is not None else (case.density >= 0.05)
    fd = FluenceDose(case, models, machine, dose_grid_mm=dose_grid, voxels=voxels, fluence_mm=fluence_mm)
    t1 = time.perf_counter()
    k = mu_per_unit_fluence(machine)
    maps = []
    it = list(enumerate(plan.beams))
    if progress:
        it = tqdm(it, desc="fluence of the control points", leave=False)
    for i, pb in it:
        vc, uc = fd.pixel_centres(i)
        f = fluence_mm
        fl = pb.fluence(np.r_[uc - f / 2, uc[-1] + f / 2], np.r_[vc - f / 2, vc[-1] + f / 2])
        maps.append(fl)
        fd.set_fluence(i, fl * plan.fractions / k)
    t2 = time.perf_counter()
    fd.compute()
    dose = fd.dose(on="dose")
    t3 = time.perf_counter()
    ssd = [(pb.ssd, source_surface_distance(case, m)) for pb, m in zip(plan.beams, models)]
    return RecomputedPlan(dose, fd.grid, models, maps, float(k), int(plan.fractions), ssd,
                          {"setup_s": t1 - t0, "fluence_s": t2 - t1, "dose_s": t3 - t2}, fd)


def gamma_against(recomputed: RecomputedPlan, rtdose, dose_criterion: float = 0.03, dta_mm: float = 3.0,
                  cutoff: float = 0.1, normalise: bool = False) -> dict:
    """3D gamma of the re-computed dose against an RTDOSE (the reference), on the RTDOSE's grid.

    Parameters
    ----------
    recomputed : RecomputedPlan
    rtdose : path-like or RTDose
        The plan's dose (DoseUnits GY; RELATIVE needs ``normalise=True``).
    dose_criterion, dta_mm, cutoff
        As :func:`rtlab.evaluate.qa.gamma` (global criterion on the reference maximum).
    normalise : bool
        Scale the re-computed dose to the reference's maximum first (compares shapes only; for a
        RELATIVE RTDOSE or a different MU calibration).

    Returns
    -------
    dict
        ``pass_rate``, ``criterion``, ``n_evaluated``, ``mean``, ``p95``, ``max``, ``scale``
        (the normalisation applied), ``ref_max_gy``, ``eval_max_gy``.
    """
    ref = rtdose if hasattr(rtdose, "dose") and hasattr(rtdose, "grid") else read_rtdose(rtdose)
    if ref.units != "GY" and not normalise:
        raise ValueError(f"{ref.path.name}: DoseUnits is {ref.units}; pass normalise=True (rtlab dose --normalise) "
                         "to compare the dose's shape")
    ev = recomputed.dose
    scale = float(ref.dose.max() / ev.max()) if normalise and ev.max() > 0 else 1.0
    res = gamma(ref.dose, ev * scale, ref.grid, dose_criterion=dose_criterion, dta_mm=dta_mm, cutoff=cutoff,
                evaluated_grid=recomputed.grid)
    out = dict(res.summary())
    out.update(scale=scale, ref_max_gy=float(ref.dose.max()), eval_max_gy=float(ev.max()))
    return out
