"""The fused feature op: project each generator layer at its own resolution, resample, accumulate.

ReGAN's pixel representation is concat_l resize(F_l, S): 5056 channels for a 1024² generator,
5.3 GB per image at 512² if built. Every head's first layer is a 1x1 conv W over that stack, and
both resize modes used (bilinear up, area down) are linear and act per channel, so

    W · concat_l resize(F_l, S) + b  ==  Σ_l resize(W_l · F_l, S) + b

where W_l is W's column block for layer l. The right side never holds more than the K-channel
output plus one projected layer. Autograd through it is just as lean: interpolation's backward
needs no saved input, and the 1x1 conv's backward needs F_l, which the generator produced anyway.

Three implementations of one signature, chosen per call by `impl=` (the NVlabs torch_utils/ops
pattern):
- "torch": the fused op above in PyTorch ops (one resize + add per resolution). Differentiable.
- "cuda": two kernel launches straight from the features (ganseg/csrc/fused_features.cu): one
  grouped tensor-core GEMM projects every resolution below `size`, then one kernel per output tile
  projects the layers at or above `size` (area-down folded into its operand load), adds the bias
  and the bilinear taps of the small maps, applies the activation and writes the K-channel result
  once; `resample_label` has a variant that writes only label, confidence and entropy. FP32 inputs
  run on TF32 tensor cores: 3xTF32 (FP32 accuracy) unless torch's allow_tf32 opts into plain TF32
  (`tf32_passes`). No host sync, shape-only allocations: capturable in a CUDA graph. Built on first
  use by `ganseg.ops_cuda` (never at import). Forward only: it has no backward.
- "reference": the materialized stack + 1x1 conv (`resample_accumulate_reference`): the parity
  reference, and the memory cost the others avoid.
- "auto" (default): "cuda" for CUDA tensors when no gradient is needed and the extension builds,
  else "torch"; a failed build falls back with ONE warning saying why. The environment variable
  GANSEG_OPS_IMPL (auto | torch | reference | cuda) replaces "auto", e.g. GANSEG_OPS_IMPL=reference
  to rule the fused code out when hunting a numerical difference.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from ganseg.errors import BadInput

IMPLS = ("auto", "cuda", "torch", "reference")
ACTIVATIONS = ("none", "relu", "lrelu")
LEAKY_RELU_SLOPE = 0.2  # ganseg.heads' nn.LeakyReLU(0.2); the kernel's kLeakyReLUSlope
ENV_IMPL = "GANSEG_OPS_IMPL"
MAX_LABEL_CLASSES = 256  # labels are uint8


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


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise BadInput(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The activation the kernel fuses: none, relu, or leaky ReLU with slope 0.2 (the heads')."""
    if activation == "relu":
        return F.relu(x)
    if activation == "lrelu":
        return F.leaky_relu(x, LEAKY_RELU_SLOPE)
    return x


def resolve_impl(impl: str, tensors: Sequence[torch.Tensor | None]) -> str:
    """The implementation a call with these tensors runs: "cuda", "torch" or "reference".

    "auto" (after GANSEG_OPS_IMPL) picks "cuda" only for CUDA tensors that need no gradient and
    only if the extension builds (else "torch", one warning per process). An explicit "cuda" that
    cannot run raises, saying why, instead of silently falling back.
    """
    if impl not in IMPLS:
        raise BadInput(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "auto":
        env = os.environ.get(ENV_IMPL, "").strip().lower()
        if env and env not in IMPLS:
            raise BadInput(f"environment variable {ENV_IMPL}={env!r} is not one of {', '.join(IMPLS)}: "
                           f"unset it or pick one of those")
        impl = env or "auto"
    if impl in ("torch", "reference"):
        return impl
    ts = [t for t in tensors if t is not None]
    on_cuda = bool(ts) and all(t.is_cuda for t in ts)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in ts)
    if impl == "auto":
        if not on_cuda or needs_grad:
            return "torch"
        from ganseg import ops_cuda

        return "cuda" if ops_cuda.try_load() is not None else "torch"
    # explicit "cuda"
    if not on_cuda:
        devices = sorted({str(t.device) for t in ts})
        raise BadInput(f"impl='cuda' needs every tensor on a CUDA device, got {', '.join(devices)}: "
                       f"use impl='auto' (or 'torch') for CPU tensors")
    if needs_grad:
        raise BadInput("impl='cuda' is forward-only (the kernel has no backward) and a gradient is needed here: "
                       "use impl='auto' (which takes the torch path for training) or run under torch.no_grad()")
    from ganseg import ops_cuda

    ops_cuda.load()  # raises RuntimeError with the reason
    return "cuda"


