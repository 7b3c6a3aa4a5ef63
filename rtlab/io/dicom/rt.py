"""A planning system's dose and structures, with or without the CT: :func:`load_dicom_rt`.

Without a CT series the RTSTRUCT's contours are rasterised on the RTDOSE grid with sub-voxel
resolution (:func:`rtlab.io.dicom.contours.subvoxel_mask`: ``supersample**2`` sub-pixels per dose
voxel in the plane, at most 1 mm wide by default, and exact slab overlaps along z), so a small structure keeps its
volume; :func:`rtlab.evaluate.dose_volume.score_dicom_rt` then samples the dose at the inside
sub-voxel centres. With a CT series (``ct=``) the structures are rasterised on the CT grid at
the voxel centres (``supersample=1``, as :func:`rtlab.io.load_dicom` does) and the dose is
resampled (trilinear) onto the CT voxels that lie inside the dose grid.

Structure names are kept exactly as the RTSTRUCT spells them (a repeated name gets ``_2``,
``_3``, ... and a warning). A structure partly outside the dose grid is scored over its inside
part and reports the rest as ``outside_cc``; one wholly outside is an error naming the file,
the ROI and the extents (``outside='skip'`` leaves it out with a warning instead).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...core.case import Case
from ...core.geometry import Grid, Structure, StructureSet, resample
from ...core.subvoxel import SubvoxelMask
from .common import RT_STRUCTURE_SET_STORAGE
from .contours import ROI, plane_spacing, read_rois, roi_volume, subvoxel_mask
from .dose_file import RTDose, read_dicom_file, read_rtdose, sum_rtdoses
from .read import load_dicom

__all__ = ["DicomRT", "RTStructure", "load_dicom_rt", "auto_supersample", "OUTSIDE", "SUBPIXEL_MM"]

#: Accepted values of ``outside`` in :func:`load_dicom_rt`.
OUTSIDE = ("error", "skip")


@dataclass
class RTStructure:
    """One RTSTRUCT ROI on the grid the statistics use.

    Attributes
    ----------
    roi : ROI
        Number, exact name, interpreted type, kind, colour and contours.
    subvoxels : SubvoxelMask
        Inside sub-voxels of the statistics grid (``rt.score_grid``).
    total_cc : float
        Volume of the contours' prism model (:func:`rtlab.io.dicom.contours.roi_volume`).
    outside_cc : float
        Part of ``total_cc`` outside the dose grid.
    thickness_mm : float
        Slab thickness of its contour planes (its own plane spacing, else ``rt.thickness_mm``).
    """

    roi: ROI
    subvoxels: SubvoxelMask
    total_cc: float
    outside_cc: float = 0.0
    thickness_mm: float = 0.0

    @property
    def name(self) -> str:
        return self.roi.name

    @property
    def kind(self) -> str:
        return self.roi.kind

    @property
    def number(self) -> int:
        return self.roi.number

    @property
    def color(self):
        return self.roi.color


@dataclass
class DicomRT:
    """What :func:`load_dicom_rt` read.

    Attributes
    ----------
    rtdose : RTDose
        The dose file (or the sum of several) on its own grid, ``rtdose.units`` GY or RELATIVE.
    structures : list of RTStructure
        The ROIs with a volume inside the dose grid, in RTSTRUCT order.
    score_dose, score_grid : ndarray, Grid
        The dose the statistics sample and its grid: the RTDOSE's own without CT, the CT grid
        (dose resampled, trilinear) with CT.
    supersample : int
        Sub-voxels per voxel and axis of the structures (1 with CT).
    thickness_mm : float
        Slab thickness for single-plane ROIs (the smallest plane spacing of the others).
    tps_dvhs : dict name -> TPSDVH
        The RTDOSE's ``DVHSequence`` entries matched to structure names by ROI number.
    points : dict name -> ndarray (n, 3)
        ``POINT`` ROIs (``(z, y, x)`` mm), e.g. isocentre markers.
    case : Case or None
        The CT case (with CT): CT, density and the structures as voxel-centre masks.
    files : dict
        ``rtdose`` (list), ``rtstruct``, ``ct`` paths as given.
    frame_of_reference_uid : str
    """

    rtdose: RTDose
    structures: list
    score_dose: np.ndarray
    score_grid: Grid
    supersample: int
    thickness_mm: float
    tps_dvhs: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    case: Case | None = None
    files: dict = field(default_factory=dict)
    frame_of_reference_uid: str = ""

    @property
    def dose(self) -> np.ndarray:
        """The RTDOSE's dose on its own grid."""
        return self.rtdose.dose

    @property
    def grid(self) -> Grid:
        """The RTDOSE's grid."""
        return self.rtdose.grid

    @property
    def units(self) -> str:
        return self.rtdose.units

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.structures]

    def structure(self, name: str) -> RTStructure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"no structure {name!r}; the structures are {self.names}")

    def structure_set(self, threshold: float = 0.5) -> StructureSet:
        """The structures as boolean masks on ``score_grid`` (voxels at least ``threshold`` inside).

        For display and for the mask-based metrics; names that rtlab cannot hold (empty after
        stripping) are replaced by ``ROI_<number>``, empty masks are allowed.
        """
        ss = StructureSet(self.score_grid)
        for s in self.structures:
            name = s.name if s.name.strip() else f"ROI_{s.number}"
            ss.add(Structure(name, s.subvoxels.mask(threshold), self.score_grid, kind=s.kind, color=s.color,
                             allow_empty=True))
        return ss

    def summary(self) -> str:
        lines = [f"RTDOSE {self.rtdose.path.name}: {self.grid.shape} voxels of {self.grid.spacing} mm, "
                 f"max {self.dose.max():.4g} {self.units}, {self.rtdose.summation_type or '?'}"]
        for s in self.structures:
            extra = f", {s.outside_cc:.2f} cc outside the dose grid" if s.outside_cc > 1e-6 else ""
            lines.append(f"  {s.name!r} ({s.kind}): {s.subvoxels.volume_cc:.3f} cc{extra}")
        return "\n".join(lines)


