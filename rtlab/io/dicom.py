"""DICOM in and out: CT series + RTSTRUCT to a :class:`~rtlab.case.Case`; RTDOSE out and in.

Geometry (DICOM PS3.3 C.7.6.2, Image Plane module)
--------------------------------------------------
A CT slice's pixel ``(row j, column i)`` has its centre at

    P = ImagePositionPatient + i * PixelSpacing[1] * r + j * PixelSpacing[0] * c

with ``r``, ``c`` the row and column direction cosines (``ImageOrientationPatient``). Slices are
sorted by the projection of their ``ImagePositionPatient`` on the normal ``n = r x c``. Only
axis-aligned orientations are supported (every cosine is 0 or +-1, any permutation); the
volume is transposed and flipped so that the rtlab :class:`~rtlab.geometry.Grid` is ``(z, y, x)``
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

Requires ``pydicom`` (version 3).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .._util import atomic_path, check_finite
from ..core.case import Case
from ..core.geometry import Grid, Structure, StructureSet
from ..core.materials import hu_to_density
from .matrad import is_body_name

__all__ = [
    "load_dicom",
    "save_dicom_ct",
    "save_rtstruct",
    "save_dicom",
    "save_rtdose",
    "load_rtdose",
    "rasterize_polygons",
    "mask_to_polygons",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_TARGET_TYPES = {"PTV", "CTV", "GTV"}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("DICOM support needs pydicom >= 3 (pip install 'rtlab[dicom]' or pip install pydicom)") from None
    return pydicom


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def _req(ds, keyword: str, where):
    """The value of a required tag, or ValueError naming the tag and the file."""
    if keyword not in ds or ds[keyword].value is None or (
        isinstance(ds[keyword].value, (str, bytes, list)) and len(ds[keyword].value) == 0
    ):
        tag = None
        try:
            from pydicom.datadict import tag_for_keyword

            t = tag_for_keyword(keyword)
            tag = f"({t >> 16:04X},{t & 0xFFFF:04X})" if t is not None else None
        except Exception:
            pass
        raise ValueError(f"{where}: required DICOM tag {keyword}{' ' + tag if tag else ''} is missing or empty")
    return ds[keyword].value


def _floats(value, n: int | None, keyword: str, where) -> np.ndarray:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        a = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: DICOM tag {keyword} must hold numbers, got {value!r}") from None
    if n is not None and a.size != n:
        raise ValueError(f"{where}: DICOM tag {keyword} must hold {n} numbers, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: DICOM tag {keyword} holds non-finite numbers {a.tolist()}")
    return a


def _ds_num(v) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(v))


# world axis (DICOM x, y, z = 0, 1, 2) -> rtlab array axis (z, y, x = 0, 1, 2)
_DICOM_TO_RTLAB = {0: 2, 1: 1, 2: 0}


def _axis_of(v, what: str, where) -> tuple[int, int]:
    """(rtlab axis, sign) of an axis-aligned direction cosine vector; ValueError if oblique."""
    v = np.asarray(v, float)
    k = int(np.argmax(np.abs(v)))
    others = np.delete(np.abs(v), k)
    if abs(abs(v[k]) - 1.0) > 1e-3 or np.any(others > 1e-3):
        raise ValueError(
            f"{where}: ImageOrientationPatient {what} direction {np.round(v, 5).tolist()} is oblique; rtlab "
            "supports only axis-aligned series (cosines 0 or +-1); resample the series to an axial grid first"
        )
    return _DICOM_TO_RTLAB[k], (1 if v[k] > 0 else -1)


def _unit(axis_sign) -> np.ndarray:
    ax, sg = axis_sign
    u = np.zeros(3)
    u[{2: 0, 1: 1, 0: 2}[ax]] = sg
    return u


def _image_axes(r, c, where):
    """Axis mapping of image axes (slice s, row j, column i) -> (rtlab axis, sign), snapped unit vectors."""
    a_i = _axis_of(r, "row", where)
    a_j = _axis_of(c, "column", where)
    if a_i[0] == a_j[0]:
        raise ValueError(f"{where}: ImageOrientationPatient row and column directions are parallel")
    ur, uc = _unit(a_i), _unit(a_j)
    un = np.cross(ur, uc)
    a_s = _axis_of(un, "normal", where)
    return (a_s, a_j, a_i), (un, uc, ur)


def _assemble(vol_sji: np.ndarray, ipp0, axes, units, spacing_sji):
    """Turn an image-ordered volume into rtlab ``(z, y, x)`` with positive spacing.

    Returns ``(array, Grid)``.
    """
    rt_axes = [a for a, _ in axes]
    perm = [rt_axes.index(t) for t in range(3)]
    out = np.transpose(vol_sji, perm)
    for t in range(3):
        if axes[perm[t]][1] < 0:
            out = np.flip(out, axis=t)
    o = np.asarray(ipp0, float).copy()
    for a in range(3):
        if axes[a][1] < 0:
            o = o + (vol_sji.shape[a] - 1) * spacing_sji[a] * units[a]
    shape = tuple(vol_sji.shape[perm[t]] for t in range(3))
    spacing = tuple(float(spacing_sji[perm[t]]) for t in range(3))
    grid = Grid(shape, spacing, (o[2], o[1], o[0]))
    return np.ascontiguousarray(out), grid


def _slice_positions(ipps: np.ndarray, n: np.ndarray, r, c, where, tol: float = 0.01):
    """Sort order, sorted positions along ``n`` and uniform spacing; errors for bad series."""
    proj = ipps @ n
    order = np.argsort(proj, kind="stable")
    ps = proj[order]
    p0 = ipps[order[0]]
    inplane = np.abs(np.c_[(ipps - p0) @ r, (ipps - p0) @ c])
    if np.any(inplane > tol):
        raise ValueError(
            f"{where}: slices are shifted in-plane against each other (up to {inplane.max():.3g} mm); "
            "the series is not a regular volume"
        )
    if ps.size > 1:
        d = np.diff(ps)
        if np.any(d < tol):
            k = int(np.argmin(d))
            raise ValueError(f"{where}: two slices share the position {ps[k]:.3f} mm along the slice normal (duplicate or mixed series)")
        step = float(np.median(d))
        if np.any(np.abs(d - step) > max(tol, 1e-3 * step)):
            raise ValueError(
                f"{where}: non-uniform slice spacing ({d.min():.4g} .. {d.max():.4g} mm); rtlab needs a regular grid - "
                "a slice may be missing, or resample the series"
            )
    else:
        step = None
    return order, ps, step


# ---------------------------------------------------------------------------------------
# polygon rasterisation (even-odd) and mask -> polygons
# ---------------------------------------------------------------------------------------
def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons with the even-odd rule at integer pixel centres.

    A pixel ``(row, col)`` is inside when a ray from its centre towards ``-col`` crosses the
    polygons' edges an odd number of times (crossing-number test; an edge counts for a row when
    ``min(y0, y1) <= row < max(y0, y1)``). Nested contours therefore cut holes, and several
    polygons of one ROI combine by exclusive or. Vectorised scanline form: every (row, edge)
    crossing at ``x`` toggles all pixels with ``col > x``.

    Parameters
    ----------
    polygons : sequence of ndarray, each ``(m, 2)``
        Vertices ``(row, col)`` in continuous pixel-index coordinates (pixel centres at
        integers); closing edge implied.
    shape : (int, int)
        ``(nrows, ncols)`` of the output.

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    nr, nc = int(shape[0]), int(shape[1])
    toggles = np.zeros((nr, nc + 1), dtype=np.int32)
    for poly in polygons:
        p = np.asarray(poly, dtype=float)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"each polygon must have shape (m, 2) of (row, col) vertices, got {p.shape}")
        if p.shape[0] < 3:
            continue
        y0, x0 = p[:, 0], p[:, 1]
        y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
        ymin, ymax = np.minimum(y0, y1), np.maximum(y0, y1)
        lo = np.maximum(np.ceil(ymin), 0).astype(np.int64)
        hi = np.minimum(np.ceil(ymax) - 1, nr - 1).astype(np.int64)
        cnt = np.where(ymax > ymin, np.maximum(hi - lo + 1, 0), 0)
        total = int(cnt.sum())
        if total == 0:
            continue
        e = np.repeat(np.arange(p.shape[0]), cnt)
        start = np.repeat(np.cumsum(cnt) - cnt, cnt)
        rows = lo[e] + (np.arange(total) - start)
        t = (rows - y0[e]) / (y1[e] - y0[e])
        xint = x0[e] + t * (x1[e] - x0[e])
        c0 = np.clip(np.floor(xint).astype(np.int64) + 1, 0, nc)
        np.add.at(toggles, (rows, c0), 1)
    return (np.cumsum(toggles, axis=1)[:, :nc] % 2).astype(bool)


def mask_to_polygons(mask2d) -> list[np.ndarray]:
    """Closed polygons along the pixel edges of a 2-D mask (outer boundaries and holes).

    The polygons follow the edges between inside and outside pixels, so rasterising them with
    :func:`rasterize_polygons` (even-odd) returns exactly ``mask2d``. Collinear vertices are
    removed.

    Returns
    -------
    list of ndarray ``(m, 2)``
        Vertices ``(row, col)`` in continuous pixel-index coordinates (edges at half-integers).
    """
    m = np.asarray(mask2d, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask2d must be 2-D, got shape {m.shape}")
    P = np.pad(m, 1)
    # horizontal edges at corner row J between pixel rows J-1 (above) and J (below)
    above, below = P[:-1, 1:-1], P[1:, 1:-1]
    edges = []
    J, I = np.nonzero(below & ~above)
    edges.append(np.c_[J, I, J, I + 1])
    J, I = np.nonzero(above & ~below)
    edges.append(np.c_[J, I + 1, J, I])
    # vertical edges at corner column I between pixel cols I-1 (left) and I (right)
    left, right = P[1:-1, :-1], P[1:-1, 1:]
    j, I = np.nonzero(right & ~left)
    edges.append(np.c_[j + 1, I, j, I])
    j, I = np.nonzero(left & ~right)
    edges.append(np.c_[j, I, j + 1, I])
    E = np.concatenate(edges).astype(np.int64)
    if E.size == 0:
        return []
    out_edges: dict[tuple[int, int], list[int]] = {}
    for k, (a, b) in enumerate(zip(E[:, 0].tolist(), E[:, 1].tolist())):
        out_edges.setdefault((a, b), []).append(k)
    used = np.zeros(len(E), bool)
    polys = []
    for k0 in range(len(E)):
        if used[k0]:
            continue
        loop = []
        k = k0
        start = (int(E[k0, 0]), int(E[k0, 1]))
        while True:
            used[k] = True
            loop.append((int(E[k, 0]), int(E[k, 1])))
            nxt = (int(E[k, 2]), int(E[k, 3]))
            if nxt == start:
                break
            cand = out_edges[nxt]
            while cand and used[cand[-1]]:
                cand.pop()
            k = cand.pop()
        v = np.asarray(loop, dtype=float)
        # drop collinear vertices
        prev, nxt_v = np.roll(v, 1, axis=0), np.roll(v, -1, axis=0)
        cross = (v[:, 0] - prev[:, 0]) * (nxt_v[:, 1] - v[:, 1]) - (v[:, 1] - prev[:, 1]) * (nxt_v[:, 0] - v[:, 0])
        v = v[cross != 0]
        polys.append(v - 0.5)
    return polys


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


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def _read_dir(directory: Path):
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    cts, structs = [], []
    for p in sorted(q for q in directory.iterdir() if q.is_file()):
        try:
            ds = pydicom.dcmread(p)
        except InvalidDicomError:
            continue  # not a DICOM file (README, thumbnails, ...)
        except Exception as e:
            raise ValueError(f"{p.name}: broken DICOM file ({type(e).__name__}: {e})") from None
        mod = str(ds.get("Modality", "")).upper()
        sop = str(ds.get("SOPClassUID", ""))
        if mod == "CT" or sop == CT_IMAGE_STORAGE:
            cts.append((p, ds))
        elif mod == "RTSTRUCT" or sop == RT_STRUCTURE_SET_STORAGE:
            structs.append((p, ds))
    return cts, structs


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
        iop = _floats(_req(ds, "ImageOrientationPatient", p.name), 6, "ImageOrientationPatient", p.name)
        ps = _floats(_req(ds, "PixelSpacing", p.name), 2, "PixelSpacing", p.name)
        rc = (int(_req(ds, "Rows", p.name)), int(_req(ds, "Columns", p.name)))
        ipps.append(_floats(_req(ds, "ImagePositionPatient", p.name), 3, "ImagePositionPatient", p.name))
        for kw in ("RescaleSlope", "RescaleIntercept"):
            _floats(_req(ds, kw, p.name), 1, kw, p.name)
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
    axes, units = _image_axes(iop0[:3], iop0[3:], where)
    un, uc, ur = units
    order, _, step = _slice_positions(np.asarray(ipps), un, ur, uc, where)
    if step is None:
        ds = cts[0][1]
        if "SliceThickness" in ds and ds.SliceThickness:
            step = float(ds.SliceThickness)
        else:
            raise ValueError(f"{cts[0][0].name}: a single-slice series needs SliceThickness to define the voxel size")
    vol = np.empty((len(cts),) + rc0, dtype=np.float32)
    it = order
    if progress:
        from tqdm.auto import tqdm

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
    hu, grid = _assemble(vol, ipps[order[0]], axes, units, spacing_sji)
    first = cts[order[0]][1]
    info = {
        "StudyInstanceUID": str(first.get("StudyInstanceUID", "")),
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "")),
        "FrameOfReferenceUID": str(first.get("FrameOfReferenceUID", "")),
        "PatientID": str(first.get("PatientID", "")),
        "PatientName": str(first.get("PatientName", "")),
        "SOPInstanceUIDs": [str(cts[i][1].get("SOPInstanceUID", "")) for i in order],
        "ImageOrientationPatient": [float(v) for v in iop0],
    }
    return hu, grid, info


def _kind_of(roi_type: str, name: str) -> str:
    t = roi_type.strip().upper()
    if t in _TARGET_TYPES:
        return "target"
    if t == "EXTERNAL":
        return "body"
    if not t and is_body_name(name):
        return "body"
    return "oar"


def _read_rtstruct(ds, where: str, grid: Grid) -> list[Structure]:
    rois = []
    for item in _req(ds, "StructureSetROISequence", where):
        rois.append((int(_req(item, "ROINumber", where)), str(_req(item, "ROIName", where))))
    types = {}
    for o in ds.get("RTROIObservationsSequence", []) or []:
        if "ReferencedROINumber" in o:
            types[int(o.ReferencedROINumber)] = str(o.get("RTROIInterpretedType", "") or "")
    contours: dict[int, list[np.ndarray]] = {}
    colors = {}
    for rc in _req(ds, "ROIContourSequence", where):
        num = int(_req(rc, "ReferencedROINumber", where))
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
            data = _floats(_req(ct, "ContourData", f"{where} (ROI {num}, contour {k})"), None, "ContourData", where)
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
        Folder holding the CT slices (one file each) and, usually, the RTSTRUCT file; files that
        are not DICOM are ignored.
    hu_table : array_like, shape (n, 2), optional
        HU -> relative electron density table for ``Case.density``; default
        :data:`rtlab.materials.DEFAULT_HU_TABLE`.
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
        No CT slices, several series, a missing required tag (named with the file),
        oblique orientation, non-uniform slice spacing, undecodable pixel data.
    """
    pydicom = _pydicom()
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"directory {str(d)!r} does not exist or is not a folder; pass the folder of the CT series")
    cts, structs = _read_dir(d)
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
        try:
            rs = (rp, pydicom.dcmread(rp))
        except Exception as e:
            raise ValueError(f"rtstruct {str(rp)!r} cannot be read as DICOM ({type(e).__name__}: {e})") from None
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


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def _new_file_dataset(sop_class: str, sop_instance: str):
    _pydicom()
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _write(ds, path: Path) -> Path:
    from pydicom import dcmwrite

    with atomic_path(path) as tmp:
        dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def _ref_info(reference) -> dict:
    """Patient/study/frame UIDs from a Case (meta['dicom']), Dataset(s) or DICOM file path(s)."""
    if reference is None:
        return {}
    if isinstance(reference, Case):
        return dict(reference.meta.get("dicom", {}))
    pydicom = _pydicom()
    from pydicom.dataset import Dataset

    items = reference if isinstance(reference, (list, tuple)) else [reference]
    dss = []
    for it in items:
        if isinstance(it, Dataset):
            dss.append(it)
        else:
            p = Path(it)
            if p.is_dir():
                cts, _ = _read_dir(p)
                dss.extend(ds for _, ds in cts)
            else:
                dss.append(pydicom.dcmread(p, stop_before_pixels=True))
    if not dss:
        raise ValueError("reference holds no DICOM datasets; pass the CT files, their folder, or a Case loaded with load_dicom")
    ds = dss[0]
    return {
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
        "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "")),
        "PatientID": str(ds.get("PatientID", "")),
        "PatientName": str(ds.get("PatientName", "")),
        "SOPInstanceUIDs": [str(d.get("SOPInstanceUID", "")) for d in dss],
    }


