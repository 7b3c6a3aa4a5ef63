"""The schema of a reproduction row (:mod:`rtlab.reproduce`): :func:`row`, :func:`check_row`."""

from __future__ import annotations

import math
from typing import Mapping

__all__ = ["ROW_KEYS", "row", "check_row"]

#: The keys of a row, in order (the schema of ``rtlab reproduce --json``).
ROW_KEYS = ("seed", "claim", "source_figure", "rtlab_figure", "baseline", "held", "why")

def row(seed: str, claim: str, source_figure: str, rtlab_figure: Mapping, baseline: str, held: bool,
        why: str) -> dict:
    """Build and check one row (see the module docstring)."""
    r = dict(seed=str(seed), claim=str(claim), source_figure=str(source_figure), rtlab_figure=dict(rtlab_figure),
             baseline=str(baseline), held=bool(held), why=str(why))
    check_row(r)
    return r


def _check_value(path: str, v) -> None:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return
    if isinstance(v, int):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"rtlab_figure{path} is {v!r}; figures must be finite (use None for 'not reached')")
        return
    if isinstance(v, Mapping):
        for k, x in v.items():
            _check_value(f"{path}[{k!r}]", x)
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_value(f"{path}[{i}]", x)
        return
    raise TypeError(f"rtlab_figure{path} has type {type(v).__name__}; use float, int, bool, str, None, dict or list")


def check_row(r: Mapping) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``r`` has exactly :data:`ROW_KEYS` with the right types.

    ``rtlab_figure`` must be a dict of JSON values whose floats are finite (``None`` marks a
    figure that was not reached, e.g. an objective value a start never attains).
    """
    if not isinstance(r, Mapping):
        raise TypeError(f"a row must be a dict, got {type(r).__name__}")
    if tuple(r) != ROW_KEYS:
        raise ValueError(f"a row has the keys {ROW_KEYS} in that order, got {tuple(r)}")
    for k in ("seed", "claim", "source_figure", "baseline", "why"):
        if not isinstance(r[k], str) or not r[k]:
            raise TypeError(f"row[{k!r}] must be a non-empty string, got {r[k]!r}")
    if not isinstance(r["held"], bool):
        raise TypeError(f"row['held'] must be a bool, got {r['held']!r}")
    if not isinstance(r["rtlab_figure"], Mapping):
        raise TypeError(f"row['rtlab_figure'] must be a dict, got {type(r['rtlab_figure']).__name__}")
    _check_value("", r["rtlab_figure"])
