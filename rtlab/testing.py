"""Figure checks: a printed figure, its expected value and a stated tolerance.

Notebooks are regression tests (``pytest --nbval``), but an iterative optimiser amplifies the
last-bit differences between CPUs (AVX2 vs AVX-512 code from numba), thread counts and library
versions, so a plan's CI or D95 printed to three digits may differ between two honest machines.
The notebooks therefore print such figures in cells whose output is not compared
(``# NBVAL_IGNORE_OUTPUT``) and check them here, in a cell whose text output *is* compared and
is the same on every machine::

    >>> from rtlab.testing import check
    >>> check("Paddick CI", 0.9461, 0.946, abs=0.02)
    PASS  Paddick CI = 0.946 +- 0.02

A figure outside its tolerance raises :class:`FigureCheckError` (an ``AssertionError``) whose
message names the figure, its value, the expected value and the tolerance, so nbval reports
e.g. ``FIGURE CHANGED: Paddick CI = 0.7 (expected 0.946 +- 0.02)``.

Tolerances are chosen from the spread measured across machines, numba code generation targets
(``NUMBA_CPU_NAME``), thread counts and dependency sets (``scripts/notebook_figures.py``; the
method and the table are in ``docs/notebooks.md``), never guessed.

Measuring the spread
--------------------
Two environment variables turn a notebook run into a measurement:

``RTLAB_FIGURES_LOG``
    A file path; every check appends one JSON line to it (``context``, ``name``, ``value``,
    ``expected``, ``tolerance``, ``low``, ``high``, ``passed``).
``RTLAB_FIGURES_MODE=record``
    Checks never raise (a figure outside its tolerance is logged with ``passed: false`` and
    printed as ``FAIL``), so one run collects every figure.
``RTLAB_FIGURES_CONTEXT``
    A label copied into each logged line (the runner sets it to the notebook and the
    configuration).
"""

from __future__ import annotations

import json
import math
import numbers
import os

__all__ = ["FigureCheckError", "check", "check_between", "check_equal"]


class FigureCheckError(AssertionError):
    """A checked figure moved past its tolerance (or out of its bounds)."""


def _number(name: str, value) -> float:
    # numbers, numpy scalars and 0-d arrays; not strings, booleans or sequences
    ok = not isinstance(value, (bool, str, bytes))
    if ok and not isinstance(value, numbers.Real):
        ok = getattr(value, "ndim", None) == 0 and getattr(getattr(value, "dtype", None), "kind", "") in "iuf"
    if not ok:
        raise TypeError(f"check {name!r}: value must be a real number, got {type(value).__name__}")
    return float(value)


def _fmt(v: float) -> str:
    """A figure as written: up to 6 significant digits, no trailing zeros."""
    return format(float(v), ".6g")


def _log(record: dict) -> None:
    path = os.environ.get("RTLAB_FIGURES_LOG")
    if not path:
        return
    record = {"context": os.environ.get("RTLAB_FIGURES_CONTEXT", ""), **record}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _recording() -> bool:
    return os.environ.get("RTLAB_FIGURES_MODE", "").strip().lower() == "record"


def _finish(name: str, passed: bool, stable_text: str, failure: str, record: dict, quiet: bool) -> None:
    # returns None on purpose: a check on a cell's last line must not echo a value (nbval would
    # compare it; nbconvert and nbval disagree on whether a trailing ';' hides it)
    _log({"name": name, "passed": bool(passed), **record})
    if not passed and not _recording():
        raise FigureCheckError(f"FIGURE CHANGED: {failure}")
    if not quiet:
        print(("PASS  " if passed else "FAIL  ") + stable_text)