def tf32_passes() -> int:
    """TF32 passes of the kernel's FP32 projection: 1 (plain TF32, ~1e-3 relative error) when
    torch.backends.cuda.matmul.allow_tf32 is set, as torch's own FP32 matmuls would then run;
    else 3 (3xTF32: a = hi + lo, hi.hi + hi.lo + lo.hi on tensor cores, FP32-level error)."""
    return 1 if torch.backends.cuda.matmul.allow_tf32 else 3


def _cuda_args(feats: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None):
    """The kernel's operands: contiguous features, the [K, ΣC_l] weight and [K] bias in their dtype."""
    dtype = feats[0].dtype
    split_weight(weight, [f.shape[1] for f in feats])  # the channel-count check, with its message
    w = weight.reshape(weight.shape[0], -1).to(dtype).contiguous()
    b = None if bias is None else bias.to(dtype).contiguous()
    return [f.contiguous() for f in feats], w, b


def _fused_torch(feats: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, size: int,
                 align_corners: bool) -> torch.Tensor:
    blocks = split_weight(weight, [f.shape[1] for f in feats])
    # NHWC resampling vectorizes over channels on CPU: 2-7x faster from 16 output channels up (a
    # CNN/MLP head's first layer), slower below (a linear head's K classes); same values. Measured
    # on CPU only, so applied on CPU only: CUDA tensors keep NCHW (and use the kernel when they can).
    nhwc = feats[0].device.type == "cpu" and blocks[0].shape[0] >= 16
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


def project_by_resolution(feats: Sequence[torch.Tensor], weight: torch.Tensor, size: int,
                          align_corners: bool = False) -> list[torch.Tensor]:
    """`resample_projected`'s inputs (the plugin's): Σ of W_l · F_l per distinct resolution,
    contiguous NCHW, increasing r.

    Maps larger than `size` are area-pooled to `size` *before* projecting (C_l channels pooled
    instead of a K-channel GEMM at r², e.g. 16x fewer FLOPs for 1024² features at 256²)."""
    blocks = split_weight(weight, [f.shape[1] for f in feats])
    by_res: dict[int, torch.Tensor] = {}
    for f, w in zip(feats, blocks):
        if f.shape[-1] > size:
            f = resize(f, size, align_corners)
        r = f.shape[-1]
        y = project_1x1(f, w)
        by_res[r] = y if r not in by_res else by_res[r].add_(y)
    return [by_res[r].contiguous() for r in sorted(by_res)]


def resample_accumulate(feats: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                        size: int, align_corners: bool = False, activation: str = "none",
                        impl: str = "auto") -> torch.Tensor:
    """act(Σ_l resize(W_l · F_l, size) + b), never materializing the channel stack.

    feats: per-layer maps [N, C_l, R_l, R_l]; weight [K, ΣC_l] (or [K, ΣC_l, 1, 1]); bias [K].
    activation: "none" | "relu" | "lrelu" (slope 0.2), fused into the kernel on CUDA.
    Returns [N, K, size, size] in the features' dtype (the kernel accumulates in fp32).
    """
    _check(feats)
    _check_activation(activation)
    path = resolve_impl(impl, [*feats, weight, bias])
    if path == "reference":
        return resample_accumulate_reference(feats, weight, bias, size, align_corners, activation)
    if path == "cuda":
        from ganseg import ops_cuda

        f, w, b = _cuda_args(feats, weight, bias)
        return ops_cuda.load().fused_accumulate(f, w, b, size, align_corners, ops_cuda.ACTIVATIONS[activation],
                                                tf32_passes())
    return activate(_fused_torch(feats, weight, bias, size, align_corners), activation)


