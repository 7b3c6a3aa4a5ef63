"""Dose-falloff expansion of lower-dose targets (patent 000, US 12,383,763 B2; paragraphs
106-123, eqs 16-17, claims 4-5 and 15-16).

Targets are sorted by target dose, high to low: ``T1 (D1) > T2 (D2) > ... > Tm (Dm)``. For
``j = 2..m``:

* dose difference ``D_diff = D_{j-1} - D_j`` (eq 16);
* falling distance ``L = D_diff / G`` (eq 17) with the dose falloff gradient ``G`` (the patent
  gives 100 or 200 cGy/mm, i.e. 1 or 2 Gy/mm);
* extension region: the shell of thickness ``L`` (mm, Euclidean with the grid's anisotropic
  spacing, via :func:`rtlab.core.geometry.signed_distance`) outside the higher-dose region;
* adjusted ``T_j = (T_j U extension) minus the higher-dose regions`` (para. 118 combines them;
  what lies inside a higher-dose target belongs to that target).

Worked example (para. 122): nasopharynx, 6000 cGy and 5400 cGy, ``G = 200 cGy/mm`` gives a
3 mm extension of the 5400 cGy target around the 6000 cGy target.

The same rule makes the automatic low-dose region around a single target (para. 80, claim 5,
e.g. the 80 % region) in place of a hand-drawn ring: a level with no delineated target whose
region is the shell of thickness ``(D - D_low) / G``.

Each level then gets its own conformity term at its own dose (para. 120,
:func:`falloff_conformity_terms`). Design choice of rtlab: the conformity domain of level
``j`` excludes the higher-dose regions, so that the dose region ``V_RI`` at ``D_j`` counts only
voxels outside them (otherwise the higher-dose target, necessarily above ``D_j``, would cap
``F_j``).

"Higher-dose region" of level ``j`` (``mode``): ``'union'`` (default) the union of all adjusted
higher levels, so the ``D_j`` shell grows around where the dose is meant to be ``>= D_{j-1}`` and
distances add up across levels (around ``T1`` the ``D_3`` isodose sits at ``(D1 - D3)/G``);
``'previous'`` the original ``T_{j-1}`` only (the literal reading of claim 15).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._util import check_positive
from ..core.geometry import Structure, StructureSet, signed_distance
from ..optimize.terms import rows_for
from .conformity import ConformityTerm

__all__ = [
    "falling_distance",
    "extension_region",
    "FalloffLevel",
    "adjust_targets",
    "low_dose_region",
    "conformity_pairs",
    "falloff_conformity_terms",
]


def falling_distance(d_high: float, d_low: float, gradient: float) -> float:
    """Falling distance ``L = (D_{j-1} - D_j) / G`` (patent 000, eqs 16-17), in mm.

    Parameters
    ----------
    d_high, d_low : float
        Higher and lower target dose (Gy, or cGy -- any unit, consistent with ``gradient``).
    gradient : float
        Dose falloff gradient ``G`` per mm (Gy/mm if doses are in Gy; e.g. 2 Gy/mm = 200 cGy/mm).

    Examples
    --------
    >>> falling_distance(6000, 5400, 200)   # cGy, cGy/mm (patent 000, para. 122)
    3.0
    """
    d_high, d_low = float(d_high), float(d_low)
    if not (np.isfinite(d_high) and np.isfinite(d_low)) or d_low < 0:
        raise ValueError(f"doses must be finite and >= 0, got d_high={d_high!r}, d_low={d_low!r}")
    if d_high < d_low:
        raise ValueError(f"d_high ({d_high:g}) must be >= d_low ({d_low:g}); sort the targets by dose, high to low")
    (g,) = check_positive("gradient (dose falloff per mm)", gradient)
    return (d_high - d_low) / g


def extension_region(mask, distance_mm: float, spacing, within=None) -> np.ndarray:
    """Shell of voxels outside ``mask`` within ``distance_mm`` of it (patent 000, para. 117).

    A voxel belongs to the shell when its centre lies at a Euclidean distance ``0 < r <= L``
    (mm, anisotropic ``spacing``) from the nearest voxel centre of ``mask``
    (:func:`rtlab.core.geometry.signed_distance`).

    Parameters
    ----------
    mask : ndarray of bool
        The higher-dose region.
    distance_mm : float
        Falling distance ``L`` in mm (0 gives an empty shell).
    spacing : sequence of float
        Voxel size per axis in mm.
    within : ndarray of bool, optional
        Clip the shell to this region (e.g. the body).
    """
    m = np.asarray(mask, bool)
    L = float(distance_mm)
    if not np.isfinite(L) or L < 0:
        raise ValueError(f"distance_mm must be finite and >= 0, got {distance_mm!r}")
    if within is not None:
        within = np.asarray(within, bool)
        if within.shape != m.shape:
            raise ValueError(f"within has shape {within.shape}, mask {m.shape}; they must match")
    if L == 0 or not m.any() or m.all():
        shell = np.zeros_like(m)
    else:
        sd = signed_distance(m, spacing)
        shell = (sd > 0) & (sd <= L * (1 + 1e-9) + 1e-9)
    if within is not None:
        shell &= within
    return shell


@dataclass
class FalloffLevel:
    """One dose level after the falloff adjustment.

    Attributes
    ----------
    name : str
    dose : float
        Target dose of the level (Gy).
    region : ndarray of bool
        Adjusted target: ``(original | extension) & ~exclude`` (& body).
    original : ndarray of bool
        The delineated target (all False for an automatic low-dose level).
    extension : ndarray of bool
        The shell added by eqs 16-17.
    exclude : ndarray of bool
        Higher-dose regions (excluded from ``region`` and from the conformity domain).
    distance_mm : float
        Falling distance ``L`` used (0 for the highest level).
    """

    name: str
    dose: float
    region: np.ndarray
    original: np.ndarray
    extension: np.ndarray
    exclude: np.ndarray
    distance_mm: float = 0.0

    def __repr__(self) -> str:
        return (f"FalloffLevel({self.name!r}, dose={self.dose:g} Gy, L={self.distance_mm:g} mm, "
                f"voxels={int(self.region.sum())}, extension={int(self.extension.sum())})")


def _normalise_targets(targets, spacing):
    if isinstance(targets, StructureSet):
        spacing = targets.grid.spacing if spacing is None else spacing
        items = [(s.name, s.mask, s.prescription) for s in targets.targets]
        missing = [n for n, _, d in items if d is None]
        if missing:
            raise ValueError(f"targets {missing} have no prescription; set Structure.prescription (Gy)")
    else:
        items = []
        for i, t in enumerate(targets):
            if isinstance(t, Structure):
                if t.prescription is None:
                    raise ValueError(f"target {t.name!r} has no prescription (Gy)")
                spacing = t.grid.spacing if spacing is None else spacing
                items.append((t.name, t.mask, t.prescription))
            else:
                t = tuple(t)
                if len(t) != 3:
                    raise ValueError(f"targets[{i}] must be (name, mask, dose_Gy), got {len(t)} items")
                items.append((str(t[0]), np.asarray(t[1], bool), float(t[2])))
    if not items:
        raise ValueError("no targets given (a StructureSet needs structures of kind 'target' with a prescription)")
    if spacing is None:
        raise ValueError("spacing (mm per axis) is needed when targets are given as plain masks")
    shape = np.shape(items[0][1])
    for n, m, d in items:
        if np.shape(m) != shape:
            raise ValueError(f"mask of target {n!r} has shape {np.shape(m)}, expected {shape}")
        if not np.asarray(m, bool).any():
            raise ValueError(f"target {n!r} is empty")
        if not (np.isfinite(d) and d > 0):
            raise ValueError(f"dose of target {n!r} must be positive (Gy), got {d!r}")
    items.sort(key=lambda it: -it[2])
    return items, tuple(float(s) for s in spacing)


def adjust_targets(targets, gradient: float = 2.0, spacing=None, body=None, *,
                   low_dose: Sequence[float] | float | None = None, mode: str = "union") -> list[FalloffLevel]:
    """Falloff-adjusted dose levels for nested or neighbouring targets (patent 000, eqs 16-17).

    Parameters
    ----------
    targets : StructureSet or sequence
        A StructureSet (its targets with prescriptions), Structures, or ``(name, mask, dose_Gy)``
        tuples; sorted high to low internally.
    gradient : float
        Dose falloff ``G`` in Gy/mm (default 2 Gy/mm = 200 cGy/mm).
    spacing : sequence of float, optional
        Voxel size in mm (taken from the grid for Structures).
    body : ndarray of bool or Structure, optional
        Extensions are clipped to the body.
    low_dose : float or sequence of float, optional
        Automatic low-dose levels below the lowest target, as fractions (< 1) of the lowest
        target dose (e.g. ``0.8`` for the 80 % region) -- para. 80.
    mode : {'union', 'previous'}
        Region the extension of level j grows from (see module docstring).

    Returns
    -------
    list of FalloffLevel
        Highest dose first.
    """
    if mode not in ("union", "previous"):
        raise ValueError(f"mode must be 'union' or 'previous', got {mode!r}")
    items, sp = _normalise_targets(targets, spacing)
    (G,) = check_positive("gradient (Gy/mm)", gradient)
    shape = np.shape(items[0][1])
    if body is not None:
        body = np.asarray(getattr(body, "mask", body), bool)
        if body.shape != shape:
            raise ValueError(f"body has shape {body.shape}, targets {shape}; they must match")
    fr = [] if low_dose is None else [float(f) for f in np.atleast_1d(low_dose)]
    for f in fr:
        if not 0 < f < 1:
            raise ValueError(f"low_dose fractions must be in (0, 1), e.g. 0.8, got {f!r}")
    d_low = items[-1][2]
    for f in sorted(fr, reverse=True):
        items.append((f"low_dose_{round(100 * f):d}%", np.zeros(shape, bool), f * d_low))

    levels: list[FalloffLevel] = []
    higher = np.zeros(shape, bool)
    for j, (name, mask, dose) in enumerate(items):
        mask = np.asarray(mask, bool)
        if j == 0:
            region = mask.copy()
            ext = np.zeros(shape, bool)
            L = 0.0
        else:
            prev_name, prev_mask, prev_dose = items[j - 1]
            L = falling_distance(prev_dose, dose, G)
            seed = higher if mode == "union" else np.asarray(prev_mask, bool)
            if not seed.any():  # 'previous' with an automatic level above: fall back to the union
                seed = higher
            ext = extension_region(seed, L, sp, within=body) & ~higher
            region = (mask | ext) & ~higher
        if body is not None and j > 0:
            region &= body | mask
        levels.append(FalloffLevel(name, float(dose), region, mask.copy(), ext, higher.copy(), L))
        higher = higher | region | mask
    return levels


def low_dose_region(target_mask, target_dose: float, low_dose: float, gradient: float = 2.0,
                    spacing=(1.0, 1.0, 1.0), body=None, name: str | None = None) -> FalloffLevel:
    """Automatic low-dose ring around a single target (patent 000, para. 80, claim 5).

    The ring is the shell of thickness ``L = (target_dose - low_dose) / gradient`` mm outside
    the target; it replaces a hand-drawn ring and gets a conformity term at ``low_dose``.

    Parameters
    ----------
    target_mask : ndarray of bool or Structure
    target_dose, low_dose : float
        Gy; ``low_dose < target_dose``.
    gradient : float
        Gy/mm.
    spacing : sequence of float
        mm (taken from a Structure's grid when one is given).
    """
    if isinstance(target_mask, Structure):
        spacing = target_mask.grid.spacing
        target_mask = target_mask.mask
    m = np.asarray(target_mask, bool)
    if not m.any():
        raise ValueError("target_mask is empty")
    if not float(low_dose) < float(target_dose):
        raise ValueError(f"low_dose ({low_dose!r}) must be below target_dose ({target_dose!r})")
    L = falling_distance(target_dose, low_dose, gradient)
    b = None if body is None else np.asarray(getattr(body, "mask", body), bool)
    ring = extension_region(m, L, spacing, within=b)
    nm = name or f"low_dose_{float(low_dose):g}Gy"
    return FalloffLevel(nm, float(low_dose), ring, np.zeros_like(m), ring.copy(), m.copy(), L)


def conformity_pairs(levels: Sequence[FalloffLevel]) -> list[tuple[np.ndarray, float]]:
    """The ``(region mask, dose level in Gy)`` pairs that get their own conformity terms."""
    return [(lv.region, lv.dose) for lv in levels]


def falloff_conformity_terms(levels: Sequence[FalloffLevel], voxel_index=None, body=None, *,
                             weight: float | Sequence[float] = 1.0, steepness: float = 50.0,
                             missing: str = "ignore", **kwargs):
    """One conformity term per falloff level, each at its own dose (patent 000, para. 120).

    The domain of level ``j`` is ``body`` (default: the whole dose grid) minus the higher-dose
    regions of that level (``FalloffLevel.exclude``).

    Parameters
    ----------
    levels : sequence of FalloffLevel
        From :func:`adjust_targets` or :func:`low_dose_region`.
    voxel_index : ndarray of int, optional
        Flat grid index of each row of ``A`` (``None``: one row per grid voxel).
    body : ndarray of bool or Structure, optional
        Optimisation domain.
    weight : float or sequence
        Weight of each term (eq 6's ``w_I``).
    steepness : float
        Sigmoid steepness (see :class:`rtlab.methods.conformity.ConformityTerm`).
    missing : str
        How domain voxels without rows in ``A`` are handled (see :func:`rtlab.optimize.rows_for`).
    **kwargs
        More :class:`ConformityTerm` options (``w1``, ``w2``, ``C``...).

    Returns
    -------
    list of ConformityTerm
        Named ``"conformity:<level name>"``.
    """

    levels = list(levels)
    if not levels:
        raise ValueError("levels is empty")
    ws = np.broadcast_to(np.asarray(weight, float), (len(levels),))
    shape = levels[0].region.shape
    b = np.ones(shape, bool) if body is None else np.asarray(getattr(body, "mask", body), bool)
    if b.shape != shape:
        raise ValueError(f"body has shape {b.shape}, levels {shape}; they must match")
    terms = []
    for lv, w in zip(levels, ws):
        if not lv.region.any():
            raise ValueError(f"level {lv.name!r} has an empty region; drop it or lower the falloff gradient")
        t_rows = rows_for(lv.region, voxel_index, missing="raise")
        dom_mask = (b & ~lv.exclude) | lv.region
        d_rows = rows_for(dom_mask, voxel_index, missing=missing)
        terms.append(ConformityTerm(t_rows, lv.dose, d_rows, float(w), steepness=steepness,
                                    name=f"conformity:{lv.name}", **kwargs))
    return terms
