"""Figures of interactive dose shaping: the paper's phantom experiment and its isodose panels (paper 004).

* :func:`reproduce_paper` -- one OAR rim voxel lowered to 55 %, then recovery (figure 5);
* :func:`isodose_contours`, :func:`plot_isodose_panels` -- isodose lines and the three panels.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import binary_erosion
from skimage.measure import find_contours

from ...phantoms import get_phantom
from .session import IDSSession

__all__ = ["reproduce_paper", "isodose_contours", "plot_isodose_panels"]


def isodose_contours(dose, z_index: int, levels_pct=(55, 95, 107), reference_gy: float = 1.0) -> dict:
    """Isodose lines on slice ``z_index``: ``{level_pct: [ (n, 2) arrays of (y, x) voxel coordinates ]}``."""
    sl = np.asarray(dose)[int(z_index)] / reference_gy * 100.0
    return {float(lv): find_contours(sl, float(lv)) for lv in levels_pct}


def reproduce_paper(case=None, n_steps: int = 25, dose_pct: float = 55.0, kernel_sigma_mm="w2",
                    session_kwargs=None) -> dict:
    """Paper 004's phantom experiment: lower one OAR rim voxel to 55 %, then ``n_steps`` recoveries.

    Start: 9 open fields conforming to the target (median target dose 100 %). The voxel is the
    OAR rim voxel on the central slice closest to the target's closed (posterior, "bottom")
    side (paper 004, figure 5: "at the bottom of the OAR"). ``kernel_sigma_mm`` is the width
    of the patch kernel ``K`` (default ``'w2'``, the paper's choice: the machine's second lateral
    component; ``3.0`` for the narrow option, see ``docs/methods/ids.md``). ``session_kwargs``
    go to :class:`IDSSession` (e.g. ``step_rule='voxel'`` for Algorithm 1's exact scale).

    Returns
    -------
    dict
        ``session``, ``voxel``, ``z``, ``contours`` (``'before'``, ``'modified'``,
        ``'recovered'`` -> :func:`isodose_contours`), ``doses`` (the three cubes),
        ``target_ge95_fraction`` (before / modified / recovered), ``rim_dose_pct`` (same),
        ``timings``.
    """
    if case is None:
        case = get_phantom("horseshoe")
    kw = dict(kernel_sigma_mm=kernel_sigma_mm)
    kw.update(session_kwargs or {})
    s = IDSSession(case, **kw)
    ref = s.reference_gy
    oar = s.oar_mask
    zc = int(np.round(np.mean(np.nonzero(oar)[0])))
    rim = oar[zc] & ~binary_erosion(oar[zc])
    ys, xs = np.nonzero(rim)
    xc = np.mean(np.nonzero(oar[zc])[1])
    cand = np.abs(xs - xc) <= 0.5 + np.abs(xs - xc).min()
    j = np.flatnonzero(cand)[np.argmax(ys[cand])]
    vox = (zc, int(ys[j]), int(xs[j]))
    out = {"session": s, "voxel": vox, "z": zc, "doses": {}, "contours": {}, "target_ge95_fraction": {},
           "rim_dose_pct": {}, "target_min_pct": {}}

    def snap(name):
        d = s.dose.copy()
        out["doses"][name] = d
        out["contours"][name] = isodose_contours(d, zc, (55, 95, 107), ref)
        out["target_ge95_fraction"][name] = s.target_coverage(95.0)
        out["rim_dose_pct"][name] = 100 * s.dose_at(vox) / ref
        out["target_min_pct"][name] = 100 * float(d[s.target_mask].min()) / ref

    snap("before")
    t0 = time.perf_counter()
    s.request_voxel(vox, dose_pct / 100 * ref, recover=0)
    snap("modified")
    s.recover(n_steps)
    out["request_s"] = time.perf_counter() - t0
    snap("recovered")
    return out


def plot_isodose_panels(result: dict, ax=None):
    """Three panels (before / after modification / after recovery) of :func:`reproduce_paper`'s isodoses."""
    s = result["session"]
    z = result["z"]
    if ax is None:
        fig, ax = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    else:
        fig = ax[0].figure
    colors = {55.0: "tab:blue", 95.0: "tab:green", 107.0: "tab:red"}
    titles = {"before": "before modification", "modified": "after modification", "recovered": "after recovery"}
    for a, name in zip(ax, ("before", "modified", "recovered")):
        a.imshow(result["doses"][name][z] / s.reference_gy * 100, cmap="gray", vmin=0, vmax=120)
        for m, c in ((s.target_mask, "yellow"), (s.oar_mask, "cyan")):
            a.contour(m[z].astype(float), [0.5], colors=c, linewidths=0.8)
        for lv, lines in result["contours"][name].items():
            for k, ln in enumerate(lines):
                a.plot(ln[:, 1], ln[:, 0], color=colors.get(lv, "k"), lw=1.2, label=f"{lv:g} %" if k == 0 else None)
        a.plot(result["voxel"][2], result["voxel"][1], "w.", ms=8)
        a.set_title(f"{titles[name]}: PTV >= 95 %: {100 * result['target_ge95_fraction'][name]:.1f} %")
        a.set_axis_off()
    ax[0].legend(loc="lower left", fontsize=8)
    return fig
