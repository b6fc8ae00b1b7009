"""GAN inversion by batched latent optimization (W or W+, plus per-layer noise maps).

Loss per image = pixel MSE + `perceptual_weight` * perceptual distance + `noise_reg` * noise
autocorrelation penalty (Karras et al.: keeps the optimized noise maps from absorbing the image).

Perceptual term, offline: distances between channel-normalized activations of the GAN's own
discriminator (`ganseg.stylegan2.Discriminator.features`). Why the discriminator: it was trained on
exactly the image domain being inverted, every StyleGAN2 training run produces one (no download,
no ImageNet network), and its multi-scale features react to structure rather than to exact pixel
values. Without a discriminator the loss is pixel MSE on an image pyramid.

Every image has its own latent and noise; the loss is a sum over images and Adam is per-element,
so a batch inverts exactly as its images would one by one.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganseg.checkpoints import default_discriminator_for, load_discriminator
from ganseg.errors import BadInput, MissingFile
from ganseg.images import from_uint8, load_rgb, make_grid, save_png, to_uint8
from ganseg.stylegan2 import Discriminator


@dataclass
class InvertConfig:
    space: str = "w+"               # "w" (one latent per image) or "w+" (one per layer)
    steps: int = 300
    lr: float = 0.05
    perceptual_weight: float = 1.0
    noise_reg: float = 1e4
    optimize_noise: bool = True
    batch: int = 16


@dataclass
class Inversion:
    ws: torch.Tensor                # [N, num_ws, w_dim]
    noise: list[torch.Tensor]       # one [N, 1, R, R] per conv layer
    recon: torch.Tensor             # [N, 3, R, R] in [-1, 1] (clamped)
    psnr: torch.Tensor              # [N] dB against the target


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a - b).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def noise_regularization(noise: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image sum over maps and scales of squared 1-pixel autocorrelations -> [N]."""
    total = 0
    for n in noise:
        x = n
        while True:
            total = total + (x * x.roll(1, dims=3)).mean(dim=[1, 2, 3]).square() \
                          + (x * x.roll(1, dims=2)).mean(dim=[1, 2, 3]).square()
            if x.shape[-1] <= 8:
                break
            x = F.avg_pool2d(x, 2) * 2
    return total


def perceptual_distance(D: Discriminator | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N] distance: normalized D activations (or an image pyramid without D)."""
    if D is None:
        total, x, y = 0, a, b
        while x.shape[-1] >= 8:
            total = total + (x - y).square().flatten(1).mean(1)
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        return total
    total = 0
    for fa, fb in zip(D.features(a), D.features(b)):
        fa = fa / (fa.square().sum(1, keepdim=True).sqrt() + 1e-8)
        fb = fb / (fb.square().sum(1, keepdim=True).sqrt() + 1e-8)
        total = total + (fa - fb).square().sum(1).flatten(1).mean(1)
    return total


def invert(G, target: torch.Tensor, cfg: InvertConfig | None = None, D: Discriminator | None = None,
           progress: bool = True) -> Inversion:
    """Invert a batch of images (float NCHW in [-1, 1] at G's resolution) into G."""
    cfg = cfg or InvertConfig()
    if cfg.space not in ("w", "w+"):
        raise BadInput(f"space must be 'w' or 'w+', got {cfg.space!r}")
    if cfg.steps < 1 or cfg.batch < 1:
        raise BadInput(f"steps and batch must be >= 1, got {cfg.steps} and {cfg.batch}")
    if target.ndim != 4 or target.shape[1:] != (G.img_channels, G.resolution, G.resolution):
        raise BadInput(f"images must be [N, {G.img_channels}, {G.resolution}, {G.resolution}] "
                       f"for this generator, got {list(target.shape)}")
    if not bool(torch.isfinite(target).all()):
        raise BadInput("images contain NaN or infinite values")
    target = target.to(G.device)
    outs = [_invert_batch(G, target[i: i + cfg.batch], cfg, D, progress)
            for i in range(0, len(target), cfg.batch)]
    return Inversion(torch.cat([o.ws for o in outs]), [torch.cat(n) for n in zip(*[o.noise for o in outs])],
                     torch.cat([o.recon for o in outs]), torch.cat([o.psnr for o in outs]))


def _invert_batch(G, target, cfg, D, progress) -> Inversion:
    n = target.shape[0]
    w_avg = G.mapping.w_avg.detach()
    shape = (n, G.num_ws if cfg.space == "w+" else 1, G.w_dim)
    w = w_avg.expand(shape).clone().requires_grad_(True)
    noise = [torch.randn(n, 1, m.resolution, m.resolution, generator=torch.Generator().manual_seed(i))
             .to(G.device).requires_grad_(cfg.optimize_noise) for i, m in enumerate(G.synthesis.convs)]
    params = [w] + (noise if cfg.optimize_noise else [])
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    bar = tqdm(range(cfg.steps), desc=f"invert {n} image(s)", disable=not progress)
    for step in bar:
        t = step / max(cfg.steps, 1)  # cosine ramp-down, linear ramp-up (rosinality's projector)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (1 - t) / 0.25) ** 2 * min(1.0, t / 0.05 + 1e-3)
        ws = w.expand(-1, G.num_ws, -1)
        img = G.synthesize(w=ws, noise=noise)
        loss_i = (img - target).square().flatten(1).mean(1)
        if cfg.perceptual_weight:
            loss_i = loss_i + cfg.perceptual_weight * perceptual_distance(D, img, target)
        if cfg.optimize_noise and cfg.noise_reg:
            loss_i = loss_i + cfg.noise_reg * noise_regularization(noise)
        opt.zero_grad(set_to_none=True)
        loss_i.sum().backward()
        opt.step()
        with torch.no_grad():  # keep noise maps standard normal
            for nm in noise:
                nm.sub_(nm.mean(dim=[1, 2, 3], keepdim=True)).div_(nm.std(dim=[1, 2, 3], keepdim=True) + 1e-8)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_i.mean().item():.4f}")
    with torch.no_grad():
        ws = w.detach().expand(-1, G.num_ws, -1).clone()
        noise = [nm.detach() for nm in noise]
        recon = G.synthesize(w=ws, noise=noise).clamp(-1, 1)
    return Inversion(ws, noise, recon, psnr(recon, target))


