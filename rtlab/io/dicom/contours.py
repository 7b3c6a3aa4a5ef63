"""RTSTRUCT regions of interest as planar contours, their volumes, and sub-voxel masks on any grid.

Structure model (the one every DVH program that reads RTSTRUCTs uses)
--------------------------------------------------------------------
An ROI's ``CLOSED_PLANAR`` contours lie in axial planes ``z_k`` (DICOM PS3.3 C.8.8.6). The
contours of one plane combine by the even-odd rule (a contour inside another cuts a hole), and
each plane stands for a slab of thickness ``t`` centred on it: the structure is the stack of
prisms ``{(x, y, z) : (x, y) in plane k, |z - z_k| <= t/2}``. ``t`` is the spacing of the contour
planes (the median difference of the distinct ``z`` of all contours in the RTSTRUCT, i.e. the
CT slice thickness the contours were drawn on), so the volume is ``sum_k area_k * t``
(:func:`roi_volume`, exact from the polygons by the shoelace formula). A point at height ``z``
belongs to the nearest plane when it lies within ``t/2`` of it; a structure whose planes skip a
slice therefore has a gap there, as drawn.

Sub-voxel rasterisation (:func:`subvoxel_mask`)
-----------------------------------------------
On the target grid (an RTDOSE grid, say) the slabs are intersected exactly with the grid's
slices along z, and each plane's polygons are rasterised on an in-plane lattice ``s`` times
finer than the grid (even-odd test at the sub-pixel centres by
:func:`~rtlab.io.dicom.polygons.rasterize_polygons`); see
:class:`rtlab.core.subvoxel.SubvoxelMask`. Volumes and DVHs then count sub-pixels of ``1/s**2``
voxel area times the exact slab overlap, so a structure smaller than a voxel still gets its
volume: along z there is no discretisation, in the plane the error is that of an ``s``-times
finer raster (measured in ``docs/io.md``).

ROIs without closed planar contours (``POINT`` markers such as isocentres) keep their points;
contours that are not axial (a sagittal or oblique plane) are skipped with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from pathlib import Path

from ...core.geometry import Grid
from ...core.subvoxel import SubvoxelMask
from ..matrad import is_body_name
from .common import (CT_IMAGE_STORAGE, RT_STRUCTURE_SET_STORAGE, dataset, ds_num, floats, new_rt_dataset, reference_info,
                     require_pydicom, required, sequence, uid, write_dataset)
from .polygons import rasterize_polygons

__all__ = ["ROI", "read_rois", "plane_spacing", "roi_volume", "subvoxel_mask", "kind_of", "clip_polygon",
           "polygon_area", "save_rois", "TARGET_TYPES", "ROI_TYPES", "ROI_COLORS"]

#: RTROIInterpretedType values read as targets.
TARGET_TYPES = ("PTV", "CTV", "GTV")


def kind_of(roi_type: str, name: str) -> str:
    """rtlab kind of an ROI: PTV/CTV/GTV -> 'target', EXTERNAL -> 'body', else 'oar'.

    Without an ``RTROIInterpretedType`` a body-like name (BODY, External, ...) gives 'body'.
    """
    t = (roi_type or "").strip().upper()
    if t in TARGET_TYPES:
        return "target"
    if t == "EXTERNAL" or (not t and is_body_name(name)):
        return "body"
    return "oar"


@dataclass
class ROI:
    """One region of interest of an RTSTRUCT.

    Attributes
    ----------
    number : int
        ``ROINumber``.
    name : str
        ``ROIName`` exactly as stored (spaces and case kept).
    interpreted_type : str
        ``RTROIInterpretedType`` ('' when absent).
    kind : str
        'target', 'oar' or 'body' (:func:`kind_of`).
    color : tuple of float or None
        ``ROIDisplayColor`` scaled to [0, 1].
    contours : list of (float, ndarray (m, 2))
        Axial closed planar contours: ``(z, vertices (y, x))`` in mm, sorted by ``z``.
    points : ndarray (n, 3)
        ``(z, y, x)`` of ``POINT`` contours (markers); empty otherwise.
    skipped : int
        Contours that were not closed planar axial polygons (left out).
    """

    number: int
    name: str
    interpreted_type: str = ""
    kind: str = "oar"
    color: tuple | None = None
    contours: list = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    skipped: int = 0

    @property
    def planes(self) -> np.ndarray:
        """The distinct contour heights ``z`` (mm), increasing."""
        return np.unique(np.round([z for z, _ in self.contours], 4)) if self.contours else np.zeros(0)

    @property
    def has_volume(self) -> bool:
        return bool(self.contours)

    def spacing(self) -> float | None:
        """Median step (mm) between the ROI's distinct contour planes; None for a single plane."""
        z = self.planes
        return float(np.median(np.diff(z))) if z.size > 1 else None

    def bounds(self) -> np.ndarray:
        """``(3, 2)`` array of ``[min, max]`` of the contour vertices in ``(z, y, x)`` mm."""
        if not self.contours:
            raise ValueError(f"ROI {self.name!r} has no closed planar contours")
        zs = np.array([z for z, _ in self.contours])
        yx = np.concatenate([p for _, p in self.contours])
        return np.array([[zs.min(), zs.max()], [yx[:, 0].min(), yx[:, 0].max()], [yx[:, 1].min(), yx[:, 1].max()]])


