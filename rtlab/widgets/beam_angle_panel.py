"""BeamAnglePanel: ant-colony beam-angle selection with live pheromone weights (paper 003, eq. 4).

A live panel over :mod:`rtlab.methods.beam_angles`:

* **Run colony** calls :func:`~rtlab.methods.beam_angles.select_beam_angles` in a background
  thread with the panel's settings (beams, ants, iterations, seed, the four weights); each
  iteration's best cost appears as it finishes; **Stop** ends the colony after the current
  iteration (the best set so far is kept);
* the weight sliders ``alpha, beta, gamma, lambda`` (of eta, theta, objValue and TNMU in
  ``phi = alpha eta + beta theta + gamma objValue + lambda TNMU``) re-score every beam set the
  colony evaluated with :func:`~rtlab.methods.beam_angles.rescore` at once, without
  re-optimising;
* a polar plot shows the best set under the current weights against the first equispaced set.

The panel holds no algorithm: it calls the two functions above and draws.
"""

from __future__ import annotations

import html
import io
import threading

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..methods import beam_angles as ba
from .panel import Panel, ipywidgets

__all__ = ["BeamAnglePanel"]

_WEIGHT_NAMES = ("alpha (eta)", "beta (theta)", "gamma (objective)", "lambda (TNMU)")


