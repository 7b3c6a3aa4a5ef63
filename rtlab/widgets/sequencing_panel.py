"""SequencingPanel: smooth a plan's fluence, sequence it on an MLC, see what is delivered (paper 003).

A live panel over :mod:`rtlab.methods.smoothing`, :mod:`rtlab.methods.sequencing` and
:mod:`rtlab.methods.deliverable`:

* a **smoothing** slider sets the convolution along the leaf travel ``(s, 1 - 2 s, s)``
  (:func:`~rtlab.methods.smoothing.convolve_along_leaves`, applied per beam with
  :func:`~rtlab.methods.smoothing.apply_per_beam`); the read-out gives ``eta``, ``theta``
  (paper 003, beam-angle pheromone metrics) and TNMU (eq. 8) of the smoothed plan at once;
* **Sequence** runs :func:`~rtlab.methods.deliverable.sequence_plan` (sliding window or
  step-and-shoot with ``n_levels``, on the chosen MLC) in a background thread and reports MU,
  segments and the loss in Paddick CI and D95 between the optimised and the deliverable dose;
* the image shows one beam's optimised and delivered fluence (MU per fraction) side by side.

The panel holds no algorithm: every number comes from a library call named above.
"""

from __future__ import annotations

import html
import io

import numpy as np
from matplotlib.figure import Figure

from ..core.mlc import get_mlc, list_mlcs
from ..dose import mu_per_unit_fluence
from ..methods import sequencing as sq
from ..methods import smoothing as sm
from ..methods.deliverable import sequence_plan
from .panel import Panel, ipywidgets

__all__ = ["SequencingPanel"]


