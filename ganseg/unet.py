"""A compact UNet for part segmentation of real images (the auto-shot student, quality probes).

Only ops that ONNX and TensorRT handle well: conv, batch norm, ReLU, max-pool, bilinear resize,
concat. Width and depth are configurable; input is NCHW float in [-1, 1], output per-class logits
at the input resolution (any size divisible by 2**depth).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
