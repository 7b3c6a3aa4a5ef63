"""Planar polygons and masks: even-odd rasterisation of RTSTRUCT contours, and contours of a mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["rasterize_polygons", "mask_to_polygons"]


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
