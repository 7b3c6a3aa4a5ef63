"""The numba kernels of :class:`rtlab.dose.fluence.FluenceDose` (paper 004, eqs. 4-5), with numpy references.

* :func:`conv_boxes` -- a patch's separable convolution onto the node boxes within the kernel
  support (float64); :func:`conv_boxes_reference` in numpy.
* :func:`node_update` / :func:`update_beams` -- patches (or whole maps) into the node grids and
  the changed boxes onto the voxels (:func:`apply_boxes`, float32, blocks of :data:`BLOCK`
  voxels culled by their projected bounding box, :func:`block_bbox`), one float32 sum per
  update added to the float64 dose once (:func:`flush`); lazy Gaussians are deferred and applied
  by :func:`pending_boxes`.
* :func:`node_matrix`, :func:`update_beams_sparse`, :func:`sync_sparse` -- the same updates through a
  node -> voxel matrix (CSC), which touches only the voxels on the changed nodes (for small
  selections such as interactive dose shaping's tracked voxels);
* :func:`eval_nodes_serial` / :func:`eval_nodes_parallel` -- a voxel's dose read from the node
  grids in float64, and :func:`patch_effect`, the dose change of a candidate patch at some voxels
  without applying it (what interactive dose shaping asks before every step).

Pixel coordinates of voxels out of a beam's reach are :data:`OUT_OF_REACH` (``-1e6``).

Size: over 600 lines on purpose: these are the numba kernels of one engine over one data
layout (node arrays, box buffers, offsets); they are compiled and cached together and read
best side by side. :mod:`rtlab.dose.fluence` is their only user.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir as llir
from numba.extending import intrinsic

__all__ = ["BLOCK", "OUT_OF_REACH", "conv_boxes", "conv_boxes_reference", "apply_boxes", "apply_boxes_reference",
           "flush", "node_update", "update_beams", "pending_boxes", "block_bbox", "Threads", "eval_nodes_serial",
           "eval_nodes_parallel", "patch_effect", "EVAL_CHUNK", "node_matrix", "sparse_apply",
           "update_beams_sparse", "sync_sparse"]

#: Pixel coordinate of a voxel that a beam does not reach (far outside every node grid).
OUT_OF_REACH = -1e6
#: Coordinates below this are out of reach.
OUT_OF_REACH_TEST = -1e5

#: Voxels per block of the dose-update kernel (blocks carry a (u, v) bounding box for culling).
BLOCK = 64


@nb.njit(cache=True, nogil=True, fastmath=True)
def conv_boxes(psi, row0, col0, kern, kern_off, mk, stride, moff, nr_lo, nr_hi, nc_lo, nc_hi, buf, buf_off):
    """Node values of every Gaussian's convolution of a patch, into zero-padded boxes (paper 004 eq. 5).

    ``psi`` (rows v, columns u) is placed with its pixel (0, 0) on fluence pixel ``(row0, col0)``.
    For Gaussian ``g`` node ``(r, c)`` sits on fluence pixel ``(r * stride[g] - moff[g],
    c * stride[g] - moff[g])``; its value is ``sum_p psi[p] Kg(node_r - p_r) Kg(node_c - p_c)``
    with the pixel-integrated kernel ``Kg = kern[kern_off[g] : kern_off[g + 1]]`` (length
    ``2 mk[g] + 1``). The node rows ``nr_lo[g] .. nr_hi[g]`` x columns ``nc_lo[g] .. nc_hi[g]``
    are written to ``buf[buf_off[g]:]`` as a C-ordered ``(h + 2, w + 2)`` array whose outer ring
    is zero (so that the bilinear interpolation of :func:`apply_boxes` needs no bounds tests).
    Separable: one pass along u into a (patch rows x node columns) buffer (through the dense
    (patch columns x node columns) kernel matrix, so that the inner loops are contiguous), one along v.
    """
    nrow_p, ncol_p = psi.shape
    for g in range(mk.size):
        s = stride[g]
        m = mk[g]
        k0 = kern_off[g]
        h = nr_hi[g] - nr_lo[g]
        w = nc_hi[g] - nc_lo[g]
        wp = w + 2
        o = buf_off[g]
        for i in range((h + 2) * wp):
            buf[o + i] = 0.0
        if h <= 0 or w <= 0:
            continue
        # kernel matrices (zero outside the support), so that both passes are contiguous axpy loops
        kc = np.zeros((ncol_p, w))  # kc[pc, jc] = Kg(node column jc - patch column pc)
        for jc in range(w):
            pix = (nc_lo[g] + jc) * s - moff[g] - col0  # node column in patch pixels
            for pc in range(max(0, pix - m), min(ncol_p, pix + m + 1)):
                kc[pc, jc] = kern[k0 + pix - pc + m]
        tmp = np.zeros((nrow_p, w))
        for pr in range(nrow_p):
            for pc in range(ncol_p):
                a = psi[pr, pc]
                if a != 0.0:
                    for jc in range(w):
                        tmp[pr, jc] += a * kc[pc, jc]
        for jr in range(h):
            pix = (nr_lo[g] + jr) * s - moff[g] - row0
            base = o + (jr + 1) * wp + 1
            for pr in range(max(0, pix - m), min(nrow_p, pix + m + 1)):
                kv = kern[k0 + pix - pr + m]
                for jc in range(w):
                    buf[base + jc] += kv * tmp[pr, jc]


def conv_boxes_reference(psi, row0, col0, kern, mk, stride, moff, box):
    """Pure-numpy reference of :func:`conv_boxes` for one Gaussian (dense kernel matrices).

    ``box = (nr_lo, nr_hi, nc_lo, nc_hi)``; returns the padded ``(h + 2, w + 2)`` node array.
    """
    nr_lo, nr_hi, nc_lo, nc_hi = box
    psi = np.asarray(psi, float)

    def kmat(n_lo, n_hi, p0, n_pix):
        node_pix = np.arange(n_lo, n_hi)[:, None] * stride - moff - p0
        d = node_pix - np.arange(n_pix)[None, :]
        return np.where(np.abs(d) <= mk, np.asarray(kern)[np.clip(d + mk, 0, 2 * mk)], 0.0)

    out = np.zeros((nr_hi - nr_lo + 2, nc_hi - nc_lo + 2))
    out[1:-1, 1:-1] = kmat(nr_lo, nr_hi, row0, psi.shape[0]) @ psi @ kmat(nc_lo, nc_hi, col0, psi.shape[1]).T
    return out


@intrinsic
def _ld32(typingctx, arr, idx):
    """``arr[idx]`` with a 32-bit index used as is (no wraparound, no widening to 64 bits).

    numba widens every index to 64 bits, after which LLVM emits 4-lane gathers with 64-bit
    indices; a 32-bit index gives 8-lane ``vgatherdps`` (measured 1.5x faster). The caller
    guarantees ``0 <= idx < arr.size``.
    """
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i = args[1]
        if i.type.width > 32:
            i = builder.trunc(i, llir.IntType(32))
        return builder.load(builder.gep(ary.data, [i], inbounds=True))

    return sig, codegen


@nb.njit(inline="always", fastmath=True)
def _bilinear(bx, u, v, sg, oxg, oyg, wf, xmax, ymax, xcell, ycell):
    """Bilinear interpolation of the padded box ``bx`` (row length ``wf``) at pixel ``(u, v)``.

    ``x = u * sg + oxg``, ``y = v * sg + oyg`` are clamped to the box (whose zero outer ring makes
    the value vanish outside); the cell corner is ``min(floor(x), xcell)`` (``xcell = wp - 2``),
    all in float32 so that the flat index stays 32-bit (exact: boxes have < 2**24 nodes).
    """
    x = min(max(u * sg + oxg, np.float32(0.0)), xmax)
    y = min(max(v * sg + oyg, np.float32(0.0)), ymax)
    fx = min(np.float32(np.int32(x)), xcell)
    fy = min(np.float32(np.int32(y)), ycell)
    ax = x - fx
    ay = y - fy
    r0 = fy * wf + fx
    b = np.int32(r0)
    b2 = np.int32(r0 + wf)
    v00 = _ld32(bx, b)
    v01 = _ld32(bx, b + np.int32(1))
    v10 = _ld32(bx, b2)
    v11 = _ld32(bx, b2 + np.int32(1))
    top = v00 + ax * (v01 - v00)
    bot = v10 + ax * (v11 - v10)
    return top + ay * (bot - top)


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _acc1(up, vp, c0, b0, p0, tmp):
    """``tmp[k] += c0[k] bilinear(b0, k)`` for every voxel (float32; see :func:`apply_boxes`).

    ``p0`` holds the :func:`_bilinear` parameters. A ``prange`` loop even on one thread: numba
    marks its iterations independent, which lets LLVM vectorise the gathers (in a plain loop the
    possible aliasing of ``tmp`` and the boxes blocks it). Callers pass views that start at the
    first voxel of a segment (LLVM does not vectorise a ``prange`` over an offset range).
    """
    for k in nb.prange(up.size):
        tmp[k] += c0[k] * _bilinear(b0, up[k], vp[k], p0[0], p0[1], p0[2], p0[3], p0[4], p0[5], p0[6], p0[7])


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _acc2(up, vp, c0, c1, b0, b1, p0, p1, tmp):
    """Two Gaussians in one pass: one read of the voxel's (u, v), eight gathers (see :func:`_acc1`)."""
    for k in nb.prange(up.size):
        u = up[k]
        v = vp[k]
        a = c0[k] * _bilinear(b0, u, v, p0[0], p0[1], p0[2], p0[3], p0[4], p0[5], p0[6], p0[7])
        a += c1[k] * _bilinear(b1, u, v, p1[0], p1[1], p1[2], p1[3], p1[4], p1[5], p1[6], p1[7])
        tmp[k] += a


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _acc3(up, vp, c0, c1, c2, b0, b1, b2, p0, p1, p2, tmp):
    """Three Gaussians in one pass (see :func:`_acc1`)."""
    for k in nb.prange(up.size):
        u = up[k]
        v = vp[k]
        a = c0[k] * _bilinear(b0, u, v, p0[0], p0[1], p0[2], p0[3], p0[4], p0[5], p0[6], p0[7])
        a += c1[k] * _bilinear(b1, u, v, p1[0], p1[1], p1[2], p1[3], p1[4], p1[5], p1[6], p1[7])
        a += c2[k] * _bilinear(b2, u, v, p2[0], p2[1], p2[2], p2[3], p2[4], p2[5], p2[6], p2[7])
        tmp[k] += a


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def flush(tmp, dose):
    """``dose += tmp`` (float32 into float64), leaving ``tmp`` zero for the next update."""
    for k in nb.prange(tmp.size):
        dose[k] += tmp[k]
        tmp[k] = 0.0


