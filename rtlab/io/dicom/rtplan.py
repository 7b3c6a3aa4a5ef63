"""DICOM RT Plan in and out: beams, control points, jaws and MLC leaves (:func:`load_rtplan`, :func:`save_rtplan`).

What is read (DICOM PS3.3 C.8.8.14 RT Beams, C.8.8.13 RT Fraction Scheme, C.8.8.12 RT Patient Setup)
---------------------------------------------------------------------------------------------------
Per treatment beam of the fraction group: ``BeamNumber``, ``BeamName``, ``BeamType`` (``STATIC``
or ``DYNAMIC``), ``SourceAxisDistance``, the beam-limiting devices (``X``/``ASYMX``, ``Y``/``ASYMY``
jaws, ``MLCX``/``MLCY`` with ``NumberOfLeafJawPairs`` and ``LeafPositionBoundaries``) and
``BeamMeterset`` (MU per fraction, from ``FractionGroupSequence``); per control point
``CumulativeMetersetWeight`` (relative to ``FinalCumulativeMetersetWeight``), ``GantryAngle``,
``BeamLimitingDeviceAngle`` (collimator), ``PatientSupportAngle`` (couch),
``IsocenterPosition``, ``SourceToSurfaceDistance`` and ``BeamLimitingDevicePositionSequence``.
A control point repeats only what changed: values missing after the first are carried over
(C.8.8.14.5). Step-and-shoot (pairs of control points with equal positions) and dynamic
(positions moving between control points) deliveries are the same data; the fluence of either
is :func:`rtlab.core.aperture.aperture_fluence` (exact along the leaf travel). MLC geometry comes
from ``LeafPositionBoundaries``; when a file lacks it, ``mlc=`` names a model
(:func:`rtlab.core.mlc.get_mlc`: ``'millennium_120'`` 10/5 mm, ``'hd_120'`` 5/2.5 mm, ...).

Beams not in the fraction group or with ``TreatmentDeliveryType`` ``SETUP`` are left out.
Wedges, blocks and compensators are not modelled (a warning names the beam); arcs
(``GantryRotationDirection`` CW/CC) are read but :meth:`PlanBeam.is_arc` marks them, and the
re-computation refuses them.

Coordinates: ``IsocenterPosition`` is DICOM patient ``(x, y, z)``; :class:`PlanBeam` keeps rtlab's
``(z, y, x)``. Jaw and leaf positions are IEC 61217 beam-limiting-device coordinates (mm at the
isocentre plane); with collimator 0 their X, Y are rtlab's beam's-eye-view ``u``, ``v``
(:mod:`rtlab.core.beams`).

Writing (:func:`save_rtplan`) produces an RT Plan IOD (PS3.3 A.20): Patient, General Study, RT
Series, Frame of Reference, General Equipment, RT General Plan (``RTPlanGeometry`` PATIENT with
``ReferencedStructureSetSequence``; ``ReferencedDoseSequence`` when a dose is named), RT Fraction
Scheme (MU per beam), RT Beams (cumulative meterset weights from 0 to
``FinalCumulativeMetersetWeight`` = 1), RT Patient Setup, Approval and SOP Common modules, with
new UIDs from :func:`pydicom.uid.generate_uid` unless given.

Size: about 630 lines because reading and writing one IOD share its data classes and tag
conventions (carry-over of control-point values, device types, meterset weights); splitting them
would scatter one table of tags over two files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.aperture import ControlPoints, field_bounds, rotated_fluence
from ...core.mlc import MLC, get_mlc
from .common import (RT_DOSE_STORAGE, RT_STRUCTURE_SET_STORAGE, dataset, ds_num, floats, new_rt_dataset, reference_info,
                     require_pydicom, required, sequence, uid, write_dataset)
from .dose_file import read_dicom_file

__all__ = ["RTPlan", "PlanBeam", "PlanControlPoint", "load_rtplan", "save_rtplan", "RT_PLAN_STORAGE"]

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"

_JAWS = {"X": 0, "ASYMX": 0, "Y": 1, "ASYMY": 1}


@dataclass
class PlanControlPoint:
    """One control point, with the values carried over from earlier ones filled in.

    Attributes
    ----------
    index : int
    weight : float
        ``CumulativeMetersetWeight``.
    gantry, collimator, couch : float
        Degrees (IEC 61217).
    isocenter : tuple
        ``(z, y, x)`` mm.
    ssd : float or None
        ``SourceToSurfaceDistance`` (mm).
    jaws : ndarray (4,)
        ``X1, X2, Y1, Y2`` (mm; -inf/inf for a missing jaw).
    leaves : ndarray (n_pairs, 2) or None
        Bank-1 and bank-2 tip positions per pair (mm).
    gantry_direction : str
        ``NONE``, ``CW`` or ``CC``.
    """

    index: int
    weight: float
    gantry: float
    collimator: float
    couch: float
    isocenter: tuple
    ssd: float | None
    jaws: np.ndarray
    leaves: np.ndarray | None = None
    gantry_direction: str = "NONE"
    energy: float | None = None
    dose_rate: float | None = None


@dataclass
class PlanBeam:
    """One treatment beam of an RT Plan.

    Attributes
    ----------
    number : int
    name : str
    beam_type : str
        ``STATIC`` or ``DYNAMIC``.
    mu : float
        ``BeamMeterset`` (MU per fraction).
    sad : float
        Source-axis distance (mm).
    control_points : list of PlanControlPoint
    final_weight : float
        ``FinalCumulativeMetersetWeight``.
    mlc_type : str or None
        ``MLCX``, ``MLCY`` or None.
    boundaries : ndarray or None
        Leaf-pair edges (mm).
    machine : str
        ``TreatmentMachineName``.
    radiation : str
        ``RadiationType``.
    """

    number: int
    name: str
    beam_type: str
    mu: float
    sad: float
    control_points: list
    final_weight: float = 1.0
    mlc_type: str | None = None
    boundaries: np.ndarray | None = None
    machine: str = ""
    radiation: str = "PHOTON"

    @property
    def gantry(self) -> float:
        return self.control_points[0].gantry

    @property
    def collimator(self) -> float:
        return self.control_points[0].collimator

    @property
    def couch(self) -> float:
        return self.control_points[0].couch

    @property
    def isocenter(self) -> tuple:
        return self.control_points[0].isocenter

    @property
    def ssd(self) -> float | None:
        return self.control_points[0].ssd

    @property
    def is_arc(self) -> bool:
        """True when the gantry rotates during the beam (a VMAT or conformal arc)."""
        g = np.array([cp.gantry for cp in self.control_points])
        return bool(np.ptp(g) > 1e-3 or any(cp.gantry_direction in ("CW", "CC") for cp in self.control_points))

    @property
    def n_pairs(self) -> int:
        return 0 if self.boundaries is None else int(len(self.boundaries) - 1)

    def meterset(self) -> np.ndarray:
        """Cumulative MU (per fraction) at each control point."""
        w = np.array([cp.weight for cp in self.control_points])
        return self.mu * w / self.final_weight if self.final_weight > 0 else np.zeros_like(w)

    def leaf_positions(self) -> np.ndarray:
        """``(n_control_points, n_pairs, 2)`` leaf tips (mm); ValueError without an MLC."""
        if self.mlc_type is None:
            raise ValueError(f"beam {self.name!r} has no MLC")
        return np.stack([cp.leaves for cp in self.control_points])

    def apertures(self) -> ControlPoints:
        """The control points as :class:`rtlab.core.aperture.ControlPoints` (cumulative MU)."""
        leaves = self.leaf_positions() if self.mlc_type is not None else None
        return ControlPoints(self.meterset(), np.stack([cp.jaws for cp in self.control_points]), leaves,
                             self.boundaries, "y" if self.mlc_type == "MLCY" else "x")

    def field_bounds(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of everything the beam opens (collimator frame, mm)."""
        return field_bounds(self.apertures())

    def fluence(self, u_edges, v_edges, oversample: int = 4) -> np.ndarray:
        """Fluence (MU per fraction) on a pixel grid ``(rows v, columns u)`` of the gantry frame.

        The collimator angle is applied (:func:`rtlab.core.aperture.rotated_fluence`); exact
        along the leaf travel for collimator angles that are multiples of 90 degrees.
        """
        return rotated_fluence(self.apertures(), u_edges, v_edges, self.collimator, oversample)


