"""The AAPM TG-119 IMRT test set, rebuilt from geometric primitives at any voxel size.

Reference: G. A. Ezzell et al., "IMRT commissioning: multiple institution planning and
dosimetry comparisons, a report from AAPM Task Group 119", Med. Phys. 36 (2009) 5359-5373.
The report distributes its structures as DICOM files drawn on a phantom CT; rtlab does not
download them. Instead each structure is rebuilt here from the dimensions given in the
report's text, with simple shapes where the report's contours are hand-drawn. Every place where
the geometry is ours rather than the report's is listed in the function's docstring, in
``Case.meta['approximations']`` and in ``docs/phantoms.md``. The planning goals are the
report's, verbatim.

All cases sit in a water-equivalent body (0 HU) surrounded by air (-1000 HU); no bone. The
body is centred on the world origin; z is the cylinder axis (superior +), y posterior, x the
patient's left.

Suggested beams: TG-119 prescribes its own fields (7 fields at 50 deg steps for the
multitarget and prostate cases, 9 fields at 40 deg steps for the C-shapes and head & neck).
rtlab suggests **9 equispaced coplanar beams** (0:40:320 deg, identical to TG-119) for the
C-shapes and head & neck, and **7 equispaced coplanar beams** (k * 360/7 deg) for the
multitarget and prostate cases; the isocentre is the centroid of the union of the targets.
"""

from __future__ import annotations

import numpy as np

from ..core.case import Case, Goal
from ._shapes import (
    HU_AIR,
    HU_WATER,
    annulus_mask,
    assemble_case,
    centres,
    cylinder_mask,
    ellipsoid_mask,
    offset_ellipsoid_mask,
    parse_spacing,
    phantom_grid,
)

__all__ = [
    "TG119_SPACING",
    "tg119_cshape",
    "tg119_multitarget",
    "tg119_prostate",
    "tg119_headneck",
    "CSHAPE_BODY_HALF",
    "MULTITARGET_BODY_HALF",
    "PROSTATE_BODY_HALF",
    "HEADNECK_BODY_HALF",
]

#: Default voxel size (dz, dy, dx) in mm, as in matRad's TG119 phantom.
TG119_SPACING = (2.5, 3.0, 3.0)

#: Body half-extents (hz, hy, hx) in mm: elliptical water cylinders along z.
CSHAPE_BODY_HALF = (80.0, 100.0, 150.0)
MULTITARGET_BODY_HALF = (90.0, 100.0, 150.0)
PROSTATE_BODY_HALF = (80.0, 100.0, 150.0)
HEADNECK_BODY_HALF = (80.0, 75.0, 85.0)

_REF = "AAPM TG-119 (Ezzell et al., Med. Phys. 36 (2009) 5359)"


def _body_and_ct(grid, half):
    body = cylinder_mask(grid, (0.0, 0.0), (half[1], half[2]), (-half[0], half[0]))
    ct = np.full(grid.shape, HU_AIR, np.float32)
    ct[body] = HU_WATER
    return body, ct


# -- C-shape ---------------------------------------------------------------------------------------

CSHAPE_APPROXIMATIONS = [
    "the C opening is modelled by removing shell points with y < 0 (anterior) and |x| < 15 mm "
    "(a straight-sided slot as wide as the shell's inner diameter); the report's hand-drawn "
    "C has its own opening shape",
    "body: a 300 mm (x) by 200 mm (y) elliptical water cylinder, 160 mm long (the report's "
    "phantom CT differs)",
    "the PTV and core are centred on the body axis; the core and PTV are centred in z",
]


