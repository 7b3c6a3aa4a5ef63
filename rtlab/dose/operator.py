"""The evaluation operators of a plan: beamlet weights to the dose at the rows, and to what an objective sees.

:class:`InfluenceOperator` is an influence matrix's dose at its rows as a fast linear operator:
``d = A_n x + P K x`` (the narrow sparse matrix plus the broad Gaussians' node path of
:mod:`rtlab.dose.broad`), both sparse products on a :class:`~rtlab.dose.sparse.DoseOperator`
(numba on the CPU, cuSPARSE / numba.cuda on a GPU), the node convolution ``K x`` on the host.

With a dose grid coarser than the CT grid, objectives and scores are evaluated on the CT grid:
the CT-grid dose is the trilinear interpolation of the dose-grid dose, ``d_ct = R A x`` with
``R`` the sparse interpolation matrix of :func:`rtlab.core.geometry.trilinear_matrix` (8
non-zeros per CT voxel, the same interpolation as :func:`rtlab.core.geometry.resample`, order 1).
:class:`PlanOperator` applies ``E x = [R_roi A x ; A x]``: the CT voxels of a region of interest
followed by every dose-grid row; its adjoint is ``A^T (R_roi^T g_ct + g_dose)``. On the CT grid
itself ``E = A``. :class:`ComposedOperator` is ``E M`` for a parameter map ``x = M y`` (plan
conversion optimises leaf positions ``y``).
"""

from __future__ import annotations

import numpy as np

from ..core.geometry import trilinear_matrix
from ..core.selection import rows_for
from .sparse import DoseOperator, is_device_array

__all__ = ["PlanOperator", "InfluenceOperator", "ComposedOperator", "trilinear_matrix"]


class InfluenceOperator:
    """``d = A_n x + P K x``: an :class:`~rtlab.dose.InfluenceMatrix`'s dose at its rows, fast.

    Parameters
    ----------
    influence : rtlab.dose.InfluenceMatrix
    backend : str
        :class:`rtlab.dose.sparse.DoseOperator` backend of both sparse parts (default ``'numba'``).
    check : bool
        Check inputs for NaN/inf (see :class:`~rtlab.dose.sparse.DoseOperator`).
    rows : array of int, optional
        Only these rows of the influence matrix (sorted, unique; default all): the dose at
        them, ``A_n[rows] x + P[rows] K x``, costs that fraction of the non-zeros.

    Attributes
    ----------
    shape : (n_rows, n_beamlets)
    nnz : int
        Stored entries of both sparse parts.
    backend : str
    """

    def __init__(self, influence, backend: str = "numba", check: bool = True, rows=None):
        self.influence = influence
        A, self.broad = influence.matrix, influence.broad
        P = None if self.broad is None else self.broad.P
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            if rows.ndim != 1 or (rows.size and (rows[0] < 0 or rows[-1] >= A.shape[0] or np.any(np.diff(rows) <= 0))):
                raise ValueError(f"rows must be sorted unique row indices in [0, {A.shape[0]}), got {rows.size} values")
            A = A[rows]
            P = None if P is None else P[rows]
        self.A = DoseOperator(A, backend=backend, check=check)
        self.P = None if P is None else DoseOperator(P, backend=backend, check=check)
        self.backend = self.A.backend
        self.shape = tuple(A.shape)

    def __repr__(self) -> str:
        return f"InfluenceOperator(shape={self.shape}, nnz={self.nnz}, backend={self.backend!r})"

    @property
    def nnz(self) -> int:
        return self.A.nnz + (self.P.nnz if self.P is not None else 0)

    def prepare_transpose(self) -> "InfluenceOperator":
        """Build the transposes now (see :meth:`rtlab.dose.sparse.DoseOperator.prepare_transpose`)."""
        self.A.prepare_transpose()
        if self.P is not None:
            self.P.prepare_transpose()
        return self

    def _host(self, v, name):
        if self.P is not None and is_device_array(v):
            raise TypeError(f"{name} is a device array; the node path needs host arrays (numpy): the GPU "
                            "backends still run both sparse products on the device")
        return v

    def matvec(self, x, out=None) -> np.ndarray:
        """Dose ``A_n x + P K x`` (Gy, float32, one value per row; host arrays in and out)."""
        x = self._host(x, "x")
        y = self.A.matvec(x, out=out)
        if self.P is not None:
            y += self.P.matvec(self.broad.nodes(x).astype(np.float32))
        return y

    def rmatvec(self, g, out=None) -> np.ndarray:
        """``A_n^T g + K^T P^T g`` (float64, one value per beamlet)."""
        g = self._host(g, "g")
        r = self.A.rmatvec(g, out=out)
        if self.P is not None:
            r += self.broad.nodes_adjoint(self.P.rmatvec(g))
        return r

    def __matmul__(self, x):
        return self.matvec(x)

    def compose(self, M) -> "ComposedOperator":
        """``self @ M`` for a (sparse) matrix ``M`` of shape ``(n_beamlets, n_params)``."""
        return ComposedOperator(self, M)