@nb.njit(inline="always")
def _par_tuple(par, g):
    p = par[g]
    return (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])


@nb.njit(cache=True, nogil=True)
def _acc_group(up, vp, coef, buf, buf_off, par, gs, a, b, tmp):
    """Accumulate the Gaussians ``gs`` (one to three) on voxels ``a:b`` into ``tmp``."""
    g0 = gs[0]
    b0 = buf[buf_off[g0] : buf_off[g0 + 1]]
    if gs.size == 1:
        _acc1(up[a:b], vp[a:b], coef[g0, a:b], b0, _par_tuple(par, g0), tmp[a:b])
        return
    g1 = gs[1]
    b1 = buf[buf_off[g1] : buf_off[g1 + 1]]
    if gs.size == 2:
        _acc2(up[a:b], vp[a:b], coef[g0, a:b], coef[g1, a:b], b0, b1, _par_tuple(par, g0), _par_tuple(par, g1),
              tmp[a:b])
        return
    g2 = gs[2]
    b2 = buf[buf_off[g2] : buf_off[g2 + 1]]
    _acc3(up[a:b], vp[a:b], coef[g0, a:b], coef[g1, a:b], coef[g2, a:b], b0, b1, b2, _par_tuple(par, g0),
          _par_tuple(par, g1), _par_tuple(par, g2), tmp[a:b])


