"""Small shared helpers: argument checking and atomic file writes.

Every public function in rtlab checks its input early and raises a ``ValueError`` or
``TypeError`` whose message names the argument and says how to fix it. The helpers here keep
those messages uniform. Files are written atomically: to a temporary file in the target's
directory, flushed and fsynced, then renamed over the target, so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

#: The package version (``rtlab.__version__``; keep equal to ``pyproject.toml``).
VERSION = "0.1.0"

__all__ = [
    "VERSION",
    "check_finite",
    "check_shape",
    "check_positive",
    "is_int",
    "atomic_path",
    "current_umask",
    "check_output_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "json_safe",
    "renamed_argument",
]

#: Default of a renamed keyword argument that was not given (see :func:`renamed_argument`).
NOT_GIVEN = object()


def check_shape(name: str, array: np.ndarray, shape: tuple[int, ...], hint: str = "") -> None:
    """Raise ``ValueError`` unless ``array.shape == shape``.

    Parameters
    ----------
    name : str
        Argument name used in the message.
    array : ndarray
        The array to check.
    shape : tuple of int
        The expected shape.
    hint : str, optional
        Extra advice appended to the message.
    """
    if tuple(np.shape(array)) != tuple(shape):
        msg = f"{name} has shape {tuple(np.shape(array))}, expected {tuple(shape)} (z, y, x)"
        if hint:
            msg += f"; {hint}"
        raise ValueError(msg)


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise ``ValueError`` if ``array`` holds NaN or infinite values, saying how many."""
    a = np.asarray(array)
    if a.dtype.kind in "fc":
        bad = ~np.isfinite(a)
        n = int(bad.sum())
        if n:
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} contains {n} non-finite value(s) (NaN or inf), first at index {first}; "
                "replace them (e.g. np.nan_to_num) or fix the computation that produced them"
            )


def check_positive(name: str, values, allow_zero: bool = False) -> tuple[float, ...]:
    """Return ``values`` as a tuple of floats after checking every entry is positive and finite."""
    try:
        vals = tuple(float(v) for v in np.atleast_1d(values))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {values!r}") from None
    for v in vals:
        if not np.isfinite(v) or (v < 0 if allow_zero else v <= 0):
            cmp = "non-negative" if allow_zero else "positive"
            raise ValueError(f"{name} must be {cmp} and finite, got {values!r}")
    return vals


def is_int(value) -> bool:
    """True for a Python or numpy integer, False for anything else (``bool`` included)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where possible, else set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(dest: Path) -> int:
    """Permission bits the written file gets: those of the file it replaces, else ``0o666 & ~umask``."""
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return 0o666 & ~current_umask()
    return stat.S_IMODE(st.st_mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    Use for writers that want a file name rather than a file object (e.g. ``np.savez``,
    ``pydicom.dcmwrite``). If the block raises, the temporary file is removed and ``path`` is
    left untouched. The result keeps the permission bits of the file it replaces; a new file
    gets what ``open()`` would give it (``0o666`` less the umask), not the private ``0o600``
    of a temporary file.

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix for the temporary file (some writers append an extension if it is missing);
        defaults to the destination's own suffix.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(dest.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _final_mode(dest))
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def check_output_path(path, what: str, suffix: str | None = None, directory: bool = False) -> Path:
    """Check, before any work starts, that ``path`` can be written; return it as a ``Path``.

    Parameters
    ----------
    path : path-like
        The file (or, with ``directory=True``, the folder) a command will write.
    what : str
        The argument's name for the message (e.g. ``"--out"``).
    suffix : str, optional
        Required file suffix (e.g. ``".npz"``).
    directory : bool
        ``path`` is an output folder (created if missing) rather than a file.

    Raises
    ------
    ValueError
        The path is a folder where a file is wanted (or a file where a folder is wanted), has
        the wrong suffix, or lies in a folder that cannot be created or written.
    """
    p = Path(path)
    if not str(path):
        raise ValueError(f"{what} is empty; give a {'folder' if directory else 'file'} name")
    if directory:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{what} {str(p)!r} is a file; give a folder for the output (it is created if missing)")
    else:
        if p.is_dir():
            raise ValueError(f"{what} {str(p)!r} is a folder; give a file name, e.g. {str(p / ('out' + (suffix or '')))!r}")
        if suffix is not None and not p.name.endswith(suffix):
            raise ValueError(f"{what} must name a {suffix} file, got {str(p)!r}")
        if p.exists() and not os.access(p, os.W_OK):
            raise ValueError(f"{what} {str(p)!r} exists and is not writable")
    # the nearest folder that exists must be a writable folder (the rest is created)
    anc = p if (directory and p.exists()) else p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{what} {str(p)!r} cannot be created: {str(anc)!r} is not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(p)!r} cannot be written: no write permission in {str(anc)!r}")
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def json_safe(v):
    """A JSON-safe scalar: numbers become float, NaN/inf become ``None``, anything else as is."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if np.isfinite(f) else None


def renamed_argument(old: str, old_value, new: str, new_value, new_default=None, where: str = ""):
    """The value of an argument renamed from ``old`` to ``new``, kept working for one release.

    A function that renamed a keyword accepts the old one as ``old=NOT_GIVEN`` and calls
    ``new = renamed_argument("dose_grid", dose_grid, "dose_grid_mm", dose_grid_mm)``. The old
    name gives a :class:`PendingDeprecationWarning` (silent unless warnings are switched on,
    so notebooks that still use it print nothing new).

    Raises
    ------
    TypeError
        Both names were given.
    """
    if old_value is NOT_GIVEN:
        return new_value
    if new_value is not new_default and new_value is not NOT_GIVEN:
        raise TypeError(f"{where or 'this call'} got both {old}= and {new}=; pass only {new}= ({old} is its old name)")
    warnings.warn(f"{where + ': ' if where else ''}{old}= is renamed {new}=; the old name goes in rtlab 0.3",
                  PendingDeprecationWarning, stacklevel=3)
    return old_value
