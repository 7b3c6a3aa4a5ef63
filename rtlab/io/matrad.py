"""matRad ``.mat`` phantoms: read the ``ct`` and ``cst`` structures into a :class:`~rtlab.core.case.Case`.

matRad conventions (https://github.com/e0404/matRad, the ``ct``/``cst`` data model)
----------------------------------------------------------------------------------
``ct``
    ``ct.cube``: a cell array holding the cube(s) (one per CT scenario; the first is used),
    normally *relative electron density* (water = 1). ``ct.cubeHU`` (optional): the same in HU.
    ``ct.cubeDim = [Ny Nx Nz]``: matRad cubes are indexed ``(y, x, z)`` (MATLAB rows = y,
    columns = x, slices = z). ``ct.resolution.x/.y/.z``: voxel size in mm. ``ct.x``, ``ct.y``,
    ``ct.z`` (optional): world coordinates of the voxel centres in mm.
``cst``
    An ``N x 6`` cell array, one row per structure:
    ``{index0, name, type ('TARGET'/'OAR'/'IGNORED'), {voxel indices}, properties, objectives}``.
    Voxel indices are 1-based linear indices into the ``[Ny Nx Nz]`` cube in MATLAB
    column-major order, ``l = 1 + y + Ny*x + Ny*Nx*z`` for 0-based ``(y, x, z)``. Objectives are
    either the old struct array (fields ``type``, ``dose``, ``penalty``, ...) or the matRad 3
    cell array of structs (``className``, ``parameters``, ``penalty``).

Conversion to rtlab
-------------------
* Arrays become ``(z, y, x)``: ``rtlab[k, j, i] = matRad(j+1, i+1, k+1)``.
* Origin: from ``ct.z(1), ct.y(1), ct.x(1)`` when the coordinate vectors are present (a
  decreasing vector is flipped so spacing stays positive); otherwise matRad's classic default,
  voxel ``(1, 1, 1)`` centred at ``(res.z, res.y, res.x)``, i.e. ``world = index * res`` for a
  1-based index, so ``Grid.origin = (res.z, res.y, res.x)``.
* Structures named like BODY / External / Skin / Outline / Körper become kind ``'body'``;
  ``TARGET`` becomes ``'target'`` with the prescription taken from a squared-deviation (or,
  failing that, squared-underdosing) objective's dose; every other structure (``OAR``,
  ``IGNORED``) becomes ``'oar'``. The matRad type and objectives are kept in
  ``case.meta['matrad']``. Empty structures are skipped with a warning.
* The ``cst`` objectives (matRad 2 structs or matRad 3 class structs) are read by
  :mod:`rtlab.io.matrad_objectives` and become the case's goals (e.g. squared overdosing at
  25 Gy -> ``D2 <= 25``); ``objective='matrad'`` plans with the objectives themselves.
* CT numbers: ``ct.cubeHU`` when present; otherwise HU are derived from the density cube with
  :func:`rtlab.core.materials.density_to_hu`. The density cube is kept as ``Case.density``; when
  only HU are present the density comes from :func:`rtlab.core.materials.hu_to_density`. Both use
  ``hu_table`` (default :data:`rtlab.core.materials.DEFAULT_HU_TABLE`, a generic curve, not
  matRad's own HLUT).

Both MAT v5 (``scipy.io.loadmat``) and v7.3 (HDF5, read with ``h5py``) files are supported.
Neither is trusted: the v7.3 decoder memoises objects by HDF5 address and refuses cycles, deep
nesting, too many references and data beyond the decode budget (checked from shapes before
reading); MAT v5 element headers are walked before scipy reads anything (docs/security.md).

Size: over 600 lines on purpose: the one reader of MATLAB files, with both bounded decoders
(HDF5 and the MAT v5 header walk) next to the matRad data model they serve; splitting them
would spread one file format's limits over several modules.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from scipy.io import loadmat, savemat
from scipy.io.matlab import MatlabFunction, MatlabOpaque

from .._lazy import load, resolve
from .._util import atomic_path
from ..core.case import Case
from ..core.geometry import Grid, Structure, StructureSet
from ..core.materials import DEFAULT_HU_TABLE, density_to_hu, hu_to_density
from ..core.validate import MAX_NESTING, MAX_REFERENCES, check_decode_bytes, check_voxels, max_decode_bytes
from .matrad_objectives import goals_from_objectives, matrad_objectives

h5py = load("h5py", extra="dicom", purpose="reading MATLAB v7.3 (HDF5) files")

__all__ = ["load_matrad", "save_matrad", "read_mat", "is_body_name"]

_BODY_RE = re.compile(r"^(body|external|skin|outline|patient|k(ö|oe|o)rper)([ _\-]?\d*)?$", re.IGNORECASE)


def is_body_name(name: str) -> bool:
    """True if a structure name denotes the patient outline (BODY, External, Skin, Körper, ...)."""
    return bool(_BODY_RE.match(str(name).strip()))


class _Opaque:
    """Placeholder for a MATLAB value rtlab cannot decode (e.g. classdef objects)."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<undecodable MATLAB value: {self.what}>"


