"""CT number (HU) to relative electron density (water = 1) conversion.

The default table is a generic piecewise-linear calibration of the kind used for 6 MV photon
planning (air, lung, adipose, water, soft tissue, cortical bone); it is *not* a commissioned
scanner curve. Values between points are interpolated linearly, values beyond the ends are
clamped. Users with a scanner calibration pass their own table.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_HU_TABLE", "hu_to_density", "density_to_hu"]

#: (HU, relative electron density) pairs, HU strictly increasing.
DEFAULT_HU_TABLE = np.array(
    [
        [-1024.0, 0.001],
        [-1000.0, 0.001],
        [-800.0, 0.19],   # inflated lung
        [-100.0, 0.93],   # adipose
        [0.0, 1.0],       # water
        [60.0, 1.05],     # soft tissue / muscle
        [1000.0, 1.56],   # dense bone
        [3071.0, 2.50],
    ]
)


def _check_table(table) -> np.ndarray:
    t = np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] < 2:
        raise ValueError(f"table must have shape (n >= 2, 2) of (HU, density) pairs, got {t.shape}")
    if not np.all(np.diff(t[:, 0]) > 0):
        raise ValueError("table HU values (first column) must be strictly increasing")
    if np.any(t[:, 1] < 0) or not np.all(np.isfinite(t)):
        raise ValueError("table densities must be finite and non-negative")
    return t


def hu_to_density(hu, table=None) -> np.ndarray:
    """Relative electron density from CT numbers by piecewise-linear interpolation.

    Parameters
    ----------
    hu : array_like
        CT numbers in Hounsfield units.
    table : array_like, shape (n, 2), optional
        (HU, density) calibration pairs; default :data:`DEFAULT_HU_TABLE`.

    Returns
    -------
    ndarray of float32
        Relative electron density (water = 1), same shape as ``hu``.
    """
    t = _check_table(DEFAULT_HU_TABLE if table is None else table)
    h = np.asarray(hu, dtype=np.float64)
    if h.dtype.kind == "f" and np.isnan(h).any():
        raise ValueError("hu contains NaN; fill missing CT values (e.g. with -1000 HU for air) first")
    return np.interp(h, t[:, 0], t[:, 1]).astype(np.float32)


def density_to_hu(density, table=None) -> np.ndarray:
    """Inverse of :func:`hu_to_density` (the table's density column must be increasing)."""
    t = _check_table(DEFAULT_HU_TABLE if table is None else table)
    d = t[:, 1]
    keep = np.concatenate([[True], np.diff(d) > 0])
    return np.interp(np.asarray(density, float), d[keep], t[keep, 0]).astype(np.float32)
