"""The broad kernel components of the influence matrix, without truncation (paper 004's node grids).

A beamlet's lateral kernel is a sum of Gaussians (:meth:`rtlab.dose.Machine.gaussians`): a
narrow primary (sigma about 2 mm for 6 MV) and broad scatter and head-scatter components
(16-52 mm for the commissioned :func:`rtlab.dose.generic_6mv`). Storing every component in the
sparse influence matrix up to a lateral cut-off either drops dose (a 40 mm cut-off loses about
6 % of the target dose of the commissioned machine) or costs non-zeros (100 mm: 4.8x those of
40 mm). :func:`rtlab.dose.build_influence` therefore splits each beam's kernel:

* Gaussians narrower than ``broad_sigma_mm`` stay in the sparse matrix ``A_n`` (their cut-off can
  be short: a few sigma of the primary);
* the broad ones are applied without truncation by convolution on coarse node grids, paper 004's
  "convolve at sparse control points and interpolate" (:class:`rtlab.dose.FluenceDose` does the
  same for fluence maps)::

      d = A_n x + P z,    z = K x

  For beam ``b`` and depth component ``k`` (one *group*), ``K_bk`` maps the beam's bixel weights
  to node values on a regular grid in the isocentre plane (spacing ``du = dv`` = the group's
  narrowest broad sigma / :data:`NODES_PER_SIGMA`, anchored at 0, covering the projections of
  every voxel the beam reaches)::

      C_bk(node) = sum_{g in k, broad} c_g sum_bixels x_j Fv_g(v_node - v_j) Fu_g(u_node - u_j)
      Fu_g(m)    = Phi((m + h/2) / s_g) - Phi((m - h/2) / s_g)

  (the exact integral of the normalised Gaussian over the bixel, as in
  :mod:`rtlab.dose.kernels`, for all bixels: no cut-off). It is separable, so it is applied as
  two small dense products per group, ``C = sum_g Kv_g X Ku_g^T`` with ``X`` the beam's bixel
  map, and its adjoint as ``sum_g Kv_g^T G Ku_g``. ``P`` is a sparse voxel <- node matrix
  (float32 CSR, 4 entries per voxel, beam and group): the bilinear interpolation weights of the
  voxel's projection ``(u, v)`` times its depth factor ``(SAD/t)^2 D_k(d_rad)``, the same factor
  the narrow matrix uses. The gradient is ``A_n^T g + K^T (P^T g)``.

For a fluence constant on each bixel the node values are exact, so ``A_n x + P K x`` differs from
the untruncated influence matrix only by the bilinear interpolation between nodes (relative
error about ``(du / s)^2 / 8 * 0.24`` of a Gaussian-blurred field edge: 0.3 % of the broad
component's step for three nodes per sigma; measured figures in ``docs/dose_engine.md``).

:class:`BroadDose` holds ``P`` and the node grids; :func:`build_broad` makes it from the voxel
geometry that :func:`rtlab.dose.build_influence` traced. The ``P`` kernels are numba
(:func:`count_node_entries`, :func:`fill_node_entries`) beside a numpy reference
(:func:`node_matrix_numpy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba as nb
import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

__all__ = ["BroadDose", "NodeGroup", "build_broad", "split_gaussians", "auto_cutoff_mm", "DEFAULT_BROAD_SIGMA_MM",
           "NODES_PER_SIGMA", "BROAD_REACH_SIGMAS", "NARROW_CUTOFF_SIGMAS", "count_node_entries",
           "fill_node_entries", "node_matrix_numpy", "separable_kernels"]

#: Gaussians at least this wide (mm, isocentre plane) take the node path by default.
DEFAULT_BROAD_SIGMA_MM = 6.0

#: Node spacing of a group = its narrowest broad sigma / this.
NODES_PER_SIGMA = 4.0

#: Voxels whose projection lies up to this many (widest) sigmas outside a beam's bixels get its
#: broad dose (the node grid covers them); beyond, a 2D Gaussian's tail is below 4e-6.
BROAD_REACH_SIGMAS = 5.0

#: Automatic cut-off of the sparse matrix: this many sigmas of its widest Gaussian plus half a
#: bixel diagonal (:func:`auto_cutoff_mm`).
NARROW_CUTOFF_SIGMAS = 4.0


def split_gaussians(sigma, broad_sigma_mm) -> np.ndarray:
    """Boolean mask of the Gaussians that take the node path (``sigma >= broad_sigma_mm``; none for None)."""
    s = np.asarray(sigma, float)
    if broad_sigma_mm is None:
        return np.zeros(s.shape, bool)
    return s >= float(broad_sigma_mm)


def auto_cutoff_mm(machine, bixel_mm: float, broad_sigma_mm=DEFAULT_BROAD_SIGMA_MM) -> float:
    """Lateral cut-off (mm) of the sparse matrix when none is given.

    ``NARROW_CUTOFF_SIGMAS`` (4) sigmas of the widest Gaussian kept in the matrix (over all SSD
    tables) plus half the bixel diagonal, rounded up to 1 mm: the cut-off is measured from the
    voxel's projection to the bixel *centre*, and a 2D Gaussian holds ``1 - exp(-8) = 99.97 %``
    of its mass within 4 sigma. With ``broad_sigma_mm=None`` (no node path) this is the
    full-kernel cut-off of the widest Gaussian.
    """
    widest = 0.0
    for j in range(len(machine.kernel_ssds)):
        _, s, w = machine.gaussians(machine.kernel_ssds[j])
        keep = ~split_gaussians(s, broad_sigma_mm) & (w != 0)
        if keep.any():
            widest = max(widest, float(s[keep].max()))
    if widest == 0.0:
        widest = 1.0
    return float(math.ceil(NARROW_CUTOFF_SIGMAS * widest + bixel_mm / math.sqrt(2.0)))


def separable_kernels(nodes, centers, h, sigma, weight=1.0) -> np.ndarray:
    """``weight * (Phi((n - c + h/2) / s) - Phi((n - c - h/2) / s))``, shape ``(len(nodes), len(centers))``.

    The exact 1D integral of a normalised Gaussian of width ``sigma`` (mm) over bixels of side
    ``h`` centred at ``centers``, evaluated at ``nodes`` (mm).
    """
    d = np.asarray(nodes, float)[:, None] - np.asarray(centers, float)[None, :]
    return weight * (ndtr((d + h / 2) / sigma) - ndtr((d - h / 2) / sigma))


@dataclass
class NodeGroup:
    """The broad Gaussians of one depth component of one beam, and their node grid.

    Node ``(iv, iu)`` sits at ``(v0 + iv dv, u0 + iu du)`` (isocentre plane, mm) and is entry
    ``offset + iv * nu + iu`` of the node vector.
    """

    beam: int
    comp: int
    sigmas: np.ndarray
    weights: np.ndarray
    u0: float
    du: float
    nu: int
    v0: float
    dv: float
    nv: int
    offset: int
    kv: np.ndarray = field(repr=False)  # (G * nv, nr): weight-folded Kv_g stacked
    kut: np.ndarray = field(repr=False)  # (G * nc, nu): Ku_g^T stacked

    @property
    def n_nodes(self) -> int:
        return self.nu * self.nv


@nb.njit(cache=True, parallel=True)
def count_node_entries(U, gbeam, bounds, counts):
    """Entries per row of ``P``: 4 per group whose beam reaches the voxel (``U`` finite)."""
    ng = gbeam.shape[0]
    for ch in nb.prange(bounds.shape[0] - 1):
        for i in range(bounds[ch], bounds[ch + 1]):
            c = 0
            for g in range(ng):
                u = U[gbeam[g], i]
                if u == u:
                    c += 4
            counts[i] = c


@nb.njit(cache=True, parallel=True)
def fill_node_entries(U, V, W, gbeam, gcomp, gu0, gdu, gnu, gv0, gdv, gnv, goff, bounds, indptr, indices, data):
    """Fill ``P``'s CSR arrays: bilinear weights of ``(u, v)`` on each group's nodes times ``W[b, i, k]``.

    Groups are ordered by node offset, and the four nodes of a cell are written in increasing
    index order, so each row's columns come out sorted.
    """
    ng = gbeam.shape[0]
    for ch in nb.prange(bounds.shape[0] - 1):
        for i in range(bounds[ch], bounds[ch + 1]):
            pos = indptr[i]
            for g in range(ng):
                b = gbeam[g]
                u = U[b, i]
                if u != u:
                    continue
                v = V[b, i]
                w = W[b, i, gcomp[g]]
                fu = (u - gu0[g]) / gdu[g]
                fv = (v - gv0[g]) / gdv[g]
                iu = int(math.floor(fu))
                iv = int(math.floor(fv))
                if iu < 0:
                    iu = 0
                if iu > gnu[g] - 2:
                    iu = gnu[g] - 2
                if iv < 0:
                    iv = 0
                if iv > gnv[g] - 2:
                    iv = gnv[g] - 2
                a = fu - iu
                c = fv - iv
                base = goff[g] + iv * gnu[g] + iu
                indices[pos] = base
                data[pos] = w * (1.0 - a) * (1.0 - c)
                indices[pos + 1] = base + 1
                data[pos + 1] = w * a * (1.0 - c)
                indices[pos + 2] = base + gnu[g]
                data[pos + 2] = w * (1.0 - a) * c
                indices[pos + 3] = base + gnu[g] + 1
                data[pos + 3] = w * a * c
                pos += 4


def node_matrix_numpy(U, V, W, groups, n_nodes) -> sp.csr_matrix:
    """Numpy reference of ``P`` (:func:`fill_node_entries`), float64 CSR ``(n_rows, n_nodes)``."""
    rows, cols, vals = [], [], []
    n = U.shape[1]
    for g in groups:
        u, v = U[g.beam], V[g.beam]
        ok = np.flatnonzero(np.isfinite(u))
        fu = (u[ok] - g.u0) / g.du
        fv = (v[ok] - g.v0) / g.dv
        iu = np.clip(np.floor(fu).astype(np.int64), 0, g.nu - 2)
        iv = np.clip(np.floor(fv).astype(np.int64), 0, g.nv - 2)
        a, c = fu - iu, fv - iv
        w = W[g.beam, ok, g.comp]
        base = g.offset + iv * g.nu + iu
        for dcol, wt in ((0, (1 - a) * (1 - c)), (1, a * (1 - c)), (g.nu, (1 - a) * c), (g.nu + 1, a * c)):
            rows.append(ok)
            cols.append(base + dcol)
            vals.append(w * wt)
    if not rows:
        return sp.csr_matrix((n, n_nodes))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n_nodes))


class BroadDose:
    """``P K``: the broad Gaussians of every beam, applied through node grids (module docstring).

    Parameters
    ----------
    groups : list of NodeGroup
        Ordered by beam, then component; node offsets increasing.
    P : scipy.sparse.csr_matrix, float32, (n_rows, n_nodes)
    bixels : list of rtlab.core.beams.BixelGrid
        Each beam's bixel grid (its mask orders the beam's columns).
    beamlet_slices : list of slice
        Columns of each beam.

    Attributes
    ----------
    n_nodes : int
    shape : (n_rows, n_beamlets)
    """

    def __init__(self, groups, P, bixels, beamlet_slices):
        self.groups = list(groups)
        self.P = P
        self.bixels = list(bixels)
        self.beamlet_slices = list(beamlet_slices)
        self.n_nodes = int(P.shape[1])
        self.n_beamlets = int(max((s.stop for s in self.beamlet_slices), default=0))
        self.shape = (int(P.shape[0]), self.n_beamlets)
        self._masks = [b.mask for b in self.bixels]
        self._csc = None

    def __repr__(self) -> str:
        return (f"BroadDose(rows={self.shape[0]}, beamlets={self.shape[1]}, groups={len(self.groups)}, "
                f"nodes={self.n_nodes}, nnz={self.nnz})")

    @property
    def nnz(self) -> int:
        """Stored entries of ``P`` (the node values ``K x`` are computed, not stored)."""
        return int(self.P.nnz)

    def nodes(self, x) -> np.ndarray:
        """Node values ``z = K x`` (float64, ``(n_nodes,)``) of beamlet weights ``x``."""
        x = np.asarray(x, np.float64).ravel()
        z = np.empty(self.n_nodes)
        maps = {}
        for g in self.groups:
            X = maps.get(g.beam)
            if X is None:
                X = np.zeros(self._masks[g.beam].shape)
                X[self._masks[g.beam]] = x[self.beamlet_slices[g.beam]]
                maps[g.beam] = X
            G = g.kv.shape[0] // g.nv
            nc = X.shape[1]
            T = (g.kv @ X).reshape(G, g.nv, nc).transpose(1, 0, 2).reshape(g.nv, G * nc)
            z[g.offset:g.offset + g.n_nodes] = (T @ g.kut).ravel()
        return z

    def nodes_adjoint(self, gz) -> np.ndarray:
        """``K^T gz`` (float64, ``(n_beamlets,)``): the adjoint of :meth:`nodes`."""
        gz = np.asarray(gz, np.float64).ravel()
        out = np.zeros(self.n_beamlets)
        acc = {}
        for g in self.groups:
            Gn = gz[g.offset:g.offset + g.n_nodes].reshape(g.nv, g.nu)
            G = g.kv.shape[0] // g.nv
            nc = g.kut.shape[0] // G
            S = (Gn @ g.kut.T).reshape(g.nv, G, nc).transpose(1, 0, 2).reshape(G * g.nv, nc)
            gX = g.kv.T @ S
            if g.beam in acc:
                acc[g.beam] += gX
            else:
                acc[g.beam] = gX
        for b, gX in acc.items():
            out[self.beamlet_slices[b]] = gX[self._masks[b]]
        return out

    def matvec(self, x) -> np.ndarray:
        """``P K x`` (Gy per row, float64)."""
        return np.asarray(self.P @ self.nodes(x).astype(np.float32), np.float64)

    def rmatvec(self, g) -> np.ndarray:
        """``K^T P^T g`` (float64, ``(n_beamlets,)``)."""
        return self.nodes_adjoint(self.P.T @ np.asarray(g, np.float64))

    def node_slice(self, beam: int) -> slice:
        """Node-vector entries of one beam's groups (contiguous)."""
        gs = [g for g in self.groups if g.beam == beam]
        if not gs:
            return slice(0, 0)
        return slice(gs[0].offset, gs[-1].offset + gs[-1].n_nodes)

    def select_beams(self, beam_idx, beamlet_slices) -> "BroadDose":
        """The groups of the beams ``beam_idx`` (renumbered 0, 1, ...), ``P`` restricted to their nodes."""
        beam_idx = [int(b) for b in beam_idx]
        groups, cols, off = [], [], 0
        for nb_, b in enumerate(beam_idx):
            for g in self.groups:
                if g.beam == b:
                    groups.append(NodeGroup(nb_, g.comp, g.sigmas, g.weights, g.u0, g.du, g.nu, g.v0, g.dv, g.nv, off,
                                            g.kv, g.kut))
                    cols.append(np.arange(g.offset, g.offset + g.n_nodes))
                    off += g.n_nodes
        idx = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        if self._csc is None:
            self._csc = self.P.tocsc()
        P = self._csc[:, idx].tocsr()
        P.sort_indices()
        return BroadDose(groups, P, [self.bixels[b] for b in beam_idx], beamlet_slices)

    @staticmethod
    def join(parts, beamlet_slices) -> "BroadDose":
        """Beams of several :class:`BroadDose` on the same rows, side by side (columns of ``parts[0]`` first)."""
        groups, Ps, bixels, off, nb_ = [], [], [], 0, 0
        for p in parts:
            for g in p.groups:
                groups.append(NodeGroup(g.beam + nb_, g.comp, g.sigmas, g.weights, g.u0, g.du, g.nu, g.v0, g.dv, g.nv,
                                        g.offset + off, g.kv, g.kut))
            Ps.append(p.P)
            bixels += p.bixels
            off += p.n_nodes
            nb_ += len(p.bixels)
        P = sp.hstack(Ps, format="csr", dtype=np.float32)
        P.sort_indices()
        return BroadDose(groups, P, bixels, beamlet_slices)