def tg119_cshape(difficulty: str = "easy", spacing=None, n_beams: int = 9, margin: float = 5.0) -> Case:
    """TG-119 C-shape: a C-shaped PTV wrapped around a cylindrical core (avoidance structure).

    Geometry (report values): core = cylinder of radius 10 mm and length 100 mm; PTV = the
    shell between radii 15 and 37 mm around the same axis, 80 mm long, so that the core-PTV
    gap is 5 mm. Both are centred on the origin, axis along z.

    Approximations (ours): the C's opening faces anterior and is modelled as the shell points
    with ``y < 0`` and ``|x| < 15 mm`` removed; the body is a 300 x 200 mm (x, y) elliptical
    water cylinder, 160 mm long.

    Goals (TG-119): PTV D95 >= 50 Gy, PTV D10 <= 55 Gy; Core D10 <= 25 Gy (easy) or
    <= 10 Gy (hard). Prescription 50 Gy.

    Parameters
    ----------
    difficulty : {'easy', 'hard'}
        Selects the core goal.
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm; default ``(2.5, 3, 3)``.
    n_beams : int
        Number of equispaced coplanar beams (default 9: 0, 40, ..., 320 deg as in TG-119).
    margin : float
        Air margin around the body in mm.

    Returns
    -------
    Case
        Structures ``Body``, ``PTV`` (target, 50 Gy), ``Core`` (oar).
    """
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}")
    sp = parse_spacing(spacing, TG119_SPACING)
    grid = phantom_grid(CSHAPE_BODY_HALF, sp, margin)
    body, ct = _body_and_ct(grid, CSHAPE_BODY_HALF)
    core = cylinder_mask(grid, (0.0, 0.0), 10.0, (-50.0, 50.0))
    ptv = annulus_mask(grid, (0.0, 0.0), 15.0, 37.0, (-40.0, 40.0))
    _, y, x = centres(grid)
    ptv &= ~np.broadcast_to((y < 0.0) & (np.abs(x) < 15.0), grid.shape)
    core_limit = 25.0 if difficulty == "easy" else 10.0
    goals = [
        Goal("PTV", "D95", ">=", 50.0),
        Goal("PTV", "D10", "<=", 55.0),
        Goal("Core", "D10", "<=", core_limit),
    ]
    name = f"tg119_cshape_{difficulty}"
    desc = (
        f"TG-119 C-shape ({difficulty}): C-shaped PTV (radii 15-37 mm, 80 mm long, opening anterior) "
        f"around a 10 mm radius core, 5 mm gap; 50 Gy; core D10 <= {core_limit:g} Gy. "
        "Approximation: the opening is a straight slot |x| < 15 mm, y < 0; body 300 x 200 mm water cylinder."
    )
    meta = {
        "phantom": name, "reference": _REF, "spacing": sp, "approximations": CSHAPE_APPROXIMATIONS,
        "beams_note": f"{n_beams} equispaced coplanar beams (TG-119: 9 fields, 0:40:320 deg)",
    }
    parts = [("Body", body, "body", None), ("PTV", ptv, "target", 50.0), ("Core", core, "oar", None)]
    return assemble_case(name, grid, ct, parts, goals, n_beams, desc, meta)


# -- multitarget -----------------------------------------------------------------------------------

MULTITARGET_APPROXIMATIONS = [
    "the three cylinders (40 mm diameter, 40 mm long) abut along z with no gap, sharing the "
    "body axis; the report draws them stacked along the axis of rotation",
    "body: a 300 mm (x) by 200 mm (y) elliptical water cylinder, 180 mm long",
]


