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

Photos are read through `ganseg.pipeline` (the served code): JPEGs decode at reduced DCT scale when
much larger than the working size, one size limit (`ganseg.pipeline.MAX_PIXELS`, 64 MP) is checked
from each header before any work.

Outputs in --out: NAME_mask.png (indexed PNG, pixel = class index, at the image's size; fast zlib
level), NAME_overlay.jpg (a preview: long side <= 1024 px), and overlays.png (128 px thumbnails of
all; overlays-2.png, ... in a reused folder). Inputs are files or folders of images (the same rule
as `ganseg client`, `ganseg.paths.list_images`). NAME is the image's file name
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

from ganseg.errors import BadInput
from ganseg.pipeline import PREVIEW_MAX_SIDE, Batch, Segmented, post, pre, save_contact_sheet, save_result, shrink


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_int

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


def segment_images_unet(unet, paths: list[str], batch: int = 16, palette: np.ndarray | None = None,
                        preview: int = PREVIEW_MAX_SIDE) -> list[Segmented]:
    """One `Segmented` per photo (mask at its own size, overlay JPEG at preview size when preview > 0).

    The same steps as the Triton models (`ganseg.pipeline.pre` / `post`), with the PyTorch UNet in
    the middle. A UNet without a recorded training size segments each photo at its own size."""
    from ganseg.images import load_rgb
    from ganseg.unet import segment_with_unet

    size = unet.meta.get("resolution")
    if size:
        photos = pre(paths, int(size), preview=preview)  # all read (and checked) before any work
        return post(segment_with_unet(unet, photos.pixels, batch), photos, palette)
    originals = [load_rgb(p) for p in paths]  # no recorded training size: segment at the image's own size
    labels = [segment_with_unet(unet, im[None], 1)[0] for im in originals]
    return [post(lab[None], Batch(im[None], [lab.shape], [shrink(im, preview) if preview else None]), palette)[0]
            for im, lab in zip(originals, labels)]


def segment_images_invert(G, head, paths: list[str], invert_steps: int = 200, batch: int = 16, D=None,
                          head_name: str = "the head", palette: np.ndarray | None = None,
                          preview: int = PREVIEW_MAX_SIDE):
    """(one `Segmented` per photo, as `segment_images_unet`; the inversion).

    Refuses a head made for another generator before inverting anything.
    """
    from ganseg.evaluate import predict_from_inversion
    from ganseg.images import from_uint8
    from ganseg.heads import check_head_fits
    from ganseg.invert import InvertConfig, invert

    check_head_fits(G, head, head_name)
    photos = pre(paths, G.resolution, preview=preview)  # all read (and checked) before any work
    inv = invert(G, from_uint8(photos.pixels), InvertConfig(steps=invert_steps, batch=batch), D)
    pred = predict_from_inversion(G, head, inv).cpu().numpy().astype(np.uint8)
    return post(pred, photos, palette), inv


def run(args: argparse.Namespace) -> int:
    from ganseg.labels import palette_for
    from ganseg.images import open_photo
    from ganseg.paths import check_out_dir, first_frame_note, list_images, output_names

    palette = palette_for(256)  # ganseg's colours first, then distinct ones: any class count
    method = args.method or ("invert" if args.head and not args.unet else "unet")
    if method == "invert" and not args.head:
        raise BadInput("--method invert needs --head (a `ganseg train-head` file); or pass --unet RUN to "
                       "segment with a distilled UNet")
    out = check_out_dir(args.out)
    paths = [str(p) for p in list_images(args.images, note=print)]  # a note names skipped non-images
    names = output_names(paths)
    animated = []  # header reads only (`Photo.animated`), as `ganseg client` does before it sends
    for path in paths:
        with open_photo(path) as photo:
            if photo.animated:
                animated.append(path)
    if method == "unet":
        from ganseg.unet import load_unet

        unet = load_unet(args.unet)
        results = segment_images_unet(unet, paths, args.batch, palette)
        summary = f"segmented {len(results)} image(s) with the UNet"
    else:
        from ganseg.checkpoints import default_discriminator_for, load_discriminator, load_generator
        from ganseg.heads import load_head

        G = load_generator(args.ckpt)
        head = load_head(args.head)
        D = load_discriminator(default_discriminator_for(args.ckpt))
        results, inv = segment_images_invert(G, head, paths, args.invert_steps, args.batch, D,
                                             f"--head {args.head}", palette)
        summary = f"segmented {len(results)} image(s) (mean inversion PSNR {float(inv.psnr.mean()):.2f} dB)"
    for path, name, r in zip(paths, names, results):
        if name != Path(path).stem:
            print(f"note: {path} -> {name}_mask.png (another input has the same file name)")
        save_result(out, name, r.mask, r.overlay, palette)  # the writer `ganseg client` uses too
    sheet = save_contact_sheet(out, [r.overlay for r in results])
    frames = first_frame_note(animated)
    if frames:  # once per run, not once per file
        print(frames)
    print(f"{summary}: {out}/NAME_mask.png (indexed PNG, pixel = class index, at each image's size), "
          f"NAME_overlay.jpg (long side <= {PREVIEW_MAX_SIDE} px)" + (f", {sheet.name}" if sheet else ""))
    return 0
