"""Reading and writing cases and doses: matRad ``.mat`` phantoms, DICOM, and ``.npz``.

* :func:`load_matrad` / :func:`save_matrad` -- matRad ``ct`` + ``cst`` (MAT v5; v7.3 read with h5py).
* :func:`load_dicom` -- CT series + RTSTRUCT; :func:`save_dicom_ct`, :func:`save_rtstruct`,
  :func:`save_dicom` to export; :func:`save_rtdose` / :func:`load_rtdose` for doses.
* :func:`save_npz` / :func:`load_npz` -- lossless case/dose storage; :func:`load_dose_npz`
  reads the command line's dose files.

See ``docs/io.md``.
"""

from .dicom import (
    load_dicom,
    load_rtdose,
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
    "rasterize_polygons",
    "mask_to_polygons",
    "save_npz",
    "load_npz",
    "load_dose_npz",
    "NpzContents",
]
