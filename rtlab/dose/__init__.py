"""rtlab's numba photon dose engine (SVD pencil beam, Bortfeld et al. 1993).

See ``docs/dose_engine.md``. Public API:

* :class:`Machine`, :func:`generic_6mv`, :func:`load_matrad_machine` — beam model;
* :func:`radiological_depth`, :func:`fan_depth` — Siddon ray tracing;
* :func:`build_influence` -> :class:`InfluenceMatrix` — beamlet dose matrix (float32 CSR);
* :class:`FluenceDose` — fluence-map dose with patch-local updates (seed 004);
* :func:`mu_per_unit_fluence`, :func:`beam_mu` — MU calibration;
* :func:`engine_summary` — sizes and timings for the CLI.
"""

from .machine import Machine, generic_6mv, load_matrad_machine, depth_components
from .raytrace import radiological_depth, fan_depth
from .influence import InfluenceMatrix, build_influence, DEFAULT_CUTOFF_MM
from .fluence import FluenceDose
from .mu import mu_per_unit_fluence, beam_mu, fluence_to_mu, reference_dose
from .summary import engine_summary

__all__ = [
    "Machine", "generic_6mv", "load_matrad_machine", "depth_components",
    "radiological_depth", "fan_depth",
    "InfluenceMatrix", "build_influence", "DEFAULT_CUTOFF_MM",
    "FluenceDose",
    "mu_per_unit_fluence", "beam_mu", "fluence_to_mu", "reference_dose",
    "engine_summary",
]
