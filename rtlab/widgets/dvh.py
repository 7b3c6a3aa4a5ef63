"""DVHPlot: a dose-volume histogram plot that redraws when the dose changes.

The DVHs come from :func:`rtlab.evaluate.metrics.dvh` (this module computes nothing itself); the plot is
drawn with matplotlib's Agg renderer into a PNG and shown by an ``ipywidgets.Image``, so it
needs no matplotlib notebook backend and updates in place on :meth:`DVHPlot.update`.
"""

from __future__ import annotations

import io
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._lazy import load
from ..core.geometry import Grid
from ..evaluate.metrics import dvh
from .slice_viewer import PALETTE, structure_list

ipywidgets = load("ipywidgets", extra="lab", purpose="rtlab's DVH plot")

__all__ = ["DVHPlot"]


class DVHPlot(ipywidgets.Image):
    """Cumulative DVHs of several structures, redrawn on :meth:`update`.

    Parameters
    ----------
    grid : Grid
        Grid of the structures.
    structures : StructureSet or list of Structure or dict name -> mask
        Structures to plot (empty ones are skipped).
    dose : ndarray, optional
        Gy, on ``grid`` (or on ``dose_grid``).
    dose_grid : Grid, optional
        Grid of the dose when it differs from ``grid`` (:func:`rtlab.evaluate.metrics.dvh` resamples).
    bins : int
        Dose points per curve (``bins + 1`` from 0 to the structure's maximum dose); each
        point's volume is exact.
    keep_reference : bool
        Keep the first dose's DVHs as dashed curves, to compare against during optimisation.
    size : tuple of float
        Figure size in inches (at 100 dpi).
    title : str

    Attributes
    ----------
    dvhs : dict name -> rtlab.evaluate.metrics.DVH
        The curves of the latest dose.
    reference_dvhs : dict name -> DVH
        The dashed reference curves (``keep_reference``).
    last_draw_s : float
        Seconds the latest update took (DVHs + drawing).
    """

    def __init__(self, grid: Grid, structures, dose=None, dose_grid: Grid | None = None, bins: int = 200,
                 keep_reference: bool = False, size=(6.0, 3.5), title: str = ""):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid must be an rtlab.core.geometry.Grid, got {type(grid).__name__}")
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        structs = [s for s in structure_list(structures, grid) if s.mask.any()]
        if not structs:
            raise ValueError("structures holds no non-empty structure; pass at least one to plot a DVH")
        super().__init__(format="png")
        self._grid = grid
        self._dose_grid = dose_grid
        self._structures = structs
        self._bins = int(bins)
        self._keep_reference = bool(keep_reference)
        self._size = tuple(float(v) for v in size)
        self._title = title
        self.dvhs: dict = {}
        self.reference_dvhs: dict = {}
        self.last_draw_s = 0.0
        self.n_updates = 0
        self._colors = [
            s.color if s.color is not None else PALETTE[i % len(PALETTE)] for i, s in enumerate(structs)
        ]
        if dose is not None:
            self.update(dose)
        else:
            self._draw()

    @property
    def structures(self):
        """The plotted structures."""
        return list(self._structures)

    def update(self, dose) -> None:
        """Recompute the DVHs of ``dose`` (Gy) with :func:`rtlab.evaluate.metrics.dvh` and redraw.

        Suitable as (part of) an optimiser's per-iteration callback.
        """
        t0 = time.perf_counter()
        d = np.asarray(dose)
        grid = self._dose_grid or self._grid
        grid.check_array("dose", d)
        self.dvhs = {s.name: dvh(d, s, grid=self._dose_grid, bins=self._bins) for s in self._structures}
        if self._keep_reference and not self.reference_dvhs:
            self.reference_dvhs = dict(self.dvhs)
        self._draw()
        self.n_updates += 1
        self.last_draw_s = time.perf_counter() - t0

    def _draw(self) -> None:
        fig = Figure(figsize=self._size, dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for s, c in zip(self._structures, self._colors):
            if s.name in self.reference_dvhs:
                self.reference_dvhs[s.name].plot(ax, color=c, linestyle="--", linewidth=1, alpha=0.7, label="_nolegend_")
            if s.name in self.dvhs:
                self.dvhs[s.name].plot(ax, color=c, linewidth=1.6, label=s.name)
        ax.set_xlabel("dose (Gy)")
        ax.set_ylabel("volume (%)")
        ax.set_ylim(0, 102)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        if self.dvhs:
            ax.legend(loc="upper right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no dose yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
        if self._title:
            ax.set_title(self._title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.value = buf.getvalue()