def save_inversion(inv: Inversion, path: str | Path) -> None:
    """An inversion as safetensors (ws, noise maps, reconstructions, PSNR): inversions are slow, keep them."""
    from safetensors.torch import save

    from ganseg.images import write_atomic

    state = {"ws": inv.ws, "recon": inv.recon, "psnr": inv.psnr,
             **{f"noise{i:02d}": n for i, n in enumerate(inv.noise)}}
    write_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                            metadata={"format": "ganseg.inversion/1"}))


def load_inversion(path: str | Path) -> Inversion:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"inversion file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != "ganseg.inversion/1":
                raise ValueError("not a ganseg inversion file")
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise BadInput(f"{path}: unreadable inversion ({exc}); write it again with save_inversion") from None
    noise = [t[k] for k in sorted(k for k in t if k.startswith("noise"))]
    return Inversion(t["ws"], noise, t["recon"], t["psnr"])


def load_images(paths: Sequence[str | Path], resolution: int) -> torch.Tensor:
    """Image files -> float NCHW in [-1, 1], resized to the generator's resolution."""
    return from_uint8(np.stack([load_rgb(p, resolution) for p in paths]))


# --------------------------------------------------------------------------------------------
# CLI: ganseg invert

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_float, positive_int

    d = InvertConfig()
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--ckpt", default=None, help="generator (default: bundled)")
    p.add_argument("--discriminator", default=None,
                   help="ganseg discriminator for the perceptual term (default: bundled, with the bundled generator)")
    p.add_argument("--space", choices=["w", "w+"], default=d.space)
    p.add_argument("--steps", type=positive_int, default=d.steps)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--batch", type=positive_int, default=d.batch)
    p.add_argument("--out", required=True, help="output folder (created if missing)")


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator
    from ganseg.images import write_atomic
    from ganseg.paths import check_out_dir, output_names
    from ganseg.latents import save_latents

    out = check_out_dir(args.out)
    output_names(args.images)  # refuses the same file twice before the slow inversion
    G = load_generator(args.ckpt)
    D = load_discriminator(args.discriminator or default_discriminator_for(args.ckpt))
    target = load_images(args.images, G.resolution)
    cfg = InvertConfig(space=args.space, steps=args.steps, lr=args.lr, batch=args.batch)
    inv = invert(G, target, cfg, D)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(args.images)
    for name, im in zip(names, to_uint8(inv.recon)):
        save_png(out / f"{name}_recon.png", im)
    save_png(out / "compare.png", make_grid(np.concatenate([to_uint8(target), to_uint8(inv.recon)]),
                                            ncols=len(names)))
    save_latents(out / "latents.safetensors", list(range(len(names))), torch.zeros(len(names), 0), inv.ws,
                 {"images": [str(p) for p in args.images], "space": args.space})
    report = {n: round(float(v), 2) for n, v in zip(names, inv.psnr)}
    write_atomic(out / "psnr.json", (json.dumps(report, indent=1) + "\n").encode())
    for n, v in report.items():
        print(f"{n}: PSNR {v:.2f} dB")
    print(f"mean PSNR {float(inv.psnr.mean()):.2f} dB; reconstructions in {out}")
    return 0


__all__ = ["InvertConfig", "Inversion", "invert", "save_inversion", "load_inversion", "psnr",
           "noise_regularization", "perceptual_distance", "load_images"]
