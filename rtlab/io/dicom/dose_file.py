"""An RTDOSE file with everything a score needs: dose, grid, units, summation, and the TPS's DVHs.

:func:`read_rtdose` reads (DICOM PS3.3 C.8.8.3, RT Dose module; C.7.6.2 Image Plane):

* the dose: stored pixel values times ``DoseGridScaling`` (3004,000E), in ``DoseUnits``
  (3004,0002) ``GY`` or ``RELATIVE`` (kept as read, the unit is reported);
* the grid: ``ImagePositionPatient``, ``ImageOrientationPatient`` (axis-aligned only; an oblique
  grid is an error naming the tag), ``PixelSpacing`` and the frames' ``GridFrameOffsetVector``
  (3004,000C) -- relative to the first frame, or absolute z for an axial grid (first value
  equal to the z of ``ImagePositionPatient``); it must be uniform;
* ``DoseType``, ``DoseSummationType``, the referenced RT Plan and structure set;
* the ``DVHSequence`` (3004,0050), if present: per ROI (``DVHReferencedROISequence``) the
  ``DVHType`` (``CUMULATIVE`` or ``DIFFERENTIAL``), ``DVHDoseScaling`` (scales the bin widths),
  ``DVHVolumeUnits`` (``CM3`` or ``PERCENT``) and ``DVHData`` = ``D1 V1 D2 V2 ...`` with ``Dn``
  the width of bin ``n`` (:class:`TPSDVH`). For a cumulative DVH ``Vn`` is the volume receiving at
  least the lower edge of bin ``n`` (the reading of dicompyler-core and of the planning systems
  that write it).

:func:`add_dvh_sequence` writes such DVHs into an RTDOSE (what a planning system exports;
the tests use it to make TPS-like files).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.geometry import Grid
from .common import (RT_DOSE_STORAGE, RT_STRUCTURE_SET_STORAGE, assemble, dataset, ds_num, errors, floats,
                     image_axes, pydicom, require_pydicom, required, sequence, write_dataset)

__all__ = ["RTDose", "TPSDVH", "read_rtdose", "read_dicom_file", "add_dvh_sequence", "sum_rtdoses"]


def read_dicom_file(path, what: str, modality: str | None = None, sop_class: str | None = None, *,
                    stop_before_pixels: bool = False):
    """Read one DICOM file with errors that name it: missing, not DICOM, or of another modality.

    Files written without the 128-byte preamble and ``DICM`` prefix (older exports, pydicom's own
    test files) are read with ``force=True`` when they hold a ``SOPClassUID``.

    Parameters
    ----------
    path : path-like
    what : str
        The argument's name for messages (``'rtdose'``, ``'rtstruct'``, ...).
    modality, sop_class : str, optional
        Expected ``Modality`` (or ``SOPClassUID``); either matching is enough.
    """
    require_pydicom()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {str(p)!r} does not exist or is not a file")
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
    except errors.InvalidDicomError:
        try:
            ds = pydicom.dcmread(p, force=True, stop_before_pixels=stop_before_pixels)
        except Exception:
            ds = None
        if ds is None or "SOPClassUID" not in ds:
            raise ValueError(f"{what} {p.name} is not a DICOM file (no DICM header and no SOPClassUID (0008,0016))"
                             ) from None
    except Exception as e:
        raise ValueError(f"{what} {p.name} cannot be read as DICOM ({type(e).__name__}: {e})") from None
    if modality is not None:
        mod = str(ds.get("Modality", "")).upper()
        sop = str(ds.get("SOPClassUID", ""))
        if mod != modality and sop != sop_class:
            raise ValueError(f"{what} {p.name} has Modality (0008,0060) {mod or 'missing'!r}, expected {modality}")
    return ds


@dataclass
class TPSDVH:
    """One DVH of an RTDOSE's ``DVHSequence`` (module docstring).

    Attributes
    ----------
    roi_number : int
        ``ReferencedROINumber`` in the RTSTRUCT.
    dvh_type : str
        ``CUMULATIVE`` or ``DIFFERENTIAL``.
    dose_units : str
        ``GY`` or ``RELATIVE``.
    volume_units : str
        ``CM3`` or ``PERCENT``.
    edges : ndarray (n + 1,)
        Dose bin edges (dose units), from 0.
    volumes : ndarray (n,)
        ``Vn`` as stored (volume units).
    dmin, dmax, dmean : float or None
        ``DVHMinimumDose``, ``DVHMaximumDose``, ``DVHMeanDose`` when present.
    """

    roi_number: int
    dvh_type: str
    dose_units: str
    volume_units: str
    edges: np.ndarray
    volumes: np.ndarray
    dmin: float | None = None
    dmax: float | None = None
    dmean: float | None = None

    def cumulative_cc(self, total_cc: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(dose, volume_cc)``: volume receiving at least each lower bin edge.

        ``total_cc`` converts ``PERCENT`` volumes to cc (the structure's volume).
        """
        v = np.asarray(self.volumes, float)
        if self.volume_units == "PERCENT":
            if total_cc is None:
                raise ValueError(f"the DVH of ROI {self.roi_number} is in PERCENT; pass total_cc to convert to cc")
            v = v / 100.0 * float(total_cc)
        if self.dvh_type == "DIFFERENTIAL":
            v = np.cumsum(v[::-1])[::-1]
        return self.edges[:-1].copy(), v


