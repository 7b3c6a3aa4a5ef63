"""Reading a CT series and an RTSTRUCT into a :class:`~rtlab.core.case.Case` (:func:`load_dicom`).

Structures (C.8.8.6, ROI Contour module)
----------------------------------------
Each ``CLOSED_PLANAR`` contour is mapped from patient coordinates into continuous voxel
indices and rasterised in its plane with the even-odd rule (a voxel is inside when a ray from
its centre crosses the ROI's contours of that plane an odd number of times), so inner contours
cut holes. Contours are snapped to the nearest slice. ``RTROIInterpretedType`` PTV/CTV/GTV ->
``'target'``, EXTERNAL -> ``'body'``, anything else -> ``'oar'`` (a missing type falls back to
the name: BODY/External/... -> ``'body'``).

Requires ``pydicom`` (version 3).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...core.case import Case
from ...core.geometry import Grid, Structure, StructureSet
from ...core.materials import hu_to_density
from ...core.validate import check_decode_bytes, check_voxels
from ..matrad import is_body_name
from .common import (assemble, floats, image_axes, read_dir, read_file, require_pydicom, required, series_info,
                     slice_positions)
from .polygons import rasterize_polygons

__all__ = ["load_dicom", "TARGET_TYPES"]


TARGET_TYPES = {"PTV", "CTV", "GTV"}


def _rasterize_roi(contours: list[np.ndarray], grid: Grid, where: str) -> tuple[np.ndarray, int]:
    """Mask of one ROI from its contours (each ``(m, 3)`` world x, y, z); returns (mask, n_skipped)."""
    mask = np.zeros(grid.shape, bool)
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    skipped = 0
    for pts in contours:
        idx = grid.world_to_index(pts[:, ::-1])  # (z, y, x) continuous indices
        spread = np.ptp(idx, axis=0)
        flat = np.nonzero(spread < 1e-3)[0]
        if len(flat) != 1:
            skipped += 1  # non-planar, oblique plane or degenerate
            continue
        ax = int(flat[0])
        s = int(np.rint(idx[:, ax].mean()))
        if s < 0 or s >= grid.shape[ax]:
            skipped += 1
            continue
        groups.setdefault((ax, s), []).append(np.delete(idx, ax, axis=1))
    for (ax, s), polys in groups.items():
        shp = tuple(n for a, n in enumerate(grid.shape) if a != ax)
        fill = rasterize_polygons(polys, shp)
        sl = [slice(None)] * 3
        sl[ax] = s
        mask[tuple(sl)] |= fill
    return mask, skipped


def _read_ct(cts, where: str, progress: bool):
    series = {}
    for p, ds in cts:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if len(series) > 1:
        desc = ", ".join(f"{uid or '<none>'} ({len(v)} files)" for uid, v in series.items())
        raise ValueError(f"{where}: the directory holds several CT series ({desc}); pass series_uid= to choose one")
    iop0 = ps0 = rc0 = None
    ipps = []
    for p, ds in cts:
        iop = floats(required(ds, "ImageOrientationPatient", p.name), 6, "ImageOrientationPatient", p.name)
        ps = floats(required(ds, "PixelSpacing", p.name), 2, "PixelSpacing", p.name)
        rc = (int(required(ds, "Rows", p.name)), int(required(ds, "Columns", p.name)))
        ipps.append(floats(required(ds, "ImagePositionPatient", p.name), 3, "ImagePositionPatient", p.name))
        for kw in ("RescaleSlope", "RescaleIntercept"):
            floats(required(ds, kw, p.name), 1, kw, p.name)
        if "PixelData" not in ds:
            raise ValueError(f"{p.name}: required DICOM tag PixelData (7FE0,0010) is missing")
        if iop0 is None:
            iop0, ps0, rc0 = iop, ps, rc
        else:
            if not np.allclose(iop, iop0, atol=1e-4):
                raise ValueError(f"{p.name}: ImageOrientationPatient differs from the other slices (mixed series)")
            if not np.allclose(ps, ps0, atol=1e-4):
                raise ValueError(f"{p.name}: PixelSpacing {ps.tolist()} differs from the other slices {ps0.tolist()} (mixed series)")
            if rc != rc0:
                raise ValueError(f"{p.name}: image size {rc} differs from the other slices {rc0} (mixed series)")
    if np.any(ps0 <= 0):
        raise ValueError(f"{cts[0][0].name}: PixelSpacing must be positive, got {ps0.tolist()}")
    # the volume's size from the headers, before any pixel is decoded
    check_voxels((len(cts),) + rc0, f"{where}: CT series of {len(cts)} slice(s) of {rc0[0]} x {rc0[1]} pixels")
    axes, units = image_axes(iop0[:3], iop0[3:], where)
    un, uc, ur = units
    order, _, step = slice_positions(np.asarray(ipps), un, ur, uc, where)
    if step is None:
        ds = cts[0][1]
        if "SliceThickness" in ds and ds.SliceThickness:
            step = float(ds.SliceThickness)
        else:
            raise ValueError(f"{cts[0][0].name}: a single-slice series needs SliceThickness to define the voxel size")
    vol = np.empty((len(cts),) + rc0, dtype=np.float32)
    it = order
    if progress:
        it = tqdm(order, desc="reading CT", leave=False)
    for s_out, s_in in enumerate(it):
        p, ds = cts[s_in]
        try:
            px = ds.pixel_array
        except Exception as e:
            raise ValueError(f"{p.name}: cannot decode the pixel data ({type(e).__name__}: {e}); "
                             "a compressed transfer syntax may need an extra pydicom handler") from None
        if px.shape != rc0:
            raise ValueError(f"{p.name}: pixel data has shape {px.shape}, expected Rows x Columns = {rc0}")
        vol[s_out] = px.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    spacing_sji = (step, float(ps0[0]), float(ps0[1]))
    hu, grid = assemble(vol, ipps[order[0]], axes, units, spacing_sji)
    info = series_info(cts[order[0]][1], [cts[i][1] for i in order])
    info["ImageOrientationPatient"] = [float(v) for v in iop0]
    return hu, grid, info


def _kind_of(roi_type: str, name: str) -> str:
    t = roi_type.strip().upper()
    if t in TARGET_TYPES:
        return "target"
    if t == "EXTERNAL":
        return "body"
    if not t and is_body_name(name):
        return "body"
    return "oar"


def _read_rtstruct(ds, where: str, grid: Grid) -> list[Structure]:
    rois = []
    for item in required(ds, "StructureSetROISequence", where):
        rois.append((int(required(item, "ROINumber", where)), str(required(item, "ROIName", where))))
    # every ROI becomes a full boolean mask: bound what the structure set implies before building any
    check_decode_bytes(len(rois) * grid.size, f"{where}: {len(rois)} ROIs of {grid.size:,} voxels each")
    types = {}
    for o in ds.get("RTROIObservationsSequence", []) or []:
        if "ReferencedROINumber" in o:
            types[int(o.ReferencedROINumber)] = str(o.get("RTROIInterpretedType", "") or "")
    contours: dict[int, list[np.ndarray]] = {}
    colors = {}
    for rc in required(ds, "ROIContourSequence", where):
        num = int(required(rc, "ReferencedROINumber", where))
        if "ROIDisplayColor" in rc and rc.ROIDisplayColor:
            try:
                colors[num] = tuple(float(v) / 255.0 for v in rc.ROIDisplayColor)[:3]
            except (TypeError, ValueError):
                pass
        lst = contours.setdefault(num, [])
        for k, ct in enumerate(rc.get("ContourSequence", []) or []):
            geo = str(ct.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if geo != "CLOSED_PLANAR":
                continue
            data = floats(required(ct, "ContourData", f"{where} (ROI {num}, contour {k})"), None, "ContourData", where)
            if data.size % 3:
                raise ValueError(f"{where}: ContourData of ROI {num} contour {k} has {data.size} numbers, not a multiple of 3")
            lst.append(data.reshape(-1, 3))
    out = []
    used = set()
    for num, name in rois:
        pts = contours.get(num, [])
        if not pts:
            warnings.warn(f"{where}: ROI {name!r} (number {num}) has no closed planar contours; skipped", stacklevel=3)
            continue
        mask, skipped = _rasterize_roi(pts, grid, where)
        if skipped:
            warnings.warn(f"{where}: ROI {name!r}: {skipped} contour(s) outside the CT or not in a slice plane were ignored", stacklevel=3)
        if not mask.any():
            warnings.warn(f"{where}: ROI {name!r} covers no voxel centre of the CT grid; skipped", stacklevel=3)
            continue
        uname, n = name.strip() or f"ROI_{num}", 2
        base = uname
        while uname in used:
            uname, n = f"{base}_{n}", n + 1
        used.add(uname)
        col = colors.get(num)
        out.append(Structure(uname, mask, grid, kind=_kind_of(types.get(num, ""), name),
                             color=col if col and len(col) == 3 else None))
    return out


def load_dicom(directory, hu_table=None, rtstruct=None, series_uid: str | None = None,
               name: str | None = None, progress: bool = False) -> Case:
    """Load a CT series and its RTSTRUCT from a directory as a :class:`Case`.

    Parameters
    ----------
    directory : path-like
        Folder holding the CT slices (one file each) and, usually, the RTSTRUCT file. Files that
        do not look like DICOM (no ``DICM`` prefix, not named ``.dcm``) are ignored; one that
        does and fails to parse is an error naming it.
    hu_table : array_like, shape (n, 2), optional
        HU -> relative electron density table for ``Case.density``; default
        :data:`rtlab.core.materials.DEFAULT_HU_TABLE`.
    rtstruct : path-like, optional
        The RTSTRUCT file, when it is elsewhere or the folder holds several.
    series_uid : str, optional
        Which CT series to read when the folder holds several.
    name : str, optional
        Case name; default the folder name.
    progress : bool
        Show a tqdm progress bar while decoding slices.

    Returns
    -------
    Case
        CT in HU (RescaleSlope/Intercept applied) on an axis-aligned grid with positive
        spacing; structures from the RTSTRUCT (none, with a warning, if there is none);
        ``case.meta['dicom']`` holds the study/series/frame-of-reference UIDs.

    Raises
    ------
    ValueError
        No CT slices, several series, a damaged DICOM file (named), a missing required tag
        (named with the file), oblique orientation, non-uniform slice spacing, undecodable pixel
        data, a volume above :func:`rtlab.core.validate.max_voxels` (checked from Rows, Columns
        and the slice count before decoding), CT numbers outside
        :data:`rtlab.core.validate.HU_RANGE`.
    """
    require_pydicom()
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"directory {str(d)!r} does not exist or is not a folder; pass the folder of the CT series")
    cts, structs = read_dir(d)
    if series_uid is not None:
        cts = [(p, ds) for p, ds in cts if str(ds.get("SeriesInstanceUID", "")) == series_uid]
    if not cts:
        raise ValueError(f"{d}: no CT image files found{'' if series_uid is None else f' for series {series_uid}'}; "
                         "the folder must hold a CT series (Modality CT)")
    hu, grid, info = _read_ct(cts, str(d), progress)
    density = hu_to_density(hu, hu_table)
    rs = None
    if rtstruct is not None:
        rp = Path(rtstruct)
        if not rp.is_file():
            raise ValueError(f"rtstruct {str(rp)!r} does not exist or is not a file")
        rs = (rp, read_file(rp))
        if str(rs[1].get("Modality", "")).upper() != "RTSTRUCT":
            raise ValueError(f"rtstruct {rp.name} has Modality {rs[1].get('Modality')!r}, expected RTSTRUCT")
    elif structs:
        if len(structs) > 1:
            for_uid = info["FrameOfReferenceUID"]
            match = [
                (p, ds) for p, ds in structs
                if any(str(r.get("FrameOfReferenceUID", "")) == for_uid for r in ds.get("ReferencedFrameOfReferenceSequence", []) or [])
            ]
            if len(match) != 1:
                raise ValueError(f"{d}: several RTSTRUCT files ({[p.name for p, _ in structs]}); pass rtstruct= to choose one")
            structs = match
        rs = structs[0]
    structures = StructureSet(grid)
    if rs is None:
        warnings.warn(f"{d}: no RTSTRUCT found; the case has no structures", stacklevel=2)
    else:
        for s in _read_rtstruct(rs[1], rs[0].name, grid):
            structures.add(s)
        info["RTSTRUCT"] = rs[0].name
    return Case(
        name=name or d.name, grid=grid, ct=hu, structures=structures, density=density,
        description=f"DICOM CT series loaded from {d}",
        meta={"source": str(d), "dicom": info},
    )
