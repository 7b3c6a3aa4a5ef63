"""The evaluation operator of a plan: beamlet weights to the dose an objective sees.

With a dose grid coarser than the CT grid, objectives and scores are evaluated on the CT grid:
the CT-grid dose is the trilinear interpolation of the dose-grid dose, ``d_ct = R A x`` with
``R`` the sparse interpolation matrix of :func:`rtlab.core.geometry.trilinear_matrix` (8
non-zeros per CT voxel, the same interpolation as :func:`rtlab.core.geometry.resample`, order 1).
:class:`PlanOperator` applies ``E x = [R_roi A x ; A x]``: the CT voxels of a region of interest
followed by every dose-grid row; its adjoint is ``A^T (R_roi^T g_ct + g_dose)``. Both products
run on the numba :class:`~rtlab.dose.sparse.DoseOperator`. On the CT grid itself ``E = A``.
"""

from __future__ import annotations

import numpy as np

from ..core.geometry import trilinear_matrix
from ..core.selection import rows_for
from .sparse import DoseOperator

__all__ = ["PlanOperator", "trilinear_matrix"]


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

    Attributes
    ----------
    shape : (n_eval, n_beamlets)
    n_ct : int
        Number of CT-voxel rows (first rows of ``E x``).
    ct_index : ndarray of int64
        Flat CT-grid index of each of the first ``n_ct`` rows.
    """

    def __init__(self, influence, roi=None, backend: str = "numba"):
        self.influence = influence
        self.A = DoseOperator(influence.matrix, backend=backend)
        self.A.prepare_transpose()
        ct = influence.ct_grid
        self.on_ct = influence.grid.is_same(ct)
        if self.on_ct:
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
            self.R = DoseOperator(R, backend=backend)
            self.R.prepare_transpose()
            self.n_ct = self.ct_index.size
            self.n_dose = influence.shape[0]
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
        out[self.n_ct:] = y
        return out

    def rmatvec(self, g) -> np.ndarray:
        """``E^T g = A^T (R^T g_ct + g_dose)`` (float64)."""
        g = np.asarray(g, np.float64)
        if g.shape != (self.shape[0],):
            raise ValueError(f"g has shape {g.shape}, expected ({self.shape[0]},), one value per row of E")
        if self.R is None:
            return self.A.rmatvec(g)
        gd = self.R.rmatvec(g[: self.n_ct])
        gd += g[self.n_ct:]
        return self.A.rmatvec(gd)

    def __matmul__(self, x):
        return self.matvec(x)

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
        sel = m.ravel()[self.influence.voxel_index]
        return self.n_ct + np.flatnonzero(sel).astype(np.int64)

    def dose_ct(self, x) -> np.ndarray:
        """Dose on the whole CT grid (Gy, float32, ``(z, y, x)``; zero outside the selection)."""
        y = self.A.matvec(np.asarray(x, np.float64))
        return self.influence.to_grid(y, on="ct").astype(np.float32)