def tg119_multitarget(spacing=None, n_beams: int = 7, margin: float = 5.0) -> Case:
    """TG-119 multitarget: three cylindrical targets stacked along the z axis.

    Geometry: each target is a cylinder of diameter 40 mm and length 40 mm on the body axis
    (volume pi * 20^2 * 40 mm^3 = 50.27 cc); ``CenterTarget`` spans z in [-20, 20) mm,
    ``SuperiorTarget`` [20, 60) and ``InferiorTarget`` [-60, -20).

    Approximations (ours): the cylinders abut without a gap; the body is a 300 x 200 mm (x, y)
    elliptical water cylinder, 180 mm long.

    Goals (TG-119): central D99 >= 50, D10 <= 53; superior D99 >= 25, D10 <= 35; inferior
    D99 >= 12.5, D10 <= 25 (Gy). Prescriptions 50 / 25 / 12.5 Gy.

    Parameters
    ----------
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm; default ``(2.5, 3, 3)``.
    n_beams : int
        Number of equispaced coplanar beams (default 7 at k * 360/7 deg; TG-119 uses 7 fields
        at 50 deg steps).
    margin : float
        Air margin around the body in mm.
    """
    sp = parse_spacing(spacing, TG119_SPACING)
    grid = phantom_grid(MULTITARGET_BODY_HALF, sp, margin)
    body, ct = _body_and_ct(grid, MULTITARGET_BODY_HALF)
    center = cylinder_mask(grid, (0.0, 0.0), 20.0, (-20.0, 20.0))
    sup = cylinder_mask(grid, (0.0, 0.0), 20.0, (20.0, 60.0))
    inf = cylinder_mask(grid, (0.0, 0.0), 20.0, (-60.0, -20.0))
    goals = [
        Goal("CenterTarget", "D99", ">=", 50.0),
        Goal("CenterTarget", "D10", "<=", 53.0),
        Goal("SuperiorTarget", "D99", ">=", 25.0),
        Goal("SuperiorTarget", "D10", "<=", 35.0),
        Goal("InferiorTarget", "D99", ">=", 12.5),
        Goal("InferiorTarget", "D10", "<=", 25.0),
    ]
    desc = (
        "TG-119 multitarget: three stacked cylinders (40 mm diameter, 40 mm long) on the body axis, "
        "central 50 Gy, superior 25 Gy, inferior 12.5 Gy. Approximation: the cylinders abut "
        "without a gap; body 300 x 200 mm water cylinder."
    )
    meta = {
        "phantom": "tg119_multitarget", "reference": _REF, "spacing": sp,
        "approximations": MULTITARGET_APPROXIMATIONS,
        "beams_note": f"{n_beams} equispaced coplanar beams (TG-119: 7 fields at 50 deg steps)",
    }
    parts = [
        ("Body", body, "body", None),
        ("CenterTarget", center, "target", 50.0),
        ("SuperiorTarget", sup, "target", 25.0),
        ("InferiorTarget", inf, "target", 12.5),
    ]
    return assemble_case("tg119_multitarget", grid, ct, parts, goals, n_beams, desc, meta, prescription=50.0)


# -- prostate --------------------------------------------------------------------------------------

PROSTATE_APPROXIMATIONS = [
    "CTV: an exact ellipsoid with RL, AP, SI diameters 40, 26, 65 mm (the report's CTV is "
    "'roughly elliptical' with these dimensions)",
    "PTV: the CTV grown by exactly 6 mm (true parallel body), then indented by removing the "
    "rectum so that the rectum abuts it",
    "rectum: a straight cylinder of 15 mm diameter, 100 mm long, touching the CTV posteriorly "
    "(axis at y = +20.5 mm); the report's rectum is a cylinder of the same diameter",
    "bladder: an ellipsoid with RL, AP, SI diameters 50, 40, 50 mm; its position is ours: "
    "centred at (z, y, x) = (45, -15, 0) mm, superior-anterior of the CTV, so that about 7 % "
    "of it lies inside the PTV (less than the 10 % of the D10 goal)",
    "body: a 300 mm (x) by 200 mm (y) elliptical water cylinder, 160 mm long; no pelvic bones",
]


