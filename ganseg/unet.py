"""A compact UNet for part segmentation of real images (the auto-shot student, quality probes).

Only ops that ONNX and TensorRT handle well: conv, batch norm, ReLU, max-pool, bilinear resize,
concat. Width and depth are configurable; input is NCHW float in [-1, 1], output per-class logits
at the input resolution (any size divisible by 2**depth).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UNET_FORMAT = "ganseg.unet/1"


@dataclass
class UNetConfig:
    num_classes: int = 10
    in_channels: int = 3
    width: int = 32   # channels of the first level; doubled at each level down
    depth: int = 4    # number of down-sampling steps
    max_width: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or UNetConfig()
        widths = [min(cfg.width * 2**i, cfg.max_width) for i in range(cfg.depth + 1)]
        self.stem = DoubleConv(cfg.in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(cfg.depth))
        self.up = nn.ModuleList(DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(cfg.depth)))
        self.head = nn.Conv2d(widths[0], cfg.num_classes, 1)
        self.widths = widths

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features, full resolution first (also used as a perceptual feature space)."""
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encode(x)
        y = skips.pop()
        for block in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.head(y)


@torch.no_grad()
def segment_with_unet(unet: UNet, images_uint8: np.ndarray, batch: int = 16) -> np.ndarray:
    """uint8 [N,H,W,3] -> uint8 labels [N,H,W]; sides are reflect-padded to a multiple of 2**depth."""
    from ganseg.images import from_uint8

    images_uint8 = np.asarray(images_uint8)
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images_uint8.dtype} {list(images_uint8.shape)}")
    was_training = unet.training
    unet.eval()
    dev = next(unet.parameters()).device
    m = 2 ** unet.cfg.depth
    out = []
    for i in range(0, len(images_uint8), batch):
        x = from_uint8(images_uint8[i: i + batch]).to(dev).contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        ph, pw = -h % m, -w % m
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph], mode="reflect" if ph < h and pw < w else "replicate")
        out.append(unet(x)[..., :h, :w].argmax(1).to(torch.uint8).cpu().numpy())
    unet.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, *images_uint8.shape[1:3]), np.uint8)


def save_unet(unet: UNet, path: str | os.PathLike, class_names: list[str], extra: dict | None = None) -> None:
    """Weights + UNetConfig + class names (+ `extra`, JSON values) as a tagged safetensors file."""
    from ganseg import tagged

    meta = {"unet_config": unet.cfg.to_dict(), "class_names": list(class_names), **(extra or {})}
    tagged.save(path, unet.state_dict(), UNET_FORMAT, meta)


DEFAULT_UNET = Path(__file__).parent / "weights" / "default_unet.safetensors"
_UNET_HINT = "train one with `ganseg train-unet` and pass its output folder or unet.safetensors"


def load_unet(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> UNet:
    """A trained UNet (eval mode) from OUT/ or OUT/unet.safetensors; `.class_names`, `.meta` attached.

    path None: the bundled default UNet (auto-shot, distilled from the bundled generator). An
    unusable file raises `ganseg.tagged.TaggedFileError` (a UserError and ValueError; a missing one
    also a FileNotFoundError) naming the file and the fix.
    """
    from ganseg import tagged

    path = Path(path) if path is not None else DEFAULT_UNET
    if path.is_dir():
        path = path / "unet.safetensors"
    hint = _UNET_HINT if path != DEFAULT_UNET else f"the bundled default UNet is missing from this install; {_UNET_HINT}"
    state, meta = tagged.load(path, UNET_FORMAT, what="ganseg UNet", hint=hint)
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise tagged.TaggedFileError(f"{path}: its 'class_names' metadata is not a list of names; {_UNET_HINT}")
    try:
        if not isinstance(meta.get("unet_config"), dict):
            raise TypeError("no 'unet_config' object in its metadata")
        cfg = UNetConfig(**meta["unet_config"])
    except TypeError as exc:  # missing, or unknown fields
        raise tagged.TaggedFileError(f"{path}: its UNetConfig is invalid ({exc}); {_UNET_HINT}") from None
    unet = UNet(cfg)
    try:
        unet.load_state_dict(state)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:200]
        raise tagged.TaggedFileError(f"{path}: weights do not fit its UNetConfig ({msg}); {_UNET_HINT}") from None
    unet.class_names = names
    unet.meta = {k: v for k, v in meta.items() if k not in ("format", "unet_config")}
    return unet.eval().to(device)
