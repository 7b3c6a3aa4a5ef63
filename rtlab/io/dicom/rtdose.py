"""RTDOSE out and in: a dose (Gy) on a :class:`~rtlab.core.geometry.Grid` as a DICOM RT Dose file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..._util import check_finite
from ...core.geometry import Grid
from ...core.validate import check_dose, check_voxels
from .common import (RT_DOSE_STORAGE, assemble, dataset, ds_num, floats, image_axes, new_rt_dataset, pydicom, read_file,
                     reference_info, require_pydicom, required, sequence, uid, write_dataset)

__all__ = ["save_rtdose", "load_rtdose"]


def save_rtdose(dose, grid: Grid, path, reference=None, plan_uid: str | None = None,
                description: str = "rtlab dose") -> Path:
    """Write a dose distribution as a DICOM RTDOSE file (atomically).

    Axial multi-frame image: ``ImageOrientationPatient`` (1,0,0,0,1,0), frames along +z with
    ``GridFrameOffsetVector`` relative to the first frame, uint32 pixels with
    ``DoseGridScaling = max(dose) / (2**32 - 1)`` (so the quantisation error is at most half a
    scaling step), DoseUnits GY, DoseType PHYSICAL, DoseSummationType PLAN.

    Parameters
    ----------
    dose : ndarray, shape ``grid.shape``
        Dose in Gy ``(z, y, x)``; finite and non-negative.
    grid : Grid
        The dose grid (world coordinates must be those of the CT's frame of reference).
    path : path-like
    reference : Case, pydicom dataset.Dataset(s), CT file path(s) or folder, optional
        Patient, study and frame of reference to attach the dose to (e.g. the case returned by
        :func:`load_dicom`); new UIDs when omitted.
    plan_uid : str, optional
        SOP Instance UID of the RTPLAN to reference (``ReferencedRTPlanSequence``); omitted when
        not given.
    description : str
        SeriesDescription.

    Returns
    -------
    pathlib.Path
    """
    require_pydicom()

    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
    d = np.asarray(grid.check_array("dose", dose), dtype=np.float64)
    check_finite("dose", d)
    if d.size and d.min() < 0:
        raise ValueError(f"dose has negative values (min {d.min():g} Gy); RTDOSE stores non-negative doses, clip first")
    dmax = float(d.max()) if d.size else 0.0
    scaling = dmax / (2**32 - 1) if dmax > 0 else 1.0
    scaling = float(ds_num(scaling))  # exactly the value that is written
    px = np.clip(np.rint(d / scaling), 0, 2**32 - 1).astype("<u4")
    info = reference_info(reference)
    ds = new_rt_dataset(RT_DOSE_STORAGE, uid.generate_uid(), info, "dose", "RTDOSE", 3)
    ds.SeriesDescription = description
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    oz, oy, ox = grid.origin
    ds.ImagePositionPatient = [ds_num(ox), ds_num(oy), ds_num(oz)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [ds_num(dy), ds_num(dx)]
    ds.SliceThickness = ds_num(dz)
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = 0x3004000C
    ds.GridFrameOffsetVector = [ds_num(k * dz) for k in range(nz)]
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = ds_num(scaling)
    if plan_uid:
        ref = dataset.Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
        ref.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = sequence.Sequence([ref])
    ds.PixelData = px.tobytes()
    return write_dataset(ds, Path(path))


def load_rtdose(path) -> tuple[np.ndarray, Grid]:
    """Read a DICOM RTDOSE file.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dose : ndarray of float64, ``(z, y, x)``
        Pixel values times ``DoseGridScaling`` (Gy when DoseUnits is GY; other units warn).
    grid : Grid
        Axis-aligned, positive spacing (flipped/permuted orientations are reordered).

    Raises
    ------
    ValueError
        Not DICOM / not an RTDOSE, a required tag missing (named), oblique orientation,
        non-uniform ``GridFrameOffsetVector``.
    """
    require_pydicom()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path {str(p)!r} does not exist or is not a file")
    ds = read_file(p)
    where = p.name
    if str(ds.get("Modality", "")).upper() != "RTDOSE" and str(ds.get("SOPClassUID", "")) != RT_DOSE_STORAGE:
        raise ValueError(f"{where} is not an RTDOSE file (Modality {ds.get('Modality')!r})")
    iop = floats(required(ds, "ImageOrientationPatient", where), 6, "ImageOrientationPatient", where)
    ipp = floats(required(ds, "ImagePositionPatient", where), 3, "ImagePositionPatient", where)
    ps = floats(required(ds, "PixelSpacing", where), 2, "PixelSpacing", where)
    rows, cols = int(required(ds, "Rows", where)), int(required(ds, "Columns", where))
    scaling = float(floats(required(ds, "DoseGridScaling", where), 1, "DoseGridScaling", where)[0])
    if "PixelData" not in ds:
        raise ValueError(f"{where}: required DICOM tag PixelData (7FE0,0010) is missing")
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    check_voxels((nf, rows, cols), f"{where}: RTDOSE of {nf} frame(s) of {rows} x {cols} pixels")
    units = str(ds.get("DoseUnits", "")).upper()
    if units != "GY":
        warnings.warn(f"{where}: DoseUnits is {units or 'missing'!r}, not GY; values are returned unscaled to Gy", stacklevel=2)
    axes, uvec = image_axes(iop[:3], iop[3:], where)
    un = uvec[0]
    if nf > 1:
        off = floats(required(ds, "GridFrameOffsetVector", where), nf, "GridFrameOffsetVector", where)
        if off[0] != 0:  # absolute z coordinates (allowed for axial dose, PS3.3 C.8.8.3.2)
            if abs(un[2]) != 1:
                raise ValueError(f"{where}: absolute GridFrameOffsetVector is only defined for axial dose grids")
            off = un[2] * (off - ipp[2])
        order = np.argsort(off, kind="stable")
        ds_off = np.diff(off[order])
        step = float(np.median(ds_off))
        if step <= 0 or np.any(np.abs(ds_off - step) > max(0.01, 1e-3 * step)):
            raise ValueError(f"{where}: GridFrameOffsetVector is not uniformly spaced ({off.tolist()}); cannot build a regular grid")
        ipp0 = ipp + off[order[0]] * un
    else:
        order = np.array([0])
        step = float(ds.get("SliceThickness", 0) or 0) or 1.0
        ipp0 = ipp
    try:
        px = np.asarray(ds.pixel_array)
    except Exception as e:
        raise ValueError(f"{where}: cannot decode the pixel data ({type(e).__name__}: {e})") from None
    px = px.reshape(nf, rows, cols)[order]
    vol = px.astype(np.float64) * scaling
    dose, grid = assemble(vol, ipp0, axes, uvec, (step, float(ps[0]), float(ps[1])))
    if units == "GY":
        check_dose(f"{where}: dose", dose, allow_negative=str(ds.get("DoseType", "")).upper() == "ERROR")
    return dose, grid
