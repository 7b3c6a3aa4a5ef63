"""Training and evaluating the dose-region model (patent 000, para. 144-153).

:func:`train_region_model` fits :func:`~rtlab.methods.region_model.net.build_unet` with BCE + soft
Dice loss (deterministic for a fixed seed); :func:`evaluate_model` scores predictions on a split
with the region metrics of :mod:`rtlab.methods.region_model.metrics`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..._lazy import load
from ..._util import check_positive, is_int
from .data import RegionDataset
from .metrics import dice, surface_distances
from .net import RegionModel, build_unet

torch = load("torch", extra="ml", purpose="training the dose-region model")

__all__ = ["TrainConfig", "train_region_model", "evaluate_model"]


@dataclass
class TrainConfig:
    """Training settings (see :func:`train_region_model`).

    ``lr`` is Adam's initial learning rate, decayed by a cosine schedule to ``lr * 0.05`` (the
    patent's "initial learning rate and attenuation strategy", para. 153); the loss is
    ``BCE + dice_weight * (1 - soft Dice)``; ``augment`` flips along z and x, symmetries of
    the synthetic cases' coplanar equispaced beam sets (gantry angles k 360/n); ``level`` is
    the reference isodose as a fraction of ``d_ref`` (see :class:`RegionDataset`).
    """

    epochs: int = 30
    batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-5
    dice_weight: float = 1.0
    base: int = 8
    depth: int = 3
    sdf: bool = True
    augment: bool = True
    seed: int = 0
    level: float = 1.0
    patience: int | None = None
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # CPU threads for torch during training (None: torch's default)

    def __post_init__(self):
        for k in ("epochs", "batch_size", "base", "depth"):
            v = getattr(self, k)
            if not is_int(v) or v < 1:
                raise ValueError(f"TrainConfig.{k} must be a positive integer, got {v!r}")
        check_positive("TrainConfig.lr", self.lr)
        check_positive("TrainConfig.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("TrainConfig.dice_weight", self.dice_weight, allow_zero=True)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _soft_dice_loss(torch, logits, y, eps: float = 1.0):
    p = torch.sigmoid(logits)
    dims = tuple(range(1, p.ndim))
    inter = (p * y).sum(dims)
    return (1.0 - (2.0 * inter + eps) / (p.sum(dims) + y.sum(dims) + eps)).mean()


def _batch_dice(pred: np.ndarray, y: np.ndarray) -> list[float]:
    return [dice(p, t) for p, t in zip(pred, y)]


def train_region_model(data, config: TrainConfig | None = None, *, train_idx=None, val_idx=None,
                       progress: bool = True, callback: Callable[[dict], object] | None = None) -> RegionModel:
    """Train the dose-region prediction model (patent 000, para. 139-153, FIG 9).

    Parameters
    ----------
    data : RegionDataset or path
        The data set; its ``train`` / ``val`` splits are used unless indices are given.
    config : TrainConfig, optional
    train_idx, val_idx : sequence of int, optional
        Override the manifest's split.
    progress : bool
        ``tqdm.auto`` bar over epochs.
    callback : callable, optional
        ``callback(epoch_record)`` after each epoch (keys ``epoch, train_loss, val_loss,
        val_dice, lr, time_s``); returning ``True`` stops training.

    Returns
    -------
    RegionModel
        With the weights of the epoch of best validation Dice (last epoch if no validation
        set) and ``record``: per-epoch losses, ``best_epoch``, ``best_val_dice``, ``time_s``,
        ``device``, ``n_train``, ``n_val``, ``n_params``, ``torch``.

    Notes
    -----
    Deterministic for a fixed ``config.seed`` on a given device: ``torch.manual_seed``,
    a seeded numpy generator for shuffling/augmentation, and
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` during training (restored
    afterwards). On CUDA, set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for full determinism.
    """
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    ds = data if isinstance(data, RegionDataset) else RegionDataset(data, cfg.level)
    if ds.level != cfg.level:
        raise ValueError(f"the data set was loaded at level {ds.level} but config.level is {cfg.level}")
    tr = ds.split("train") if train_idx is None else list(train_idx)
    va = ds.split("val") if val_idx is None else list(val_idx)
    if not tr:
        raise ValueError("the training set is empty; generate more cases or change the split")
    bad = [i for i in list(tr) + list(va) if not 0 <= int(i) < len(ds)]
    if bad:
        raise ValueError(f"case indices {bad[:5]} are out of range for a data set of {len(ds)} cases")
    xtr, ytr = ds.arrays(tr, cfg.sdf)
    xva, yva = ds.arrays(va, cfg.sdf) if va else (None, None)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    prev_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    try:
        net = build_unet(xtr.shape[1], cfg.base, cfg.depth).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.05)
        bce = torch.nn.BCEWithLogitsLoss()
        Xva = torch.from_numpy(xva).to(device) if xva is not None else None
        Yva = torch.from_numpy(yva).to(device) if yva is not None else None
        epochs, best, best_state, best_epoch, stale = [], -1.0, None, 0, 0
        t_start = time.perf_counter()
        bar = None
        if progress:
            bar = tqdm(total=cfg.epochs, desc="train region model", leave=False)
        for ep in range(cfg.epochs):
            t0 = time.perf_counter()
            net.train()
            perm = rng.permutation(len(tr))
            losses = []
            for s in range(0, len(perm), cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                xb, yb = xtr[idx].copy(), ytr[idx].copy()
                if cfg.augment:
                    for k in range(len(idx)):
                        for ax in (1, 3):  # z and x of (C, z, y, x)
                            if rng.uniform() < 0.5:
                                xb[k] = np.flip(xb[k], ax)
                                yb[k] = np.flip(yb[k], ax)
                X = torch.from_numpy(np.ascontiguousarray(xb)).to(device)
                Y = torch.from_numpy(np.ascontiguousarray(yb)).to(device)
                opt.zero_grad()
                logits = net(X)
                loss = bce(logits, Y) + cfg.dice_weight * _soft_dice_loss(torch, logits, Y)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()) * len(idx))
            lr = float(opt.param_groups[0]["lr"])
            sched.step()
            rec = {"epoch": ep + 1, "train_loss": float(np.sum(losses) / len(tr)), "lr": lr}
            if Xva is not None:
                net.eval()
                with torch.no_grad():
                    lv = net(Xva)
                    rec["val_loss"] = float(bce(lv, Yva) + cfg.dice_weight * _soft_dice_loss(torch, lv, Yva))
                    pv = (torch.sigmoid(lv) >= 0.5).cpu().numpy()[:, 0]
                rec["val_dice"] = float(np.mean(_batch_dice(pv, yva[:, 0] > 0.5)))
                score = rec["val_dice"]
            else:
                score = -rec["train_loss"]
            rec["time_s"] = round(time.perf_counter() - t0, 3)
            epochs.append(rec)
            if score > best:
                best, best_epoch, stale = score, ep + 1, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", val_dice=f"{rec.get('val_dice', float('nan')):.3f}")
            if callback is not None and callback(rec) is True:
                break
            if cfg.patience is not None and stale >= cfg.patience:
                break
        if bar is not None:
            bar.close()
        net.load_state_dict(best_state)
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)
    record = {
        "epochs": epochs, "best_epoch": best_epoch, "time_s": round(time.perf_counter() - t_start, 2),
        "device": str(device), "n_train": len(tr), "n_val": len(va), "torch": torch.__version__,
        "n_params": int(sum(p.numel() for p in net.parameters())), "dataset": str(ds.path),
        "planner": ds.manifest.get("planner"), "train_idx": [int(i) for i in tr], "val_idx": [int(i) for i in va],
    }
    if va:
        record["best_val_dice"] = float(best)
    config = {"in_channels": int(xtr.shape[1]), **cfg.to_dict(), "device": None,
              "spacing": ds.manifest.get("spacing"), "shape": ds.manifest.get("shape")}
    return RegionModel(net.cpu().eval() if device != "cpu" else net.eval(), config, record)


def evaluate_model(model: RegionModel, data, split: str = "test", indices=None, threshold: float = 0.5):
    """Per-case Dice and surface distances of the predicted vs the optimised dose regions.

    Returns
    -------
    pandas.DataFrame
        One row per case: ``index, dice, asd_mm, hd95_mm`` and the same for the trivial
        baseline "dose region = target" (``dice_target, asd_target_mm, hd95_target_mm``).
    """
    ds = data if isinstance(data, RegionDataset) else RegionDataset(data, model.config.get("level", 1.0))
    idx = ds.split(split) if indices is None else list(indices)
    if not idx:
        raise ValueError(f"split {split!r} is empty")
    x, _ = ds.arrays(idx, model.config.get("sdf", True))
    probs = np.concatenate([model.predict_proba(None, None, None, batch_inputs=x[s:s + 8]) for s in range(0, len(idx), 8)])
    rows = []
    for k, i in enumerate(idx):
        c = ds.cases[i]
        pred = (probs[k] >= threshold) & c["body"]
        ref = c["region"]
        sp = c["grid"].spacing
        row = {"index": int(i), "dice": dice(pred, ref), "dice_target": dice(c["target"], ref)}
        if pred.any() and ref.any():
            sd = surface_distances(pred, ref, sp)
            row.update(asd_mm=sd["asd"], hd95_mm=sd["hd95"])
        else:
            row.update(asd_mm=float("nan"), hd95_mm=float("nan"))
        if ref.any():
            st = surface_distances(c["target"], ref, sp)
            row.update(asd_target_mm=st["asd"], hd95_target_mm=st["hd95"])
        rows.append(row)
    return pd.DataFrame(rows)
