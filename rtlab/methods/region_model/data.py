"""Data sets of the dose-region model: one compressed, byte-reproducible ``.npz`` per case.

:func:`generate_dataset` plans random cases (:mod:`~rtlab.methods.region_model.cases`,
:mod:`~rtlab.methods.region_model.planner`) and writes int16 CT, bit-packed masks and region,
dose in cGy as uint16, plus a ``manifest.json`` (seeds, parameters, planner, reference level, CI,
split 150/25/25 as patent 000 para. 144); :func:`load_dataset` reads it back as a
:class:`RegionDataset`; :func:`make_inputs` stacks a case's network input channels.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..._util import atomic_path, atomic_write_text, check_finite, check_positive, is_int
from ...core.case import Case
from ...core.geometry import Grid, signed_distance
from .cases import case_masks, random_case
from .planner import PlanOutcome, get_planner, paddick_ci_of

__all__ = ["generate_dataset", "load_dataset", "load_case_file", "RegionDataset", "make_inputs", "split_counts", "FORMAT", "MANIFEST"]


FORMAT = "rtlab-region-case/1"
MANIFEST = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same inputs -> byte-identical files


def _write_npz(path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a compressed ``.npz`` atomically and byte-reproducibly (fixed zip timestamps)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[key], order="C"), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
    return Path(path)


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool).ravel())


def _unpack(packed: np.ndarray, shape) -> np.ndarray:
    n = int(np.prod(shape))
    return np.unpackbits(np.asarray(packed, np.uint8), count=n).astype(bool).reshape(tuple(shape))


def _case_arrays(case: Case, outcome: PlanOutcome, meta: dict) -> dict:
    target, organ, body = case_masks(case)
    dose = case.grid.check_array("outcome.dose", outcome.dose).astype(np.float64)
    check_finite("outcome.dose", dose)
    if dose.max() > 655.0:
        raise ValueError("outcome.dose exceeds 655 Gy, which the uint16 cGy storage cannot hold")
    region = body & (dose >= outcome.d_ref)
    return {
        "format": np.frombuffer(FORMAT.encode(), np.uint8),
        "shape": np.asarray(case.grid.shape, np.int64),
        "spacing": np.asarray(case.grid.spacing, np.float64),
        "origin": np.asarray(case.grid.origin, np.float64),
        "ct": np.clip(np.rint(case.ct), -32768, 32767).astype(np.int16),
        "target": _pack(target), "organ": _pack(organ), "body": _pack(body), "region": _pack(region),
        "dose_cgy": np.clip(np.rint(dose * 100.0), 0, 65535).astype(np.uint16),
        "d_ref": np.asarray(outcome.d_ref, np.float64),
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
    }


def load_case_file(path) -> dict:
    """Read one case file written by :func:`generate_dataset`.

    Returns
    -------
    dict
        ``ct`` (float32 HU), ``target``, ``organ``, ``body``, ``region`` (bool), ``dose`` (float32
        Gy, 0.01 Gy resolution), ``d_ref`` (Gy), ``grid`` (:class:`Grid`), ``meta`` (dict).

    Raises
    ------
    ValueError
        If the file is not an rtlab region-case npz or its arrays are inconsistent.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p} does not exist or is not a file; pass a case_*.npz written by generate_dataset")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError ...
        raise ValueError(f"{p} is not a readable .npz file ({type(e).__name__}: {e}); "
                         "regenerate it with rtlab.methods.region_model.generate_dataset") from None
    need = {"format", "shape", "spacing", "origin", "ct", "target", "organ", "body", "region", "dose_cgy", "d_ref", "meta"}
    missing = sorted(need - set(data))
    if missing or bytes(data.get("format", b"")).decode(errors="replace") != FORMAT:
        raise ValueError(f"{p} is not an rtlab region-case file (format {FORMAT!r}); missing keys {missing}")
    shape = tuple(int(v) for v in data["shape"])
    grid = Grid(shape, tuple(data["spacing"]), tuple(data["origin"]))
    n_packed = (int(np.prod(shape)) + 7) // 8
    for k in ("target", "organ", "body", "region"):
        if data[k].shape != (n_packed,):
            raise ValueError(f"{p}: packed mask {k!r} has {data[k].size} bytes, expected {n_packed} for shape {shape}")
    if data["ct"].shape != shape or data["dose_cgy"].shape != shape:
        raise ValueError(f"{p}: ct/dose shapes {data['ct'].shape}/{data['dose_cgy'].shape} differ from {shape}")
    out = {k: _unpack(data[k], shape) for k in ("target", "organ", "body", "region")}
    out.update(ct=data["ct"].astype(np.float32), dose=data["dose_cgy"].astype(np.float32) / 100.0,
               d_ref=float(data["d_ref"]), grid=grid, meta=json.loads(bytes(data["meta"]).decode()))
    return out