@dataclass
class RTDose:
    """What :func:`read_rtdose` found in an RTDOSE file.

    Attributes
    ----------
    path : pathlib.Path
    dose : ndarray of float64 ``(z, y, x)``
        Pixel values times ``DoseGridScaling`` (in ``units``).
    grid : Grid
    units : str
        ``GY`` or ``RELATIVE``.
    dose_type, summation_type : str
        ``DoseType`` (``PHYSICAL``, ``EFFECTIVE``, ...), ``DoseSummationType`` (``PLAN``, ``BEAM``, ...).
    dvhs : list of TPSDVH
    frame_of_reference_uid, sop_instance_uid, plan_uid, structure_set_uid : str
        ``''`` when absent.
    beam_numbers : list of int
        Beams named by the referenced plan's fraction group (``BEAM`` summation).
    """

    path: Path
    dose: np.ndarray
    grid: Grid
    units: str
    dose_type: str = ""
    summation_type: str = ""
    dvhs: list = field(default_factory=list)
    frame_of_reference_uid: str = ""
    sop_instance_uid: str = ""
    plan_uid: str = ""
    structure_set_uid: str = ""
    beam_numbers: list = field(default_factory=list)


def _grid_of(ds, where: str):
    iop = floats(required(ds, "ImageOrientationPatient", where), 6, "ImageOrientationPatient (0020,0037)", where)
    ipp = floats(required(ds, "ImagePositionPatient", where), 3, "ImagePositionPatient (0020,0032)", where)
    ps = floats(required(ds, "PixelSpacing", where), 2, "PixelSpacing (0028,0030)", where)
    if np.any(ps <= 0):
        raise ValueError(f"{where}: PixelSpacing (0028,0030) must be positive, got {ps.tolist()}")
    rows, cols = int(required(ds, "Rows", where)), int(required(ds, "Columns", where))
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    axes, uvec = image_axes(iop[:3], iop[3:], where)
    un = uvec[0]
    if nf > 1:
        off = floats(required(ds, "GridFrameOffsetVector", where), None, "GridFrameOffsetVector (3004,000C)", where)
        if off.size != nf:
            raise ValueError(f"{where}: GridFrameOffsetVector (3004,000C) has {off.size} values for "
                             f"NumberOfFrames (0028,0008) = {nf}; the grid is inconsistent")
        if off[0] != 0:  # absolute z (PS3.3 C.8.8.3.2), only for an axial grid
            if abs(abs(un[2]) - 1) > 1e-6:
                raise ValueError(f"{where}: GridFrameOffsetVector (3004,000C) starts at {off[0]:g} (absolute "
                                 "coordinates), which is only defined for an axial dose grid")
            off = un[2] * (off - ipp[2])
        order = np.argsort(off, kind="stable")
        d_off = np.diff(off[order])
        step = float(np.median(d_off))
        if step <= 0 or np.any(np.abs(d_off - step) > max(0.01, 1e-3 * step)):
            raise ValueError(f"{where}: GridFrameOffsetVector (3004,000C) is not uniformly spaced "
                             f"({np.round(off, 3).tolist()}); rtlab needs a regular dose grid")
        ipp0 = ipp + off[order[0]] * un
    else:
        order = np.array([0])
        thick = ds.get("SliceThickness", None)
        step = float(thick) if thick not in (None, "") and float(thick) > 0 else float(min(ps))
        ipp0 = ipp
    return axes, uvec, ipp0, order, step, ps, rows, cols, nf


