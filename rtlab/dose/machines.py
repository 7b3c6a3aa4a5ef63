"""Moved to :mod:`rtlab.methods.conversion` (the machine registry and the coincidence check of
patent 001 are part of plan conversion, not of the dose engine). This module re-exports them for
one release (removed in 0.3).
"""

from ..methods.conversion.coincidence import (CoincidenceReport, CoincidenceThresholds, DoseCurves, ParameterCheck,
                                              compare_machines, curve_gamma, dose_curves)
from ..methods.conversion.machines import (STANDARD_MACHINE, TreatmentMachine, get_machine, list_machines,
                                           make_source, register_machine)

_curve_gamma = curve_gamma  # the old private name, used by older tests

__all__ = ["TreatmentMachine", "make_source", "get_machine", "list_machines", "register_machine", "STANDARD_MACHINE",
           "DoseCurves", "dose_curves", "CoincidenceThresholds", "ParameterCheck", "CoincidenceReport",
           "compare_machines"]