def split_counts(n: int, split) -> tuple[int, int, int]:
    if split is None:
        split = (0.75, 0.125, 0.125)  # the patent's 150/25/25 of 200 (para. 144)
    s = tuple(split)
    if len(s) != 3 or any((not np.isfinite(v)) or v < 0 for v in s):
        raise ValueError(f"split must be three non-negative numbers (train, val, test), got {split!r}")
    if all(float(v).is_integer() for v in s) and sum(s) == n:
        return tuple(int(v) for v in s)
    if sum(s) <= 0:
        raise ValueError(f"split must not be all zero, got {split!r}")
    f = np.asarray(s, float) / sum(s)
    n_val = int(round(f[1] * n))
    n_test = int(round(f[2] * n))
    return n - n_val - n_test, n_val, n_test


def generate_dataset(out, n: int, *, seed: int = 0, shape=(32, 32, 32), spacing=4.0, planner="standin",
                     split=None, prescription: float = 60.0, progress: bool = True,
                     callback: Callable[[int, dict], object] | None = None, overwrite: bool = False) -> Path:
    """Generate ``n`` (target image, dose region) training pairs (patent 000, para. 140-144).

    Case ``i`` is :func:`random_case` with seed ``seed * 1_000_003 + i`` planned by ``planner``;
    it is written to ``out/case_{i:04d}.npz`` (see :func:`load_case_file`) and listed in
    ``out/manifest.json`` with its seed, case parameters, planner name and settings, reference
    level and Paddick CI, together with the train/val/test split (a seeded shuffle). Files are
    written atomically and are byte-identical for the same arguments (fixed zip timestamps;
    planner wall times go to ``out/timings.json``, not into the manifest).

    Parameters
    ----------
    out : path-like
        Output directory (created).
    n : int
        Number of cases (>= 3).
    seed : int
        Data-set seed.
    shape, spacing :
        Grid size (voxels) and voxel size (mm) of every case.
    planner : 'standin', 'conformity' or callable
        See :func:`get_planner`. The stand-in is for tests/quick runs only.
    split : (train, val, test), optional
        Counts summing to ``n``, or fractions; default 0.75/0.125/0.125 (150/25/25 for 200).
    prescription : float
        Reference isodose / prescription (Gy).
    progress : bool
        tqdm bar.
    callback : callable, optional
        ``callback(i, record)`` after each case.
    overwrite : bool
        Allow writing into a directory that already has a manifest.

    Returns
    -------
    Path
        The directory.
    """
    if not is_int(n) or n < 3:
        raise ValueError(f"n must be an integer >= 3 (train, val and test need a case each), got {n!r}")
    if not is_int(seed) or seed < 0:
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    counts = split_counts(int(n), split)
    plan = get_planner(planner)
    pname = getattr(plan, "name", getattr(plan, "__name__", type(plan).__name__))
    outdir = Path(out)
    if (outdir / MANIFEST).exists() and not overwrite:
        raise ValueError(f"{outdir} already holds a data set ({MANIFEST}); pass overwrite=True or another directory")
    outdir.mkdir(parents=True, exist_ok=True)
    it = range(int(n))
    if progress:
        it = tqdm(it, desc="region data", leave=False)
    records, timings = [], []
    for i in it:
        cseed = int(seed) * 1_000_003 + i
        case = random_case(cseed, shape=shape, spacing=spacing, prescription=prescription)
        t0 = time.perf_counter()
        outcome = plan(case)
        dt = time.perf_counter() - t0
        if not isinstance(outcome, PlanOutcome):
            raise TypeError(f"planner returned {type(outcome).__name__}; it must return a PlanOutcome")
        info = {k: v for k, v in outcome.info.items() if k != "time_s"}
        target = case.structures["PTV"].mask
        region = outcome.dose >= outcome.d_ref
        rec = {
            "file": f"case_{i:04d}.npz", "index": i, "seed": cseed, "params": case.meta["region_params"],
            "planner": pname, "d_ref": float(outcome.d_ref), "reference_level": "prescription (100 %)",
            "ci": round(paddick_ci_of(region & case_masks(case)[2], target), 6), "planner_info": info,
            "n_target": int(target.sum()), "n_region": int(region.sum()),
        }
        _write_npz(outdir / rec["file"], _case_arrays(case, outcome, rec))
        records.append(rec)
        timings.append({"file": rec["file"], "plan_s": round(dt, 4)})
        if callback is not None:
            callback(i, rec)
    order = np.random.default_rng(int(seed) + 12345).permutation(int(n)).tolist()
    ntr, nva, _ = counts
    manifest = {
        "format": "rtlab-region-dataset/1", "n": int(n), "seed": int(seed), "shape": list(records[0]["params"]["shape"]),
        "spacing": records[0]["params"]["spacing"], "prescription": float(prescription), "planner": pname,
        "planner_settings": plan.settings() if hasattr(plan, "settings") else {},
        "splits": {"train": sorted(order[:ntr]), "val": sorted(order[ntr:ntr + nva]), "test": sorted(order[ntr + nva:])},
        "cases": records,
    }
    atomic_write_text(outdir / "timings.json", json.dumps(timings, indent=1))
    atomic_write_text(outdir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return outdir


def make_inputs(ct, target, organ, spacing=(4.0, 4.0, 4.0), sdf: bool = True) -> np.ndarray:
    """Network input channels ``(C, z, y, x)`` float32 from CT and masks (the "target image").

    Channels: ``clip(HU / 1000, -1, 2)``; target mask; organ mask; and, when ``sdf``,
    ``clip(signed distance to the target / 50 mm, -1, 1)`` (negative inside, anisotropic
    spacing, :func:`rtlab.core.geometry.signed_distance`).
    """
    ct = np.asarray(ct)
    if ct.ndim != 3:
        raise ValueError(f"ct must be a 3-D array (z, y, x) in HU, got shape {ct.shape}")
    check_finite("ct", ct.astype(np.float32, copy=False))
    chans = [np.clip(ct.astype(np.float32) / 1000.0, -1.0, 2.0)]
    masks = []
    for name, m in (("target", target), ("organ", organ)):
        m = np.asarray(m)
        if m.shape != ct.shape:
            raise ValueError(f"{name} has shape {m.shape} but ct has {ct.shape}; both must be on the same grid")
        if m.dtype != bool and not np.all((m == 0) | (m == 1)):
            raise ValueError(f"{name} must be a boolean (0/1) mask")
        masks.append(m.astype(bool))
    if not masks[0].any():
        raise ValueError("target is empty; the model needs a delineated target")
    chans += [m.astype(np.float32) for m in masks]
    if sdf:
        chans.append(np.clip(signed_distance(masks[0], spacing) / 50.0, -1.0, 1.0).astype(np.float32))
    return np.stack(chans)


class RegionDataset:
    """A data set directory written by :func:`generate_dataset`, loaded into memory.

    Attributes
    ----------
    path : Path
    manifest : dict
    cases : list of dict
        :func:`load_case_file` output per case (index order).
    level : float
        Reference isodose as a fraction of ``d_ref``: 1.0 (default) uses the stored region;
        another value (e.g. 0.8 for the patent's "low dose region", para. 125) rebuilds the
        label from the stored dose as ``body & (dose >= level * d_ref)`` (0.01 Gy resolution).
    """

    def __init__(self, path, level: float = 1.0):
        self.path = Path(path)
        (self.level,) = check_positive("level (fraction of d_ref)", level)
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise ValueError(f"{self.path} has no {MANIFEST}; generate the data set first "
                             "(rtlab.methods.region_model.generate_dataset or python -m datasets.region_data)")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mf} is not valid JSON ({e}); regenerate the data set") from None
        if self.manifest.get("format") != "rtlab-region-dataset/1":
            raise ValueError(f"{mf} is not an rtlab region data-set manifest")
        self.cases = [load_case_file(self.path / r["file"]) for r in self.manifest["cases"]]
        if self.level != 1.0:
            for c in self.cases:
                c["region"] = c["body"] & (c["dose"] >= self.level * c["d_ref"] - 1e-6)

    def __len__(self) -> int:
        return len(self.cases)

    def split(self, name: str) -> list[int]:
        """Case indices of split ``'train'``, ``'val'`` or ``'test'``."""
        if name not in self.manifest["splits"]:
            raise ValueError(f"split must be one of {list(self.manifest['splits'])}, got {name!r}")
        return list(self.manifest["splits"][name])

    def arrays(self, indices: Sequence[int], sdf: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Stacked inputs ``(N, C, z, y, x)`` and labels ``(N, 1, z, y, x)`` float32."""
        xs, ys = [], []
        for i in indices:
            c = self.cases[i]
            xs.append(make_inputs(c["ct"], c["target"], c["organ"], c["grid"].spacing, sdf))
            ys.append(c["region"][None].astype(np.float32))
        return np.stack(xs), np.stack(ys)


def load_dataset(path, level: float = 1.0) -> RegionDataset:
    """Load a data set directory (see :class:`RegionDataset`)."""
    return RegionDataset(path, level)