def build_broad(U, V, W, beams, gaussians, broad_sigma_mm, beamlet_slices, n_chunks: int = 256) -> BroadDose | None:
    """The node path of the broad Gaussians (module docstring), or None when no Gaussian is broad.

    Parameters
    ----------
    U, V : (n_beams, n_rows) float64
        Isocentre-plane projections of the rows' voxels (NaN: out of the beam's reach).
    W : (n_beams, n_rows, 3) float64
        Depth factors ``(SAD/t)^2 D_k(d_rad)``.
    beams : list of Beam
    gaussians : list of (comp, sigma, weight)
        :meth:`rtlab.dose.Machine.gaussians` of each beam (at its SSD).
    broad_sigma_mm : float or None
    beamlet_slices : list of slice
    n_chunks : int
        Row chunks of the parallel kernels.
    """
    groups, off = [], 0
    for b, (beam, (comp, sig, wt)) in enumerate(zip(beams, gaussians)):
        broad = split_gaussians(sig, broad_sigma_mm) & (np.asarray(wt) != 0)
        if not broad.any():
            continue
        u, v = U[b], V[b]
        ok = np.isfinite(u)
        if not ok.any():
            continue
        umin, umax = float(u[ok].min()), float(u[ok].max())
        vmin, vmax = float(v[ok].min()), float(v[ok].max())
        bx = beam.bixels
        h = bx.bixel_mm
        nr, nc = bx.mask.shape
        vc = (bx.r0 + np.arange(nr)) * h
        uc = (bx.c0 + np.arange(nc)) * h
        for k in range(3):
            sel = broad & (np.asarray(comp) == k)
            if not sel.any():
                continue
            s, w = np.asarray(sig)[sel], np.asarray(wt)[sel]
            d = float(s.min()) / NODES_PER_SIGMA
            u0 = math.floor(umin / d) * d
            v0 = math.floor(vmin / d) * d
            nu = max(int(math.floor((umax - u0) / d)) + 2, 2)
            nv = max(int(math.floor((vmax - v0) / d)) + 2, 2)
            un = u0 + d * np.arange(nu)
            vn = v0 + d * np.arange(nv)
            kv = np.concatenate([separable_kernels(vn, vc, h, sg, wg) for sg, wg in zip(s, w)], axis=0)
            kut = np.concatenate([separable_kernels(un, uc, h, sg).T for sg in s], axis=0)
            groups.append(NodeGroup(b, k, s, w, u0, d, nu, v0, d, nv, off, np.ascontiguousarray(kv),
                                    np.ascontiguousarray(kut)))
            off += nu * nv
    if not groups:
        return None
    n = U.shape[1]
    gbeam = np.array([g.beam for g in groups], np.int64)
    counts = np.zeros(n, np.int64)
    bounds = np.linspace(0, n, min(max(n_chunks, 1), max(n, 1)) + 1).astype(np.int64)
    count_node_entries(U, gbeam, bounds, counts)
    nnz = int(counts.sum())
    idx_t = np.int32 if max(nnz, off) < 2**31 - 1 else np.int64
    indptr = np.zeros(n + 1, idx_t)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, idx_t)
    data = np.empty(nnz, np.float32)
    f64 = lambda name: np.array([getattr(g, name) for g in groups], np.float64)  # noqa: E731
    i64 = lambda name: np.array([getattr(g, name) for g in groups], np.int64)  # noqa: E731
    fill_node_entries(U, V, W, gbeam, i64("comp"), f64("u0"), f64("du"), i64("nu"), f64("v0"), f64("dv"), i64("nv"),
                      i64("offset"), bounds, indptr, indices, data)
    P = sp.csr_matrix((data, indices, indptr), shape=(n, off), copy=False)
    P.has_sorted_indices = True
    return BroadDose(groups, P, [b.bixels for b in beams], beamlet_slices)
