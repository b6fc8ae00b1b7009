"""Annotated shots for few-shot heads: generated images (latents + user masks) or real images
(labelled, then inverted into the GAN). Either way a shot is a latent, noise and a mask."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganseg.errors import BadInput, MissingFile
from ganseg.labels import load_label_png


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
    """Class names from FOLDER/labels.json (`ganseg.labels.read_labels_json`: a missing file, bad
    JSON or no "classes" list is a one-line error naming the file and what to write)."""
    from ganseg.labels import read_labels_json

    return list(read_labels_json(Path(folder) / "labels.json").class_names)


def _check_masks(masks: torch.Tensor, names: list[str], where: Path) -> None:
    if int(masks.max()) >= len(names):
        raise BadInput(f"{where}: masks use class {int(masks.max())} but labels.json names {len(names)} classes; "
                       f"add the missing class names to labels.json or fix the masks")


def _mask_fits(mask: np.ndarray, mask_path: Path, hw: tuple[int, int], image_name: str) -> None:
    if mask.shape != tuple(hw):
        raise BadInput(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but {image_name} is {hw[1]}x{hw[0]}; "
                       f"paint the mask at its image's size")


def load_sampled_shots(folder: str | Path, resolution: int | None = None) -> Shots:
    """`ganseg sample` output + the user's seedNNNN_mask.png files + labels.json.

    Every mask must have its image's size: seedNNNN.png's when present, else `resolution` (the
    generator's); a mismatch is an error naming the mask, before any training.
    """
    from ganseg.images import load_rgb
    from ganseg.sample import load_latents

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"--shots {folder}: not a folder; pass the `ganseg sample --out` folder holding "
                          f"latents.safetensors, seedNNNN_mask.png and labels.json")
    lat, info = load_latents(folder / "latents.safetensors")
    names = load_class_names(folder)
    ws, masks = [], []
    for i, seed in enumerate(lat["seeds"].tolist()):
        p = folder / f"seed{seed:04d}_mask.png"
        if p.is_file():
            mask = load_label_png(p)
            img = folder / f"seed{seed:04d}.png"
            if img.is_file():
                _mask_fits(mask, p, load_rgb(img).shape[:2], img.name)
            elif resolution is not None:
                _mask_fits(mask, p, (resolution, resolution), f"the generator's image ({resolution} px)")
            elif masks and mask.shape != tuple(masks[0].shape):
                raise BadInput(f"{p}: mask is {mask.shape[1]}x{mask.shape[0]}, the others {masks[0].shape[1]}x"
                               f"{masks[0].shape[0]}; paint every mask at its image's size")
            ws.append(lat["w"][i])
            masks.append(torch.from_numpy(mask.astype(np.int64)))
    if not masks:
        raise MissingFile(f"no seedNNNN_mask.png annotations in {folder} "
                          f"(sampled seeds: {lat['seeds'].tolist()[:8]}...); paint at least one")
    shots = Shots(torch.stack(ws), torch.stack(masks), names, info.get("noise_mode", "const"))
    _check_masks(shots.masks, names, folder)
    return shots


def load_labelled_images(folder: str | Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Real images NNNN.png + NNNN_mask.png (+ labels.json) -> (images [-1,1], masks, names).

    Each mask must have its image's size (checked before anything is resized); images and masks of
    any size are then resized to `resolution` square (masks with nearest-neighbour).
    """
    from ganseg.images import from_uint8, load_rgb, resize_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"--shots {folder}: not a folder; pass a folder of NNNN.png + NNNN_mask.png + labels.json")
    names = load_class_names(folder)
    pairs = [(p, p.with_name(p.stem + "_mask.png")) for p in sorted(folder.glob("*.png"))
             if not p.stem.endswith("_mask") and p.with_name(p.stem + "_mask.png").is_file()]
    if not pairs:
        raise MissingFile(f"no NNNN.png + NNNN_mask.png pairs in {folder}")
    images, masks = [], []
    for a, m in pairs:
        im = load_rgb(a)
        lab = load_label_png(m)
        _mask_fits(lab, m, im.shape[:2], a.name)
        images.append(resize_rgb(im, resolution))
        lab = torch.from_numpy(lab.astype(np.int64))
        if lab.shape != (resolution, resolution):  # nearest keeps labels labels
            lab = torch.nn.functional.interpolate(lab[None, None].float(), size=(resolution, resolution),
                                                  mode="nearest")[0, 0].long()
        masks.append(lab)
    masks_t = torch.stack(masks)
    _check_masks(masks_t, names, folder)
    return from_uint8(np.stack(images)), masks_t, names


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
        chunks.append(G.synthesize_features(w=shots.ws[i: i + batch], noise_mode=shots.noise_mode,
                                            noise=noise)[1])
    return [torch.cat(layer) for layer in zip(*chunks)]
