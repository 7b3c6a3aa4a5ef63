"""Lossless ``.npz`` storage of cases, doses and extra arrays (no pickle).

Layout of a file written by :func:`save_npz`:

``__rtlab__``
    A JSON string (0-d unicode array): format version, the case's name, grid, prescription,
    goals, beams, description, JSON-serialisable ``meta`` entries, and for each structure its
    name, kind, prescription, colour and ``allow_empty`` flag; also the dose grid.
``case_ct``, ``case_density``, ``case_mask_0``, ``case_mask_1``, ...
    The case's arrays ``(z, y, x)`` (CT in HU, relative electron density, boolean masks).
``dose``
    A dose array in Gy ``(z, y, x)`` (the array the command line reads, see
    :func:`load_dose_npz`).
anything else
    Extra arrays given as keyword arguments.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._util import atomic_path, check_finite
from ..core.case import BeamSpec, Case, Goal
from ..core.geometry import Grid, Structure, StructureSet
from ..core.validate import check_decode_bytes, check_dose, check_voxels

__all__ = ["save_npz", "load_npz", "load_dose_npz", "NpzContents", "read_npz_array", "npz_keys"]

_FORMAT = "rtlab-npz"
_VERSION = 1
_RESERVED_PREFIXES = ("case_", "__")


@dataclass
class NpzContents:
    """What :func:`load_npz` returns.

    Attributes
    ----------
    case : Case or None
    dose : ndarray or None
        Dose in Gy ``(z, y, x)``.
    grid : Grid or None
        The dose grid (the case's grid when the dose was saved with a case and no grid).
    arrays : dict of str to ndarray
        Extra arrays.
    """

    case: Case | None = None
    dose: np.ndarray | None = None
    grid: Grid | None = None
    arrays: dict = field(default_factory=dict)


def _jsonable_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            warnings.warn(f"case.meta[{k!r}] is not JSON-serialisable and is not saved to the npz file", stacklevel=3)
            continue
        out[str(k)] = v
    return out


def save_npz(path, case: Case | None = None, dose=None, grid: Grid | None = None, compress: bool = True, **arrays):
    """Save a case, a dose and/or extra arrays to one ``.npz`` file (atomically).

    Parameters
    ----------
    path : path-like
        Destination (``.npz`` recommended; the name is used as given).
    case : Case, optional
        Saved losslessly (grid, CT, density, structures with kinds and prescriptions, goals,
        beams, description, JSON-serialisable ``meta``).
    dose : array_like, optional
        Dose in Gy, shape ``grid.shape`` ``(z, y, x)``; must be finite.
    grid : Grid, optional
        The dose grid; defaults to ``case.grid``.
    compress : bool
        Use ``np.savez_compressed``.
    **arrays
        Extra arrays; names must not start with ``case_`` or ``__`` nor be ``dose``.

    Returns
    -------
    pathlib.Path
    """
    out: dict[str, np.ndarray] = {}
    meta: dict = {"format": _FORMAT, "version": _VERSION}
    if case is not None:
        if not isinstance(case, Case):
            raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")
        structs = []
        for i, s in enumerate(case.structures.values()):
            out[f"case_mask_{i}"] = np.asarray(s.mask, dtype=bool)
            structs.append({
                "name": s.name, "kind": s.kind, "prescription": s.prescription,
                "color": None if s.color is None else [float(c) for c in s.color],
                "allow_empty": bool(s.allow_empty),
            })
        out["case_ct"] = np.asarray(case.ct, np.float32)
        out["case_density"] = np.asarray(case.density, np.float32)
        meta["case"] = {
            "name": case.name,
            "grid": case.grid.to_dict(),
            "prescription": case.prescription,
            "goals": [[g.structure, g.metric, g.comparator, float(g.value)] for g in case.goals],
            "beams": [[float(b.gantry), float(b.couch), None if b.isocenter is None else [float(v) for v in b.isocenter]]
                      for b in case.beams],
            "description": case.description,
            "meta": _jsonable_meta(case.meta),
            "structures": structs,
        }
    if grid is not None and not isinstance(grid, Grid):
        raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
    if dose is not None:
        g = grid if grid is not None else (case.grid if case is not None else None)
        d = np.asarray(dose)
        if d.dtype.kind not in "iuf":
            raise TypeError(f"dose must be a numeric array (Gy), got dtype {d.dtype}")
        if g is not None:
            g.check_array("dose", d)
        check_finite("dose", d)
        out["dose"] = d
    if grid is not None:
        meta["grid"] = grid.to_dict()
    for k, v in arrays.items():
        if k == "dose" or k.startswith(_RESERVED_PREFIXES):
            raise ValueError(f"extra array name {k!r} is reserved; rename it (names must not be 'dose' or start with 'case_' or '__')")
        a = np.asarray(v)
        if a.dtype == object:
            raise TypeError(f"extra array {k!r} has dtype object; only numeric/bool/str arrays can be saved (no pickle)")
        out[k] = a
    out["__rtlab__"] = np.array(json.dumps(meta))
    saver = np.savez_compressed if compress else np.savez
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            saver(fh, **out)
    return Path(path)


def _open_npz(path) -> zipfile.ZipFile:
    """The zip archive of an ``.npz`` file, or ``ValueError`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path {str(p)!r} does not exist or is not a file")
    if not zipfile.is_zipfile(p):
        raise ValueError(f"{p.name} is not an .npz file (not a zip archive); save arrays with numpy.savez or rtlab.io.save_npz")
    try:
        return zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{p.name} cannot be read as an .npz file ({type(e).__name__}: {e})") from None


def npz_keys(zf: zipfile.ZipFile) -> list[str]:
    """Array names of an ``.npz`` archive (member names without ``.npy``), in archive order."""
    return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]


def _read_header(fh, where: str):
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise ValueError(f"{where} cannot be read ({type(e).__name__}: {e}); the file is damaged") from None
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"{where} is not a .npy array ({e}); the file is damaged or not written by numpy") from None
    return shape, fortran, dtype


def read_npz_array(zf: zipfile.ZipFile, key: str, where: str, budget: list | None = None) -> np.ndarray:
    """One array of an ``.npz`` archive, its size checked from the ``.npy`` header before it is read.

    The header's shape and dtype must match the member's size in the archive (a header
    declaring 10**15 elements in a small file is refused without allocating anything), the
    array must not hold Python objects (no pickle), and what it decodes to must fit
    :func:`rtlab.core.validate.max_decode_bytes` (together with the arrays already charged to
    ``budget``). A damaged archive (bad CRC, truncated data) raises ``ValueError``.

    Parameters
    ----------
    zf : zipfile.ZipFile
        The open archive.
    key : str
        Array name (the member ``key.npy``).
    where : str
        The file's name, for messages.
    budget : list of one int, optional
        Bytes already decoded from this file; updated.
    """
    member = key + ".npy" if key + ".npy" in zf.namelist() else key
    label = f"{where}: entry {member!r}"
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise ValueError(f"{where} has no entry {key!r}") from None
    try:
        with zf.open(info) as fh:
            shape, fortran, dtype = _read_header(fh, label)
            data_bytes = info.file_size - fh.tell()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as e:
        raise ValueError(f"{label} cannot be read ({type(e).__name__}: {e}); the file is damaged") from None
    if dtype.hasobject:
        raise ValueError(f"{label} holds Python objects (dtype {dtype}); rtlab reads only numeric, boolean and "
                         "text arrays (no pickle)")
    count = math.prod(int(v) for v in shape)
    nbytes = count * dtype.itemsize
    if nbytes != data_bytes:
        raise ValueError(f"{label}: its header declares shape {tuple(shape)} of {dtype} ({nbytes:,} bytes) but the "
                         f"entry holds {max(data_bytes, 0):,} bytes of data; the file is damaged")
    total = (budget[0] if budget else 0) + nbytes
    check_decode_bytes(total, label)
    if budget is not None:
        budget[0] = total
    try:
        with zf.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError) as e:
        raise ValueError(f"{label} cannot be read ({type(e).__name__}: {e}); the file is damaged") from None


def load_npz(path) -> NpzContents:
    """Read a file written by :func:`save_npz` (or any ``.npz``: its arrays land in ``arrays``).

    Returns
    -------
    NpzContents
        ``case`` (exactly as saved), ``dose``, ``grid`` and the extra ``arrays``.
    """
    p = Path(path)
    budget = [0]
    with _open_npz(p) as z:
        data = {k: read_npz_array(z, k, p.name, budget) for k in npz_keys(z)}
    res = NpzContents()
    meta = {}
    if "__rtlab__" in data:
        try:
            meta = json.loads(str(data.pop("__rtlab__")))
        except ValueError:
            raise ValueError(f"{p.name}: the __rtlab__ metadata entry is not valid JSON; the file is damaged") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{p.name}: unknown metadata format {meta.get('format')!r}")
        if int(meta.get("version", 0)) > _VERSION:
            raise ValueError(f"{p.name} was written by a newer rtlab (format version {meta['version']}); upgrade rtlab")
    if meta and not isinstance(meta, dict):
        raise ValueError(f"{p.name}: the __rtlab__ metadata entry is not a JSON object; the file is damaged")
    if "case" in meta:
        cm = meta["case"]
        try:
            grid = Grid.from_dict(cm["grid"])
            structures = StructureSet(grid)
            for i, s in enumerate(cm["structures"]):
                structures.add(Structure(
                    s["name"], data.pop(f"case_mask_{i}"), grid, kind=s["kind"], prescription=s["prescription"],
                    color=None if s["color"] is None else tuple(s["color"]), allow_empty=s["allow_empty"],
                ))
            res.case = Case(
                name=cm["name"], grid=grid, ct=data.pop("case_ct"), structures=structures,
                prescription=cm["prescription"],
                goals=[Goal(*g) for g in cm["goals"]],
                beams=[BeamSpec(b[0], b[1], None if b[2] is None else tuple(b[2])) for b in cm["beams"]],
                density=data.pop("case_density"), description=cm["description"], meta=cm["meta"],
            )
        except KeyError as e:
            raise ValueError(f"{p.name}: case entry {e} is missing; the file is damaged or not written by rtlab") from None
        except (TypeError, ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"{p.name}: the case stored in it is not valid ({e})") from None
    if "grid" in meta:
        try:
            res.grid = Grid.from_dict(meta["grid"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{p.name}: the grid stored in it is not valid ({e})") from None
    elif res.case is not None:
        res.grid = res.case.grid
    res.dose = data.pop("dose", None)
    if res.dose is not None and res.grid is not None:
        res.grid.check_array("dose", res.dose)
    res.arrays = data
    return res


def load_dose_npz(path, expected_shape=None, allow_negative: bool = False) -> np.ndarray:
    """Read the dose array (Gy, ``(z, y, x)``) from an ``.npz`` file holding an array ``dose``.

    This is the dose-file format of the command line: ``np.savez("plan.npz", dose=d)``.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file.
    expected_shape : tuple of int, optional
        The grid's shape ``(nz, ny, nx)``; a dose of another shape raises ``ValueError``.
    allow_negative : bool
        Accept negative values (off by default: a negative dose is a bug upstream).

    Returns
    -------
    ndarray of float32 or float64
        Floating arrays keep their precision; integer arrays are converted to float64.

    Raises
    ------
    ValueError
        The file is missing, not an npz or damaged (bad CRC, truncated, an entry that is not a
        ``.npy`` array), has no ``dose`` array, the dose is not 3-D / has the wrong shape /
        more voxels than :func:`rtlab.core.validate.max_voxels` (all checked from the ``.npy``
        header before the array is read), is boolean, or fails
        :func:`rtlab.core.validate.check_dose` (NaN/inf, negative values, above
        :data:`~rtlab.core.validate.MAX_DOSE_GY`).
    """
    p = Path(path)
    with _open_npz(p) as z:
        keys = npz_keys(z)
        if "dose" not in keys:
            raise ValueError(
                f"{p.name} holds no array named 'dose' (it has {sorted(f for f in keys if f != '__rtlab__')}); "
                "save the dose with np.savez(path, dose=dose_gy)"
            )
        try:
            with z.open("dose.npy" if "dose.npy" in z.namelist() else "dose") as fh:
                shape, _, dtype = _read_header(fh, f"{p.name}: entry 'dose'")
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as e:
            raise ValueError(f"{p.name}: entry 'dose' cannot be read ({type(e).__name__}: {e}); the file is damaged") from None
        if dtype.kind == "b":
            raise ValueError(f"{p.name}: 'dose' is a boolean array (a structure mask?); a dose is a numeric array in Gy")
        if dtype.kind not in "iuf":
            raise ValueError(f"{p.name}: 'dose' must be numeric (Gy), got dtype {dtype}")
        if len(shape) != 3:
            raise ValueError(f"{p.name}: 'dose' must be a 3-D array (z, y, x), got shape {tuple(shape)}")
        if expected_shape is not None and tuple(shape) != tuple(int(s) for s in expected_shape):
            raise ValueError(
                f"{p.name}: 'dose' has shape {tuple(shape)} but the grid is {tuple(expected_shape)} (z, y, x); "
                "compute the dose on the case's grid or resample it (rtlab.core.geometry.resample)"
            )
        check_voxels(shape, f"{p.name}: 'dose'")
        d = read_npz_array(z, "dose", p.name)
    if d.dtype.kind != "f":
        d = d.astype(np.float64)
    try:
        check_dose(f"'dose' in {p.name}", d, allow_negative=allow_negative)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e) + ("" if allow_negative or "negative" not in str(e) else
                                   "; or pass allow_negative=True")) from None
    return d
