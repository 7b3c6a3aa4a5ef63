"""Batch reports: the QA table of persisted plans and the summary files of a batch.

:func:`qa_table` reads the sidecars of an output directory (or the ``records`` of a
:func:`rtlab.batch.run_batch` summary) into one row per (case, machine): QA passed, attempts
(master-level conversions, claim 7), the gamma pass rates, the largest |DVH difference| and the
reasons a plan failed. :func:`dvh_table` gives the D95/D50/D2/Dmean differences per structure.
:func:`write_summary` writes ``batch_summary.json`` and ``batch_qa.csv`` next to the plans,
atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import pandas as pd

from .._util import atomic_write_text
from .persist import jsonable

__all__ = ["qa_table", "dvh_table", "format_qa_table", "write_summary", "SUMMARY_JSON", "QA_CSV"]

#: File names written by :func:`write_summary` (no ``__`` in them, so they never look like records).
SUMMARY_JSON = "batch_summary.json"
QA_CSV = "batch_qa.csv"


def _records(source) -> list[dict]:
    """Sidecar-like dicts: ``case``, ``machine``, ``qa``, ``attempts``, ``plan`` (may be empty)."""
    if isinstance(source, Mapping):
        if "records" not in source:
            raise TypeError("source must be an output directory or a run_batch summary (a dict with 'records')")
        return [dict(r) for r in source["records"]]
    p = Path(source)
    if not p.is_dir():
        raise ValueError(f"source {str(p)!r} is not a directory; pass a batch output directory or a summary dict")
    out = []
    for side in sorted(p.glob("*__*.json")):
        try:
            out.append(json.loads(side.read_text()))
        except ValueError:
            raise ValueError(f"{side.name} is not valid JSON; the record is damaged (delete it to recompute)") from None
    return out


def qa_table(source, cases=None):
    """One row per persisted plan: case, machine, passed, attempts, gamma rates, DVH difference, reasons.

    Parameters
    ----------
    source : path-like or dict
        A batch output directory (reads every ``<case>__<machine>.json``) or a summary of
        :func:`rtlab.batch.run_batch` (its ``records``).
    cases : list of str, optional
        Keep only these case ids.

    Returns
    -------
    pandas.DataFrame
        Columns ``case``, ``machine``, ``passed``, ``attempts``, ``method``, ``gamma_<crit>_pct``
        per criterion (e.g. ``gamma_3%/3mm_pct``), ``max_abs_dvh_diff_gy``, ``reasons``;
        sorted by case and machine.
    """

    rows = []
    for r in _records(source):
        if cases is not None and r.get("case") not in cases:
            continue
        qa = dict(r.get("qa") or {})
        plan = dict(r.get("plan") or {})
        row = dict(case=r.get("case"), machine=r.get("machine"), passed=bool(qa.get("passed", False)),
                   attempts=int(r.get("attempts", 1)), method=plan.get("method", ""))
        for k, v in dict(qa.get("pass_rates") or {}).items():
            row[f"gamma_{k}_pct"] = None if v is None else round(100.0 * float(v), 2)
        mx = qa.get("max_abs_dvh_diff_gy")
        row["max_abs_dvh_diff_gy"] = None if mx is None else round(float(mx), 3)
        row["reasons"] = "; ".join(list(qa.get("reasons") or []))
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        gam = sorted((c for c in df.columns if c.startswith("gamma_")), key=_crit_key)
        df = df[["case", "machine", "passed", "attempts", "method", *gam, "max_abs_dvh_diff_gy", "reasons"]]
        df = df.sort_values(["case", "machine"], kind="stable").reset_index(drop=True)
    return df


def _crit_key(col: str):
    """'gamma_3%/3mm_pct' -> sorts the loosest criterion first (3%/3mm before 2%/2mm)."""

    nums = [float(v) for v in re.findall(r"[0-9.]+", col)]
    return tuple(-v for v in nums) + (col,)


def dvh_table(source, cases=None):
    """D95 / D50 / D2 / Dmean of every structure, standard vs converted plan (Gy), per record.

    Returns
    -------
    pandas.DataFrame
        Columns ``case``, ``machine``, ``structure``, ``metric``, ``reference``, ``evaluated``,
        ``diff`` (Gy).
    """

    rows = []
    for r in _records(source):
        if cases is not None and r.get("case") not in cases:
            continue
        for d in (r.get("qa") or {}).get("dvh") or []:
            rows.append(dict(case=r.get("case"), machine=r.get("machine"), **d))
    df = pd.DataFrame(rows, columns=["case", "machine", "structure", "metric", "reference", "evaluated", "diff"])
    return df.sort_values(["case", "machine"], kind="stable").reset_index(drop=True)


def format_qa_table(df) -> str:
    """The QA table as fixed-width text (reasons cut to 60 characters)."""

    if len(df) == 0:
        return "(no persisted plans)"
    d = df.copy()
    d["passed"] = d["passed"].map({True: "yes", False: "NO"})
    d["reasons"] = d["reasons"].map(lambda s: s if len(s) <= 60 else s[:57] + "...")
    d = d.rename(columns=lambda c: c.replace("gamma_", "").replace("_pct", " %") if c.startswith("gamma_") else c)
    d = d.rename(columns={"max_abs_dvh_diff_gy": "max|dDVH| Gy"})
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        return d.to_string(index=False)


def write_summary(out, summary: Mapping, cases=None) -> dict:
    """Write ``batch_summary.json`` (the summary + the QA rows) and ``batch_qa.csv`` into ``out``.

    Both are written atomically. Returns ``{'json': path, 'csv': path}``.
    """

    out = Path(out)
    table = qa_table(out, cases)
    doc = dict(jsonable(dict(summary)))
    doc["qa_table"] = jsonable(table.to_dict("records"))
    doc["all_passed"] = bool(len(table) and table["passed"].all() and not summary.get("failed"))
    jp, cp = out / SUMMARY_JSON, out / QA_CSV
    atomic_write_text(jp, json.dumps(doc, indent=1, sort_keys=True))
    atomic_write_text(cp, table.to_csv(index=False))
    return {"json": jp, "csv": cp}