@dataclass
class RTPlan:
    """An RT Plan: its beams and what it refers to.

    Attributes
    ----------
    beams : list of PlanBeam
        Treatment beams of the fraction group, in ``BeamSequence`` order.
    fractions : int
        ``NumberOfFractionsPlanned``.
    label, name : str
        ``RTPlanLabel``, ``RTPlanName``.
    patient_position : str
        ``PatientPosition`` of the setup (``HFS``, ...).
    prescription_gy : float or None
        ``TargetPrescriptionDose`` of the first TARGET dose reference.
    sop_instance_uid, frame_of_reference_uid, study_instance_uid, structure_set_uid : str
    dose_uids : list of str
        ``ReferencedDoseSequence``.
    patient_id, patient_name : str
    path : pathlib.Path or None
    """

    beams: list
    fractions: int = 1
    label: str = "rtlab"
    name: str = ""
    patient_position: str = "HFS"
    prescription_gy: float | None = None
    sop_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    study_instance_uid: str = ""
    structure_set_uid: str = ""
    dose_uids: list = field(default_factory=list)
    patient_id: str = ""
    patient_name: str = ""
    path: Path | None = None

    @property
    def mu_per_fraction(self) -> float:
        return float(sum(b.mu for b in self.beams))

    def summary(self) -> str:
        lines = [f"RT Plan {self.label!r}: {len(self.beams)} beams, {self.fractions} fractions, "
                 f"{self.mu_per_fraction:.1f} MU per fraction, {self.patient_position}"]
        for b in self.beams:
            mlc = f"{b.mlc_type} {b.n_pairs} pairs" if b.mlc_type else "jaws only"
            lines.append(f"  {b.number} {b.name!r}: {b.beam_type}, gantry {b.gantry:g}, collimator {b.collimator:g}, "
                         f"couch {b.couch:g}, {b.mu:.1f} MU, {len(b.control_points)} control points, {mlc}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _num(item, kw, where, default=None):
    if kw in item and item[kw].value not in (None, ""):
        return float(floats(item[kw].value, 1, kw, where)[0])
    return default


def load_rtplan(path, mlc: str | MLC | None = None, fraction_group: int | None = None) -> RTPlan:
    """Read a DICOM RT Plan (see the module docstring).

    Parameters
    ----------
    path : path-like
    mlc : str or MLC, optional
        MLC model for beams whose ``MLCX``/``MLCY`` device lacks ``LeafPositionBoundaries``.
    fraction_group : int, optional
        ``FractionGroupNumber`` to read (default: the first group).

    Returns
    -------
    RTPlan

    Raises
    ------
    ValueError
        Not an RT Plan; a missing or malformed required tag (named with the file, the beam and
        the tag); leaf or jaw counts that do not match the device; a control point without
        positions; an ion plan.
    """
    ds = read_dicom_file(path, "rtplan", "RTPLAN", RT_PLAN_STORAGE)
    p = Path(path)
    where = p.name
    if "IonBeamSequence" in ds and "BeamSequence" not in ds:
        raise ValueError(f"{where}: an RT Ion Plan (IonBeamSequence); rtlab reads photon RT Plans")
    groups = list(required(ds, "FractionGroupSequence", where))
    if fraction_group is None:
        fg = groups[0]
    else:
        match = [g for g in groups if int(g.get("FractionGroupNumber", -1)) == int(fraction_group)]
        if not match:
            raise ValueError(f"{where}: no FractionGroupNumber {fraction_group} in FractionGroupSequence (300A,0070)")
        fg = match[0]
    n_fx = int(fg.get("NumberOfFractionsPlanned", 1) or 1)
    meters = {}
    for rb in fg.get("ReferencedBeamSequence", []) or []:
        wb = f"{where} (ReferencedBeamSequence)"
        num = int(required(rb, "ReferencedBeamNumber", wb))
        meters[num] = _num(rb, "BeamMeterset", wb)
    position = "HFS"
    for s in ds.get("PatientSetupSequence", []) or []:
        position = str(s.get("PatientPosition", "") or position)
        break
    rx = None
    for r in ds.get("DoseReferenceSequence", []) or []:
        if str(r.get("DoseReferenceType", "")).upper() == "TARGET" and r.get("TargetPrescriptionDose", None) not in (None, ""):
            rx = float(r.TargetPrescriptionDose)
            break
    mlc_model = None if mlc is None else get_mlc(mlc)
    beams = []
    for k, b in enumerate(required(ds, "BeamSequence", where)):
        beam = _read_beam(b, f"{where} (BeamSequence item {k})", meters, mlc_model)
        if beam is not None:
            beams.append(beam)
    if not beams:
        raise ValueError(f"{where}: no treatment beam with a BeamMeterset (300A,0086) in the fraction group")
    ss_uid = ""
    for r in ds.get("ReferencedStructureSetSequence", []) or []:
        ss_uid = str(r.get("ReferencedSOPInstanceUID", ""))
        break
    dose_uids = [str(r.get("ReferencedSOPInstanceUID", "")) for r in ds.get("ReferencedDoseSequence", []) or []]
    return RTPlan(beams, n_fx, str(ds.get("RTPlanLabel", "") or ""), str(ds.get("RTPlanName", "") or ""), position, rx,
                  str(ds.get("SOPInstanceUID", "")), str(ds.get("FrameOfReferenceUID", "") or ""),
                  str(ds.get("StudyInstanceUID", "") or ""), ss_uid, dose_uids, str(ds.get("PatientID", "") or ""),
                  str(ds.get("PatientName", "") or ""), p)


def _read_beam(b, where, meters, mlc_model) -> PlanBeam | None:
    num = int(required(b, "BeamNumber", where))
    name = str(b.get("BeamName", "") or f"beam {num}")
    where = f"{where[:where.rfind('(')]}(beam {num} {name!r})"
    if str(b.get("TreatmentDeliveryType", "TREATMENT") or "TREATMENT").upper() != "TREATMENT":
        return None
    mu = meters.get(num)
    if mu is None or mu <= 0:
        return None
    rad = str(b.get("RadiationType", "PHOTON") or "PHOTON").upper()
    if rad != "PHOTON":
        warnings.warn(f"{where}: RadiationType {rad}; rtlab's dose engine models photons only", stacklevel=3)
    for kw, what in (("NumberOfWedges", "wedge"), ("NumberOfBlocks", "block"), ("NumberOfCompensators", "compensator")):
        if int(b.get(kw, 0) or 0) > 0:
            warnings.warn(f"{where}: the beam has a {what} ({kw} > 0), which rtlab does not model; its fluence is the "
                          "jaw/MLC aperture alone", stacklevel=3)
    sad = _num(b, "SourceAxisDistance", where, None)
    if sad is None:
        warnings.warn(f"{where}: SourceAxisDistance (300A,00B4) is missing; 1000 mm assumed", stacklevel=3)
        sad = 1000.0
    devices = {}
    for d in required(b, "BeamLimitingDeviceSequence", where):
        t = str(required(d, "RTBeamLimitingDeviceType", where)).upper()
        n = int(required(d, "NumberOfLeafJawPairs", where))
        bnd = None
        if t in ("MLCX", "MLCY"):
            if "LeafPositionBoundaries" in d and d.LeafPositionBoundaries:
                bnd = floats(d.LeafPositionBoundaries, n + 1, "LeafPositionBoundaries (300A,00BE)", where)
                if np.any(np.diff(bnd) <= 0):
                    raise ValueError(f"{where}: LeafPositionBoundaries (300A,00BE) must increase")
            elif mlc_model is not None:
                if mlc_model.n_pairs != n:
                    raise ValueError(f"{where}: the MLC has {n} pairs (NumberOfLeafJawPairs), model {mlc_model.name!r} "
                                     f"{mlc_model.n_pairs}")
                bnd = mlc_model.boundaries_mm
            else:
                raise ValueError(f"{where}: required DICOM tag LeafPositionBoundaries (300A,00BE) of the {t} is missing; "
                                 "pass mlc='millennium_120', 'hd_120' or another model (rtlab.core.mlc.list_mlcs())")
        devices[t] = (n, bnd)
    mlc_types = [t for t in devices if t in ("MLCX", "MLCY")]
    if len(mlc_types) > 1:
        raise ValueError(f"{where}: more than one MLC ({mlc_types}); rtlab reads one")
    mlc_type = mlc_types[0] if mlc_types else None
    cps = []
    prev = None
    seq = required(b, "ControlPointSequence", where)
    for i, cp in enumerate(seq):
        wc = f"{where}, control point {i}"
        cps.append(prev := _read_cp(cp, wc, prev, devices, mlc_type, i))
    n_cp = int(b.get("NumberOfControlPoints", len(cps)) or len(cps))
    if n_cp != len(cps):
        raise ValueError(f"{where}: NumberOfControlPoints (300A,0110) is {n_cp} but ControlPointSequence holds {len(cps)}")
    if len(cps) < 2:
        raise ValueError(f"{where}: ControlPointSequence (300A,0111) needs at least 2 control points, got {len(cps)}")
    final = _num(b, "FinalCumulativeMetersetWeight", where, None)
    if final is None:
        final = cps[-1].weight
    w = np.array([c.weight for c in cps])
    if np.any(np.diff(w) < -1e-9) or final <= 0:
        raise ValueError(f"{where}: CumulativeMetersetWeight (300A,0134) must increase from 0 to "
                         f"FinalCumulativeMetersetWeight (300A,010E), got {w.tolist()} / {final}")
    return PlanBeam(num, name, str(b.get("BeamType", "STATIC") or "STATIC").upper(), float(mu), float(sad), cps, float(final),
                    mlc_type, devices[mlc_type][1] if mlc_type else None, str(b.get("TreatmentMachineName", "") or ""), rad)


def _read_cp(cp, where, prev: PlanControlPoint | None, devices, mlc_type, i) -> PlanControlPoint:
    def val(kw, attr, lenient=False):
        v = _num(cp, kw, where, None)
        if v is not None:
            return v
        if prev is not None:
            return getattr(prev, attr)
        if lenient:
            warnings.warn(f"{where}: {kw} is missing in the first control point; 0 assumed", stacklevel=5)
            return 0.0
        return required(cp, kw, where)  # raises naming the tag

    weight = _num(cp, "CumulativeMetersetWeight", where, None)
    if weight is None:
        weight = prev.weight if prev is not None else required(cp, "CumulativeMetersetWeight", where)
    gantry = val("GantryAngle", "gantry")
    coll = val("BeamLimitingDeviceAngle", "collimator", lenient=True)
    couch = val("PatientSupportAngle", "couch", lenient=True)
    if "IsocenterPosition" in cp and cp.IsocenterPosition:
        iso = tuple(floats(cp.IsocenterPosition, 3, "IsocenterPosition (300A,012C)", where)[::-1].tolist())
    elif prev is not None:
        iso = prev.isocenter
    else:
        required(cp, "IsocenterPosition", where)
    ssd = _num(cp, "SourceToSurfaceDistance", where, None if prev is None else prev.ssd)
    if abs(_num(cp, "TableTopEccentricAngle", where, 0.0) or 0.0) > 1e-6:
        warnings.warn(f"{where}: TableTopEccentricAngle is not 0; rtlab ignores it", stacklevel=4)
    jaws = prev.jaws.copy() if prev is not None else np.array([-np.inf, np.inf, -np.inf, np.inf])
    leaves = prev.leaves.copy() if (prev is not None and prev.leaves is not None) else None
    pos = cp.get("BeamLimitingDevicePositionSequence", None)
    if i == 0 and not pos:
        required(cp, "BeamLimitingDevicePositionSequence", where)
    seen = set()
    for d in pos or []:
        t = str(required(d, "RTBeamLimitingDeviceType", where)).upper()
        if t not in devices:
            raise ValueError(f"{where}: BeamLimitingDevicePositionSequence names {t}, which the beam's "
                             "BeamLimitingDeviceSequence (300A,00B6) does not list")
        n = devices[t][0]
        v = floats(required(d, "LeafJawPositions", where), 2 * n, f"LeafJawPositions (300A,011C) of {t}", where)
        seen.add(t)
        if t in _JAWS:
            a = _JAWS[t]
            if v[0] > v[1] + 1e-6:
                raise ValueError(f"{where}: {t} jaws {v.tolist()} are crossed (the first must not exceed the second)")
            jaws[2 * a:2 * a + 2] = v
        else:
            leaves = np.c_[v[:n], v[n:]]
            if np.any(leaves[:, 0] > leaves[:, 1] + 1e-6):
                j = int(np.flatnonzero(leaves[:, 0] > leaves[:, 1] + 1e-6)[0])
                raise ValueError(f"{where}: {t} leaf pair {j + 1} is crossed ({leaves[j, 0]:g} > {leaves[j, 1]:g} mm)")
    if mlc_type is not None and leaves is None:
        raise ValueError(f"{where}: the first control point gives no {mlc_type} LeafJawPositions (300A,011C)")
    return PlanControlPoint(i, float(weight), float(gantry), float(coll), float(couch), iso,
                            None if ssd is None else float(ssd), jaws, leaves,
                            str(cp.get("GantryRotationDirection", prev.gantry_direction if prev else "NONE") or "NONE"),
                            _num(cp, "NominalBeamEnergy", where, None if prev is None else prev.energy),
                            _num(cp, "DoseRateSet", where, None if prev is None else prev.dose_rate))


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _device_positions(cp: PlanControlPoint, beam: PlanBeam) -> list:
    items = []
    for t, a in (("ASYMX", 0), ("ASYMY", 1)):
        lo, hi = cp.jaws[2 * a], cp.jaws[2 * a + 1]
        if np.isfinite(lo) and np.isfinite(hi):
            d = dataset.Dataset()
            d.RTBeamLimitingDeviceType = t
            d.LeafJawPositions = [ds_num(lo), ds_num(hi)]
            items.append(d)
    if beam.mlc_type is not None:
        d = dataset.Dataset()
        d.RTBeamLimitingDeviceType = beam.mlc_type
        d.LeafJawPositions = [ds_num(v) for v in np.r_[cp.leaves[:, 0], cp.leaves[:, 1]]]
        items.append(d)
    return items


def save_rtplan(plan: RTPlan, path, reference=None, structure_set_uid: str | None = None,
                dose_uids=None, sop_instance_uid: str | None = None) -> Path:
    """Write an :class:`RTPlan` as a DICOM RT Plan (atomically); see the module docstring.

    Parameters
    ----------
    plan : RTPlan
        Beams with control points (jaws must be finite; leaves as in the beam's MLC).
    path : path-like
    reference : Case, dataset(s), CT file path(s) or folder, optional
        Patient, study and frame of reference (e.g. the CT the plan was made on).
    structure_set_uid : str, optional
        SOP Instance UID of the RTSTRUCT (``ReferencedStructureSetSequence``); default
        ``plan.structure_set_uid``. Required: the plan's geometry is PATIENT.
    dose_uids : list of str, optional
        RTDOSE SOP Instance UIDs (``ReferencedDoseSequence``); default ``plan.dose_uids``.
    sop_instance_uid : str, optional
        Default ``plan.sop_instance_uid`` or a new UID.

    Returns
    -------
    pathlib.Path
    """
    require_pydicom()
    if not isinstance(plan, RTPlan):
        raise TypeError(f"plan must be an rtlab.io.dicom.rtplan.RTPlan, got {type(plan).__name__}")
    if not plan.beams:
        raise ValueError("plan has no beams")
    ss_uid = structure_set_uid or plan.structure_set_uid
    if not ss_uid:
        raise ValueError("structure_set_uid is needed: an RT Plan made on patient images references its RTSTRUCT "
                         "(ReferencedStructureSetSequence); write the RTSTRUCT first (rtlab.io.save_rtstruct)")
    info = reference_info(reference)
    if plan.frame_of_reference_uid and not info.get("FrameOfReferenceUID"):
        info["FrameOfReferenceUID"] = plan.frame_of_reference_uid
    if plan.study_instance_uid and not info.get("StudyInstanceUID"):
        info["StudyInstanceUID"] = plan.study_instance_uid
    sop = sop_instance_uid or plan.sop_instance_uid or uid.generate_uid()
    ds = new_rt_dataset(RT_PLAN_STORAGE, sop, info, plan.label or "plan", "RTPLAN", 4)
    ds.RTPlanLabel = (plan.label or "rtlab")[:16]
    ds.RTPlanName = (plan.name or plan.label or "rtlab")[:64]
    ds.RTPlanDate = ds.InstanceCreationDate
    ds.RTPlanTime = ds.InstanceCreationTime
    ds.RTPlanGeometry = "PATIENT"
    ref = dataset.Dataset()
    ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ref.ReferencedSOPInstanceUID = ss_uid
    ds.ReferencedStructureSetSequence = sequence.Sequence([ref])
    dose_uids = list(dose_uids if dose_uids is not None else plan.dose_uids)
    if dose_uids:
        refs = []
        for u in dose_uids:
            r = dataset.Dataset()
            r.ReferencedSOPClassUID = RT_DOSE_STORAGE
            r.ReferencedSOPInstanceUID = u
            refs.append(r)
        ds.ReferencedDoseSequence = sequence.Sequence(refs)
    if plan.prescription_gy:
        dr = dataset.Dataset()
        dr.DoseReferenceNumber = 1
        dr.DoseReferenceUID = uid.generate_uid()
        dr.DoseReferenceStructureType = "SITE"
        dr.DoseReferenceDescription = "target"
        dr.DoseReferenceType = "TARGET"
        dr.TargetPrescriptionDose = ds_num(plan.prescription_gy)
        ds.DoseReferenceSequence = sequence.Sequence([dr])
    fg = dataset.Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = int(plan.fractions)
    fg.NumberOfBeams = len(plan.beams)
    fg.NumberOfBrachyApplicationSetups = 0
    rbs = []
    for b in plan.beams:
        rb = dataset.Dataset()
        rb.BeamMeterset = ds_num(b.mu)
        rb.ReferencedBeamNumber = int(b.number)
        rbs.append(rb)
    fg.ReferencedBeamSequence = sequence.Sequence(rbs)
    ds.FractionGroupSequence = sequence.Sequence([fg])
    setup = dataset.Dataset()
    setup.PatientPosition = plan.patient_position or "HFS"
    setup.PatientSetupNumber = 1
    ds.PatientSetupSequence = sequence.Sequence([setup])
    ds.BeamSequence = sequence.Sequence([_beam_item(b) for b in plan.beams])
    ds.ApprovalStatus = "UNAPPROVED"
    return write_dataset(ds, Path(path))


def _beam_item(b: PlanBeam):
    it = dataset.Dataset()
    it.Manufacturer = "rtlab"
    it.TreatmentMachineName = (b.machine or "rtlab")[:16]
    it.PrimaryDosimeterUnit = "MU"
    it.SourceAxisDistance = ds_num(b.sad)
    devs = []
    for t in ("ASYMX", "ASYMY"):
        d = dataset.Dataset()
        d.RTBeamLimitingDeviceType = t
        d.NumberOfLeafJawPairs = 1
        devs.append(d)
    if b.mlc_type is not None:
        d = dataset.Dataset()
        d.RTBeamLimitingDeviceType = b.mlc_type
        d.NumberOfLeafJawPairs = b.n_pairs
        d.LeafPositionBoundaries = [ds_num(v) for v in b.boundaries]
        devs.append(d)
    it.BeamLimitingDeviceSequence = sequence.Sequence(devs)
    it.BeamNumber = int(b.number)
    it.BeamName = b.name[:64]
    it.BeamType = b.beam_type
    it.RadiationType = b.radiation or "PHOTON"
    it.TreatmentDeliveryType = "TREATMENT"
    it.NumberOfWedges = 0
    it.NumberOfCompensators = 0
    it.NumberOfBoli = 0
    it.NumberOfBlocks = 0
    it.FinalCumulativeMetersetWeight = ds_num(1.0)
    cps = b.control_points
    it.NumberOfControlPoints = len(cps)
    w = np.array([c.weight for c in cps], float)
    w = (w - w[0]) / (w[-1] - w[0]) if w[-1] > w[0] else np.linspace(0, 1, len(cps))
    items = []
    last = None
    for i, cp in enumerate(cps):
        c = dataset.Dataset()
        c.ControlPointIndex = i
        c.CumulativeMetersetWeight = ds_num(min(1.0, max(0.0, w[i])))
        if i == 0:
            c.NominalBeamEnergy = ds_num(cp.energy or 6.0)
            if cp.dose_rate:
                c.DoseRateSet = ds_num(cp.dose_rate)
        pos = _device_positions(cp, b)
        if i == 0 or last is None or not (np.array_equal(cp.jaws, last.jaws) and
                                          (cp.leaves is None or np.array_equal(cp.leaves, last.leaves))):
            c.BeamLimitingDevicePositionSequence = sequence.Sequence(pos)
        if i == 0:
            c.GantryAngle = ds_num(cp.gantry % 360.0)
            c.GantryRotationDirection = "NONE"
            c.BeamLimitingDeviceAngle = ds_num(cp.collimator % 360.0)
            c.BeamLimitingDeviceRotationDirection = "NONE"
            c.PatientSupportAngle = ds_num(cp.couch % 360.0)
            c.PatientSupportRotationDirection = "NONE"
            c.TableTopEccentricAngle = "0"
            c.TableTopEccentricRotationDirection = "NONE"
            c.TableTopVerticalPosition = ""
            c.TableTopLongitudinalPosition = ""
            c.TableTopLateralPosition = ""
            c.IsocenterPosition = [ds_num(v) for v in np.asarray(cp.isocenter)[::-1]]
            if cp.ssd is not None:
                c.SourceToSurfaceDistance = ds_num(cp.ssd)
        items.append(c)
        last = cp
    it.ControlPointSequence = sequence.Sequence(items)
    it.ReferencedPatientSetupNumber = 1
    return it