class BeamAnglePanel(Panel):
    """Ant-colony beam-angle selection with re-weighable pheromone.

    Parameters
    ----------
    case : rtlab.core.case.Case
    im : InfluenceMatrix, optional
        Candidate influence matrix (:func:`rtlab.methods.beam_angles.candidate_influence`);
        built on the first run from ``candidates`` when not given.
    result : ACOResult, optional
        A finished colony to start from (its weights set the sliders).
    n_beams : int
        Beams per plan.
    candidates : int or sequence of float
        Candidate gantry angles when ``im`` is not given.
    max_iter : int
        L-BFGS-B iterations per ant.

    Attributes
    ----------
    result : ACOResult or None
    ranking : pandas.DataFrame or None
        Every evaluated set ranked under the current weights (:func:`rescore`).
    out : ipywidgets.Output
    """

    EVENTS = ("iteration", "finished", "reweighed")

    def __init__(self, case, im=None, result=None, n_beams: int = 5, candidates=20, max_iter: int = 15):
        self.case, self.im, self.result = case, im, result
        self.candidates = candidates
        self.max_iter = int(max_iter)
        self.ranking = None
        self._stop = threading.Event()
        self._init_panel()

        w0 = tuple(result.weights) if result is not None and hasattr(result, "weights") else ba.PAPER_WEIGHTS
        self.weights = [ipywidgets.FloatSlider(value=float(v), min=0.0, max=1.0, step=0.05, description=name,
                                               continuous_update=False, style={"description_width": "120px"})
                        for name, v in zip(_WEIGHT_NAMES, w0)]
        self.n_beams = ipywidgets.IntSlider(value=int(n_beams), min=2, max=9, description="beams")
        self.n_ants = ipywidgets.IntSlider(value=4, min=1, max=20, description="ants")
        self.n_iter = ipywidgets.IntSlider(value=4, min=1, max=20, description="iterations")
        self.seed = ipywidgets.IntText(value=0, description="seed", layout=ipywidgets.Layout(width="160px"))
        self.run_button = ipywidgets.Button(description="Run colony", button_style="primary", icon="play")
        self.stop_button = ipywidgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.table = ipywidgets.HTML()
        self.image = ipywidgets.Image(format="png", layout=ipywidgets.Layout(width="300px"))
        for s in self.weights:
            s.observe(lambda ch: self.reweigh() if self.result is not None else None, names="value")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        super().__init__([
            ipywidgets.HTML("<b>Beam-angle selection by ant colony</b> (paper 003, eq. 4)"),
            ipywidgets.HBox([self.n_beams, self.n_ants, self.n_iter, self.seed]),
            ipywidgets.HBox([ipywidgets.VBox(self.weights), self.image]),
            ipywidgets.HBox([self.run_button, self.stop_button]),
            self.status, self.table, self.out,
        ])
        if result is not None:
            self.reweigh()

    # -- library calls ------------------------------------------------------------------------
    def weight_values(self) -> tuple[float, float, float, float]:
        """The four pheromone weights ``(alpha, beta, gamma, lambda)`` set on the sliders."""
        return tuple(float(s.value) for s in self.weights)

    def reweigh(self, weights=None):
        """Rank every evaluated beam set under ``weights`` (default the sliders) -- no re-optimisation.

        Returns the ranking (pandas DataFrame: ``angles``, ``cost``, ``equispaced``).
        """
        if self.result is None:
            raise RuntimeError("no colony result yet: run() the colony first or pass result=")
        w = self.weight_values() if weights is None else tuple(weights)
        self.ranking = ba.rescore(self.result, w)
        best = self.ranking.iloc[0]
        self.out.append_stdout(f"weights {tuple(round(v, 2) for v in w)}: best {best['angles']} "
                               f"cost {best['cost']:.4f} equispaced={bool(best['equispaced'])}\n")
        self._render()
        self._emit("reweighed", self.ranking)
        return self.ranking

    def run(self, block: bool = False):
        """Run the colony with the panel's settings in a background thread (``block`` to wait).

        :meth:`wait` returns :attr:`result` (the colony's result); ``"finished"`` carries it too.
        """
        if self.running:
            raise RuntimeError("the colony is running; stop() or wait() first")
        self._stop.clear()
        settings = dict(n_beams=int(self.n_beams.value), n_ants=int(self.n_ants.value), n_iter=int(self.n_iter.value),
                        seed=int(self.seed.value), weights=self.weight_values(), max_iter=self.max_iter)
        if sum(settings["weights"]) <= 0:
            raise ValueError("at least one pheromone weight must be > 0")
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.status.value = "building the candidate influence matrix ..." if self.im is None else "running ..."

        def on_iteration(rec):
            self.out.append_stdout(f"iteration {rec['iteration']}: best cost {rec['best_cost']:.4f}, "
                                   f"best angles {rec['best_angles']}\n")
            self.status.value = f"iteration {rec['iteration'] + 1} of {settings['n_iter']}"
            self._emit("iteration", rec)
            return self._stop.is_set()

        def work():
            if self.im is None:
                cand = self.candidates
                angles = np.arange(int(cand)) * 360.0 / int(cand) if np.isscalar(cand) else np.asarray(cand, float)
                self.im = ba.candidate_influence(self.case, angles, progress=False)
                self.status.value = "running ..."
            self.result = ba.select_beam_angles(self.case, im=self.im, progress=False, callback=on_iteration,
                                                **settings)
            self.status.value = html.escape(f"best angles {list(self.result.angles)}, cost {self.result.cost:.4f}"
                                            + (" (stopped)" if self._stop.is_set() else ""))
            self.reweigh()
            self._emit("finished", self.result)
            return self.result

        def done():
            self.run_button.disabled, self.stop_button.disabled = False, True

        return self._start_job(work, "colony", done=done, block=block)

    def stop(self) -> None:
        """Stop the colony after its current iteration; the best set so far is kept."""
        self._stop.set()

    # -- drawing ------------------------------------------------------------------------------
    def _render(self):
        top = self.ranking.head(5)
        body = "".join(f"<tr><td>{html.escape(str(r.angles))}</td><td style='text-align:right'>{r.cost:.4f}</td>"
                       f"<td>{'yes' if r.equispaced else ''}</td></tr>" for r in top.itertuples())
        self.table.value = ("<table><tr><th>gantry angles (deg)</th><th>cost Phi</th><th>equispaced</th></tr>"
                            f"{body}</table>")
        fig = Figure(figsize=(3, 3), dpi=80)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(projection="polar")
        ax.set_theta_zero_location("N")
        ax.set_theta_direction(-1)
        best = [float(a) for a in str(self.ranking.iloc[0]["angles"]).split()]
        for a in best:
            ax.plot([0, np.deg2rad(a)], [0, 1], "C3-", lw=2)
        if self.result.equispaced:
            for a in np.asarray(self.result.candidates)[list(self.result.equispaced[0])]:
                ax.plot([0, np.deg2rad(a)], [0, 0.75], "C0--")
        ax.set_yticks([])
        ax.set_title("best (red) vs equispaced (blue)", fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.image.value = buf.getvalue()