#: RTROIInterpretedType written by :func:`save_rois` (and so :func:`rtlab.io.save_rtstruct`) for
#: each kind (unless the ROI names its own).
ROI_TYPES = {"target": "PTV", "body": "EXTERNAL", "oar": "ORGAN"}

#: ROIDisplayColor (RGB in [0, 1]) written by :func:`save_rois` for each kind (unless the ROI has its own).
ROI_COLORS = {"target": (1.0, 0.0, 0.0), "body": (0.0, 1.0, 0.0), "oar": (0.0, 0.5, 1.0)}


def read_rois(ds, where: str) -> list[ROI]:
    """The ROIs of an RTSTRUCT dataset, in ``StructureSetROISequence`` order.

    Raises
    ------
    ValueError
        A required tag (``StructureSetROISequence``, ``ROINumber``, ``ROIName``,
        ``ROIContourSequence``, ``ReferencedROINumber``, ``ContourData``) is missing, or
        ``ContourData`` is not a multiple of 3 numbers; the message names ``where`` and the tag.
    """
    rois: list[ROI] = []
    by_number: dict[int, ROI] = {}
    for n_item, item in enumerate(required(ds, "StructureSetROISequence", where)):
        w = f"{where} (StructureSetROISequence item {n_item})"
        num = int(required(item, "ROINumber", w))
        name = str(required(item, "ROIName", w))
        if num in by_number:
            raise ValueError(f"{w}: ROINumber {num} is used twice; ROI numbers must be unique")
        roi = ROI(num, name)
        rois.append(roi)
        by_number[num] = roi
    for o in ds.get("RTROIObservationsSequence", []) or []:
        if "ReferencedROINumber" in o and int(o.ReferencedROINumber) in by_number:
            by_number[int(o.ReferencedROINumber)].interpreted_type = str(o.get("RTROIInterpretedType", "") or "")
    for roi in rois:
        roi.kind = kind_of(roi.interpreted_type, roi.name)
    for n_item, rc in enumerate(required(ds, "ROIContourSequence", where)):
        w = f"{where} (ROIContourSequence item {n_item})"
        num = int(required(rc, "ReferencedROINumber", w))
        roi = by_number.get(num)
        if roi is None:
            warnings.warn(f"{w}: ReferencedROINumber {num} names no ROI of StructureSetROISequence; ignored",
                          stacklevel=3)
            continue
        if "ROIDisplayColor" in rc and rc.ROIDisplayColor:
            try:
                col = tuple(float(v) / 255.0 for v in rc.ROIDisplayColor)[:3]
                roi.color = col if len(col) == 3 else None
            except (TypeError, ValueError):
                pass
        pts = []
        for k, ct in enumerate(rc.get("ContourSequence", []) or []):
            wk = f"{where} (ROI {roi.name!r}, contour {k})"
            geo = str(ct.get("ContourGeometricType", "CLOSED_PLANAR") or "CLOSED_PLANAR").upper()
            data = floats(required(ct, "ContourData", wk), None, "ContourData", wk)
            if data.size % 3:
                raise ValueError(f"{wk}: ContourData (3006,0050) has {data.size} numbers, not a multiple of 3 (x, y, z)")
            xyz = data.reshape(-1, 3)
            if geo == "POINT":
                pts.append(xyz[:, ::-1])
                continue
            if geo != "CLOSED_PLANAR" or len(xyz) < 3:
                roi.skipped += 1
                continue
            if np.ptp(xyz[:, 2]) > 1e-3:
                roi.skipped += 1  # not axial
                continue
            roi.contours.append((float(xyz[:, 2].mean()), np.ascontiguousarray(xyz[:, [1, 0]])))
        if pts:
            roi.points = np.concatenate([roi.points] + pts)
        roi.contours.sort(key=lambda c: c[0])
        if roi.skipped:
            warnings.warn(f"{where}: ROI {roi.name!r}: {roi.skipped} contour(s) that are not closed planar axial "
                          "polygons were left out", stacklevel=3)
    return rois


