"""Reading and writing cases and doses: matRad ``.mat`` phantoms, DICOM, and ``.npz``.

* :func:`load_matrad` / :func:`save_matrad` -- matRad ``ct`` + ``cst`` (MAT v5; v7.3 read with h5py).
* :func:`load_dicom` -- CT series + RTSTRUCT; :func:`save_dicom_ct`, :func:`save_rtstruct`,
  :func:`save_dicom` to export; :func:`save_rtdose` / :func:`load_rtdose` for doses.
* :func:`load_dicom_rt` -- a planning system's RTDOSE + RTSTRUCT (CT optional) for scoring;
  :func:`read_rtdose` (with the DVHSequence), :func:`save_rois` (polygon RTSTRUCTs);
  :func:`load_rtplan` / :func:`save_rtplan` -- RT Plans (beams, control points, jaws, MLC).
* :func:`save_npz` / :func:`load_npz` -- lossless case/dose storage; :func:`load_dose_npz`
  reads the command line's dose files.

See ``docs/io.md``.
"""

from .dicom import (
    ROI,
    DicomRT,
    add_dvh_sequence,
    load_dicom,
    load_dicom_rt,
    load_rtdose,
    load_rtplan,
    read_rtdose,
    save_rois,
    save_rtplan,
    mask_to_polygons,
    rasterize_polygons,
    save_dicom,
    save_dicom_ct,
    save_rtdose,
    save_rtstruct,
)
from .matrad import is_body_name, load_matrad, read_mat, save_matrad
from .matrad_objectives import MatradObjective, goals_from_objectives, matrad_objectives
from .npz import NpzContents, load_dose_npz, load_npz, save_npz

__all__ = [
    "load_matrad",
    "save_matrad",
    "matrad_objectives",
    "goals_from_objectives",
    "MatradObjective",
    "read_mat",
    "is_body_name",
    "load_dicom",
    "save_dicom_ct",
    "save_rtstruct",
    "save_dicom",
    "save_rtdose",
    "load_rtdose",
    "load_dicom_rt",
    "DicomRT",
    "read_rtdose",
    "add_dvh_sequence",
    "ROI",
    "save_rois",
    "load_rtplan",
    "save_rtplan",
    "rasterize_polygons",
    "mask_to_polygons",
    "save_npz",
    "load_npz",
    "load_dose_npz",
    "NpzContents",
]
