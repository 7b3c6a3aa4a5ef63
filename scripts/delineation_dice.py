"""Dice of rtlab's automatic delineation (a stand-in for a clinical auto-contouring model) on the TG-119 phantoms.

For each built-in TG-119 phantom (5 mm voxels) a test patient is made with
:func:`rtlab.methods.delineation.perturb_case` - CT noise only, or the anatomy scaled about the
body centre (0.94, 0.95, 0.92 in z, y, x), shifted (3, -2.5, 4) mm and 200 HU noise - and
delineated by :func:`rtlab.methods.delineation.delineate_case` (body by HU threshold, every
other structure from the phantom's own atlas entry) with each registration; the Dice of every
structure against the moved ground truth is printed as a markdown table (or ``--json``: one
line). Region growing is measured on a target given HU contrast (60 or 40 HU on 20 HU noise).
The numbers are those of docs/methods/delineation.md and tests/test_delineation.py.

Usage::

    python scripts/delineation_dice.py [--spacing 5] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage

from rtlab.core.case import Case
from rtlab.methods.delineation import REGISTRATIONS, delineate_case, perturb_case
from rtlab.phantoms import get_phantom

TG119 = ["tg119_cshape_easy", "tg119_cshape_hard", "tg119_multitarget", "tg119_prostate", "tg119_headneck"]
PERTURB = dict(scale=(0.94, 0.95, 0.92), shift_mm=(3.0, -2.5, 4.0), noise_hu=200.0, seed=1)
GROW = [("tg119_prostate", "CTV"), ("tg119_multitarget", "CenterTarget"), ("tg119_headneck", "PTV"),
        ("tg119_cshape_easy", "PTV")]


def measure(spacing: float) -> dict:
    rows = []
    for name in TG119:
        c = get_phantom(name, spacing=spacing)
        settings = [("noise 200 HU", dict(noise_hu=200.0, seed=1), "moments")]
        settings += [("scaled+shifted, noise 200 HU", PERTURB, r) for r in REGISTRATIONS]
        for label, kw, reg in settings:
            p = perturb_case(c, **kw)
            _, rep = delineate_case(p, structures="all", registration=reg)
            rows.append(dict(case=name, patient=label, registration=reg, dice=rep["dice"],
                             targets=[s.name for s in c.structures.targets]))
    grow = []
    for name, tgt in GROW:
        c = get_phantom(name, spacing=spacing)
        m = c.structures[tgt].mask
        seed = c.grid.index_to_world(np.unravel_index(np.argmax(ndimage.distance_transform_edt(m)), m.shape))
        for hu in (60.0, 40.0):
            ct = c.ct.copy()
            ct[m] = hu
            p = perturb_case(Case(c.name, c.grid, ct, c.structures, beams=c.beams, meta=c.meta), noise_hu=20.0, seed=2)
            _, rep = delineate_case(p, seeds={tgt: seed}, structures=[tgt])
            grow.append(dict(case=name, target=tgt, contrast_hu=hu, noise_hu=20.0, dice=rep["dice"][tgt]))
    return dict(spacing_mm=spacing, atlas=rows, region_growing=grow)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacing", type=float, default=5.0, help="phantom voxel size (mm)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the tables")
    a = ap.parse_args(argv)
    r = measure(a.spacing)
    if a.json:
        print(json.dumps(r))
        return 0
    print("| case | test patient | registration | Body | targets | other structures |")
    print("|---|---|---|---|---|---|")
    for row in r["atlas"]:
        d = row["dice"]
        t = ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k in row["targets"])
        o = ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k not in row["targets"] and k != "Body")
        print(f"| {row['case']} | {row['patient']} | {row['registration']} | {d['Body']:.4f} | {t} | {o or '-'} |")
    print()
    print("| case | target | contrast (HU) | noise (HU) | Dice |")
    print("|---|---|---|---|---|")
    for g in r["region_growing"]:
        print(f"| {g['case']} | {g['target']} | {g['contrast_hu']:g} | {g['noise_hu']:g} | {g['dice']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