def read_rtdose(path) -> RTDose:
    """Read an RTDOSE file (see the module docstring).

    Raises
    ------
    ValueError
        Not a file, not DICOM, not an RTDOSE, a required tag missing or malformed (named with its
        tag number), an oblique grid, an inconsistent or non-uniform frame-offset vector, pixel
        data of the wrong size, or DoseUnits other than GY/RELATIVE.
    """
    ds = read_dicom_file(path, "rtdose", "RTDOSE", RT_DOSE_STORAGE)
    p = Path(path)
    where = p.name
    axes, uvec, ipp0, order, step, ps, rows, cols, nf = _grid_of(ds, where)
    scaling = float(floats(required(ds, "DoseGridScaling", where), 1, "DoseGridScaling (3004,000E)", where)[0])
    if scaling <= 0:
        raise ValueError(f"{where}: DoseGridScaling (3004,000E) must be positive, got {scaling:g}")
    units = str(required(ds, "DoseUnits", where)).strip().upper()
    if units not in ("GY", "RELATIVE"):
        raise ValueError(f"{where}: DoseUnits (3004,0002) is {units!r}; rtlab reads GY or RELATIVE")
    if "PixelData" not in ds:
        raise ValueError(f"{where}: required DICOM tag PixelData (7FE0,0010) is missing")
    try:
        px = np.asarray(ds.pixel_array)
    except Exception as e:
        raise ValueError(f"{where}: cannot decode the pixel data ({type(e).__name__}: {e})") from None
    if px.size != nf * rows * cols:
        raise ValueError(f"{where}: the pixel data hold {px.size} values, but NumberOfFrames x Rows x Columns = "
                         f"{nf} x {rows} x {cols}")
    vol = px.reshape(nf, rows, cols)[order].astype(np.float64) * scaling
    dose, grid = assemble(vol, ipp0, axes, uvec, (step, float(ps[0]), float(ps[1])))
    if not np.all(np.isfinite(dose)):
        raise ValueError(f"{where}: the dose holds non-finite values")
    plan_uid = ""
    beams = []
    for r in ds.get("ReferencedRTPlanSequence", []) or []:
        plan_uid = plan_uid or str(r.get("ReferencedSOPInstanceUID", ""))
        for fg in r.get("ReferencedFractionGroupSequence", []) or []:
            for b in fg.get("ReferencedBeamSequence", []) or []:
                if "ReferencedBeamNumber" in b:
                    beams.append(int(b.ReferencedBeamNumber))
    ss_uid = ""
    for r in ds.get("ReferencedStructureSetSequence", []) or []:
        ss_uid = ss_uid or str(r.get("ReferencedSOPInstanceUID", ""))
    dvhs = []
    for k, item in enumerate(ds.get("DVHSequence", []) or []):
        d = _read_dvh(item, f"{where} (DVHSequence item {k})")
        if d is not None:
            dvhs.append(d)
    return RTDose(p, dose, grid, units, str(ds.get("DoseType", "") or ""), str(ds.get("DoseSummationType", "") or ""),
                  dvhs, str(ds.get("FrameOfReferenceUID", "") or ""), str(ds.get("SOPInstanceUID", "") or ""),
                  plan_uid, ss_uid, beams)