# ---------------------------------------------------------------------------------------
# Reading MAT files into a common Python form:
#   struct 1x1 -> dict, struct array -> list of dict, cell -> object ndarray (MATLAB shape),
#   char -> str, numeric/logical -> ndarray with MATLAB shape.
# ---------------------------------------------------------------------------------------
def _from_scipy(x):
    if isinstance(x, (MatlabOpaque, MatlabFunction)):
        return _Opaque(type(x).__name__)
    if isinstance(x, np.ndarray):
        if x.dtype.names:
            items = [{f: _from_scipy(el[f]) for f in x.dtype.names} for el in x.ravel(order="F")]
            return items[0] if x.size == 1 else items
        if x.dtype == object:
            out = np.empty(x.shape, dtype=object)
            for idx in np.ndindex(x.shape):
                out[idx] = _from_scipy(x[idx])
            return out
        if x.dtype.kind == "U":
            rows = [str(s) for s in x.ravel()]
            return rows[0] if len(rows) == 1 else ("" if not rows else "\n".join(rows))
        return x
    if isinstance(x, str):
        return x
    if x is None:
        return None
    return np.asarray(x)


def _h5_class(obj) -> str | None:
    try:
        c = obj.attrs.get("MATLAB_class")
    except (OSError, KeyError, TypeError, ValueError):
        return None
    if c is None:
        return None
    return c.decode(errors="replace") if isinstance(c, bytes) else str(c)