def _patient_study(ds, info: dict, case_name: str):
    from pydicom.uid import generate_uid

    ds.PatientName = info.get("PatientName") or f"rtlab^{case_name}"
    ds.PatientID = info.get("PatientID") or case_name
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = info.get("StudyInstanceUID") or generate_uid()
    ds.StudyID = "1"
    ds.StudyDate = ds.InstanceCreationDate
    ds.StudyTime = ds.InstanceCreationTime
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.FrameOfReferenceUID = info.get("FrameOfReferenceUID") or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "rtlab"


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
        raise TypeError(f"case must be an rtlab.case.Case, got {type(case).__name__}")
    from pydicom.uid import generate_uid

    iop = _floats(orientation, 6, "orientation", "save_dicom_ct")
    axes, units = _image_axes(iop[:3], iop[3:], "orientation")
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
    info["FrameOfReferenceUID"] = info.get("FrameOfReferenceUID") or generate_uid()
    info["StudyInstanceUID"] = info.get("StudyInstanceUID") or generate_uid()
    series_uid = generate_uid()
    paths, sops = [], []
    for s in range(vol.shape[0]):
        out_idx = np.zeros(3)
        for a, (ax, sg) in enumerate(axes):
            v = s if a == 0 else 0
            out_idx[ax] = v if sg > 0 else grid.shape[ax] - 1 - v
        pos = grid.index_to_world(out_idx)[::-1]  # x, y, z
        sop = generate_uid()
        ds = _new_file_dataset(CT_IMAGE_STORAGE, sop)
        _patient_study(ds, info, case.name)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = series_description or f"rtlab {case.name}"
        ds.InstanceNumber = s + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ImagePositionPatient = [_ds_num(v) for v in pos]
        ds.ImageOrientationPatient = [_ds_num(v) for v in iop]
        ds.SliceLocation = _ds_num(pos @ units[0])
        ds.PixelSpacing = [_ds_num(sp[1]), _ds_num(sp[2])]
        ds.SliceThickness = _ds_num(sp[0])
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
        paths.append(_write(ds, d / f"CT_{s:04d}.dcm"))
        sops.append(sop)
    info.update({"SeriesInstanceUID": series_uid, "SOPInstanceUIDs": sops,
                 "PatientID": info.get("PatientID") or case.name,
                 "PatientName": info.get("PatientName") or f"rtlab^{case.name}"})
    case.meta["dicom"] = info
    return paths