@nb.njit(cache=True, nogil=True)
def apply_boxes(up, vp, coef, bbox, buf, buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi, tmp):
    """``tmp[k] += sum_g coef[g, k] * bilinear(box_g, x_g(k), y_g(k))`` (paper 004 eq. 4), float32.

    ``up, vp`` (float32) are the voxels' fluence-pixel coordinates; for Gaussian ``g`` the
    position in its padded float32 box ``buf[buf_off[g]:]`` (``hp[g] x wp[g]``, zero outer
    ring, see :func:`conv_boxes`) is ``x = up * inv_s[g] + ox[g]``, ``y = vp * inv_s[g] +
    oy[g]`` (float32 arithmetic). Positions are clamped to the box, whose zero ring makes the
    interpolation vanish outside, so the inner loops have no branches.

    Voxels come in blocks of :data:`BLOCK` with a pixel bounding box ``bbox[blk] = (umin, umax,
    vmin, vmax)``; Gaussian ``g`` is applied on the voxel range from its first to its last
    block that meets the open pixel interval ``(u_lo[g], u_hi[g]) x (v_lo[g], v_hi[g])`` where
    its box is non-zero. The ranges cut the voxels into at most ``2 G - 1`` segments, each
    with a fixed set of Gaussians applied together (up to three per pass: one read of the
    voxel's coordinates and coefficients, one accumulation). In the dose grid's z-major voxel
    order a coplanar beam's box is a slab of slices, so a small patch's primary Gaussian runs
    over a fraction of the voxels while the wide scatter Gaussians cover nearly all.
    Adding an exact zero where a box is zero leaves the result equal to applying every
    Gaussian everywhere. Returns the number of Gaussian-voxel evaluations (for tests).
    """
    G = inv_s.size
    n = up.size
    nblk = bbox.shape[0]
    par = np.empty((G, 8), np.float32)
    lo = np.full(G, n, np.int64)
    hi = np.zeros(G, np.int64)
    for g in range(G):
        par[g, 0] = inv_s[g]
        par[g, 1] = ox[g]
        par[g, 2] = oy[g]
        par[g, 3] = wp[g]
        par[g, 4] = wp[g] - 1
        par[g, 5] = hp[g] - 1
        par[g, 6] = wp[g] - 2
        par[g, 7] = hp[g] - 2
        first = -1
        last = -1
        for blk in range(nblk):
            if not (bbox[blk, 1] <= u_lo[g] or bbox[blk, 0] >= u_hi[g] or bbox[blk, 3] <= v_lo[g]
                    or bbox[blk, 2] >= v_hi[g]):
                if first < 0:
                    first = blk
                last = blk
        if first >= 0:
            lo[g] = first * BLOCK
            hi[g] = min(n, (last + 1) * BLOCK)
    cuts = np.unique(np.concatenate((lo, hi)))
    gs = np.empty(G, np.int64)
    evals = 0
    for s in range(cuts.size - 1):
        a = cuts[s]
        b = cuts[s + 1]
        if a >= n:  # cuts are sorted and unique, so b > a; lo = n marks a Gaussian with no block
            continue
        m = 0
        for g in range(G):
            if lo[g] <= a and b <= hi[g]:
                gs[m] = g
                m += 1
        j = 0
        while j < m:
            k = min(3, m - j)
            _acc_group(up, vp, coef, buf, buf_off, par, gs[j : j + k], a, b, tmp)
            j += k
        evals += m * (b - a)
    return evals


