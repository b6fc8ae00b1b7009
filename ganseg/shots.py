"""Annotated shots for few-shot heads: generated images (latents + user masks) or real images
(labelled, then inverted into the GAN). Either way a shot is a latent, noise and a mask."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganseg.faces import load_label_png


@dataclass
class Shots:
    ws: torch.Tensor                          # [N, num_ws, w_dim]
    masks: torch.Tensor                       # [N, S, S] int64 class indices
    class_names: list[str]
    noise_mode: str = "const"
    noise: list[torch.Tensor] | None = None   # per-layer [N, 1, R, R] (inverted shots)

    def __len__(self) -> int:
        return len(self.ws)


def load_class_names(folder: str | Path) -> list[str]:
    p = Path(folder) / "labels.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: it names the classes, e.g. {{\"classes\": [\"background\", ...]}}")
    names = json.loads(p.read_text())["classes"]
    if not isinstance(names, list) or len(names) < 2:
        raise ValueError(f"{p}: 'classes' must list at least two class names")
    return names


def _check_masks(masks: torch.Tensor, names: list[str], where: Path) -> None:
    if int(masks.max()) >= len(names):
        raise ValueError(f"{where}: masks use class {int(masks.max())} but labels.json names {len(names)} classes")


def load_sampled_shots(folder: str | Path) -> Shots:
    """`ganseg sample` output + the user's seedNNNN_mask.png files + labels.json."""
    from ganseg.sample import load_latents

    folder = Path(folder)
    lat, info = load_latents(folder / "latents.safetensors")
    names = load_class_names(folder)
    ws, masks = [], []
    for i, seed in enumerate(lat["seeds"].tolist()):
        p = folder / f"seed{seed:04d}_mask.png"
        if p.is_file():
            ws.append(lat["w"][i])
            masks.append(torch.from_numpy(load_label_png(p).astype(np.int64)))
    if not masks:
        raise FileNotFoundError(f"no seedNNNN_mask.png annotations in {folder} "
                                f"(sampled seeds: {lat['seeds'].tolist()[:8]}...)")
    shots = Shots(torch.stack(ws), torch.stack(masks), names, info.get("noise_mode", "const"))
    _check_masks(shots.masks, names, folder)
    return shots


def load_labelled_images(folder: str | Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Real images NNNN.png + NNNN_mask.png (+ labels.json) -> (images [-1,1], masks, names)."""
    from ganseg.invert import load_images

    folder = Path(folder)
    names = load_class_names(folder)
    pairs = [(p, p.with_name(p.stem + "_mask.png")) for p in sorted(folder.glob("*.png"))
             if not p.stem.endswith("_mask") and p.with_name(p.stem + "_mask.png").is_file()]
    if not pairs:
        raise FileNotFoundError(f"no NNNN.png + NNNN_mask.png pairs in {folder}")
    images = load_images([a for a, _ in pairs], resolution)
    masks = []
    for _, m in pairs:
        lab = torch.from_numpy(load_label_png(m).astype(np.int64))
        if lab.shape[-1] != resolution:  # nearest keeps labels labels
            lab = torch.nn.functional.interpolate(lab[None, None].float(), size=(resolution, resolution),
                                                  mode="nearest")[0, 0].long()
        masks.append(lab)
    masks_t = torch.stack(masks)
    _check_masks(masks_t, names, folder)
    return images, masks_t, names


def shots_from_real(G, folder: str | Path, cfg=None, D=None) -> Shots:
    """Invert labelled real images; their latents and noise become shots for the head."""
    from ganseg.invert import invert

    images, masks, names = load_labelled_images(folder, G.resolution)
    inv = invert(G, images, cfg, D)
    print(f"inverted {len(images)} shot(s): mean PSNR {float(inv.psnr.mean()):.2f} dB")
    return Shots(inv.ws, masks, names, noise=inv.noise)


@torch.no_grad()
def shot_features(G, shots: Shots, batch: int = 8) -> list[torch.Tensor]:
    """Per-layer features of the shots at native resolution (no channel stack is built)."""
    chunks = []
    for i in range(0, len(shots), batch):
        noise = [n[i: i + batch] for n in shots.noise] if shots.noise is not None else None
        chunks.append(G.synthesize(w=shots.ws[i: i + batch], noise_mode=shots.noise_mode, noise=noise,
                                   return_features=True)[1])
    return [torch.cat(layer) for layer in zip(*chunks)]
