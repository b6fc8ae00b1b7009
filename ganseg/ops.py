"""The fused feature op: project each generator layer at its own resolution, resample, accumulate.

ReGAN's pixel representation is concat_l resize(F_l, S): 5056 channels for a 1024² generator,
5.3 GB per image at 512² if built. Every head's first layer is a 1x1 conv W over that stack, and
both resize modes used (bilinear up, area down) are linear and act per channel, so

    W · concat_l resize(F_l, S) + b  ==  Σ_l resize(W_l · F_l, S) + b

where W_l is W's column block for layer l. The right side never holds more than the K-channel
output plus one projected layer. Autograd through it is just as lean: interpolation's backward
needs no saved input, and the 1x1 conv's backward needs F_l, which the generator produced anyway.

`resample_accumulate` is the fused op; `resample_accumulate_reference` builds the stack (same
signature) and is the parity reference for it and for the CUDA kernel that replaces it on GPU.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """ReGAN's resize: bilinear up for smaller maps, area down for larger, identity when equal."""
    r = x.shape[-1]
    if r == size:
        return x
    if r < size:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=align_corners)
    return F.adaptive_avg_pool2d(x, size)


def split_weight(weight: torch.Tensor, channels: Sequence[int]) -> list[torch.Tensor]:
    """[K, sum(C_l)] (or a 1x1 conv weight) -> per-layer blocks [K, C_l]."""
    w = weight.reshape(weight.shape[0], -1)
    if w.shape[1] != sum(channels):
        raise ValueError(f"weight has {w.shape[1]} input channels, features have {sum(channels)}")
    return list(torch.split(w, list(channels), dim=1))


def project_1x1(f: torch.Tensor, w: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """[N, C, H, W] x [K, C] -> [N, K, H, W] as one batched matmul on a view (no layout copies).

    channels_last: the result has NHWC strides (still indexed NCHW), the layout in which CPU
    bilinear resampling runs 5-8x faster; it costs nothing, the matmul writes it directly.
    """
    n, c, h, wd = f.shape
    if channels_last:
        y = torch.matmul(f.reshape(n, c, h * wd).transpose(1, 2), w.to(f.dtype).t())  # [N, HW, K]
        return y.reshape(n, h, wd, -1).permute(0, 3, 1, 2)
    return torch.matmul(w.to(f.dtype), f.reshape(n, c, h * wd)).reshape(n, -1, h, wd)


def _check(feats: Sequence[torch.Tensor]) -> None:
    if not feats:
        raise ValueError("no feature maps given")
    n = feats[0].shape[0]
    for i, f in enumerate(feats):
        if f.ndim != 4 or f.shape[0] != n or f.shape[2] != f.shape[3]:
            raise ValueError(f"feature {i} must be [N, C, R, R] with N={n}, got {list(f.shape)}")


def resample_accumulate(feats: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                        size: int, align_corners: bool = False) -> torch.Tensor:
    """Σ_l resize(W_l · F_l, size) + b, never materializing the channel stack.

    feats: per-layer maps [N, C_l, R_l, R_l]; weight [K, ΣC_l] (or [K, ΣC_l, 1, 1]); bias [K].
    Returns [N, K, size, size].
    """
    _check(feats)
    blocks = split_weight(weight, [f.shape[1] for f in feats])
    # NHWC resampling vectorizes over channels: 2-7x faster on CPU from 16 output channels up
    # (a CNN/MLP head's first layer), slower below (a linear head's K classes). Same values.
    nhwc = blocks[0].shape[0] >= 16
    # Layers that share a resolution are projected and summed *before* resizing (resize is linear),
    # so each resolution is resampled once: 5 resizes instead of 9 for a 64² generator.
    by_res: dict[int, torch.Tensor] = {}
    out = None
    for f, w in zip(feats, blocks):
        r = f.shape[-1]
        if r <= size:  # project first where the map is small (cheaper)
            y = project_1x1(f, w, channels_last=nhwc)
            by_res[r] = y if r not in by_res else by_res[r].add_(y)
        else:  # resize first where it is large
            y = project_1x1(resize(f, size, align_corners), w, channels_last=nhwc)
            out = y if out is None else out.add_(y)
    for r in sorted(by_res):
        y = resize(by_res[r], size, align_corners)
        # in place: neither resize's nor the matmul's backward needs its output, so this is safe
        out = y if out is None else out.add_(y)
    return out if bias is None else out + bias.to(out.dtype)[None, :, None, None]


def materialize(feats: Sequence[torch.Tensor], size: int, align_corners: bool = False) -> torch.Tensor:
    """concat_l resize(F_l, size): the [N, ΣC_l, S, S] stack (what the fused op avoids)."""
    _check(feats)
    return torch.cat([resize(f, size, align_corners) for f in feats], dim=1)


def resample_accumulate_reference(feats: Sequence[torch.Tensor], weight: torch.Tensor,
                                  bias: torch.Tensor | None, size: int,
                                  align_corners: bool = False) -> torch.Tensor:
    """Materialized reference with the same signature as `resample_accumulate`."""
    stack = materialize(feats, size, align_corners)
    w = weight.reshape(weight.shape[0], -1)
    if w.shape[1] != stack.shape[1]:
        raise ValueError(f"weight has {w.shape[1]} input channels, features have {stack.shape[1]}")
    return F.conv2d(stack, w[:, :, None, None].to(stack.dtype), bias)