class SequencingPanel(Panel):
    """Fluence smoothing and leaf sequencing of an optimised plan.

    Parameters
    ----------
    case : rtlab.core.case.Case
        The planned case (targets and body for the CI / D95 read-out).
    im : rtlab.dose.InfluenceMatrix
        The plan's influence matrix.
    x : ndarray (n_beamlets,)
        Optimised beamlet weights (>= 0).
    mlc : str
        MLC model name (:func:`rtlab.core.mlc.list_mlcs`).
    fractions : int
        Fractions; MU are per fraction.

    Attributes
    ----------
    strength : ipywidgets.FloatSlider
        Smoothing strength ``s`` of the kernel ``(s, 1 - 2 s, s)``; 0 = no smoothing.
    mlc_select, method, n_levels, beam : ipywidgets controls
    x_smoothed : ndarray
        The current smoothed weights.
    metrics : dict
        ``eta``, ``theta``, ``tnmu`` of the smoothed plan (MU per fraction).
    result : DeliverableResult or None
        The last sequencing.
    out : ipywidgets.Output
        One line per action.
    """

    EVENTS = ("smoothed", "sequenced")

    def __init__(self, case, im, x, mlc: str = "generic_5mm_60", fractions: int = 25):
        x = np.asarray(x, float).ravel()
        if x.size != im.shape[1]:
            raise ValueError(f"x has {x.size} entries but the influence matrix has {im.shape[1]} beamlets; "
                             "pass the weights optimised on this influence matrix")
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError("x must be finite and >= 0 (optimised beamlet weights)")
        get_mlc(mlc)  # validates the name with a clear error
        fractions = int(fractions)
        if fractions < 1:
            raise ValueError(f"fractions must be >= 1, got {fractions}")
        self.case, self.im, self.x = case, im, x
        self.fractions = fractions
        self.mu_per_weight = mu_per_unit_fluence(im.machine) / fractions
        self.shapes = sm.map_shapes(im)
        self.x_smoothed = x.copy()
        self.metrics: dict = {}
        self.result = None
        self._init_panel()

        self.strength = ipywidgets.FloatSlider(value=0.0, min=0.0, max=0.45, step=0.05, description="smoothing s",
                                               continuous_update=False, readout_format=".2f")
        self.mlc_select = ipywidgets.Dropdown(options=list_mlcs(), value=mlc, description="MLC")
        self.method = ipywidgets.ToggleButtons(options=[("sliding window", "sliding"), ("step & shoot", "step")],
                                               value="sliding", description="delivery")
        self.n_levels = ipywidgets.IntSlider(value=10, min=2, max=30, description="levels")
        self.beam = ipywidgets.Dropdown(options=[(f"gantry {b.gantry:g} deg", i) for i, b in enumerate(im.beams)],
                                        value=0, description="beam")
        self.sequence_button = ipywidgets.Button(description="Sequence", button_style="primary", icon="play")
        self.table = ipywidgets.HTML()
        self.image = ipywidgets.Image(format="png", layout=ipywidgets.Layout(width="620px"))

        self.strength.observe(lambda ch: self.smooth(ch["new"]), names="value")
        self.beam.observe(lambda ch: self._draw(), names="value")
        self.sequence_button.on_click(lambda _: self.sequence())
        super().__init__([
            ipywidgets.HTML("<b>Fluence smoothing and leaf sequencing</b> (paper 003)"),
            ipywidgets.HBox([self.strength, self.beam]),
            ipywidgets.HBox([self.mlc_select, self.n_levels]),
            ipywidgets.HBox([self.method, self.sequence_button]),
            self.status, self.table, self.image, self.out,
        ])
        self.smooth(0.0)

    # -- library calls ------------------------------------------------------------------------
    def maps_mu(self, x=None) -> list[np.ndarray]:
        """Per-beam fluence maps of ``x`` (default the smoothed plan) in MU per fraction."""
        x = self.x_smoothed if x is None else x
        return [m * self.mu_per_weight for m in sm.split_maps(sm.weights_to_maps(self.im, x), self.shapes)]

    def smooth(self, strength: float) -> dict:
        """Smooth the optimised plan along the leaves with ``(s, 1 - 2 s, s)`` and score it.

        Returns the metrics dict (``eta``, ``theta`` averaged over beams; ``tnmu`` in MU per
        fraction, paper 003 eq. 8).
        """
        s = float(strength)
        if not 0.0 <= s < 0.5:
            raise ValueError(f"strength must be in [0, 0.5) so the kernel (s, 1-2s, s) stays positive, got {s}")
        if s == 0.0:
            self.x_smoothed = self.x.copy()
        else:
            self.x_smoothed = sm.apply_per_beam(self.im, lambda m: sm.convolve_along_leaves(m, (s, 1 - 2 * s, s)),
                                                self.x)
        maps = self.maps_mu()
        self.metrics = {"strength": s, "eta": float(np.mean([sm.smoothness_eta(m) for m in maps])),
                        "theta": float(np.mean([sm.tongue_groove_theta(m) for m in maps])),
                        "tnmu": float(sq.tnmu(maps))}
        self.result = None
        self.out.append_stdout(f"s={s:.2f}: eta={self.metrics['eta']:.4f} theta={self.metrics['theta']:.2f} "
                               f"TNMU={self.metrics['tnmu']:.1f} MU\n")
        self._render_table()
        self._draw()
        self._emit("smoothed", self.metrics)
        return self.metrics

    def sequence(self, block: bool = False):
        """Sequence the smoothed plan with the panel's settings (background thread).

        Parameters
        ----------
        block : bool
            Wait for the result and return it (default: return at once; see :meth:`wait`).
        """
        if self.running:
            raise RuntimeError("sequencing is running; wait() for it first")
        settings = dict(machine=self.mlc_select.value, method=self.method.value, fractions=self.fractions,
                        n_levels=int(self.n_levels.value))
        self.sequence_button.disabled = True
        self.status.value = f"sequencing on {html.escape(settings['machine'])} ({settings['method']}) ..."

        def work():
            res = sequence_plan(self.im, self.x_smoothed, **settings)
            self.result = res
            self.status.value = html.escape(repr(res))
            s = res.summary(self.case)
            self.out.append_stdout(
                f"{settings['method']} on {settings['machine']}: {s['mu_total']:.1f} MU, {s['segments']} segments, "
                f"CI {s['optimised_ci_paddick']:.3f} -> {s['deliverable_ci_paddick']:.3f}, "
                f"D95 {s['d95_optimised']:.2f} -> {s['d95_deliverable']:.2f} Gy\n")
            self._render_table()
            self._draw()
            self._emit("sequenced", res)
            return res

        def done():
            self.sequence_button.disabled = False

        return self._start_job(work, "sequencing", done=done, block=block)

    # -- drawing ------------------------------------------------------------------------------
    def _render_table(self):
        rows = [("smoothing s", f"{self.metrics['strength']:.2f}"), ("eta (smoothness)", f"{self.metrics['eta']:.4f}"),
                ("theta (tongue & groove)", f"{self.metrics['theta']:.2f}"),
                ("TNMU bound (eq. 8)", f"{self.metrics['tnmu']:.1f} MU")]
        if self.result is not None:
            s = self.result.summary(self.case)
            rows += [("delivered MU", f"{s['mu_total']:.1f} MU"), ("segments", str(s["segments"])),
                     ("Paddick CI optimised / deliverable", f"{s['optimised_ci_paddick']:.3f} / {s['deliverable_ci_paddick']:.3f}"),
                     ("D95 optimised / deliverable", f"{s['d95_optimised']:.2f} / {s['d95_deliverable']:.2f} Gy")]
        body = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{html.escape(v)}</td></tr>" for k, v in rows)
        self.table.value = f"<table>{body}</table>"

    def _draw(self):
        b = int(self.beam.value)
        panels = [("smoothed fluence", self.maps_mu()[b])]
        if self.result is not None:
            panels.append(("delivered", self.result.beams[b].delivered_mu))
        vmax = max(float(np.max(m)) for _, m in panels) or 1.0
        fig = Figure(figsize=(3.1 * len(panels), 2.6), dpi=80)
        for i, (title, m) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            im = ax.imshow(m, cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("along leaf travel", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=fig.axes, shrink=0.8, label="MU / fraction")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image.value = buf.getvalue()
