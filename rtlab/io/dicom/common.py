"""What reading and writing DICOM share: pydicom (bound lazily), tag checks, the image geometry.

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
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from ..._util import atomic_path
from ...core.case import Case
from ...core.geometry import Grid
from ..._lazy import load, resolve

pydicom = load("pydicom", extra="dicom", purpose="DICOM support (pydicom >= 3)")
dataset = load("pydicom.dataset", extra="dicom", purpose="DICOM support (pydicom >= 3)")
uid = load("pydicom.uid", extra="dicom", purpose="DICOM support (pydicom >= 3)")
sequence = load("pydicom.sequence", extra="dicom", purpose="DICOM support (pydicom >= 3)")
errors = load("pydicom.errors", extra="dicom", purpose="DICOM support (pydicom >= 3)")
valuerep = load("pydicom.valuerep", extra="dicom", purpose="DICOM support (pydicom >= 3)")
datadict = load("pydicom.datadict", extra="dicom", purpose="DICOM support (pydicom >= 3)")
dataelem = load("pydicom.dataelem", extra="dicom", purpose="DICOM support (pydicom >= 3)")

__all__ = ["require_pydicom", "required", "floats", "ds_num", "axis_of", "unit_vector", "image_axes", "assemble", "slice_positions", "read_dir", "new_file_dataset", "write_dataset", "reference_info", "series_info", "patient_study", "new_rt_dataset", "looks_like_dicom", "read_file", "CT_IMAGE_STORAGE", "RT_DOSE_STORAGE", "RT_STRUCTURE_SET_STORAGE", "DICOM_TO_RTLAB", "pydicom"]


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"


RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def require_pydicom():
    """pydicom itself (imported now), or ImportError naming the ``[dicom]`` extra."""
    return resolve(pydicom)


def required(ds, keyword: str, where):
    """The value of a required tag, or ValueError naming the tag and the file."""
    if keyword not in ds or ds[keyword].value is None or (
        isinstance(ds[keyword].value, (str, bytes, list)) and len(ds[keyword].value) == 0
    ):
        tag = None
        try:
            t = datadict.tag_for_keyword(keyword)
            tag = f"({t >> 16:04X},{t & 0xFFFF:04X})" if t is not None else None
        except Exception:
            pass
        raise ValueError(f"{where}: required DICOM tag {keyword}{' ' + tag if tag else ''} is missing or empty")
    return ds[keyword].value


def floats(value, n: int | None, keyword: str, where) -> np.ndarray:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        a = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        shown = repr(value)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        raise ValueError(f"{where}: DICOM tag {keyword} must hold numbers, got {shown}") from None
    if n is not None and a.size != n:
        raise ValueError(f"{where}: DICOM tag {keyword} must hold {n} numbers, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: DICOM tag {keyword} holds non-finite numbers {a.tolist()}")
    return a


def ds_num(v) -> str:
    """``v`` as a DICOM decimal string (at most 16 characters)."""
    s = valuerep.format_number_as_ds(float(v))
    p = 14
    while len(s) > 16 and p > 1:  # pydicom rounds 9.999999999999998 up to the 17 characters '10.00000000000000'
        s, p = f"{float(v):.{p}g}", p - 1
    return s


DICOM_TO_RTLAB = {0: 2, 1: 1, 2: 0}


def axis_of(v, what: str, where) -> tuple[int, int]:
    """(rtlab axis, sign) of an axis-aligned direction cosine vector; ValueError if oblique."""
    v = np.asarray(v, float)
    k = int(np.argmax(np.abs(v)))
    others = np.delete(np.abs(v), k)
    if abs(abs(v[k]) - 1.0) > 1e-3 or np.any(others > 1e-3):
        raise ValueError(
            f"{where}: ImageOrientationPatient {what} direction {np.round(v, 5).tolist()} is oblique; rtlab "
            "supports only axis-aligned series (cosines 0 or +-1); resample the series to an axial grid first"
        )
    return DICOM_TO_RTLAB[k], (1 if v[k] > 0 else -1)


def unit_vector(axis_sign) -> np.ndarray:
    ax, sg = axis_sign
    u = np.zeros(3)
    u[{2: 0, 1: 1, 0: 2}[ax]] = sg
    return u


def image_axes(r, c, where):
    """Axis mapping of image axes (slice s, row j, column i) -> (rtlab axis, sign), snapped unit vectors."""
    a_i = axis_of(r, "row", where)
    a_j = axis_of(c, "column", where)
    if a_i[0] == a_j[0]:
        raise ValueError(f"{where}: ImageOrientationPatient row and column directions are parallel")
    ur, uc = unit_vector(a_i), unit_vector(a_j)
    un = np.cross(ur, uc)
    a_s = axis_of(un, "normal", where)
    return (a_s, a_j, a_i), (un, uc, ur)


def assemble(vol_sji: np.ndarray, ipp0, axes, units, spacing_sji):
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


def slice_positions(ipps: np.ndarray, n: np.ndarray, r, c, where, tol: float = 0.01):
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


def looks_like_dicom(path: Path) -> bool:
    """True if ``path`` claims to be DICOM: the ``DICM`` prefix after the 128-byte preamble, or a ``.dcm`` name."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_file(path: Path, **kw):
    """``pydicom.dcmread(path)``; a file that fails to parse is a ``ValueError`` naming it and the reason."""
    require_pydicom()
    try:
        ds = pydicom.dcmread(path, **kw)
    except Exception as e:  # pydicom raises many types for damaged files (InvalidDicomError, EOFError, ...)
        raise ValueError(f"{path.name}: cannot be read as DICOM ({type(e).__name__}: {e}); the file is damaged or "
                         "not DICOM - repair or remove it") from None
    # pydicom keeps a value shorter than its declared length and stops quietly at a garbled data
    # set: check both before anything is converted
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, dataelem.RawDataElement) and raw.value is not None and raw.length != 0xFFFFFFFF \
                and len(raw.value) < raw.length:
            raise ValueError(f"{path.name}: cannot be read as DICOM: element ({tag.group:04X},{tag.elem:04X}) declares "
                             f"{raw.length} bytes but the file holds only {len(raw.value)}; the file is truncated or damaged - "
                             "repair or remove it")
    if not str(ds.get("SOPClassUID", "") or "").strip():
        claimed = ""
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPClassUID"):
            claimed = f" (its header announces SOP class {meta.MediaStorageSOPClassUID})"
        raise ValueError(f"{path.name}: cannot be read as DICOM: its data set holds {len(ds)} readable element(s) and "
                         f"no SOPClassUID{claimed}; the file is truncated or damaged - repair or remove it")
    return ds


