"""DICOM in and out: CT series + RTSTRUCT to a :class:`~rtlab.core.case.Case`; RTDOSE out and in.

Geometry (DICOM PS3.3 C.7.6.2, Image Plane module)
--------------------------------------------------
A CT slice's pixel ``(row j, column i)`` has its centre at

    P = ImagePositionPatient + i * PixelSpacing[1] * r + j * PixelSpacing[0] * c

with ``r``, ``c`` the row and column direction cosines (``ImageOrientationPatient``). Slices are
sorted by the projection of their ``ImagePositionPatient`` on the normal ``n = r x c``. Only
axis-aligned orientations are supported (every cosine is 0 or +-1, any permutation); the
volume is transposed and flipped so that the rtlab :class:`~rtlab.core.geometry.Grid` is ``(z, y, x)``
with positive spacing, and ``Grid.origin`` is the world position of the voxel with the lowest
coordinates. Oblique series raise ``ValueError``.

Structures (C.8.8.6, ROI Contour module)
----------------------------------------
Each ``CLOSED_PLANAR`` contour is mapped from patient coordinates into continuous voxel
indices and rasterised in its plane with the even-odd rule (a voxel is inside when a ray from
its centre crosses the ROI's contours of that plane an odd number of times), so inner contours
cut holes. Contours are snapped to the nearest slice. ``RTROIInterpretedType`` PTV/CTV/GTV ->
``'target'``, EXTERNAL -> ``'body'``, anything else -> ``'oar'`` (a missing type falls back to
the name: BODY/External/... -> ``'body'``).

Requires ``pydicom`` (version 3, the ``[dicom]`` extra), bound through :func:`rtlab._lazy.load`: this
package imports without it.

Modules: :mod:`~.read` (:func:`load_dicom`), :mod:`~.write` (:func:`save_dicom_ct`,
:func:`save_rtstruct`, :func:`save_dicom`), :mod:`~.rtdose` (:func:`save_rtdose`,
:func:`load_rtdose`), :mod:`~.polygons` (contours <-> masks), :mod:`~.common` (shared helpers);
for a planning system's files: :mod:`~.rt` (:func:`load_dicom_rt`: RTDOSE + RTSTRUCT, with or
without CT), :mod:`~.contours` (ROIs, volumes, sub-voxel masks, :func:`save_rois`),
:mod:`~.dose_file` (:func:`read_rtdose` with the DVHSequence) and :mod:`~.rtplan`
(:func:`load_rtplan`, :func:`save_rtplan`).
"""

from .common import CT_IMAGE_STORAGE, RT_DOSE_STORAGE, RT_STRUCTURE_SET_STORAGE
from .contours import ROI, read_rois, save_rois
from .dose_file import RTDose, TPSDVH, add_dvh_sequence, read_rtdose
from .polygons import mask_to_polygons, rasterize_polygons
from .read import load_dicom
from .rt import DicomRT, RTStructure, load_dicom_rt
from .rtdose import load_rtdose, save_rtdose
from .rtplan import RT_PLAN_STORAGE, PlanBeam, PlanControlPoint, RTPlan, load_rtplan, save_rtplan
from .write import save_dicom, save_dicom_ct, save_rtstruct

__all__ = [
    "load_dicom",
    "save_dicom_ct",
    "save_rtstruct",
    "save_dicom",
    "save_rtdose",
    "load_rtdose",
    "rasterize_polygons",
    "mask_to_polygons",
    "load_dicom_rt",
    "DicomRT",
    "RTStructure",
    "read_rtdose",
    "RTDose",
    "TPSDVH",
    "add_dvh_sequence",
    "ROI",
    "read_rois",
    "save_rois",
    "load_rtplan",
    "save_rtplan",
    "RTPlan",
    "PlanBeam",
    "PlanControlPoint",
    "RT_PLAN_STORAGE",
    "CT_IMAGE_STORAGE",
    "RT_DOSE_STORAGE",
    "RT_STRUCTURE_SET_STORAGE",
]
