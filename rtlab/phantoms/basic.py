"""Simple phantoms: the interactive-dose-shaping horseshoe, spheres/ellipsoids and a head.

All are centred on the world origin; z superior, y posterior, x the patient's left; CT in HU
with air -1000 outside the body, water 0 inside and bone where stated (the head's skull).
"""

from __future__ import annotations

import numpy as np

from .._util import check_positive
from ..core.case import Case, Goal
from ._shapes import (
    HU_AIR,
    HU_BONE,
    HU_BRAIN,
    HU_WATER,
    annulus_mask,
    assemble_case,
    centres,
    cylinder_mask,
    ellipsoid_mask,
    parse_spacing,
    phantom_grid,
)

__all__ = [
    "HORSESHOE_SPACING",
    "SIMPLE_SPACING",
    "HEAD_SPACING",
    "HORSESHOE_BODY_HALF",
    "HEAD_OUTER_RADII",
    "horseshoe",
    "sphere",
    "ellipsoid",
    "head",
    "ellipsoid_body_half",
]

#: Paper 004's voxel size 1.952 x 1.952 x 2 mm (y, x, z), as (dz, dy, dx).
HORSESHOE_SPACING = (2.0, 1.952, 1.952)
#: Default voxel size (mm) of the sphere / ellipsoid phantoms.
SIMPLE_SPACING = (2.0, 2.0, 2.0)
#: Default voxel size (mm) of the head phantom (use 1 mm for Gamma-Knife work).
HEAD_SPACING = (2.0, 2.0, 2.0)

HORSESHOE_BODY_HALF = (70.0, 100.0, 140.0)
#: Outer (skin) semi-axes (rz, ry, rx) of the head phantom in mm.
HEAD_OUTER_RADII = (90.0, 97.0, 75.0)

_PAPER004 = "paper 004 (Ziegenhein et al. 2016, interactive dose shaping), section 2.2 and figure 2"


# -- horseshoe (paper 004) --------------------------------------------------------------------------

HORSESHOE_APPROXIMATIONS = [
    "paper 004 states only: horseshoe-shaped target about 12 cm in diameter encompassing a "
    "spherical organ at risk, voxels 1.952 x 1.952 x 2 mm, 9 equispaced coplanar beams; "
    "every other dimension here is ours",
    "target: the cylindrical shell 35 <= r < 60 mm (120 mm outer diameter), 70 mm long "
    "(z in [-35, 35) mm), with an anterior opening (points with y < 0 and |x| < 20 mm removed)",
    "organ at risk: a sphere of radius 25 mm at the centre (10 mm gap to the target's inner wall)",
    "body: a 280 mm (x) by 200 mm (y) elliptical water cylinder, 140 mm long",
    "prescription 60 Gy is ours (the paper reports relative doses: 95 % target coverage, "
    "55 % at the OAR rim, 107 % hot-spot isodose)",
]


