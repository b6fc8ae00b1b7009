"""`ganseg render`: write a split of the procedural face domain to disk as images + label maps.

Output layout (index ``i`` is the position in the split, so image ``i`` is seed ``start + i``;
see ganseg.faces.SPLITS)::

    OUT/0000.png        RGB image
    OUT/0000_mask.png   indexed ("P") PNG; pixel values are class indices 0..9, palette = PALETTE
    OUT/labels.json     {"classes": [...], "palette": [[r, g, b], ...]}

Indices are zero-padded to at least 4 digits (more when n > 10000) so names sort in split order.
Every file is written under a temporary name and moved into place with os.replace, so a killed
run leaves only complete files; rerunning the same command rewrites identical bytes.

``save_sample_grid()`` regenerates docs/render_samples.png (16 train faces + masks)::

    python -c "from ganseg.render import save_sample_grid; save_sample_grid()"
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ganseg.errors import BadInput
from ganseg.images import save_png
from ganseg.faces import SPLITS, render_faces, split_seeds
from ganseg.labels import PALETTE, save_label_png, write_labels_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `render` options on a (sub)parser."""
    from ganseg.argtypes import positive_int

    add = parser.add_argument
    add("--split", required=True, choices=sorted(SPLITS), help="which seed range to render")
    add("--n", type=positive_int, required=True, help="number of images (the first n of the split)")
    add("--res", type=positive_int, default=128, help="image side in pixels, 64..512")
    add("--out", type=Path, required=True, help="output directory (created if missing)")
    add("--batch", type=positive_int, default=64, help="images rendered per call")


def sample_grid(seeds: list[int], resolution: int = 128, columns: int = 4) -> np.ndarray:
    """uint8 [rows*R, columns*2R, 3] grid: each render next to its PALETTE-coloured label map.

    Lets people eyeball the domain (docs/render_samples.png) without opening single files.
    """
    images, labels = render_faces(seeds, resolution)
    masks = PALETTE[labels]
    rows = -(-len(seeds) // columns)
    grid = np.zeros((rows * resolution, columns * 2 * resolution, 3), dtype=np.uint8)
    for k in range(len(seeds)):
        r, c = divmod(k, columns)
        y0, x0 = r * resolution, c * 2 * resolution
        grid[y0 : y0 + resolution, x0 : x0 + resolution] = images[k]
        grid[y0 : y0 + resolution, x0 + resolution : x0 + 2 * resolution] = masks[k]
    return grid


def save_sample_grid(path: str | os.PathLike = "docs/render_samples.png", n: int = 16) -> None:
    """Write the first n train faces and their masks as one PNG (regenerates docs/render_samples.png)."""
    Image.fromarray(sample_grid(split_seeds("train", n))).save(path, format="PNG")


def run(args: argparse.Namespace) -> int:
    """Render the first ``args.n`` faces of ``args.split`` into ``args.out``; returns 0 on success."""
    from ganseg.paths import check_out_dir

    if args.n < 1:
        raise BadInput(f"--n must be >= 1, got {args.n}")
    if not 64 <= args.res <= 512:
        raise BadInput(f"--res must be in 64..512, got {args.res}")
    if args.batch < 1:
        raise BadInput(f"--batch must be >= 1, got {args.batch}")
    try:
        seeds = split_seeds(args.split, args.n)  # pure: its ValueErrors are about these two arguments
    except ValueError as exc:
        raise BadInput(f"--split {args.split} --n {args.n}: {exc}; pass a smaller --n") from None
    out = check_out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(args.n - 1)))
    write_labels_json(out / "labels.json")
    starts = list(range(0, args.n, args.batch))
    # Render batch k+1 on a worker thread while batch k is PNG-encoded here (numpy releases the
    # GIL, so the two overlap); the output is identical to a sequential run.
    bar = tqdm(total=args.n, desc=f"render {args.split}", unit="img")
    with bar, ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(render_faces, seeds[: args.batch], args.res)
        for k, start in enumerate(starts):
            images, labels = pending.result()
            if k + 1 < len(starts):
                nxt = starts[k + 1]
                pending = pool.submit(render_faces, seeds[nxt : nxt + args.batch], args.res)
            for j in range(len(images)):
                name = f"{start + j:0{digits}d}"
                save_png(out / f"{name}.png", images[j])
                save_label_png(out / f"{name}_mask.png", labels[j])
            bar.update(len(images))
    print(f"wrote {args.n} images + masks of split {args.split!r} at {args.res}px to {out}")
    return 0
