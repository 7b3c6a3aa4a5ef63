"""Voxel selections: which entries of a dose vector belong to a structure.

A dose engine computes dose on a selection of voxels (``voxel_index``: flat indices into its
grid, one per row of the influence matrix or entry of the dose vector). Objective terms, metrics
and methods address structures by those rows: :func:`rows_for` turns a mask into rows,
:func:`as_rows` checks a row list given directly.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["rows_for", "as_rows"]


def rows_for(mask, voxel_index=None, grid_shape=None, missing: str = "raise") -> np.ndarray:
    """Rows of the influence matrix ``A`` that belong to a structure mask.

    Parameters
    ----------
    mask : ndarray of bool, shape ``(nz, ny, nx)``, or a :class:`rtlab.core.geometry.Structure`
        The structure on the dose grid.
    voxel_index : ndarray of int, shape ``(n_rows,)``, optional
        Flat (C-order) index into the grid of each row of ``A``, as given by the dose engine.
        ``None`` means ``A`` has one row per grid voxel in C order.
    grid_shape : tuple of int, optional
        Checked against ``mask.shape`` when given.
    missing : {'raise', 'warn', 'ignore'}
        What to do when mask voxels have no row in ``A`` (not selected by the dose engine).

    Returns
    -------
    ndarray of int64
        Sorted, unique row indices.
    """
    if hasattr(mask, "mask") and hasattr(mask, "grid"):
        mask = mask.mask
    m = np.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"mask must be a boolean array (z, y, x), got dtype {m.dtype}")
    if grid_shape is not None and tuple(m.shape) != tuple(grid_shape):
        raise ValueError(f"mask has shape {m.shape}, expected the dose grid shape {tuple(grid_shape)}")
    if missing not in ("raise", "warn", "ignore"):
        raise ValueError(f"missing must be 'raise', 'warn' or 'ignore', got {missing!r}")
    flat = np.flatnonzero(m.ravel())
    if flat.size == 0:
        raise ValueError("mask is empty; a term needs at least one voxel")
    if voxel_index is None:
        return flat.astype(np.int64)
    vi = np.asarray(voxel_index)
    if vi.ndim != 1 or vi.dtype.kind not in "iu":
        raise TypeError("voxel_index must be a 1-D integer array (flat grid index of each row of A)")
    if vi.size and (vi.min() < 0 or vi.max() >= m.size):
        raise ValueError(f"voxel_index holds values outside [0, {m.size}); it does not match the mask's grid")
    order = np.argsort(vi, kind="stable")
    pos = np.searchsorted(vi[order], flat)
    pos = np.minimum(pos, vi.size - 1)
    found = vi[order][pos] == flat
    n_missing = int((~found).sum())
    if n_missing:
        msg = (f"{n_missing} of {flat.size} mask voxels have no row in the influence matrix "
               "(the dose engine did not select them); enlarge the dose engine's voxel "
               "selection or pass missing='ignore'")
        if missing == "raise":
            raise ValueError(msg)
        if missing == "warn":
            warnings.warn(msg, stacklevel=2)
    rows = np.unique(order[pos[found]]).astype(np.int64)
    if rows.size == 0:
        raise ValueError("no voxel of the mask has a row in the influence matrix")
    return rows


def as_rows(rows, what: str = "rows") -> np.ndarray | None:
    """Check a row list (int array or boolean row mask); return it sorted and unique (int64), or None.

    Raises ``TypeError`` for a Structure (use :func:`rows_for`) or a non-integer array and
    ``ValueError`` for an empty list, negative or duplicate indices; ``what`` names the argument.
    """
    if rows is None:
        return None
    if hasattr(rows, "mask") and hasattr(rows, "grid"):
        raise TypeError(f"{what}: pass row indices, not a Structure; convert with rtlab.optimize.rows_for(structure, voxel_index)")
    r = np.asarray(rows)
    if r.dtype == bool:
        r = np.flatnonzero(r)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise TypeError(f"{what} must be a 1-D integer array of influence-matrix rows (or a boolean row mask)")
    if r.size == 0:
        raise ValueError(f"{what} is empty; a term needs at least one voxel")
    if r.min() < 0:
        raise ValueError(f"{what} holds negative indices")
    u = np.unique(r).astype(np.int64)
    if u.size != r.size:
        raise ValueError(f"{what} holds duplicate indices; pass each row once")
    return u