def horseshoe(spacing=None, n_beams: int = 9, prescription: float = 60.0, margin: float = 5.0) -> Case:
    """The horseshoe phantom of interactive dose shaping (paper 004, section 2.2, figure 2).

    Geometry: a horseshoe (C-shaped) target of outer diameter 120 mm ("about 12 cm",
    paper 004) encompassing a spherical organ at risk. Ours: ``PTV`` = shell
    ``35 <= r < 60 mm`` around the z axis, ``z`` in [-35, 35) mm, opening anterior
    (``y < 0`` and ``|x| < 20 mm`` removed); ``OAR`` = sphere of radius 25 mm at the origin;
    body = elliptical water cylinder 280 (x) x 200 (y) mm, 140 mm long.

    Default voxels 1.952 x 1.952 x 2 mm in (y, x, z), i.e. ``spacing = (2.0, 1.952, 1.952)``
    in (z, y, x); 9 equispaced coplanar beams at 0:40:320 deg (paper 004).

    Goals (our reading of paper 004's reported result, relative to the prescription ``Rx``):
    PTV Dmin >= 0.95 Rx, PTV Dmax <= 1.07 Rx, OAR Dmax <= 0.55 Rx.

    Parameters
    ----------
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm.
    n_beams : int
        Number of equispaced coplanar beams (default 9).
    prescription : float
        Target prescription in Gy (default 60, ours).
    margin : float
        Air margin around the body in mm.
    """
    (rx,) = check_positive("prescription (Gy)", prescription)
    sp = parse_spacing(spacing, HORSESHOE_SPACING)
    half = HORSESHOE_BODY_HALF
    grid = phantom_grid(half, sp, margin)
    body = cylinder_mask(grid, (0.0, 0.0), (half[1], half[2]), (-half[0], half[0]))
    ct = np.full(grid.shape, HU_AIR, np.float32)
    ct[body] = HU_WATER
    ptv = annulus_mask(grid, (0.0, 0.0), 35.0, 60.0, (-35.0, 35.0))
    _, y, x = centres(grid)
    ptv &= ~np.broadcast_to((y < 0.0) & (np.abs(x) < 20.0), grid.shape)
    oar = ellipsoid_mask(grid, (0.0, 0.0, 0.0), 25.0)
    goals = [
        Goal("PTV", "Dmin", ">=", round(0.95 * rx, 6)),
        Goal("PTV", "Dmax", "<=", round(1.07 * rx, 6)),
        Goal("OAR", "Dmax", "<=", round(0.55 * rx, 6)),
    ]
    desc = (
        f"Interactive-dose-shaping horseshoe (paper 004): C-shaped target 120 mm across (radii 35-60 mm, "
        f"70 mm long, opening anterior) around a 25 mm radius spherical OAR; {rx:g} Gy; 9 beams 0:40:320. "
        "Approximation: the paper gives only the overall size; radii, length, opening and body are ours."
    )
    meta = {
        "phantom": "horseshoe", "reference": _PAPER004, "spacing": sp,
        "approximations": HORSESHOE_APPROXIMATIONS,
        "isodose_levels_percent": [55, 95, 107],
        "beams_note": f"{n_beams} equispaced coplanar beams (paper 004: 9 equispaced)",
    }
    parts = [("Body", body, "body", None), ("PTV", ptv, "target", rx), ("OAR", oar, "oar", None)]
    return assemble_case("horseshoe", grid, ct, parts, goals, n_beams, desc, meta, prescription=rx)


# -- spheres and ellipsoids -------------------------------------------------------------------------


def _radii3(radii) -> tuple[float, float, float]:
    r = check_positive("radii (mm)", radii)
    if len(r) == 1:
        r = r * 3
    if len(r) != 3:
        raise ValueError(f"radii must be one number or three semi-axes (rz, ry, rx) in mm, got {radii!r}")
    return tuple(float(v) for v in r)


def ellipsoid_body_half(radii, oar_radius=None, oar_gap: float = 5.0, body_margin: float = 40.0):
    """Body half-extents ``(hz, hy, hx)`` in mm of the sphere / ellipsoid phantoms.

    The body is an elliptical water cylinder reaching ``body_margin`` beyond the target (and
    the organ at risk, which sits posterior of the target, along +y) in every direction.
    """
    rz, ry, rx = _radii3(radii)
    (body_margin,) = check_positive("body_margin (mm)", body_margin)
    hz, hy, hx = rz, ry, rx
    if oar_radius is not None:
        (orad,) = check_positive("oar_radius (mm)", oar_radius)
        (gap,) = check_positive("oar_gap (mm)", oar_gap, allow_zero=True)
        hz = max(hz, orad)
        hy = ry + gap + 2.0 * orad
        hx = max(hx, orad)
    return (hz + body_margin, hy + body_margin, hx + body_margin)