def read_dir(directory: Path):
    """The CT and RTSTRUCT datasets of a folder: ``([(path, ds), ...], [(path, ds), ...])``.

    Files that do not look like DICOM (no ``DICM`` prefix, not named ``.dcm``: READMEs,
    thumbnails) are skipped; a file that looks like DICOM and fails to parse is a
    ``ValueError`` naming it - never silently dropped, since a missing slice or structure set
    would change the case.
    """
    require_pydicom()

    cts, structs = [], []
    for p in sorted(q for q in directory.iterdir() if q.is_file()):
        if not looks_like_dicom(p):
            continue  # not a DICOM file (README, thumbnails, ...)
        ds = read_file(p)
        mod = str(ds.get("Modality", "")).upper()
        sop = str(ds.get("SOPClassUID", ""))
        if mod == "CT" or sop == CT_IMAGE_STORAGE:
            cts.append((p, ds))
        elif mod == "RTSTRUCT" or sop == RT_STRUCTURE_SET_STORAGE:
            structs.append((p, ds))
    return cts, structs


def new_file_dataset(sop_class: str, sop_instance: str):
    require_pydicom()

    meta = dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
    ds = dataset.FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    now = dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def write_dataset(ds, path: Path) -> Path:
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def reference_info(reference) -> dict:
    """Patient/study/frame UIDs from a Case (meta['dicom']), dataset.Dataset(s) or DICOM file path(s).

    From datasets or files also ``SOPClassUID`` (of the first), so that a writer can tell a CT
    series (whose slices an RTSTRUCT references) from another reference (an RTDOSE); a Case's
    ``meta['dicom']`` describes its CT series.
    """
    if reference is None:
        return {}
    if isinstance(reference, Case):
        return dict(reference.meta.get("dicom", {}))
    require_pydicom()

    items = reference if isinstance(reference, (list, tuple)) else [reference]
    dss = []
    for it in items:
        if isinstance(it, dataset.Dataset):
            dss.append(it)
        else:
            p = Path(it)
            if p.is_dir():
                cts, _ = read_dir(p)
                dss.extend(ds for _, ds in cts)
            else:
                dss.append(read_file(p, stop_before_pixels=True))
    if not dss:
        raise ValueError("reference holds no DICOM datasets; pass the CT files, their folder, or a Case loaded with load_dicom")
    info = series_info(dss[0], dss)
    info["SOPClassUID"] = str(dss[0].get("SOPClassUID", ""))
    return info


def series_info(first, datasets) -> dict:
    """The UIDs a written file needs to reference a series: study, series, frame of reference and
    patient of ``first`` (a dataset of the series), and the ``SOPInstanceUID`` of each of
    ``datasets`` in order. Missing tags give ``''``.

    The dict :func:`rtlab.io.load_dicom` keeps in ``case.meta['dicom']`` and
    :func:`reference_info` returns (both add keys of their own).
    """
    return {
        "StudyInstanceUID": str(first.get("StudyInstanceUID", "")),
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "")),
        "FrameOfReferenceUID": str(first.get("FrameOfReferenceUID", "")),
        "PatientID": str(first.get("PatientID", "")),
        "PatientName": str(first.get("PatientName", "")),
        "SOPInstanceUIDs": [str(d.get("SOPInstanceUID", "")) for d in datasets],
    }


def patient_study(ds, info: dict, case_name: str):
    ds.PatientName = info.get("PatientName") or f"rtlab^{case_name}"
    ds.PatientID = info.get("PatientID") or case_name
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = info.get("StudyInstanceUID") or uid.generate_uid()
    ds.StudyID = "1"
    ds.StudyDate = ds.InstanceCreationDate
    ds.StudyTime = ds.InstanceCreationTime
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.FrameOfReferenceUID = info.get("FrameOfReferenceUID") or uid.generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "rtlab"


def new_rt_dataset(sop_class: str, sop_instance: str, info: dict, name: str, modality: str, series_number: int):
    """A new single-instance RT file (RTSTRUCT, RTDOSE, RTPLAN) in a series of its own.

    :func:`new_file_dataset` (SOP Common), :func:`patient_study` (Patient, General Study,
    Frame of Reference, General Equipment from ``info``; ``name`` stands in for a missing
    patient) and the RT Series module: ``Modality``, a new ``SeriesInstanceUID``,
    ``SeriesNumber`` ``series_number``, ``InstanceNumber`` 1 and an empty ``OperatorsName``
    (Type 2, which dciodvfy asks for).
    """
    ds = new_file_dataset(sop_class, sop_instance)
    patient_study(ds, info, name)
    ds.Modality = modality
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.OperatorsName = ""  # Type 2 of the RT Series module
    return ds
