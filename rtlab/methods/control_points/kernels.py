"""The per-point filter work of the control-point search: numba kernels (``parallel=True`` over
sampling points, patent 000 para. 175) and their pure-numpy references.

* :func:`stencil_sum` -- enclosed target measure and boundary-point count in a filter region;
* :func:`contour_geometry` -- 2D: length, chord, distance of the contour pieces in a ring;
* :func:`surface_geometry` -- 3D: area and distance of the marching-cubes surface in a shell.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["stencil_sum", "stencil_sum_numpy", "contour_geometry", "contour_geometry_numpy", "surface_geometry", "surface_geometry_numpy"]


@numba.njit(cache=True, parallel=True)
def stencil_sum(values, points, which, offsets, weights, out):  # pragma: no cover - jit
    """out[n] = sum_m weights[which[n], m] * values[points[n] + offsets[which[n], m]]."""
    for n in numba.prange(points.shape[0]):
        f = which[n]
        acc = 0.0
        for m in range(offsets.shape[1]):
            w = weights[f, m]
            if w != 0.0:
                acc += w * values[points[n, 0] + offsets[f, m, 0], points[n, 1] + offsets[f, m, 1],
                                  points[n, 2] + offsets[f, m, 2]]
        out[n] = acc


def stencil_sum_numpy(values, points, which, offsets, weights):
    """Reference for :func:`stencil_sum` (fancy indexing)."""
    out = np.zeros(points.shape[0])
    for f in np.unique(which):
        sel = np.nonzero(which == f)[0]
        idx = points[sel][:, None, :] + offsets[f][None, :, :]
        out[sel] = (values[idx[..., 0], idx[..., 1], idx[..., 2]] * weights[f][None, :]).sum(axis=1)
    return out


@numba.njit(cache=True, inline="always")
def _disk_interval(ux, uy, dx, dy, cx, cy, r):  # pragma: no cover - jit
    """Parameters (t0, t1) where segment u + t d is inside the circle (c, r); t0 > t1 if none."""
    wx = ux - cx
    wy = uy - cy
    dd = dx * dx + dy * dy
    dw = dx * wx + dy * wy
    ww = wx * wx + wy * wy
    disc = dw * dw - dd * (ww - r * r)
    if r <= 0.0 or dd <= 0.0 or disc <= 0.0:
        return 1.0, 0.0
    s = math.sqrt(disc)
    return (-dw - s) / dd, (-dw + s) / dd


@numba.njit(cache=True, inline="always")
def _ring_len(ux, uy, vx, vy, cx, cy, a, b):  # pragma: no cover - jit
    """Length of segment u-v inside the ring a <= |x - c| <= b."""
    dx = vx - ux
    dy = vy - uy
    L = math.sqrt(dx * dx + dy * dy)
    t0, t1 = _disk_interval(ux, uy, dx, dy, cx, cy, b)
    lb = max(0.0, min(t1, 1.0) - max(t0, 0.0))
    la = 0.0
    if a > 0.0:
        s0, s1 = _disk_interval(ux, uy, dx, dy, cx, cy, a)
        la = max(0.0, min(s1, 1.0) - max(s0, 0.0))
    return L * max(lb - la, 0.0)


@numba.njit(cache=True, parallel=True)
def contour_geometry(points, pslice, radii, verts, cont_ptr, slice_ptr, out):  # pragma: no cover - jit
    """Per sampling point: boundary length in the ring, chord reference, distance to boundary.

    ``points`` (n, 2) mm; ``pslice`` slice id per point; ``radii`` (n, 2) = (a, b);
    ``verts`` (V, 2) mm, contour c holds vertices ``cont_ptr[c]:cont_ptr[c+1]`` (closed, last
    vertex == first); slice s holds contours ``slice_ptr[s]:slice_ptr[s+1]``.
    out[:, 0] length, out[:, 1] reference, out[:, 2] distance.
    """
    for n in numba.prange(points.shape[0]):
        cy = points[n, 0]
        cx = points[n, 1]
        a = radii[n, 0]
        b = radii[n, 1]
        b2 = b * b
        s = pslice[n]
        length = 0.0
        ref = 0.0
        pmin = np.inf
        for c in range(slice_ptr[s], slice_ptr[s + 1]):
            v0 = cont_ptr[c]
            nseg = cont_ptr[c + 1] - v0 - 1
            if nseg < 1:
                continue
            # start the walk at a vertex outside the outer circle (none: loop inside the disk)
            start = -1
            for k in range(nseg):
                ddy = verts[v0 + k, 0] - cy
                ddx = verts[v0 + k, 1] - cx
                if ddy * ddy + ddx * ddx >= b2:
                    start = k
                    break
            state = False
            py = 0.0
            px = 0.0
            for kk in range(nseg):
                k = (kk + max(start, 0)) % nseg
                uy = verts[v0 + k, 0]
                ux = verts[v0 + k, 1]
                vy = verts[v0 + k + 1, 0]
                vx = verts[v0 + k + 1, 1]
                # distance to the segment
                dy = vy - uy
                dx = vx - ux
                dd = dx * dx + dy * dy
                t = 0.0
                if dd > 0.0:
                    t = ((cy - uy) * dy + (cx - ux) * dx) / dd
                    t = min(1.0, max(0.0, t))
                qy = uy + t * dy - cy
                qx = ux + t * dx - cx
                dist = math.sqrt(qy * qy + qx * qx)
                if dist < pmin:
                    pmin = dist
                if dist >= b:
                    continue  # wholly outside the outer circle: no length, no crossing
                length += _ring_len(uy, ux, vy, vx, cy, cx, a, b)
                if start < 0:
                    continue
                t0, t1 = _disk_interval(uy, ux, dy, dx, cy, cx, b)
                if (not state) and t0 >= 0.0 and t0 < 1.0:
                    state = True
                    py = uy + t0 * dy
                    px = ux + t0 * dx
                if state and t1 >= 0.0 and t1 < 1.0:
                    state = False
                    qy2 = uy + t1 * dy
                    qx2 = ux + t1 * dx
                    ref += _ring_len(py, px, qy2, qx2, cy, cx, a, b)
        out[n, 0] = length
        out[n, 1] = ref
        out[n, 2] = pmin


def contour_geometry_numpy(points, pslice, radii, verts, cont_ptr, slice_ptr):
    """Reference for :func:`contour_geometry`: vectorised over segments, events paired in order."""
    out = np.zeros((points.shape[0], 3))
    for n in range(points.shape[0]):
        c = points[n]
        a, b = radii[n]
        s = pslice[n]
        length = ref = 0.0
        pmin = np.inf
        for ci in range(slice_ptr[s], slice_ptr[s + 1]):
            V = verts[cont_ptr[ci]:cont_ptr[ci + 1]]
            if len(V) < 2:
                continue
            U, W = V[:-1], V[1:]
            D = W - U
            dd = (D * D).sum(1)
            t = np.clip(np.einsum("ij,ij->i", c - U, D) / np.where(dd > 0, dd, 1.0), 0, 1)
            dist = np.linalg.norm(U + t[:, None] * D - c, axis=1)
            pmin = min(pmin, dist.min())

            def interval(P, Q, r):
                Dl = Q - P
                d2 = (Dl * Dl).sum(-1)
                w = P - c
                dw = (Dl * w).sum(-1)
                disc = dw * dw - d2 * ((w * w).sum(-1) - r * r)
                ok = (disc > 0) & (d2 > 0) & (r > 0)
                sq = np.sqrt(np.where(ok, disc, 0.0))
                d2s = np.where(d2 > 0, d2, 1.0)
                return np.where(ok, (-dw - sq) / d2s, 1.0), np.where(ok, (-dw + sq) / d2s, 0.0)

            def ring_length(P, Q):
                t0, t1 = interval(P, Q, b)
                s0, s1 = interval(P, Q, a)
                lb = np.clip(np.minimum(t1, 1) - np.maximum(t0, 0), 0, None)
                la = np.clip(np.minimum(s1, 1) - np.maximum(s0, 0), 0, None)
                return np.linalg.norm(Q - P, axis=-1) * np.clip(lb - la, 0, None)

            near = dist < b
            length += ring_length(U[near], W[near]).sum()
            outside = np.nonzero(((U - c) ** 2).sum(1) >= b * b)[0]
            if outside.size == 0:
                continue  # a closed loop inside the outer circle: no chord
            order = np.roll(np.arange(len(U)), -outside[0])
            t0, t1 = interval(U[order], W[order], b)
            events = []  # (position along walk, kind, point)
            for j, (k, e0, e1) in enumerate(zip(order, t0, t1)):
                if not near[k]:
                    continue
                if 0 <= e0 < 1:
                    events.append((j + e0, +1, U[k] + e0 * D[k]))
                if 0 <= e1 < 1:
                    events.append((j + e1, -1, U[k] + e1 * D[k]))
            events.sort(key=lambda e: e[0])
            P = None
            for _, kind, pt in events:
                if kind > 0 and P is None:
                    P = pt
                elif kind < 0 and P is not None:
                    ref += float(ring_length(P[None], pt[None])[0])
                    P = None
        out[n] = (length, ref, pmin)
    return out


@numba.njit(cache=True, inline="always")
def _tri_dist(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):  # pragma: no cover - jit
    """Exact distance from point p to triangle abc (closest-point case analysis)."""
    abx, aby, abz = bx - ax, by - ay, bz - az
    acx, acy, acz = cx - ax, cy - ay, cz - az
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:
        qx, qy, qz = ax, ay, az
    else:
        bpx, bpy, bpz = px - bx, py - by, pz - bz
        d3 = abx * bpx + aby * bpy + abz * bpz
        d4 = acx * bpx + acy * bpy + acz * bpz
        cpx, cpy, cpz = px - cx, py - cy, pz - cz
        d5 = abx * cpx + aby * cpy + abz * cpz
        d6 = acx * cpx + acy * cpy + acz * cpz
        vc = d1 * d4 - d3 * d2
        vb = d5 * d2 - d1 * d6
        va = d3 * d6 - d5 * d4
        if d3 >= 0.0 and d4 <= d3:
            qx, qy, qz = bx, by, bz
        elif d6 >= 0.0 and d5 <= d6:
            qx, qy, qz = cx, cy, cz
        elif vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
            v = d1 / (d1 - d3)
            qx, qy, qz = ax + v * abx, ay + v * aby, az + v * abz
        elif vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
            w = d2 / (d2 - d6)
            qx, qy, qz = ax + w * acx, ay + w * acy, az + w * acz
        elif va <= 0.0 and (d4 - d3) >= 0.0 and (d5 - d6) >= 0.0:
            w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
            qx, qy, qz = bx + w * (cx - bx), by + w * (cy - by), bz + w * (cz - bz)
        else:
            den = 1.0 / (va + vb + vc)
            v = vb * den
            w = vc * den
            qx, qy, qz = ax + abx * v + acx * w, ay + aby * v + acy * w, az + abz * v + acz * w
    ex, ey, ez = px - qx, py - qy, pz - qz
    return math.sqrt(ex * ex + ey * ey + ez * ez)


@numba.njit(cache=True, parallel=True)
def surface_geometry(points, radii, tri, cent, rad, area, qpts, qw, cell_start, cell_items, cell_shape,
                    cell_size, reach, out):  # pragma: no cover - jit
    """Per sampling point: surface area inside the shell a <= r <= b and distance to surface.

    Triangles are binned by centroid into cubic cells of ``cell_size`` mm (CSR
    ``cell_start``/``cell_items``); ``reach`` = largest outer radius + largest triangle radius.
    out[:, 0] area (mm^2), out[:, 1] distance (mm).
    """
    for n in numba.prange(points.shape[0]):
        c0 = points[n, 0]
        c1 = points[n, 1]
        c2 = points[n, 2]
        a = radii[n, 0]
        b = radii[n, 1]
        lo0 = max(int(math.floor((c0 - reach) / cell_size)), 0)
        hi0 = min(int(math.floor((c0 + reach) / cell_size)), cell_shape[0] - 1)
        lo1 = max(int(math.floor((c1 - reach) / cell_size)), 0)
        hi1 = min(int(math.floor((c1 + reach) / cell_size)), cell_shape[1] - 1)
        lo2 = max(int(math.floor((c2 - reach) / cell_size)), 0)
        hi2 = min(int(math.floor((c2 + reach) / cell_size)), cell_shape[2] - 1)
        acc = 0.0
        pmin = np.inf
        for i0 in range(lo0, hi0 + 1):
            for i1 in range(lo1, hi1 + 1):
                for i2 in range(lo2, hi2 + 1):
                    cell = (i0 * cell_shape[1] + i1) * cell_shape[2] + i2
                    for q in range(cell_start[cell], cell_start[cell + 1]):
                        t = cell_items[q]
                        e0 = cent[t, 0] - c0
                        e1 = cent[t, 1] - c1
                        e2 = cent[t, 2] - c2
                        d = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)
                        R = rad[t]
                        if d - R > b:
                            continue
                        if d - R < pmin:
                            dt = _tri_dist(c0, c1, c2, tri[t, 0, 0], tri[t, 0, 1], tri[t, 0, 2],
                                           tri[t, 1, 0], tri[t, 1, 1], tri[t, 1, 2],
                                           tri[t, 2, 0], tri[t, 2, 1], tri[t, 2, 2])
                            if dt < pmin:
                                pmin = dt
                        if d + R <= b and d - R >= a:
                            acc += area[t]
                            continue
                        for j in range(qpts.shape[1]):
                            f0 = qpts[t, j, 0] - c0
                            f1 = qpts[t, j, 1] - c1
                            f2 = qpts[t, j, 2] - c2
                            r = math.sqrt(f0 * f0 + f1 * f1 + f2 * f2)
                            if r >= a and r <= b:
                                acc += qw[t]
        out[n, 0] = acc
        out[n, 1] = pmin


def _seg_dist_numpy(p, A, B):
    D = B - A
    dd = np.einsum("ij,ij->i", D, D)
    t = np.clip(np.einsum("ij,ij->i", p - A, D) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
    return np.linalg.norm(A + t[:, None] * D - p, axis=1)


def _tri_dist_numpy(p, tri):
    """Distance from ``p`` to every triangle: plane distance if the foot point lies inside the
    triangle (barycentric test), else the nearest of the three edges."""
    A, B, C = tri[:, 0], tri[:, 1], tri[:, 2]
    nrm = np.cross(B - A, C - A)
    nn = np.linalg.norm(nrm, axis=1)
    ok = nn > 0
    u = nrm / np.where(ok, nn, 1.0)[:, None]
    h = np.einsum("ij,ij->i", p - A, u)
    foot = p - h[:, None] * u
    inside = ok.copy()
    for P, Q in ((A, B), (B, C), (C, A)):
        inside &= np.einsum("ij,ij->i", np.cross(Q - P, foot - P), nrm) >= 0
    edge = np.minimum(np.minimum(_seg_dist_numpy(p, A, B), _seg_dist_numpy(p, B, C)), _seg_dist_numpy(p, C, A))
    return np.where(inside, np.abs(h), edge)


def surface_geometry_numpy(points, radii, tri, qpts, qw):
    """Brute-force reference for :func:`surface_geometry` (all triangles, no binning)."""
    Q = qpts.reshape(-1, 3)
    W = np.repeat(qw, qpts.shape[1])
    out = np.zeros((points.shape[0], 2))
    for n in range(points.shape[0]):
        r = np.linalg.norm(Q - points[n], axis=1)
        a, b = radii[n]
        out[n, 0] = W[(r >= a) & (r <= b)].sum()
        out[n, 1] = _tri_dist_numpy(points[n], tri).min()
    return out