def _check_maps(maps: Sequence[torch.Tensor]) -> None:
    if not maps:
        raise BadInput("no projected maps given")
    n, k = maps[0].shape[:2] if maps[0].ndim == 4 else (None, None)
    for i, m in enumerate(maps):
        if m.ndim != 4 or m.shape[0] != n or m.shape[1] != k or m.shape[2] != m.shape[3]:
            raise BadInput(f"projected map {i} must be [N, K, r, r] with N={n}, K={k}, got {list(m.shape)}")


def resample_projected(maps: Sequence[torch.Tensor], bias: torch.Tensor | None, size: int,
                       align_corners: bool = False, activation: str = "none", impl: str = "auto") -> torch.Tensor:
    """act(Σ_r resize(P_r, size) + b) over already projected maps P_r [N, K, r, r].

    The kernel's own contract, and that of the ONNX `GansegResampleAccumulate` node (TensorRT
    plugin): this is their reference. "reference" and "torch" are the same here (no stack exists).
    """
    _check_maps(maps)
    _check_activation(activation)
    path = resolve_impl(impl, [*maps, bias])
    if path == "cuda":
        from ganseg import ops_cuda

        b = None if bias is None else bias.to(maps[0].dtype).contiguous()
        return ops_cuda.load().resample_accumulate([m.contiguous() for m in maps], b, size, align_corners,
                                                   ops_cuda.ACTIVATIONS[activation])
    out = None
    for m in maps:  # out of place: the caller's maps are never written
        y = resize(m, size, align_corners)
        out = y if out is None else out + y
    if bias is not None:
        out = out + bias.to(out.dtype)[None, :, None, None]
    return activate(out, activation)


def resample_label(feats: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, size: int,
                   align_corners: bool = False,
                   impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel label, confidence and entropy of a linear head (the fused op's output are its logits).

    Returns labels uint8 [N, size, size] (argmax, first index on ties), confidence float32
    [N, size, size] (max softmax probability) and entropy float32 [N, size, size] (nats, of the
    softmax: what `ganseg synthesize` averages into an image's uncertainty). On CUDA one kernel
    pass writes only these maps by an online softmax: the K logits per pixel never reach memory
    (9 bytes per pixel instead of 4K).
    """
    _check(feats)
    if weight.shape[0] > MAX_LABEL_CLASSES:
        raise BadInput(f"resample_label writes uint8 labels: at most {MAX_LABEL_CLASSES} classes, "
                       f"got {weight.shape[0]}")
    path = resolve_impl(impl, [*feats, weight, bias])
    if path == "cuda":
        from ganseg import ops_cuda

        f, w, b = _cuda_args(feats, weight, bias)
        return ops_cuda.load().fused_label(f, w, b, size, align_corners, tf32_passes())
    logits = resample_accumulate(feats, weight, bias, size, align_corners, impl=path).float()
    logp = logits.log_softmax(1)
    return logits.argmax(1).to(torch.uint8), logp.amax(1).exp(), -(logp.exp() * logp).sum(1)


def materialize(feats: Sequence[torch.Tensor], size: int, align_corners: bool = False) -> torch.Tensor:
    """concat_l resize(F_l, size): the [N, ΣC_l, S, S] stack (what the fused op avoids)."""
    _check(feats)
    return torch.cat([resize(f, size, align_corners) for f in feats], dim=1)


def resample_accumulate_reference(feats: Sequence[torch.Tensor], weight: torch.Tensor,
                                  bias: torch.Tensor | None, size: int,
                                  align_corners: bool = False, activation: str = "none") -> torch.Tensor:
    """Materialized reference with the same signature as `resample_accumulate` (less `impl`)."""
    _check_activation(activation)
    stack = materialize(feats, size, align_corners)
    w = weight.reshape(weight.shape[0], -1)
    if w.shape[1] != stack.shape[1]:
        raise ValueError(f"weight has {w.shape[1]} input channels, features have {stack.shape[1]}")
    b = None if bias is None else bias.to(stack.dtype)
    return activate(F.conv2d(stack, w[:, :, None, None].to(stack.dtype), b), activation)
