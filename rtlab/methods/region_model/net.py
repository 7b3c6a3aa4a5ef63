"""The network of the dose-region model: a small 3D U-Net (patent 000, para. 131/148) and its wrapper.

:func:`build_unet` maps ``(N, C, z, y, x)`` inputs (:func:`~rtlab.methods.region_model.data.make_inputs`)
to region logits; :class:`RegionModel` predicts, saves and loads. PyTorch (the ``[ml]`` extra) is
bound through :func:`rtlab._lazy.load`: this module imports without it, and a call that needs it
says which extra to install.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..._lazy import load
from ..._util import atomic_path, atomic_write_text, is_int
from ...core.case import Case
from .cases import case_masks
from .data import make_inputs

torch = load("torch", extra="ml", purpose="the dose-region model")

__all__ = ["build_unet", "RegionModel"]


_UNET_CLS = None


def _unet_class():
    global _UNET_CLS
    if _UNET_CLS is not None:
        return _UNET_CLS
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.1, inplace=True),
        )

    class UNet3D(nn.Module):
        """3D U-Net (Cicek et al. 2016): ``depth`` 2x poolings, skip connections, 1 logit out."""

        def __init__(self, in_channels: int, base: int = 8, depth: int = 3):
            super().__init__()
            ch = [base * 2 ** i for i in range(depth + 1)]
            self.depth = depth
            self.enc = nn.ModuleList([block(in_channels, ch[0])] + [block(ch[i - 1], ch[i]) for i in range(1, depth + 1)])
            self.pool = nn.MaxPool3d(2)
            self.up = nn.ModuleList([nn.ConvTranspose3d(ch[i], ch[i - 1], 2, stride=2) for i in range(depth, 0, -1)])
            self.dec = nn.ModuleList([block(2 * ch[i - 1], ch[i - 1]) for i in range(depth, 0, -1)])
            self.head = nn.Conv3d(ch[0], 1, 1)
            nn.init.constant_(self.head.bias, -2.0)  # prior: the dose region is a small part of the image

        def forward(self, x):
            m = 2 ** self.depth
            shp = x.shape[-3:]
            pad = [(-s) % m for s in shp]
            if any(pad):
                x = nn.functional.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
            skips = []
            for i, e in enumerate(self.enc):
                x = e(x)
                if i < self.depth:
                    skips.append(x)
                    x = self.pool(x)
            for up, dec, s in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), s], dim=1))
            x = self.head(x)
            return x[..., : shp[0], : shp[1], : shp[2]]

    _UNET_CLS = UNet3D
    return UNet3D


def build_unet(in_channels: int = 4, base: int = 8, depth: int = 3):
    """A small 3D U-Net (``torch.nn.Module``) mapping ``(N, C, z, y, x)`` to logits ``(N, 1, z, y, x)``.

    Each level: two (3x3x3 conv, instance norm, leaky ReLU) blocks; ``depth`` max-poolings;
    transposed-conv upsampling with skip connections; a 1x1x1 conv head. Inputs of any size
    are zero-padded to a multiple of ``2**depth`` and the output is cropped back. The patent's
    model is "a 3D-UNet" (para. 131, 148); sizes here are rtlab's choice.
    """
    for name, v, lo in (("in_channels", in_channels, 1), ("base", base, 1), ("depth", depth, 1)):
        if not is_int(v) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return _unet_class()(int(in_channels), int(base), int(depth))


class RegionModel:
    """A trained dose-region prediction model: network + configuration + training record.

    Parameters
    ----------
    net : torch.nn.Module
        The U-Net (see :func:`build_unet`).
    config : dict
        ``in_channels``, ``base``, ``depth``, ``sdf`` and training settings.
    record : dict, optional
        Training record (losses per epoch, validation Dice, time, device).
    """

    WEIGHTS = "model.pt"
    CONFIG = "config.json"
    RECORD = "training.json"

    def __init__(self, net, config: dict, record: dict | None = None):
        self.net = net
        self.config = dict(config)
        self.record = dict(record or {})

    def __repr__(self) -> str:
        r = self.record
        vd = f", val Dice {r['best_val_dice']:.3f}" if "best_val_dice" in r else ""
        return f"RegionModel(base={self.config.get('base')}, depth={self.config.get('depth')}{vd})"

    @property
    def n_params(self) -> int:
        return int(sum(p.numel() for p in self.net.parameters()))

    def predict_proba(self, ct, target, organ, spacing=(4.0, 4.0, 4.0), batch_inputs=None) -> np.ndarray:
        """Predicted probability ``(z, y, x)`` float32 that each voxel lies in the dose region
        (patent 000, para. 133: target image in, predicted image out)."""
        x = make_inputs(ct, target, organ, spacing, self.config.get("sdf", True))[None] if batch_inputs is None \
            else np.asarray(batch_inputs, np.float32)
        if x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"inputs have {x.shape[1]} channels, the model expects {self.config['in_channels']}")
        dev = next(self.net.parameters()).device
        self.net.eval()
        with torch.no_grad():
            p = torch.sigmoid(self.net(torch.from_numpy(np.ascontiguousarray(x)).to(dev))).cpu().numpy()
        return p[:, 0] if batch_inputs is not None else p[0, 0]

    def predict(self, ct, target, organ, spacing=(4.0, 4.0, 4.0), threshold: float = 0.5) -> np.ndarray:
        """Predicted dose region (bool ``(z, y, x)``): probability ``>= threshold``."""
        return self.predict_proba(ct, target, organ, spacing) >= threshold

    def predict_case(self, case: Case, threshold: float | None = 0.5) -> np.ndarray:
        """Prediction for a :class:`Case` (target = union of targets, organ = union of OARs),
        restricted to the body; probabilities when ``threshold`` is None."""
        target, organ, body = case_masks(case)
        p = self.predict_proba(case.ct, target, organ, case.grid.spacing) * body
        return p if threshold is None else p >= threshold

    def save(self, path) -> Path:
        """Write ``model.pt`` (state_dict), ``config.json`` and ``training.json`` atomically."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        with atomic_path(d / self.WEIGHTS) as tmp:
            torch.save(state, tmp)
        atomic_write_text(d / self.CONFIG, json.dumps(self.config, indent=1, sort_keys=True))
        atomic_write_text(d / self.RECORD, json.dumps(self.record, indent=1, sort_keys=True))
        return d

    @classmethod
    def load(cls, path, device: str = "cpu") -> "RegionModel":
        """Load a model directory written by :meth:`save`."""
        d = Path(path)
        for f in (cls.WEIGHTS, cls.CONFIG):
            if not (d / f).is_file():
                raise ValueError(f"{d} has no {f}; pass a directory written by RegionModel.save")
        try:
            config = json.loads((d / cls.CONFIG).read_text())
            record = json.loads((d / cls.RECORD).read_text()) if (d / cls.RECORD).is_file() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{d}: config/training JSON is invalid ({e})") from None
        for k in ("in_channels", "base", "depth"):
            if k not in config:
                raise ValueError(f"{d / cls.CONFIG} lacks {k!r}; it is not a RegionModel config")
        net = build_unet(config["in_channels"], config["base"], config["depth"])
        try:
            state = torch.load(d / cls.WEIGHTS, map_location=device, weights_only=True)
            net.load_state_dict(state)
        except Exception as e:
            raise ValueError(f"{d / cls.WEIGHTS} is not a state_dict of this network ({type(e).__name__}: {e})") from None
        return cls(net.to(device), config, record)
