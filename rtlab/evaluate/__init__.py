"""Judging a dose: metrics, score tables, plan comparison and QA.

* :mod:`~rtlab.evaluate.metrics` -- DVH, Dx/Vx, mean/max, Paddick and RTOG CI, gradient index,
  homogeneity index (ICRU 83), coverage/selectivity; the goal grammar (``"D95"``, ``"V20Gy"``);
* :mod:`~rtlab.evaluate.compare` -- :func:`~rtlab.evaluate.compare.score` (one tidy table for
  many plans), :func:`~rtlab.evaluate.compare.compare` (wide table + DVH overlay),
  :func:`~rtlab.evaluate.compare.score_summary` (the JSON object of ``rtlab score``);
* :mod:`~rtlab.evaluate.qa` -- 3D gamma index and DVH differences (patent 001's QA step).

Evaluation reads doses and structures only; it never calls the dose engine or an optimiser.
"""

from . import compare, metrics, qa
from .compare import score, score_summary
from .qa import gamma, qa_report

__all__ = ["metrics", "compare", "qa", "score", "score_summary", "gamma", "qa_report"]
