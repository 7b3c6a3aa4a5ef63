"""rtlab's numba photon dose engine (SVD pencil beam, Bortfeld et al. 1993) and the point kernel.

See ``docs/dose_engine.md``. Public API:

* :class:`Machine`, :func:`generic_6mv`, :func:`load_matrad_machine` -- beam model;
* :func:`resolve_machine`, :func:`list_dose_machines` -- a beam model by built-in name or matRad file;
* :func:`radiological_depth`, :func:`fan_depth` -- Siddon ray tracing;
* :func:`build_influence` -> :class:`InfluenceMatrix` -- beamlet dose matrix (float32 CSR);
* :class:`PlanOperator` -- weights to the dose an objective sees (CT-grid rows + dose-grid rows);
* :class:`FluenceDose` -- fluence-map dose with patch-local updates (paper 004);
* :class:`PointKernelDose` -- Gamma-Knife point kernel with analytic gradients (patent 002);
* :class:`DoseEngine` -- the one interface of all of them (``dose(x)``, ``vjp(x, g)``);
* :class:`Plan` -- a case, beams and weights with its cached dose;
* :func:`mu_per_unit_fluence`, :func:`beam_mu` -- MU calibration;
* :func:`engine_summary` -- sizes and timings for the CLI.

Nothing here knows about optimisation. Submodules with optional dependencies (``gpu``) load them
on first use.
"""

from .catalog import BUILTIN_MACHINES, list_dose_machines, resolve_machine
from .engine import DoseEngine, PatchDoseEngine
from .fluence import FluenceDose
from .influence import DEFAULT_CUTOFF_MM, InfluenceMatrix, build_influence
from .machine import Machine, depth_components, generic_6mv, load_matrad_machine
from .mu import beam_mu, fluence_to_mu, mu_per_unit_fluence, reference_dose
from .operator import PlanOperator
from .plan import Plan
from .pointkernel import PointKernelDose
from .raytrace import fan_depth, radiological_depth
from .summary import engine_summary
from .voxels import resolve_dose_grid

__all__ = [
    "Machine", "generic_6mv", "load_matrad_machine", "depth_components",
    "resolve_machine", "list_dose_machines", "BUILTIN_MACHINES",
    "radiological_depth", "fan_depth",
    "InfluenceMatrix", "build_influence", "DEFAULT_CUTOFF_MM", "resolve_dose_grid",
    "PlanOperator", "FluenceDose", "PointKernelDose", "DoseEngine", "PatchDoseEngine",
    "Plan",
    "mu_per_unit_fluence", "beam_mu", "fluence_to_mu", "reference_dose",
    "engine_summary",
]
