"""Dose-region prediction model (patent 000, US 12,383,763 B2, paragraphs 124-153, FIGs 8-10,
claims 7-8).

The patent trains a deep network (a 3D U-Net, para. 131/148) that maps a *target image* (CT plus
target delineation) to a *predicted image* of the dose region -- the volume enclosed by the
reference isodose of an optimised plan (para. 130) -- from 200 historical optimised plans split
150/25/25 into training, verification and test sets (para. 144). The prediction then seeds the
conformity optimisation of section A (para. 134-136, claim 7).

This package provides the whole loop on synthetic data (modules :mod:`~.cases`, :mod:`~.planner`,
:mod:`~.data`, :mod:`~.net`, :mod:`~.train`, :mod:`~.metrics`):

1. **Cases** -- :func:`random_case`: reproducible random phantoms (a water cylinder, sometimes a
   lung- or bone-like insert, a target made of 1-3 overlapping ellipsoids, an organ at risk
   placed next to it), one per integer seed.
2. **Planners** -- the "historical plans": :class:`ConformityPlanner` optimises beamlet weights
   with rtlab's dose engine and the conformity objective (:mod:`rtlab.methods.conformity`,
   eqs 3, 8); :class:`GaussianStandInPlanner` is a fast physics-flavoured stand-in for tests
   and quick experiments (see its docstring for exactly what it computes). Any callable
   ``planner(case) -> PlanOutcome`` can be plugged in.
3. **Data sets** -- :func:`generate_dataset` writes one compressed, byte-reproducible ``.npz``
   per case (int16 CT, bit-packed masks and region, dose in cGy as uint16) plus a
   ``manifest.json`` (seeds, case parameters, planner, reference level, CI, split);
   :func:`load_dataset` reads it back.
4. **Model** -- a small 3D U-Net in PyTorch (:func:`build_unet`), trained with BCE + soft Dice
   loss (:func:`train_region_model`), wrapped by :class:`RegionModel` (predict, save, load).
   PyTorch is bound through :func:`rtlab._lazy.load`: the package imports without it.
5. **Metrics** -- :func:`dice`, :func:`surface_distances` (average symmetric and 95th
   percentile Hausdorff distance in mm, anisotropic spacing), :func:`evaluate_model`.
6. **Use** -- :func:`warm_start_weights` turns a predicted region into initial beamlet weights
   (projected-gradient least squares of ``A x ~ d_ref * region``); :func:`compare_warm_start`
   runs the conformity optimisation from a uniform and from the predicted start.

See ``docs/methods/region_model.md``.
"""

from .cases import HU_BONE_INSERT, HU_LUNG, case_masks, random_case
from .data import RegionDataset, generate_dataset, load_case_file, load_dataset, make_inputs, split_counts
from .net import RegionModel, build_unet
from .planner import (ConformityPlanner, GaussianStandInPlanner, PlanOutcome, compare_warm_start, get_planner,
                      warm_start_weights)
from .metrics import dice, surface_distances, surface_voxels
from .train import TrainConfig, evaluate_model, train_region_model

__all__ = [
    "random_case", "case_masks", "PlanOutcome", "GaussianStandInPlanner", "ConformityPlanner", "get_planner",
    "generate_dataset", "load_dataset", "load_case_file", "RegionDataset", "make_inputs", "split_counts",
    "dice", "surface_distances", "surface_voxels", "build_unet", "RegionModel", "TrainConfig",
    "train_region_model", "evaluate_model", "warm_start_weights", "compare_warm_start", "HU_LUNG",
    "HU_BONE_INSERT",
]