def ellipsoid(
    spacing=None,
    radii=(30.0, 20.0, 40.0),
    prescription: float = 60.0,
    oar_radius: float | None = None,
    oar_gap: float = 5.0,
    body_margin: float = 40.0,
    n_beams: int = 7,
    margin: float = 5.0,
    name: str = "ellipsoid",
) -> Case:
    """An ellipsoidal target in a water cylinder, with an optional spherical OAR posterior of it.

    Geometry: ``PTV`` = ellipsoid with semi-axes ``radii = (rz, ry, rx)`` mm centred at the
    origin; if ``oar_radius`` is given, ``OAR`` = sphere of that radius centred at
    ``y = ry + oar_gap + oar_radius`` (posterior, surface gap ``oar_gap`` mm); body = elliptical
    water cylinder along z reaching ``body_margin`` mm beyond both (see
    :func:`ellipsoid_body_half`). Exact shapes; the only approximation is voxelisation
    (voxel-centre inclusion).

    Goals: PTV D95 >= Rx, PTV D5 <= 1.07 Rx; OAR Dmax <= 0.5 Rx (if present).

    Parameters
    ----------
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm; default 2 mm isotropic.
    radii : float or (rz, ry, rx)
        Target semi-axes in mm.
    prescription : float
        Target prescription in Gy.
    oar_radius : float, optional
        Radius (mm) of a spherical organ at risk; ``None`` for none.
    oar_gap : float
        Surface-to-surface distance between target and OAR along y (mm).
    body_margin : float
        Water beyond the structures (mm).
    n_beams : int
        Number of equispaced coplanar beams (default 7).
    margin : float
        Air margin around the body in mm.
    name : str
        Case name.
    """
    r = _radii3(radii)
    (rx_gy,) = check_positive("prescription (Gy)", prescription)
    half = ellipsoid_body_half(r, oar_radius, oar_gap, body_margin)
    sp = parse_spacing(spacing, SIMPLE_SPACING)
    grid = phantom_grid(half, sp, margin)
    body = cylinder_mask(grid, (0.0, 0.0), (half[1], half[2]), (-half[0], half[0]))
    ct = np.full(grid.shape, HU_AIR, np.float32)
    ct[body] = HU_WATER
    ptv = ellipsoid_mask(grid, (0.0, 0.0, 0.0), r)
    parts = [("Body", body, "body", None), ("PTV", ptv, "target", rx_gy)]
    goals = [Goal("PTV", "D95", ">=", rx_gy), Goal("PTV", "D5", "<=", round(1.07 * rx_gy, 6))]
    oar_txt = ""
    if oar_radius is not None:
        c_y = r[1] + float(oar_gap) + float(oar_radius)
        oar = ellipsoid_mask(grid, (0.0, c_y, 0.0), float(oar_radius))
        parts.append(("OAR", oar, "oar", None))
        goals.append(Goal("OAR", "Dmax", "<=", round(0.5 * rx_gy, 6)))
        oar_txt = f", spherical OAR r = {float(oar_radius):g} mm {float(oar_gap):g} mm posterior"
    shape_txt = f"sphere r = {r[0]:g} mm" if r[0] == r[1] == r[2] else f"ellipsoid semi-axes (z, y, x) = {r} mm"
    desc = (
        f"Water cylinder with a target {shape_txt}{oar_txt}; {rx_gy:g} Gy. "
        "Exact shapes; only voxelisation approximates them."
    )
    meta = {
        "phantom": name, "spacing": sp, "radii": r, "oar_radius": oar_radius, "oar_gap": oar_gap,
        "approximations": ["none beyond voxel-centre inclusion"],
        "beams_note": f"{n_beams} equispaced coplanar beams",
    }
    return assemble_case(name, grid, ct, parts, goals, n_beams, desc, meta, prescription=rx_gy)


def sphere(
    spacing=None,
    radius: float = 30.0,
    prescription: float = 60.0,
    oar_radius: float | None = None,
    oar_gap: float = 5.0,
    body_margin: float = 40.0,
    n_beams: int = 7,
    margin: float = 5.0,
) -> Case:
    """A spherical target of ``radius`` mm in a water cylinder (see :func:`ellipsoid`).

    Parameters are those of :func:`ellipsoid`, with one ``radius`` (mm) instead of ``radii``.
    """
    (r,) = check_positive("radius (mm)", radius)
    return ellipsoid(spacing, (r, r, r), prescription, oar_radius, oar_gap, body_margin, n_beams, margin, name="sphere")


# -- head (Gamma-Knife-style) ------------------------------------------------------------------------

HEAD_APPROXIMATIONS = [
    "head: an ellipsoid with semi-axes (z, y, x) = (90, 97, 75) mm (skin), a 5 mm water-like "
    "scalp (0 HU), a skull of bone (1000 HU) 6.5 mm thick along the principal axes (the shell "
    "between two ellipsoids whose semi-axes differ by 6.5 mm, so its normal thickness varies "
    "slightly elsewhere), brain 35 HU; no neck, no skull base, no air cavities",
    "brainstem: a cylinder of radius 12 mm, z in [-60, -10) mm, axis at (y, x) = (20, 0) mm",
    "target: a sphere of 15 mm diameter centred at (z, y, x) = (-25, 20, -25) mm (5.5 mm from "
    "the brainstem), or an irregular 'peanut' (union of two overlapping spheres)",
]