def plane_spacing(rois) -> float | None:
    """Spacing of the contour planes (mm), for ROIs whose own planes do not tell it.

    The smallest of the ROIs' own spacings (:meth:`ROI.spacing`), i.e. the CT slice thickness
    the contours were drawn on; None when every ROI has a single plane.
    """
    own = [r.spacing() for r in rois]
    own = [v for v in own if v is not None]
    return float(min(own)) if own else None


# ---------------------------------------------------------------------------------------------
# polygon geometry (numpy references)
# ---------------------------------------------------------------------------------------------
def polygon_area(p) -> float:
    """Area (mm^2) of a simple polygon ``(m, 2)`` (shoelace formula, absolute value)."""
    p = np.asarray(p, float)
    if len(p) < 3:
        return 0.0
    y, x = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_polygon(p, lo, hi) -> np.ndarray:
    """The part of polygon ``p`` ``(m, 2)`` inside the box ``lo <= (y, x) <= hi`` (Sutherland-Hodgman).

    Exact for simple polygons and a convex (here rectangular) clip region.
    """
    out = np.asarray(p, float)
    for axis in (0, 1):
        for bound, sign in ((lo[axis], 1.0), (hi[axis], -1.0)):
            if len(out) == 0:
                return out
            nxt = np.roll(out, -1, axis=0)
            res = []
            for a, b in zip(out, nxt):
                ina = sign * (a[axis] - bound) >= 0
                inb = sign * (b[axis] - bound) >= 0
                if ina:
                    res.append(a)
                if ina != inb:
                    t = (bound - a[axis]) / (b[axis] - a[axis])
                    res.append(a + t * (b - a))
            out = np.asarray(res, float).reshape(-1, 2)
    return out


def _inside_even_odd(point, polys) -> int:
    """Number of polygons (of ``polys``) that contain ``point`` (crossing test)."""
    y, x = point
    count = 0
    for p in polys:
        y0, x0 = p[:, 0], p[:, 1]
        y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
        cond = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        count += int(np.count_nonzero(cond & (x < xc)) % 2)
    return count


def _plane_groups(roi: ROI) -> list[tuple[float, list[np.ndarray]]]:
    groups: dict[float, list] = {}
    for z, p in roi.contours:
        groups.setdefault(round(z, 4), []).append(p)
    return sorted(groups.items())


def roi_volume(roi: ROI, thickness: float, grid: Grid | None = None) -> tuple[float, float]:
    """Volume (cc) of the ROI's prism model and of its part inside ``grid``'s voxel edges.

    Each contour counts ``+area`` or ``-area`` by the parity of the number of other contours of
    its plane that contain it (even-odd holes); inside the grid, each contour is clipped to the
    grid's in-plane edges and each slab to its z range.

    Returns
    -------
    (total_cc, inside_cc) : (float, float)
        ``inside_cc`` equals ``total_cc`` when ``grid`` is None.
    """
    t = float(thickness)
    total = inside = 0.0
    if grid is not None:
        b = grid.bounds
        lo, hi = b[1:, 0], b[1:, 1]
    for z, polys in _plane_groups(roi):
        for i, p in enumerate(polys):
            others = polys[:i] + polys[i + 1:]
            sign = -1.0 if _inside_even_odd(p[0], others) % 2 else 1.0
            a = sign * polygon_area(p)
            total += a * t
            if grid is not None:
                dz = max(0.0, min(z + t / 2, b[0, 1]) - max(z - t / 2, b[0, 0]))
                if dz > 0:
                    inside += sign * polygon_area(clip_polygon(p, lo, hi)) * dz
    total /= 1000.0
    inside = total if grid is None else inside / 1000.0
    return total, inside


