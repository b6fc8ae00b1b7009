"""`ganseg segment`: part masks for real images.

--method invert: invert each image into the GAN, run the few-shot head on its features.
Writes NAME_mask.png (indexed, class indices), NAME_overlay.png and overlays.png (all images).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ganseg.images import make_grid, overlay, save_png, to_uint8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--method", choices=["invert"], default="invert")
    p.add_argument("--ckpt", default=None, help="generator (default: bundled)")
    p.add_argument("--head", required=True, help="few-shot head from `ganseg train-head`")
    p.add_argument("--invert-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator
    from ganseg.evaluate import predict_from_inversion
    from ganseg.faces import PALETTE, save_label_png
    from ganseg.heads import load_head
    from ganseg.invert import (InvertConfig, default_discriminator_for, invert, load_discriminator,
                               load_images)

    G = load_generator(args.ckpt)
    head = load_head(args.head)
    D = load_discriminator(default_discriminator_for(args.ckpt))
    images = load_images(args.images, G.resolution)
    inv = invert(G, images, InvertConfig(steps=args.invert_steps, batch=args.batch), D)
    pred = predict_from_inversion(G, head, inv).numpy().astype(np.uint8)
    out = Path(args.out)
    shown = overlay(to_uint8(images), pred, PALETTE)
    for path, lab, ov in zip(args.images, pred, shown):
        name = Path(path).stem
        save_label_png(out / f"{name}_mask.png", lab)
        save_png(out / f"{name}_overlay.png", ov)
    save_png(out / "overlays.png", make_grid(shown))
    print(f"segmented {len(args.images)} image(s) (mean inversion PSNR {float(inv.psnr.mean()):.2f} dB): {out}")
    return 0
