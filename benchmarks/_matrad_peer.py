"""Peer side of ``validate_matrad.py``: pyRadPlan's photon SVD dose for the validation cases.

Runs in pyRadPlan's own Python environment (it imports pyRadPlan and numpy only, never rtlab)
and writes one ``.npz`` with the dose cubes and the geometry rtlab needs to place the same
beamlets. Called by ``benchmarks/validate_matrad.py`` as::

    <peer-python> benchmarks/_matrad_peer.py OUT.npz [--water]

Cases (pyRadPlan defaults unless stated: SVD pencil beam, 50 mm geometric lateral cut-off,
0.5 mm kernel convolution grid, no custom primary fluence):

* ``tg119_1``: TG119 phantom shipped with pyRadPlan, gantry 0, 5 mm bixels, matRad's
  isocentre (target centre of mass), dose grid = CT grid, every beamlet weight 1; also the
  water-equivalent density it traces (HU through pyRadPlan's default HLUT, zero outside the
  structures);
* ``tg119_5``: the same with gantry 0, 72, 144, 216, 288;
* ``water_<L>`` (with ``--water``): a water phantom (1 mm voxels, surface at the isocentre
  plane, SSD 1000 mm), open L x L mm fields made of 5 mm bixels (centres at +-2.5, +-7.5, ...
  mm, so the field edges are exactly +-L/2), weights 1, lateral cut-off 180 mm (the whole
  tabulated kernel); dose on the central axis and on cross-plane profiles at 15, 50, 100 and
  200 mm depth.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

import pyRadPlan  # noqa: E402
from pyRadPlan import PhotonPlan, calc_dose_forward, generate_stf, load_tg119  # noqa: E402

GANTRIES = {"tg119_1": [0.0], "tg119_5": [0.0, 72.0, 144.0, 216.0, 288.0]}
WATER_FIELDS = (30.0, 50.0, 100.0, 200.0)
PROFILE_DEPTHS = (15.0, 50.0, 100.0, 200.0)
#: lateral cut-off (mm) of the water fields: the whole tabulated kernel (179.5 mm), so that output
#: factors of large fields are complete (with 50 mm a 20 x 20 cm field equals a 10 x 10 cm one)
WATER_CUTOFF = 180.0


def _plan(gantries, res, cutoff=50.0):
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": list(gantries), "couch_angles": [0.0] * len(gantries), "bixel_width": 5.0}
    pln.prop_dose_calc = {"engine": "SVDPB", "dose_grid": {"resolution": res}, "geometric_lateral_cutoff": cutoff}
    return pln


def tg119(out):
    from pyRadPlan.ct import default_hlut

    ct, cst = load_tg119()
    res = dict(ct.resolution)
    # the water-equivalent density the engine traces: HU -> pyRadPlan's default HLUT, zero outside
    # the union of the structures (``ignore_outside_densities``)
    wet = sitk.GetArrayFromImage(ct.compute_wet(default_hlut())).astype(np.float32)
    inside = np.zeros(wet.shape, bool)
    for voi in cst.vois:
        inside |= sitk.GetArrayFromImage(voi.mask).astype(bool)
    out["tg119_wet"] = np.where(inside, wet, 0.0).astype(np.float32)
    out["tg119_inside"] = inside
    out["ct_x"], out["ct_y"], out["ct_z"] = np.asarray(ct.x), np.asarray(ct.y), np.asarray(ct.z)
    for name, gantries in GANTRIES.items():
        pln = _plan(gantries, res)
        stf = generate_stf(ct, cst, pln)
        n = sum(b.total_number_of_bixels for b in stf.beams)
        t0 = time.perf_counter()
        result = calc_dose_forward(ct, cst, stf, pln, np.ones(n))
        out[f"{name}_seconds"] = time.perf_counter() - t0
        out[f"{name}_dose"] = sitk.GetArrayFromImage(result["physical_dose"]).astype(np.float32)  # (z, y, x)
        out[f"{name}_iso"] = np.asarray(stf.beams[0].iso_center, float)  # world (x, y, z) mm
        out[f"{name}_gantry"] = np.array([b.gantry_angle for b in stf.beams], float)
        out[f"{name}_source"] = np.stack([np.asarray(b.source_point, float) for b in stf.beams])
        rays = [np.stack([np.asarray(r.ray_pos, float) for r in b.rays]) for b in stf.beams]
        out[f"{name}_nrays"] = np.array([len(r) for r in rays])
        out[f"{name}_ray_pos"] = np.concatenate(rays)  # (x, y, z) mm relative to the isocentre
        out[f"{name}_ray_pos_bev"] = np.concatenate(
            [np.stack([np.asarray(r.ray_pos_bev, float) for r in b.rays]) for b in stf.beams])


def water(out):
    from pyRadPlan.ct import create_ct
    from pyRadPlan.cst import StructureSet, create_voi

    # 1 mm in x and depth; 10 mm slices in z (wide enough that every ray hits the water, which
    # pyRadPlan 0.5.0's SSD search needs; the dose is read on the z = 0 slice only)
    nx, ny, nz = 321, 311, 23
    res = {"x": 1.0, "y": 1.0, "z": 10.0}
    x = np.arange(nx) - 160.0
    y = np.arange(ny) - 10.0  # y = depth: air above the surface at y = -0.5 mm (voxel edge)
    z = (np.arange(nz) - 11.0) * 10.0
    hu = np.where(y[None, :, None] >= 0, 0.0, -1000.0) * np.ones((nz, ny, nx))  # (z, y, x)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.0, 1.0, 10.0))
    img.SetOrigin((float(x[0]), float(y[0]), float(z[0])))
    ct = create_ct({"cube_hu": img})
    water_mask = np.broadcast_to((y >= 0)[None, :, None], hu.shape)
    sel = np.zeros(hu.shape, np.uint8)
    sel[11, y >= 0, 160] = 1  # central axis
    for d in PROFILE_DEPTHS:
        sel[11, int(np.argmin(np.abs(y - d))), :] = 1
    tgt = np.zeros(hu.shape, np.uint8)
    tgt[11, 20, 160] = 1
    def mask_image(a):  # the masks need the CT's geometry (spacing, origin), or pyRadPlan misplaces them
        m = sitk.GetImageFromArray(a)
        m.CopyInformation(img)
        return m

    body = create_voi(voi_type="OAR", name="body", ct_image=ct, mask=mask_image(sel))
    target = create_voi(voi_type="TARGET", name="target", ct_image=ct, mask=mask_image(tgt))
    cst = StructureSet(vois=[target, body], ct_image=ct)
    out["water_x"], out["water_y"] = x, y
    for L in WATER_FIELDS:
        pln = _plan([0.0], res, WATER_CUTOFF)
        stf = generate_stf(ct, cst, pln)
        beam = stf.beams[0]
        beam.iso_center = np.array([0.0, -0.5, 0.0])  # isocentre on the water surface: SSD = SAD
        ray0 = beam.rays[0]
        c = np.arange(-L / 2 + 2.5, L / 2, 5.0)
        rays = []
        for u in c:
            for v in c:
                p = np.array([u, 0.0, v])
                rays.append(ray0.model_copy(update={"ray_pos_bev": p, "ray_pos": p.copy(),
                                                    "target_point_bev": np.array([2 * u, 1000.0, 2 * v]),
                                                    "target_point": np.array([2 * u, 1000.0, 2 * v])}, deep=True))
        beam.rays = rays
        t0 = time.perf_counter()
        result = calc_dose_forward(ct, cst, stf, pln, np.ones(len(rays)))
        out[f"water_{int(L)}_seconds"] = time.perf_counter() - t0
        d = sitk.GetArrayFromImage(result["physical_dose"])
        out[f"water_{int(L)}_cax"] = d[11, :, 160].astype(np.float64)
        out[f"water_{int(L)}_profiles"] = np.stack([d[11, int(np.argmin(np.abs(y - dd))), :] for dd in PROFILE_DEPTHS])
    out["water_profile_depths"] = np.array(PROFILE_DEPTHS)
    out["water_cutoff_mm"] = np.array(WATER_CUTOFF)
    out["water_fields"] = np.array(WATER_FIELDS)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = argv[0]
    out = {"pyradplan_version": np.array(getattr(pyRadPlan, "__version__", "unknown"))}
    if "--no-tg119" not in argv:
        tg119(out)
    if "--water" in argv:
        water(out)
    np.savez_compressed(path, **out)
    print(json.dumps({k: float(v) for k, v in out.items() if k.endswith("_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