def subvoxel_mask(roi: ROI, grid: Grid, thickness: float, factor: int = 5) -> SubvoxelMask | None:
    """The ROI on ``grid``: exact slab overlaps along z, ``factor``-fold sub-pixels in the plane.

    Plane ``p``'s slab is ``[z_p - t/2, z_p + t/2]`` cut at the midpoints to its neighbouring
    planes (a point belongs to its nearest plane within ``t/2``); its overlap with every grid
    slice is exact. In the plane, each voxel is divided into ``factor x factor`` sub-pixels,
    inside when their centre is inside the plane's polygons (even-odd). None when no sub-pixel
    of the grid is inside.

    Parameters
    ----------
    roi : ROI
    grid : Grid
        Axial grid (e.g. the RTDOSE's).
    thickness : float
        Slab thickness of each contour plane (mm), :meth:`ROI.spacing`.
    factor : int
        Sub-pixels per voxel and in-plane axis (``s``; 1 = voxel centres).
    """
    s = int(factor)
    if s < 1:
        raise ValueError(f"factor must be a positive integer (sub-pixels per voxel and axis), got {factor!r}")
    t = float(thickness)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"thickness must be a positive slab thickness in mm, got {thickness!r}")
    groups = _plane_groups(roi)
    if not groups:
        return None
    zs = np.array([z for z, _ in groups])
    lo_s = zs - t / 2
    hi_s = zs + t / 2
    if zs.size > 1:
        mid = 0.5 * (zs[1:] + zs[:-1])
        lo_s[1:] = np.maximum(lo_s[1:], mid)
        hi_s[:-1] = np.minimum(hi_s[:-1], mid)
    # grid slices: edges along z
    dz = grid.spacing[0]
    zc = grid.axes()[0]
    layers = []
    for p in range(zs.size):
        k_lo = max(0, int(np.floor((lo_s[p] - grid.origin[0]) / dz + 0.5)) - 1)
        k_hi = min(grid.shape[0] - 1, int(np.ceil((hi_s[p] - grid.origin[0]) / dz - 0.5)) + 1)
        for k in range(k_lo, k_hi + 1):
            a = max(lo_s[p], zc[k] - dz / 2)
            b = min(hi_s[p], zc[k] + dz / 2)
            if b - a > 1e-9 * dz:
                layers.append((k, p, (b - a) / dz, (0.5 * (a + b) - grid.origin[0]) / dz))
    if not layers:
        return None
    used = sorted({int(L[1]) for L in layers})
    yx = np.concatenate([p for z, ps in (groups[u] for u in used) for p in ps])
    lo = np.floor(grid.world_to_index(np.c_[np.zeros(1), yx.min(0)[None]])[0, 1:]).astype(int) - 1
    hi = np.ceil(grid.world_to_index(np.c_[np.zeros(1), yx.max(0)[None]])[0, 1:]).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(grid.shape[1:]) - 1)
    if np.any(hi < lo):
        return None
    box = hi - lo + 1
    shape2 = (int(box[0]) * s, int(box[1]) * s)
    sp = np.asarray(grid.spacing[1:])
    org = np.asarray(grid.origin[1:])
    index = {}
    rasters = []
    for u in used:
        polys = [((pp - org) / sp - lo + 0.5) * s - 0.5 for pp in groups[u][1]]  # fine-lattice index
        r = rasterize_polygons(polys, shape2)
        if r.any():
            index[u] = len(rasters)
            rasters.append(r)
    layers = [(k, index[p], w, zm) for k, p, w, zm in layers if p in index]
    if not layers:
        return None
    return SubvoxelMask.from_rasters(grid, s, tuple(int(v) for v in lo), rasters, layers)