def _describe(roi: ROI) -> str:
    b = roi.bounds()
    return (f"z {b[0, 0]:.1f}..{b[0, 1]:.1f}, y {b[1, 0]:.1f}..{b[1, 1]:.1f}, x {b[2, 0]:.1f}..{b[2, 1]:.1f} mm")


def _grid_text(g: Grid) -> str:
    b = g.bounds
    return f"z {b[0, 0]:.1f}..{b[0, 1]:.1f}, y {b[1, 0]:.1f}..{b[1, 1]:.1f}, x {b[2, 0]:.1f}..{b[2, 1]:.1f} mm"


def _for_uids(ds) -> set[str]:
    out = {str(r.get("FrameOfReferenceUID", "")) for r in ds.get("ReferencedFrameOfReferenceSequence", []) or []}
    out |= {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", []) or []}
    out.discard("")
    return out


#: Largest in-plane sub-pixel (mm) of the default ``supersample`` in :func:`load_dicom_rt`.
SUBPIXEL_MM = 1.0


def auto_supersample(grid: Grid) -> int:
    """Default sub-pixels per voxel and axis: at least 5, and sub-pixels of at most :data:`SUBPIXEL_MM`."""
    return int(min(20, max(5, int(np.ceil(max(grid.spacing[1:]) / SUBPIXEL_MM - 1e-9)))))


def load_dicom_rt(rtdose, rtstruct, ct=None, *, supersample: int | None = None, outside: str = "error",
                  thickness_mm: float | None = None, progress: bool = False) -> DicomRT:
    """Read a planning system's RTDOSE and RTSTRUCT (and optionally the CT) for scoring.

    Parameters
    ----------
    rtdose : path-like or list of path-like
        The RTDOSE file; several files on one grid (e.g. one per beam) are summed.
    rtstruct : path-like
        The RTSTRUCT file.
    ct : path-like, optional
        Folder of the CT series. Without it the structures are rasterised on the dose grid with
        sub-voxel resolution; with it on the CT grid (voxel centres).
    supersample : int, optional
        In-plane sub-pixels per dose voxel and axis without CT (``s``); default
        :func:`auto_supersample`: at least 5 and sub-pixels no larger than 1 mm (5 on a 3 mm
        grid, 10 on a 10 mm grid; an odd ``s`` puts the middle one on the voxel centre); along z
        the slab overlaps are exact. Measured volume errors are in ``docs/io.md``.
    outside : {'error', 'skip'}
        A structure wholly outside the dose grid raises ``ValueError`` (default) or is left out
        with a warning.
    thickness_mm : float, optional
        Slab thickness of every contour plane; default each ROI's own plane spacing (median step,
        the CT slice thickness), for a single-plane ROI the smallest spacing of the others, else
        the dose grid's z spacing.
    progress : bool
        A tqdm bar over the structures.

    Returns
    -------
    DicomRT

    Raises
    ------
    ValueError
        A file that is missing, not DICOM or of the wrong modality; a missing or malformed tag
        (named with the file and its tag number); an oblique or non-uniform dose grid; RTDOSE
        files on different grids; a structure outside the dose grid (with ``outside='error'``);
        no structure with a volume inside the dose grid.
    """
    if outside not in OUTSIDE:
        raise ValueError(f"outside must be one of {OUTSIDE}, got {outside!r}")
    if supersample is not None and (int(supersample) != supersample or supersample < 1):
        raise ValueError(f"supersample must be a positive integer (sub-voxels per voxel and axis), got {supersample!r}")
    paths = list(rtdose) if isinstance(rtdose, (list, tuple)) else [rtdose]
    dose = sum_rtdoses([read_rtdose(p) for p in paths])
    rs_path = Path(rtstruct)
    ds = read_dicom_file(rs_path, "rtstruct", "RTSTRUCT", RT_STRUCTURE_SET_STORAGE)
    where = rs_path.name
    rois = read_rois(ds, where)
    fors = _for_uids(ds)
    if dose.frame_of_reference_uid and fors and dose.frame_of_reference_uid not in fors:
        warnings.warn(f"{where}: FrameOfReferenceUID (0020,0052) {sorted(fors)} differs from the RTDOSE's "
                      f"{dose.frame_of_reference_uid!r} ({dose.path.name}); the files may not belong together",
                      stacklevel=2)
    t_all = thickness_mm if thickness_mm is not None else plane_spacing(rois)
    if t_all is None:
        t_all = dose.grid.spacing[0]
        if any(r.has_volume for r in rois):
            warnings.warn(f"{where}: every ROI has a single contour plane; slab thickness taken as the dose grid's "
                          f"z spacing {t_all:g} mm (pass thickness_mm=)", stacklevel=2)
    case = None
    if ct is not None:
        case = load_dicom(ct, rtstruct=rs_path)
        sgrid = case.grid
        factor = 1
        sdose = resample(dose.dose, dose.grid, sgrid, order=1, fill=0.0)
        inside_dose = _inside_mask(sgrid, dose.grid)
    else:
        factor = auto_supersample(dose.grid) if supersample is None else int(supersample)
        sgrid, sdose, inside_dose = dose.grid, dose.dose, None
    structures: list[RTStructure] = []
    points = {}
    used: set[str] = set()
    it = tqdm(rois, desc="rasterising structures", leave=False) if progress else rois
    for roi in it:
        if roi.points.size:
            points[roi.name] = roi.points
        if not roi.has_volume:
            if not roi.points.size:
                warnings.warn(f"{where}: ROI {roi.name!r} (ROINumber {roi.number}) has no closed planar contours; "
                              "skipped", stacklevel=2)
            continue
        t = thickness_mm if thickness_mm is not None else (roi.spacing() or t_all)
        total, inside = roi_volume(roi, t, dose.grid)
        sm = subvoxel_mask(roi, sgrid, t, factor)
        if sm is not None and inside_dose is not None:
            sm = _restrict(sm, inside_dose)
        if sm is None or inside <= 1e-9:
            msg = (f"{where}: ROI {roi.name!r} (ROINumber {roi.number}) lies outside the dose grid of "
                   f"{dose.path.name}: its ContourData (3006,0050) spans {_describe(roi)}, the dose grid "
                   f"(ImagePositionPatient, PixelSpacing, GridFrameOffsetVector) covers {_grid_text(dose.grid)}")
            if outside == "error":
                raise ValueError(msg + "; pass outside='skip' (rtlab score --skip-outside) to leave it out")
            warnings.warn(msg + "; left out", stacklevel=2)
            continue
        outside_cc = max(0.0, total - inside)
        if outside_cc > 1e-3 * max(total, 1e-9):
            warnings.warn(f"{where}: ROI {roi.name!r}: {outside_cc:.3g} cc of {total:.3g} cc lie outside the dose "
                          "grid; its statistics cover the inside part", stacklevel=2)
        if roi.name in used:
            base, n = roi.name, 2
            while f"{base}_{n}" in used:
                n += 1
            warnings.warn(f"{where}: ROI name {base!r} is used twice; the second is called {base}_{n}", stacklevel=2)
            roi.name = f"{base}_{n}"
        used.add(roi.name)
        structures.append(RTStructure(roi, sm, total, outside_cc, float(t)))
    if not structures:
        raise ValueError(f"{where}: no structure has a volume inside the dose grid of {dose.path.name} "
                         f"({_grid_text(dose.grid)}); check that the files belong together")
    by_number = {s.number: s.name for s in structures}
    tps = {}
    for d in dose.dvhs:
        nm = by_number.get(d.roi_number)
        if nm is None:
            warnings.warn(f"{dose.path.name}: DVHSequence names ROINumber {d.roi_number}, which is not a scored "
                          f"structure of {where}; its DVH is not compared", stacklevel=2)
            continue
        tps[nm] = d
    return DicomRT(dose, structures, sdose, sgrid, factor, float(t_all), tps, points, case,
                   {"rtdose": [str(p) for p in paths], "rtstruct": str(rs_path), "ct": None if ct is None else str(ct)},
                   dose.frame_of_reference_uid)


def _inside_mask(grid: Grid, dose_grid: Grid) -> np.ndarray:
    """Voxels of ``grid`` whose centre lies inside ``dose_grid``'s voxel edges."""
    b = dose_grid.bounds
    ax = grid.axes()
    m = [(a >= lo - 1e-6) & (a <= hi + 1e-6) for a, (lo, hi) in zip(ax, b)]
    return m[0][:, None, None] & m[1][None, :, None] & m[2][None, None, :]


def _restrict(sm: SubvoxelMask, keep: np.ndarray) -> SubvoxelMask | None:
    """``sm`` (factor 1, CT grid) without the voxels outside ``keep`` (the dose grid's extent).

    ``keep`` is a box, so the rasters are cut to its in-plane part and the layers to its slices.
    """
    j0, i0 = sm.start
    nj, ni = sm.box_shape
    inplane = keep.any(axis=0)[j0:j0 + nj, i0:i0 + ni]
    slices = keep.any(axis=(1, 2))
    rasters = [sm.raster(p) & inplane for p in range(len(sm.rasters))]
    layers = [L for L in sm.layers if slices[int(L[0])] and rasters[int(L[1])].any()]
    if not layers:
        return None
    return SubvoxelMask.from_rasters(sm.grid, sm.factor, sm.start, rasters, layers)
