"""Stage functions of a batch, as data: :class:`Stages`, plus rtlab's default stages.

A batch runs, per case (seed 001, steps 1-6):

================  ====================================================  ==================
stage             call                                                  seed 001
================  ====================================================  ==================
``load``          ``load(case_ref) -> case``                            step 1 (data in)
``n_beams``       ``n_beams(case) -> int``                              task decomposition
``influence``     ``influence(case, beam_index) -> beam data``          step 3 (per beam)
``optimize``      ``optimize(case, [beam data...]) -> standard plan``   step 3
``convert``       ``convert(case, standard, machine, attempt) -> plan`` step 4 (claims 5-6)
``qa``            ``qa(case, standard, plan, machine) -> dict``         claim 7
================  ====================================================  ==================

``qa`` returns a dict with at least ``"passed"`` (bool); when it is False the master calls
``convert`` again with ``attempt + 1`` (claim 7: "returning to step (4)"), up to
``max_qa_attempts``. ``convert`` must return a dict (ndarray values are saved to the ``.npz``,
the rest to the JSON sidecar). Every function must be importable by the workers (a module-level
function or a ``functools.partial`` of one; not a lambda defined in a notebook cell when the
workers are separate processes, unless cloudpickle can ship it by value).

The defaults call rtlab: ``load`` = :func:`rtlab.phantoms.get_phantom` (a case reference is a
phantom name), ``n_beams`` = the case's suggested beams, ``influence`` =
:func:`rtlab.dose.influence.build_influence` for one beam, ``qa`` = :func:`rtlab.qa.qa_report`
on ``plan["dose"]`` against ``standard["dose"]``. ``optimize`` and ``convert`` are not wired
yet (they wait for the optimiser and the machine-conversion method) and raise
``NotImplementedError`` naming the stage to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Mapping

__all__ = ["Stages", "default_stages", "rtlab_load", "rtlab_n_beams", "rtlab_influence",
           "rtlab_optimize", "rtlab_convert", "rtlab_qa"]


def rtlab_load(case_ref):
    """Default ``load``: a :class:`~rtlab.case.Case` passes through; a string is a phantom name."""
    from ..case import Case

    if isinstance(case_ref, Case):
        return case_ref
    from ..phantoms import get_phantom

    return get_phantom(str(case_ref))


def rtlab_n_beams(case) -> int:
    """Default ``n_beams``: the number of suggested beams of the case (at least 1)."""
    return max(1, len(getattr(case, "beams", []) or []))


def rtlab_influence(case, beam_index: int):
    """Default ``influence``: the influence matrix of one suggested beam (CPU, no progress bar)."""
    from ..dose.influence import build_influence

    beams = case.beams if case.beams else [0.0]
    return build_influence(case, [beams[beam_index]], progress=False, gpu=False)


def rtlab_optimize(case, influences):
    """Default ``optimize``: not wired yet."""
    raise NotImplementedError(
        "the default optimize stage (standard plan from rtlab.optimize) is not wired yet; "
        "pass stages=Stages(optimize=your_function, ...) or stage_fns={'optimize': ...}"
    )


def rtlab_convert(case, standard, machine: str, attempt: int):
    """Default ``convert``: not wired yet (waits for rtlab.methods.conversion)."""
    raise NotImplementedError(
        "the default convert stage (seed 001 machine conversion) is not wired yet; "
        "pass stages=Stages(convert=your_function, ...) or stage_fns={'convert': ...}"
    )


def rtlab_qa(case, standard, plan, machine: str) -> dict:
    """Default ``qa``: :func:`rtlab.qa.qa_report` of ``plan['dose']`` against ``standard['dose']``."""
    from ..qa import qa_report

    return qa_report(standard["dose"], plan["dose"], case).to_dict()


@dataclass(frozen=True)
class Stages:
    """The callables of a batch (see the module docstring for their signatures)."""

    load: Callable = rtlab_load
    n_beams: Callable = rtlab_n_beams
    influence: Callable = rtlab_influence
    optimize: Callable = rtlab_optimize
    convert: Callable = rtlab_convert
    qa: Callable = rtlab_qa

    def __post_init__(self):
        for f in fields(self):
            if not callable(getattr(self, f.name)):
                raise TypeError(f"stage {f.name!r} must be callable, got {getattr(self, f.name)!r}")

    @classmethod
    def coerce(cls, stages) -> "Stages":
        """``None`` -> defaults; a dict -> defaults with those stages replaced; a Stages -> itself."""
        if stages is None:
            return cls()
        if isinstance(stages, Stages):
            return stages
        if isinstance(stages, Mapping):
            names = {f.name for f in fields(cls)}
            unknown = set(stages) - names
            if unknown:
                raise ValueError(f"unknown stage name(s) {sorted(unknown)}; stages are {sorted(names)}")
            return replace(cls(), **dict(stages))
        raise TypeError(f"stages must be None, a dict of stage callables or a Stages, got {type(stages).__name__}")


def default_stages() -> Stages:
    """rtlab's default stages (see the module docstring for which are wired)."""
    return Stages()
