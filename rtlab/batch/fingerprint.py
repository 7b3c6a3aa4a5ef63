"""What determines a batch plan, as a fingerprint stored in its record (resume checks it).

A batch record (:mod:`rtlab.batch.persist`) is reused on a re-run with the same ``out`` only
when its fingerprint equals the one the new run computes for that case:

``input``
    SHA-256 of the case's content: the bytes of its file (rtlab ``.npz``, matRad ``.mat``),
    of every file of a DICOM folder (with their relative names), the arrays and metadata of a
    :class:`~rtlab.core.case.Case` object, or - for a built-in phantom, which rtlab builds
    from code - its name and voxel size. A different patient whose file has the same stem
    therefore does not match.
``settings``
    SHA-256 of the settings that determine the plan: every stage function with its bound
    options (angles, spacing, iterations, bixel size, QA criteria, ...; see
    :func:`stage_settings`) and the planner options that change a record (policy, fan-out,
    QA attempts, the user's machine choice).
``rtlab_version``
    The rtlab version that wrote the record.

Anything else (a record written before fingerprints existed, an unreadable sidecar) does not
match either: the case is planned again and the reason is reported.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Mapping

import numpy as np

from .._util import VERSION
from ..core.case import Case
from ..phantoms import list_phantoms
from .persist import jsonable
from .stages import OPTIONAL_STAGES

__all__ = ["case_input_hash", "stage_settings", "fingerprint", "mismatch_reason", "rtlab_version"]

_CHUNK = 1 << 20


def rtlab_version() -> str:
    """The running rtlab's version string."""
    return VERSION


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            h.update(block)


def _hash_path(h, path: Path) -> None:
    if path.is_dir():
        for q in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(b"file\0" + str(q.relative_to(path)).encode("utf-8", "surrogateescape") + b"\0")
            _hash_file(h, q)
    else:
        h.update(b"file\0")
        _hash_file(h, path)


def _hash_array(h, a) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def _hash_case(h, case) -> None:
    h.update(json.dumps(dict(name=case.name, grid=case.grid.to_dict() if hasattr(case.grid, "to_dict") else
                             repr(case.grid), prescription=case.prescription,
                             beams=[repr(b) for b in (case.beams or [])]), sort_keys=True, default=repr).encode())
    _hash_array(h, case.ct)
    _hash_array(h, case.density)
    for s in case.structures.values():
        h.update(f"structure\0{s.name}\0{s.kind}\0{s.prescription}\0".encode())
        _hash_array(h, s.mask)
    for g in getattr(case, "goals", None) or []:
        h.update(repr(g).encode())


def case_input_hash(case_ref) -> str:
    """SHA-256 (hex) of what a case is made of (see the module docstring).

    Parameters
    ----------
    case_ref : CaseRef, Case or str
        A :class:`rtlab.batch.stages.CaseRef` (a phantom name or a path), a
        :class:`~rtlab.core.case.Case`, or a plain case id for custom stages (then the id is
        all that is known, and it is what is hashed).
    """
    h = hashlib.sha256()
    if isinstance(case_ref, Case):
        h.update(b"case\0")
        _hash_case(h, case_ref)
        return h.hexdigest()
    source = getattr(case_ref, "source", None)
    spacing = getattr(case_ref, "spacing", None)
    if source is None:
        source = str(case_ref)
    if source in list_phantoms():
        h.update(f"phantom\0{source}\0{spacing!r}".encode())
        return h.hexdigest()
    p = Path(source)
    if p.exists():
        _hash_path(h, p)
        return h.hexdigest()
    h.update(f"id\0{source}".encode())
    return h.hexdigest()


def _describe(obj):
    """A JSON-ready description of a stage function and its bound options.

    Functions (bare or in ``functools.partial``) by their qualified name, mappings with sorted
    keys; everything else as :func:`rtlab.batch.persist.jsonable` writes it in a record.
    """
    if isinstance(obj, functools.partial):
        return dict(function=_describe(obj.func), args=[_describe(a) for a in obj.args],
                    keywords={str(k): _describe(v) for k, v in sorted(obj.keywords.items())})
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    if isinstance(obj, Mapping):
        return {str(k): _describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_describe(v) for v in obj]
    return jsonable(obj)


def stage_settings(stages) -> dict:
    """Each stage's function and bound options (``functools.partial`` keywords), JSON-ready.

    An optional stage that is not run (``None``, e.g. ``delineate``) is left out, so adding an
    optional stage does not change the fingerprint of batches that do not use it.
    """
    return {f.name: _describe(getattr(stages, f.name)) for f in fields(stages)
            if not (f.name in OPTIONAL_STAGES and getattr(stages, f.name) is None)}


def _sha(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


def fingerprint(case_ref, stages, planner_settings: Mapping | None = None) -> dict:
    """``{'input': sha256, 'settings': sha256, 'rtlab_version': str}`` of one case's plan."""
    settings = dict(stages=stage_settings(stages), planner=dict(planner_settings or {}))
    return dict(input=case_input_hash(case_ref), settings=_sha(settings), rtlab_version=rtlab_version())


def mismatch_reason(old, new: Mapping) -> str | None:
    """Why a record with fingerprint ``old`` cannot be reused for ``new`` (None: it can)."""
    if not isinstance(old, Mapping):
        return "the record holds no fingerprint (written by an older rtlab)"
    if old.get("input") != new["input"]:
        return "the case input differs (content hash)"
    if old.get("settings") != new["settings"]:
        return "the plan settings differ"
    if old.get("rtlab_version") != new["rtlab_version"]:
        return f"the record was written by rtlab {old.get('rtlab_version')}, this is {new['rtlab_version']}"
    return None