def tg119_prostate(spacing=None, n_beams: int = 7, margin: float = 5.0, indent_ptv: bool = True) -> Case:
    """TG-119 mock prostate: CTV ellipsoid, PTV = CTV + 6 mm, rectum and bladder.

    Geometry (report dimensions, our placement): CTV = ellipsoid with diameters 40 (x, RL),
    26 (y, AP) and 65 (z, SI) mm centred at the origin; PTV = points within 6 mm of the CTV
    (exact distance to the ellipsoid), minus the rectum (the report's "indented PTV");
    rectum = cylinder of diameter 15 mm, axis along z at ``y = +20.5 mm`` (posterior, touching
    the CTV), ``z`` in [-50, 50) mm; bladder = ellipsoid with diameters 50 (x), 40 (y), 50 (z) mm
    centred at ``(z, y, x) = (45, -15, 0)`` mm, superior-anterior, about 7 % inside the PTV.

    Approximations (ours): exact ellipsoids/cylinders instead of hand-drawn contours; rectum
    length and bladder position are our choice; body 300 x 200 mm water cylinder, no bone.

    Goals (TG-119): PTV D95 >= 75.6, D5 <= 83; rectum D30 <= 70, D10 <= 75; bladder D30 <= 70,
    D10 <= 75 (Gy). Prescription 75.6 Gy.

    Parameters
    ----------
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm; default ``(2.5, 3, 3)``.
    n_beams : int
        Number of equispaced coplanar beams (default 7 at k * 360/7 deg; TG-119 uses 7 fields,
        0, 50, 100, 150, 210, 260, 310 deg).
    margin : float
        Air margin around the body in mm.
    indent_ptv : bool
        Remove the rectum from the PTV (default, as in TG-119). ``False`` keeps the full
        6 mm expansion, which then overlaps the rectum.
    """
    sp = parse_spacing(spacing, TG119_SPACING)
    grid = phantom_grid(PROSTATE_BODY_HALF, sp, margin)
    body, ct = _body_and_ct(grid, PROSTATE_BODY_HALF)
    ctv_r = (32.5, 13.0, 20.0)
    ctv = ellipsoid_mask(grid, (0.0, 0.0, 0.0), ctv_r)
    ptv = offset_ellipsoid_mask(grid, (0.0, 0.0, 0.0), ctv_r, 6.0)
    rectum = cylinder_mask(grid, (13.0 + 7.5, 0.0), 7.5, (-50.0, 50.0))
    if indent_ptv:
        ptv &= ~rectum
    bladder = ellipsoid_mask(grid, (45.0, -15.0, 0.0), (25.0, 20.0, 25.0))
    goals = [
        Goal("PTV", "D95", ">=", 75.6),
        Goal("PTV", "D5", "<=", 83.0),
        Goal("Rectum", "D30", "<=", 70.0),
        Goal("Rectum", "D10", "<=", 75.0),
        Goal("Bladder", "D30", "<=", 70.0),
        Goal("Bladder", "D10", "<=", 75.0),
    ]
    desc = (
        "TG-119 mock prostate: ellipsoidal CTV (40 x 26 x 65 mm), PTV = CTV + 6 mm indented by the "
        "rectum (15 mm diameter cylinder, posterior), ellipsoidal bladder superior-anterior; 75.6 Gy. "
        "Approximation: exact ellipsoids and cylinders, our rectum length and bladder position."
    )
    meta = {
        "phantom": "tg119_prostate", "reference": _REF, "spacing": sp,
        "approximations": PROSTATE_APPROXIMATIONS, "indent_ptv": bool(indent_ptv),
        "beams_note": f"{n_beams} equispaced coplanar beams (TG-119: 7 fields 0,50,100,150,210,260,310 deg)",
    }
    parts = [
        ("Body", body, "body", None),
        ("PTV", ptv, "target", 75.6),
        ("CTV", ctv, "target", 75.6),
        ("Rectum", rectum, "oar", None),
        ("Bladder", bladder, "oar", None),
    ]
    return assemble_case("tg119_prostate", grid, ct, parts, goals, n_beams, desc, meta, prescription=75.6)


# -- head & neck -----------------------------------------------------------------------------------

HEADNECK_APPROXIMATIONS = [
    "the report's PTV (drawn on a real neck shape: anterior neck from skull base to upper neck "
    "including posterior nodes, retracted 6 mm from the skin) is replaced by a horseshoe: the "
    "cylindrical shell 14 <= r < 65 mm around the cord axis, restricted to y < cord + 10 mm "
    "(anterior and lateral to the cord), 70 mm long (z in [-35, 35) mm), kept >= 6 mm inside the skin",
    "cord: a 12 mm diameter cylinder along the whole body length at y = +30 mm (posterior); "
    "PTV-cord gap 8 mm",
    "parotids: ellipsoids with diameters 24 (x), 30 (y), 40 (z) mm centred at "
    "(z, y, x) = (45, 10, +/-50) mm, superior-lateral; their inferior tips overlap the PTV",
    "body: a 170 mm (x) by 150 mm (y) elliptical water cylinder, 160 mm long; no bone or airway",
]


