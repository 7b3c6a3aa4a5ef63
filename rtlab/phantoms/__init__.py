"""Phantom generators: the AAPM TG-119 set, the paper-004 horseshoe, spheres/ellipsoids, a head.

Every generator returns an :class:`rtlab.core.case.Case`: CT in HU (air -1000 outside the body,
water-equivalent body 0 HU, bone 1000 HU where stated), structures as voxel-centre-inclusion
masks (targets ``kind='target'`` with their prescription, organs ``'oar'``, the body
``'body'``), planning goals as :class:`rtlab.core.case.Goal` data and suggested beams as
:class:`rtlab.core.case.BeamSpec` (equispaced coplanar, isocentre at the targets' centroid).
Any voxel size works: ``spacing`` is one number (isotropic, mm) or ``(dz, dy, dx)`` mm.
Where a phantom's geometry is ours rather than its source's, the generator's docstring,
``Case.meta['approximations']`` and ``docs/phantoms.md`` say so.

Examples
--------
>>> from rtlab.phantoms import get_phantom, list_phantoms
>>> "tg119_cshape_easy" in list_phantoms()
True
>>> case = get_phantom("sphere", spacing=4.0, radius=20.0)
>>> case.structures["PTV"].kind, case.prescription
('target', 60.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.case import Case
from ._shapes import (
    distance_to_ellipsoid,
    equispaced_beams,
    offset_ellipsoid_mask,
    parse_spacing,
    phantom_grid,
)
from .basic import (
    HEAD_OUTER_RADII,
    HEAD_SPACING,
    HORSESHOE_BODY_HALF,
    HORSESHOE_SPACING,
    SIMPLE_SPACING,
    ellipsoid,
    ellipsoid_body_half,
    head,
    horseshoe,
    sphere,
)
from .tg119 import (
    CSHAPE_BODY_HALF,
    HEADNECK_BODY_HALF,
    MULTITARGET_BODY_HALF,
    PROSTATE_BODY_HALF,
    TG119_SPACING,
    tg119_cshape,
    tg119_headneck,
    tg119_multitarget,
    tg119_prostate,
)

__all__ = [
    "list_phantoms",
    "get_phantom",
    "describe_phantoms",
    "phantom_grid_of",
    "tg119_cshape",
    "tg119_multitarget",
    "tg119_prostate",
    "tg119_headneck",
    "horseshoe",
    "sphere",
    "ellipsoid",
    "head",
    "parse_spacing",
    "phantom_grid",
    "distance_to_ellipsoid",
    "offset_ellipsoid_mask",
    "equispaced_beams",
]


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Case]
    default_spacing: tuple[float, float, float]
    prescription: float
    description: str
    half_extent: Callable[..., tuple]  # (**kwargs) -> body half-extent (hz, hy, hx) mm
    structures: tuple[str, ...]
    n_beams: int


def _const(h):
    return lambda **kw: h


_REGISTRY: dict[str, _Entry] = {
    "tg119_cshape_easy": _Entry(
        lambda spacing=None, **kw: tg119_cshape("easy", spacing, **kw), TG119_SPACING, 50.0,
        "TG-119 C-shape, easy. C-shaped PTV (r 15-37 mm, 80 mm long) around a 10 mm core; core D10 <= 25 Gy",
        _const(CSHAPE_BODY_HALF), ("Body", "PTV", "Core"), 9,
    ),
    "tg119_cshape_hard": _Entry(
        lambda spacing=None, **kw: tg119_cshape("hard", spacing, **kw), TG119_SPACING, 50.0,
        "TG-119 C-shape, hard. As easy, with core D10 <= 10 Gy",
        _const(CSHAPE_BODY_HALF), ("Body", "PTV", "Core"), 9,
    ),
    "tg119_multitarget": _Entry(
        tg119_multitarget, TG119_SPACING, 50.0,
        "TG-119 multitarget. Three stacked 40 x 40 mm cylinders at 50 / 25 / 12.5 Gy",
        _const(MULTITARGET_BODY_HALF), ("Body", "CenterTarget", "SuperiorTarget", "InferiorTarget"), 7,
    ),
    "tg119_prostate": _Entry(
        tg119_prostate, TG119_SPACING, 75.6,
        "TG-119 mock prostate. Ellipsoidal CTV, PTV = CTV + 6 mm, rectum, bladder; 75.6 Gy",
        _const(PROSTATE_BODY_HALF), ("Body", "PTV", "CTV", "Rectum", "Bladder"), 7,
    ),
    "tg119_headneck": _Entry(
        tg119_headneck, TG119_SPACING, 50.0,
        "TG-119 mock head & neck. Horseshoe PTV around the cord, two parotids; 50 Gy",
        _const(HEADNECK_BODY_HALF), ("Body", "PTV", "Cord", "Parotid_L", "Parotid_R"), 9,
    ),
    "horseshoe": _Entry(
        horseshoe, HORSESHOE_SPACING, 60.0,
        "Interactive-dose-shaping horseshoe (paper 004). 120 mm C-shaped target around a spherical OAR",
        _const(HORSESHOE_BODY_HALF), ("Body", "PTV", "OAR"), 9,
    ),
    "sphere": _Entry(
        sphere, SIMPLE_SPACING, 60.0,
        "Sphere. Spherical target (default r 30 mm) in a water cylinder, optional OAR",
        lambda radius=30.0, oar_radius=None, oar_gap=5.0, body_margin=40.0, **kw: ellipsoid_body_half(
            radius, oar_radius, oar_gap, body_margin),
        ("Body", "PTV"), 7,
    ),
    "ellipsoid": _Entry(
        ellipsoid, SIMPLE_SPACING, 60.0,
        "Ellipsoid. Ellipsoidal target (default semi-axes 30, 20, 40 mm) in a water cylinder, optional OAR",
        lambda radii=(30.0, 20.0, 40.0), oar_radius=None, oar_gap=5.0, body_margin=40.0, **kw: ellipsoid_body_half(
            radii, oar_radius, oar_gap, body_margin),
        ("Body", "PTV"), 7,
    ),
    "head": _Entry(
        head, HEAD_SPACING, 20.0,
        "Head (Gamma-Knife style). Ellipsoidal head with 6.5 mm bone skull, 15 mm target next to the brainstem",
        _const(HEAD_OUTER_RADII), ("Body", "Target", "Brainstem"), 9,
    ),
}


def list_phantoms() -> list[str]:
    """Names of the built-in phantoms, for :func:`get_phantom`."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(f"phantom name must be a string, got {type(name).__name__}; valid names: {list_phantoms()}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown phantom {name!r}; valid names: {', '.join(list_phantoms())}") from None


