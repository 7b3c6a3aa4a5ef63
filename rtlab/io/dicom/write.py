"""Writing a :class:`~rtlab.core.case.Case` as a CT series and an RTSTRUCT (:func:`save_dicom`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.case import Case
from .common import CT_IMAGE_STORAGE, ds_num, floats, image_axes, new_file_dataset, patient_study, uid, write_dataset
from .contours import ROI, save_rois
from .polygons import mask_to_polygons

__all__ = ["save_dicom_ct", "save_rtstruct", "save_dicom"]


def save_dicom_ct(case: Case, directory, orientation=(1, 0, 0, 0, 1, 0), series_description: str | None = None) -> list[Path]:
    """Write the case's CT as a DICOM CT series, one file per slice (each written atomically).

    Parameters
    ----------
    case : Case
        CT numbers are rounded to integer HU and stored as int16 (RescaleSlope 1,
        RescaleIntercept 0).
    directory : path-like
        Output folder (created). Files are named ``CT_0000.dcm``, ...
    orientation : sequence of 6 float
        ``ImageOrientationPatient`` to write, axis-aligned (cosines 0 or +-1); the default is
        the usual axial head-first-supine ``(1, 0, 0, 0, 1, 0)``. Other values (e.g.
        ``(-1, 0, 0, 0, 1, 0)``) write the same volume flipped/permuted, for testing readers.
    series_description : str, optional

    Returns
    -------
    list of pathlib.Path
        The slice files in slice order. Their UIDs are also stored in
        ``case.meta['dicom']`` so :func:`save_rtstruct` / :func:`save_rtdose` can reference them.
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")

    iop = floats(orientation, 6, "orientation", "save_dicom_ct")
    axes, units = image_axes(iop[:3], iop[3:], "orientation")
    grid = case.grid
    vol = np.transpose(case.ct, [a for a, _ in axes])
    for a in range(3):
        if axes[a][1] < 0:
            vol = np.flip(vol, axis=a)
    hu = np.clip(np.rint(vol), -32768, 32767).astype(np.int16)
    sp = [grid.spacing[a] for a, _ in axes]
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    info = dict(case.meta.get("dicom", {})) if isinstance(case.meta.get("dicom"), dict) else {}
    info.pop("SOPInstanceUIDs", None)
    info["FrameOfReferenceUID"] = info.get("FrameOfReferenceUID") or uid.generate_uid()
    info["StudyInstanceUID"] = info.get("StudyInstanceUID") or uid.generate_uid()
    series_uid = uid.generate_uid()
    paths, sops = [], []
    for s in range(vol.shape[0]):
        out_idx = np.zeros(3)
        for a, (ax, sg) in enumerate(axes):
            v = s if a == 0 else 0
            out_idx[ax] = v if sg > 0 else grid.shape[ax] - 1 - v
        pos = grid.index_to_world(out_idx)[::-1]  # x, y, z
        sop = uid.generate_uid()
        ds = new_file_dataset(CT_IMAGE_STORAGE, sop)
        patient_study(ds, info, case.name)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = series_description or f"rtlab {case.name}"
        ds.InstanceNumber = s + 1
        ds.Laterality = ""  # Type 2C/2 attributes of the General Series and CT Image modules (dciodvfy)
        ds.PatientPosition = "HFS"
        ds.AcquisitionNumber = ""
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ImagePositionPatient = [ds_num(v) for v in pos]
        ds.ImageOrientationPatient = [ds_num(v) for v in iop]
        ds.SliceLocation = ds_num(pos @ units[0])
        ds.PixelSpacing = [ds_num(sp[1]), ds_num(sp[2])]
        ds.SliceThickness = ds_num(sp[0])
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "0"
        ds.RescaleType = "HU"
        ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(hu[s]).astype("<i2").tobytes()
        paths.append(write_dataset(ds, d / f"CT_{s:04d}.dcm"))
        sops.append(sop)
    info.update({"SeriesInstanceUID": series_uid, "SOPInstanceUIDs": sops,
                 "PatientID": info.get("PatientID") or case.name,
                 "PatientName": info.get("PatientName") or f"rtlab^{case.name}"})
    case.meta["dicom"] = info
    return paths


def save_rtstruct(case: Case, path, reference=None) -> Path:
    """Write the case's structures as a DICOM RTSTRUCT (atomically).

    Each structure becomes one ROI with axial ``CLOSED_PLANAR`` contours that follow the voxel
    edges of its mask slice by slice (outer boundaries and holes; see
    :func:`mask_to_polygons`), so :func:`load_dicom` gets the mask back exactly. The file is
    written by :func:`~rtlab.io.dicom.contours.save_rois` (one RTSTRUCT writer for masks and
    polygons): ROI numbers 1, 2, ... in structure order, ``RTROIInterpretedType`` and the
    default colour from the structure's kind (:data:`~rtlab.io.dicom.contours.ROI_TYPES`:
    target -> PTV, body -> EXTERNAL, oar -> ORGAN), ``StructureSetLabel`` the case name.

    Parameters
    ----------
    case : Case
    path : path-like
        Output file.
    reference : Case, pydicom dataset.Dataset(s), file path(s) or folder, optional
        The CT series the contours belong to (its frame of reference and UIDs are referenced);
        default ``case.meta['dicom']`` (set by :func:`load_dicom` and :func:`save_dicom_ct`).

    Returns
    -------
    pathlib.Path
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")
    grid = case.grid
    rois = []
    for num, s in enumerate(case.structures.values(), start=1):
        contours = []
        for k in np.nonzero(s.mask.any(axis=(1, 2)))[0]:
            for poly in mask_to_polygons(s.mask[k]):
                world = grid.index_to_world(np.c_[np.full(len(poly), float(k)), poly])  # z, y, x (mm)
                contours.append((float(world[0, 0]), world[:, 1:]))
        rois.append(ROI(num, s.name, kind=s.kind, color=s.color, contours=contours))
    return save_rois(rois, path, reference=case if reference is None else reference, label=case.name)


def save_dicom(case: Case, directory, orientation=(1, 0, 0, 0, 1, 0)) -> Path:
    """Write the CT series (:func:`save_dicom_ct`) and ``RS.dcm`` (:func:`save_rtstruct`) into ``directory``."""
    d = Path(directory)
    save_dicom_ct(case, d, orientation=orientation)
    save_rtstruct(case, d / "RS.dcm")
    return d
