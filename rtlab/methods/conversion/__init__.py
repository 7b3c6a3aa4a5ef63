"""Conversion of a standard plan to specific machines, with QA and regeneration (patent 001).

* :mod:`~rtlab.methods.conversion.machines` -- treatment machines (source + MLC), the registry;
* :mod:`~rtlab.methods.conversion.coincidence` -- do two machines coincide (claims 10-12)?
* :mod:`~rtlab.methods.conversion.objective` -- the standard plan's isodose lines and DVH points
  as penalty terms, and their tightening;
* :mod:`~rtlab.methods.conversion.convert` -- :func:`convert_plan`, :func:`convert_to_machines`.

Patent 001 computes one **standard plan** on a standard machine model (step 3) and converts it
to the **specific machine** that will treat (step 4, claims 5, 6, 10-13), then verifies the
converted plan before treatment and regenerates it from the standard plan when the check fails
(claim 7). :func:`convert_plan` implements step 4 and the QA loop for one machine,
:func:`convert_to_machines` for several (claim 13: "one or more specific radiotherapy plans").

Steps of :func:`convert_plan`
-----------------------------
0. **Coincidence** (claim 10): :func:`~rtlab.methods.conversion.coincidence.compare_machines` compares the MLCs
   and the sources' water dose curves. If they coincide the standard plan is returned as is
   (``method='as_is'``, no QA needed: the plan and dose are unchanged).
1. **Resampling to the target MLC** ("based on field parameters of the standard plan", claim 5).
   The beams (gantry, couch, isocentre, bixel grid) are kept. Each beam's fluence map (rows =
   BEV v, across the leaves) is resampled onto the target MLC's leaf pairs with
   :func:`rtlab.methods.sequencing.fluence_to_leaf_rows` (area-weighted mean over each leaf;
   ``leaf_alignment='isocentre'``: the MLC's own geometry, the central axis on a leaf boundary
   for an even number of pairs; ``'grid'``: a leaf boundary on the first bixel edge). From here
   on the plan's variables are the **leaf-row fluences** ``y`` (one per leaf pair and bixel
   column); a bixel's weight is the overlap-weighted mean of the leaf rows over it,
   ``x = P y`` (:func:`rtlab.methods.sequencing.leaf_rows_to_fluence`), so every plan the
   optimiser can reach has the target leaf width's resolution across the leaves. A field wider
   than the target MLC's pairs or maximum field raises ``ValueError``.
2. **Dose recalculation** (claim 6, "dose computation") on the target source: the influence
   matrix ``A_t`` is rebuilt with the target :class:`rtlab.dose.Machine` on the same voxels and
   dose grid, and ``A_t P y_0`` (``y_0`` the resampled standard fluence) is the recalculated
   dose; it is QA-checked and reported (``recalc_qa``). ``method='recalc'`` stops here.
3. **Re-optimisation** (claim 6, "reverse optimisation", fluence-map variant) of ``y >= 0`` on
   ``A_t P`` from ``y_0`` (L-BFGS-B, :mod:`rtlab.optimize`), with the standard plan's **DVH
   points and isodose lines as constraints** (claim 5), as quadratic penalties
   (:func:`conversion_objective`):

   * isodose lines: for each level ``L`` (default 95 % and 50 % of the prescription), voxels
     inside the standard plan's ``L`` region keep ``d >= L Rx`` (:class:`SquaredUnderdose`) and
     voxels outside it keep ``d <= L Rx`` (:class:`SquaredOverdose`), so the line stays where
     it was;
   * DVH points of the standard plan: per target ``D95`` (:class:`DVHMin`) and ``D2``
     (:class:`DVHMax`); per organ at risk ``D10`` (:class:`DVHMax`) and ``Dmean``
     (:class:`MeanDose` limit).

   ``method='dao'`` adds a simple **direct-aperture** stage (claim 6, "direct subfield
   optimisation"): each beam's optimised leaf-row map is sequenced into step-and-shoot
   apertures on the target MLC (:func:`rtlab.methods.sequencing.step_and_shoot`, ``'sweep'``,
   honouring interdigitation), then the aperture (segment) weights are re-optimised with the same
   objective (shapes fixed), so the result is exactly deliverable by those apertures.
4. **QA** (claim 7): :func:`rtlab.evaluate.qa.qa_report` against the standard dose (gamma 3 %/3 mm >= 95 %
   and 2 %/2 mm >= 90 % by default, and |DVH difference| of D95 / D50 / D2 / Dmean of every
   structure <= 3 % of the prescription). On failure the plan is **regenerated with tightened
   constraints** (at most ``max_attempts`` optimisations, warm-started): a failed gamma
   multiplies the isodose terms' weights by ``tighten`` and adds (then tightens) a voxel-wise
   fidelity term to the standard dose (:class:`DoseFidelity`, the limit of many isodose lines);
   a failed DVH metric adds a term pinning that metric at the standard plan's value (from the
   side it failed on) or tightens it if present. The result keeps the best attempt (the passing
   one, else the one with the fewest failures and the highest 3 %/3 mm rate); ``reasons`` lists
   the final QA's reasons and the attempt history.
"""

from .coincidence import (CoincidenceReport, CoincidenceThresholds, DoseCurves, ParameterCheck, compare_machines,
                          curve_gamma, dose_curves)
from .convert import METHODS, ConversionResult, convert_plan, convert_to_machines, leaf_row_parameterisation
from .machines import STANDARD_MACHINE, TreatmentMachine, get_machine, list_machines, make_source, register_machine
from .objective import DoseFidelity, MeanDoseMin, conversion_objective, rows_of_structures, tighten_objective

__all__ = [
    "ConversionResult", "DoseFidelity", "MeanDoseMin", "conversion_objective", "tighten_objective",
    "rows_of_structures", "leaf_row_parameterisation", "convert_plan", "convert_to_machines", "METHODS",
    "TreatmentMachine", "make_source", "get_machine", "list_machines", "register_machine", "STANDARD_MACHINE",
    "DoseCurves", "dose_curves", "CoincidenceThresholds", "ParameterCheck", "CoincidenceReport", "compare_machines",
    "curve_gamma",
]
