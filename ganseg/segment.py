"""`ganseg segment`: part masks for real images, at each image's own size.

--method unet (deployable; the default unless --head is given): the UNet distilled by auto-shot
  (`ganseg train-unet`; without --unet the bundled default UNet, docs/default_unet.md) segments
  each image directly, no GAN.
--method invert: each image is inverted into the GAN (`ganseg.invert`) and the few-shot head from
  `ganseg train-head` labels the inversion's features. The head must come from the same generator
  (`--ckpt`); a head trained on another one is refused before any inversion starts.

Sizes (both methods, the same rule): every image is resized to the model's square working size (the
UNet's training resolution, or the generator's resolution for inversion; area filter when
shrinking, bicubic when enlarging) and the label map is resized back with nearest-neighbour to the
image's own height x width. A non-square photo is therefore stretched to a square, not cropped or
padded: every pixel gets a label, and parts keep their place; strongly non-square photos (beyond
about 4:3) segment worse, as the models only saw square images. Crop to the subject first for
best results.

Outputs in --out: NAME_mask.png (indexed PNG, pixel = class index, at the image's size),
NAME_overlay.png, and overlays.png (128 px thumbnails of all). NAME is the image's file name
without extension. Two inputs with the same name (a/0000.png, b/0000.png) never overwrite each
other: the clashing ones are named by their path below their common folder, `a__0000`, `b__0000`
(`0000_png`, `0000_jpg` for the same stem in one folder), and the mapping is printed; the same file
given twice is an error. All images are read and checked, and --out is checked writable, before
any work starts; a bad file is named in a one-line error and nothing is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ganseg.errors import BadInput
from ganseg.images import make_grid, overlay, save_png


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.cli import positive_int

    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, BMP, TIFF, GIF, PPM; any size)")
    p.add_argument("--method", choices=["unet", "invert"], default=None,
                   help="unet: the distilled UNet (fast, no GAN); invert: GAN inversion + few-shot head. "
                        "Default: invert when only --head is given, else unet")
    p.add_argument("--unet", default=None, help="UNet from `ganseg train-unet` (run folder or unet.safetensors); "
                        "default: the bundled default UNet")
    p.add_argument("--ckpt", default=None,
                   help="generator for --method invert: the one the head was trained on (default: bundled)")
    p.add_argument("--head", default=None, help="few-shot head from `ganseg train-head`, for --method invert")
    p.add_argument("--invert-steps", type=positive_int, default=200, help="optimization steps per image (invert)")
    p.add_argument("--batch", type=positive_int, default=16, help="images per forward pass / inversion batch")
    p.add_argument("--out", required=True, help="output folder (created if missing)")


def resize_labels(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A label map to (height, width) with nearest-neighbour (class indices stay class indices)."""
    if label.shape[:2] == tuple(hw):
        return label
    return np.asarray(Image.fromarray(label).resize((hw[1], hw[0]), Image.Resampling.NEAREST))


def segment_images_unet(unet, paths: list[str], batch: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images uint8 HWC at their own size, label maps uint8 HW at the same size)."""
    from ganseg.images import load_rgb
    from ganseg.unet import labels_to_sizes, segment_with_unet, to_input_batch

    size = unet.meta.get("resolution")
    originals = [load_rgb(p) for p in paths]  # all read (and checked) before any work
    labels = []
    for i in range(0, len(paths), batch):
        chunk = originals[i: i + batch]
        if size:  # the same steps as the Triton models (ganseg.serving.transforms)
            pred = segment_with_unet(unet, to_input_batch(chunk, size), batch)
            labels += labels_to_sizes(pred, [im.shape[:2] for im in chunk])
        else:  # no recorded training size: segment at the image's own size
            labels += [segment_with_unet(unet, im[None], 1)[0] for im in chunk]
    return originals, labels


def segment_images_invert(G, head, paths: list[str], invert_steps: int = 200, batch: int = 16, D=None,
                          head_name: str = "the head"):
    """(images uint8 HWC at their own size, label maps uint8 HW at the same size, inversion).

    Refuses a head made for another generator before inverting anything.
    """
    from ganseg.evaluate import predict_from_inversion
    from ganseg.images import from_uint8, load_rgb, resize_rgb
    from ganseg.invert import InvertConfig, invert
    from ganseg.synthesize import check_head_fits

    check_head_fits(G, head, head_name)
    originals = [load_rgb(p) for p in paths]  # all read (and checked) before any work
    target = from_uint8(np.stack([resize_rgb(im, G.resolution) for im in originals]))
    inv = invert(G, target, InvertConfig(steps=invert_steps, batch=batch), D)
    pred = predict_from_inversion(G, head, inv).cpu().numpy().astype(np.uint8)
    labels = [resize_labels(lab, im.shape[:2]) for lab, im in zip(pred, originals)]
    return originals, labels, inv


def run(args: argparse.Namespace) -> int:
    from ganseg.labels import palette_for, save_label_png
    from ganseg.paths import check_out_dir, output_names

    method = args.method or ("invert" if args.head and not args.unet else "unet")
    if method == "invert" and not args.head:
        raise BadInput("--method invert needs --head (a `ganseg train-head` file); or pass --unet RUN to "
                       "segment with a distilled UNet")
    out = check_out_dir(args.out)
    names = output_names(args.images)
    if method == "unet":
        from ganseg.unet import load_unet

        unet = load_unet(args.unet)
        images, labels = segment_images_unet(unet, args.images, args.batch)
        summary = f"segmented {len(images)} image(s) with the UNet"
    else:
        from ganseg.checkpoints import load_generator
        from ganseg.heads import load_head
        from ganseg.invert import default_discriminator_for, load_discriminator

        G = load_generator(args.ckpt)
        head = load_head(args.head)
        D = load_discriminator(default_discriminator_for(args.ckpt))
        images, labels, inv = segment_images_invert(G, head, args.images, args.invert_steps, args.batch, D,
                                                    f"--head {args.head}")
        summary = f"segmented {len(labels)} image(s) (mean inversion PSNR {float(inv.psnr.mean()):.2f} dB)"
    palette = palette_for(max(10, 1 + max(int(lab.max()) for lab in labels)))  # any class count
    shown = [overlay(im[None], lab[None], palette)[0] for im, lab in zip(images, labels)]
    thumbs = np.stack([np.asarray(Image.fromarray(s).resize((128, 128))) for s in shown])
    for path, name, lab, ov in zip(args.images, names, labels, shown):
        if name != Path(path).stem:
            print(f"note: {path} -> {name}_mask.png (another input has the same file name)")
        save_label_png(out / f"{name}_mask.png", lab)
        save_png(out / f"{name}_overlay.png", ov)
    save_png(out / "overlays.png", make_grid(thumbs))
    print(f"{summary}: {out}")
    return 0