class ComposedOperator:
    """``E M``: an operator with ``matvec`` / ``rmatvec`` composed with a matrix ``M`` (``x = M y``).

    ``matvec(y) = E (M y)``, ``rmatvec(g) = M^T (E^T g)``; ``compose`` chains further maps
    (``(E M) S = E (M S)``).
    """

    def __init__(self, op, M):
        if M.ndim != 2 or M.shape[0] != op.shape[1]:
            raise ValueError(f"M has shape {M.shape}; it must map parameters to the operator's {op.shape[1]} columns")
        self.op = op
        self.M = M
        self.shape = (op.shape[0], M.shape[1])

    def __repr__(self) -> str:
        return f"ComposedOperator(shape={self.shape}, inner={self.op!r})"

    def matvec(self, y) -> np.ndarray:
        return self.op.matvec(np.asarray(self.M @ np.asarray(y, np.float64), np.float64).ravel())

    def rmatvec(self, g) -> np.ndarray:
        return np.asarray(self.M.T @ np.asarray(self.op.rmatvec(g), np.float64), np.float64).ravel()

    def __matmul__(self, y):
        return self.matvec(y)

    def compose(self, S) -> "ComposedOperator":
        return ComposedOperator(self.op, self.M @ S)


class PlanOperator:
    """``E x = [R_roi A x ; A x]``: beamlet weights to the dose the objective sees (Gy).

    Parameters
    ----------
    influence : rtlab.dose.InfluenceMatrix
    roi : ndarray of bool on the CT grid, optional
        CT voxels evaluated on the CT grid (default: every selected CT voxel). Ignored when the
        dose grid is the CT grid (then ``E = A``).
    backend : str
        :class:`rtlab.dose.sparse.DoseOperator` backend (default ``'numba'``).
    dose_mask : ndarray of bool on the dose grid, optional
        The dose-grid voxels whose rows follow the CT rows (default: every row of the influence
        matrix). With a mask, ``A`` holds only the rows that ``R_roi`` reads plus these, so a
        product streams that fraction of the non-zeros (the recipes evaluate a dose-grid term,
        the guard, on a subsample; :mod:`rtlab.planning.recipes`). The dose at a kept row is
        the same as without the mask. Ignored on the CT grid.

    Attributes
    ----------
    A : InfluenceOperator
        The dose-grid rows ``A x`` that ``E`` needs (narrow matrix plus node path; all rows
        unless ``dose_mask`` is given).
    shape : (n_eval, n_beamlets)
    n_ct : int
        Number of CT-voxel rows (first rows of ``E x``).
    ct_index : ndarray of int64
        Flat CT-grid index of each of the first ``n_ct`` rows.
    """

    def __init__(self, influence, roi=None, backend: str = "numba", dose_mask=None):
        self.influence = influence
        self.backend_name = backend
        ct = influence.ct_grid
        self.on_ct = influence.grid.is_same(ct)
        #: influence-matrix rows of the dose-grid rows of E, and their positions in A's rows
        #: (both None: every row, in order)
        self.dose_index = self._dose_pos = None
        self._full = None
        if self.on_ct:
            self.A = InfluenceOperator(influence, backend=backend)
            self.ct_index = np.asarray(influence.voxel_index, np.int64)
            self.R = None
            self.n_ct = self.ct_index.size
            self.n_dose = 0
        else:
            sel = influence.ct_mask.copy()
            if roi is not None:
                sel &= ct.check_array("roi", roi).astype(bool)
            if not sel.any():
                raise ValueError("roi selects no CT voxel with dose; pass a region inside the body")
            self.ct_index = np.flatnonzero(sel.ravel()).astype(np.int64)
            R = trilinear_matrix(influence.grid, influence.voxel_index, ct, self.ct_index)
            if dose_mask is None:
                self.A = InfluenceOperator(influence, backend=backend)
                self.n_dose = influence.shape[0]
            else:
                m = influence.grid.check_array("dose_mask", dose_mask).astype(bool)
                self.dose_index = np.flatnonzero(m.ravel()[influence.voxel_index]).astype(np.int64)
                R = R.tocsr()
                keep = np.union1d(np.unique(R.indices), self.dose_index)
                pos = np.full(influence.shape[0], -1, np.int64)
                pos[keep] = np.arange(keep.size)
                R = type(R)((R.data, pos[R.indices].astype(R.indices.dtype), R.indptr), shape=(R.shape[0], keep.size))
                self._dose_pos = pos[self.dose_index]
                self.A = InfluenceOperator(influence, backend=backend, rows=keep)
                self.n_dose = self.dose_index.size
            self.R = DoseOperator(R, backend=backend)
            self.R.prepare_transpose()
            self.n_ct = self.ct_index.size
        self.A.prepare_transpose()
        self.shape = (self.n_ct + self.n_dose, influence.shape[1])
        self._lut = None

    def __repr__(self) -> str:
        return (f"PlanOperator(shape={self.shape}, ct_rows={self.n_ct}, dose_rows={self.n_dose}, "
                f"backend={self.A.backend!r})")

    def matvec(self, x) -> np.ndarray:
        """``E x`` in Gy (float64): CT-voxel rows, then dose-grid rows."""
        y = self.A.matvec(np.asarray(x, np.float64))
        if self.R is None:
            return y.astype(np.float64)
        out = np.empty(self.shape[0], np.float64)
        out[: self.n_ct] = self.R.matvec(y)
        out[self.n_ct:] = y if self._dose_pos is None else y[self._dose_pos]
        return out

    def rmatvec(self, g) -> np.ndarray:
        """``E^T g = A^T (R^T g_ct + g_dose)`` (float64)."""
        g = np.asarray(g, np.float64)
        if g.shape != (self.shape[0],):
            raise ValueError(f"g has shape {g.shape}, expected ({self.shape[0]},), one value per row of E")
        if self.R is None:
            return self.A.rmatvec(g)
        gd = self.R.rmatvec(g[: self.n_ct])
        if self._dose_pos is None:
            gd += g[self.n_ct:]
        else:
            gd[self._dose_pos] += g[self.n_ct:]
        return self.A.rmatvec(gd)

    def __matmul__(self, x):
        return self.matvec(x)

    def compose(self, M) -> ComposedOperator:
        """``E M`` for a (sparse) matrix ``M`` of shape ``(n_beamlets, n_params)``."""
        return ComposedOperator(self, M)

    # -- DoseEngine protocol (rtlab.dose.engine) ----------------------------------------------
    def dose(self, x) -> np.ndarray:
        """``E x`` (Gy, float64): the dose the objective sees (:class:`~rtlab.dose.engine.DoseEngine`)."""
        return self.matvec(x)

    def vjp(self, x, g) -> np.ndarray:
        """``E^T g`` (``x`` is not needed: the map is linear); the gradient of ``<g, E x>``."""
        return self.rmatvec(g)

    # -- row selection ------------------------------------------------------------------------
    def ct_rows(self, mask, missing: str = "ignore") -> np.ndarray:
        """Rows of ``E x`` of the CT voxels in ``mask`` (bool, CT grid, or a Structure).

        ``missing='raise'`` raises when some voxels of ``mask`` are not evaluated (outside the
        region of interest / body); ``'ignore'`` drops them.
        """
        return rows_for(mask, self.ct_index, self.influence.ct_grid.shape, missing=missing)

    def ct_rows_of_flat(self, flat) -> np.ndarray:
        """Rows of ``E x`` of flat CT indices (``-1`` where a voxel is not evaluated)."""
        if self._lut is None:
            self._lut = np.full(self.influence.ct_grid.size, -1, np.int64)
            self._lut[self.ct_index] = np.arange(self.n_ct)
        return self._lut[np.asarray(flat, np.int64)]

    def dose_rows(self, mask_dose_grid) -> np.ndarray:
        """Rows of ``E x`` of the dose-grid voxels in ``mask_dose_grid`` (empty on the CT grid)."""
        if self.R is None:
            return np.zeros(0, np.int64)
        m = self.influence.grid.check_array("mask_dose_grid", mask_dose_grid).astype(bool)
        vox = self.influence.voxel_index if self.dose_index is None else self.influence.voxel_index[self.dose_index]
        sel = m.ravel()[vox]
        return self.n_ct + np.flatnonzero(sel).astype(np.int64)

    def dose_ct(self, x) -> np.ndarray:
        """Dose on the whole CT grid (Gy, float32, ``(z, y, x)``; zero outside the selection)."""
        A = self.A
        if self.dose_index is not None:  # A holds some rows only: every row from the whole matrix
            if self._full is None:
                self._full = InfluenceOperator(self.influence, backend=self.backend_name)
            A = self._full
        y = A.matvec(np.asarray(x, np.float64))
        return self.influence.to_grid(y, on="ct").astype(np.float32)