def get_phantom(name: str, spacing=None, **kwargs) -> Case:
    """Build a phantom by name.

    Parameters
    ----------
    name : str
        One of :func:`list_phantoms`.
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm (one number: isotropic); default: the phantom's own (see
        :func:`describe_phantoms`).
    **kwargs
        Passed to the generator (e.g. ``radius=`` for ``"sphere"``, ``n_beams=``,
        ``target='irregular'`` for ``"head"``).

    Returns
    -------
    Case

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones), non-positive spacing, or a structure
        that holds no voxel centre at this spacing.
    """
    return _entry(name).builder(spacing=spacing, **kwargs)


def phantom_grid_of(name: str, spacing=None) -> "Grid":
    """The CT grid :func:`get_phantom` would build for ``name`` at ``spacing``, without building it.

    Cheap (no mask is made), so callers check a spacing before any work starts: a spacing
    outside :func:`rtlab.core.validate.check_spacing`'s range, or one giving more voxels than
    :func:`rtlab.core.validate.max_voxels`, raises ``ValueError`` here.
    """
    e = _entry(name)
    return phantom_grid(e.half_extent(), parse_spacing(spacing, e.default_spacing), 5.0)


def describe_phantoms() -> list[dict]:
    """One row per phantom, without building any mask (cheap).

    Returns
    -------
    list of dict
        Keys: ``name``; ``description`` (first sentence: a title); ``prescription`` (Gy, the
        primary target's); ``spacing`` (default ``(dz, dy, dx)`` mm); ``shape`` (default grid
        ``(nz, ny, nx)``); ``structures`` (names); ``n_beams`` (suggested equispaced beams).
    """
    rows = []
    for name, e in _REGISTRY.items():
        grid = phantom_grid(e.half_extent(), e.default_spacing, 5.0)
        rows.append(
            {
                "name": name,
                "description": e.description,
                "prescription": e.prescription,
                "spacing": tuple(e.default_spacing),
                "shape": tuple(grid.shape),
                "structures": list(e.structures),
                "n_beams": e.n_beams,
            }
        )
    return rows
