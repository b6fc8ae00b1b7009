"""`ganseg segment`: part masks for real images.

--method unet (deployable): the UNet distilled by auto-shot (`ganseg train-unet`) segments each
  image directly, no GAN. Images are resized to the UNet's training resolution (the scale it
  learned parts at) and the label map is resized back (nearest) to the image's own size.
--method invert: invert each image into the GAN, run the few-shot head on its features (masks at
  the generator's resolution).
Writes NAME_mask.png (indexed, class indices), NAME_overlay.png and overlays.png (all images).
A file that is not a readable image is an error naming it, before anything is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ganseg.images import make_grid, overlay, save_png, to_uint8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--method", choices=["unet", "invert"], default=None,
                   help="default: unet when --unet is given, else invert")
    p.add_argument("--unet", default=None, help="UNet from `ganseg train-unet` (run folder or unet.safetensors)")
    p.add_argument("--ckpt", default=None, help="generator, for --method invert (default: bundled)")
    p.add_argument("--head", default=None, help="few-shot head from `ganseg train-head`, for --method invert")
    p.add_argument("--invert-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True)


def segment_images_unet(unet, paths: list[str], batch: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images uint8 HWC at their own size, label maps uint8 HW at the same size)."""
    from ganseg.images import load_rgb, resize_rgb
    from ganseg.unet import segment_with_unet

    size = unet.meta.get("resolution")
    originals = [load_rgb(p) for p in paths]  # all read (and checked) before any work
    labels = []
    for i in range(0, len(paths), batch):
        chunk = originals[i: i + batch]
        if size:
            x = np.stack([resize_rgb(im, size) for im in chunk])
            pred = segment_with_unet(unet, x, batch)
            labels += [np.asarray(Image.fromarray(lab).resize((im.shape[1], im.shape[0]), Image.Resampling.NEAREST))
                       for lab, im in zip(pred, chunk)]
        else:  # no recorded training size: segment at the image's own size
            labels += [segment_with_unet(unet, im[None], 1)[0] for im in chunk]
    return originals, labels


def run(args: argparse.Namespace) -> int:
    from ganseg.faces import PALETTE, save_label_png

    method = args.method or ("unet" if args.unet else "invert")
    out = Path(args.out)
    if method == "unet":
        from ganseg.unet import load_unet

        if not args.unet:
            raise ValueError("--method unet needs --unet (a `ganseg train-unet` run folder or unet.safetensors)")
        unet = load_unet(args.unet)
        images, labels = segment_images_unet(unet, args.images, args.batch)
        shown = [overlay(im[None], lab[None], PALETTE)[0] for im, lab in zip(images, labels)]
        summary = f"segmented {len(images)} image(s) with the UNet"
        thumbs = np.stack([np.asarray(Image.fromarray(s).resize((128, 128))) for s in shown])
    else:
        from ganseg.checkpoints import load_generator
        from ganseg.evaluate import predict_from_inversion
        from ganseg.heads import load_head
        from ganseg.invert import (InvertConfig, default_discriminator_for, invert, load_discriminator,
                                   load_images)

        if not args.head:
            raise ValueError("--method invert needs --head (a `ganseg train-head` file)")
        G = load_generator(args.ckpt)
        head = load_head(args.head)
        D = load_discriminator(default_discriminator_for(args.ckpt))
        images_t = load_images(args.images, G.resolution)
        inv = invert(G, images_t, InvertConfig(steps=args.invert_steps, batch=args.batch), D)
        labels = list(predict_from_inversion(G, head, inv).numpy().astype(np.uint8))
        shown = list(overlay(to_uint8(images_t), np.stack(labels), PALETTE))
        summary = f"segmented {len(labels)} image(s) (mean inversion PSNR {float(inv.psnr.mean()):.2f} dB)"
        thumbs = np.stack(shown)
    for path, lab, ov in zip(args.images, labels, shown):
        name = Path(path).stem
        save_label_png(out / f"{name}_mask.png", lab)
        save_png(out / f"{name}_overlay.png", ov)
    save_png(out / "overlays.png", make_grid(thumbs))
    print(f"{summary}: {out}")
    return 0