_ROI_TYPE = {"target": "PTV", "body": "EXTERNAL", "oar": "ORGAN"}


def save_rtstruct(case: Case, path, reference=None) -> Path:
    """Write the case's structures as a DICOM RTSTRUCT (atomically).

    Each structure becomes one ROI with axial ``CLOSED_PLANAR`` contours that follow the voxel
    edges of its mask slice by slice (outer boundaries and holes; see
    :func:`mask_to_polygons`), so :func:`load_dicom` gets the mask back exactly.
    ``RTROIInterpretedType``: target -> PTV, body -> EXTERNAL, oar -> ORGAN.

    Parameters
    ----------
    case : Case
    path : path-like
        Output file.
    reference : Case, pydicom Dataset(s), file path(s) or folder, optional
        The CT series the contours belong to (its frame of reference and UIDs are referenced);
        default ``case.meta['dicom']`` (set by :func:`load_dicom` and :func:`save_dicom_ct`).

    Returns
    -------
    pathlib.Path
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.case.Case, got {type(case).__name__}")
    _pydicom()
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import generate_uid

    info = _ref_info(case if reference is None else reference)
    ds = _new_file_dataset(RT_STRUCTURE_SET_STORAGE, generate_uid())
    _patient_study(ds, info, case.name)
    info["FrameOfReferenceUID"] = ds.FrameOfReferenceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.StructureSetLabel = case.name[:16] or "rtlab"
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime

    frame = Dataset()
    frame.FrameOfReferenceUID = ds.FrameOfReferenceUID
    if info.get("SeriesInstanceUID"):
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, customary)
        study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = info["SeriesInstanceUID"]
        imgs = []
        for uid in info.get("SOPInstanceUIDs", []):
            it = Dataset()
            it.ReferencedSOPClassUID = CT_IMAGE_STORAGE
            it.ReferencedSOPInstanceUID = uid
            imgs.append(it)
        series.ContourImageSequence = DSequence(imgs)
        study.RTReferencedSeriesSequence = DSequence([series])
        frame.RTReferencedStudySequence = DSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DSequence([frame])

    grid = case.grid
    roi_items, contour_items, obs_items = [], [], []
    for num, s in enumerate(case.structures.values(), start=1):
        roi = Dataset()
        roi.ROINumber = num
        roi.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
        roi.ROIName = s.name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_items.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = num
        col = s.color or ((1.0, 0.0, 0.0) if s.kind == "target" else (0.0, 1.0, 0.0) if s.kind == "body" else (0.0, 0.5, 1.0))
        rc.ROIDisplayColor = [int(round(255 * float(c))) for c in col[:3]]
        cs = []
        for k in np.nonzero(s.mask.any(axis=(1, 2)))[0]:
            for poly in mask_to_polygons(s.mask[k]):
                world = grid.index_to_world(np.c_[np.full(len(poly), float(k)), poly])  # z, y, x
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                c.ContourData = [_ds_num(v) for v in world[:, ::-1].ravel()]
                cs.append(c)
        rc.ContourSequence = DSequence(cs)
        contour_items.append(rc)
        ob = Dataset()
        ob.ObservationNumber = num
        ob.ReferencedROINumber = num
        ob.RTROIInterpretedType = _ROI_TYPE[s.kind]
        ob.ROIInterpreter = ""
        obs_items.append(ob)
    ds.StructureSetROISequence = DSequence(roi_items)
    ds.ROIContourSequence = DSequence(contour_items)
    ds.RTROIObservationsSequence = DSequence(obs_items)
    return _write(ds, Path(path))


def save_dicom(case: Case, directory, orientation=(1, 0, 0, 0, 1, 0)) -> Path:
    """Write the CT series (:func:`save_dicom_ct`) and ``RS.dcm`` (:func:`save_rtstruct`) into ``directory``."""
    d = Path(directory)
    save_dicom_ct(case, d, orientation=orientation)
    save_rtstruct(case, d / "RS.dcm")
    return d


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
    reference : Case, pydicom Dataset(s), CT file path(s) or folder, optional
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
    _pydicom()
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import generate_uid

    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an rtlab.geometry.Grid, got {type(grid).__name__}")
    d = np.asarray(grid.check_array("dose", dose), dtype=np.float64)
    check_finite("dose", d)
    if d.size and d.min() < 0:
        raise ValueError(f"dose has negative values (min {d.min():g} Gy); RTDOSE stores non-negative doses, clip first")
    dmax = float(d.max()) if d.size else 0.0
    scaling = dmax / (2**32 - 1) if dmax > 0 else 1.0
    scaling = float(_ds_num(scaling))  # exactly the value that is written
    px = np.clip(np.rint(d / scaling), 0, 2**32 - 1).astype("<u4")
    info = _ref_info(reference)
    ds = _new_file_dataset(RT_DOSE_STORAGE, generate_uid())
    _patient_study(ds, info, "dose")
    ds.Modality = "RTDOSE"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    oz, oy, ox = grid.origin
    ds.ImagePositionPatient = [_ds_num(ox), _ds_num(oy), _ds_num(oz)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds_num(dy), _ds_num(dx)]
    ds.SliceThickness = _ds_num(dz)
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = 0x3004000C
    ds.GridFrameOffsetVector = [_ds_num(k * dz) for k in range(nz)]
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
    ds.DoseGridScaling = _ds_num(scaling)
    if plan_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
        ref.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = DSequence([ref])
    ds.PixelData = px.tobytes()
    return _write(ds, Path(path))


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
    pydicom = _pydicom()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path {str(p)!r} does not exist or is not a file")
    try:
        ds = pydicom.dcmread(p)
    except Exception as e:
        raise ValueError(f"{p.name} cannot be read as DICOM ({type(e).__name__}: {e})") from None
    where = p.name
    if str(ds.get("Modality", "")).upper() != "RTDOSE" and str(ds.get("SOPClassUID", "")) != RT_DOSE_STORAGE:
        raise ValueError(f"{where} is not an RTDOSE file (Modality {ds.get('Modality')!r})")
    iop = _floats(_req(ds, "ImageOrientationPatient", where), 6, "ImageOrientationPatient", where)
    ipp = _floats(_req(ds, "ImagePositionPatient", where), 3, "ImagePositionPatient", where)
    ps = _floats(_req(ds, "PixelSpacing", where), 2, "PixelSpacing", where)
    rows, cols = int(_req(ds, "Rows", where)), int(_req(ds, "Columns", where))
    scaling = float(_floats(_req(ds, "DoseGridScaling", where), 1, "DoseGridScaling", where)[0])
    if "PixelData" not in ds:
        raise ValueError(f"{where}: required DICOM tag PixelData (7FE0,0010) is missing")
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    units = str(ds.get("DoseUnits", "")).upper()
    if units != "GY":
        warnings.warn(f"{where}: DoseUnits is {units or 'missing'!r}, not GY; values are returned unscaled to Gy", stacklevel=2)
    axes, uvec = _image_axes(iop[:3], iop[3:], where)
    un = uvec[0]
    if nf > 1:
        off = _floats(_req(ds, "GridFrameOffsetVector", where), nf, "GridFrameOffsetVector", where)
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
    dose, grid = _assemble(vol, ipp0, axes, uvec, (step, float(ps[0]), float(ps[1])))
    return dose, grid