def _read_dvh(item, where: str) -> TPSDVH | None:
    refs = required(item, "DVHReferencedROISequence", where)
    roi = int(required(refs[0], "ReferencedROINumber", where))
    typ = str(required(item, "DVHType", where)).upper()
    if typ not in ("CUMULATIVE", "DIFFERENTIAL"):
        warnings.warn(f"{where}: DVHType (3004,0001) {typ!r} is not read (CUMULATIVE or DIFFERENTIAL); skipped",
                      stacklevel=3)
        return None
    vu = str(required(item, "DVHVolumeUnits", where)).upper()
    if vu not in ("CM3", "PERCENT"):
        warnings.warn(f"{where}: DVHVolumeUnits (3004,0054) {vu!r} is not read (CM3 or PERCENT); skipped", stacklevel=3)
        return None
    scale = float(floats(required(item, "DVHDoseScaling", where), 1, "DVHDoseScaling (3004,0052)", where)[0])
    data = floats(required(item, "DVHData", where), None, "DVHData (3004,0058)", where)
    if data.size % 2 or data.size == 0:
        raise ValueError(f"{where}: DVHData (3004,0058) must hold pairs of bin width and volume, got {data.size} numbers")
    n = int(item.get("DVHNumberOfBins", data.size // 2) or data.size // 2)
    if n != data.size // 2:
        raise ValueError(f"{where}: DVHNumberOfBins (3004,0056) is {n} but DVHData (3004,0058) holds {data.size // 2} bins")
    widths = data[0::2] * scale
    if np.any(widths <= 0):
        raise ValueError(f"{where}: DVHData (3004,0058) has a bin width <= 0")

    def opt(kw):
        v = item.get(kw, None)
        return None if v in (None, "") else float(v)

    return TPSDVH(roi, typ, str(item.get("DoseUnits", "GY") or "GY").upper(), vu, np.r_[0.0, np.cumsum(widths)],
                  data[1::2], opt("DVHMinimumDose"), opt("DVHMaximumDose"), opt("DVHMeanDose"))


def sum_rtdoses(doses: list[RTDose]) -> RTDose:
    """The sum of several RTDOSE files on one grid (e.g. one file per beam); errors name the odd file."""
    if not doses:
        raise ValueError("rtdose is empty; give at least one RTDOSE file")
    first = doses[0]
    total = first.dose.copy()
    for d in doses[1:]:
        if not d.grid.is_same(first.grid, atol=1e-3):
            raise ValueError(f"rtdose {d.path.name} is on another grid ({d.grid}) than {first.path.name} ({first.grid}); "
                             "RTDOSE files can only be summed on one grid")
        if d.units != first.units:
            raise ValueError(f"rtdose {d.path.name} has DoseUnits {d.units}, {first.path.name} {first.units}")
        if d.frame_of_reference_uid and first.frame_of_reference_uid and \
                d.frame_of_reference_uid != first.frame_of_reference_uid:
            raise ValueError(f"rtdose {d.path.name} has another FrameOfReferenceUID (0020,0052) than {first.path.name}")
        total += d.dose
    if len(doses) == 1:
        return first
    return RTDose(first.path, total, first.grid, first.units, first.dose_type, "SUM of " + ", ".join(
        d.summation_type or "?" for d in doses), [], first.frame_of_reference_uid, first.sop_instance_uid,
        first.plan_uid, first.structure_set_uid, sum((d.beam_numbers for d in doses), []))


def add_dvh_sequence(path, dvhs, structure_set_uid: str | None = None) -> Path:
    """Write cumulative DVHs (Gy, cc) into an RTDOSE file's ``DVHSequence`` (atomically).

    Parameters
    ----------
    path : path-like
        An RTDOSE file (rewritten).
    dvhs : mapping ROI number -> (edges, cum_cc) or (edges, cum_cc, dmin, dmax, dmean)
        ``edges`` (n + 1,) bin edges from 0 Gy, ``cum_cc`` (n,) volume receiving at least each
        lower edge.
    structure_set_uid : str, optional
        SOP Instance UID of the RTSTRUCT the ROI numbers belong to
        (``ReferencedStructureSetSequence``, required with a DVHSequence).
    """
    ds = read_dicom_file(path, "rtdose", "RTDOSE", RT_DOSE_STORAGE)
    items = []
    for roi, entry in dvhs.items():
        edges, cum = np.asarray(entry[0], float), np.asarray(entry[1], float)
        if edges.size != cum.size + 1 or np.any(np.diff(edges) <= 0) or edges[0] != 0:
            raise ValueError(f"DVH of ROI {roi}: edges must be {cum.size + 1} increasing doses from 0 Gy")
        it = dataset.Dataset()
        ref = dataset.Dataset()
        ref.ReferencedROINumber = int(roi)
        ref.DVHROIContributionType = "INCLUDED"
        it.DVHReferencedROISequence = sequence.Sequence([ref])
        it.DVHType = "CUMULATIVE"
        it.DoseUnits = "GY"
        it.DoseType = "PHYSICAL"
        it.DVHDoseScaling = "1"
        it.DVHVolumeUnits = "CM3"
        it.DVHNumberOfBins = int(cum.size)
        data = np.empty(2 * cum.size)
        data[0::2] = np.diff(edges)
        data[1::2] = cum
        text = [ds_num(v) for v in data]
        n_bytes = sum(len(v) + 1 for v in text) - 1
        if n_bytes > 0xFFFE:
            raise ValueError(f"DVH of ROI {roi}: {cum.size} bins make DVHData (3004,0058) {n_bytes} bytes long, more "
                             "than the 65534 a DS element may hold in explicit VR; use wider bins (about 1900 at most)")
        it.DVHData = text
        if len(entry) >= 5:
            it.DVHMinimumDose, it.DVHMaximumDose, it.DVHMeanDose = (ds_num(v) for v in entry[2:5])
        items.append(it)
    ds.DVHSequence = sequence.Sequence(items)
    if structure_set_uid:
        r = dataset.Dataset()
        r.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        r.ReferencedSOPInstanceUID = structure_set_uid
        ds.ReferencedStructureSetSequence = sequence.Sequence([r])
    return write_dataset(ds, Path(path))
