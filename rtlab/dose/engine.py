"""One interface for rtlab's dose engines: ``dose(x)``, ``vjp(x, g)``, patch updates where supported.

rtlab has four ways to get a dose, and they answer the same two questions:

``dose(x)``
    The dose (Gy, float64) of the engine's parameters ``x``.
``vjp(x, g)``
    The vector-Jacobian product ``J(x)^T g``: the gradient of ``sum(g * dose(x))`` with respect
    to ``x`` (same structure as ``x``), which is what an optimiser needs for the chain rule
    ``dL/dx = J^T dL/dD``. ``g`` has the shape of ``dose(x)``.

========================================  ====================================  =====================================
engine                                    ``x``                                 ``dose(x)``
========================================  ====================================  =====================================
:class:`~rtlab.dose.influence.InfluenceMatrix`  beamlet weights (bixels, all beams)    cube on the CT grid (``on='ct'``) or
                                                                                the dose grid (``on='dose'``)
:class:`~rtlab.dose.operator.PlanOperator`  beamlet weights                       the rows an objective sees (``E x``)
:class:`~rtlab.dose.fluence.FluenceDose`  beamlet weights (or None: current maps)  cube on the CT grid / dose grid
:class:`~rtlab.dose.pointkernel.PointKernelDose`  ``(shots (S, 3) mm, times (S, 8, 3) min)``  dose at the engine's points
========================================  ====================================  =====================================

The first three are linear in ``x`` (``vjp`` ignores ``x``); the point kernel is not (shot
positions move the kernels). :class:`~rtlab.dose.fluence.FluenceDose` also supports *patch
updates* (:class:`PatchDoseEngine`): ``patch_update_many([(beam, row, col, delta), ...])``
changes fluence pixels and updates the dose locally (paper 004), which is what interactive dose
shaping (:mod:`rtlab.methods.ids`) runs on.

The protocols are ``typing.Protocol`` classes: any object with these methods is an engine
(``isinstance(obj, DoseEngine)`` checks the methods' presence).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["DoseEngine", "PatchDoseEngine"]


@runtime_checkable
class DoseEngine(Protocol):
    """``dose(x)`` and ``vjp(x, g)`` (see the module docstring)."""

    def dose(self, x):
        """Dose (Gy) of the parameters ``x``."""

    def vjp(self, x, g):
        """``J(x)^T g``, the gradient of ``sum(g * dose(x))`` with respect to ``x``."""


@runtime_checkable
class PatchDoseEngine(DoseEngine, Protocol):
    """A :class:`DoseEngine` whose fluence can be changed patch by patch with local dose updates."""

    def patch_update_many(self, patches):
        """Add fluence patches ``(beam_index, row, col, delta)`` and update the dose; returns the dose vector."""
