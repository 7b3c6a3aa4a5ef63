"""Persistence of finished plans: one ``.npz`` + one ``.json`` sidecar per (case, machine).

A record is written the moment the master receives it, atomically
(:func:`rtlab._util.atomic_path`): first the arrays to ``<case>__<machine>.npz``, then the
sidecar ``<case>__<machine>.json``. The sidecar is the completion marker - a record counts as
persisted only when its sidecar exists - so a crash between the two writes leaves a stray
``.npz`` that the next run overwrites. Writing is idempotent: :func:`persist_record` returns
False and writes nothing when the sidecar already exists with the same fingerprint, so a task
that ran twice (a worker died after finishing it, or a batch was re-run) still yields exactly
one record. A record whose fingerprint differs (another case input, other settings, another
rtlab version: :mod:`rtlab.batch.fingerprint`) is stale and is replaced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from .._util import atomic_path, atomic_write_text

__all__ = ["record_stem", "persist_record", "load_record", "read_sidecar", "completed_records", "check_id",
           "jsonable"]

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe file-name fragment, else raise ``ValueError``."""
    if not isinstance(value, str) or not _SAFE.match(value) or "__" in value:
        raise ValueError(
            f"{kind} id {value!r} cannot be used in a file name; use letters, digits, '.', '_', '+', '-' "
            "(no '__', no path separators, not starting with '.')"
        )
    return value


def record_stem(out, case_id: str, machine: str) -> Path:
    """``out / f"{case_id}__{machine}"`` (no suffix)."""
    return Path(out) / f"{check_id('case', case_id)}__{check_id('machine', machine)}"


def _split(plan) -> tuple[dict, dict]:
    if hasattr(plan, "to_dict") and not isinstance(plan, Mapping):
        plan = plan.to_dict()
    if not isinstance(plan, Mapping):
        raise TypeError(
            f"a stage returned a plan of type {type(plan).__name__}; the convert stage must return a dict "
            "of arrays and JSON-serialisable values (or an object with to_dict())"
        )
    arrays, meta = {}, {}
    for k, v in plan.items():
        if isinstance(v, np.ndarray):
            arrays[str(k)] = v
        else:
            meta[str(k)] = v
    return arrays, meta


def jsonable(obj):
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists (for JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def read_sidecar(out, case_id: str, machine: str) -> dict | None:
    """The JSON sidecar of a record, or None when it is missing or unreadable (not valid JSON)."""
    side = record_stem(out, case_id, machine).with_suffix(".json")
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def persist_record(out, case_id: str, machine: str, plan, meta: Mapping | None = None,
                   fingerprint: Mapping | None = None) -> bool:
    """Write one finished plan atomically; False (nothing written) if it is already there.

    "Already there" means a sidecar exists and - when ``fingerprint`` is given - holds the
    same fingerprint; a sidecar with another fingerprint (or none) is a stale record of another
    input or other settings, and is replaced.

    Parameters
    ----------
    out : path-like
        Output directory (created if missing).
    case_id, machine : str
        Record key.
    plan : dict
        ndarray values go to the ``.npz``; other values to the sidecar's ``"plan"`` entry.
    meta : dict, optional
        Extra JSON-serialisable information (QA result, attempt, timings, machine choice).
    fingerprint : dict, optional
        What determined the plan (:func:`rtlab.batch.fingerprint.fingerprint`); stored in the
        sidecar as ``"fingerprint"``.

    Returns
    -------
    bool
        True if this call wrote the record.
    """
    stem = record_stem(out, case_id, machine)
    side = stem.with_suffix(".json")
    if side.exists():
        old = read_sidecar(out, case_id, machine)
        if fingerprint is None or (old is not None and old.get("fingerprint") == dict(fingerprint)):
            return False
    arrays, plan_meta = _split(plan)
    with atomic_path(stem.with_suffix(".npz")) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    doc = dict(case=case_id, machine=machine, arrays=sorted(arrays), plan=jsonable(plan_meta),
               **jsonable(dict(meta or {})))
    if fingerprint is not None:
        doc["fingerprint"] = jsonable(dict(fingerprint))
    atomic_write_text(side, json.dumps(doc, indent=1, sort_keys=True))
    return True


def load_record(out, case_id: str, machine: str) -> tuple[dict, dict]:
    """Read a record back: ``(arrays, sidecar)``."""
    stem = record_stem(out, case_id, machine)
    side = stem.with_suffix(".json")
    if not side.exists():
        raise FileNotFoundError(f"no persisted plan for case {case_id!r} on machine {machine!r} in {out}")
    with np.load(stem.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(side.read_text())


def completed_records(out) -> dict[str, list[str]]:
    """Case id -> machines with a persisted record in ``out`` (sidecar present)."""
    done: dict[str, list[str]] = {}
    p = Path(out)
    if not p.is_dir():
        return done
    for side in sorted(p.glob("*__*.json")):
        case_id, _, machine = side.stem.partition("__")
        done.setdefault(case_id, []).append(machine)
    return done