def check(name: str, value, expected: float, *, rel: float = 0.0, abs: float = 0.0, unit: str = "",
          quiet: bool = False) -> None:
    """Check that a figure lies within a stated tolerance of its expected value.

    Passes when ``|value - expected| <= max(abs, rel * |expected|)``. The printed line holds
    only the name, the expected value and the tolerance (never the measured value), so the
    cell's output is the same on every machine that passes.

    Parameters
    ----------
    name : str
        The figure as a reader knows it (e.g. ``"PTV D95 (Gy)"``); it names the failure.
    value : float
        The measured figure.
    expected : float
        The value stored with the notebook.
    rel, abs : float
        Relative and absolute tolerance (at least one > 0), chosen from the measured spread.
    unit : str
        Printed after the tolerance (e.g. ``"Gy"``).
    quiet : bool
        Print nothing when it passes.

    Raises
    ------
    FigureCheckError
        The figure moved past its tolerance, or is NaN.
    """
    v = _number(name, value)
    e = _number(name, expected)
    rel, abs_ = float(rel), float(abs)
    if not (rel >= 0 and abs_ >= 0 and (rel > 0 or abs_ > 0)) or not math.isfinite(e):
        raise ValueError(f"check {name!r}: give a finite expected value and rel > 0 or abs > 0 "
                         f"(got expected={expected!r}, rel={rel!r}, abs={abs!r}); exact comparison of a "
                         "computed float is what this helper exists to avoid, use check_equal for counts")
    tol = max(abs_, rel * math.fabs(e))
    passed = math.isfinite(v) and math.fabs(v - e) <= tol
    u = f" {unit}" if unit else ""
    tol_text = f"{_fmt(tol)}{u}" if rel == 0 or abs_ > rel * math.fabs(e) else f"{_fmt(tol)}{u} ({_fmt(rel * 100)} %)"
    stable = f"{name} = {_fmt(e)} +- {tol_text}"
    failure = f"{name} = {_fmt(v)}{u} (expected {_fmt(e)} +- {tol_text})"
    _finish(name, passed, stable, failure,
                   {"value": v, "expected": e, "tolerance": tol, "low": None, "high": None}, quiet)


def check_between(name: str, value, low: float | None = None, high: float | None = None, *, unit: str = "",
                  quiet: bool = False) -> None:
    """Check that a figure meets a bound: ``low <= value <= high`` (either may be None).

    Use for goals and claims (``"CenterTarget D10 <= 53 Gy"``, ``"CI >= 0.6"``) rather than
    for regression values, which :func:`check` pins with a tolerance.

    Raises
    ------
    FigureCheckError
        The figure is out of its bounds, or NaN.
    """
    v = _number(name, value)
    if low is None and high is None:
        raise ValueError(f"check_between {name!r}: give low, high or both")
    lo = None if low is None else _number(name, low)
    hi = None if high is None else _number(name, high)
    passed = math.isfinite(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
    u = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        bound = f"in [{_fmt(lo)}, {_fmt(hi)}]{u}"
    elif lo is not None:
        bound = f">= {_fmt(lo)}{u}"
    else:
        bound = f"<= {_fmt(hi)}{u}"
    _finish(name, passed, f"{name} {bound}", f"{name} = {_fmt(v)}{u}, expected {bound}",
                   {"value": v, "expected": None, "tolerance": None, "low": lo, "high": hi}, quiet)


def check_equal(name: str, value, expected, *, quiet: bool = False) -> None:
    """Check an exact figure: a count, a flag, a status or a name (not a computed float).

    Raises
    ------
    FigureCheckError
        ``value != expected``.
    TypeError
        ``expected`` is a float that is not a whole number (use :func:`check`).
    """
    if isinstance(expected, float) and not float(expected).is_integer():
        raise TypeError(f"check_equal {name!r}: {expected!r} is a computed float; use check() with a tolerance")
    passed = value == expected
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value_log = int(value)
    else:
        value_log = value if isinstance(value, (bool, float, str)) else str(value)
    _finish(name, bool(passed), f"{name} = {expected!r}", f"{name} = {value!r} (expected {expected!r})",
                   {"value": value_log, "expected": expected if isinstance(expected, (bool, int, float, str)) else str(expected),
                    "tolerance": 0, "low": None, "high": None}, quiet)