def tg119_headneck(spacing=None, n_beams: int = 9, margin: float = 5.0) -> Case:
    """TG-119 mock head & neck: horseshoe-like PTV anterior to the cord, cord, two parotids.

    Geometry (ours, after the report's description): body = elliptical water cylinder
    170 (x) x 150 (y) mm, 160 mm long; ``Cord`` = cylinder of radius 6 mm on the axis
    ``(y, x) = (30, 0)`` mm through the whole body; ``PTV`` = the shell ``14 <= r < 65 mm``
    around the cord axis with ``y < 40 mm`` (it wraps the cord anteriorly and laterally,
    opening posteriorly), ``z`` in [-35, 35) mm and at least 6 mm inside the skin;
    ``Parotid_L`` / ``Parotid_R`` = ellipsoids with semi-axes (z, y, x) = (20, 15, 12) mm at
    ``(45, 10, +50)`` / ``(45, 10, -50)`` mm.

    Approximations (ours): the report's PTV and organs are contours drawn on a patient-like
    neck; ours are simple shapes with the same topology (horseshoe around the cord, parotids
    superior-lateral and partly overlapping the PTV). There is no bone or airway.

    Goals (TG-119): PTV D90 >= 50, D99 >= 46.5, D20 <= 55; cord Dmax <= 40; each parotid
    D50 <= 20 (Gy). Prescription 50 Gy.

    Parameters
    ----------
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm; default ``(2.5, 3, 3)``.
    n_beams : int
        Number of equispaced coplanar beams (default 9: 0:40:320 deg as in TG-119).
    margin : float
        Air margin around the body in mm.
    """
    sp = parse_spacing(spacing, TG119_SPACING)
    half = HEADNECK_BODY_HALF
    grid = phantom_grid(half, sp, margin)
    body, ct = _body_and_ct(grid, half)
    cord_y, cord_r = 30.0, 6.0
    cord = cylinder_mask(grid, (cord_y, 0.0), cord_r, (-half[0], half[0]))
    ptv = annulus_mask(grid, (cord_y, 0.0), cord_r + 8.0, 65.0, (-35.0, 35.0))
    _, y, _ = centres(grid)
    ptv &= np.broadcast_to(y < cord_y + 10.0, grid.shape)
    ptv &= cylinder_mask(grid, (0.0, 0.0), (half[1] - 6.0, half[2] - 6.0), (-half[0], half[0]))
    par_l = ellipsoid_mask(grid, (45.0, 10.0, 50.0), (20.0, 15.0, 12.0))
    par_r = ellipsoid_mask(grid, (45.0, 10.0, -50.0), (20.0, 15.0, 12.0))
    goals = [
        Goal("PTV", "D90", ">=", 50.0),
        Goal("PTV", "D99", ">=", 46.5),
        Goal("PTV", "D20", "<=", 55.0),
        Goal("Cord", "Dmax", "<=", 40.0),
        Goal("Parotid_L", "D50", "<=", 20.0),
        Goal("Parotid_R", "D50", "<=", 20.0),
    ]
    desc = (
        "TG-119 mock head & neck: horseshoe PTV wrapping the cord anteriorly and laterally "
        "(8 mm gap), cord, two superior-lateral parotids; 50 Gy. Approximation: simple shapes "
        "replace the report's drawn contours; 170 x 150 mm water neck, no bone."
    )
    meta = {
        "phantom": "tg119_headneck", "reference": _REF, "spacing": sp,
        "approximations": HEADNECK_APPROXIMATIONS,
        "beams_note": f"{n_beams} equispaced coplanar beams (TG-119: 9 fields, 0:40:320 deg)",
    }
    parts = [
        ("Body", body, "body", None),
        ("PTV", ptv, "target", 50.0),
        ("Cord", cord, "oar", None),
        ("Parotid_L", par_l, "oar", None),
        ("Parotid_R", par_r, "oar", None),
    ]
    return assemble_case("tg119_headneck", grid, ct, parts, goals, n_beams, desc, meta, prescription=50.0)