_NUMERIC_CLASSES = ("double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
#: Bytes charged per decoded object reference (a Python object slot and its bookkeeping).
_REF_COST = 64


class _H5Decoder:
    """Decode a MATLAB v7.3 (HDF5) file into plain Python values, with bounded cost.

    * Every HDF5 object is decoded once: the result is memoised by the object's address in
      the file, so shared references (a cell pointing 2000 times at one dataset) decode once
      and yield the same Python object.
    * A reference (or hard link) back to an object that is still being decoded is a cycle:
      ``ValueError`` naming the path, not a ``RecursionError``.
    * Cells and structs nest at most :data:`rtlab.core.validate.MAX_NESTING` levels; a file
      holds at most :data:`rtlab.core.validate.MAX_REFERENCES` references.
    * Before a dataset is read its size is computed from its shape and dtype and added to the
      file's total, which must stay within :func:`rtlab.core.validate.max_decode_bytes`.
    * External links, external raw storage and virtual datasets (data in other files) are
      refused: a MAT file is read from itself only.
    """

    def __init__(self, f, where: str):
        self.f = f
        self.where = where
        self.memo: dict = {}
        self.active: set = set()
        self.bytes = 0
        self.refs = 0
        self.limit = max_decode_bytes()

    def charge(self, nbytes: int, path: str):
        self.bytes += int(nbytes)
        if self.bytes > self.limit:
            check_decode_bytes(self.bytes, f"{self.where} (at {path})")

    def charge_refs(self, n: int, path: str):
        self.refs += int(n)
        if self.refs > MAX_REFERENCES:
            raise ValueError(f"{self.where}: more than {MAX_REFERENCES:,} object references (at {path}); rtlab's "
                             "limit for a MATLAB v7.3 file (see docs/security.md) - the file is damaged or hostile")
        self.charge(_REF_COST * int(n), path)

    def deref(self, ref, path: str):
        if not ref:
            raise ValueError(f"{self.where}: {path} holds a null object reference; the file is damaged")
        try:
            return self.f[ref]
        except (KeyError, ValueError, OSError, TypeError) as e:
            raise ValueError(f"{self.where}: {path} holds an object reference that cannot be followed ({e}); "
                             "the file is damaged") from None

    def references(self, ds, path: str):
        """``(references, addresses)`` of a reference dataset, both transposed to MATLAB order.

        An HDF5 object reference (what MATLAB writes) is the address of the object it points
        to, so repeated references are recognised without following them; ``addresses`` is
        None for other reference kinds (each is then followed to find its address).
        """
        refs = np.asarray(self._read(ds, path))
        addrs = None
        try:
            if ds.id.get_type().equal(h5py.h5t.STD_REF_OBJ):
                addrs = np.empty(ds.shape, np.uint64)
                ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, addrs, mtype=h5py.h5t.STD_REF_OBJ)
                addrs = addrs.T
        except (OSError, ValueError, TypeError):
            addrs = None
        return refs.T, addrs

    def follow(self, ref, addr, path: str, depth: int):
        """Decode what a reference points to (memoised by its address)."""
        if addr is not None and int(addr) in self.memo:
            return self.memo[int(addr)]
        return self.decode(self.deref(ref, path), path, depth)

    def decode(self, obj, path: str, depth: int = 0):
        try:
            addr = int(h5py.h5o.get_info(obj.id).addr)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{self.where}: {path} cannot be read ({e}); the file is damaged") from None
        if addr in self.memo:
            return self.memo[addr]
        if addr in self.active:
            raise ValueError(f"{self.where}: {path} refers back to an object that contains it (a reference cycle); "
                             "MATLAB never writes one - the file is damaged or hostile")
        if depth > MAX_NESTING:
            raise ValueError(f"{self.where}: cells and structs nest deeper than {MAX_NESTING} levels (at {path}); "
                             "rtlab's limit (see docs/security.md) - the file is damaged or hostile")
        self.active.add(addr)
        try:
            out = self._decode(obj, path, depth)
        finally:
            self.active.discard(addr)
        self.memo[addr] = out
        return out

    def members(self, group, path: str) -> dict:
        out = {}
        for k in group.keys():
            if k.startswith("#"):
                continue
            link = group.get(k, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise ValueError(f"{self.where}: {path}.{k} is a link to another file ({link.filename}); rtlab reads "
                                 "a MAT file from itself only")
            try:
                out[k] = group[k]
            except (KeyError, OSError, ValueError) as e:
                raise ValueError(f"{self.where}: {path}.{k} cannot be read ({e}); the file is damaged") from None
        return out

    def _decode(self, obj, path: str, depth: int):
        cls = _h5_class(obj)
        if isinstance(obj, h5py.Group):
            if cls not in (None, "struct"):
                return _Opaque(f"HDF5 group of MATLAB class {cls}")
            fields = self.members(obj, path)
            vals = list(fields.values())
            if vals and all(
                isinstance(v, h5py.Dataset) and v.dtype == h5py.ref_dtype and _h5_class(v) is None for v in vals
            ):
                # struct array: each field is an array of references, one per element
                shape = vals[0].shape[::-1]
                refs = {}
                for k, v in fields.items():
                    if v.shape[::-1] != shape:
                        raise ValueError(f"{self.where}: struct array {path} has fields of different sizes; "
                                         "the file is damaged")
                    refs[k] = self.references(v, f"{path}.{k}")
                items = []
                for idx in np.ndindex(shape):
                    items.append({k: self.follow(r[idx], None if a is None else a[idx], f"{path}({idx}).{k}", depth + 1)
                                  for k, (r, a) in refs.items()})
                # MATLAB order is column-major
                order = np.arange(len(items)).reshape(shape).ravel(order="F") if items else []
                items = [items[i] for i in order]
                return items[0] if len(items) == 1 else items
            return {k: self.decode(v, f"{path}.{k}", depth + 1) for k, v in fields.items()}
        if not isinstance(obj, h5py.Dataset):
            return _Opaque(f"HDF5 object {type(obj).__name__}")
        # dataset
        try:
            empty = obj.attrs.get("MATLAB_empty", 0)
        except (OSError, TypeError, ValueError):
            empty = 0
        if np.any(empty):
            if cls == "cell":
                return np.empty((0, 0), dtype=object)
            if cls == "char":
                return ""
            if cls == "struct":
                return []
            return np.zeros((0, 0))
        if cls == "cell" or obj.dtype == h5py.ref_dtype:
            refs, addrs = self.references(obj, path)
            out = np.empty(refs.shape, dtype=object)
            for idx in np.ndindex(refs.shape):
                out[idx] = self.follow(refs[idx], None if addrs is None else addrs[idx],
                                       f"{path}{{{','.join(str(i + 1) for i in idx)}}}", depth + 1)
            return out
        arr = np.asarray(self._read(obj, path))
        if cls == "char":
            m = np.atleast_2d(arr.T)
            rows = [np.asarray(row, dtype="<u4").tobytes().decode("utf-32-le", errors="replace") for row in m]
            return rows[0] if len(rows) == 1 else "\n".join(rows)
        if cls == "logical":
            return arr.T.astype(bool)
        if cls is not None and cls not in _NUMERIC_CLASSES:
            return _Opaque(f"MATLAB class {cls}")
        if arr.dtype.names and set(arr.dtype.names) >= {"real", "imag"}:
            arr = arr["real"] + 1j * arr["imag"]
        return arr.T

    def _read(self, ds, path: str):
        """``ds[()]`` after refusing data from other files and charging its size to the budget."""
        try:
            external = ds.external
            virtual = ds.is_virtual
        except (OSError, ValueError, TypeError):
            external, virtual = None, False
        if external or virtual:
            raise ValueError(f"{self.where}: {path} keeps its data in another file "
                             f"({'virtual dataset' if virtual else 'external storage'}); rtlab reads a MAT file "
                             "from itself only")
        n = math.prod(int(v) for v in ds.shape) if ds.shape is not None else 0
        if ds.dtype == h5py.ref_dtype:
            self.charge_refs(n, path)
        else:
            self.charge(n * max(ds.dtype.itemsize, 1) * (2 if _h5_class(ds) == "char" else 1), path)
        try:
            return ds[()]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{self.where}: {path} cannot be read ({type(e).__name__}: {e}); the file is damaged") from None


# ---------------------------------------------------------------------------------------
# MAT v5: the structure is checked from the element headers before scipy reads anything
# (MATLAB "MAT-File Format", The MathWorks: 128-byte header, then tagged data elements;
# miCOMPRESSED elements hold a zlib stream of one element).
# ---------------------------------------------------------------------------------------
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_MX_CELL, _MX_STRUCT, _MX_OBJECT = 1, 2, 3


class _Inflater:
    """A read-only stream over a zlib-compressed span of a file, counting what it inflates."""

    def __init__(self, fh, nbytes: int, on_bytes):
        self.fh, self.left, self.on_bytes = fh, int(nbytes), on_bytes
        self.z = zlib.decompressobj()
        self.buf = b""

    def read(self, n: int) -> bytes:
        out = []
        have = 0
        while have < n:
            if self.buf:
                take = self.buf[: n - have]
                self.buf = self.buf[len(take):]
                out.append(take)
                have += len(take)
                continue
            if self.z.unconsumed_tail:
                src = self.z.unconsumed_tail
            elif self.left > 0:
                src = self.fh.read(min(self.left, 1 << 16))
                if not src:
                    break
                self.left -= len(src)
            else:
                break
            try:
                self.buf = self.z.decompress(src, 1 << 20)
            except zlib.error as e:
                raise ValueError(f"a compressed variable is damaged (zlib: {e})") from None
            self.on_bytes(len(self.buf))
            if not self.buf and not self.z.unconsumed_tail and self.left <= 0:
                break
        return b"".join(out)

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            got = len(self.read(min(n - done, 1 << 20)))
            if not got:
                break
            done += got
        return done


class _Plain:
    """The same interface over the uncompressed file."""

    def __init__(self, fh):
        self.fh = fh

    def read(self, n: int) -> bytes:
        return self.fh.read(n)

    def skip(self, n: int) -> int:
        start = self.fh.tell()
        self.fh.seek(n, 1)
        return self.fh.tell() - start


class _Mat5Check:
    """Walk a MAT v5 file's elements and refuse what scipy would over-allocate for.

    Every element must fit inside its parent (the file for top-level elements); a cell,
    struct or object array must hold at least one 8-byte element header per declared element
    (a header declaring 10**10 cells in a 200-byte file is refused before scipy allocates
    them); cells and structs nest at most :data:`~rtlab.core.validate.MAX_NESTING` levels and
    hold at most :data:`~rtlab.core.validate.MAX_REFERENCES` elements in all; and what the
    file decompresses to must stay within :func:`~rtlab.core.validate.max_decode_bytes`.
    """

    def __init__(self, where: str, endian: str):
        self.where, self.e = where, endian
        self.inflated = 0
        self.elements = 0
        self.limit = max_decode_bytes()

    def fail(self, what: str):
        raise ValueError(f"{self.where}: {what}; the file is damaged or hostile (MAT v5)")

    def on_inflate(self, n: int):
        self.inflated += n
        if self.inflated > self.limit:
            check_decode_bytes(self.inflated, f"{self.where} (compressed MAT v5 variables)")

    def tag(self, st, avail: int):
        """``(type, nbytes, header_size, inline data)`` of the next element."""
        if avail < 8:
            self.fail(f"{avail} stray byte(s) where an element header should be")
        raw = st.read(8)
        if len(raw) < 8:
            self.fail("the file ends inside an element header")
        typ, n = struct.unpack(self.e + "II", raw)
        if typ >> 16:  # small data element: 2-byte type, 2-byte size, up to 4 bytes of data inline
            return typ & 0xFFFF, typ >> 16, 8, raw[4:4 + (typ >> 16)]
        return typ, n, 8, None

    def read_data(self, st, n: int, avail: int, what: str) -> bytes:
        if n > avail:
            self.fail(f"{what} declares {n} bytes but only {avail} remain")
        if n > (1 << 20):
            self.fail(f"{what} is implausibly long ({n} bytes)")
        data = st.read(n)
        if len(data) < n:
            self.fail(f"the file ends inside {what}")
        pad = (-n) % 8
        if pad and avail - n >= pad:
            st.skip(pad)
            return data, n + pad
        return data, n

    def sub(self, st, avail: int, what: str):
        """Read one small sub-element (flags, dimensions, names); ``(data, bytes used)``."""
        typ, n, h, inline = self.tag(st, avail)
        if inline is not None:
            return typ, inline, h
        data, used = self.read_data(st, n, avail - h, what)
        return typ, data, h + used

    def element(self, st, avail: int, depth: int, top: bool = False) -> int:
        """Check the element at the stream's position; returns the bytes it used."""
        typ, n, h, inline = self.tag(st, avail)
        if inline is not None:
            return h
        if n > avail - h:
            self.fail(f"an element declares {n:,} bytes but its container holds only {avail - h:,}")
        if typ == _MI_COMPRESSED:
            if not top:
                self.fail("a compressed element inside another element")
            inner = _Inflater(st.fh, n, self.on_inflate)
            self.element(inner, self.limit, depth)
            inner.skip(self.limit)  # inflate the rest, counting it against the budget
            return h + n
        used = h
        if typ == _MI_MATRIX:
            used += self.matrix(st, n, depth)
            if used - h < n:
                st.skip(n - (used - h))
        else:
            st.skip(n)
        pad = (-n) % 8
        if pad and avail - h - n >= pad:
            st.skip(pad)
            n += pad
        return h + n

    def matrix(self, st, n: int, depth: int) -> int:
        """Check an miMATRIX body of ``n`` bytes; returns the bytes consumed."""
        if n == 0:
            return 0  # an empty cell entry
        if depth > MAX_NESTING:
            self.fail(f"cells and structs nest deeper than {MAX_NESTING} levels")
        _, flags, u1 = self.sub(st, n, "the array flags")
        if len(flags) < 4:
            self.fail("short array flags")
        cls = struct.unpack(self.e + "I", flags[:4])[0] & 0xFF
        _, dims_raw, u2 = self.sub(st, n - u1, "the dimensions")
        dims = struct.unpack(self.e + "i" * (len(dims_raw) // 4), dims_raw[: 4 * (len(dims_raw) // 4)])
        if any(d < 0 for d in dims):
            self.fail(f"negative dimensions {list(dims)}")
        _, _, u3 = self.sub(st, n - u1 - u2, "the array name")
        used = u1 + u2 + u3
        if cls not in (_MX_CELL, _MX_STRUCT, _MX_OBJECT):
            return used  # numeric, char, sparse, function, opaque: scipy reads what is there
        count = math.prod(dims)
        nfields = 1
        if cls == _MX_OBJECT:
            _, _, u = self.sub(st, n - used, "the class name")
            used += u
        if cls in (_MX_STRUCT, _MX_OBJECT):
            _, fl, u = self.sub(st, n - used, "the field name length")
            used += u
            fnl = struct.unpack(self.e + "i", fl[:4])[0] if len(fl) >= 4 else 0
            _, names, u = self.sub(st, n - used, "the field names")
            used += u
            nfields = len(names) // fnl if fnl > 0 else 0
        total = count * nfields
        if total * 8 > n - used:
            self.fail(f"a {'cell' if cls == _MX_CELL else 'struct'} array declares {' x '.join(map(str, dims))} "
                      f"element(s) x {nfields} field(s) but holds only {n - used:,} bytes for them")
        self.elements += total
        if self.elements > MAX_REFERENCES:
            self.fail(f"more than {MAX_REFERENCES:,} cell and struct elements (rtlab's limit, see docs/security.md)")
        for _ in range(total):
            used += self.element(st, n - used, depth + 1)
        return used


def _check_mat5(p: Path) -> None:
    """Refuse a MAT file whose headers declare more than it holds (see :class:`_Mat5Check`)."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(128)
        if len(head) < 128 or head[124:126] not in (b"\x00\x01", b"\x01\x00") or head[126:128] not in (b"IM", b"MI"):
            if head[:4] == b"\0\0\0\0" or not head.startswith(b"MATLAB"):
                raise ValueError(f"{p.name} is not a readable MATLAB .mat file (rtlab reads MAT v5/v7 and v7.3; old "
                                 "MAT v4 files and other formats are not read; re-save it in MATLAB with save(..., '-v7'))")
            raise ValueError(f"{p.name}: the MAT-file header is damaged (no version / endian indicator)")
        chk = _Mat5Check(p.name, "<" if head[126:128] == b"IM" else ">")
        st = _Plain(fh)
        pos = 128
        while pos < size:
            if size - pos < 8:
                break  # trailing padding
            pos += chk.element(st, size - pos, 0, top=True)
            fh.seek(pos)


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(520)
    sig = b"\x89HDF\r\n\x1a\n"
    return head.startswith(sig) or head[512:520] == sig


def read_mat(path, variables=None) -> dict:
    """Read a MAT file (v5 or v7.3) into plain Python values.

    Structs become ``dict`` (struct arrays: ``list`` of ``dict``), cell arrays become object
    ``ndarray`` with their MATLAB shape, character arrays become ``str`` and numeric arrays keep
    their MATLAB shape and index order. MATLAB objects that cannot be decoded are returned as
    placeholders.

    Parameters
    ----------
    path : path-like
        The ``.mat`` file.
    variables : list of str, optional
        Only read these top-level variables.

    Raises
    ------
    ValueError
        If the file does not exist or is not a MAT file.
    ImportError
        For a v7.3 (HDF5) file when ``h5py`` is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path {str(p)!r} does not exist or is not a file; pass the path of a matRad .mat file")
    if _is_hdf5(p):
        try:
            resolve(h5py)
        except ImportError:
            raise ImportError(
                f"{p.name} is a MATLAB v7.3 (HDF5) file; reading it needs the h5py package "
                "(pip install h5py), or re-save it in MATLAB with save(..., '-v7')"
            ) from None
        try:
            with h5py.File(p, "r") as f:
                dec = _H5Decoder(f, p.name)
                members = dec.members(f, "")
                if variables is not None:
                    members = {k: v for k, v in members.items() if k in variables}
                return {k: dec.decode(v, k) for k, v in members.items()}
        except (OSError, KeyError, RecursionError) as e:
            raise ValueError(f"{p.name} looks like a MATLAB v7.3/HDF5 file but cannot be read: "
                             f"{type(e).__name__}: {e}") from None

    _check_mat5(p)
    try:
        raw = loadmat(p, struct_as_record=True, squeeze_me=False, chars_as_strings=True,
                      variable_names=variables)
    except Exception as e:  # scipy raises many types (ValueError, TypeError, MatReadError...)
        raise ValueError(f"{p.name} is not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None
    return {k: _from_scipy(v) for k, v in raw.items() if not k.startswith("__")}


# ---------------------------------------------------------------------------------------
# matRad helpers
# ---------------------------------------------------------------------------------------
def _unwrap(x, what: str):
    """Unwrap 1x1 cells / first scenario of a cell array."""
    while isinstance(x, np.ndarray) and x.dtype == object:
        if x.size == 0:
            raise ValueError(f"{what} is an empty cell array")
        x = x.ravel(order="F")[0]
    return x


def _scalar(x, what: str) -> float:
    try:
        a = np.asarray(_unwrap(x, what), dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if a.size != 1 or not np.isfinite(a[0]):
        raise ValueError(f"{what} must be one finite number, got {a!r}")
    return float(a[0])


def _text(x) -> str:
    x = _unwrap(x, "text") if isinstance(x, np.ndarray) and x.dtype == object else x
    if isinstance(x, str):
        return x
    if isinstance(x, np.ndarray) and x.size == 0:
        return ""
    return str(x)


def _objective_list(obj) -> list[dict]:
    """matRad objectives (struct array or cell array of structs) as a list of dicts."""
    if obj is None:
        return []
    if isinstance(obj, dict):
        return [obj]
    if isinstance(obj, list):
        return [o for o in obj if isinstance(o, dict)]
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = []
        for o in obj.ravel(order="F"):
            out.extend(_objective_list(o))
        return out
    return []


def _to_jsonable(x):
    if isinstance(x, dict):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return [_to_jsonable(v) for v in x.ravel(order="F")]
        if x.size == 1:
            return x.ravel()[0].item()
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, _Opaque):
        return repr(x)
    return x


def _objective_summary(o: dict) -> dict:
    kind = _text(o.get("type", o.get("className", "")))
    dose = None
    if "dose" in o:
        try:
            dose = _scalar(o["dose"], "objective dose")
        except ValueError:
            dose = None
    elif "parameters" in o:
        try:
            dose = _scalar(_unwrap(o["parameters"], "objective parameters"), "objective parameter")
        except ValueError:
            dose = None
    out = {"type": kind, "dose": dose}
    if "parameters" in o:  # matRad 3: a cell of the class's parameters (doses in Gy, volumes in %)
        out["parameters"] = _numbers(o["parameters"])
    for k in ("penalty", "EUD", "volume"):
        if k in o:
            try:
                out[k] = _scalar(o[k], k)
            except ValueError:
                pass
    return out


def _numbers(x) -> list:
    """The numbers of a (nested) MATLAB cell/array in column-major order; text and other values as None."""
    if isinstance(x, np.ndarray) and x.dtype == object:
        out = []
        for v in x.ravel(order="F"):
            out.extend(_numbers(v))
        return out
    if isinstance(x, (list, tuple)):
        return [v for it in x for v in _numbers(it)]
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        return [None]
    return [float(v) for v in a.ravel(order="F")]


def _prescription(objectives: list[dict]) -> float | None:
    def norm(s):
        return re.sub(r"[^a-z]", "", s.lower())

    for key in ("squareddeviation", "squaredeviation", "squaredunderdosing", "squareunderdosing"):
        for o in objectives:
            if key in norm(o["type"]) and o["dose"] and o["dose"] > 0:
                return float(o["dose"])
    return None


def _axis_from_coords(coords, n: int, res: float, what: str):
    """(origin, flip) from a coordinate vector, checking length, uniformity and spacing."""
    v = np.asarray(coords, dtype=float).ravel()
    if v.size != n:
        raise ValueError(f"ct.{what} has {v.size} entries but the cube has {n} voxels along {what}; fix ct.{what} or ct.cubeDim")
    if n == 1:
        return float(v[0]), False
    d = np.diff(v)
    step = float(np.mean(d))
    if not np.allclose(d, step, rtol=1e-4, atol=1e-4) or step == 0:
        raise ValueError(f"ct.{what} is not uniformly spaced (steps {d.min():g}..{d.max():g} mm); rtlab needs a regular grid")
    if not np.isclose(abs(step), res, rtol=1e-3, atol=1e-4):
        raise ValueError(f"ct.{what} has a step of {abs(step):g} mm but ct.resolution.{what} is {res:g} mm; the file is inconsistent")
    if step > 0:
        return float(v[0]), False
    return float(v[-1]), True


def load_matrad(path, hu_table=None, name: str | None = None) -> Case:
    """Load a matRad phantom/patient ``.mat`` file (``ct`` and ``cst``) as a :class:`Case`.

    Parameters
    ----------
    path : path-like
        A MAT file (v5, or v7.3/HDF5 with ``h5py`` installed) holding variables ``ct`` and
        ``cst`` in matRad layout (see the module docstring).
    hu_table : array_like, shape (n, 2), optional
        (HU, relative electron density) calibration used to convert between the density cube
        and HU; default :data:`rtlab.core.materials.DEFAULT_HU_TABLE`.
    name : str, optional
        Case name; default the file stem.

    Returns
    -------
    Case
        Grid ``(Nz, Ny, Nx)`` with spacing ``(res.z, res.y, res.x)`` mm, CT in HU, density
        (water = 1) and the structures. ``case.meta['matrad']`` holds the matRad type and the
        objectives of every structure; ``case.meta['hu_table']`` the table used. ``case.goals``
        are the objectives read as goals (:func:`rtlab.io.matrad_objectives.goals_from_objectives`).

    Raises
    ------
    ValueError
        If the file is not a MAT file, lacks ``ct`` or ``cst``, or their contents are
        inconsistent (cube shape vs ``cubeDim``, voxel indices out of range, ...).
    """
    p = Path(path)
    data = read_mat(p, variables=["ct", "cst"])
    missing = [v for v in ("ct", "cst") if v not in data]
    if missing:
        raise ValueError(
            f"{p.name} is not a matRad phantom: variable(s) {missing} missing (found {sorted(data)}); "
            "a matRad file holds the structs 'ct' and 'cst'"
        )
    ct, cst = data["ct"], data["cst"]
    if isinstance(ct, list) and ct:
        ct = ct[0]
    if not isinstance(ct, dict):
        raise ValueError(f"{p.name}: variable 'ct' must be a MATLAB struct, got {type(ct).__name__}")
    for fld in ("cube", "resolution"):
        if fld not in ct and not (fld == "cube" and "cubeHU" in ct):
            raise ValueError(f"{p.name}: ct has no field '{fld}' (fields: {sorted(ct)}); not a matRad ct struct")
    table = DEFAULT_HU_TABLE if hu_table is None else np.asarray(hu_table, float)

    def cube_of(key):
        c = np.asarray(_unwrap(ct[key], f"ct.{key}"))
        if c.dtype.kind not in "biuf":
            raise ValueError(f"{p.name}: ct.{key} must hold a numeric 3-D cube, got dtype {c.dtype}")
        if c.ndim == 2:
            c = c[:, :, None]
        if c.ndim != 3:
            raise ValueError(f"{p.name}: ct.{key} must be a 3-D cube [Ny Nx Nz], got shape {c.shape}")
        check_voxels(c.shape, f"{p.name}: ct.{key}")
        return c.astype(np.float64, copy=False)

    dens_yxz = cube_of("cube") if "cube" in ct else None
    hu_yxz = cube_of("cubeHU") if "cubeHU" in ct else None
    ref = dens_yxz if dens_yxz is not None else hu_yxz
    if dens_yxz is not None and hu_yxz is not None and dens_yxz.shape != hu_yxz.shape:
        raise ValueError(f"{p.name}: ct.cube has shape {dens_yxz.shape} but ct.cubeHU has {hu_yxz.shape}")
    dims = ref.shape
    if "cubeDim" in ct:
        cd = tuple(int(v) for v in np.asarray(ct["cubeDim"], float).ravel())
        if cd[: len(dims)] != dims[: len(cd)] or len(cd) not in (2, 3):
            raise ValueError(f"{p.name}: ct.cubeDim = {list(cd)} but the cube has shape {list(dims)} [Ny Nx Nz]; the file is inconsistent")
    ny, nx, nz = dims
    res = ct["resolution"]
    if not isinstance(res, dict) or not all(k in res for k in "xyz"):
        raise ValueError(f"{p.name}: ct.resolution must be a struct with fields x, y, z (mm)")
    rx, ry, rz = (_scalar(res[k], f"ct.resolution.{k}") for k in "xyz")
    if min(rx, ry, rz) <= 0:
        raise ValueError(f"{p.name}: ct.resolution must be positive, got x={rx}, y={ry}, z={rz}")

    # (y, x, z) -> (z, y, x)
    def to_zyx(c):
        return np.ascontiguousarray(np.transpose(c, (2, 0, 1)))

    origin = [rz, ry, rx]  # matRad default: voxel (1,1,1) centred at the resolution
    flips = [False, False, False]
    for ax, (key, n, r) in enumerate((("z", nz, rz), ("y", ny, ry), ("x", nx, rx))):
        if key in ct and np.asarray(ct[key]).size:
            origin[ax], flips[ax] = _axis_from_coords(ct[key], n, r, key)
    grid = Grid((nz, ny, nx), (rz, ry, rx), tuple(origin))

    def orient(a_zyx):
        for ax, fl in enumerate(flips):
            if fl:
                a_zyx = np.flip(a_zyx, axis=ax)
        return np.ascontiguousarray(a_zyx)

    density = orient(to_zyx(dens_yxz)) if dens_yxz is not None else None
    hu = orient(to_zyx(hu_yxz)) if hu_yxz is not None else None
    for label, arr in (("ct.cube", density), ("ct.cubeHU", hu)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise ValueError(f"{p.name}: {label} contains NaN or inf values")
    if density is not None and np.any(density < 0):
        raise ValueError(f"{p.name}: ct.cube holds negative values; expected relative electron density (water = 1)")
    if hu is None:
        hu = density_to_hu(density, table)
    if density is None:
        density = hu_to_density(hu, table)

    # cst
    cst = np.asarray(cst, dtype=object) if isinstance(cst, np.ndarray) else cst
    if not isinstance(cst, np.ndarray) or cst.dtype != object:
        raise ValueError(f"{p.name}: variable 'cst' must be a cell array (N x 6), got {type(cst).__name__}")
    if cst.ndim == 1:
        cst = cst[None, :]
    if cst.size and cst.shape[1] < 4:
        if cst.shape[0] >= 4:
            cst = cst.T
        else:
            raise ValueError(f"{p.name}: cst must have at least 4 columns {{index, name, type, voxels}}, got shape {cst.shape}")
    structures = StructureSet(grid)
    info = {}
    nvox = ny * nx * nz
    # every structure becomes a full boolean mask: bound what the cst implies before building any
    check_decode_bytes(cst.shape[0] * nvox, f"{p.name}: {cst.shape[0]} structures of {nvox:,} voxels each")
    masks: dict[int, np.ndarray] = {}  # decoded voxel list (by identity) -> its mask, shared when a file repeats one
    renamed: list[str] = []
    for row in range(cst.shape[0]):
        sname = _text(cst[row, 1]).strip() or f"structure_{row}"
        stype = _text(cst[row, 2]).strip().upper()
        vox = cst[row, 3]
        vox = _unwrap(vox, f"cst{{{row + 1},4}}") if (isinstance(vox, np.ndarray) and vox.dtype == object and vox.size) else vox
        objectives = []
        if cst.shape[1] >= 6:
            objectives = [_objective_summary(o) for o in _objective_list(cst[row, 5])]
        props = _to_jsonable(cst[row, 4]) if cst.shape[1] >= 5 else None
        mask = masks.get(id(vox))
        if mask is None:
            try:
                idx = np.asarray(vox, dtype=float).ravel()
            except (TypeError, ValueError):
                raise ValueError(f"{p.name}: voxel list of structure {sname!r} (cst{{{row + 1},4}}) is not numeric") from None
            if idx.size and (np.any(idx != np.round(idx)) or idx.min() < 1 or idx.max() > nvox):
                raise ValueError(
                    f"{p.name}: voxel indices of structure {sname!r} must be 1-based integers in 1..{nvox} "
                    f"(cube {ny}x{nx}x{nz}); got range {idx.min():g}..{idx.max():g}"
                )
            if idx.size == 0:
                warnings.warn(f"{p.name}: structure {sname!r} has no voxels; skipped", stacklevel=2)
                continue
            jj, ii, kk = np.unravel_index(idx.astype(np.int64) - 1, (ny, nx, nz), order="F")
            mask = np.zeros((nz, ny, nx), dtype=bool)
            mask[kk, jj, ii] = True
            mask = orient(mask)
            masks[id(vox)] = mask
        else:  # the same voxel list again (a shared reference): share its mask, read-only
            mask.setflags(write=False)
        if is_body_name(sname):
            kind, rx_dose = "body", None
        elif stype == "TARGET":
            kind, rx_dose = "target", _prescription(objectives)
        else:
            kind, rx_dose = "oar", None
        uname, n = sname, 2
        while uname in structures:
            uname, n = f"{sname}_{n}", n + 1
        if uname != sname:
            renamed.append(f"{sname!r} -> {uname!r}")
        structures.add(Structure(uname, mask, grid, kind=kind, prescription=rx_dose))
        info[uname] = {"type": stype, "objectives": objectives, "properties": props}
    if renamed:
        more = f" and {len(renamed) - 5} more" if len(renamed) > 5 else ""
        warnings.warn(f"{p.name}: {len(renamed)} duplicate structure name(s) renamed ({', '.join(renamed[:5])}{more})",
                      stacklevel=2)
    case = Case(
        name=name or p.stem,
        grid=grid,
        ct=hu,
        structures=structures,
        density=density,
        description=f"matRad phantom loaded from {p.name}",
        meta={"source": str(p), "matrad": info, "hu_table": np.asarray(table).tolist()},
    )
    # the cst objectives read as goals (rtlab.io.matrad_objectives.goals_from_objectives)
    case.goals = goals_from_objectives(matrad_objectives(case), {s.name: s.kind for s in structures.values()})
    return case


def _cell(*items, shape=None) -> np.ndarray:
    c = np.empty(shape or (1, len(items)), dtype=object)
    for i, it in enumerate(items):
        c.flat[i] = it
    return c


def save_matrad(case: Case, path, compress: bool = True):
    """Write a :class:`Case` as a matRad-layout MAT v5 file (atomically).

    Writes ``ct`` (``cube`` = relative electron density, ``cubeHU``, ``cubeDim``,
    ``resolution``, ``x``/``y``/``z`` voxel-centre coordinates in mm, ``numOfCtScen``) and an
    ``N x 6`` ``cst`` cell array. Targets get type ``'TARGET'`` and, when they have a
    prescription, one ``'square deviation'`` objective at that dose (penalty 800); other
    structures get type ``'OAR'`` and no objective.

    Parameters
    ----------
    case : Case
    path : path-like
        Destination ``.mat`` file.
    compress : bool
        zlib-compress the variables (smaller, slightly slower).

    Returns
    -------
    pathlib.Path
    """

    if not isinstance(case, Case):
        raise TypeError(f"case must be an rtlab.core.case.Case, got {type(case).__name__}")
    g = case.grid
    nz, ny, nx = g.shape

    def to_yxz(a):
        return np.ascontiguousarray(np.transpose(np.asarray(a, np.float64), (1, 2, 0)))

    zc, yc, xc = g.axes()
    ct = {
        "cube": _cell(to_yxz(case.density)),
        "cubeHU": _cell(to_yxz(case.ct)),
        "cubeDim": np.array([[ny, nx, nz]], dtype=float),
        "resolution": {"x": float(g.spacing[2]), "y": float(g.spacing[1]), "z": float(g.spacing[0])},
        "x": xc[None, :], "y": yc[None, :], "z": zc[None, :],
        "numOfCtScen": 1.0,
    }
    rows = []
    for i, s in enumerate(case.structures.values()):
        mask_yxz = np.transpose(s.mask, (1, 2, 0))
        idx = (np.flatnonzero(mask_yxz.ravel(order="F")) + 1).astype(np.float64)[:, None]
        if s.kind == "target":
            stype = "TARGET"
            if s.prescription:
                obj = {"type": "square deviation", "dose": float(s.prescription), "penalty": 800.0}
            else:
                obj = np.zeros((0, 0))
        else:
            stype = "OAR"
            obj = np.zeros((0, 0))
        props = {"Priority": float(2 if s.kind == "target" else 3), "Visible": 1.0}
        rows.append([float(i), s.name, stype, _cell(idx), props, obj])
    cst = np.empty((len(rows), 6), dtype=object)
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            cst[r, c] = v
    with atomic_path(path) as tmp:
        savemat(str(tmp), {"ct": ct, "cst": cst}, do_compression=compress, appendmat=False,
                long_field_names=True, oned_as="column")
    return Path(path)
