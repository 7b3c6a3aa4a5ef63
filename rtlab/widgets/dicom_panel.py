"""DicomPanel: open a planning system's RTDOSE + RTSTRUCT, see dose, contours, DVH and the score.

A thin panel over :func:`rtlab.io.load_dicom_rt` and
:func:`rtlab.evaluate.dose_volume.score_dicom_rt` (what ``rtlab score --rtdose ... --rtstruct
...`` does):

* two **path** boxes (RTDOSE, RTSTRUCT; several RTDOSE files separated by commas are summed),
  an optional CT folder and a prescription; **Open** reads and scores them in a background
  thread;
* the image shows one axial slice of the dose (colourwash) with the structures' outlines (their
  partial-volume maps at 50 %, :meth:`rtlab.core.subvoxel.SubvoxelMask.fraction`) and, beside
  it, the cumulative DVHs (:meth:`rtlab.evaluate.dose_volume.DoseVolume.cumulative`), with the
  planning system's DVHs dashed when the RTDOSE carries a DVHSequence;
* the table lists volume, Dmin, Dmean, Dmax, D95, D2 and D2cc per structure (and the TPS's
  values and the difference), then CI/GI/HI.

The panel holds no algorithm: every number comes from the library calls named above.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..evaluate.dose_volume import dose_volumes, score_dicom_rt, tps_dose_volumes
from ..io import load_dicom_rt
from .panel import Panel, esc, ipywidgets

__all__ = ["DicomPanel"]

_COLS = ("volume_cc", "Dmin", "Dmean", "Dmax", "D95", "D2", "D2cc")


class DicomPanel(Panel):
    """Score a TPS plan from its RTDOSE and RTSTRUCT files.

    Parameters
    ----------
    rtdose, rtstruct : path-like, optional
        Initial paths (typed into the boxes); nothing is read until :meth:`open_files`
        (``open`` is ipywidgets' own).
    ct : path-like, optional
        CT folder (structures on the CT grid instead of sub-voxel structures on the dose grid).
    rx : float, optional
        Prescription (Gy) for CI/GI.

    Attributes
    ----------
    rtdose_path, rtstruct_path, ct_path : ipywidgets.Text
    rx_box : ipywidgets.FloatText
        0 means no prescription.
    slice_slider : ipywidgets.IntSlider
        Axial slice of the dose grid shown.
    rt : rtlab.io.DicomRT or None
        What was read.
    result : dict or None
        The score (:func:`~rtlab.evaluate.dose_volume.score_dicom_rt`).
    volumes, tps : list of DoseVolume, dict
        rtlab's and the TPS's dose-volume data (for the DVH).
    """

    EVENTS = ("opened",)

    def __init__(self, rtdose=None, rtstruct=None, ct=None, rx: float | None = None):
        self.rt = None
        self.result = None
        self.volumes: list = []
        self.tps: dict = {}
        self._init_panel()
        self.rtdose_path = ipywidgets.Text(value="" if rtdose is None else str(rtdose), description="RTDOSE",
                                           placeholder="RD.dcm (several: comma-separated)",
                                           layout=ipywidgets.Layout(width="480px"))
        self.rtstruct_path = ipywidgets.Text(value="" if rtstruct is None else str(rtstruct), description="RTSTRUCT",
                                             placeholder="RS.dcm", layout=ipywidgets.Layout(width="480px"))
        self.ct_path = ipywidgets.Text(value="" if ct is None else str(ct), description="CT folder",
                                       placeholder="optional", layout=ipywidgets.Layout(width="480px"))
        self.rx_box = ipywidgets.FloatText(value=0.0 if rx is None else float(rx), description="rx (Gy)")
        self.open_button = ipywidgets.Button(description="Open", button_style="primary", icon="folder-open")
        self.slice_slider = ipywidgets.IntSlider(value=0, min=0, max=0, description="slice", continuous_update=False)
        self.table = ipywidgets.HTML()
        self.image = ipywidgets.Image(format="png", layout=ipywidgets.Layout(width="760px"))
        self.open_button.on_click(lambda _: self.open_files())
        self.slice_slider.observe(lambda ch: self._draw(), names="value")
        super().__init__([
            ipywidgets.HTML("<b>Clinical DICOM: score a planning system's dose</b>"),
            self.rtdose_path, self.rtstruct_path, self.ct_path,
            ipywidgets.HBox([self.rx_box, self.open_button]),
            self.status, self.slice_slider, self.image, self.table, self.out,
        ])

    # -- library calls ------------------------------------------------------------------------
    def open_files(self, block: bool = False):
        """Read and score the files named in the boxes (background thread; see :meth:`wait`)."""
        if self.running:
            raise RuntimeError("a file is being read; wait() for it first")
        doses = [p.strip() for p in self.rtdose_path.value.split(",") if p.strip()]
        rs = self.rtstruct_path.value.strip()
        if not doses or not rs:
            raise ValueError("type the RTDOSE and RTSTRUCT paths first")
        ct = self.ct_path.value.strip() or None
        rx = float(self.rx_box.value) or None
        self.open_button.disabled = True
        self.status.value = f"reading {esc(', '.join(Path(p).name for p in doses))} and {esc(Path(rs).name)} ..."

        def work():
            rt = load_dicom_rt(doses if len(doses) > 1 else doses[0], rs, ct=ct)
            vols = dose_volumes(rt)
            score = score_dicom_rt(rt, rx=rx)
            self.rt, self.volumes, self.tps = rt, vols, tps_dose_volumes(rt, vols)
            self.result = score
            self.status.value = esc(rt.summary().splitlines()[0])
            self.out.append_stdout(rt.summary() + "\n")
            self._render_table()
            nz = rt.score_grid.shape[0]
            best = int(np.argmax(rt.score_dose.reshape(nz, -1).max(axis=1)))
            self.slice_slider.max = nz - 1
            if self.slice_slider.value == best:
                self._draw()
            self.slice_slider.value = best  # redraws
            self._emit("opened", score)
            return score

        def done():
            self.open_button.disabled = False

        return self._start_job(work, "reading", done=done, block=block)

    # -- drawing ------------------------------------------------------------------------------
    def _render_table(self):
        out = self.result
        head = "".join(f"<th>{esc(c)}</th>" for c in ("structure", "source") + _COLS)
        rows = []

        def fmt(v):
            return "-" if v is None else f"{v:.3f}"

        for name, st in out["structures"].items():
            sources = [("rtlab", st)]
            if name in out.get("tps", {}):
                sources += [("TPS", out["tps"][name]), ("rtlab - TPS", out["tps_difference"][name])]
            for src, vals in sources:
                cells = "".join(f"<td style='text-align:right'>{fmt(vals.get(c))}</td>" for c in _COLS)
                rows.append(f"<tr><td>{esc(name)}</td><td>{esc(src)}</td>{cells}</tr>")
        conf = ", ".join(f"{k} {fmt(out[k])}" for k in ("ci_paddick", "ci_rtog", "gi", "hi", "coverage"))
        self.table.value = (f"<table><tr>{head}</tr>{''.join(rows)}</table>"
                            f"<div>{esc(out['dose_units'])}; target {esc(out['target'])}, rx {fmt(out['rx_gy'])}: "
                            f"{esc(conf)}</div>")

    def _draw(self):
        rt = self.rt
        if rt is None:
            return
        k = int(self.slice_slider.value)
        g = rt.score_grid
        fig = Figure(figsize=(9.5, 3.8), dpi=80)
        ax = fig.add_subplot(1, 2, 1)
        z, y, x = g.axes()
        ext = (x[0] - g.spacing[2] / 2, x[-1] + g.spacing[2] / 2, y[-1] + g.spacing[1] / 2, y[0] - g.spacing[1] / 2)
        im = ax.imshow(rt.score_dose[k], cmap="jet", extent=ext, vmin=0, vmax=float(rt.score_dose.max()) or 1.0)
        fig.colorbar(im, ax=ax, shrink=0.8, label=rt.units)
        colours = {}
        for i, s in enumerate(rt.structures):
            frac = s.subvoxels.fraction()[k]
            col = s.color or f"C{i % 10}"
            colours[s.name] = col
            if frac.max() >= 0.5 and frac.min() < 0.5:
                ax.contour(x, y, frac, levels=[0.5], colors=[col], linewidths=1.2)
        ax.set_title(f"z = {z[k]:.1f} mm", fontsize=9)
        ax.set_xlabel("x (mm)", fontsize=8)
        ax.set_ylabel("y (mm)", fontsize=8)
        ax2 = fig.add_subplot(1, 2, 2)
        for v in self.volumes:
            d, c = v.cumulative()
            ax2.plot(d, 100 * c / v.volume_cc, color=colours.get(v.name), label=v.name)
            if v.name in self.tps:
                t = self.tps[v.name]
                dt, ct = t.cumulative()
                ax2.plot(dt, 100 * ct / t.volume_cc, color=colours.get(v.name), ls="--")
        ax2.set_xlabel(f"dose ({rt.units})", fontsize=8)
        ax2.set_ylabel("volume (%)", fontsize=8)
        ax2.set_title("DVH (dashed: TPS)" if self.tps else "DVH", fontsize=9)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image.value = buf.getvalue()
