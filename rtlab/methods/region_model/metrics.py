"""How well a predicted dose region matches the true one: Dice and surface distances.

:func:`dice` (overlap), :func:`surface_distances` (average symmetric surface distance and 95th
percentile Hausdorff distance in mm, anisotropic spacing) on the :func:`surface_voxels` of two
masks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..._util import check_positive

__all__ = ["dice", "surface_distances", "surface_voxels"]


def _pair(a, b, what=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what[0]} has shape {a.shape} but {what[1]} has {b.shape}; masks must share a grid")
    return a.astype(bool), b.astype(bool)


def dice(a, b) -> float:
    """Dice similarity ``2 |A & B| / (|A| + |B|)``; 1.0 when both masks are empty."""
    a, b = _pair(a, b)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def surface_voxels(m: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with a face neighbour outside it (the array edge counts as outside)."""
    er = ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1), border_value=0)
    return m & ~er


def surface_distances(a, b, spacing=(1.0, 1.0, 1.0)) -> dict:
    """Surface distances between two masks in mm (anisotropic spacing).

    Surfaces are the boundary voxels (mask voxels with a face neighbour outside). The directed
    distances from each boundary voxel of ``a`` to the nearest boundary voxel centre of ``b``
    (and back) come from the exact Euclidean distance transform with ``sampling=spacing``.

    Returns
    -------
    dict
        ``asd`` -- average symmetric surface distance (mean over both directed sets pooled);
        ``hd95`` -- max of the two directed 95th percentiles; ``hd`` -- Hausdorff distance;
        ``mean_ab``, ``mean_ba`` -- directed means. All in mm.

    Raises
    ------
    ValueError
        Shapes differ, or a mask is empty (distances undefined).
    """
    a, b = _pair(a, b)
    sp = check_positive("spacing", spacing)
    if len(sp) == 1:
        sp = sp * a.ndim
    if len(sp) != a.ndim:
        raise ValueError(f"spacing has {len(sp)} entries but the masks have {a.ndim} dimensions")
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks (one of them is empty)")
    sa, sb = surface_voxels(a), surface_voxels(b)
    dab = ndimage.distance_transform_edt(~sb, sampling=sp)[sa]
    dba = ndimage.distance_transform_edt(~sa, sampling=sp)[sb]
    both = np.concatenate([dab, dba])
    return {"asd": float(both.mean()), "hd95": float(max(np.percentile(dab, 95), np.percentile(dba, 95))),
            "hd": float(max(dab.max(), dba.max())), "mean_ab": float(dab.mean()), "mean_ba": float(dba.mean())}
