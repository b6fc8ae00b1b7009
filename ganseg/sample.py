"""`ganseg sample`: PNGs, a grid and a latents file from a generator, for viewing and annotation.

z for seed s is `np.random.RandomState(s).randn(z_dim)` (the NVlabs generate.py convention), so a
seed names the same image here and in the original tools, whatever the batch.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ganseg.checkpoints import load_generator
from ganseg.images import make_grid, save_png, to_uint8, write_atomic


def parse_seeds(text: str) -> list[int]:
    """'0-15' / '1,4,7-9' -> list of ints (inclusive ranges)."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"bad seed list {text!r}: use e.g. '0-15' or '1,4,7-9'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad seed range {part.strip()!r}: end before start")
        seeds.extend(range(lo, hi + 1))
    return seeds


def z_from_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=None, help="generator .pt/.pkl/.safetensors (default: bundled)")
    p.add_argument("--seeds", default="0-15", help="e.g. 0-15 or 1,4,7-9")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi (1 = none)")
    p.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    G = load_generator(args.ckpt, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    zs, ws, images = [], [], []
    with torch.no_grad(), tqdm(total=len(seeds), desc="sample", unit="img") as bar:
        for i in range(0, len(seeds), args.batch):
            chunk = seeds[i: i + args.batch]
            z = z_from_seeds(chunk, G.z_dim).to(args.device)
            w = G.map(z, args.truncation)
            imgs = to_uint8(G.synthesize(w=w, noise_mode=args.noise_mode))
            for s, im in zip(chunk, imgs):
                save_png(out / f"seed{s:04d}.png", im)
            zs.append(z.cpu()), ws.append(w.cpu()), images.append(imgs)
            bar.update(len(chunk))
    grid_path = out / "grid.png"
    save_png(grid_path, make_grid(np.concatenate(images)))
    save_latents(out / "latents.safetensors", seeds, torch.cat(zs), torch.cat(ws),
                 {"ckpt": str(args.ckpt or "default"), "truncation_psi": args.truncation,
                  "noise_mode": args.noise_mode})
    print(f"wrote {len(seeds)} images, {grid_path} and {out / 'latents.safetensors'}")
    return 0


def save_latents(path: Path, seeds: list[int], z: torch.Tensor, w: torch.Tensor, info: dict) -> None:
    """seeds [N] int64, z [N, z_dim], w [N, num_ws, w_dim] (after truncation): what `synthesize(w=...)` takes."""
    from safetensors.torch import save

    tensors = {"seeds": torch.tensor(seeds, dtype=torch.int64), "z": z.contiguous(), "w": w.contiguous()}
    write_atomic(path, save(tensors, metadata={"info": json.dumps(info)}))


def load_latents(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, info) from a latents file written by `save_latents`."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"latents file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {}).get("info", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, info
