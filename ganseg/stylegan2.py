"""StyleGAN2 generator (config-f "skip" architecture) and discriminator in plain PyTorch.

One readable file, batch-first, export-friendly ops only (conv2d, conv_transpose2d, linear,
elementwise). Every layer's activation can be tapped: that is the per-pixel representation the
few-shot heads are trained on.

Conventions (shared by the rosinality and NVlabs implementations, whose checkpoints
`ganseg.checkpoints` converts into this module's parameter names):
- Equalized learning rate: weights are stored unscaled and multiplied by 1/sqrt(fan_in) (times the
  layer's lr multiplier) at run time.
- A synthesis conv computes modulate -> conv (transposed conv + [1,3,3,1] blur when it doubles the
  resolution) -> demodulate -> + noise * strength -> + bias -> leaky ReLU(0.2) * sqrt(2)
  -> optional clamp(+-conv_clamp). Its *feature* is that final tensor: the input the next
  layer consumes.
- ToRGB is a 1x1 modulated conv without demodulation; images accumulate through the skip path
  (upsample the running RGB image, add this resolution's ToRGB output). The image is the raw float
  output (about [-1, 1], not clamped).
- Layer i (in order 4x4 conv, 8x8 conv0, 8x8 conv1, ...) uses w+[:, i]; the ToRGB of a resolution uses
  the w of the conv that follows it, exactly as both reference implementations do.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganseg.errors import BadInput

NoiseMode = Literal["random", "const", "none"]
LRELU_GAIN = math.sqrt(2.0)


def default_channels(resolution: int, channel_base: int = 32768, channel_max: int = 512) -> list[int]:
    """Channel widths per resolution 4, 8, ..., `resolution` (NVlabs rule; defaults give config-f: 512 up to 64², then 256, 128, 64, 32 at 1024²)."""
    return [min(channel_base // r, channel_max) for r in resolutions_up_to(resolution)]


def resolutions_up_to(resolution: int) -> list[int]:
    if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
        raise BadInput(f"resolution must be a power of two in [8, 1024], got {resolution}")
    return [2**i for i in range(2, int(math.log2(resolution)) + 1)]


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator; stored as JSON beside its weights."""

    resolution: int = 128
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_hidden: int | None = None  # width of the inner mapping layers; None = w_dim
    mapping_lr_mul: float = 0.01
    channels: list[int] = field(default_factory=list)  # per resolution 4..resolution; [] = NVlabs default
    blur_kernel: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])
    conv_clamp: float | None = None
    img_channels: int = 3

    def __post_init__(self) -> None:
        if not self.channels:
            self.channels = default_channels(self.resolution)
        if len(self.channels) != len(resolutions_up_to(self.resolution)):
            raise BadInput(
                f"channels has {len(self.channels)} entries; resolution {self.resolution} needs "
                f"{len(resolutions_up_to(self.resolution))} (one per resolution from 4)")

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise BadInput(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Pure ops (functions of tensors; the CUDA kernels of later stages mirror these signatures).

def blur_kernel_2d(kernel_1d: Sequence[float]) -> torch.Tensor:
    k = torch.tensor(kernel_1d, dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad, and filter with a (true, flipped) 2-D FIR kernel.

    `pad` = (before, after), applied to both axes; negative values crop.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    weight = (kernel * gain).flip([0, 1]).to(x.dtype)[None, None].expand(c, 1, -1, -1)
    if p0 == p1 >= 0:  # symmetric zero padding: the conv pads for free (no padded copy in memory)
        return F.conv2d(x, weight, padding=p0, groups=c)
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    return F.conv2d(x, weight, groups=c)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Resolution x2 with the blur kernel (the skip path's image upsampling)."""
    kw = kernel.shape[-1]
    return upfirdn2d(x, kernel, up=factor, pad=((kw + factor - 1) // 2, (kw - factor) // 2),
                     gain=factor**2)


def leaky_relu_gain(x: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    x = F.leaky_relu(x, 0.2) * LRELU_GAIN
    return x.clamp(-clamp, clamp) if clamp is not None else x


# --------------------------------------------------------------------------------------------
# Layers

class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate; optional fused lrelu*sqrt(2)."""

    def __init__(self, in_features: int, out_features: int, lr_mul: float = 1.0,
                 bias_init: float = 0.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return leaky_relu_gain(x) if self.activation else x


class MappingNetwork(nn.Module):
    """z -> w: normalize the 2nd moment of z, then an MLP with a 0.01 lr multiplier."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        hidden = cfg.mapping_hidden or cfg.w_dim
        dims = [cfg.z_dim] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mul=cfg.mapping_lr_mul, activation=True)
            for i in range(cfg.mapping_layers))
        # Running mean of w: the truncation centre ("w_avg" / rosinality "latent_avg").
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for layer in self.layers:
            x = layer(x)
        return x


class ModulatedConv2d(nn.Module):
    """Style-modulated conv, computed as modulate-input -> shared conv -> demodulate-output.

    Mathematically the per-sample weight of the paper, but one ordinary conv for the whole batch:
    no grouped conv with data-dependent weights (faster on CPU, friendlier to ONNX/TensorRT).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate = demodulate
        self.up = up
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor, blur: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)  # [N, I]
        weight = self.weight * self.weight_gain
        x = x * styles[:, :, None, None]
        if self.up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            kw, kk = blur.shape[-1], weight.shape[-1]
            p = (kw - 2) - (kk - 1)  # pad so that the output is exactly 2x the input
            x = upfirdn2d(x, blur, pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,k}(W*s)^2 per sample and output channel, as [N, O]
            dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
            x = x * dcoefs[:, :, None, None]
        return x


class StyledConv(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu: one "synthesis layer", one feature tap."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: bool, conv_clamp: float | None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, demodulate=True, up=up)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.resolution = resolution
        self.clamp = conv_clamp  # NVlabs clamps the post-gain activation to +-conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode,
                blur: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x, w, blur)
        if noise is not None:  # explicit per-image noise [N, 1, R, R] (GAN inversion optimizes it)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength
        return leaky_relu_gain(x + self.bias.to(x.dtype)[None, :, None, None], self.clamp)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None else x


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        res = resolutions_up_to(cfg.resolution)
        ch = cfg.channels
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.register_buffer("blur_kernel", blur_kernel_2d(cfg.blur_kernel))
        convs, to_rgbs, info = [], [], []
        for i, r in enumerate(res):
            if i == 0:
                convs.append(StyledConv(ch[0], ch[0], cfg.w_dim, r, up=False, conv_clamp=cfg.conv_clamp))
                info.append((f"b{r}.conv1", r, ch[0]))
            else:
                convs.append(StyledConv(ch[i - 1], ch[i], cfg.w_dim, r, up=True, conv_clamp=cfg.conv_clamp))
                convs.append(StyledConv(ch[i], ch[i], cfg.w_dim, r, up=False, conv_clamp=cfg.conv_clamp))
                info += [(f"b{r}.conv0", r, ch[i]), (f"b{r}.conv1", r, ch[i])]
            to_rgbs.append(ToRGB(ch[i], cfg.img_channels, cfg.w_dim, cfg.conv_clamp))
        self.convs = nn.ModuleList(convs)
        self.to_rgbs = nn.ModuleList(to_rgbs)
        self.feature_info: list[tuple[str, int, int]] = info

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "const", return_features: bool = False,
                noise: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats: list[torch.Tensor] = []
        nz = list(noise) if noise is not None else [None] * len(self.convs)
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        x = self.convs[0](x, ws[:, 0], noise_mode, noise=nz[0])
        feats.append(x)
        img = self.to_rgbs[0](x, ws[:, 1])
        li = 1
        for to_rgb in self.to_rgbs[1:]:
            x = self.convs[li](x, ws[:, li], noise_mode, self.blur_kernel, noise=nz[li])
            feats.append(x)
            x = self.convs[li + 1](x, ws[:, li + 1], noise_mode, noise=nz[li + 1])
            feats.append(x)
            img = upsample2d(img, self.blur_kernel) + to_rgb(x, ws[:, li + 2])
            li += 2
        return img, (feats if return_features else [])


class Generator(nn.Module):
    """StyleGAN2 generator with the ganseg API (`synthesize`, `feature_info`)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    # Shape facts later stages rely on.
    z_dim = property(lambda self: self.cfg.z_dim)
    w_dim = property(lambda self: self.cfg.w_dim)
    num_ws = property(lambda self: self.cfg.num_ws)
    resolution = property(lambda self: self.cfg.resolution)
    img_channels = property(lambda self: self.cfg.img_channels)

    @property
    def feature_info(self) -> list[tuple[str, int, int]]:
        """[(name, resolution, channels)] of every synthesis conv, in the order of `feats`."""
        return list(self.synthesis.feature_info)

    @property
    def device(self) -> torch.device:
        """Where the weights live; `synthesize` moves its inputs here."""
        return self.mapping.w_avg.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mapping.w_avg.dtype

    def _latent(self, x, name: str) -> torch.Tensor:
        """A latent from a tensor, numpy array or nested list -> float tensor on this generator's device.

        Rejects NaN/inf (they would give a NaN image silently); gradients pass through (inversion).
        """
        if isinstance(x, torch.Tensor):
            t = x
        else:
            try:
                arr = np.asarray(x)
            except Exception:  # noqa: BLE001 - ragged lists etc.
                arr = None
            if arr is None or arr.dtype.kind not in "biuf":
                raise BadInput(f"{name} must be a float tensor or numpy array, got {type(x).__name__}")
            t = torch.from_numpy(np.ascontiguousarray(arr))
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
            raise BadInput(f"{name} must hold real numbers, got dtype {t.dtype}")
        t = t.to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(t).all()):
            raise BadInput(f"{name} contains NaN or infinite values; pass finite latents "
                           f"(e.g. z = np.random.RandomState(seed).randn(N, {self.z_dim}))")
        return t

    @staticmethod
    def _psi(psi, name: str = "truncation_psi") -> float:
        if isinstance(psi, torch.Tensor) and psi.numel() == 1:
            psi = psi.item()
        if isinstance(psi, bool) or not isinstance(psi, (int, float, np.integer, np.floating)):
            raise BadInput(f"{name} must be a number, got {psi!r} ({type(psi).__name__}); e.g. {name}=0.7")
        if not math.isfinite(float(psi)):
            raise BadInput(f"{name} must be finite, got {psi}")
        return float(psi)

    def map(self, z: torch.Tensor, truncation_psi: float = 1.0,
            truncation_cutoff: int | None = None) -> torch.Tensor:
        """z [N, z_dim] -> w+ [N, num_ws, w_dim], truncated towards w_avg on layers < cutoff.

        z may be a tensor or a numpy array (moved to `device`); NaN/inf is refused.
        """
        z = self._latent(z, "z")
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise BadInput(f"z must have shape [N, {self.z_dim}], got {list(z.shape)}")
        w = self.mapping(z)
        return self.truncate(w[:, None].expand(-1, self.num_ws, -1), truncation_psi, truncation_cutoff)

    def truncate(self, ws: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
        psi = self._psi(psi)
        if psi == 1.0:
            return ws
        if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, (int, np.integer))):
            raise BadInput(f"truncation_cutoff must be an int or None, got {cutoff!r}")
        w_avg = self.mapping.w_avg
        cut = self.num_ws if cutoff is None else int(cutoff)
        truncated = w_avg + psi * (ws[:, :cut] - w_avg)
        return torch.cat([truncated, ws[:, cut:]], dim=1)

    def _ws(self, z, w, truncation_psi, truncation_cutoff, noise_mode, noise) -> torch.Tensor:
        """Check synthesize's arguments and return w+ [N, num_ws, w_dim]."""
        if noise_mode not in ("random", "const", "none"):
            raise BadInput(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        if (z is None) == (w is None):
            raise BadInput("give exactly one of z or w")
        self._psi(truncation_psi)
        if z is not None:
            ws = self.map(z, truncation_psi, truncation_cutoff)
        else:
            w = self._latent(w, "w")
            if w.ndim == 2 and w.shape[1] == self.w_dim:
                ws = self.truncate(w[:, None].expand(-1, self.num_ws, -1), truncation_psi, truncation_cutoff)
            elif w.ndim == 3 and w.shape[1:] == (self.num_ws, self.w_dim):
                ws = w
            else:
                raise BadInput(f"w must be [N, {self.w_dim}] or [N, {self.num_ws}, {self.w_dim}], "
                               f"got {list(w.shape)}")
        if noise is not None and len(noise) != len(self.synthesis.convs):
            raise BadInput(f"noise needs one map per conv layer ({len(self.synthesis.convs)}), got {len(noise)}")
        return ws

    def synthesize(self, z: torch.Tensor | np.ndarray | None = None, w: torch.Tensor | np.ndarray | None = None,
                   truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                   noise_mode: NoiseMode = "const",
                   noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Generate a batch of images: always returns `img` [N, C, R, R] (raw float, about [-1, 1]).

        Give either `z` [N, z_dim] (mapped, then truncated with `truncation_psi`) or `w`: W [N, w_dim]
        (broadcast to every layer, truncated) or W+ [N, num_ws, w_dim] (used as is; no truncation).
        Latents may be torch tensors or numpy arrays; they are moved to `G.device`, and NaN/inf is an
        error. `noise`, if given, is one [N, 1, R_i, R_i] map per conv layer and overrides `noise_mode`.
        For the per-layer features as well, call `synthesize_features` (same arguments).
        """
        ws = self._ws(z, w, truncation_psi, truncation_cutoff, noise_mode, noise)
        return self.synthesis(ws, noise_mode, False, noise)[0]

    def synthesize_features(self, z: torch.Tensor | np.ndarray | None = None,
                            w: torch.Tensor | np.ndarray | None = None, truncation_psi: float = 1.0,
                            truncation_cutoff: int | None = None, noise_mode: NoiseMode = "const",
                            noise: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`synthesize` plus every synthesis conv's activation: always returns `(img, feats)`.

        feats[i] is [N, C_i, R_i, R_i] as described by `feature_info[i]` (what few-shot heads read).
        """
        ws = self._ws(z, w, truncation_psi, truncation_cutoff, noise_mode, noise)
        return self.synthesis(ws, noise_mode, True, noise)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: NoiseMode = "const") -> torch.Tensor:
        return self.synthesize(z=z, truncation_psi=truncation_psi, noise_mode=noise_mode)


# --------------------------------------------------------------------------------------------
# Discriminator (residual, as StyleGAN2 config-f): used to train generators and, frozen, as an
# offline perceptual feature extractor for GAN inversion.

class EqualConv2d(nn.Module):
    """Conv with equalized lr; `down` blurs then strides by 2 (anti-aliased downsampling)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, down: bool = False,
                 bias: bool = True, activation: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.down = down
        self.activation = activation
        self.kernel_size = kernel_size
        if down:
            self.register_buffer("blur_kernel", blur_kernel_2d(blur_kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down:
            kw, k = self.blur_kernel.shape[-1], self.kernel_size
            p = (kw - 2) + (k - 1)
            x = upfirdn2d(x, self.blur_kernel, pad=((p + 1) // 2, p // 2))
            x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.kernel_size // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)[None, :, None, None]
        return leaky_relu_gain(x) if self.activation else x


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, down=True, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * (1 / math.sqrt(2))


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator with minibatch-stddev; widths mirror the generator's."""

    def __init__(self, resolution: int, channels: Sequence[int] | None = None, img_channels: int = 3,
                 mbstd_group: int = 4):
        super().__init__()
        res = resolutions_up_to(resolution)
        ch = list(channels) if channels else default_channels(resolution)
        self.from_rgb = EqualConv2d(img_channels, ch[-1], 1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[i], ch[i - 1]) for i in range(len(res) - 1, 0, -1))
        self.mbstd_group = mbstd_group
        self.final_conv = EqualConv2d(ch[0] + 1, ch[0], 3)
        self.final_fc = EqualLinear(ch[0] * 16, ch[0], activation=True)
        self.out = EqualLinear(ch[0], 1)

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Activations after from_rgb and every block (high to low resolution)."""
        x = self.from_rgb(img)
        feats = [x]
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.features(img)[-1]
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        if n % g:
            g = 1
        y = x.reshape(g, -1, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])  # [n/g]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        x = self.final_conv(torch.cat([x, y], dim=1))
        return self.out(self.final_fc(x.flatten(1)))