def apply_boxes_reference(up, vp, coef, boxes, inv_s, ox, oy):
    """Pure-numpy reference of :func:`apply_boxes` (no blocks, no clamping tricks).

    ``boxes`` is a list of padded node arrays; returns the dose increment (float64, per voxel).
    Outside a box the interpolated value is zero.
    """
    out = np.zeros(len(up))
    for g, B in enumerate(boxes):
        x = np.asarray(up, np.float64) * inv_s[g] + ox[g]
        y = np.asarray(vp, np.float64) * inv_s[g] + oy[g]
        ix = np.floor(x).astype(np.int64)
        iy = np.floor(y).astype(np.int64)
        ax, ay = x - ix, y - iy
        val = np.zeros(len(up))
        for dy, wy in ((0, 1 - ay), (1, ay)):
            for dx, wx in ((0, 1 - ax), (1, ax)):
                r, c = iy + dy, ix + dx
                ok = (r >= 0) & (r < B.shape[0]) & (c >= 0) & (c < B.shape[1])
                val[ok] += (wy * wx)[ok] * B[r[ok], c[ok]]
        out += np.asarray(coef[g], np.float64) * val
    return out


@nb.njit(cache=True, nogil=True)
def node_update(psi, row0, col0, full, kern, kern_off, mk, stride, moff, nr, nc, C, c_off, lazy, pend):
    """One beam: convolve ``psi`` placed at pixel (row0, col0) and update its node grids.

    With ``full`` the node grids are replaced (``psi`` is the whole map); otherwise ``psi`` is
    a patch ``delta psi`` and only the nodes within the kernel support of the patch change
    (added to ``C``; paper 004: "update only what the patch changed", exact by linearity).
    ``C`` holds every Gaussian's ``(nr[g], nc[g])`` node grid flat from ``c_off[g]``.
    A *lazy* Gaussian (``lazy[g]``, patches only) changes ``C`` and adds the same change to
    ``pend`` (same layout), but its box is returned empty: the voxels see it at
    :meth:`FluenceDose.sync` (:func:`pending_boxes`).

    Returns the arguments of :func:`apply_boxes` that describe the changed nodes: the padded
    boxes as float32 ``buf`` with ``buf_off, hp, wp``, the node coordinates ``inv_s, ox, oy``
    and the pixel intervals ``u_lo, u_hi, v_lo, v_hi`` outside which a box is zero; then the
    float64 boxes and their first node row and column ``nr_lo, nc_lo`` (for :func:`sparse_apply`).
    """
    G = mk.size
    nr_lo = np.zeros(G, np.int64)
    nr_hi = nr.copy()
    nc_lo = np.zeros(G, np.int64)
    nc_hi = nc.copy()
    r1 = row0 + psi.shape[0]
    c1 = col0 + psi.shape[1]
    buf_off = np.zeros(G + 1, np.int64)
    for g in range(G):
        if not full:
            s = stride[g]
            nr_lo[g] = max(0, -((mk[g] - row0 - moff[g]) // s))
            nr_hi[g] = min(nr[g], (r1 - 1 + mk[g] + moff[g]) // s + 1)
            nc_lo[g] = max(0, -((mk[g] - col0 - moff[g]) // s))
            nc_hi[g] = min(nc[g], (c1 - 1 + mk[g] + moff[g]) // s + 1)
        h = max(0, nr_hi[g] - nr_lo[g])
        w = max(0, nc_hi[g] - nc_lo[g])
        buf_off[g + 1] = buf_off[g] + (h + 2) * (w + 2)
    buf = np.empty(buf_off[G])
    conv_boxes(psi, row0, col0, kern, kern_off, mk, stride, moff, nr_lo, nr_hi, nc_lo, nc_hi, buf, buf_off)
    hp = np.empty(G, np.int64)
    wp = np.empty(G, np.int64)
    inv_s = np.empty(G)
    ox = np.empty(G)
    oy = np.empty(G)
    u_lo = np.empty(G)
    u_hi = np.empty(G)
    v_lo = np.empty(G)
    v_hi = np.empty(G)
    for g in range(G):
        h = max(0, nr_hi[g] - nr_lo[g])
        w = max(0, nc_hi[g] - nc_lo[g])
        hp[g] = h + 2
        wp[g] = w + 2
        s = stride[g]
        inv_s[g] = 1.0 / s
        ox[g] = moff[g] / s - nc_lo[g] + 1.0
        oy[g] = moff[g] / s - nr_lo[g] + 1.0
        deferred = lazy[g] and not full
        if h == 0 or w == 0 or deferred:  # empty (or deferred) box: never applied here
            u_lo[g] = np.inf
            u_hi[g] = -np.inf
            v_lo[g] = np.inf
            v_hi[g] = -np.inf
            if h == 0 or w == 0:
                continue
        else:
            u_lo[g] = (nc_lo[g] - 1) * s - moff[g]
            u_hi[g] = nc_hi[g] * s - moff[g]
            v_lo[g] = (nr_lo[g] - 1) * s - moff[g]
            v_hi[g] = nr_hi[g] * s - moff[g]
        for jr in range(h):
            src = buf_off[g] + (jr + 1) * wp[g] + 1
            dst = c_off[g] + (nr_lo[g] + jr) * nc[g] + nc_lo[g]
            if full:
                for jc in range(w):
                    C[dst + jc] = buf[src + jc]
            else:
                for jc in range(w):
                    C[dst + jc] += buf[src + jc]
                if deferred:
                    for jc in range(w):
                        pend[dst + jc] += buf[src + jc]
    return buf.astype(np.float32), buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi, buf, nr_lo, nc_lo


@nb.njit(cache=True, nogil=True)
def update_beams(pflat, poff, pshape, prow, pcol, pbeam, full, UP, VP, COEF, BBOX, KERN, kbase, kern_off, MK,
                 STRIDE, MOFF, NR, NC, CC, cbase, c_off, LAZY, PEND, tmp, dose):
    """Apply fluence patches to any beams in one call: node update, voxel accumulation, one flush.

    Patch ``p`` (``pflat[poff[p]:poff[p + 1]]`` of shape ``pshape[p]``) goes to beam ``pbeam[p]``
    at pixel ``(prow[p], pcol[p])``; with ``full`` every patch is a whole map that replaces the
    beam's node grids. The per-beam arrays are stacked (voxel arrays ``UP, VP`` (B, N), ``COEF``
    (B, G, N), ``BBOX`` (B, blocks, 4)) or concatenated with per-beam bases (kernels ``KERN`` from
    ``kbase[b]``, node storage ``CC`` from ``cbase[b]``). Every beam's contribution is summed in
    float32 ``tmp`` and added to ``dose`` once (:func:`flush`), so a 9-beam update reads and
    writes the float64 dose once instead of nine times. ``LAZY`` (B, G) and ``PEND`` (like ``CC``):
    deferred Gaussians (:func:`node_update`).
    """
    for p in range(pbeam.size):
        b = pbeam[p]
        psi = pflat[poff[p] : poff[p + 1]].reshape((pshape[p, 0], pshape[p, 1]))
        buf, buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi, _, _, _ = node_update(
            psi, prow[p], pcol[p], full, KERN[kbase[b] : kbase[b + 1]], kern_off[b], MK[b], STRIDE[b], MOFF[b],
            NR[b], NC[b], CC[cbase[b] : cbase[b + 1]], c_off[b], LAZY[b], PEND[cbase[b] : cbase[b + 1]])
        apply_boxes(UP[b], VP[b], COEF[b], BBOX[b], buf, buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi,
                    tmp)
    flush(tmp, dose)


# ---------------------------------------------------------------------------------------------
# sparse patch updates: a node -> voxel matrix (for small voxel selections, e.g. IDS's tracked voxels)
# ---------------------------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def node_matrix(UP, VP, COEF, cbase, c_off, NR, NC, STRIDE, MOFF, count_only, colptr, rows, vals):
    """The node -> voxel matrix of the bilinear interpolation (paper 004 eq. 4), CSC over the nodes.

    Column = node (the flat index into the stacked node storage ``CC``), row = voxel, value =
    ``coef * bilinear weight`` (float32). Two passes: ``count_only`` counts into
    ``colptr[col + 1]``; the second fills ``rows``/``vals`` with ``colptr`` as running write
    positions (the caller shifts it back). Rows are in increasing order within a column.
    """
    B, N = UP.shape
    G = NR.shape[1]
    for k in range(N):
        for b in range(B):
            pu = UP[b, k]
            if pu < OUT_OF_REACH_TEST:
                continue
            pv = VP[b, k]
            for g in range(G):
                cw = COEF[b, g, k]
                if cw == 0.0:
                    continue
                s = STRIDE[b, g]
                x = (pu + MOFF[b, g]) / s
                y = (pv + MOFF[b, g]) / s
                ix = int(math.floor(x))
                iy = int(math.floor(y))
                ax = x - ix
                ay = y - iy
                for dy in range(2):
                    r = iy + dy
                    if r < 0 or r >= NR[b, g]:
                        continue
                    wy = ay if dy == 1 else 1.0 - ay
                    for dx in range(2):
                        c = ix + dx
                        if c < 0 or c >= NC[b, g]:
                            continue
                        wx = ax if dx == 1 else 1.0 - ax
                        col = cbase[b] + c_off[b, g] + r * NC[b, g] + c
                        if count_only:
                            colptr[col + 1] += 1
                        else:
                            e = colptr[col]
                            rows[e] = k
                            vals[e] = cw * wy * wx
                            colptr[col] = e + 1


@nb.njit(cache=True, nogil=True)
def sparse_apply(colptr, rows, vals, base, nc_full, buf, off, wp, r_lo, c_lo, h, w, dose):
    """``dose += M[:, box] @ box``: one node box (padded float64, ``buf[off:]``, row length ``wp``)
    through the node -> voxel matrix (:func:`node_matrix`); the box's node ``(0, 0)`` is grid node
    ``(r_lo, c_lo)`` of the grid that starts at column ``base`` and has ``nc_full`` columns."""
    for jr in range(h):
        src = off + (jr + 1) * wp + 1
        col0 = base + (r_lo + jr) * nc_full + c_lo
        for jc in range(w):
            v = buf[src + jc]
            if v == 0.0:
                continue
            col = col0 + jc
            for e in range(colptr[col], colptr[col + 1]):
                dose[rows[e]] += vals[e] * v


@nb.njit(cache=True, nogil=True)
def update_beams_sparse(pflat, poff, pshape, prow, pcol, pbeam, KERN, kbase, kern_off, MK, STRIDE, MOFF, NR, NC, CC,
                        cbase, c_off, LAZY, PEND, colptr, rows, vals, dose):
    """Patch updates as :func:`update_beams`, the voxel doses through the node -> voxel matrix.

    Only the voxels on the changed nodes are touched, and the change is added in float64; lazy
    Gaussians wait in ``PEND`` for :func:`sync_sparse`.
    """
    G = MK.shape[1]
    for p in range(pbeam.size):
        b = pbeam[p]
        psi = pflat[poff[p] : poff[p + 1]].reshape((pshape[p, 0], pshape[p, 1]))
        _, buf_off, hp, wp, _, _, _, _, _, _, _, buf, nr_lo, nc_lo = node_update(
            psi, prow[p], pcol[p], False, KERN[kbase[b] : kbase[b + 1]], kern_off[b], MK[b], STRIDE[b], MOFF[b],
            NR[b], NC[b], CC[cbase[b] : cbase[b + 1]], c_off[b], LAZY[b], PEND[cbase[b] : cbase[b + 1]])
        for g in range(G):
            if LAZY[b, g]:
                continue
            sparse_apply(colptr, rows, vals, cbase[b] + c_off[b, g], NC[b, g], buf, buf_off[g], wp[g], nr_lo[g],
                         nc_lo[g], hp[g] - 2, wp[g] - 2, dose)


@nb.njit(cache=True, nogil=True)
def sync_sparse(PEND, cbase, c_off, NR, NC, LAZY, colptr, rows, vals, dose):
    """``dose += M[:, lazy nodes] @ PEND``: the deferred node changes through the node -> voxel matrix."""
    B, G = LAZY.shape
    for b in range(B):
        for g in range(G):
            if not LAZY[b, g]:
                continue
            base = cbase[b] + c_off[b, g]
            for i in range(NR[b, g] * NC[b, g]):
                v = PEND[base + i]
                if v == 0.0:
                    continue
                for e in range(colptr[base + i], colptr[base + i + 1]):
                    dose[rows[e]] += vals[e] * v


class Threads:
    """``with Threads(n):`` runs numba parallel kernels of this thread on ``n`` threads (restored on exit).

    numba's thread count is a per-calling-thread mask, so this does not affect other threads.
    With ``n = 1`` a ``prange`` loop runs inline in the caller: no worker threads are woken
    (measured 3-28 ms per parallel launch with 2 threads on the shared, loaded 2-core machine
    with numba's OpenMP layer; 0 with one).
    """

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.prev = nb.get_num_threads()
        nb.set_num_threads(max(1, min(self.n, nb.config.NUMBA_NUM_THREADS)))

    def __exit__(self, *exc):
        nb.set_num_threads(self.prev)


def block_bbox(up, vp, active):
    """Pixel bounding box ``(umin, umax, vmin, vmax)`` of the active voxels of each block."""
    n = up.size
    nblk = -(-n // BLOCK)
    pad = nblk * BLOCK - n
    u = np.concatenate([up.astype(np.float64), np.zeros(pad)]).reshape(nblk, BLOCK)
    v = np.concatenate([vp.astype(np.float64), np.zeros(pad)]).reshape(nblk, BLOCK)
    a = np.concatenate([active, np.zeros(pad, bool)]).reshape(nblk, BLOCK)
    bb = np.empty((nblk, 4))
    bb[:, 0] = np.where(a, u, np.inf).min(axis=1)
    bb[:, 1] = np.where(a, u, -np.inf).max(axis=1)
    bb[:, 2] = np.where(a, v, np.inf).min(axis=1)
    bb[:, 3] = np.where(a, v, -np.inf).max(axis=1)
    return bb


@nb.njit(cache=True, nogil=True)
def pending_boxes(pend, c_off, nr, nc, stride, moff, lazy):
    """The deferred node changes ``pend`` of one beam as :func:`apply_boxes` arguments (full-size boxes).

    Lazy Gaussians (``lazy[g]``) get their whole ``(nr[g], nc[g])`` grid of ``pend`` as a padded
    float32 box, the others an empty box; the layout is that of :func:`node_update` with
    ``full=True``.
    """
    G = nr.size
    buf_off = np.zeros(G + 1, np.int64)
    for g in range(G):
        h = nr[g] if lazy[g] else 0
        w = nc[g] if lazy[g] else 0
        buf_off[g + 1] = buf_off[g] + (h + 2) * (w + 2)
    buf = np.zeros(buf_off[G], np.float32)
    hp = np.empty(G, np.int64)
    wp = np.empty(G, np.int64)
    inv_s = np.empty(G)
    ox = np.empty(G)
    oy = np.empty(G)
    u_lo = np.full(G, np.inf)
    u_hi = np.full(G, -np.inf)
    v_lo = np.full(G, np.inf)
    v_hi = np.full(G, -np.inf)
    for g in range(G):
        h = nr[g] if lazy[g] else 0
        w = nc[g] if lazy[g] else 0
        hp[g] = h + 2
        wp[g] = w + 2
        s = stride[g]
        inv_s[g] = 1.0 / s
        ox[g] = moff[g] / s + 1.0
        oy[g] = moff[g] / s + 1.0
        if h == 0 or w == 0:
            continue
        u_lo[g] = -s - moff[g]
        u_hi[g] = nc[g] * s - moff[g]
        v_lo[g] = -s - moff[g]
        v_hi[g] = nr[g] * s - moff[g]
        for jr in range(h):
            dst = buf_off[g] + (jr + 1) * wp[g] + 1
            src = c_off[g] + jr * nc[g]
            for jc in range(w):
                buf[dst + jc] = pend[src + jc]
    return buf, buf_off, hp, wp, inv_s, ox, oy, u_lo, u_hi, v_lo, v_hi


# ---------------------------------------------------------------------------------------------
# evaluation from the node grids in float64 (single voxels, the whole cube, candidate patches)
# ---------------------------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def _bilinear64(C, off, nr, nc, x, y):
    """Bilinear value of the node grid ``C[off: off + nr * nc]`` (row-major) at (row y, column x); 0 outside."""
    ix = int(math.floor(x))
    iy = int(math.floor(y))
    ax = x - ix
    ay = y - iy
    acc = 0.0
    for dy in range(2):
        r = iy + dy
        if r < 0 or r >= nr:
            continue
        wy = ay if dy == 1 else 1.0 - ay
        for dx in range(2):
            c = ix + dx
            if c < 0 or c >= nc:
                continue
            wx = ax if dx == 1 else 1.0 - ax
            acc += wy * wx * C[off + r * nc + c]
    return acc


@nb.njit(cache=True, inline="always")
def _node_value(k, UP, VP, COEF, C, off, r_lo, c_lo, nr, nc, stride, moff):
    """Dose (or dose change) of voxel ``k`` from the node grids ``C`` of every (beam, Gaussian), float64.

    Grid ``(b, g)`` is ``C[off[b, g]:]``, ``(nr[b, g], nc[b, g])`` nodes from node row
    ``r_lo[b, g]`` and column ``c_lo[b, g]`` (``nr = 0``: none); paper 004 eq. 4 with the voxels'
    pixel coordinates ``UP, VP`` (B, N) and coefficients ``COEF`` (B, G, N).
    """
    B, G = off.shape
    acc = 0.0
    for b in range(B):
        pu = UP[b, k]
        if pu < OUT_OF_REACH_TEST:
            continue
        pv = VP[b, k]
        for g in range(G):
            if nr[b, g] == 0:
                continue
            s = stride[b, g]
            x = (pu + moff[b, g]) / s - c_lo[b, g]
            y = (pv + moff[b, g]) / s - r_lo[b, g]
            if x <= -1.0 or y <= -1.0 or x >= nc[b, g] or y >= nr[b, g]:
                continue
            acc += COEF[b, g, k] * _bilinear64(C, off[b, g], nr[b, g], nc[b, g], x, y)
    return acc


@nb.njit(cache=True, nogil=True)
def eval_nodes_serial(pos, UP, VP, COEF, C, off, r_lo, c_lo, nr, nc, stride, moff, out):
    """``out[j] =`` :func:`_node_value` of voxel ``pos[j]`` (a few voxels)."""
    for j in range(pos.size):
        out[j] = _node_value(pos[j], UP, VP, COEF, C, off, r_lo, c_lo, nr, nc, stride, moff)


#: Voxels per chunk of :func:`eval_nodes_parallel` (a chunk's coordinates stay in cache across beams).
EVAL_CHUNK = 4096


@nb.njit(cache=True, nogil=True, parallel=True)
def eval_nodes_parallel(pos, UP, VP, COEF, C, off, r_lo, c_lo, nr, nc, stride, moff, out):
    """:func:`eval_nodes_serial` for many voxels (e.g. the whole dose cube), in parallel chunks.

    Each chunk runs beam by beam and Gaussian by Gaussian (one node grid at a time stays in cache)
    and adds each voxel's terms in the same order as :func:`_node_value` (beams, then Gaussians,
    from 0.0), so every voxel gets the very same float64 value as from the serial kernel.
    """
    B, G = off.shape
    n = pos.size
    n_chunks = (n + EVAL_CHUNK - 1) // EVAL_CHUNK
    for ch in nb.prange(n_chunks):
        a = ch * EVAL_CHUNK
        e = min(n, a + EVAL_CHUNK)
        for j in range(a, e):
            out[j] = 0.0
        for b in range(B):
            for g in range(G):
                if nr[b, g] == 0:
                    continue
                s = stride[b, g]
                for j in range(a, e):
                    k = pos[j]
                    pu = UP[b, k]
                    if pu < OUT_OF_REACH_TEST:
                        continue
                    x = (pu + moff[b, g]) / s - c_lo[b, g]
                    y = (VP[b, k] + moff[b, g]) / s - r_lo[b, g]
                    if x <= -1.0 or y <= -1.0 or x >= nc[b, g] or y >= nr[b, g]:
                        continue
                    out[j] += COEF[b, g, k] * _bilinear64(C, off[b, g], nr[b, g], nc[b, g], x, y)


@nb.njit(cache=True, nogil=True)
def patch_effect(pflat, poff, pshape, prow, pcol, pbeam, KERN, kbase, kern_off, MK, STRIDE, MOFF, NR, NC, pos, UP,
                 VP, COEF, out):
    """``out[j] +=`` dose change at voxel ``pos[j]`` if the patches were added (nothing is changed).

    Only the four nodes around each voxel's projection are needed (per beam and Gaussian), so
    their values are summed directly from the patch (the separable sum of paper 004 eq. 5, float64)
    and interpolated as in :func:`eval_nodes_serial`: "the effect of a unit patch on a voxel"
    without convolving the whole node box.
    """
    G = MK.shape[1]
    for p in range(pbeam.size):
        b = pbeam[p]
        nrow = pshape[p, 0]
        ncol = pshape[p, 1]
        psi = pflat[poff[p] : poff[p + 1]].reshape((nrow, ncol))
        row0 = prow[p]
        col0 = pcol[p]
        kern = KERN[kbase[b] : kbase[b + 1]]
        hc = np.empty(nrow)
        for j in range(pos.size):
            k = pos[j]
            pu = UP[b, k]
            if pu < OUT_OF_REACH_TEST:
                continue
            pv = VP[b, k]
            acc = 0.0
            for g in range(G):
                s = STRIDE[b, g]
                mk = MK[b, g]
                mo = MOFF[b, g]
                k0 = kern_off[b, g]
                x = (pu + mo) / s
                y = (pv + mo) / s
                if x <= -1.0 or y <= -1.0 or x >= NC[b, g] or y >= NR[b, g]:
                    continue
                ix = int(math.floor(x))
                iy = int(math.floor(y))
                ax = x - ix
                ay = y - iy
                val = 0.0
                for dx in range(2):
                    c = ix + dx
                    if c < 0 or c >= NC[b, g]:
                        continue
                    pixc = c * s - mo - col0  # node column in patch pixels
                    lo_c = max(0, pixc - mk)
                    hi_c = min(ncol, pixc + mk + 1)
                    if hi_c <= lo_c:
                        continue
                    for pr in range(nrow):  # the patch summed along u onto node column c
                        t = 0.0
                        for pc in range(lo_c, hi_c):
                            t += psi[pr, pc] * kern[k0 + pixc - pc + mk]
                        hc[pr] = t
                    wx = ax if dx == 1 else 1.0 - ax
                    for dy in range(2):
                        r = iy + dy
                        if r < 0 or r >= NR[b, g]:
                            continue
                        pixr = r * s - mo - row0
                        lo_r = max(0, pixr - mk)
                        hi_r = min(nrow, pixr + mk + 1)
                        node = 0.0
                        for pr in range(lo_r, hi_r):
                            node += kern[k0 + pixr - pr + mk] * hc[pr]
                        wy = ay if dy == 1 else 1.0 - ay
                        val += wy * wx * node
                acc += COEF[b, g, k] * val
            out[j] += acc