def head(
    spacing=None,
    target: str = "sphere",
    target_diameter: float = 15.0,
    prescription: float = 20.0,
    n_beams: int = 9,
    margin: float = 5.0,
) -> Case:
    """A head phantom for Gamma-Knife-style (point-kernel) planning.

    Geometry: ellipsoidal head with skin semi-axes (z, y, x) = (90, 97, 75) mm; scalp 5 mm of
    water (0 HU); skull = bone (1000 HU) 6.5 mm thick (ellipsoidal shell); brain (35 HU)
    inside. ``Brainstem`` (oar) = cylinder of radius 12 mm along z, z in [-60, -10) mm, at
    ``(y, x) = (20, 0)`` mm. ``Target`` = sphere of ``target_diameter`` (default 15 mm)
    centred at ``(z, y, x) = (-25, 20, -25)`` mm, in the right hemisphere lateral to the
    brainstem (surface gap 5.5 mm for the default diameter); ``target='irregular'`` makes it the
    union of that sphere and a second sphere of 0.65 x its radius centred
    ``(+6, -4, -6)`` mm away (a peanut-shaped, non-convex target).

    Goals: Target D98 >= Rx; Brainstem Dmax <= 12 Gy (single-fraction brainstem limit).

    Parameters
    ----------
    spacing : float or (dz, dy, dx), optional
        Voxel size in mm; default 2 mm (use 1 mm or finer for Gamma-Knife dose).
    target : {'sphere', 'irregular'}
        Target shape.
    target_diameter : float
        Diameter of the (main) target sphere in mm (10-20 mm typical).
    prescription : float
        Target prescription in Gy (default 20).
    n_beams : int
        Number of equispaced coplanar beams suggested for linac comparisons (default 9); a
        Gamma-Knife plan uses ``Case.isocenter()`` as a starting shot position instead.
    margin : float
        Air margin around the head in mm.
    """
    if target not in ("sphere", "irregular"):
        raise ValueError(f"target must be 'sphere' or 'irregular', got {target!r}")
    (diam,) = check_positive("target_diameter (mm)", target_diameter)
    (rx,) = check_positive("prescription (Gy)", prescription)
    sp = parse_spacing(spacing, HEAD_SPACING)
    outer = np.asarray(HEAD_OUTER_RADII, float)
    grid = phantom_grid(outer, sp, margin)
    body = ellipsoid_mask(grid, (0.0, 0.0, 0.0), outer)
    skull_outer = ellipsoid_mask(grid, (0.0, 0.0, 0.0), outer - 5.0)
    brain = ellipsoid_mask(grid, (0.0, 0.0, 0.0), outer - 11.5)
    ct = np.full(grid.shape, HU_AIR, np.float32)
    ct[body] = HU_WATER
    ct[skull_outer & ~brain] = HU_BONE
    ct[brain] = HU_BRAIN
    brainstem = cylinder_mask(grid, (20.0, 0.0), 12.0, (-60.0, -10.0))
    c1 = np.array([-25.0, 20.0, -25.0])
    r1 = diam / 2.0
    tgt = ellipsoid_mask(grid, c1, r1)
    if target == "irregular":
        tgt |= ellipsoid_mask(grid, c1 + np.array([6.0, -4.0, -6.0]), 0.65 * r1)
    if (tgt & brainstem).any() or (tgt & ~brain).any():
        raise ValueError(
            f"target_diameter={diam:g} mm makes the target reach the brainstem or the skull; "
            "use a diameter below about 25 mm"
        )
    goals = [Goal("Target", "D98", ">=", rx), Goal("Brainstem", "Dmax", "<=", 12.0)]
    desc = (
        f"Head for Gamma-Knife-style work: ellipsoidal head (180 x 194 x 150 mm) with a 6.5 mm bone skull "
        f"(1000 HU) and brain (35 HU); {target} target {diam:g} mm next to a brainstem cylinder; {rx:g} Gy. "
        "Approximation: smooth ellipsoidal skull, no skull base or cavities."
    )
    meta = {
        "phantom": "head", "spacing": sp, "target_shape": target, "target_diameter": diam,
        "approximations": HEAD_APPROXIMATIONS,
        "beams_note": f"{n_beams} equispaced coplanar beams (linac comparison); Gamma-Knife work uses shots",
    }
    parts = [("Body", body, "body", None), ("Target", tgt, "target", rx), ("Brainstem", brainstem, "oar", None)]
    return assemble_case("head", grid, ct, parts, goals, n_beams, desc, meta, prescription=rx)