def save_rois(rois, path, reference=None, label: str = "rtlab", sop_instance_uid: str | None = None) -> Path:
    """Write ROIs (polygon contours, not masks) as a DICOM RTSTRUCT (atomically).

    The counterpart of :func:`read_rois` for contours that do not follow voxel edges (smooth
    analytic shapes in tests and notebooks, or contours edited in rtlab), and rtlab's one
    RTSTRUCT writer: :func:`rtlab.io.save_rtstruct` turns a case's masks into ROIs and calls it.

    Parameters
    ----------
    rois : list of ROI
        ``contours`` (``(z, vertices (y, x))`` mm, ``CLOSED_PLANAR``) and ``points``
        (``POINT``) are written; ``interpreted_type`` or, when empty, :data:`ROI_TYPES` of
        ``kind``; ``color`` or, when None, :data:`ROI_COLORS` of ``kind``.
    path : path-like
    reference : Case, dataset(s), file path(s) or folder, optional
        Patient, study and frame of reference; new UIDs when omitted. When it is a CT series (a
        Case from :func:`rtlab.io.load_dicom` / :func:`rtlab.io.save_dicom_ct`, CT files or
        their folder) its series and slices are referenced too
        (``RTReferencedStudySequence`` > ``RTReferencedSeriesSequence`` >
        ``ContourImageSequence``); another reference (an RTDOSE) gives only patient, study and
        frame of reference.
    label : str
        ``StructureSetLabel``.
    sop_instance_uid : str, optional
        The file's SOP Instance UID (generated when omitted), for files that reference it.
    """
    require_pydicom()
    info = reference_info(reference)
    ds = new_rt_dataset(RT_STRUCTURE_SET_STORAGE, sop_instance_uid or uid.generate_uid(), info, label, "RTSTRUCT", 2)
    ds.StructureSetLabel = label[:16] or "rtlab"
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    frame = dataset.Dataset()
    frame.FrameOfReferenceUID = ds.FrameOfReferenceUID
    if info.get("SeriesInstanceUID") and info.get("SOPClassUID", CT_IMAGE_STORAGE) == CT_IMAGE_STORAGE:
        study = dataset.Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, customary)
        study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        series = dataset.Dataset()
        series.SeriesInstanceUID = info["SeriesInstanceUID"]
        imgs = []
        for sop_uid in info.get("SOPInstanceUIDs", []):
            it = dataset.Dataset()
            it.ReferencedSOPClassUID = CT_IMAGE_STORAGE
            it.ReferencedSOPInstanceUID = sop_uid
            imgs.append(it)
        series.ContourImageSequence = sequence.Sequence(imgs)
        study.RTReferencedSeriesSequence = sequence.Sequence([series])
        frame.RTReferencedStudySequence = sequence.Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = sequence.Sequence([frame])
    roi_items, contour_items, obs_items = [], [], []
    for roi in rois:
        it = dataset.Dataset()
        it.ROINumber = int(roi.number)
        it.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
        it.ROIName = roi.name
        it.ROIGenerationAlgorithm = "MANUAL"
        roi_items.append(it)
        rc = dataset.Dataset()
        rc.ReferencedROINumber = int(roi.number)
        col = roi.color or ROI_COLORS.get(roi.kind, ROI_COLORS["oar"])
        rc.ROIDisplayColor = [int(round(255 * float(c))) for c in col[:3]]
        cs = []
        for z, poly in roi.contours:
            c = dataset.Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(poly)
            xyz = np.c_[np.asarray(poly)[:, 1], np.asarray(poly)[:, 0], np.full(len(poly), float(z))]
            c.ContourData = [ds_num(v) for v in xyz.ravel()]
            cs.append(c)
        for pt in np.asarray(roi.points).reshape(-1, 3):
            c = dataset.Dataset()
            c.ContourGeometricType = "POINT"
            c.NumberOfContourPoints = 1
            c.ContourData = [ds_num(v) for v in pt[::-1]]
            cs.append(c)
        rc.ContourSequence = sequence.Sequence(cs)
        contour_items.append(rc)
        ob = dataset.Dataset()
        ob.ObservationNumber = int(roi.number)
        ob.ReferencedROINumber = int(roi.number)
        ob.RTROIInterpretedType = roi.interpreted_type or ROI_TYPES.get(roi.kind, "ORGAN")
        ob.ROIInterpreter = ""
        obs_items.append(ob)
    ds.StructureSetROISequence = sequence.Sequence(roi_items)
    ds.ROIContourSequence = sequence.Sequence(contour_items)
    ds.RTROIObservationsSequence = sequence.Sequence(obs_items)
    return write_dataset(ds, Path(path))
