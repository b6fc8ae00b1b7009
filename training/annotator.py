"""The paper's evaluation protocol: shots are GENERATED images that a person annotates.

ReGAN's premise is that a person paints masks on 1-10 images the *generator* made (`ganseg sample`
-> `ganseg annotate` -> `train-head`), so every label sits exactly on the features the head learns
from. Benchmarks cannot ask a person, so a *simulated annotator* paints instead: ganseg's quality
probe, a UNet supervised on 3 000 rendered train faces with their exact masks
(`ganseg/weights/quality_probe_<res>.safetensors`, trained once and cached, `ganseg.quality`). Its
own mIoU on the rendered test split is reported beside every table: nothing it teaches can exceed it
by much, and a weak annotator would make every method look alike.

Seeds are fixed and disjoint by role:
- shots: `SHOT_SEEDS` (z as `ganseg sample --seeds 0-9`, psi = 1), the first K of them for K shots;
  1-shot rows use each of the first `ONE_SHOT_REPEATS` seeds alone (the choice of shot dominates);
- held-out generated images for "head vs annotator": `HELDOUT_SEED0` onwards (never in a synthesized
  set, which starts at seed 0).

Why in training/: the protocol trains heads; `ganseg eval` and `benchmarks/autoshot_eval.py` share it.
"""
from __future__ import annotations

import numpy as np
import torch


SHOT_SEEDS = tuple(range(10))
ONE_SHOT_REPEATS = 5
HELDOUT_SEED0 = 1_000_000
# style mixing of the shots (shot augmentation): w+ entries from this index on come from another
# latent. At 64^2 (10 entries) index 6 onwards drives the 32^2 conv1 and the 64^2 layers: colour and
# texture change, the layout (and so the annotator's mask) stays.
STYLE_MIX_FROM = 6


def simulated_annotator(resolution: int):
    """The person of `ganseg annotate`, simulated: the quality-probe UNet for this resolution
    (trained on first use for a resolution that ships none, then cached beside the others)."""
    from ganseg.quality import load_probe, probe_path, save_probe, train_probe

    path = probe_path(resolution)
    if not path.is_file():
        save_probe(train_probe(resolution), path)
    return load_probe(path)


def annotator_labels(annotator, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 label maps [N, H, W] the annotator paints on uint8 images [N, H, W, 3] (what a person
    sees: the PNG, not the generator's float output)."""
    from ganseg.unet import segment_with_unet

    return segment_with_unet(annotator, images, batch)


@torch.no_grad()
def annotate_generated(G, annotator, seeds=None, ws: torch.Tensor | None = None, truncation_psi: float = 1.0,
                       batch: int = 32) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Generated images and the masks the annotator paints on them.

    Give `seeds` (z as `ganseg sample`) or `ws` (w+). Returns (w+ [N, num_ws, w_dim], images uint8
    [N, H, W, 3], masks uint8 [N, H, W])."""
    from ganseg.images import to_uint8
    from ganseg.latents import z_from_seeds

    if ws is None:
        ws = G.map(z_from_seeds(list(seeds), G.z_dim).to(G.device), truncation_psi)
    imgs, masks = [], []
    for i in range(0, len(ws), batch):
        imgs.append(to_uint8(G.synthesize(w=ws[i: i + batch])))
        masks.append(annotator_labels(annotator, imgs[-1]))
    return ws, np.concatenate(imgs), np.concatenate(masks)


def style_mixed_ws(G, ws: torch.Tensor, copies: int, seed: int = 0, mix_from: int | None = None) -> torch.Tensor:
    """`copies` style-mixed variants of each shot latent: entries from `mix_from` on come from random
    latents, the rest (the layout) stays, so the shot's mask still fits [copies * N, num_ws, w_dim]."""
    k = STYLE_MIX_FROM if mix_from is None else mix_from
    if not 0 < k < G.num_ws:
        raise ValueError(f"mix_from must be in 1..{G.num_ws - 1}, got {k}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        other = G.map(torch.randn(len(ws), G.z_dim, generator=gen).to(G.device))
        mixed = ws.clone()
        mixed[:, k:] = other[:, k:]
        out.append(mixed)
    return torch.cat(out)
