"""`ganseg sample`: PNGs, a grid and a latents file from a generator, for viewing and annotation.

z for seed s is `np.random.RandomState(s).randn(z_dim)` (the NVlabs generate.py convention), so a
seed names the same image here and in the original tools, whatever the batch (`ganseg.latents`:
the seed -> z rule and the latents file, which other stages read).

Any number of seeds streams: each image is written as soon as it is made, the grid shows only the
first `--grid` images, and latents.safetensors (assembled in memory) is refused up front above
`--max-latents` images unless `--no-latents` is given. Memory stays bounded for `--seeds 0-99999999`.
"""
from __future__ import annotations

import argparse
import itertools
import re
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ganseg.errors import BadInput
from ganseg.images import make_grid, save_png, to_uint8
from ganseg.latents import save_latents, z_from_seeds

MAX_LATENTS = 10_000  # latents.safetensors is assembled in memory (z + w+ per image: ~200 MB at 512-d, 10 ws)
MAX_SEED = 2**32 - 1  # numpy RandomState seeds are 32-bit


def parse_seeds(text: str) -> list[range]:
    """'0-15' / '1,4,7-9' -> the seed ranges, in order (inclusive in the text, `range`s here).

    Ranges, not a list of ints: '0-99999999' costs nothing until iterated (`iter_seeds`).
    """
    seeds: list[range] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise BadInput(f"bad seed list {text!r}: use e.g. '0-15' or '1,4,7-9'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise BadInput(f"bad seed range {part.strip()!r}: end before start")
        if hi > MAX_SEED:
            raise BadInput(f"bad seed {hi} in {text!r}: seeds must be at most {MAX_SEED} (numpy RandomState)")
        seeds.append(range(lo, hi + 1))
    return seeds


def count_seeds(seeds: Iterable[range]) -> int:
    return sum(len(r) for r in seeds)


def iter_seeds(seeds: Iterable[range]) -> Iterator[int]:
    return itertools.chain.from_iterable(seeds)


def batches(it: Iterable[int], size: int) -> Iterator[list[int]]:
    it = iter(it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import finite_float, nonnegative_int, positive_int

    p.add_argument("--ckpt", default=None, help="generator .pt/.pkl/.safetensors (default: bundled)")
    p.add_argument("--seeds", default="0-15", help="e.g. 0-15 or 1,4,7-9 (any count: images are written as made)")
    p.add_argument("--truncation", type=finite_float, default=0.7, help="truncation psi (1 = none)")
    p.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--grid", type=nonnegative_int, default=64, help="grid.png shows the first N images (0: no grid)")
    p.add_argument("--max-latents", type=nonnegative_int, default=MAX_LATENTS,
                   help="refuse to start when latents.safetensors would hold more images than this "
                        "(it is kept in memory); pass --no-latents for big runs")
    p.add_argument("--no-latents", action="store_true", help="do not write latents.safetensors")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator
    from ganseg.paths import check_out_dir

    seeds = parse_seeds(args.seeds)
    n = count_seeds(seeds)
    if not args.no_latents and n > args.max_latents:
        raise BadInput(f"--seeds {args.seeds} gives {n} images, but latents.safetensors is built in memory for "
                       f"at most --max-latents {args.max_latents}; add --no-latents (images are still written "
                       f"one by one) or raise --max-latents")
    out = check_out_dir(args.out)
    G = load_generator(args.ckpt, device=args.device)
    out.mkdir(parents=True, exist_ok=True)
    zs, ws, shown = [], [], []  # bounded: latents only up to --max-latents, grid only of the first --grid
    with torch.no_grad(), tqdm(total=n, desc="sample", unit="img") as bar:
        for chunk in batches(iter_seeds(seeds), args.batch):
            z = z_from_seeds(chunk, G.z_dim).to(G.device)
            w = G.map(z, args.truncation)
            imgs = to_uint8(G.synthesize(w=w, noise_mode=args.noise_mode))
            for s, im in zip(chunk, imgs):
                save_png(out / f"seed{s:04d}.png", im)
            if not args.no_latents:
                zs.append(z.cpu()), ws.append(w.cpu())
            taken = sum(len(x) for x in shown)
            if taken < args.grid:
                shown.append(imgs[: args.grid - taken])
            bar.update(len(chunk))
    written = [f"{n} images"]
    if shown:
        save_png(out / "grid.png", make_grid(np.concatenate(shown)))
        written.append(str(out / "grid.png"))
    if not args.no_latents:
        save_latents(out / "latents.safetensors", list(iter_seeds(seeds)), torch.cat(zs), torch.cat(ws),
                     {"ckpt": str(args.ckpt or "default"), "truncation_psi": args.truncation,
                      "noise_mode": args.noise_mode})
        written.append(str(out / "latents.safetensors"))
    print(f"wrote {', '.join(written)} in {out}")
    return 0
